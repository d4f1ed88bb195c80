"""What report.html / report.md say first: the headline cards (forgetting among them), the
leaderboard of a sweep, the across-seeds interval of a recipe, and the per-example browser of a
run with a loss-only forgetting set. Records from tests/factories, numbers checked against the
predictions read back with the json module."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.results import PREDICTIONS_FILE, RUN_FILE
from harness.stats import seedstats
from harness.suite import config

from .factories import make_run
from .test_report import comparisons, edit_record

# The default suite's shape: one trained arm, and a loss-only forgetting set `general`.
FORGETS = {"general": {"baseline": 2.0, "lora": 2.6}}  # nats / token: clearly worse
KEEPS = {"general": {"baseline": 2.0, "lora": 2.0}}  # the same level: within noise


def forgetting_run(tmp_path: Path, sets: dict[str, dict[str, float]] = FORGETS,
                   arms: dict[str, tuple[float, float]] | None = None) -> Path:
    path = make_run(tmp_path, arms=arms, forgetting=sets)
    edit_record(path, comparisons=comparisons(path))
    return path


def report_cli(path: Path) -> tuple[str, str]:
    """``harness report RUN`` through the CLI; the two files it wrote."""
    res = CliRunner().invoke(app, ["report", str(path)])
    assert res.exit_code == 0, res.output
    return ((path / "report.html").read_text(encoding="utf-8"),
            (path / "report.md").read_text(encoding="utf-8"))


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (path / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines()]


def perplexity(rows: list[dict[str, Any]], arm: str, eval_set: str | None) -> float:
    mine = [r for r in rows if r["arm"] == arm and r.get("set") == eval_set]
    return math.exp(sum(r["nll_sum"] for r in mine) / sum(r["n_tokens"] for r in mine))


def cards(html: str) -> list[str]:
    block = html.split('<div class="cards">')[1].split("</section>")[0]
    return re.findall(r'<div class="card[^"]*">.*?\n  </div>', block, re.S)


def card(html: str, key: str) -> str:
    found = [c for c in cards(html) if key in c]
    assert len(found) == 1, (key, cards(html))
    return found[0]


def comparison(path: Path, candidate: str, metric: str) -> dict[str, Any]:
    rec = json.loads((path / RUN_FILE).read_text())
    return next(c for c in rec["comparisons"]
                if c["candidate"] == candidate and c["metric"] == metric)


# ------------------------------------------------------------------ forgetting heads the report


def test_forgetting_is_a_red_headline_card_when_significantly_worse(tmp_path: Path):
    path = forgetting_run(tmp_path)
    html, _ = report_cli(path)
    rows = rows_of(path)
    base, lora = perplexity(rows, "baseline", "general"), perplexity(rows, "lora", "general")
    assert lora > base * 1.2  # the record really forgot
    c = card(html, "Perplexity (general)")
    assert "forgetting" in c and "lora" in c
    assert f"{lora:.4f}" in c and f"{100 * (lora / base - 1):+.1f}%" in c
    assert 'class="card forgetting alert"' in c and 'class="d bad"' in c  # red, not faded
    row = comparison(path, "lora", "general/perplexity")
    assert row["significant"] and f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" in c


def test_forgetting_card_within_noise_is_not_red(tmp_path: Path):
    html, _ = report_cli(forgetting_run(tmp_path, KEEPS))
    c = card(html, "Perplexity (general)")
    assert "alert" not in c and " ns" in c


def test_markdown_leads_with_the_headline_and_forgetting(tmp_path: Path):
    path = forgetting_run(tmp_path)
    _, md = report_cli(path)
    head = md.split("## Zero-shot vs adapter")[0]
    assert "## Headline" in head
    rows = rows_of(path)
    lora = perplexity(rows, "lora", "general")
    line = next(x for x in head.splitlines() if "Perplexity (general)" in x)
    assert "forgetting" in line.lower() and f"{lora:.4f}" in line and "worse" in line
    assert sum(x.startswith("- **") for x in head.splitlines()) == 5  # one card per line


def test_forgetting_is_in_the_relative_improvement_plot(tmp_path: Path):
    html, _ = report_cli(forgetting_run(tmp_path))
    svg = re.search(r'<svg[^>]*aria-label="Relative improvement over baseline".*?</svg>', html,
                    re.S)[0]
    assert "lora · Perplexity (general)" in svg and "lora · Loss (general)" in svg


# ------------------------------------------------------------------ example browser


def browser_rows(html: str) -> list[str]:
    return re.findall(r"<tr data-id=.*?</tr>", html, re.S)


def test_browser_labels_sets_and_shows_loss_only_rows_without_a_fake_output(tmp_path: Path):
    path = forgetting_run(tmp_path)
    html, _ = report_cli(path)
    rows = browser_rows(html)
    # 50 items of the suite's own set and 50 of `general`, whose ids repeat the first 50
    assert len(rows) == 100
    general = [r for r in rows if 'data-set="general"' in r]
    main = [r for r in rows if 'data-set=""' in r]
    assert len(general) == 50 and len(main) == 50
    assert all('class="set-tag">general<' in r for r in general)
    assert ">None<" not in html and "no generation" in general[0]
    # the suite's own rows keep their outputs (not overwritten by general's same ids)
    assert all("Prediction" in r for r in main)
    assert '<select id="filter-set"' in html and '<option value="general">' in html


def test_browser_rows_carry_the_loss_change_to_sort_by(tmp_path: Path):
    path = forgetting_run(tmp_path)
    html, _ = report_cli(path)
    preds = rows_of(path)
    want = {(r.get("set") or "", r["id"]): r["loss"] for r in preds if r["arm"] == "lora"}
    base = {(r.get("set") or "", r["id"]): r["loss"] for r in preds if r["arm"] == "baseline"}
    got = re.findall(r'<tr data-id="([^"]+)"[^>]* data-l0="([^"]+)" data-set="([^"]*)"', html)
    assert len(got) == 100
    for item, d, eval_set in got:
        assert float(d) == pytest.approx(want[eval_set, item] - base[eval_set, item], abs=1e-6)
    assert 'data-sort="loss-rise"' in html and 'data-sort="loss-drop"' in html


# ------------------------------------------------------------------ several arms


SWEEP = {"baseline": (0.30, 2.5), "r8": (0.40, 2.0), "r16": (0.50, 2.1), "r32": (0.42, 1.7)}


def test_a_sweep_names_the_best_arm_per_metric_and_a_leaderboard(tmp_path: Path):
    path = forgetting_run(tmp_path, {"general": {a: 2.0 for a in SWEEP}}, arms=SWEEP)
    html, md = report_cli(path)
    rec = json.loads((path / RUN_FILE).read_text())
    metrics = {a: rec["arms"][a]["metrics"] for a in SWEEP if a != "baseline"}
    best_rouge = max(metrics, key=lambda a: metrics[a]["rougeL"])
    best_loss = min(metrics, key=lambda a: metrics[a]["loss"])
    assert best_rouge != best_loss  # the sweep's cells win different metrics
    assert f"· {best_rouge}" in card(html, "ROUGE-L ·")
    assert f"· {best_loss}" in card(html, "Loss <span")
    board = html.split('id="leaderboard"')[1].split("</section>")[0]
    ranked = re.findall(r'<tr data-arm="([^"]+)"', board)
    assert ranked == sorted(metrics, key=lambda a: -metrics[a]["rougeL"])
    c = comparison(path, "r8", "loss")
    r8 = board.split('data-arm="r8"')[1].split("</tr>")[0]
    assert f"{c['candidate_value']:.4f}" in r8
    assert f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" in r8
    assert "## Leaderboard" in md


def seed_run(tmp_path: Path) -> Path:
    """lora@s0 far better than zero-shot, the other two seeds no better: the recipe's gain is
    within its seed noise although seed 0 alone is significant."""
    arms = {"baseline": (0.30, 2.5), "lora@s0": (0.45, 1.8), "lora@s1": (0.30, 2.5),
            "lora@s2": (0.29, 2.55)}
    path = make_run(tmp_path, arms=arms)
    rec = json.loads((path / RUN_FILE).read_text())
    preds = rows_of(path)
    seeds = [a for a in arms if a != "baseline"]
    rows = seedstats.compare_recipe(
        [r for r in preds if r["arm"] == "baseline"],
        {s: [r for r in preds if r["arm"] == s] for s in seeds},
        rec["arms"]["baseline"]["metrics"], {s: rec["arms"][s]["metrics"] for s in seeds},
        baseline="baseline", recipe="lora", metrics=["loss", "perplexity", "rouge1", "rougeL"],
        settings=config.StatsSettings(n_resamples=1000, seed=0, alpha=0.05))
    edit_record(path, comparisons=comparisons(path), seed_comparisons=rows)
    return path


def test_seeded_recipe_cards_show_the_across_seeds_interval(tmp_path: Path):
    path = seed_run(tmp_path)
    html, md = report_cli(path)
    rec = json.loads((path / RUN_FILE).read_text())
    assert comparison(path, "lora@s0", "rougeL")["significant"]  # seed 0 alone: "significant"
    row = next(r for r in rec["seed_comparisons"] if r["metric"] == "rougeL")
    assert row["ci_low"] < 0 < row["ci_high"] and not row["significant"]
    c = card(html, "ROUGE-L ·")
    assert "lora@s0" not in c and "lora · 3 seeds" in c
    assert f"{row['candidate_value']:.4f}" in c
    assert f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" in c and "across seeds" in c
    assert ' ns"' in c  # faded: not significant across seeds
    head = md.split("## Zero-shot vs adapter")[0]
    assert "lora · 3 seeds" in head and "lora@s0" not in head


def test_a_sweep_cell_that_forgot_gets_its_own_red_card(tmp_path: Path):
    """The leading cell (best ROUGE-L) kept its general English; another cell did not."""
    general = {"baseline": 2.0, "r8": 2.6, "r16": 2.0, "r32": 2.0}
    html, _ = report_cli(forgetting_run(tmp_path, {"general": general}, arms=SWEEP))
    forgetting = [c for c in cards(html) if "Forgetting ·" in c]
    assert len(forgetting) == 2
    assert "· r16" in forgetting[0] and "alert" not in forgetting[0]
    assert "· r8" in forgetting[1] and 'class="card forgetting alert"' in forgetting[1]
