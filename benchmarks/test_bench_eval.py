"""Teacher-forced eval loss: harness.scoring.teacher_forced vs lm-evaluation-harness.

Both score the same items of the default suite (SmolLM2-135M-Instruct, chat template, prompt +
reference + EOS) with the same weights object, batch 8, float32 on the CPU, and must give the
same per-item log-likelihood of the reference tokens. Throughput counts prompt + reference
tokens (DESIGN §2 `eval_tokens_per_s`) for both, so the tokens/s ratio is the wall-time ratio.

What differs (DESIGN §8): lm-eval computes full-vocabulary logits and log-softmax (49k classes)
at every position; harness applies the LM head only from the first scored position of each
length-sorted batch. Target: >= 1.5x.

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
    from harness import scoring

    lm, batch = lm_eval_hflm, sizes["batch"]
    model = lm.model  # one weights object for both sides
    pad = tokenizer.pad_token_id
    requests = [((tokenizer.decode(e.prompt_ids), tokenizer.decode(e.input_ids[e.prompt_len:])),
                 list(e.prompt_ids), list(e.input_ids[e.prompt_len:])) for e in eval_items]
    fed = sum(len(e.input_ids) for e in eval_items)  # prompt + reference tokens, no padding

    # Warm-up: first calls allocate buffers and pick kernels; neither side should pay for that.
    scoring.teacher_forced(model, eval_items[:batch], batch, pad)
    lm._loglikelihood_tokens(requests[:batch], disable_tqdm=True)

    def ours() -> None:
        timer.run("harness", lambda: scoring.teacher_forced(model, eval_items, batch, pad))

    def theirs() -> None:
        timer.run("lm_eval", lambda: lm._loglikelihood_tokens(requests, disable_tqdm=True))

    alternate(ours, theirs, sizes["rounds"])

    losses, _ = timer.results["harness"]
    ll = timer.results["lm_eval"]  # [(sum log p of the continuation, is_greedy)] in input order
    assert [x.n_tokens for x in losses] == [len(r[2]) for r in requests]
    rel = [abs(-lp - x.nll_sum) / abs(lp) for (lp, _), x in zip(ll, losses)]
    ratio = timer.ratio("lm_eval", "harness")
    record(items=len(eval_items), tokens=fed, batch=batch, rounds=sizes["rounds"],
           lm_eval_tokens_per_s=round(fed / timer.mean("lm_eval"), 1),
           harness_tokens_per_s=round(fed / timer.mean("harness"), 1),
           ratio=round(ratio, 3), target=TARGET, meets_target=ratio >= TARGET,
           max_rel_diff_loglik=max(rel))
    assert max(rel) < 1e-3, "per-item log-likelihoods disagree with lm-eval"
