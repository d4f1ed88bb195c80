"""Several processes, one run: `torchrun --nproc-per-node 2 -m harness run` on the CPU (gloo).
Rank 0 writes the one run directory; evaluation is data-parallel and equals a one-process
run's; training ran on both ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.rundir.record import load_run

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "suites" / "ci.toml"


def _run(cmd: list[str], out: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd + ["run", str(SUITE), "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    runs = [p for p in (out / "ci").iterdir()]
    assert len(runs) == 1, runs  # one run directory, no partial of another rank
    return runs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not installed")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    d = tmp_path_factory.mktemp("ddp")
    two = _run([torchrun, "--nproc-per-node", "2", "-m", "harness"], d / "two")
    one = _run([sys.executable, "-m", "harness"], d / "one")
    return two, one


def test_evaluation_equals_a_one_process_run(runs):
    two, one = (load_run(p) for p in runs)
    for a, b in zip(two.items("baseline"), one.items("baseline"), strict=True):
        assert a["id"] == b["id"]
        assert a["nll_sum"] == pytest.approx(b["nll_sum"], rel=1e-5)
        assert a["prediction"] == b["prediction"]  # same greedy output
    assert two.record["arms"]["baseline"]["metrics"]["loss"] == pytest.approx(
        one.record["arms"]["baseline"]["metrics"]["loss"], rel=1e-6)


def test_training_ran_on_two_ranks(runs):
    two, one = (load_run(p) for p in runs)
    t2, t1 = two.record["training"]["lora"], one.record["training"]["lora"]
    assert (t2["world_size"], t1["world_size"]) == (2, 1)
    assert t2["effective_batch_size"] == 2 * t1["effective_batch_size"]  # batch_size per device
    assert t2["train_tokens"] > t1["train_tokens"]  # both ranks' micro-batches counted
    # packed on both ranks (one padding-free row per micro-batch under DDP)
    assert t2["packed"] and t2["padding_efficiency"] == 1.0 == t1["padding_efficiency"]
    assert two.record["status"] == "success"
    rows = (runs[0] / "train_log.jsonl").read_text().splitlines()
    assert len(rows) == len((runs[1] / "train_log.jsonl").read_text().splitlines())  # rank 0 only
