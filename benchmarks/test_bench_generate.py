"""Greedy generation: harness.scoring.generate vs a per-example `model.generate` loop and vs
lm-evaluation-harness's `generate_until`.

Same model object, same prompts (the default suite's chat prompts), same `max_new_tokens` (the
suite's 32), greedy, stop at EOS (`<|im_end|>`). harness batches 8 length-sorted, left-padded
prompts per `generate` call; the loop calls `generate` once per prompt (no padding at all);
lm-eval batches 8 left-padded prompts too and stops on the EOS string (until=[eos],
max_gen_toks=32). Ratios are wall-time ratios over the same items; tokens/s counts generated
tokens up to and including EOS (DESIGN §2 `gen_tokens_per_s`), the harness's count for all.

Agreement: greedy outputs should be identical to the unpadded loop; left padding changes the
float reduction order slightly, which can flip a near-tied token, so the agreement rate is
reported (and a rate below 75% fails: that would be a padding / masking bug, not noise).
Target: >= 2x over the per-example loop.
"""

from __future__ import annotations

from typing import Any

import pytest

TARGET_VS_LOOP = 2.0

pytestmark = pytest.mark.benchmark(group="generate", warmup=False)


def per_example_loop(model: Any, tokenizer: Any, items: list, gen_cfg: Any) -> list[str]:
    """What a notebook does: one `generate` call per prompt, same generation config."""
    import torch

    from harness import scoring

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
    from lm_eval.api.instance import Instance

    from harness import encoding, scoring

    lm, n = lm_eval_hflm, sizes["gen_items"]
    model, items = lm.model, eval_items[:n]
    spec = suite.eval.model_copy(update={"batch_size": sizes["batch"]})
    gen_cfg = scoring.generation_config(model, tokenizer, spec)
    gen_kwargs = {"until": [tokenizer.eos_token], "max_gen_toks": spec.max_new_tokens,
                  "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(encoding.prompt_text(ex, tokenizer, suite.data), gen_kwargs))
                for i, ex in enumerate(splits.eval[:n])]

    # Warm-up on two prompts, so first-call allocation is paid by nobody.
    scoring.generate(model, tokenizer, items[:2], spec)
    per_example_loop(model, tokenizer, items[:1], gen_cfg)
    lm.generate_until(requests[:2], disable_tqdm=True)

    # The contenders alternate batch by batch (the same length-sorted batches of 8 prompts
    # harness and lm-eval form on their own), `rounds` passes over the items.
    chunks = scoring.length_sorted_batches([e.prompt_len for e in items], spec.batch_size)
    texts: dict[str, dict[int, str]] = {"harness": {}, "loop": {}, "lm_eval": {}}
    n_tokens: dict[int, int] = {}

    def ours(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        gens = timer.run("harness", lambda: scoring.generate(
            model, tokenizer, [items[j] for j in chunk], spec))
        texts["harness"].update(zip(chunk, gens.texts))
        n_tokens.update(zip(chunk, gens.n_tokens))

    def theirs(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        out = timer.run("loop", lambda: per_example_loop(
            model, tokenizer, [items[j] for j in chunk], gen_cfg))
        texts["loop"].update(zip(chunk, out))
        out = timer.run("lm_eval", lambda: lm.generate_until(
            [requests[j] for j in chunk], disable_tqdm=True))
        texts["lm_eval"].update(zip(chunk, (t.strip() for t in out)))

    alternate(ours, theirs, sizes["rounds"] * len(chunks))

    agree_loop = sum(texts["harness"][j] == texts["loop"][j] for j in range(n)) / n
    agree_lm = sum(texts["harness"][j] == texts["lm_eval"][j] for j in range(n)) / n
    tokens, per_pass = sum(n_tokens.values()), len(chunks)
    vs_loop, vs_lm = timer.ratio("loop", "harness"), timer.ratio("lm_eval", "harness")
    record(items=n, generated_tokens=tokens, max_new_tokens=spec.max_new_tokens,
           batch=spec.batch_size, passes=sizes["rounds"],
           harness_tokens_per_s=round(tokens / (timer.mean("harness") * per_pass), 2),
           loop_tokens_per_s=round(tokens / (timer.mean("loop") * per_pass), 2),
           lm_eval_tokens_per_s=round(tokens / (timer.mean("lm_eval") * per_pass), 2),
           ratio_vs_loop=round(vs_loop, 3), ratio_vs_lm_eval=round(vs_lm, 3),
           batch_ratio_vs_lm_eval_min_max=timer.pair_ratios("lm_eval", "harness"),
           target_vs_loop=TARGET_VS_LOOP, meets_target=vs_loop >= TARGET_VS_LOOP,
           agreement_vs_loop=agree_loop, agreement_vs_lm_eval=agree_lm)
    assert agree_loop >= 0.75, "batched greedy outputs differ from the per-example loop"
