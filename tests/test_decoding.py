"""harness's greedy loop (shared prefix from a cache, finished rows leaving the batch) gives
`model.generate`'s greedy tokens, token for token, on the tiny model: rows of different
lengths, a prefix every prompt shares, rows that stop at EOS on different steps."""

from __future__ import annotations

import random

import pytest

from harness.run import decoding, scoring
from harness.run.encoding import Encoded

from .conftest import build_model, build_tokenizer


@pytest.fixture(scope="module")
def model():
    return build_model(build_tokenizer()).eval()


def _prompts(n: int, shared: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    head = [rng.randrange(5, 300) for _ in range(shared)]
    return [head + [rng.randrange(5, 300) for _ in range(rng.randrange(2, 12))]
            for _ in range(n)]


def _reference(model, prompts, max_new: int, eos: list[int]) -> list[list[int]]:
    """transformers' own greedy `generate`, one left-padded batch, cut after EOS."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1,
                           pad_token_id=0, eos_token_id=eos)
    rows = scoring.generate_tokens(model, prompts, cfg).tolist()
    return [row[:scoring._count_until_eos(row, set(eos))] for row in rows]


def _items(prompts):
    return [Encoded(id=str(k), input_ids=(*p, 7), labels=(*[-100] * len(p), 7),
                    prompt_len=len(p), full_len=len(p) + 1, truncated=False)
            for k, p in enumerate(prompts)]


@pytest.mark.parametrize("packed", [False, True], ids=["aten", "prepacked"])
@pytest.mark.parametrize("shared", [0, 12])
def test_greedy_equals_generate_with_rows_stopping_early(model, shared, packed):
    """Also on prepacked weights, as an arm's evaluation runs on the CPU (linearpack): the
    reference is plain `generate` on the model's own layers."""
    import contextlib

    import torch

    from harness.run import linearpack

    prompts = _prompts(9, shared)
    free = _reference(model, prompts, 10, eos=[1])
    # EOS = tokens the rows really produce at different steps, so rows finish at 2, 4, ... 10
    eos = sorted({row[k] for row, k in zip(free, [1, 3, 5, 7])} - {1}) or [1]
    want = _reference(model, prompts, 10, eos)
    assert len({len(r) for r in want}) > 1  # rows do stop on different steps
    prefix = scoring.shared_prefix(model, _items(prompts)) if shared else None
    assert (prefix is not None) == bool(shared)
    with torch.inference_mode(), (linearpack.prepacked(model) if packed
                                  else contextlib.nullcontext()) as n:
        got = decoding.greedy(model, prompts, 10, set(eos), pad_id=0, prefix=prefix)
    assert got == want and (n == 15 if packed else n is None)


def test_generate_uses_the_loop_and_matches_the_model_generate_path(model, monkeypatch):
    """scoring.generate, greedy: texts and token counts equal `generate`'s; sampling still
    runs `generate` (seeded: the same texts twice)."""
    from harness.suite.config import EvalSpec

    tok = build_tokenizer()
    items = _items(_prompts(7, 10, seed=3))
    spec = EvalSpec(max_new_tokens=6, generate_batch_size=4)
    ours = scoring.generate(model, tok, items, spec)
    monkeypatch.setattr(decoding, "supported", lambda *a: False)
    theirs = scoring.generate(model, tok, items, spec)
    assert (ours.texts, ours.n_tokens) == (theirs.texts, theirs.n_tokens)
    sampled = EvalSpec(max_new_tokens=6, generate_batch_size=4, do_sample=True, temperature=1.5)
    monkeypatch.undo()
    assert not decoding.supported(model, scoring.generation_config(model, tok, sampled))
    first = scoring.generate(model, tok, items, sampled).texts
    assert first == scoring.generate(model, tok, items, sampled).texts


def test_a_reserved_cache_layer_holds_what_cat_would():
    """``reserve``: writes into a buffer give the keys and values transformers' own
    ``DynamicLayer`` builds by cat, past the reserved room too, after rows leave and after a
    crop."""
    import torch
    from transformers.cache_utils import DynamicLayer

    g = torch.Generator().manual_seed(0)

    def kv(rows: int, n: int):
        return torch.randn(rows, 2, n, 4, generator=g), torch.randn(rows, 2, n, 4, generator=g)

    class Cache:  # what reserve reads: the layers
        layers = [DynamicLayer(), DynamicLayer()]

    ours, plain = Cache.layers[0], Cache.layers[1]
    for layer, states in ((ours, kv(3, 5)), (plain, None)):
        layer.update(*(states or (ours.keys.clone(), ours.values.clone())))
    decoding.reserve(Cache, 2)
    assert type(ours).__name__ == "Reserved" and ours.get_seq_length() == 5

    def step(rows: int, n: int = 1) -> None:
        k, v = kv(rows, n)
        got, want = ours.update(k, v), plain.update(k.clone(), v.clone())
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    step(3), step(3), step(3, 2)  # the last two tokens go past the 2 reserved
    keep = torch.tensor([0, 2])
    ours.batch_select_indices(keep), plain.batch_select_indices(keep)
    step(2)
    ours.crop(-3), plain.crop(-3)
    step(2)
    assert ours.get_seq_length() == plain.get_seq_length() == 8
