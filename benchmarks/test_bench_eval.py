"""Teacher-forced eval loss: harness.run.scoring.teacher_forced vs lm-evaluation-harness.

Both score the same items of the default suite (SmolLM2-135M-Instruct, chat template, prompt +
reference + EOS) with the same weights object, batch 8, float32 on the CPU, and must give the
same per-item log-likelihood of the reference tokens. Throughput counts prompt + reference
tokens (README's `eval_tokens_per_s`) for both, so the tokens/s ratio is the wall-time ratio.

What differs: lm-eval computes full-vocabulary logits and log-softmax (49k classes)
at every position; harness applies the LM head only from the first scored position of each
length-sorted batch and runs the prompt prefix all items share once, reusing its KV cache.
Target: >= 1.5x.

Token identity: lm-eval's string API (`HFLM.loglikelihood`) moves *all* trailing whitespace of
the context into the continuation (`context.rstrip()`), so with a chat template it would also
score the "\\n" after "<|im_start|>assistant" (log p ~ -0.004: the sums then differ by up to
0.004 nats). To compare the very same tokens we hand lm-eval the pre-tokenized pairs through
`HFLM._loglikelihood_tokens`, the token-level half of `loglikelihood` (same sorting, batching,
forward and log-softmax; tokenizing 64 strings is milliseconds and left out of both sides).
"""

from __future__ import annotations

from typing import Any

import pytest

TARGET = 1.5  # harness tokens/s over lm-eval's

pytestmark = pytest.mark.benchmark(group="eval-loss", warmup=False)


def test_teacher_forced_vs_lm_eval(benchmark: Any, lm_eval_hflm: Any, eval_items: list,
                                   tokenizer: Any, timer: Any, alternate: Any, record: Any,
                                   sizes: dict[str, int]) -> None:
    from conftest import eval_vs_lm_eval

    lm = lm_eval_hflm  # its .model is the one weights object both sides use
    out = eval_vs_lm_eval(lm.model, lm, eval_items, tokenizer, sizes["batch"], sizes["rounds"],
                          timer, alternate)
    record(**out, target=TARGET, meets_target=out["ratio"] >= TARGET)
    assert out["max_rel_diff_loglik"] < 1e-3, "per-item log-likelihoods disagree with lm-eval"
