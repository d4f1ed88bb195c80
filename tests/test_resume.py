"""`harness resume`: a run killed with SIGKILL during training, or interrupted by SIGTERM /
Ctrl-C, continues into its own run directory and ends equal to a run never stopped (same
arms, per-item losses, train_log rows); resuming is refused (exit 2, one line) when it must
not happen: a live writer, a finished run, another harness version, an edited suite, changed
data."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import harness
from harness.cli import app
from harness.run import pipeline, train
from harness.rundir import journal, results
from harness.rundir.record import load_run
from harness.suite.config import TrainSpec

from .conftest import ASSETS, REPO, tiny_suite_text

runner = CliRunner()
# 100 steps of the tiny suite (~3 s of training); a resume checkpoint every 12 steps (~10% of
# the steps, rounded up to a multiple of logging_steps = 4).
STEPS = ("--set", "train.max_steps=100")
WORKING_FILES = (journal.STATE_FILE, journal.PREDICTIONS_FILE, results.SCRATCH_DIR)


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _suite(folder: Path, model_dir: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "instruct.jsonl", folder / "instruct.jsonl")
    (folder / "tiny.toml").write_text(tiny_suite_text(model_dir) + extra, encoding="utf-8")
    return folder / "tiny.toml"


def _only_run(parent: Path) -> Path:
    (path,) = [p for p in parent.iterdir() if not p.name.startswith(".")]
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The same suite run without a stop (~15 s on 2 cores)."""
    d = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:  # a module fixture runs before the per-test cache
        mp.setenv("HARNESS_CACHE", str(d / "cache"))
        res = run_cli("run", _suite(d, tiny_model_dir), "--out", d / "out", *STEPS)
    assert res.exit_code == 0, res.output
    return _only_run(d / "out" / "tiny")


def _assert_same_run(resumed: Path, reference: Path) -> dict:
    """Same arms, per-item eval losses (rel 1e-5) and train_log rows at the same steps."""
    a, b = load_run(resumed), load_run(reference)
    assert a.record["status"] == "success" and a.record["error"] is None
    assert set(a.record["arms"]) == set(b.record["arms"])
    got = {(p["arm"], p.get("set"), p["id"]): p["loss"] for p in a.predictions}
    want = {(p["arm"], p.get("set"), p["id"]): p["loss"] for p in b.predictions}
    assert got.keys() == want.keys()
    for key, loss in want.items():
        assert got[key] == pytest.approx(loss, rel=1e-5), key
    rows, want_rows = a.train_log(), b.train_log()
    assert [(r["arm"], r["step"]) for r in rows] == [(r["arm"], r["step"]) for r in want_rows]
    for r, w in zip(rows, want_rows):
        assert r.keys() == w.keys(), r
        for k in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            assert r.get(k) == (None if w.get(k) is None else pytest.approx(w[k], rel=1e-5)), r
    assert not [n for n in WORKING_FILES if (resumed / n).exists()]  # an ordinary run dir
    t, w = a.record["training"]["lora"], b.record["training"]["lora"]
    assert t["train_tokens"] == w["train_tokens"] and t["global_steps"] == w["global_steps"]
    assert t["mean_train_loss"] == pytest.approx(w["mean_train_loss"], rel=1e-5)
    return a.record


# ---------------------------------------------------------------- SIGKILL during training


def _wait_for_a_cut(parent: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Until the run has a complete checkpoint and train_log rows past it: a kill then loses
    steps that the resumed run must redo, and rows it must not repeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, ("the run ended before it could be killed",
                                     proc.communicate())
        for staging in parent.glob(".*.partial") if parent.is_dir() else []:
            cut = train.newest_checkpoint(staging / results.SCRATCH_DIR / "lora")
            log = staging / results.TRAIN_LOG_FILE
            steps = [json.loads(x)["step"] for x in log.read_text().splitlines()[:-1]] \
                if cut and log.is_file() else []  # the last line may be half written
            if cut and any(s > cut.step for s in steps):
                return staging
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run never got past its first checkpoint")


def test_kill_9_during_training_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir,
                                                                         reference):
    suite = _suite(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out",
                             str(out), *STEPS], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staging = _wait_for_a_cut(out / "tiny", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    cut = train.newest_checkpoint(staging / results.SCRATCH_DIR / "lora")
    assert cut is not None and (staging / journal.STATE_FILE).is_file()

    res = run_cli("resume", staging)
    assert res.exit_code == 0, res.output
    assert f"lora: continuing from the checkpoint at step {cut.step}" in res.output
    final = out / "tiny" / staging.name[1:-len(results.PARTIAL_SUFFIX)]  # the same run id
    assert _only_run(out / "tiny") == final and not staging.exists()
    record = _assert_same_run(final, reference)
    assert record["training"]["lora"]["resumed_from_step"] == cut.step
    (again,) = record["resumes"]
    assert again["kept"] == ["baseline"] and again["from_step"] == {"lora": cut.step}
    assert record["run_id"] == final.name and record["started_at"] <= again["at"]


# ---------------------------------------------------------------- SIGTERM / Ctrl-C


def _interrupt_at(monkeypatch, target: object, name: str, arm: str, arg: int = 1) -> None:
    """A KeyboardInterrupt (what SIGTERM / Ctrl-C become) when ``target.name`` is called for
    ``arm`` (its positional argument ``arg``, or the ``arm`` keyword)."""
    real = getattr(target, name)

    def interrupted(*a, **k):
        if k.get("arm", a[arg] if len(a) > arg else None) == arm:
            raise KeyboardInterrupt("SIGTERM")
        return real(*a, **k)

    monkeypatch.setattr(target, name, interrupted)


def test_an_interrupted_run_resumes_from_its_failed_directory(tmp_path, tiny_model_dir,
                                                              reference, monkeypatch):
    """SIGTERM during the adapter's eval: the failed record keeps the checkpoints, and the
    resumed run does not train again (0 steps left), it evaluates."""
    suite = _suite(tmp_path, tiny_model_dir)
    real = pipeline._eval_arm
    _interrupt_at(monkeypatch, pipeline, "_eval_arm", "lora")
    res = run_cli("run", suite, "--out", tmp_path / "out", *STEPS)
    assert res.exit_code == 1 and "interrupted by SIGTERM" in res.output
    failed = _only_run(tmp_path / "out" / "tiny")
    assert load_run(failed).record["status"] == "failed"
    assert train.newest_checkpoint(failed / results.SCRATCH_DIR / "lora").step == 100

    monkeypatch.setattr(pipeline, "_eval_arm", real)
    res = run_cli("resume", failed)
    assert res.exit_code == 0, res.output
    record = _assert_same_run(failed, reference)
    assert record["training"]["lora"]["resumed_from_step"] == 100


def test_finished_sweep_cells_are_kept_and_a_shard_stays_its_shard(tmp_path, tiny_model_dir,
                                                                   monkeypatch):
    grid = '\n[sweep.grid]\n"train.r" = [2, 4, 8]\n'
    suite = _suite(tmp_path, tiny_model_dir, grid)
    fast = ("--set", "train.max_steps=4", "--set", "eval.max_new_tokens=2", "--shard", "0/2")
    real = train.train_adapter
    _interrupt_at(monkeypatch, train, "train_adapter", "r8")
    res = run_cli("run", suite, "--out", tmp_path / "out", *fast)
    assert res.exit_code == 1, res.output
    failed = _only_run(tmp_path / "out" / "tiny")
    before = load_run(failed).record

    trained: list[str] = []
    monkeypatch.setattr(train, "train_adapter",
                        lambda *a, **k: trained.append(k["arm"]) or real(*a, **k))
    res = run_cli("resume", failed)
    assert res.exit_code == 0, res.output
    after = load_run(failed).record
    assert trained == ["r8"]  # r2 was finished; r4 is shard 1's
    assert set(after["arms"]) == {"baseline", "r2", "r8"}
    assert after["shard"] == before["shard"] == {"index": 0, "count": 2, "arms": ["r2", "r8"]}
    kept, was = dict(after["arms"]["r2"]), dict(before["arms"]["r2"])
    # the same arm, now marked as measured by the process that stopped
    assert kept.pop("measured")["process"] == was.pop("measured")["process"] + "/stopped"
    assert kept == was
    assert after["training"]["r2"] == before["training"]["r2"]
    assert [c for c in after["comparisons"] if c["candidate"] == "r2"] == \
        [c for c in before["comparisons"] if c["candidate"] == "r2"]


# ---------------------------------------------------------------- refused


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_model_dir, reference) -> Path:
    """An eval-only run stopped by SIGTERM after its baseline, before its existing adapter:
    resumable (a few seconds)."""
    d = tmp_path_factory.mktemp("stopped")
    suite = _suite(d, tiny_model_dir)
    adapter = reference / results.ADAPTERS_DIR / "lora"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(d / "cache"))
        mp.setattr(pipeline, "_existing_arms", _raise_interrupt)
        res = run_cli("run", suite, "--out", d / "out", "--eval-only", "--set",
                      "eval.max_new_tokens=2", "--adapter", f"other={adapter}")
    assert res.exit_code == 1, res.output
    return _only_run(d / "out" / "tiny")


def _raise_interrupt(*a, **k):
    raise KeyboardInterrupt("SIGTERM")


@pytest.fixture()
def copy(stopped, tmp_path) -> Path:
    """A copy of the stopped run, its suite and data (the run recorded where they are)."""
    shutil.copytree(stopped.parents[2], tmp_path / "w")
    path = tmp_path / "w" / "out" / "tiny" / stopped.name
    state = json.loads((path / journal.STATE_FILE).read_text())
    state["suite_file"]["path"] = str(tmp_path / "w" / "tiny.toml")
    state["base_dir"] = str(tmp_path / "w")
    (path / journal.STATE_FILE).write_text(json.dumps(state))
    return path


def _as_killed(run: Path, pid: int) -> Path:
    """The run as SIGKILL leaves it: in its staging folder, ``pid`` in .owner."""
    staging = run.parent / f".{run.name}{results.PARTIAL_SUFFIX}"
    run.rename(staging)
    (staging / results.OWNER_FILE).write_text(str(pid))
    return staging


def _refused(path: Path, *needles: str) -> str:
    res = run_cli("resume", path)
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_run_still_being_written_is_not_resumed(copy):
    """Whoever holds the run folder's lock is writing it (the pid in .owner only names it)."""
    staging = _as_killed(copy, os.getpid())
    live = subprocess.Popen([sys.executable, "-c", _HOLD, str(staging)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "held"
        (staging / results.OWNER_FILE).write_text(str(live.pid))  # what an old harness wrote
        _refused(staging, "still being written by process", str(live.pid))
        _refused(copy, "still being written")  # out/<suite>/<run_id> names the staging folder
    finally:
        live.kill()
        live.wait()
    assert (staging / journal.STATE_FILE).is_file()  # untouched


def test_an_edited_suite_file_is_refused(copy):
    suite = copy.parents[2] / "tiny.toml"
    suite.write_text(suite.read_text() + "\n# edited\n")
    _refused(copy, "suite file", "changed since the run started")
    assert load_run(copy).record["status"] == "failed"  # untouched


def test_another_harness_version_is_refused(copy, monkeypatch):
    monkeypatch.setattr(harness, "__version__", "99.0")
    _refused(copy, "started by harness 0.1.0", "this is harness 99.0")


def test_changed_data_is_refused_before_the_run_is_touched(copy):
    data = copy.parents[2] / "instruct.jsonl"
    rows = data.read_text().splitlines()
    data.write_text("\n".join(reversed(rows)) + "\n")  # other items land in the eval split
    _refused(copy, "data changed since the run started")
    assert copy.is_dir() and load_run(copy).record["status"] == "failed"
    assert not list(copy.parent.glob(".*"))


def test_finished_runs_and_other_folders_are_refused(copy, reference, tmp_path):
    _refused(reference, "the run finished (status success); nothing to resume")
    _refused(tmp_path, "not a run directory or a run's staging folder")
    (copy / journal.STATE_FILE).unlink()
    _refused(copy, f"no {journal.STATE_FILE}")


def test_a_stopped_eval_only_run_resumes_after_a_dead_writer(copy):
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout
    staging = _as_killed(copy, int(dead))
    res = run_cli("resume", copy)  # out/<suite>/<run_id>: only its staging folder exists
    assert res.exit_code == 0, res.output
    rec = load_run(copy).record
    assert rec["status"] == "success" and set(rec["arms"]) == {"baseline", "other"}
    assert rec["resumes"][0]["kept"] == ["baseline"] and not staging.exists()


# ---------------------------------------------------------------- pieces


def test_resume_checkpoints_every_tenth_of_the_steps_on_logging_boundaries():
    spec = TrainSpec(logging_steps=10)
    assert train.checkpoint_steps(spec, 500) == 50
    assert train.checkpoint_steps(spec, 1234) == 130  # 123.4 -> the next multiple of 10
    assert train.checkpoint_steps(spec, 7) == 10  # at least one logging window
    assert train.checkpoint_steps(spec, None) is None
    assert train.checkpoint_steps(TrainSpec(checkpoint_steps=0), 500) is None
    assert train.checkpoint_steps(TrainSpec(checkpoint_steps=7), 500) == 7


def test_a_checkpoint_cut_short_by_a_kill_is_not_resumed_from(tmp_path):
    for step, whole in ((12, True), (24, True), (36, False), (5, True)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if whole:
            (tmp_path / f"checkpoint-{step}" / train.TRAINER_STATE).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert train.newest_checkpoint(tmp_path) == (tmp_path / "checkpoint-24", 24)
    assert train.newest_checkpoint(tmp_path / "missing") is None


def test_resume_checkpoints_do_not_change_the_trainer_arguments_that_compute(tmp_path):
    """Only how checkpoints are saved differs; the suite's own save settings win."""
    spec = TrainSpec(logging_steps=4)
    off = train.training_arguments(spec, tmp_path, "cpu", has_validation=False)
    on = train.training_arguments(spec, tmp_path, "cpu", has_validation=False,
                                  checkpoint_steps=12)
    assert (on.save_strategy, on.save_steps, on.save_total_limit) == ("steps", 12, 1)
    assert not on.save_only_model and off.save_strategy == "no"
    differ = {k for k, v in on.to_dict().items() if off.to_dict()[k] != v}
    assert differ == {"save_strategy", "save_steps", "save_total_limit", "metric_for_best_model"}
    own = TrainSpec(save_strategy="steps", save_steps=50, save_total_limit=3)
    args = train.training_arguments(own, tmp_path, "cpu", has_validation=False,
                                    checkpoint_steps=12)
    assert (args.save_steps, args.save_total_limit) == (50, 3)


def _edit_state(run: Path, edit) -> dict:
    state = json.loads((run / journal.STATE_FILE).read_text())
    edit(state["record"]["arms"]["baseline"]["metrics"])
    (run / journal.STATE_FILE).write_text(json.dumps(state))
    return state["record"]["arms"]["baseline"]["metrics"]


@pytest.mark.parametrize("metric", ["loss", "perplexity"])
def test_a_state_whose_numbers_contradict_its_rows_is_refused(copy, metric):
    """A kept arm's metrics are carried into the resumed record: they must be its rows'."""
    stored = _edit_state(copy, lambda m: m.update({metric: m[metric] * 1.01}))[metric]
    rows = [json.loads(x) for x in (copy / journal.PREDICTIONS_FILE).read_text().splitlines()]
    rows = [r for r in rows if r["arm"] == "baseline" and r.get("set") is None]
    loss = sum(r["nll_sum"] for r in rows) / sum(r["n_tokens"] for r in rows)
    recomputed = loss if metric == "loss" else math.exp(loss)
    _refused(copy, str(copy / journal.STATE_FILE),
             f"arm 'baseline', metric {metric}: stored {stored:.4f}, its {len(rows)} rows give "
             f"{recomputed:.4f}")
    assert load_run(copy).record["status"] == "failed"  # untouched


def test_an_unedited_state_resumes_with_its_numbers_and_system_metrics_as_stored(copy):
    """Throughput and memory have no rows: kept as stored (here edited), not refused."""
    kept = _edit_state(copy, lambda m: m.update(eval_tokens_per_s=12345.0))
    res = run_cli("resume", copy)
    assert res.exit_code == 0, res.output
    assert load_run(copy).record["arms"]["baseline"]["metrics"] == kept


def test_arms_a_stopped_run_measured_are_another_process_after_resume(copy):
    """The kept baseline's speed and memory were measured by the process that stopped: the
    resumed process's adapter is not compared with them (it was: eval tokens/s, gen tokens/s
    and peak memory differences), and the terminal table marks the adapter's values."""
    res = run_cli("resume", copy)
    assert res.exit_code == 0, res.output
    rec = load_run(copy).record
    base, other = rec["arms"]["baseline"]["measured"], rec["arms"]["other"]["measured"]
    assert base["process"] != other["process"] and not base["cached"]
    compared = {c["metric"] for c in rec["comparisons"] if c["candidate"] == "other"}
    assert "loss" in compared
    assert not compared & {"eval_tokens_per_s", "gen_tokens_per_s", "peak_memory_bytes"}
    assert "(other process)" in res.output  # the adapter's speed beside the kept baseline's
    html = (copy / "report.html").read_text()
    assert "other (other process)" in html  # the plots' legend: hollow bars, not compared
