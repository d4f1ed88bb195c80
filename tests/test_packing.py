"""Padding-free packed training (train.packing, train.batch_tokens): a packed row computes
what its examples compute alone, and a packed training takes the unpacked one's steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.run import packing
from tests.conftest import cli_run


def _examples(lengths: list[int], prompt: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        ids = torch.randint(5, 300, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * min(prompt, n) + ids[prompt:]})
    return out


def test_a_packed_forward_equals_each_example_alone(tiny_model_dir):
    """Logits at every scored position of a packed row equal each example's own forward (no
    attention across examples, positions restarting), and eval's padded batches are still
    plain SDPA under the packed attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.eval()
    examples = _examples([7, 12, 1, 9, 30])
    row = packing.collate(examples)
    assert row["position_ids"][0].tolist() == [i for e in examples
                                               for i in range(len(e["input_ids"]))]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
                           for e in examples])
        padded = model(input_ids=torch.tensor([[1] * 4 + examples[0]["input_ids"]]),
                       attention_mask=torch.tensor([[0] * 4 + [1] * 7])).logits
        with packing.packed_attention(model):
            assert model.config._attn_implementation == packing.ATTENTION
            inputs = {k: v for k, v in row.items() if k not in ("labels", "shift_labels")}
            packed = model(**inputs).logits[0]
            padded_packed = model(input_ids=torch.tensor([[1] * 4 + examples[0]["input_ids"]]),
                                  attention_mask=torch.tensor([[0] * 4 + [1] * 7])).logits
    assert model.config._attn_implementation == "sdpa"  # restored after training
    keep = row["logits_to_keep"]
    assert len(keep) == sum(len(e["input_ids"]) - 2 for e in examples if len(e["input_ids"]) > 2)
    torch.testing.assert_close(packed, alone[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded_packed[0, 4:], padded[0, 4:], rtol=0, atol=1e-6)
    # each target is the next token of its own example: never the next example's first
    targets = torch.cat([torch.tensor(e["input_ids"][1:]) for e in examples])
    scored = torch.cat([torch.tensor(e["labels"][1:]) != -100 for e in examples])
    assert row["shift_labels"][0].tolist() == targets[scored].tolist()


def test_packs_keep_the_step_examples_in_order_within_the_budget():
    examples = _examples([30, 30, 50, 10, 120, 5])
    packs = packing.plan(examples, budget=64)
    assert [len(e["input_ids"]) for p in packs for e in p] == [30, 30, 50, 10, 120, 5]
    assert [sum(len(e["input_ids"]) for e in p) for p in packs] == [60, 60, 120, 5]
    entries = packing.step_entries([examples[:3], examples[3:]], budget=64,
                                   keep_micro_batches=False)
    assert [len(e["packs"]) for e in entries] == [3, 1]  # the last micro-batch: one backward
    kept = packing.step_entries([examples[:3], examples[3:]], 64, keep_micro_batches=True)
    assert [p["input_ids"].shape[1] for e in kept for p in e["packs"]] == [110, 135]


def _steps(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((run / "adapters").glob("*/adapter_model.safetensors")))


@pytest.mark.parametrize("sets", [
    (),  # one pack per step (8 examples, ~450 tokens)
    ("train.batch_size=4", "train.gradient_accumulation_steps=2", "train.batch_tokens=120"),
], ids=["one-pack-per-step", "accumulation-over-packs"])
def test_packed_training_takes_the_unpacked_steps(sets, suite_dir, tmp_path):
    """Same seeds, same sampler: per-step losses within 1e-4 relative, the adapters' weights
    within 1e-4, padding efficiency 1.0 packed. With a budget of 120 tokens a step's 8
    examples become several packs over the accumulation's two micro-batches."""
    common = ("train.logging_steps=1", "train.max_steps=12", *sets)
    packed = cli_run(suite_dir / "tiny.toml", tmp_path / "packed", *common)
    plain = cli_run(suite_dir / "tiny.toml", tmp_path / "plain", *common, "train.packing=false")
    a, b = _steps(packed), _steps(plain)
    assert sorted(a) == list(range(1, 13)) and sorted(b) == sorted(a)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4), step
    assert len(set(a.values())) > 6  # the loss moved: the steps trained something
    wa, wb = _adapter(packed), _adapter(plain)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-4)
    record = json.loads((packed / "run.json").read_text())
    t_plain = json.loads((plain / "run.json").read_text())["training"]
    (tp,), (tu,) = record["training"].values(), t_plain.values()
    assert tp["packed"] and tp["padding_efficiency"] == 1.0
    # unset: one padded micro-batch's tokens (batch 8 x the longest train item, which the
    # record counts before the suite's max_length of 160 cuts it)
    longest = min(record["data"]["lengths"]["train"]["max"], 160)
    assert tp["batch_tokens"] == (120 if sets else 8 * longest)
    assert not tu["packed"] and tu["padding_efficiency"] < 1.0
    assert tp["train_tokens"] == tu["train_tokens"]  # the same examples, fewer computed
    # the "### Instruction:" prompt every item starts with runs once per pack (packs of 120
    # tokens hold one ~56-token example or two)
    assert (tp["shared_prefix_tokens"] > 0 or sets) and tu["shared_prefix_tokens"] == 0
    assert tp["computed_tokens"] + tp["shared_prefix_tokens"] == tp["train_tokens"]


def test_a_batch_token_budget_below_8_is_exit_2(suite_dir, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out",
                                   str(tmp_path / "out"), "--set", "train.batch_tokens=4"])
    assert res.exit_code == 2
    assert "batch_tokens" in res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("run.json"))


def _sharing(lengths: list[int], shared: list[int], prompt: int) -> list[dict]:
    """Examples that all start with ``shared`` and leave their first ``prompt`` tokens
    unscored."""
    g = torch.Generator().manual_seed(1)
    out = []
    for n in lengths:
        ids = shared + torch.randint(5, 300, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def test_a_shared_prefix_runs_once_and_changes_no_logit(tiny_model_dir):
    """A row of prefix + each example's rest gives, at every scored position, the logits of
    each example's own forward; the prefix stops before the first scored target."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.eval()
    examples = _sharing([7, 12, 1, 9], shared=[11, 12, 13, 14, 15, 16], prompt=5)
    assert packing.shared_prefix(examples) == 4  # token 5 is the first target: not shared
    row = packing.collate(examples, share=True)
    assert row[packing.PREFIX] == 4
    assert row["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples) - 3 * 4
    assert packing.shared_tokens(row) == 12
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
                           for e in examples])
        with packing.packed_attention(model):
            inputs = {k: v for k, v in row.items() if k not in ("labels", "shift_labels")}
            packed = model(**inputs).logits[0]
    scored = torch.cat([torch.tensor(e["labels"][1:]) != -100 for e in examples])
    torch.testing.assert_close(packed, alone[scored], rtol=0, atol=1e-5)
    targets = torch.cat([torch.tensor(e["input_ids"][1:]) for e in examples])
    assert row["shift_labels"][0].tolist() == targets[scored].tolist()
    unshared = packing.collate(examples)
    assert packing.PREFIX not in unshared and packing.shared_tokens(unshared) == 0


def test_a_shared_prefix_row_takes_the_examples_gradients(tiny_model_dir):
    """Backward through the packed attention (split segments, grouped-query heads, the prefix
    read by every example) gives every weight the gradient of the examples' summed loss, each
    computed alone by plain transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    examples = _sharing([7, 12, 3, 9], shared=[11, 12, 13, 14, 15, 16], prompt=5)

    def grads(loss_of):
        model.zero_grad()
        loss_of().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    def alone():
        total = 0
        for e in examples:
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(e["labels"][1:])
            total = total + torch.nn.functional.cross_entropy(logits, labels, reduction="sum",
                                                              ignore_index=-100)
        return total

    def packed():
        row = packing.collate(examples, share=True)
        inputs = {k: v for k, v in row.items() if k not in ("labels", "shift_labels")}
        logits = model(**inputs).logits[0]
        return torch.nn.functional.cross_entropy(logits, row["shift_labels"][0],
                                                 reduction="sum")

    expected = grads(alone)
    with packing.packed_attention(model):
        got = grads(packed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(("examples", "expected"), [
    ([{"input_ids": [1, 2, 3], "labels": [-100] * 3}] * 2, 2),  # each keeps 1 own token
    (_sharing([3], shared=[9, 9, 9], prompt=3), 0),  # one example: nothing to share
    ([{"input_ids": [1, 2, 3, 4], "labels": [-100] * 4},
      {"input_ids": [1, 2, 7, 4], "labels": [-100] * 4}], 2),  # they part at token 2
    (_sharing([3, 3], shared=[9, 9, 9], prompt=1), 0),  # token 1 is a target already
], ids=["keeps-one-own-token", "single", "parting", "first-token-scored"])
def test_the_shared_prefix_stops_where_it_must(examples, expected):
    assert packing.shared_prefix(examples) == expected


@pytest.mark.parametrize("kwarg", ["softcap", "position_bias"])
def test_packed_attention_refuses_what_sdpa_cannot_apply(kwarg):
    """A soft cap or an additive position bias cannot go through SDPA: the packed attention
    says so instead of attending without it."""
    q = torch.zeros(1, 2, 4, 8)
    kv = torch.zeros(1, 1, 4, 8)
    bounds = torch.tensor([0, 2, 4])
    with pytest.raises(ValueError, match=f"cannot apply {kwarg}.*train.packing = false"):
        packing.attention(object(), q, kv, kv, None, cu_seq_lens_q=bounds,
                          **{kwarg: torch.zeros(1) if kwarg == "position_bias" else 50.0})


def test_a_soft_capped_model_trains_unpacked(tiny_model_dir):
    """A model whose attention soft-caps its logits (Gemma 2's config key) is not packed
    under SDPA: the run trains it unpacked, with the reason as its warning."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert packing.unpackable(model) is None
    model.config.attn_logit_softcapping = 50.0
    assert "soft-capping" in packing.unpackable(model)
