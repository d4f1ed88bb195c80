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
def test_compiled_training_takes_the_eager_steps(suite_dir, tmp_path):
    """Packed (the default), fp32, 12 steps: each step's loss within 1e-5 relative of eager.
    Measured 2.4e-7 at most, 2 float32 ulps: inductor fuses and reorders the same sums. A
    real change (a mask, a position, a dropped token) moves the loss by 1e-3 or more."""
    from torch._dynamo.utils import counters

    common = ("train.logging_steps=1", "train.max_steps=12")
    counters.clear()
    eager = cli_run(suite_dir / "tiny.toml", tmp_path / "eager", *common)
    assert counters["stats"]["calls_captured"] == 0  # nothing compiled unless asked
    compiled = cli_run(suite_dir / "tiny.toml", tmp_path / "compiled", *common,
                       "train.compile=true")
    assert counters["stats"]["calls_captured"] > 0  # dynamo traced the model
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


def test_liger_with_package_and_gpu_validates(suite_dir, liger_installed, monkeypatch):
    _cuda(monkeypatch, True)
    res = CliRunner().invoke(app, ["validate", str(suite_dir / "tiny.toml"),
                                   "--set", "train.liger=true"])
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
