"""Faults, concurrency and output locations that cannot be written, met the way a user meets
them: through the CLI, in subprocesses where signals and locks are involved.

- An output location that cannot be created or written (`run --out`, `merge --out`, `report`)
  is exit 2 with one line naming it, before anything is computed, and nothing is written.
- A run (or resume) holds an exclusive lock on its folder for its lifetime: a second
  `harness resume` of the same run is refused with one line naming the run and the holder.
- A writer's liveness is that lock, not a pid: a `.owner` naming a live, unrelated process
  (pid 1 after a container restart) does not block a resume.
- `harness merge` stopped by SIGTERM leaves no staging folder behind.
- A baseline cache that cannot be written is a warning; the run goes on without caching.

Permissions do not stop root: the read-only folder tests skip as root, and the ones where a
file (or a folder) stands in the way of the output cover the same check for every user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import pipeline
from harness.rundir import results
from harness.rundir.record import load_run

from .conftest import ASSETS, REPO, tiny_suite_text
from .factories import make_run

runner = CliRunner()
FAST = ("--set", "train.max_steps=2", "--set", "eval.max_new_tokens=2")


def run_cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(res, *needles: str) -> str:
    """Exit 2, exactly one line, `error: ...` with every needle in it, no traceback."""
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def _harness(*args: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


# ---------------------------------------------------------------- output locations


def test_run_out_that_is_a_file_is_one_line_and_nothing_written(suite_dir):
    blocker = suite_dir / "results"
    blocker.write_text("not a folder\n")
    res = run_cli("run", suite_dir / "tiny.toml", "--out", blocker, *FAST)
    _one_error_line(res, str(blocker), "is a file")
    assert blocker.read_text() == "not a folder\n"


def test_run_out_below_a_file_is_refused_before_the_data_is_read(suite_dir):
    """Nothing is computed first: the data file is unreadable, yet the path is the error."""
    blocker = suite_dir / "f"
    blocker.write_text("x")
    (suite_dir / "instruct.jsonl").write_text("{not json\n")
    res = run_cli("run", suite_dir / "tiny.toml", "--out", blocker / "deeper" / "out", *FAST)
    _one_error_line(res, str(blocker), "is a file")


ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; "
                          "the file-in-the-way tests cover root")


@ROOT
def test_run_out_read_only_folder_is_one_line(suite_dir):
    out = suite_dir / "ro"
    out.mkdir()
    out.chmod(0o555)
    res = run_cli("run", suite_dir / "tiny.toml", "--out", out, *FAST)
    _one_error_line(res, str(out), "cannot write")
    assert list(out.iterdir()) == []


@ROOT
def test_report_on_a_read_only_run_directory_is_one_line(tmp_path):
    run = make_run(tmp_path / "out")
    before = sorted(p.name for p in run.iterdir())
    run.chmod(0o555)
    try:
        _one_error_line(run_cli("report", run), str(run), "cannot write")
    finally:
        run.chmod(0o755)
    assert sorted(p.name for p in run.iterdir()) == before


def test_report_whose_file_cannot_be_replaced_is_one_line(tmp_path):
    """A folder where report.html goes: the write cannot happen, for root too."""
    run = make_run(tmp_path / "out")
    (run / "report.html").mkdir()
    _one_error_line(run_cli("report", run), str(run / "report.html"), "cannot be written")
    assert not (run / "report.md").exists()


def _shard(out: Path) -> Path:
    """A record-only shard 0/1 (a sweep of one shard): `harness merge` accepts it alone."""
    run = make_run(out)
    rec = json.loads((run / results.RUN_FILE).read_text())
    rec["shard"] = {"index": 0, "count": 1, "arms": ["lora"]}
    (run / results.RUN_FILE).write_text(json.dumps(rec))
    return run


def test_merge_out_that_is_a_file_is_one_line_and_nothing_written(tmp_path):
    shard = _shard(tmp_path / "shards")
    blocker = tmp_path / "merged"
    blocker.write_text("keep me\n")
    res = run_cli("merge", shard, "--out", blocker)
    _one_error_line(res, str(blocker), "is a file")
    assert blocker.read_text() == "keep me\n"


# ---------------------------------------------------------------- merge and SIGTERM


SLOW_REPORTS = """
import sys, time
from harness.views import report
render = report.render_into
def slow(*a, **k):
    print("rendering", flush=True)
    time.sleep(60)
    return render(*a, **k)
report.render_into = slow
from harness.cli import main
sys.argv = ["harness", *sys.argv[1:]]
main()
"""


def test_merge_stopped_by_sigterm_leaves_nothing_to_resume(tmp_path):
    shard = _shard(tmp_path / "shards")
    out = tmp_path / "merged"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_REPORTS, "merge", str(shard), "--out",
                             str(out)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "rendering"  # the merge is staged, mid-write
    assert list((out / "toy").glob(".*.partial"))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "SIGTERM" in stderr, stderr
    assert list((out / "toy").iterdir()) == []  # no staging folder for `run` to offer
    assert results.dead_partials(out / "toy") == []


# ---------------------------------------------------------------- resume: lock and owner


def _suite(folder: Path, model_dir: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "instruct.jsonl", folder / "instruct.jsonl")
    (folder / "tiny.toml").write_text(tiny_suite_text(model_dir), encoding="utf-8")
    return folder / "tiny.toml"


def _stop(*a, **k):
    raise KeyboardInterrupt("SIGTERM")


def _killed(folder: Path, model_dir: Path, monkeypatch, cut: str, *sets: str) -> Path:
    """A run stopped at ``pipeline.<cut>`` (after its baseline), then left as SIGKILL leaves
    one: in its staging folder, with a dead process's pid in .owner."""
    suite = _suite(folder, model_dir)
    with monkeypatch.context() as mp:
        mp.setattr(pipeline, cut, _stop)
        res = run_cli("run", suite, "--out", folder / "out", *sets)
    assert res.exit_code == 1, res.output
    (run,) = (folder / "out" / "tiny").iterdir()
    staging = run.parent / f".{run.name}{results.PARTIAL_SUFFIX}"
    run.rename(staging)
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout
    (staging / results.OWNER_FILE).write_text(dead.strip())
    return staging


def test_two_resumes_of_one_killed_run_one_goes_on_the_other_is_refused(
        tmp_path, tiny_model_dir, monkeypatch):
    """Two `harness resume` started 0.5 s apart: before, both passed the pid check and both
    trained into the one run (its train log held both trainings)."""
    staging = _killed(tmp_path, tiny_model_dir, monkeypatch, "_train_arm",
                      "--set", "train.max_steps=60", "--set", "eval.max_new_tokens=2")
    first = _harness("resume", staging, cwd=tmp_path)
    time.sleep(0.5)
    second = _harness("resume", staging, cwd=tmp_path)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip((first, second), outs) if p.returncode == 2)
    lines = [x for x in refused.splitlines() if x.strip()]
    assert len(lines) == 1 and "still being written by process" in lines[0], refused
    assert staging.name in lines[0]
    winner = next(p for p in (first, second) if p.returncode == 0)
    assert f"process {winner.pid}" in lines[0]  # the holder, named
    run = staging.parent / staging.name[1:-len(results.PARTIAL_SUFFIX)]
    log = [json.loads(x) for x in (run / results.TRAIN_LOG_FILE).read_text().splitlines()]
    steps = [(r["arm"], r["step"], "eval_loss" in r) for r in log]
    assert len(steps) == len(set(steps)), steps  # one training, not two
    assert max(r["step"] for r in log) == 60
    assert load_run(run).record["status"] == "success"


def test_an_owner_pid_of_a_live_unrelated_process_does_not_block_resume(
        tmp_path, tiny_model_dir, monkeypatch):
    """After a container restart the recorded pid may be any live process (pid 1 always is);
    no process holds the run's lock, so it is resumed."""
    staging = _killed(tmp_path, tiny_model_dir, monkeypatch, "_existing_arms", "--eval-only",
                      "--set", "eval.max_new_tokens=2")
    (staging / results.OWNER_FILE).write_text("1")
    res = run_cli("resume", staging)
    assert res.exit_code == 0, res.output
    run = staging.parent / staging.name[1:-len(results.PARTIAL_SUFFIX)]
    rec = load_run(run).record
    assert rec["status"] == "success" and rec["resumes"][0]["kept"] == ["baseline"]
    assert not staging.exists() and not (run / results.OWNER_FILE).exists()


HOLD = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_whose_lock_is_held_is_refused_naming_the_holder(
        tmp_path, tiny_model_dir, monkeypatch):
    staging = _killed(tmp_path, tiny_model_dir, monkeypatch, "_existing_arms", "--eval-only",
                      "--set", "eval.max_new_tokens=2")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(staging)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (staging / results.OWNER_FILE).write_text(json.dumps(
            {"pid": holder.pid, "host": "box-1", "since": "2026-12-06T13:20:05Z"}))
        res = run_cli("resume", staging)
        _one_error_line(res, str(staging), f"process {holder.pid} on box-1",
                        "since 2026-12-06T13:20:05Z")
    finally:
        holder.kill()
        holder.wait()
    assert (staging / ".state.json").is_file()  # untouched
    res = run_cli("resume", staging)  # the holder is gone: its lock with it
    assert res.exit_code == 0, res.output


def test_a_live_run_holds_its_lock_and_says_who_it_is(tmp_path, tiny_model_dir, monkeypatch):
    """While a run writes, its .owner names it: pid, host, boot id, process start time."""
    seen: dict = {}

    def look(run, *a, **k):
        seen["owner"] = json.loads((run.dir.path / results.OWNER_FILE).read_text())
        seen["leftovers"] = results.dead_partials(run.dir.path.parent)

    suite = _suite(tmp_path, tiny_model_dir)
    monkeypatch.setattr(pipeline, "_existing_arms", look)
    res = run_cli("run", suite, "--out", tmp_path / "out", "--eval-only",
                  "--set", "eval.max_new_tokens=2")
    assert res.exit_code == 0, res.output
    owner = seen["owner"]
    assert owner["pid"] == os.getpid() and owner["host"] and owner["since"]
    boot = Path("/proc/sys/kernel/random/boot_id")
    if boot.is_file():
        assert owner["boot_id"] == boot.read_text().strip()
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        assert owner["process_start"] == int(stat[19])
    assert seen["leftovers"] == []  # its own folder is held: not a killed run's leftover


# ---------------------------------------------------------------- the baseline cache


def test_an_unwritable_baseline_cache_is_a_warning_and_the_run_goes_on(suite_dir, monkeypatch):
    blocker = suite_dir / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("HARNESS_CACHE", str(blocker))
    res = run_cli("run", suite_dir / "tiny.toml", "--out", suite_dir / "out", *FAST,
                  "--set", "eval.cache_baseline=true")
    assert res.exit_code == 0, res.output
    assert "warning: zero-shot cache not written" in res.output
    (run,) = (suite_dir / "out" / "tiny").iterdir()
    rec = load_run(run).record
    assert rec["status"] == "success" and set(rec["arms"]) == {"baseline", "lora"}
    said = [w for w in rec["warnings"] if "zero-shot cache not written" in w]
    assert len(said) == 1 and str(blocker) in said[0], rec["warnings"]
    assert blocker.read_text() == ""


@ROOT
def test_a_read_only_baseline_cache_is_a_warning(suite_dir, monkeypatch):
    cache = suite_dir / "ro-cache"
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    res = run_cli("run", suite_dir / "tiny.toml", "--out", suite_dir / "out", *FAST,
                  "--eval-only", "--set", "eval.cache_baseline=true")
    assert res.exit_code == 0, res.output
    assert "warning: zero-shot cache not written" in res.output
    assert list(cache.iterdir()) == []
