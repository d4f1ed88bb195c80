"""Evaluation and LoRA training on prepacked linear weights (harness.run.linearpack): the same
logits and greedy text as plain transformers, the same LoRA gradients as plain peft, trainable
weights never through it, the layers given back after, and nothing packed when the copies
would not fit."""

from __future__ import annotations

import pytest
import torch

from harness.run import linearpack

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="torch built without oneDNN")


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    return model


def test_prepacked_logits_and_greedy_text_equal_plain_transformers(tiny_model_dir):
    model = _model(tiny_model_dir)
    ids = torch.randint(5, 300, (3, 17), generator=torch.Generator().manual_seed(0))
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        text = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
        with linearpack.prepacked(model) as n:
            assert n == linears == 15  # 2 layers x 7 projections + the LM head
            packed = model(input_ids=ids).logits
            packed_text = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(packed_text, text)
    assert not any("forward" in vars(m) for m in model.modules())  # the class's own again


def test_gradients_never_run_through_the_packed_weights(tiny_model_dir):
    """A forward that asks for gradients runs the plain layer, so its gradients are the
    plain ones (the packed product has no backward)."""
    model = _model(tiny_model_dir)
    ids = torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(1))

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    with linearpack.prepacked(model):
        packed = grads()
    assert len(packed) == len(plain) > 0
    for a, b in zip(packed, plain):
        assert torch.equal(a, b)


def _lora(tiny_model_dir, **extra):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = _model(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, **extra))


def _trainable_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_training_on_packed_frozen_weights_takes_plain_peft_gradients(tiny_model_dir):
    """Training packs every frozen layer (forward weight and its transpose for the input's
    gradient): the adapter's gradients equal plain peft's, through all 2 layers and the LM
    head, and a backward that skipped the packed transpose would give other ones."""
    model = _lora(tiny_model_dir)
    ids = torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(2))
    plain = _trainable_grads(model, ids)
    with linearpack.prepacked(model, training=True) as n:
        assert n == 15  # the 4 LoRA-wrapped base layers too: their weights are frozen
        packed = _trainable_grads(model, ids)
    assert plain.keys() == packed.keys() and len(plain) == 8  # A and B of 2 x 2 modules
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=1e-4, atol=1e-6)
    assert not any("forward" in vars(m) for m in model.modules())


def test_a_trainable_linear_keeps_the_plain_path_in_training(tiny_model_dir):
    """A layer whose weight trains (peft's modules_to_save: the LM head here) gets its own
    gradient, which a packed product could not give."""
    model = _lora(tiny_model_dir, modules_to_save=["lm_head"])
    ids = torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    plain = _trainable_grads(model, ids)
    with linearpack.prepacked(model, training=True):
        packed = _trainable_grads(model, ids)
    head = [n for n in plain if "lm_head" in n]
    assert head and all(packed[n].abs().sum() > 0 for n in head)
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=1e-4, atol=1e-6)


def _autocast_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="oneDNN has no bf16 on this CPU")
def test_bf16_training_packs_bf16_copies_and_takes_plain_autocast_gradients(tiny_model_dir):
    """Under bf16 autocast (train.precision = "bf16") the frozen layers run on packed bf16
    copies, not fp32 ones (fp32 products under autocast made the default suite's steps 1.37x
    slower), and the adapter's gradients are those of plain peft under torch.autocast: the
    same bf16 products summed in another order. Outside autocast the layers are plain."""
    model = _lora(tiny_model_dir)
    ids = torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(4))
    plain = _autocast_grads(model, ids)
    fp32 = _trainable_grads(model, ids)
    seen: list[torch.dtype] = []
    head = model.get_base_model().lm_head
    hook = head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with linearpack.prepacked(model, training=True, autocast=torch.bfloat16) as n:
        assert n == 15
        packed = _autocast_grads(model, ids)
        assert seen == [torch.bfloat16]
        outside = _trainable_grads(model, ids)  # no autocast: the plain fp32 layer
    hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=2e-2, atol=1e-4)
        torch.testing.assert_close(outside[name], fp32[name], rtol=0, atol=0)
    # bf16 is another computation than fp32: the tolerance above could not hide a slip to it
    assert max(float((plain[k] - fp32[k]).abs().max() / fp32[k].abs().max())
               for k in plain) > 1e-4


def test_bf16_copies_are_counted_at_two_bytes(tiny_model_dir, monkeypatch):
    model = _model(tiny_model_dir)
    weights = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    # the copies may take a quarter of what is available: half the fp32 weights' size here
    monkeypatch.setattr(linearpack, "_available_bytes", lambda: 2 * weights)
    assert len(linearpack.usable(model, compute=torch.bfloat16)) == 15
    assert linearpack.usable(model) == []


def test_nothing_is_packed_when_the_copies_would_not_fit(tiny_model_dir, monkeypatch):
    model = _model(tiny_model_dir)
    weights = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    monkeypatch.setattr(linearpack, "_available_bytes", lambda: 4 * weights - 1)
    with linearpack.prepacked(model) as n:
        assert n == 0
    monkeypatch.setattr(linearpack, "_available_bytes", lambda: 4 * weights)
    with linearpack.prepacked(model) as n:
        assert n == 15


def test_a_run_scores_on_packed_weights_what_plain_transformers_computes(
        suite_dir, tiny_model_dir, tmp_path):
    """Zero-shot eval through the CLI: every item's loss equals plain transformers' mean
    token cross-entropy of its response (1e-5 relative)."""
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.run import encoding, modeling
    from harness.rundir.record import load_run
    from harness.suite import data, suitefile

    res = CliRunner().invoke(app, ["run", str(suite_dir / "tiny.toml"), "--eval-only",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    run = load_run(next((tmp_path / "out" / "tiny").iterdir()))
    by_id = {r["id"]: r for r in run.items("baseline")}
    suite = suitefile.load_suite(suite_dir / "tiny.toml")
    tok = modeling.load_tokenizer(suite.model, str(tiny_model_dir))
    items, _ = encoding.encode_all(data.load_splits(suite).eval, tok, suite.data)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    assert len(items) == len(by_id) == 12
    with torch.no_grad():
        for e in items:
            want = model(input_ids=torch.tensor([e.input_ids]),
                         labels=torch.tensor([e.labels])).loss.item()
            assert by_id[e.id]["loss"] == pytest.approx(want, rel=1e-5), e.id
