"""A multiple-choice set goes everywhere a set goes, through the CLI on the tiny model:
`--shard` + `harness merge` (the merged accuracy and McNemar rows equal one machine's run),
`harness resume` of a run killed with SIGKILL, `train.seeds` (a recipe row for `<set>/acc`),
`harness gate --rule <set>/acc:...`, `harness compare`, and the zero-shot cache (reused by
another run, missed after another choice template)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import binomtest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import train
from harness.rundir import journal, results
from harness.rundir.record import load_run

from .conftest import REPO
from .test_multiple_choice import write

runner = CliRunner()
FAST = ["--set", "train.max_steps=4", "--set", "eval.max_new_tokens=2", "--set",
        "data.eval_size=4", "--set", "stats.n_resamples=200"]
TWO_SEEDS = ["--set", "train.seeds=[0, 1]"]
ACC = ("mc/acc", "mc/acc_norm")


def _cli(*args: Any):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _run(suite: Path, out: Path, *args: str) -> Path:
    res = _cli("run", suite, "--out", out, *FAST, *args)
    assert res.exit_code == 0, res.output
    return _newest(out / "tiny")


def _newest(parent: Path) -> Path:
    return max((p for p in parent.iterdir() if not p.name.startswith(".")),
               key=lambda p: p.stat().st_mtime_ns)


def _mc_rows(run: Path, arm: str) -> list[dict[str, Any]]:
    return [r for r in load_run(run).predictions if r["arm"] == arm and r["set"] == "mc"]


def _comparisons(run: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["candidate"], c["metric"]): c for c in load_run(run).record["comparisons"]
            if c["metric"] in ACC}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    """The suite with a multiple-choice set and two training seeds (arms lora@s0, lora@s1): one
    unsharded run, shards 0/2 and 1/2 sharing one zero-shot cache, and their merge."""
    d = tmp_path_factory.mktemp("mcplumb")
    suite = write(d, tiny_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(d / "cache"))
        shards = [_run(suite, d / "shards", *TWO_SEEDS, "--shard", f"{i}/2") for i in range(2)]
        full = _run(suite, d / "full", *TWO_SEEDS)
    res = _cli("merge", *shards, "--out", d / "merged")
    assert res.exit_code == 0, res.output
    return {"dir": d, "suite": suite, "shards": shards, "full": full,
            "merged": _newest(d / "merged" / "tiny")}


# ---------------------------------------------------------------- train.seeds


def test_each_seed_is_scored_on_the_set_and_the_recipe_row_averages_them(runs):
    rec = load_run(runs["full"]).record
    arms = ["baseline", "lora@s0", "lora@s1"]
    assert list(rec["arms"]) == arms
    for arm in arms:
        rows = _mc_rows(runs["full"], arm)
        assert len(rows) == 6
        for metric in ("acc", "acc_norm"):
            want = np.mean([r[metric] for r in rows])
            assert rec["arms"][arm]["metrics"][f"mc/{metric}"] == pytest.approx(want)
    seed_rows = {r["metric"]: r for r in rec["seed_comparisons"]}
    assert set(ACC) <= set(seed_rows)
    base = rec["arms"]["baseline"]["metrics"]["mc/acc"]
    per_seed = [rec["arms"][a]["metrics"]["mc/acc"] - base for a in arms[1:]]
    row = seed_rows["mc/acc"]
    assert row["n_seeds"] == 2 and row["recipe"] == "lora"
    assert row["abs_diff"] == pytest.approx(sum(per_seed) / 2)


def test_each_seeds_accuracy_row_is_mcnemar_on_its_own_discordant_items(runs):
    base = {r["id"]: r["acc"] for r in _mc_rows(runs["full"], "baseline")}
    for (arm, metric), row in _comparisons(runs["full"]).items():
        if metric != "mc/acc":
            continue
        cand = {r["id"]: r["acc"] for r in _mc_rows(runs["full"], arm)}
        gained = sum(cand[i] > base[i] for i in base)
        lost = sum(cand[i] < base[i] for i in base)
        assert row["test"] == "mcnemar-exact" and row["n_items"] == 6
        want = 1.0 if gained + lost == 0 else binomtest(gained, gained + lost, 0.5).pvalue
        assert row["p_value"] == pytest.approx(want), arm


# ---------------------------------------------------------------- --shard + merge


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def test_each_shard_scores_the_set_on_its_own_arm(runs):
    for i, shard in enumerate(runs["shards"]):
        rec = load_run(shard).record
        assert list(rec["arms"]) == ["baseline", f"lora@s{i}"]
        assert all(f"mc/{m}" in rec["arms"][a]["metrics"]
                   for a in rec["arms"] for m in ("acc", "acc_norm"))
    # shard 0 filled the zero-shot cache, shard 1 took its baseline (choices included) from it
    assert load_run(runs["shards"][1]).record["arms"]["baseline"].get("cached") is True
    assert _mc_rows(runs["shards"][1], "baseline") == _mc_rows(runs["shards"][0], "baseline")


def test_merged_accuracy_and_its_comparisons_equal_the_unsharded_run(runs):
    full, merged = load_run(runs["full"]).record, load_run(runs["merged"]).record
    assert list(merged["arms"]) == list(full["arms"])
    for arm in full["arms"]:
        for metric in ACC:
            assert _close(merged["arms"][arm]["metrics"][metric],
                          full["arms"][arm]["metrics"][metric]), (arm, metric)
        keep = ("id", "choices", "gold", "pick", "pick_norm", "acc", "acc_norm")
        got = [{k: r[k] for k in keep} for r in _mc_rows(runs["merged"], arm)]
        assert got == [{k: r[k] for k in keep} for r in _mc_rows(runs["full"], arm)], arm
        for a, b in zip(_mc_rows(runs["merged"], arm), _mc_rows(runs["full"], arm)):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], rel=1e-5)
    cm, cf = _comparisons(runs["merged"]), _comparisons(runs["full"])
    assert list(cm) == list(cf) and len(cf) == 4
    for key, row in cf.items():
        for field in ("abs_diff", "ci_low", "ci_high", "p_value", "p_value_mid", "test"):
            assert cm[key][field] == row[field] or _close(cm[key][field], row[field]), \
                (key, field)
    sm = {r["metric"]: r for r in merged["seed_comparisons"]}
    sf = {r["metric"]: r for r in full["seed_comparisons"]}
    assert _close(sm["mc/acc"]["abs_diff"], sf["mc/acc"]["abs_diff"])


# ---------------------------------------------------------------- gate, compare


def test_gate_reads_the_sets_accuracy(runs):
    run, rec = runs["full"], load_run(runs["full"]).record
    ok = _cli("gate", run, "--baseline", run, "--rule", "mc/acc:-1%")
    assert ok.exit_code == 0 and "mc/acc:-1%" in ok.output, ok.output
    # within the run: each adapter against the zero-shot arm, failing when accuracy dropped
    res = _cli("gate", run, "--rule", "mc/acc:-0%:vs-zero-shot")
    base = rec["arms"]["baseline"]["metrics"]["mc/acc"]
    worse = [a for a in ("lora@s0", "lora@s1") if rec["arms"][a]["metrics"]["mc/acc"] < base]
    assert res.exit_code == (1 if worse else 0), res.output


def test_compare_lists_the_sets_accuracy_for_two_runs(runs):
    res = _cli("compare", runs["full"], runs["merged"], "--format", "json")
    assert res.exit_code == 0, res.output
    assert "mc/acc" in res.output and "mc/acc_norm" in res.output
    text = _cli("compare", runs["full"])
    assert text.exit_code == 0 and "mc/acc" in text.output, text.output


# ---------------------------------------------------------------- the zero-shot cache


def test_a_second_run_reuses_the_baseline_and_another_choice_template_misses(runs, tmp_path):
    suite = runs["suite"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(runs["dir"] / "cache"))
        again = _run(suite, tmp_path / "again", "--eval-only")
        assert load_run(again).record["arms"]["baseline"].get("cached") is True
        assert _mc_rows(again, "baseline") == _mc_rows(runs["full"], "baseline")
        other = tmp_path / "other.toml"
        other.write_text(suite.read_text().replace('" {{ choice }}"', '" [{{ choice }}]"'))
        for name in ("instruct.jsonl", "mc.jsonl"):
            (tmp_path / name).write_bytes((suite.parent / name).read_bytes())
        changed = _run(other, tmp_path / "changed", "--eval-only")
    assert "cached" not in load_run(changed).record["arms"]["baseline"]
    lls = [r["loglikelihoods"] for r in _mc_rows(changed, "baseline")]
    assert lls != [r["loglikelihoods"] for r in _mc_rows(runs["full"], "baseline")]


# ---------------------------------------------------------------- resume after SIGKILL


def _wait_for_a_cut(parent: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Until training has a complete checkpoint (the baseline, set included, is journalled)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, ("the run ended before it could be killed",
                                     proc.communicate())
        for staging in parent.glob(".*.partial") if parent.is_dir() else []:
            if train.newest_checkpoint(staging / results.SCRATCH_DIR / "lora"):
                return staging
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run never got to its first checkpoint")


def test_a_run_killed_during_training_resumes_with_the_sets_rows(runs, tmp_path):
    steps = ("--set", "train.max_steps=100")  # a checkpoint every 12 steps
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARNESS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(runs["suite"]),
                             "--out", str(out), *FAST, *steps], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staging = _wait_for_a_cut(out / "tiny", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (staging / journal.STATE_FILE).is_file()
    res = _cli("resume", staging)
    assert res.exit_code == 0, res.output
    resumed = out / "tiny" / staging.name[1:-len(results.PARTIAL_SUFFIX)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path / "cache2"))
        straight = _run(runs["suite"], tmp_path / "straight", *steps)
    a, b = load_run(resumed).record, load_run(straight).record
    assert a["status"] == "success" and a["resumes"][0]["kept"] == ["baseline"]
    for arm in ("baseline", "lora"):
        for metric in ACC:
            assert a["arms"][arm]["metrics"][metric] == pytest.approx(
                b["arms"][arm]["metrics"][metric]), (arm, metric)
        got, want = _mc_rows(resumed, arm), _mc_rows(straight, arm)
        assert [r["pick"] for r in got] == [r["pick"] for r in want], arm
        for x, y in zip(got, want, strict=True):
            assert x["loglikelihoods"] == pytest.approx(y["loglikelihoods"], rel=1e-4), arm
    rows = _comparisons(resumed)
    assert rows[("lora", "mc/acc")]["test"] == "mcnemar-exact"
    assert json.loads((resumed / "run.json").read_text())["arms"]["baseline"]["metrics"][
        "mc/acc"] == a["arms"]["baseline"]["metrics"]["mc/acc"]
