"""The opt-in training kernels: train.compile (torch.compile) trains the steps eager training
takes, and train.liger (Liger's Triton kernels) is refused with one line where it cannot run:
without its package, or without a CUDA GPU. Both land in the record and in `harness plan`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import cli_run
from tests.test_bad_input import check_refused
from tests.test_packing import _steps


def _training(run: Path) -> dict:
    (arm,) = json.loads((run / "run.json").read_text())["training"].values()
    return arm


@pytest.mark.slow  # inductor compiles ~70 s of graphs on 2 CPU cores
def test_compiled_training_takes_the_eager_steps(suite_dir, tmp_path, capfd):
    """Packed (the default), fp32, 12 steps: each step's loss within 1e-5 relative of eager.
    Measured 1.8e-7 and 2.4e-7 at most (2 runs), 2 float32 ulps: inductor reorders sums. A
    real change (a mask, a position, a dropped token) moves the loss by 1e-3 or more.
    Dynamo's warnings go to the run's harness.log, not the terminal."""
    from torch._dynamo.utils import counters

    common = ("train.logging_steps=1", "train.max_steps=12")
    counters.clear()
    eager = cli_run(suite_dir / "tiny.toml", tmp_path / "eager", *common)
    assert counters["stats"]["calls_captured"] == 0  # nothing compiled unless asked
    compiled = cli_run(suite_dir / "tiny.toml", tmp_path / "compiled", *common,
                       "train.compile=true")
    assert counters["stats"]["calls_captured"] > 0  # dynamo traced the model
    # measured here: packed rows of new lengths make dynamo hit its recompile limit (8)
    assert "recompile_limit" in (compiled / "harness.log").read_text()
    assert "torch._dynamo" not in capfd.readouterr().err
    a, b = _steps(compiled), _steps(eager)
    assert sorted(a) == list(range(1, 13)) and sorted(b) == sorted(a)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    assert len(set(a.values())) > 6  # the loss moved
    on, off = _training(compiled), _training(eager)
    assert on["packed"] and on["config"]["compile"] is True and on["config"]["liger"] is False
    assert off["config"]["compile"] is False


@pytest.fixture()
def liger_installed(tmp_path, monkeypatch):
    """An importable `liger_kernel` (an empty package): the check looks for the package, the
    Trainer alone would import it."""
    (tmp_path / "site" / "liger_kernel").mkdir(parents=True)
    (tmp_path / "site" / "liger_kernel" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "liger_kernel", raising=False)


@pytest.fixture()
def liger_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # Python's "not importable"


def _cuda(monkeypatch, available: bool) -> None:
    """What torch says about the machine: a CPU-only one, or one with a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


def test_liger_without_its_package_is_exit_2(suite_dir, liger_missing, monkeypatch):
    _cuda(monkeypatch, True)
    check_refused(suite_dir, "train.liger:", "liger-kernel package is not installed",
                  "pip install 'harness[gpu]'", extra=["--set", "train.liger=true"])


def test_liger_on_a_cpu_only_machine_is_exit_2(suite_dir, liger_installed, monkeypatch):
    _cuda(monkeypatch, False)
    check_refused(suite_dir, "train.liger:", "CUDA GPU only", "no CUDA GPU here",
                  extra=["--set", "train.liger=true"])


def test_liger_with_model_device_cpu_is_exit_2(suite_dir, liger_installed, monkeypatch):
    _cuda(monkeypatch, True)
    check_refused(suite_dir, "train.liger:", "model.device = 'cpu'",
                  extra=["--set", "train.liger=true", "--set", "model.device=cpu"])


def test_liger_with_neither_names_both(suite_dir, liger_missing, monkeypatch):
    _cuda(monkeypatch, False)
    check_refused(suite_dir, "pip install 'harness[gpu]'", "no CUDA GPU here",
                  extra=["--set", "train.liger=true"])


def test_liger_with_an_adapter_on_the_lm_head_is_exit_2(suite_dir, liger_installed,
                                                        monkeypatch):
    """The tiny suite adapts lm_head; Liger's loss would use its base weight alone."""
    _cuda(monkeypatch, True)
    check_refused(suite_dir, "train.liger:", "lm_head", "train.target_modules",
                  extra=["--set", "train.liger=true"])


def test_liger_with_package_and_gpu_validates(suite_dir, liger_installed, monkeypatch):
    _cuda(monkeypatch, True)
    res = CliRunner().invoke(app, ["validate", str(suite_dir / "tiny.toml"),
                                   "--set", "train.liger=true",
                                   "--set", 'train.target_modules=["q_proj", "v_proj"]'])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("sets", "line"), [
    ((), None),
    (("train.compile=true",), "kernels       torch.compile"),
    (("train.liger=true",), "kernels       Liger kernels"),
    (("train.compile=true", "train.liger=true"), "kernels       torch.compile + Liger kernels"),
])
def test_plan_shows_the_kernels_asked_for(suite_dir, sets, line):
    args = ["plan", str(suite_dir / "tiny.toml")]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    kernels = [ln.strip() for ln in res.output.splitlines() if ln.strip().startswith("kernels")]
    assert kernels == ([] if line is None else [line])


def _liger_apply(model) -> None:
    """The Trainer's own call for use_liger_kernel (patches only: no kernel runs here)."""
    pytest.importorskip("liger_kernel", reason="pip install 'harness[gpu]'")
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(model, None)


def _stand_in_apply(model) -> None:
    """What Liger's patching does, where it is not installed: forwards bound onto module
    instances, the family module's function and classes replaced, and a global loss."""
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama

    base = model.get_base_model()
    for m in base.modules():
        if type(m).__name__ in ("LlamaRMSNorm", "LlamaMLP"):
            m.__dict__["forward"] = (lambda self, x: x * 0).__get__(m)
    modeling_llama.apply_rotary_pos_emb = lambda q, k, *a, **kw: (q, k)
    modeling_llama.LlamaRMSNorm = torch.nn.Identity
    F.cross_entropy = lambda *a, **kw: torch.zeros(())


@pytest.mark.parametrize("apply", [_liger_apply, _stand_in_apply], ids=["liger", "stand-in"])
def test_liger_patches_end_with_training(apply, tiny_model_dir):
    """train.liger patches the model for training only: afterwards the model, the model
    family and torch compute exactly what they did before (here on the CPU, where Liger's
    Triton kernels could not run at all)."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from harness.run import kernels

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    family = dict(vars(modeling_llama))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    cross_entropy = F.cross_entropy
    with kernels.training_only(model, enabled=True):
        apply(model)
        patched = [m for m in model.modules() if "forward" in m.__dict__]
        assert patched  # the patch took
    assert not [m for m in model.modules() if "forward" in m.__dict__]
    assert {k for k, v in vars(modeling_llama).items() if family.get(k) is not v} == set()
    assert F.cross_entropy is cross_entropy
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    later = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # built after: all eager
    assert type(later.model.norm) is family["LlamaRMSNorm"]
