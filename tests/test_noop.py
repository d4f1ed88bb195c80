""""This adapter does nothing", through the CLI on the tiny model: an adapter saved from an
untouched `get_peft_model` (LoRA B = 0; IA3 vectors = 1), a never-trained LoRA (random A,
B = 0), a LoRA whose training moved nothing, and an adapter whose update is too small to move
any loss are flagged (arm `noop`,
a run warning, the report's lead); `gate` fails them unless `--allow-noop`; a trained adapter
and a random one are not flagged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import cli_run

runner = CliRunner()
GATE = ["--rule", "loss:+1000%:vs-zero-shot"]  # a rule every arm passes: only noop can fail


def _adapter(model_dir: Path, out: Path, kind: str) -> Path:
    """peft's own constructors: its default init (LoRA B = 0, IA3 = 1) unless ``kind`` says
    random, or ``tiny``: random A and B scaled to 1e-12 (nonzero, yet moves no loss)."""
    import torch
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    if kind == "ia3":
        cfg: Any = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                             feedforward_modules=["down_proj"], task_type="CAUSAL_LM")
    else:
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                         init_lora_weights=kind == "untouched", task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    if kind in ("tiny", "never_trained"):  # random A; B scaled to 1e-12, or zeroed
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(1e-12 if kind == "tiny" else 0.0)
    model.save_pretrained(out)
    return out


def _with_adapters(suite_dir: Path, adapters: dict[str, Path]) -> Path:
    """The tiny suite without [train]: its zero-shot arm and ``adapters``."""
    text = (suite_dir / "tiny.toml").read_text(encoding="utf-8")
    text = text[: text.index("[train]")] + text[text.index("[eval]"):]
    for name, path in adapters.items():
        text += f"\n[[adapters]]\nname = {json.dumps(name)}\npath = {json.dumps(str(path))}\n"
    path = suite_dir / "adapters.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _record(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))


def test_untouched_and_negligible_adapters_are_flagged_and_fail_the_gate(suite_dir,
                                                                         tiny_model_dir):
    made = {k: _adapter(tiny_model_dir, suite_dir / k, k)
            for k in ("untouched", "never_trained", "ia3", "tiny", "random")}
    run = cli_run(_with_adapters(suite_dir, made), suite_dir / "out")
    record = _record(run)
    arms = record["arms"]
    assert "every LoRA B matrix is zero (4 of them)" in arms["untouched"]["noop"]
    assert "every LoRA B matrix is zero (4 of them)" in arms["never_trained"]["noop"]
    assert "every IA3 vector is 1 (6 of them)" in arms["ia3"]["noop"]
    assert "per-item losses equal the zero-shot arm's on all 12 items" in arms["tiny"]["noop"]
    assert "noop" not in arms["random"]
    assert sum("does nothing" in w for w in record["warnings"]) == 4
    report = (run / "report.md").read_text(encoding="utf-8")
    assert report.count("**Adapter does nothing:**") == 4
    assert report.index("Adapter does nothing") < report.index("## Headline")
    gate = runner.invoke(app, ["gate", str(run), *GATE])
    assert gate.exit_code == 1, gate.output
    assert "4 adapters that do nothing" in gate.output
    assert "arm untouched does nothing" in gate.output and "random does" not in gate.output
    allowed = runner.invoke(app, ["gate", str(run), *GATE, "--allow-noop"])
    assert allowed.exit_code == 0, allowed.output


def test_a_lora_whose_training_moved_nothing_is_flagged(suite_dir):
    """A learning rate of 1e-30 (the schema refuses 0): Adam's steps move B by ~1e-30 from
    peft's zeros, so the weights are not exactly zero but no loss moves. The same recipe at
    the suite's learning rate is not flagged."""
    suite = suite_dir / "tiny.toml"
    still = cli_run(suite, suite_dir / "still", "train.learning_rate=1e-30",
                    "train.max_steps=2")
    noop = _record(still)["arms"]["lora"]["noop"]
    assert noop.startswith("its per-item losses equal the zero-shot arm's")
    assert runner.invoke(app, ["gate", str(still), *GATE]).exit_code == 1
    trained = cli_run(suite, suite_dir / "trained", "train.max_steps=4")
    assert "noop" not in _record(trained)["arms"]["lora"]
    assert runner.invoke(app, ["gate", str(trained), *GATE]).exit_code == 0


@pytest.mark.parametrize("loss_shift, flagged", [(0.0, True), (5e-7, True), (1e-4, False)])
def test_equal_losses_are_within_a_millionth(loss_shift: float, flagged: bool):
    from harness.run import noop

    base = [{"set": None, "id": str(i), "loss": 2.0 + i} for i in range(5)]
    arm = [{**r, "loss": r["loss"] * (1 + loss_shift)} for r in base]
    assert (noop.same_losses(base, arm) is not None) is flagged
