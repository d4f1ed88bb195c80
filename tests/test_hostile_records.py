"""Records and resume states someone else wrote or edited: a key of the wrong JSON type, a
state of another format version, a record asking for 10^12 resamples or shards. Every reader
(`compare`, `gate`, `report`, `merge`, `resume`) refuses them with exit 2 and one line naming
the file and the key; none crashes or hangs. Records of this and earlier versions still read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import harness
from harness.cli import app
from harness.rundir import journal, results
from harness.rundir.record import SCHEMA_VERSION, load_run
from harness.suite import config, suitefile, sweep

from .conftest import REPO
from .factories import make_run

runner = CliRunner()


def _cli(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res: Any, *needles: str) -> str:
    """Exit 2, one stderr line ``error: ...`` holding every needle, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _edit(path: Path, name: str, edit: Callable[[Any], Any]) -> Path:
    """Rewrite ``path/name`` (JSON) as ``edit`` returns it; strict json module throughout."""
    where = path / name
    where.write_text(json.dumps(edit(json.loads(where.read_text(encoding="utf-8")))),
                     encoding="utf-8")
    return where


def _put(dotted: str, value: Any) -> Callable[[Any], Any]:
    """An edit setting ``a.b.c`` (made where missing) to ``value``."""
    def edit(obj: Any) -> Any:
        *head, last = dotted.split(".")
        node = obj
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
        return obj
    return edit


# ---------------------------------------------------------------- run.json, wrong types

# (key, value written there, what the one line says)
WRONG_TYPES = [
    ("arms", [], "`arms` must be an object, got a list"),
    ("stats", "fast", "`stats` must be an object, got a string"),
    ("arms.lora", "lora", "`arms.lora` must be an object, got a string"),
    ("arms.lora.metrics", [0.5], "`arms.lora.metrics` must be an object, got a list"),
    ("arms.lora.metrics.rougeL", "0.5", "`arms.lora.metrics.rougeL` must be a number or null"),
    ("arms.baseline.metrics", 3, "`arms.baseline.metrics` must be an object, got an integer"),
    ("comparisons", {"metric": "loss"}, "`comparisons` must be a list, got an object"),
    ("comparisons", [7], "`comparisons[0]` must be an object, got an integer"),
    ("data", ["fp"], "`data` must be an object, got a list"),
    ("data.eval_sets", ["general"], "`data.eval_sets` must be an object, got a list"),
    ("stats.n_resamples", "many", "`stats.n_resamples` must be an integer, got a string"),
    ("stats.seed", -1, "`stats.seed` must be at least 0, got -1"),
    ("stats.alpha", 5, "`stats.alpha` must be between 0 and 1, got 5"),
    ("training", [], "`training` must be an object, got a list"),
    ("seed_comparisons", [{"metric": "loss"}], "`seed_comparisons[0].recipe` is missing"),
]
COMMANDS = {
    "compare": lambda run, other: ("compare", run),
    "compare-two": lambda run, other: ("compare", other, run),
    "gate": lambda run, other: ("gate", run, "--baseline", other, "--rule", "rougeL:-1%"),
    "gate-as-baseline": lambda run, other: ("gate", other, "--baseline", run),
    "gate-vs-zero-shot": lambda run, other: ("gate", run, "--rule", "loss:+1%:vs-zero-shot"),
    "report": lambda run, other: ("report", run),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("records")
    return {"good": make_run(d / "a", seed=0), "other": make_run(d / "b", seed=1)}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("key,value,says", WRONG_TYPES, ids=[f"{k}={v!r}" for k, v, _ in
                                                                WRONG_TYPES])
def test_a_record_key_of_the_wrong_type_is_one_line_naming_file_and_key(
        runs, tmp_path, command, key, value, says):
    run = tmp_path / "run"
    shutil.copytree(runs["good"], run)
    where = _edit(run, results.RUN_FILE, _put(key, value))
    before = sorted(p.name for p in run.iterdir())
    res = _cli(*COMMANDS[command](run, runs["other"]))
    if command == "compare-two":  # among several runs an unreadable one is skipped, said so
        assert res.exit_code == 0 and res.exception is None, res.output
        (line,) = [x for x in res.output.splitlines() if x.startswith("warning: skipped: ")]
        assert str(where) in line and says in line, line
    else:
        _one_line_error(res, str(where), says)
    assert sorted(p.name for p in run.iterdir()) == before  # report wrote nothing


def test_merge_refuses_a_shard_whose_record_has_the_wrong_types(tmp_path):
    shards = [make_run(tmp_path / f"s{i}", seed=i) for i in range(2)]
    for i, s in enumerate(shards):
        _edit(s, results.RUN_FILE, _put("shard", {"index": i, "count": 2, "arms": ["lora"]}))
    where = _edit(shards[1], results.RUN_FILE, _put("arms", [["lora", {}]]))
    _one_line_error(_cli("merge", *shards, "--out", tmp_path / "out"), str(where),
                    "`arms` must be an object, got a list")
    assert not (tmp_path / "out").exists()


def test_a_predictions_line_that_is_not_an_object_is_one_line(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["good"], run)
    with open(run / results.PREDICTIONS_FILE, "a", encoding="utf-8") as f:
        f.write("[1, 2]\n")
    _one_line_error(_cli("compare", run), f"{run / results.PREDICTIONS_FILE}:",
                    "a line must be an object, got a list")


# ---------------------------------------------------------------- absurd sizes: no hang

def _subprocess_cli(*args: Any, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI as a user starts it; a hang is a failed test after ``timeout`` s, not a stuck
    suite (old code: 10^12 resamples, ~2 days per metric at 40 items)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("value", [10**12, 1e12])
def test_a_record_asking_for_1e12_resamples_is_refused_not_a_hang(runs, tmp_path, value):
    run = tmp_path / "run"
    shutil.copytree(runs["other"], run)
    where = _edit(run, results.RUN_FILE, _put("stats.n_resamples", value))
    rule = ("--rule", "rougeL:-1%")
    for args in (("compare", run), ("gate", run, "--baseline", runs["good"], *rule),
                 ("gate", runs["good"], "--baseline", run, *rule)):
        res = _subprocess_cli(*args)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
        assert str(where) in res.stderr and "`stats.n_resamples` must be within 1 and " \
            f"{harness.suite.config.MAX_RESAMPLES:,}" in res.stderr, res.stderr


def test_the_resample_bound_is_the_suite_configs(suite_dir):
    """One constant: a suite may not ask for more than a record may."""
    from harness.suite.config import MAX_RESAMPLES

    ok = suitefile.load_suite(suite_dir / "tiny.toml", [f"stats.n_resamples={MAX_RESAMPLES}"])
    assert ok.stats.n_resamples == MAX_RESAMPLES
    res = _cli("validate", suite_dir / "tiny.toml", "--set",
               f"stats.n_resamples={MAX_RESAMPLES + 1}")
    assert res.exit_code == 2 and "n_resamples" in res.output, res.output


def test_a_shard_record_of_1e12_shards_is_refused_not_a_hang(tmp_path):
    shards = [make_run(tmp_path / f"s{i}", seed=i) for i in range(2)]
    for i, s in enumerate(shards):
        where = _edit(s, results.RUN_FILE,
                      _put("shard", {"index": i, "count": 10**12, "arms": ["lora"]}))
    res = _subprocess_cli("merge", *shards, "--out", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"`shard.count` must be within 1 and {sweep.MAX_SHARDS:,}" in res.stderr
    assert str(shards[0] / results.RUN_FILE) in res.stderr or str(where) in res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- backward compatible

def test_records_of_this_and_earlier_versions_still_read(runs):
    committed = REPO / "results" / "baselines" / "ci"
    assert _cli("compare", committed).exit_code == 0
    res = _cli("gate", runs["other"], "--baseline", runs["good"])
    assert res.exit_code in (0, 1) and res.exception is None or isinstance(
        res.exception, SystemExit), res.output
    for run in (committed, runs["good"]):
        load_run(run)  # raises on a shape it refuses


# ---------------------------------------------------------------- resume states

@pytest.fixture()
def killed(suite_dir, tmp_path) -> Path:
    """The staging folder a run killed before its first arm leaves (its writer gone): the
    state exactly as journal.Journal writes it, for the suite in ``suite_dir``."""
    suite_file = suite_dir / "tiny.toml"
    suite = suitefile.load_suite(suite_file)
    dumped = config.dump(suite)
    staging = tmp_path / "out" / "tiny" / ".20261122T000000-abcdef.partial"
    staging.mkdir(parents=True)
    state = {"state_version": journal.STATE_VERSION, "harness_version": harness.__version__,
             "base_dir": str(suite.base_dir),
             "suite_file": {"path": str(suite_file.resolve()),
                            "sha256": hashlib.sha256(suite_file.read_bytes()).hexdigest()},
             "config_sha256": journal.config_sha256(dumped), "done": [], "elapsed_s": 1.5,
             "record": {"schema_version": SCHEMA_VERSION, "suite": "tiny",
                        "run_id": "20261122T000000-abcdef", "status": "running",
                        "config": dumped, "arms": {}, "comparisons": [], "training": {}}}
    (staging / journal.STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    return staging


BAD_STATES = [
    ("done", 5, "`done` must be a list, got an integer"),
    ("done", [["baseline"]], "`done[0]` must be a string, got a list"),
    ("record.arms", [], "`record.arms` must be an object, got a list"),
    ("record.arms", {"baseline": []}, "`record.arms.baseline` must be an object, got a list"),
    ("elapsed_s", "ten seconds", "`elapsed_s` must be a number or null, got a string"),
    ("suite_file", "tiny.toml", "`suite_file` must be an object, got a string"),
    ("record.shard", {"index": 0}, "`record.shard.count` is missing"),
    ("record.data", [], "`record.data` must be an object, got a list"),
    ("harness_version", 1, "`harness_version` must be a string, got an integer"),
]


@pytest.mark.parametrize("key,value,says", BAD_STATES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_STATES])
def test_a_state_key_of_the_wrong_type_is_one_line_naming_file_and_key(killed, key, value,
                                                                      says):
    where = _edit(killed, journal.STATE_FILE, _put(key, value))
    _one_line_error(_cli("resume", killed), str(where), says)
    assert (killed / journal.STATE_FILE).is_file() and not (killed / results.OWNER_FILE).exists()


@pytest.mark.parametrize("drop", ["done", "record", "config_sha256"])
def test_a_state_missing_a_key_names_it(killed, drop):
    where = _edit(killed, journal.STATE_FILE, lambda s: {k: v for k, v in s.items() if k != drop})
    _one_line_error(_cli("resume", killed), str(where), f"`{drop}` is missing")


def test_a_state_that_is_not_an_object_says_what_it_is(killed):
    where = _edit(killed, journal.STATE_FILE, lambda s: [s])
    _one_line_error(_cli("resume", killed), str(where), "not a harness resume state",
                    "got a list")


def test_a_state_of_another_format_version_names_both_versions(killed):
    where = _edit(killed, journal.STATE_FILE, _put("state_version", journal.STATE_VERSION + 1))
    line = _one_line_error(_cli("resume", killed), str(where),
                           f"format is version {journal.STATE_VERSION + 1}",
                           f"reads version {journal.STATE_VERSION}")
    assert "started by harness" not in line
