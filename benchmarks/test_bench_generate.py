"""Greedy generation: harness.run.scoring.generate vs a per-example `model.generate` loop and vs
lm-evaluation-harness's `generate_until`.

Same model object, same prompts (the default suite's chat prompts), same `max_new_tokens` (the
suite's 32), greedy, stop at EOS (`<|im_end|>`). harness runs with its defaults: length-sorted,
left-padded batches of `eval.gen_batch_size` (32 unless the suite says otherwise); the loop
calls `generate` once per prompt (no padding at all); lm-eval runs `generate_until`
(until=[eos], max_gen_toks=32) twice: at batch 8 (what its docs and the reports' scripts pass)
and at harness's batch, so the table separates what batching buys from the rest. Ratios are
wall-time ratios over the same items; tokens/s counts generated tokens up to and including EOS
(README's `gen_tokens_per_s`), the harness's count for all.

Agreement: greedy outputs should be identical to the unpadded loop; left padding changes the
float reduction order slightly, which can flip a near-tied token, so the agreement rate is
reported (and a rate below 75% fails: that would be a padding / masking bug, not noise).
Target: >= 2x over the per-example loop and over lm-eval as users run it.
"""

from __future__ import annotations

from typing import Any

import pytest

TARGET = 2.0

pytestmark = pytest.mark.benchmark(group="generate", warmup=False)


def per_example_loop(model: Any, tokenizer: Any, items: list, gen_cfg: Any) -> list[str]:
    """What a notebook does: one `generate` call per prompt, same generation config."""
    import torch

    from harness.run import scoring

    eos = set(gen_cfg.eos_token_id)
    texts = []
    with torch.inference_mode():
        for e in items:
            ids = torch.tensor([e.prompt_ids])
            row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 generation_config=gen_cfg)[0, ids.shape[1]:].tolist()
            n = scoring._count_until_eos(row, eos)
            texts.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip())
    return texts


def test_generate_vs_loop_and_lm_eval(benchmark: Any, lm_eval_hflm: Any, eval_items: list,
                                      splits: Any, tokenizer: Any, suite: Any, timer: Any,
                                      alternate: Any, record: Any, sizes: dict[str, int]) -> None:
    from conftest import evaluating
    from lm_eval.api.instance import Instance

    from harness.run import encoding, scoring

    lm, n = lm_eval_hflm, sizes["gen_items"]
    model, items = lm.model, eval_items[:n]
    spec = suite.eval  # harness's own settings: generation batches of spec.gen_batch_size
    gen_cfg = scoring.generation_config(model, tokenizer, spec)
    gen_kwargs = {"until": [tokenizer.eos_token], "max_gen_toks": spec.max_new_tokens,
                  "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(encoding.prompt_text(ex, tokenizer, suite.data), gen_kwargs))
                for i, ex in enumerate(splits.eval[:n])]
    lm_batch = lm.batch_size_per_gpu

    def lm_eval_at(batch: int, reqs: list) -> list[str]:
        lm.batch_size_per_gpu = batch
        try:
            return [t.strip() for t in lm.generate_until(reqs, disable_tqdm=True)]
        finally:
            lm.batch_size_per_gpu = lm_batch

    # Warm-up on two prompts, so first-call allocation is paid by nobody.
    scoring.generate(model, tokenizer, items[:2], spec)
    per_example_loop(model, tokenizer, items[:1], gen_cfg)
    lm_eval_at(lm_batch, requests[:2])

    # The contenders alternate chunk by chunk: harness's own length-sorted batches, which each
    # baseline then processes its own way; `rounds` passes over the items.
    chunks = scoring.length_sorted_batches([e.prompt_len for e in items], spec.gen_batch_size)
    names = ("harness", "loop", "lm_eval", "lm_eval_same_batch")
    texts: dict[str, dict[int, str]] = {k: {} for k in names}
    n_tokens: dict[int, int] = {}

    def ours(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        with evaluating(model, timer):
            gens = timer.run("harness", lambda: scoring.generate(
                model, tokenizer, [items[j] for j in chunk], spec))
        texts["harness"].update(zip(chunk, gens.texts))
        n_tokens.update(zip(chunk, gens.n_tokens))

    def theirs(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        reqs = [requests[j] for j in chunk]
        out = timer.run("loop", lambda: per_example_loop(
            model, tokenizer, [items[j] for j in chunk], gen_cfg))
        texts["loop"].update(zip(chunk, out))
        out = timer.run("lm_eval", lambda: lm_eval_at(lm_batch, reqs))
        texts["lm_eval"].update(zip(chunk, out))
        out = timer.run("lm_eval_same_batch", lambda: lm_eval_at(spec.gen_batch_size, reqs))
        texts["lm_eval_same_batch"].update(zip(chunk, out))

    alternate(ours, theirs, sizes["rounds"] * len(chunks))

    def agree(other: str) -> float:
        return sum(texts["harness"][j] == texts[other][j] for j in range(n)) / n

    tokens, per_pass = sum(n_tokens.values()), len(chunks)

    # the packing of the weights, which a run does once per arm, charged once per pass
    ours_pass = timer.mean("harness") * per_pass + timer.mean("prepack")

    def tps(name: str) -> float:
        seconds = ours_pass if name == "harness" else timer.mean(name) * per_pass
        return round(tokens / seconds, 2)

    def vs(name: str) -> float:
        return timer.mean(name) * per_pass / ours_pass

    vs_loop, vs_lm, vs_same = vs("loop"), vs("lm_eval"), vs("lm_eval_same_batch")
    record(items=n, generated_tokens=tokens, max_new_tokens=spec.max_new_tokens,
           harness_batch=spec.gen_batch_size, lm_eval_batch=lm_batch, passes=sizes["rounds"],
           harness_tokens_per_s=tps("harness"), loop_tokens_per_s=tps("loop"),
           lm_eval_tokens_per_s=tps("lm_eval"),
           lm_eval_same_batch_tokens_per_s=tps("lm_eval_same_batch"),
           ratio_vs_loop=round(vs_loop, 3), ratio_vs_lm_eval=round(vs_lm, 3),
           ratio_vs_lm_eval_same_batch=round(vs_same, 3),
           ratio_vs_lm_eval_same_batch_min_max=timer.pair_ratios("lm_eval_same_batch",
                                                                 "harness"),
           prepack_s=round(timer.mean("prepack"), 3),
           target=TARGET, meets_target=min(vs_loop, vs_lm) >= TARGET,
           agreement_vs_loop=agree("loop"), agreement_vs_lm_eval=agree("lm_eval"),
           agreement_vs_lm_eval_same_batch=agree("lm_eval_same_batch"))
    assert agree("loop") >= 0.75, "batched greedy outputs differ from the per-example loop"
