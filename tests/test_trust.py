"""Numbers a user can trust: the same suite gives the same adapter, the baseline cache never
serves a stale answer, each figure measures what its name says. Through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from harness import results
from harness.cli import app

runner = CliRunner()


def run_suite(suite: Path, out: Path, *extra: str) -> Path:
    """Run through the CLI; the new run directory."""
    before = set((out / "tiny").iterdir()) if (out / "tiny").exists() else set()
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    (path,) = set((out / "tiny").iterdir()) - before
    return path


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in results.read_jsonl(run / results.TRAIN_LOG_FILE) if "loss" in r]


def item_losses(run: Path, arm: str) -> list[float]:
    return [r["loss"] for r in results.load_run(run).items(arm)]


def test_same_suite_same_adapter_cold_and_cached(suite_dir):
    import torch

    suite, out = suite_dir / "tiny.toml", suite_dir / "results"
    cold = run_suite(suite, out)
    torch.rand(1000)  # whatever ran before in the process must not change the adapter
    cached = run_suite(suite, out)
    assert results.load_run(cached).record["arms"]["baseline"].get("cached") is True
    assert results.load_run(cold).record["arms"]["baseline"].get("cached") is None
    assert train_losses(cold) == train_losses(cached) and len(train_losses(cold)) >= 5
    assert item_losses(cold, "lora") == item_losses(cached, "lora")
    assert item_losses(cold, "baseline") == item_losses(cached, "baseline")


FAST = ("--set", "train.max_steps=2", "--set", "eval.max_new_tokens=2")


def test_model_overwritten_in_place_misses_the_cache(suite_dir, tiny_model_dir):
    import shutil

    from .conftest import build_model

    model = suite_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    args = (*FAST, "--set", f"model.name_or_path={model}")
    first = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *args)
    again = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *args)
    assert results.load_run(again).record["arms"]["baseline"].get("cached") is True
    from transformers import AutoTokenizer

    build_model(AutoTokenizer.from_pretrained(model), seed=1).save_pretrained(model)  # new weights
    after = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *args)
    base = results.load_run(after).record["arms"]["baseline"]
    assert base.get("cached") is None
    assert item_losses(after, "baseline") != item_losses(first, "baseline")


def test_cache_entry_of_the_wrong_shape_is_recomputed(suite_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    first = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
    (entry,) = (tmp_path / "baselines").iterdir()
    good = json.loads(entry.read_text())
    short = {**good, "rows": good["rows"][:-1]}
    no_metrics = {**good, "arm": {"metrics": None}}
    for bad in ([], None, "x", {"key_fields": good["key_fields"]}, short, no_metrics):
        entry.write_text(json.dumps(bad))
        run = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
        rec = results.load_run(run).record
        assert rec["status"] == "success" and rec["arms"]["baseline"].get("cached") is None
        assert item_losses(run, "baseline") == item_losses(first, "baseline")
        assert len(rec["comparisons"]) > 0  # paired with the lora arm


def _store_many(cache_root: str, n: int) -> int:
    import os

    os.environ["HARNESS_CACHE"] = cache_root
    from harness import cache

    failures = 0
    for i in range(n):
        try:
            cache.store({"k": 1}, {"metrics": {"loss": i}}, [{"id": "a"}])
        except OSError:
            failures += 1
    return failures


def test_two_writers_of_one_cache_entry_do_not_collide(tmp_path):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(4) as pool:
        failures = pool.starmap(_store_many, [(str(tmp_path), 300)] * 4)
    assert failures == [0, 0, 0, 0]
    (entry,) = (tmp_path / "baselines").iterdir()  # one entry, no temp files left
    assert json.loads(entry.read_text())["rows"] == [{"id": "a"}]


def test_cpu_peak_memory_is_each_arm_own_eval_phase(suite_dir):
    import resource

    import numpy as np

    block = np.ones(2**30 // 8)  # the process's lifetime peak RSS now includes 1 GiB
    del block
    run = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rec = results.load_run(run).record
    assert rec["env"]["memory_kind"] == "eval_peak_rss"
    assert "during this arm's evaluation" in rec["env"]["memory_description"]
    for arm in ("baseline", "lora"):
        peak = rec["arms"][arm]["metrics"]["peak_memory_bytes"]
        assert 10 * 2**20 < peak < lifetime - 500 * 2**20, arm


def test_train_losses_named_for_what_they_are(suite_dir):
    run = run_suite(suite_dir / "tiny.toml", suite_dir / "results")
    t = results.load_run(run).record["training"]["lora"]
    logged = train_losses(run)
    assert t["final_train_loss"] == logged[-1]  # the last logged loss
    assert t["mean_train_loss"] > t["final_train_loss"]  # the mean over all 24 steps
    assert "Mean train loss (all steps)" in (run / "report.md").read_text()


def test_cached_baseline_speed_is_marked_and_not_compared(suite_dir):
    suite, out = suite_dir / "tiny.toml", suite_dir / "results"
    cold = results.load_run(run_suite(suite, out, *FAST)).record
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    (path,) = set((out / "tiny").iterdir()) - {out / "tiny" / cold["run_id"]}
    warm = results.load_run(path).record
    speed = {"eval_tokens_per_s", "gen_tokens_per_s", "peak_memory_bytes"}
    assert speed <= {c["metric"] for c in cold["comparisons"]}
    assert not speed & {c["metric"] for c in warm["comparisons"]}
    assert {"loss", "rougeL"} <= {c["metric"] for c in warm["comparisons"]}
    assert "(cached)" in res.output  # the terminal table
    md = (path / "report.md").read_text()
    assert md.count("(cached)") == 3  # both speeds and memory of the baseline row
