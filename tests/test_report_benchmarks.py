"""The report's Benchmarks section and accuracy forgetting headline, from a real run through
the CLI on the tiny model with a multiple-choice forgetting set: each arm's accuracy, each
adapter's change in points and its McNemar p checked against predictions.jsonl read with the
json module, numpy means and scipy's binomial test on the discordant items."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from harness.views import formatting as F

from .conftest import cli_run
from .test_multiple_choice import CHOICES, mc_set, write

# Choices in the words of the weather bulletins the adapter is trained on beside others: its
# picks move towards the former, so the arms disagree on some of the thirty scored items (ten
# more rows are there for few-shot examples).
WEATHER = ["rain 70%.", "NW wind 15 km/h", "12°C, showery", *CHOICES]
ROWS = [{"id": f"q{i}", "question": f"Item {i}: what is the weather on day {i}?",
         "choices": WEATHER[i % 3: i % 3 + 2 + i % 4], "answer": i % (2 + i % 4)}
        for i in range(40)]
BENCH = mc_set("bench", 30, 1, "forgetting = true\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    d = tmp_path_factory.mktemp("bench")
    return cli_run(write(d, tiny_model_dir, BENCH, ROWS), d / "results")


def _strict(text: str) -> dict:
    def refuse(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


def _items(run_dir: Path) -> dict[str, dict[str, dict]]:
    """arm -> item id -> its row of the bench set."""
    out: dict[str, dict[str, dict]] = {}
    for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        r = _strict(line)
        if r["set"] == "bench":
            out.setdefault(r["arm"], {})[r["id"]] = r
    return out


def _mcnemar(base: dict[str, dict], cand: dict[str, dict], col: str) -> float:
    b = sum(base[i][col] == 1.0 and cand[i][col] == 0.0 for i in base)
    c = sum(base[i][col] == 0.0 and cand[i][col] == 1.0 for i in base)
    return 1.0 if b + c == 0 else binomtest(c, b + c, 0.5).pvalue


def _md_table(md: str) -> dict[tuple[str, str], list[str]]:
    """The Benchmarks table of the bench set: (metric, arm) -> its other cells."""
    section = md.split("### bench (30 items, forgetting)", 1)[1].split("\n## ", 1)[0]
    rows = [ln.strip("|").split(" | ") for ln in section.splitlines() if ln.startswith("| ")]
    return {(r[0].strip(), r[1].strip()): [c.strip() for c in r[2:]] for r in rows[1:]}


def test_the_benchmarks_table_equals_predictions(run_dir):
    items = _items(run_dir)
    assert set(items) == {"baseline", "lora"} and len(items["baseline"]) == 30
    # the arms disagree on some items: a McNemar p of an actual test, not of nothing
    assert any(r["acc"] != items["lora"][i]["acc"] for i, r in items["baseline"].items())
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    table = _md_table(md)
    for col, name in (("acc", "Accuracy"), ("acc_norm", "Accuracy (length-normalised)")):
        base = np.mean([r[col] for r in items["baseline"].values()])
        cand = np.mean([r[col] for r in items["lora"].values()])
        assert table[name, "Zero-shot"][0] == f"{100 * base:.1f}%"
        value, change, ci, p, _ = table[name, "lora"]
        assert value == f"{100 * cand:.1f}%"
        assert change.strip("*") == f"{100 * (cand - base) + 0.0:+.1f} points"
        want_p = _mcnemar(items["baseline"], items["lora"], col)
        assert p == f"{F.p_value(want_p)} (McNemar)"
        # the CI is the record's paired bootstrap, in points
        row = next(c for c in _strict((run_dir / "run.json").read_text())["comparisons"]
                   if c["metric"] == f"bench/{col}" and c["candidate"] == "lora")
        assert row["p_value"] == pytest.approx(want_p, abs=1e-12)
        assert ci == f"[{100 * row['ci_low'] + 0.0:+.1f}, {100 * row['ci_high'] + 0.0:+.1f}]"
        assert math.isclose(row["abs_diff"], cand - base, abs_tol=1e-12)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert '<section id="benchmarks">' in html and 'data-set="bench"' in html
    assert html.count('data-metric="bench/acc" data-arm="lora"') == 1


def test_a_forgetting_multiple_choice_set_heads_the_report_with_its_accuracy(run_dir):
    items = _items(run_dir)
    base = np.mean([r["acc"] for r in items["baseline"].values()])
    cand = np.mean([r["acc"] for r in items["lora"].values()])
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    headline = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    card = next(ln for ln in headline.splitlines() if "Forgetting" in ln)
    want = (f"- **Forgetting: Accuracy (bench)** · lora: {100 * cand:.1f}% vs zero-shot "
            f"{100 * base:.1f}%, {100 * (cand - base) + 0.0:+.1f} points, 95% CI [")
    assert card.startswith(want), card
    p = F.p_value(_mcnemar(items["baseline"], items["lora"], "acc"))
    assert f"McNemar p {p}, p (Holm) " in card
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    cards = re.findall(r'<div class="card forgetting[^"]*">\s*<div class="k">([^<]*)', html)
    assert cards and cards[0].startswith("Forgetting · Accuracy (bench)"), cards
    # the forgetting check and the leaderboard's forgetting column read accuracy too
    check = md.split("## Forgetting check", 1)[1].split("\n## ", 1)[0].replace("**", "")
    assert "| Set | Adapter | Metric | Zero-shot | Adapter | Change |" in check
    rel = f" ({100 * (cand - base) / base:+.1f}% relative)" if base else ""
    assert (f"| bench (30 items) | lora | Accuracy | {100 * base:.1f}% | {100 * cand:.1f}% | "
            f"{100 * (cand - base) + 0.0:+.1f} points{rel} |") in check, check


@pytest.mark.parametrize(("v", "unit", "want"), [
    (-0.023, True, "-2.3 points"), (0.0, True, "+0.0 points"), (-0.0, False, "+0.0"),
    (0.1, False, "+10.0"), (None, True, F.DASH), (float("nan"), True, F.DASH)])
def test_points_writes_a_change_of_accuracy_in_percentage_points(v, unit, want):
    assert F.points(v, unit) == want


def _browser_cells(html: str, item: str) -> list[str]:
    """The example browser's arm cells of one item of the bench set, in arm order."""
    row = re.search(rf'<tr data-id="{item}"[^>]*data-set="bench">(.*?)</tr>', html, re.S)
    assert row, item
    return re.findall(r'<td class="out">(.*?)</td>', row.group(1), re.S)


def test_the_example_browser_shows_each_choice_its_loglikelihood_the_answer_and_the_picks(
        run_dir):
    items = _items(run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "A multiple-choice item lists its choices" in html
    for item in list(items["baseline"])[:5]:
        for arm, cell in zip(("baseline", "lora"), _browser_cells(html, item), strict=True):
            r = items[arm][item]
            lines = re.findall(r"<li>(.*?)</li>", cell, re.S)
            assert len(lines) == len(r["choices"]) >= 2
            for i, (line, choice, ll) in enumerate(zip(lines, r["choices"], r["loglikelihoods"],
                                                       strict=True)):
                assert line.startswith(f"{choice} <small>log-likelihood {ll:.2f}</small>")
                assert ("(answer)" in line) == (i == r["gold"])
                assert ("← pick</b>" in line) == (i == r["pick"])
                assert ("← pick (length-normalised)" in line) == (i == r["pick_norm"])
            assert f"acc: {'right' if r['acc'] == 1.0 else 'wrong'}" in cell
            assert "no generation" not in cell and "loss" not in cell
