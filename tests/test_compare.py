"""harness compare: numbers against hand computations, every format, pairing labels, the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import InputError
from harness.metrics import ALL_KEYS, SYSTEM_KEYS
from harness.rundir.record import load_run
from harness.rundir.results import PREDICTIONS_FILE, RUN_FILE
from harness.stats import paired as stats
from harness.suite import config
from harness.views import compare
from harness.views import formatting as F

from .factories import make_run


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    rec = json.loads((path / RUN_FILE).read_text())
    change(rec)
    (path / RUN_FILE).write_text(json.dumps(rec))
    return path


def md_rows(text: str) -> list[dict[str, str]]:
    """The Markdown table as dicts keyed by header (pipes inside cells are escaped)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip("| ").split(" | ")] for ln in lines]
    return [dict(zip(split[0], cells, strict=True)) for cells in split[2:]]


def recorded(path: Path) -> list[str]:
    """The metrics the run's baseline recorded, in table order: one row each per pairing."""
    metrics = load_run(path).record["arms"]["baseline"]["metrics"]
    return [k for k in ALL_KEYS if k in metrics]


def as_json(runs: list[Path], **kw: Any) -> dict[str, Any]:
    return json.loads(compare.compare_runs([load_run(p) for p in runs], fmt="json", **kw))


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path, n=40)


def test_markdown_numbers_match_hand_computation(run: Path):
    arms = load_run(run).record["arms"]
    text = compare.compare_runs([load_run(run)])
    rows = {r["Metric"]: r for r in md_rows(text)}
    assert list(rows) == recorded(run)
    for m in ("rougeL", "loss", "perplexity"):
        b, c = arms["baseline"]["metrics"][m], arms["lora"]["metrics"][m]
        row = rows[m]
        assert (row["Candidate"], row["Baseline"]) == ("lora", "baseline")
        assert row["Baseline value"] == f"{b:.4f}" and row["Candidate value"] == f"{c:.4f}"
        assert row["Abs. gain"] == f"{c - b:+.4f}"
        arrow = "↑" if c > b else "↓"
        assert row["Rel. gain"] == f"{arrow}{abs(c - b) / b * 100:.1f}% better"
        assert row["Pairing"] == "paired, n=40"
        assert row["p (Holm)"].endswith(" *"), "the toy adapter is clearly better"
    assert rows["peak_memory_bytes"]["Baseline value"] == f"{2e9 / 2**30:.2f} GiB"
    assert rows["peak_memory_bytes"]["Pairing"] == "point only"
    assert "Holm" in text and "2,000 resamples" in text


def test_llama32_finetome_improvement_column(tmp_path: Path):
    """The Llama-3.2-1B FineTome report's sweep: improvement = (baseline - x) / baseline on
    loss, shown as ↓17.3%."""
    losses = {"baseline": 1.1774, "exp2": 0.9736, "exp4": 0.9068, "exp9": 0.8916}
    path = make_run(tmp_path, n=20, arms={a: (0.3, 2.0) for a in losses})

    def set_losses(rec: dict[str, Any]) -> None:
        for arm, loss in losses.items():
            rec["arms"][arm]["metrics"]["loss"] = loss

    edit(path, set_losses)
    rows = [r for r in md_rows(compare.compare_runs([load_run(path)])) if r["Metric"] == "loss"]
    assert [(r["Candidate"], r["Rel. gain"]) for r in rows] == [
        ("exp2", "↓17.3% better"), ("exp4", "↓23.0% better"), ("exp9", "↓24.3% better")]
    assert rows[0]["Abs. gain"] == "-0.2038"


def test_every_format_parses(run: Path):
    runs = [load_run(run)]
    table = list(csv.DictReader(io.StringIO(compare.compare_runs(runs, fmt="csv"))))
    assert len(table) == len(recorded(run)) and tuple(table[0]) == compare.CSV_FIELDS
    rouge = next(r for r in table if r["metric"] == "rougeL")
    assert float(rouge["ci_low"]) < float(rouge["abs_diff"]) < float(rouge["ci_high"])
    doc = json.loads(compare.compare_runs(runs, fmt="json"))
    assert {"alpha", "stats", "runs", "comparisons", "notes"} <= set(doc)
    assert doc["stats"]["n_resamples"] == 2000, "the run's recorded resample count is reused"
    html = compare.compare_runs(runs, fmt="html")
    parser = CellCounter()
    parser.feed(html)
    assert parser.rows == len(recorded(run)) + 1  # + header
    assert "| ---" in compare.compare_runs(runs, fmt="md")
    with pytest.raises(InputError, match="md, csv, json, html"):
        compare.compare_runs(runs, fmt="xlsx")


class CellCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.rows += tag == "tr"


def test_names_are_escaped_in_html_and_markdown(tmp_path: Path):
    path = make_run(tmp_path, n=10, arms={"baseline": (0.3, 2.5), "<i>x|y</i>": (0.4, 2.0)})
    runs = [load_run(path)]
    html = compare.compare_runs(runs, fmt="html")
    assert "&lt;i&gt;x|y&lt;/i&gt;" in html and "<i>x" not in html
    md = compare.compare_runs(runs, fmt="md")  # as report.md escapes: no raw HTML
    assert "<i>" not in md
    assert md_rows(md)[0]["Candidate"] == "&lt;i&gt;x\\|y&lt;/i&gt;"


def test_cross_run_rows_are_paired_only_on_the_same_eval_set(tmp_path: Path):
    ref = make_run(tmp_path, n=30)
    same = make_run(tmp_path, n=30, seed=3, arms={"baseline": (0.3, 2.5), "lora": (0.5, 1.7)})
    other = make_run(tmp_path, n=25, seed=4, eval_fingerprint="fp-other")
    doc = as_json([ref, same, other])
    ids = [load_run(p).run_id for p in (ref, same, other)]
    cross = [r for r in doc["comparisons"] if r["baseline_run"] != r["candidate_run"]]
    paired = [r for r in cross if r["candidate_run"] == ids[1]]
    unpaired = [r for r in cross if r["candidate_run"] == ids[2]]
    # across runs speed and memory were measured by different processes: left out, with a note
    quality = set(recorded(ref)) - set(SYSTEM_KEYS)
    assert {r["metric"] for r in paired} == quality == {r["metric"] for r in unpaired}
    assert sum("throughput and memory not compared, they were measured by different "
               "processes" in n for n in doc["notes"]) == 2
    for r in paired:
        assert (r["baseline_run"], r["baseline_arm"], r["candidate_arm"]) == (ids[0], "lora",
                                                                              "lora")
        assert r["pairing"] == "paired"
    assert all(r["ci_low"] is not None for r in paired if r["metric"] == "rougeL")
    for r in unpaired:
        assert r["pairing"] == "unpaired (different eval sets)"
        assert r["ci_low"] is None and r["p_value"] is None
    md = compare.compare_runs([load_run(p) for p in (ref, same, other)])
    assert "unpaired (different eval sets)" in md
    assert md.count("| Metric |") == 1, "many runs, one table"
    # identical configs: rows are labelled by run id (tests/test_compare_gate_escape.py has
    # the labels of runs whose configs differ)
    assert {r["Candidate"] for r in md_rows(md)} == {f"{i}:lora" for i in ids}
    assert f"**{ids[1]}**: toy/{ids[1]}" in md


def test_cross_run_statistics_equal_compare_arms_on_the_items(tmp_path: Path):
    a = load_run(make_run(tmp_path, n=30))
    b = load_run(make_run(tmp_path, n=30, seed=3))
    doc = json.loads(compare.compare_runs([a, b], fmt="json"))
    got = next(r for r in doc["comparisons"] if r["metric"] == "perplexity"
               and r["baseline_run"] == a.run_id and r["candidate_run"] == b.run_id)
    want = stats.compare_arms(a.items("lora"), b.items("lora"), a.record["arms"]["lora"]["metrics"],
                              b.record["arms"]["lora"]["metrics"], baseline="x", candidate="y",
                              n_resamples=2000, seed=0)
    want_row = next(r for r in want if r["metric"] == "perplexity")
    for k in ("abs_diff", "ci_low", "ci_high", "p_value", "p_value_holm"):
        assert got[k] == pytest.approx(want_row[k]), k


def test_failed_runs_and_arms_are_skipped_with_notes(tmp_path: Path):
    good = make_run(tmp_path, n=10, arms={"baseline": (0.3, 2.5), "lora": (0.4, 2.0),
                                          "qlora": (0.4, 2.1)})
    edit(good, lambda rec: rec["arms"]["qlora"].update(status="failed", metrics=None))
    bad = make_run(tmp_path, n=10, status="failed", error={"message": "CUDA out of memory"})
    md = compare.compare_runs([load_run(good), load_run(bad)])
    assert {r["Candidate"] for r in md_rows(md)} == {"lora"}
    assert "skipped arm qlora" in md
    assert "skipped run toy/" in md and "CUDA out of memory" in md


def test_statistics_come_from_predictions_not_stored_comparisons(run: Path):
    bogus = {"metric": "rougeL", "baseline": "baseline", "candidate": "lora",
             "baseline_value": 0, "candidate_value": 0, "abs_diff": 0, "rel_gain": 0,
             "ci_low": 999.0, "ci_high": 1000.0, "p_value": 0.5}
    edit(run, lambda rec: rec.update(comparisons=[bogus]))
    rouge = next(r for r in as_json([run])["comparisons"] if r["metric"] == "rougeL")
    assert rouge["pairing"] == "paired" and rouge["ci_low"] < 1
    (run / PREDICTIONS_FILE).unlink()  # without per-item rows the stored numbers are all we have
    rows = {r["metric"]: r for r in as_json([run])["comparisons"]}
    assert rows["rougeL"]["pairing"] == "stored" and rows["rougeL"]["ci_low"] == 999.0
    edit(run, lambda rec: rec.update(comparisons=[]))
    rows = {r["metric"]: r for r in as_json([run])["comparisons"]}
    assert rows["rougeL"]["pairing"] == "no per-item data" and rows["rougeL"]["ci_low"] is None


def test_two_base_models_are_compared_zero_shot_too(tmp_path: Path):
    a = make_run(tmp_path, suite="smollm", n=15)
    b = make_run(tmp_path, suite="gemma", n=15, seed=2)
    edit(b, lambda rec: rec["arms"]["baseline"].update(model="google/gemma-3-270m"))
    rows = md_rows(compare.compare_runs([load_run(a), load_run(b)]))
    pairs = {(r["Candidate"], r["Baseline"]) for r in rows}
    assert pairs == {("smollm:lora", "smollm:baseline"), ("gemma:lora", "gemma:baseline"),
                     ("gemma:lora", "smollm:lora"), ("gemma:baseline", "smollm:baseline")}


def test_a_run_without_adapters_says_so(tmp_path: Path):
    path = make_run(tmp_path, n=5, arms={"baseline": (0.3, 2.5)})
    md = compare.compare_runs([load_run(path)])
    assert md_rows(md) == [] and "nothing to compare" in md


# ---------------------------------------------------------------- through the CLI


def test_cli_compare_writes_each_format(tmp_path: Path):
    a, b = make_run(tmp_path, n=12), make_run(tmp_path, n=12, seed=1)
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(a), str(b / RUN_FILE)])
    assert res.exit_code == 0, res.output
    assert "| loss |" in res.stdout
    out = tmp_path / "table.csv"
    res = runner.invoke(app, ["compare", str(a), "--format", "csv", "--output", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("metric,candidate_run")


def test_cli_compare_bad_input_exits_2(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a run directory" in res.stderr
    res = runner.invoke(app, ["compare", str(make_run(tmp_path, n=5)), "--format", "pdf"])
    assert res.exit_code == 2 and "Invalid value for '--format'" in res.stderr  # typer's check
    assert all(f"'{f}'" in res.stderr for f in compare.FORMATS), res.stderr


def test_cli_compare_skips_a_corrupt_run_among_several(tmp_path: Path):
    a, b = make_run(tmp_path, n=12), make_run(tmp_path, n=12, seed=1)
    broken = make_run(tmp_path, n=12, seed=2)
    (broken / RUN_FILE).write_text("{not json")
    res = CliRunner().invoke(app, ["compare", str(a), str(broken), str(b)])
    assert res.exit_code == 0, res.output
    assert "warning: skipped:" in res.stderr and "corrupt JSON" in res.stderr
    assert str(broken) in res.stderr and "| loss |" in res.stdout
    assert load_run(b).run_id in res.stdout  # the runs that load are still compared
    only = CliRunner().invoke(app, ["compare", str(broken)])
    assert only.exit_code == 2 and "corrupt JSON" in only.stderr


def test_template_arms_are_compared_within_a_run_but_not_across(tmp_path: Path):
    arms = {"baseline": (0.3, 2.5), "baseline@short": (0.32, 2.4), "lora": (0.45, 1.8)}
    runs = [make_run(tmp_path, n=15, arms=arms, seed=s) for s in (0, 1)]
    for path in runs:  # a zero-shot prompt-template arm has no adapter
        edit(path, lambda rec: rec["arms"]["baseline@short"].update(adapter=None))
    pairs = {(r["Candidate"], r["Baseline"])
             for r in md_rows(compare.compare_runs([load_run(p) for p in runs]))}
    one, two = (load_run(p).run_id for p in runs)  # same config: labelled by run id
    assert pairs == {(f"{one}:baseline@short", f"{one}:baseline"),
                     (f"{one}:lora", f"{one}:baseline"),
                     (f"{two}:baseline@short", f"{two}:baseline"),
                     (f"{two}:lora", f"{two}:baseline"), (f"{two}:lora", f"{one}:lora")}


def test_cli_spells_compare_formats_and_default_alpha_as_compare_does():
    """The CLI lists them itself (importing compare would pull NumPy into every command)."""
    from harness import cli
    from harness.cli import reading
    from harness.views import compare

    assert reading.COMPARE_FORMATS == compare.FORMATS
    help_text = CliRunner().invoke(cli.app, ["compare", "--help"]).output
    assert f"[default: {config.DEFAULT_ALPHA:g}]" in help_text


# ---------------------------------------------------------------- colours and p-values


class RowClasses(HTMLParser):
    """metric (first cell) -> the class of its table row."""

    def __init__(self) -> None:
        super().__init__()
        self.classes: dict[str, str] = {}
        self._cls: str | None = None
        self._first = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._cls, self._first = dict(attrs).get("class") or "", True

    def handle_data(self, data: str) -> None:
        if self._first and self._cls is not None and data.strip():
            self.classes[data.strip()], self._first = self._cls, False


def test_html_rows_are_tinted_better_or_worse_never_just_significant(tmp_path: Path):
    """The adapter raises ROUGE (0.30 -> 0.45) and its NLL (2.5 -> 3.0 nats): both changes are
    significant, but a perplexity rise is a regression and must not be tinted green."""
    path = make_run(tmp_path, n=40, arms={"baseline": (0.30, 2.5), "lora": (0.45, 3.0)})
    out = tmp_path / "compare.html"
    res = CliRunner().invoke(app, ["compare", str(path), "--format", "html", "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = RowClasses()
    rows.feed(out.read_text())
    preds = [json.loads(line) for line in (path / PREDICTIONS_FILE).read_text().splitlines()]
    ppl = {arm: math.exp(sum(r["nll_sum"] for r in preds if r["arm"] == arm)
                         / sum(r["n_tokens"] for r in preds if r["arm"] == arm))
           for arm in ("baseline", "lora")}
    assert ppl["lora"] > ppl["baseline"] * 1.5, "perplexity rises by half"
    verdicts = {r["metric"]: r for r in as_json([path])["comparisons"]}
    assert verdicts["perplexity"]["significant"] and verdicts["rougeL"]["significant"]
    assert rows.classes["perplexity"] == "bad" and rows.classes["loss"] == "bad"
    assert rows.classes["rougeL"] == "good"
    assert rows.classes["peak_memory_bytes"] == ""  # one number per arm: no test, no colour
    assert "tr.bad td" in out.read_text() and "significantly worse" in out.read_text()


def test_p_beside_the_ci_is_unadjusted_and_the_holm_p_is_labelled(tmp_path: Path):
    """A CI is per metric (unadjusted): the p printed beside it must be too, with the Holm p
    that decides ``*`` in its own column."""
    path = make_run(tmp_path, n=40, arms={"baseline": (0.30, 2.5), "lora": (0.33, 2.42)})
    run = load_run(path)
    arms = run.record["arms"]
    expect = {r["metric"]: r for r in stats.compare_arms(
        run.items("baseline"), run.items("lora"), arms["baseline"]["metrics"],
        arms["lora"]["metrics"], baseline="baseline", candidate="lora", n_resamples=2000)}
    res = CliRunner().invoke(app, ["compare", str(path)])
    assert res.exit_code == 0, res.output
    table = md_rows(res.stdout)
    assert list(table[0])[7:10] == ["CI (abs.)", "p", "p (Holm)"]
    rows = {r["Metric"]: r for r in table}
    tested = [m for m, e in expect.items() if e["p_value"] is not None]
    holm = dict(zip(tested, stats.holm([expect[m]["p_value"] for m in tested]), strict=True))
    for m in tested:
        assert rows[m]["p"] == F.p_value(expect[m]["p_value"])
        star = " *" if holm[m] <= 0.05 else ""
        assert rows[m]["p (Holm)"] == F.p_value(holm[m]) + star
    assert any(rows[m]["p"] != rows[m]["p (Holm)"].rstrip(" *") for m in tested)
    assert "p (Holm)" in res.stdout and "unadjusted" in res.stdout


def test_a_cached_baseline_speed_and_memory_are_not_compared(tmp_path: Path):
    """A zero-shot arm from the cache was timed by an earlier process: compare (md, csv,
    json, html) leaves its speed and memory out and says why; the report marks them and
    draws them hollow. Before: eval tokens/s "↓..% worse" rows against the cached number."""
    path = make_run(tmp_path, n=20)
    rec = json.loads((path / RUN_FILE).read_text())
    rec["arms"]["baseline"]["cached"] = True
    rec["arms"]["baseline"]["metrics"]["eval_tokens_per_s"] = 680.0  # the lora arm: 400
    (path / RUN_FILE).write_text(json.dumps(rec))
    doc = as_json([path])
    metrics = {r["metric"] for r in doc["comparisons"]}
    assert "loss" in metrics and not metrics & set(SYSTEM_KEYS)
    assert any("zero-shot cache" in n for n in doc["notes"])
    res = CliRunner().invoke(app, ["compare", str(path), "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "tokens_per_s" not in res.output and "peak_memory" not in res.output
    from harness.views import report

    html = report.render_html(load_run(path))
    assert "baseline (cached)" in html and 'fill-opacity="0.15"' in html
    assert "680.0 (cached)" in report.render_markdown(load_run(path))
