"""Training precision on the machine a run lands on: train.precision = "auto" is bf16 mixed
precision only where the device has bf16 instructions and fp32 elsewhere, the record says
which ran, bf16 training computes its frozen products in bf16, and bf16 asked for where it is
slow is said before the training starts."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.run import modeling, packing
from tests.conftest import cli_run

BF16_CAPS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
SHORT = ("train.max_steps=2", "train.logging_steps=1", "train.eval_strategy='no'",
         "data.eval_size=4", "eval.max_new_tokens=2")
native = pytest.mark.skipif(not modeling.native_bf16("cpu"),
                            reason="this CPU has no bf16 instructions")


def _without_bf16_instructions(monkeypatch) -> None:
    """The CPU torch sees becomes one with AVX2 only (most laptops): no bf16 instructions."""
    caps = {**torch.cpu.get_capabilities(), **dict.fromkeys(BF16_CAPS, False)}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)


def _training(run) -> tuple[dict, list[float]]:
    record = json.loads((run / "run.json").read_text())
    (summary,) = record["training"].values()
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return {**summary, "asked": record["config"]["train"]["precision"]}, [
        r["loss"] for r in log if "loss" in r]


def test_auto_trains_in_fp32_on_a_cpu_without_bf16_instructions(suite_dir, tmp_path,
                                                                monkeypatch):
    """On such a CPU a bf16 product takes a fallback ~60x slower than fp32's, so "auto" is
    fp32 there, step for step the fp32 training."""
    fp32 = cli_run(suite_dir / "tiny.toml", tmp_path / "fp32", *SHORT, "train.precision='fp32'")
    _without_bf16_instructions(monkeypatch)
    auto = cli_run(suite_dir / "tiny.toml", tmp_path / "auto", *SHORT, "train.precision='auto'")
    (want, want_losses), (got, got_losses) = _training(fp32), _training(auto)
    assert (got["asked"], got["precision"]) == ("auto", "fp32")
    assert want["precision"] == "fp32" and len(got_losses) == 2
    assert got_losses == want_losses


@native
@pytest.mark.parametrize("asked", ["auto", "bf16"])
def test_bf16_training_runs_its_products_in_bf16(asked, suite_dir, tmp_path):
    """Where the CPU has bf16 instructions "auto" trains in bf16, and every linear product
    of a bf16 training step is a bf16 one: before, the frozen layers' fp32 packed copies
    bypassed autocast (1.37x slower steps than bf16 ones on the default suite)."""
    seen: set[torch.dtype] = set()

    def hook(module, args, out):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        run = cli_run(suite_dir / "tiny.toml", tmp_path / asked, *SHORT,
                      f"train.precision='{asked}'")
    finally:
        handle.remove()
    assert seen == {torch.bfloat16}
    summary, losses = _training(run)
    assert (summary["asked"], summary["precision"]) == (asked, "bf16") and len(losses) == 2


def test_packed_attention_runs_in_fp32_under_cpu_autocast():
    """bf16 SDPA's backward on a CPU took 2.8x fp32's time at the default suite's shapes,
    so packed rows' attention leaves autocast: its output is the fp32 attention's, which a
    bf16 one misses by far more than the tolerance."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 24, 8, generator=g) for h in (4, 2, 2))
    bounds = torch.tensor([0, 10, 24])
    module = torch.nn.Module()
    fp32, _ = packing.attention(module, q, k, v, None, cu_seq_lens_q=bounds)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = packing.attention(module, q, k, v, None, cu_seq_lens_q=bounds)
        plain = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, :10], k[:, :, :10].repeat(1, 2, 1, 1), v[:, :, :10].repeat(1, 2, 1, 1),
            is_causal=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fp32, rtol=1e-6, atol=1e-6)
    assert plain.dtype == torch.bfloat16  # what autocast would have run
    assert (plain.float().transpose(1, 2) - fp32[:, :10]).abs().max() > 1e-4


@pytest.mark.parametrize("asked,warned", [("bf16", True), ("auto", False), ("fp32", False)])
def test_bf16_where_it_is_slow_is_said_before_training(asked, warned, suite_dir, monkeypatch):
    _without_bf16_instructions(monkeypatch)
    res = CliRunner().invoke(app, ["validate", str(suite_dir / "tiny.toml"),
                                   "--set", f"train.precision='{asked}'"])
    assert res.exit_code == 0, res.output
    said = "train.precision = 'bf16' on a device without bf16 instructions" in res.output
    assert said == warned, res.output


@pytest.mark.parametrize("without", [False, True])
def test_plan_says_what_auto_is_on_this_machine(without, suite_dir, monkeypatch):
    if without:
        _without_bf16_instructions(monkeypatch)
    res = CliRunner().invoke(app, ["plan", str(suite_dir / "tiny.toml"),
                                   "--set", "train.precision='auto'"])
    assert res.exit_code == 0, res.output
    here = "bf16" if modeling.native_bf16("cpu") and not without else "fp32"
    assert f"auto: {here} on this machine" in res.output, res.output


@pytest.mark.parametrize("without", [False, True])
def test_the_trainer_arguments_resolve_auto_as_the_training_does(without, suite_dir, tmp_path,
                                                                 monkeypatch):
    """Anything that builds the Trainer's arguments from a suite (a benchmark's plain Trainer
    beside ours) trains in the precision harness would: "auto" is never read as fp32."""
    from harness.run import train
    from harness.suite import suitefile

    if without:
        _without_bf16_instructions(monkeypatch)
    spec = suitefile.load_suite(suite_dir / "tiny.toml", ["train.precision='auto'"]).train
    args = train.training_arguments(spec, tmp_path, "cpu", has_validation=False)
    assert args.bf16 == (modeling.native_bf16("cpu") and not without) and not args.fp16


def test_a_torch_that_cannot_tell_its_cpu_trains_auto_in_fp32(monkeypatch):
    """torch before `torch.cpu.get_capabilities` (the dependency floor is 2.5): "auto" falls
    back to fp32, never to a bf16 that may be the slow fallback, and never to a traceback."""
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    assert not modeling.native_bf16("cpu")
    assert modeling.train_precision("auto", "cpu") == "fp32"
    assert modeling.train_precision("bf16", "cpu") == "bf16"  # asked for: as asked
