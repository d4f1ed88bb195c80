"""Pipeline features beyond the basic run: the zero-shot cache, several templates on the
baseline, evaluating a merged adapter, and eval batches that back off on out-of-memory."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.run import scoring
from harness.rundir.record import load_run

runner = CliRunner()
FAST = ["--set", "train.max_steps=4", "--set", "data.eval_size=6", "--set", "data.train_size=16"]


def run(suite_dir, *extra: str):
    """One `harness run`; its run directory is the one that is new (two runs in one second
    have ids that sort by their random suffix)."""
    out = suite_dir / "results" / "tiny"
    before = set(out.iterdir()) if out.is_dir() else set()
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out",
                              str(suite_dir / "results"), *FAST, *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (new,) = set(out.iterdir()) - before
    return load_run(new)


def test_zero_shot_is_cached_and_reused_never_for_adapters(suite_dir):
    first = run(suite_dir)
    second = run(suite_dir, "--set", "train.r=4")  # another recipe, same baseline
    assert "cached" not in first.record["arms"]["baseline"]
    assert second.record["arms"]["baseline"]["cached"] is True
    assert second.record["arms"]["baseline"]["source"] == "zero-shot"
    assert second.items("baseline") == first.items("baseline")
    assert "cached" not in second.record["arms"]["lora"]
    # the cached arm keeps the process that measured it; the new arm has this process's
    was, now = (second.record["arms"][a]["measured"] for a in ("baseline", "lora"))
    assert was["cached"] and was["process"] == first.record["arms"]["baseline"]["measured"][
        "process"] and not now["cached"]
    assert second.items("lora") != first.items("lora")


def test_cache_key_changes_with_generation_settings(suite_dir):
    run(suite_dir)
    other = run(suite_dir, "--set", "eval.max_new_tokens=3")
    assert "cached" not in other.record["arms"]["baseline"]
    assert all(r["gen_tokens"] <= 3 for r in other.items("baseline"))


def test_cache_key_holds_the_generation_that_ran(suite_dir):
    """Past the model's context (512 tokens) max_new_tokens is capped before any arm is
    scored; the key holds the capped value that ran, so asking for 1,000,000 or 1,048,576 new
    tokens generates the same text and the second run reuses the first's zero-shot arm."""
    first = run(suite_dir, "--set", "eval.max_new_tokens=1000000")
    second = run(suite_dir, "--set", "eval.max_new_tokens=1048576")
    assert first.record["eval_limits"] == second.record["eval_limits"]
    assert second.record["arms"]["baseline"].get("cached") is True
    assert second.items("baseline") == first.items("baseline")


def test_cache_can_be_disabled_and_ignores_corrupt_entries(suite_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    run(suite_dir)
    (entry,) = (tmp_path / "baselines").iterdir()
    entry.write_text("{not json")
    again = run(suite_dir)
    assert "cached" not in again.record["arms"]["baseline"]
    off = run(suite_dir, "--set", "eval.cache_baseline=false")
    assert "cached" not in off.record["arms"]["baseline"]


def test_several_templates_on_the_baseline(suite_dir):
    terse_template = '{ terse = "{{ instruction }} {{ input }}\\n" }'  # TOML escape
    rec = run(suite_dir, "--set", f"eval.baseline_templates={terse_template}")
    arms = rec.record["arms"]
    assert set(arms) == {"baseline", "baseline@terse", "lora"}
    assert arms["baseline@terse"]["adapter"] is None
    assert arms["baseline"]["source"] == arms["baseline@terse"]["source"] == "zero-shot"
    assert arms["lora"]["source"] == "trained"
    terse = rec.items("baseline@terse")
    assert [r["id"] for r in terse] == [r["id"] for r in rec.items("baseline")]
    assert not any("### Instruction" in r["prompt"] for r in terse)
    assert {c["candidate"] for c in rec.record["comparisons"]} == {"baseline@terse", "lora"}


def test_merged_adapter_gives_the_adapters_numbers(suite_dir):
    merged = run(suite_dir, "--set", "eval.cache_baseline=false")
    unmerged = run(suite_dir, "--set", "eval.merge_adapter=false")
    assert merged.record["arms"]["lora"]["merged_for_eval"] is True
    assert unmerged.record["arms"]["lora"]["merged_for_eval"] is False
    for a, b in zip(merged.items("lora"), unmerged.items("lora")):
        assert a["nll_sum"] == pytest.approx(b["nll_sum"], rel=1e-4)
        assert a["prediction"] == b["prediction"]


def test_split_on_oom_backs_off_to_smaller_batches():
    calls = []

    def fn(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return [x * 10 for x in batch]

    assert scoring.split_on_oom(fn, [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert calls[0] == 5 and max(calls[1:]) <= 3

    def always(batch):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        scoring.split_on_oom(always, [1, 2])


def test_an_entry_written_under_the_previous_entry_format_is_not_served(suite_dir, tmp_path,
                                                                        monkeypatch):
    """An entry of the format before sets kept only the metrics they ask for (its arm held a
    perplexity the suite did not ask for) is keyed without `entry`: a run misses it."""
    import json

    from harness.run import cache

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    run(suite_dir, "--set", "eval.metrics=['loss', 'rouge']")
    (path,) = (tmp_path / "baselines").iterdir()
    entry = json.loads(path.read_text("utf-8"))
    old_fields = {k: v for k, v in entry["key_fields"].items() if k != "entry"}
    entry["key_fields"] = old_fields
    entry["arm"]["metrics"]["perplexity"] = 99.0  # what the old format added unasked
    path.unlink()
    (tmp_path / "baselines" / f"{cache.key_of(old_fields)}.json").write_text(json.dumps(entry))
    again = run(suite_dir, "--set", "eval.metrics=['loss', 'rouge']")
    assert "cached" not in again.record["arms"]["baseline"]
    assert "perplexity" not in again.record["arms"]["baseline"]["metrics"]
