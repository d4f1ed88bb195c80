"""Sweep cells across machines: `harness run --shard I/N` trains every N-th adapter arm of the
sweep, and `harness merge` joins the shards into one run that equals, arm by arm, the run one
machine would have written, or refuses (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import InputError
from harness.metrics import SYSTEM_KEYS
from harness.run import preflight
from harness.rundir.record import load_run
from harness.suite.sweep import Shard

from .conftest import REPO
from .test_sweep import write_suite

runner = CliRunner()

# Three adapter arms: cell `a` once per seed (a@s0, a@s1: seed comparisons that only the
# merged run can compute, each seed trained in another shard) and cell `b`.
SWEEP3 = '''
[[sweep.cells]]
name = "a"
set = { "train.r" = 4, "train.seeds" = [0, 1] }

[[sweep.cells]]
name = "b"
set = { "train.learning_rate" = 0.01 }
'''
ARMS = ["baseline", "a@s0", "a@s1", "b"]
FAST = ["--set", "train.max_steps=4", "--set", "data.eval_size=4", "--set",
        "eval.max_new_tokens=4", "--set", "stats.n_resamples=200"]


def _run(suite: Path, out: Path, *args: str) -> Path:
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), *FAST, *args],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return _newest(out / "tiny")


def _newest(parent: Path) -> Path:
    return max((p for p in parent.iterdir() if not p.name.startswith(".")),
               key=lambda p: p.stat().st_mtime_ns)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    """Shards 0/3, 1/3, 2/3 sharing one baseline cache (shard 0 fills it, so its baseline was
    measured in-process and the others' came from the cache), one unsharded run of the same
    suite, and the merge of the three shards."""
    d = tmp_path_factory.mktemp("shards")
    suite = write_suite(d, tiny_model_dir, SWEEP3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(d / "cache"))
        shards = [_run(suite, d / "shards", "--shard", f"{i}/3") for i in range(3)]
        full = _run(suite, d / "full")
    res = runner.invoke(app, ["merge", *map(str, shards), "--out", str(d / "merged")],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return {"dir": d, "suite": suite, "shards": shards, "full": full,
            "merged": _newest(d / "merged" / "tiny")}


# ---------------------------------------------------------------- --shard


def test_each_shard_trains_every_third_arm_and_records_it(sharded):
    records = [load_run(p).record for p in sharded["shards"]]
    assert [r["shard"] for r in records] == [
        {"index": i, "count": 3, "arms": [arm]} for i, arm in enumerate(ARMS[1:])]
    assert [list(r["arms"]) for r in records] == [["baseline", a] for a in ARMS[1:]]
    assert all(r["config"] == records[0]["config"] for r in records)  # the suite, unchanged
    assert "shard" not in load_run(sharded["full"]).record


@pytest.mark.parametrize("value", ["3/3", "x", "1/0", "-1/3", "1/", "0/3/4"])
def test_a_bad_shard_is_one_line_naming_the_option(sharded, value):
    res = runner.invoke(app, ["run", str(sharded["suite"]), "--shard", value,
                              "--out", str(sharded["dir"] / "bad")])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and "--shard" in res.output, res.output
    assert not (sharded["dir"] / "bad").exists()


def test_shard_parse():
    assert Shard.parse("2/5") == Shard(2, 5) and Shard.parse(" 0/1 ") == Shard(0, 1)
    with pytest.raises(InputError, match=r"0\.\.2"):
        Shard.parse("3/3")


def test_existing_adapters_run_in_shard_zero_only():
    checked = preflight.Preflight(source=None, splits=None,  # type: ignore[arg-type]
                                 arms=[(f"c{i}", None) for i in range(5)],  # type: ignore[misc]
                                 existing=["mine"])  # type: ignore[list-item]
    picks = [preflight.sharded(checked, Shard(i, 2)) for i in range(2)]
    assert [[n for n, _ in p.arms] for p in picks] == [["c0", "c2", "c4"], ["c1", "c3"]]
    assert [p.existing for p in picks] == [["mine"], []]
    assert preflight.sharded(checked, None) is checked


# ---------------------------------------------------------------- merge


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def test_merge_equals_the_unsharded_run_arm_by_arm(sharded):
    full, merged = load_run(sharded["full"]), load_run(sharded["merged"])
    rf, rm = full.record, merged.record
    assert list(rm["arms"]) == list(rf["arms"]) == ARMS
    assert rm["status"] == "success" and "shard" not in rm
    assert rm["merged_from"] == [p.name for p in sharded["shards"]]
    assert rm["config"] == rf["config"]
    for arm in ARMS:
        fi, mi = full.items(arm), merged.items(arm)
        assert [r["id"] for r in mi] == [r["id"] for r in fi]
        assert all(_close(a["loss"], b["loss"]) for a, b in zip(mi, fi, strict=True)), arm
        quality = {k: v for k, v in rf["arms"][arm]["metrics"].items() if k not in SYSTEM_KEYS}
        assert all(_close(rm["arms"][arm]["metrics"][k], v) for k, v in quality.items()), arm
    assert [r["arm"] for r in merged.predictions] == [r["arm"] for r in full.predictions]
    assert list(rm["training"]) == list(rf["training"]) == ARMS[1:]
    assert [(r["arm"], r["step"]) for r in merged.train_log()] == [
        (r["arm"], r["step"]) for r in full.train_log()]
    for arm in ARMS[1:]:
        assert rm["arms"][arm]["adapter"] == f"adapters/{arm}"
        assert (sharded["merged"] / "adapters" / arm / "adapter_model.safetensors").is_file()
        assert (sharded["merged"] / "adapters" / arm / "README.md").is_file()
    assert (sharded["merged"] / "report.html").is_file()
    assert (sharded["merged"] / "report.md").is_file()


def _rows(rows: list[dict[str, Any]], key: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r[key], r["metric"]): r for r in rows if r["metric"] not in SYSTEM_KEYS}


def test_merge_recomputes_the_comparisons(sharded):
    rf, rm = load_run(sharded["full"]).record, load_run(sharded["merged"]).record
    cf, cm = _rows(rf["comparisons"], "candidate"), _rows(rm["comparisons"], "candidate")
    assert list(cm) == list(cf) and {c for c, _ in cm} == set(ARMS[1:])
    for k, row in cf.items():
        for field in ("abs_diff", "ci_low", "ci_high", "p_value"):
            assert _close(cm[k][field], row[field]), (k, field)
    # Seeds trained in shards 0 and 1: only the merge can compare the recipe across them.
    sf, sm = _rows(rf["seed_comparisons"], "recipe"), _rows(rm["seed_comparisons"], "recipe")
    assert sf and list(sm) == list(sf)
    assert all(_close(sm[k]["abs_diff"], r["abs_diff"]) for k, r in sf.items())
    assert not any(load_run(p).record["seed_comparisons"] for p in sharded["shards"])
    # Speed and memory: only an arm measured in the process that measured the baseline.
    system = {c["candidate"] for c in rm["comparisons"] if c["metric"] in SYSTEM_KEYS}
    assert system == {"a@s0"}


def test_compare_gate_and_report_read_the_merged_run(sharded):
    merged, full = str(sharded["merged"]), str(sharded["full"])
    for args in (["compare", merged], ["compare", full, merged],
                 ["gate", merged, "--baseline", full, "--rule", "loss:+0.05"],
                 ["report", merged]):
        res = runner.invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, (args, res.output)


def _edited(sharded: dict[str, Any], index: int, tmp: Path, edit) -> Path:
    """A copy of shard ``index`` whose run.json ``edit`` changed."""
    dst = tmp / "edited" / "tiny" / sharded["shards"][index].name
    shutil.copytree(sharded["shards"][index], dst)
    record = json.loads((dst / "run.json").read_text())
    edit(record)
    (dst / "run.json").write_text(json.dumps(record))
    return dst


def _set(path: str, value: Any):
    def edit(record: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for k in head:
            record = record[k]
        record[last] = value
    return edit


@pytest.mark.parametrize("index, edit, needle", [
    (1, _set("suite", "other"), "different suites"),
    (2, _set("status", "failed"), "shard 2/3"),
    (1, _set("data.eval_fingerprint", "0" * 16), "data.eval_fingerprint"),
    (2, _set("env.harness_version", "0.0.1"), "env.harness_version"),
    (1, _set("shard.count", 4), "N = 4"),
    (2, _set("model_fingerprint.content", "0" * 24), "evaluated another model"),
])
def test_merge_refuses_shards_of_different_runs(sharded, tmp_path, index, edit, needle):
    runs = list(sharded["shards"])
    runs[index] = _edited(sharded, index, tmp_path, edit)
    _refused(runs, tmp_path, needle)


def _refused(runs: list[Path], tmp_path: Path, needle: str) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["merge", *map(str, runs), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and needle in res.output, res.output
    assert not out.exists()


def test_merge_refuses_a_missing_or_repeated_shard_or_a_plain_run(sharded, tmp_path):
    s0, s1, s2 = sharded["shards"]
    _refused([s0, s1], tmp_path, "shard(s) 2/3")
    _refused([s0, s1, s1, s2], tmp_path, "shard 1/3 given twice")
    _refused([s0, s1, s2, sharded["full"]], tmp_path, "not a shard")


def test_merge_refuses_a_shard_run_with_another_config(sharded, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(sharded["dir"] / "cache"))
        other = _run(sharded["suite"], tmp_path / "other", "--shard", "2/3",
                     "--set", "train.logging_steps=2")
    s0, s1, _ = sharded["shards"]
    _refused([s0, s1, other], tmp_path, "config.train.logging_steps = 2 vs 4")


def _shift(arm: str, metric: str, by: float):
    def edit(record: dict[str, Any]) -> None:
        record["arms"][arm]["metrics"][metric] += by
    return edit


@pytest.mark.parametrize("index, arm, metric", [
    (1, "a@s1", "loss"),  # a trained arm's point number
    (2, "baseline", "rougeL"),  # a zero-shot one, of a shard whose baseline came from the cache
])
def test_merge_refuses_a_shard_whose_numbers_contradict_its_rows(sharded, tmp_path, index, arm,
                                                                 metric):
    """The merged record keeps each shard's point numbers while its intervals come from the
    rows: an edited run.json would put a number beside an interval around another one."""
    runs = list(sharded["shards"])
    runs[index] = _edited(sharded, index, tmp_path, _shift(arm, metric, 0.01))
    stored = load_run(runs[index]).record["arms"][arm]["metrics"][metric]
    rows = [r for r in load_run(runs[index]).items(arm) if r.get("set") is None]
    recomputed = (sum(r["nll_sum"] for r in rows) / sum(r["n_tokens"] for r in rows)
                  if metric == "loss" else sum(r[metric] for r in rows) / len(rows))
    assert stored == pytest.approx(recomputed + 0.01)
    _refused(runs, tmp_path, f"{runs[index] / 'run.json'} (shard {index}/3")
    _refused(runs, tmp_path, f"arm {arm!r}, metric {metric}: stored {stored:.4f}, its "
                             f"{len(rows)} rows give {recomputed:.4f}")


def test_merge_keeps_the_shards_numbers_and_their_system_metrics_as_stored(sharded, tmp_path):
    """Throughput and memory have no rows: an edited one is not refused, it is kept."""
    runs = list(sharded["shards"])
    runs[1] = _edited(sharded, 1, tmp_path, _shift("a@s1", "eval_tokens_per_s", 1000.0))
    res = runner.invoke(app, ["merge", *map(str, runs), "--out", str(tmp_path / "m")],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    merged = load_run(_newest(tmp_path / "m" / "tiny")).record["arms"]
    for i, run in enumerate(runs):
        own = load_run(run).record["arms"]
        for arm in own if i == 0 else [ARMS[1 + i]]:
            assert merged[arm]["metrics"] == own[arm]["metrics"], arm  # exactly, not rounded


def _modules_after(argv: list[str]) -> list[str]:
    """Runs `harness ARGV` in a fresh process; the model libraries it imported."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(sorted(m for m in ('torch', 'transformers', 'peft') "
            "if m in sys.modules)))\n"
            f"sys.argv = ['harness', *{argv!r}]\n"
            "from harness.cli import main\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0, (argv, res.stdout, res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_merge_compare_gate_and_report_import_no_model_library(sharded, tmp_path):
    """The commands that only read and join records never load the model libraries."""
    merged, full = str(sharded["merged"]), str(sharded["full"])
    for argv in (["merge", *map(str, sharded["shards"]), "--out", str(tmp_path / "m")],
                 ["compare", full, merged], ["report", merged],
                 ["gate", merged, "--baseline", full, "--rule", "loss:+0.05"]):
        assert _modules_after(argv) == [], argv
