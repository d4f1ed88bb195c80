"""Multiple-choice scoring: harness.run.scoring.choice_loglikelihoods vs lm-evaluation-harness.

Both score the default suite's `modules` forgetting set (60 four-choice questions, each with
its 3 solved examples before it, ~125 context tokens; read and encoded by harness's own suite,
data and evaluation code, as `harness run` does) with the same weights object, float32 on the
CPU, batch 8, and must give the same log-likelihood for every choice and the same acc and
acc_norm pick for every document. lm-eval's picks are computed as its `multiple_choice`
`process_results` does: argmax of the log-likelihoods, and of log-likelihood / len(choice)
characters for acc_norm. Speed is documents per second; each side's time includes its own
tokenization of the texts (harness `encode_choices`, lm-eval `_encode_pair`).

What differs: lm-eval scores one (context, continuation) request per choice, so each context
runs 4 times through the model, with the full-vocabulary log-softmax at every position;
harness runs each context once (left-padded, LM head at its last position only) and every
choice of the batch's items from its KV cache. "Batch 8" is each tool's own unit: 8 requests
(choices) for lm-eval's `--batch_size 8`, 8 items (32 choices) for harness's
`eval.batch_size = 8`, the default suite's. Target: >= 1.5x.

Token identity: the contexts end in "Answer:" with no trailing whitespace and have no chat
template, so lm-eval's string API (`HFLM.loglikelihood` on `Instance`s, the path its
`simple_evaluate` takes) tokenizes every pair exactly as harness does; the test asserts it
before timing, so the comparison goes through lm-eval's public entry point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

TARGET = 1.5  # harness documents/s over lm-eval's
SET = "modules"  # the default suite's multiple-choice forgetting set

pytestmark = pytest.mark.benchmark(group="multiple-choice", warmup=False)


@pytest.fixture(scope="module")
def choice_set(suite, tokenizer):
    """The set as `harness run` scores it: (its data.EvalSet, its evaluation.Target)."""
    from harness.run import evaluation
    from harness.suite import data

    eval_set = {s.name: s for s in data.load_eval_sets(suite)}[SET]
    return eval_set, evaluation.set_target(eval_set, tokenizer)


def _requests(eval_set: Any, tokenizer: Any, docs: list[int]) -> list[Any]:
    """lm-eval's requests for ``docs``: one loglikelihood Instance per choice, (context,
    continuation) as its multiple_choice task builds them (the continuation carries the
    separating space, here the set's choice_template " {{ choice }}")."""
    from lm_eval.api.instance import Instance

    from harness.run import encoding

    spec = eval_set.spec.as_data()
    out = []
    for d in docs:
        ex = eval_set.examples[d]
        context = encoding.prompt_text(ex, tokenizer, spec)
        out += [Instance("loglikelihood", {"doc_id": d}, (context, cont), k,
                         metadata=(SET, d, 1)) for k, cont in enumerate(ex.continuations)]
    return out


def _lm_eval_picks(lls: list[float], choices: tuple[str, ...]) -> tuple[int, int]:
    """acc and acc_norm picks as lm-eval's ConfigurableTask.process_results makes them."""
    completion_len = np.array([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(np.array(lls) / completion_len))


def choices_vs_lm_eval(lm: Any, eval_set: Any, target: Any, tokenizer: Any, batch: int,
                       rounds: int, timer: Any, alternate: Any) -> dict[str, Any]:
    """Both sides alternate chunk by chunk (harness's length-sorted batches of ``batch``
    items; lm-eval gets those documents' requests and batches them its own way), ``rounds``
    passes over the set."""
    from conftest import evaluating

    from harness.run import encoding, evaluation, scoring

    model, pad, spec = lm.model, tokenizer.pad_token_id, eval_set.spec.as_data()
    examples, items = eval_set.examples, target.items
    for d, item in enumerate(items):  # the very same tokens on both sides
        got = [lm._encode_pair(r.args[0], r.args[1])
               for r in _requests(eval_set, tokenizer, [d])]
        assert got == [(list(item.context_ids), list(c)) for c in item.continuations], d
    chunks = scoring.length_sorted_batches([len(e.context_ids) for e in items], batch)
    # Warm-up: first calls allocate buffers and pick kernels; neither side should pay for that.
    scoring.choice_loglikelihoods(model, [items[d] for d in chunks[-1]], pad, batch)
    lm.loglikelihood(_requests(eval_set, tokenizer, chunks[-1])[:batch], disable_tqdm=True)

    ours_ll: dict[int, list[float]] = {}
    theirs_ll: dict[int, list[float]] = {}

    def ours(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        with evaluating(model, timer):
            lls = timer.run("harness", lambda: scoring.choice_loglikelihoods(
                model, [encoding.encode_choices(examples[d], tokenizer, spec) for d in chunk],
                pad, batch))
        ours_ll.update(zip(chunk, lls))

    def theirs(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        out = iter(timer.run("lm_eval", lambda: lm.loglikelihood(
            _requests(eval_set, tokenizer, chunk), disable_tqdm=True)))
        theirs_ll.update((d, [next(out)[0] for _ in examples[d].choices]) for d in chunk)

    alternate(ours, theirs, rounds * len(chunks))

    n = len(items)
    rows = [evaluation.choice_row("base", SET, examples[d], ours_ll[d]) for d in range(n)]
    theirs_picks = [_lm_eval_picks(theirs_ll[d], examples[d].choices) for d in range(n)]
    rel = [abs(a - b) / abs(b) for d in range(n) for a, b in zip(ours_ll[d], theirs_ll[d])]
    ours_pass = timer.mean("harness") * len(chunks) + timer.mean("prepack")
    theirs_pass = timer.mean("lm_eval") * len(chunks)
    ctx = sum(len(e.context_ids) for e in items)
    return {
        "documents": n, "choices": len(rel), "batch": batch, "passes": rounds,
        "context_tokens_mean": round(ctx / n, 1),
        # Tokens each side feeds the model per pass (padding excluded): lm-eval each choice's
        # context + continuation minus its last token; harness each context once, then each
        # continuation minus its last token.
        "lm_eval_tokens_fed": sum(len(e.context_ids) + len(c) - 1
                                  for e in items for c in e.continuations),
        "harness_tokens_fed": ctx + sum(len(c) - 1 for e in items for c in e.continuations),
        "lm_eval_docs_per_s": round(n / theirs_pass, 2),
        "harness_docs_per_s": round(n / ours_pass, 2),
        "ratio": round(theirs_pass / ours_pass, 3),
        "batch_ratio_min_max": timer.pair_ratios("lm_eval", "harness"),
        "prepack_s": round(timer.mean("prepack"), 3),
        "max_rel_diff_loglik": max(rel),
        "acc_picks_equal": sum(r["pick"] == p for r, (p, _) in zip(rows, theirs_picks)),
        "acc_norm_picks_equal": sum(r["pick_norm"] == p for r, (_, p) in zip(rows, theirs_picks)),
        "acc": round(float(np.mean([r["acc"] for r in rows])), 4),
        "acc_norm": round(float(np.mean([r["acc_norm"] for r in rows])), 4),
    }


def test_multiple_choice_vs_lm_eval(benchmark: Any, lm_eval_hflm: Any, choice_set: Any,
                                    tokenizer: Any, timer: Any, alternate: Any, record: Any,
                                    sizes: dict[str, int]) -> None:
    lm = lm_eval_hflm  # its .model is the one weights object both sides use
    eval_set, target = choice_set
    out = choices_vs_lm_eval(lm, eval_set, target, tokenizer, sizes["batch"], sizes["rounds"],
                             timer, alternate)
    record(**out, target=TARGET, meets_target=out["ratio"] >= TARGET)
    assert out["max_rel_diff_loglik"] < 1e-4, "choice log-likelihoods disagree with lm-eval"
    assert out["acc_picks_equal"] == out["documents"], "an acc pick differs from lm-eval's"
    assert out["acc_norm_picks_equal"] == out["documents"], "an acc_norm pick differs"
