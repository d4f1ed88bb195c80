"""report.html / report.md rendered from records built by tests/factories (no torch, no model)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import HarnessError
from harness.rundir.record import load_run
from harness.rundir.results import PREDICTIONS_FILE, RUN_FILE, TRAIN_LOG_FILE
from harness.stats import paired as stats
from harness.suite import config, suitefile
from harness.views import formatting as F
from harness.views import plots, report, templating
from harness.views.report_examples import MAX_EXAMPLES

from .factories import make_run

THREE_ARMS = {"baseline": (0.30, 2.5), "lora": (0.45, 1.8), "qlora": (0.27, 2.6)}
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"


def edit_record(path: Path, **changes: Any) -> None:
    rec = json.loads((path / RUN_FILE).read_text())
    rec.update(changes)
    (path / RUN_FILE).write_text(json.dumps(rec))


def comparisons(path: Path) -> list[dict[str, Any]]:
    """What the pipeline stores: ``stats.compare_arms`` of every other arm against baseline,
    on the run's per-item rows, with the run's recorded resample count and seed."""
    run = load_run(path)
    arms, settings = run.record["arms"], config.StatsSettings.from_record(run.record["stats"])
    return [row for cand in arms if cand != "baseline" for row in stats.compare_arms(
        run.items("baseline"), run.items(cand), arms["baseline"]["metrics"],
        arms[cand]["metrics"], baseline="baseline", candidate=cand,
        n_resamples=settings.n_resamples, seed=settings.seed, alpha=settings.alpha)]


def toy_suite(tmp_path: Path, **train: Any) -> config.Suite:
    """The suite a run of the toy record would have resolved, as ``suitefile.load_suite`` does."""
    raw = {"name": "toy", "model": {"name_or_path": "toy/model"},
           "data": {"path": "x.jsonl", "prompt_template": "{{ q }}",
                    "response_template": "{{ a }}"},
           "train": {"r": 8, "alpha": 16, "learning_rate": 2e-4, "max_steps": 10, **train}}
    return suitefile.validate_suite(raw, path=tmp_path / "toy.toml")


def rich_run(tmp_path: Path, n: int = 50, arms: dict | None = None) -> Path:
    """A successful run with comparisons, training details, length stats and a train config."""
    path = make_run(tmp_path, n=n, arms=arms or THREE_ARMS)
    edit_record(
        path,
        comparisons=comparisons(path),
        config=config.dump(toy_suite(tmp_path)),
        # per arm, the train config of its cell, as the pipeline records it
        training={a: {"trainable_params": 921_600, "total_params": 135_436_608,
                      "adapter_bytes": 3_702_784, "train_runtime_s": 312.5,
                      "train_tokens_per_s": 190.4, "padding_efficiency": 0.8125,
                      "computed_tokens": 70_000,
                      "config": config.dump(toy_suite(tmp_path, r=r))["train"]}
                  for a, r in (("lora", 8), ("qlora", 16))},
        data={"eval_fingerprint": "fp-toy-0001", "n_train": 100, "n_eval": n,
              "lengths": {"train": {"n": 100, "mean": 412.3, "median": 388, "max": 1024,
                                    "share_truncated": 0.031},
                          "eval": {"n": n, "mean": 398.0, "median": 377.5, "max": 990,
                                   "share_truncated": 0.0}}},
    )
    return path


def failed_run(tmp_path: Path) -> Path:
    """Baseline evaluated, then the lora arm ran out of memory while training."""
    path = make_run(tmp_path, arms={"baseline": (0.30, 2.5)}, status="failed",
                    error={"type": "RuntimeError", "message": "CUDA out of memory",
                           "stage": "train:lora"})
    rec = json.loads((path / RUN_FILE).read_text())
    rec["arms"]["lora"] = {"model": "toy/model", "adapter": None, "metrics": {},
                           "status": "running"}
    rec["training"] = {}
    (path / RUN_FILE).write_text(json.dumps(rec))
    (path / TRAIN_LOG_FILE).write_text(
        "".join(json.dumps({"arm": "lora", "step": s, "epoch": s / 10, "loss": 3 - 0.2 * s,
                            "learning_rate": 1e-4}) + "\n" for s in range(1, 4)))
    return path


@pytest.fixture()
def rich(tmp_path: Path) -> Path:
    return rich_run(tmp_path)


def headline_row(html: str, candidate: str, metric: str) -> str:
    section = html.split(f"<h3>{candidate} <span")[1]
    return section.split(f'data-metric="{metric}"')[1].split("</tr>")[0]


# ------------------------------------------------------------------ success


def test_headline_table_has_values_ci_p_and_significance(rich: Path):
    html = report.render_html(load_run(rich))
    c = next(c for c in json.loads((rich / RUN_FILE).read_text())["comparisons"]
             if c["candidate"] == "lora" and c["metric"] == "rougeL")
    row = headline_row(html, "lora", "rougeL")
    assert f"{c['baseline_value']:.4f}" in row and f"{c['candidate_value']:.4f}" in row
    assert f"{c['abs_diff']:+.4f}" in row
    assert f"{100 * c['rel_gain']:+.1f}%" in row
    assert f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" in row
    shown = {k: "&lt;0.001" if c[k] < 0.001 else f"{c[k]:.3f}" for k in ("p_value", "p_value_holm")}
    assert (f'<td class="num">{shown["p_value"]}</td>\n        '
            f'<td class="num">{shown["p_value_holm"]}</td>') in row  # p, then p (Holm)
    assert "significant" in row and 'class="num good strong"' in row
    assert "p (Holm)" in html and "95% CI" in html


def test_lower_is_better_metrics_read_as_gains_when_they_drop(rich: Path):
    html = report.render_html(load_run(rich))
    loss = headline_row(html, "lora", "loss")  # 2.5 -> 1.8 nats: a drop, shown as better
    assert re.search(r'class="num good[^"]*">-0\.\d{4}<', loss)
    assert 'title="lower is better"' in loss
    worse = headline_row(html, "qlora", "rougeL")  # 0.30 -> 0.27, not significant here
    assert 'class="num  ns"' in worse and "bad" not in worse  # a colour would claim it


def test_point_only_comparisons_render_dashes(rich: Path):
    row = headline_row(report.render_html(load_run(rich)), "lora", "gen_tokens_per_s")
    assert row.count("—") >= 3  # CI, p and significance
    assert "n.s." not in row


def test_model_outputs_and_prompts_are_escaped(rich: Path):
    html = report.render_html(load_run(rich))
    assert "<script>alert(1)</script>" not in html
    assert ESCAPED_SCRIPT in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert html.count("<script") == 1  # ours, admitted by its hash in the CSP


def test_html_is_self_contained(rich: Path):
    html = report.render_html(load_run(rich))
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(link|script|img|iframe)[^>]*(src|href)=\"(?!data:|#)", html)
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html


def test_script_hash_matches_the_inline_script(rich: Path):
    import base64
    import hashlib

    html = report.render_html(load_run(rich))
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in html


def test_plots_are_inline_svg(rich: Path):
    html = report.render_html(load_run(rich))
    # loss, ROUGE, gain, throughput, memory; then the frontier against trainable parameters
    # and train time (no arm recorded its peak training memory: that plot is not drawn)
    assert html.count('<svg class="chart"') == 7
    assert "<polyline" in html and "optimizer step" in html  # loss curves with axis label
    assert 'class="whisker"' in html  # CI error bars on the ROUGE bars
    assert "Relative improvement over baseline" in html and "<circle" in html
    assert "lora eval" in html and "qlora train" in html  # legend entries


def test_summary_training_lengths_and_config(rich: Path):
    html = report.render_html(load_run(rich))
    assert "abc1234" in html and "transformers" in html and "60.0 s" in html
    assert "921,600" in html and "0.7 %" in html and "3.53 MiB" in html  # 921600/135M
    assert "81.2%" in html and "5 min 12 s" in html
    assert "Truncated" in html and "3.1%" in html and "377.5" in html
    assert "learning_rate" in html and "0.0002" in html
    assert "computed_tokens" not in html.split('id="training"')[1].split("</section>")[0]


def test_sweep_knobs_that_differ_become_training_columns(rich: Path):
    md = report.render_markdown(load_run(rich))
    training = md.split("## Training")[1].split("##")[0]
    assert "| | lora | qlora |" in training
    assert "| config.r | 8 | 16 |" in training and "alpha" not in training  # same in both


def test_examples_sorted_by_rouge_gain(rich: Path):
    html = report.render_html(load_run(rich))
    rows = re.findall(r'<tr data-id="(item-\d+)" data-g0="([^"]*)" data-g1="([^"]*)"', html)
    assert len(rows) == 50
    gains = [float(g) for _, g, _ in rows]
    assert gains == sorted(gains, reverse=True)
    assert 'data-sort="regression"' in html and 'id="sort-arm"' in html


def test_examples_are_capped_keeping_gains_and_regressions(tmp_path: Path):
    html = report.render_html(load_run(make_run(tmp_path, n=MAX_EXAMPLES + 30)))
    gains = [float(g) for g in re.findall(r'<tr data-id="[^"]+" data-g0="([^"]*)"', html)]
    assert len(gains) == MAX_EXAMPLES
    assert f"Showing {MAX_EXAMPLES} of {MAX_EXAMPLES + 30} items" in html
    assert gains[0] > 0 > gains[-1]


def test_no_comparisons_falls_back_to_metrics_by_arm(tmp_path: Path):
    run = load_run(make_run(tmp_path))
    html, md = report.render_html(run), report.render_markdown(run)
    assert "holds no paired comparisons" in html and 'id="arms"' in html
    assert "No paired comparisons" in md and "## Metrics by arm" in md


# ------------------------------------------------------------------ failed runs


def test_failed_run_shows_error_and_what_was_measured(tmp_path: Path):
    run = load_run(failed_run(tmp_path))
    html, md = report.render_html(run), report.render_markdown(run)
    assert 'class="error-box"' in html and "CUDA out of memory" in html
    assert "<code>train:lora</code>" in html and "RuntimeError" in html
    assert 'class="pill failed"' in html
    assert "lora train" in html  # the partial loss curve still plotted
    assert "running" in html  # arm status column appears when an arm did not finish
    assert "Run failed" in md and "CUDA out of memory" in md and "train:lora" in md


def test_failed_run_with_a_bare_record_does_not_crash(tmp_path: Path):
    path = tmp_path / "bare"
    path.mkdir()
    (path / RUN_FILE).write_text(json.dumps({
        "schema_version": 1, "status": "failed", "arms": None, "comparisons": None,
        "error": {"type": "ValueError", "message": "bad <data>"}}))
    run = load_run(path)
    html, md = report.render_html(run), report.render_markdown(run)
    assert "bad &lt;data&gt;" in html and "bad &lt;data&gt;" in md
    assert 'id="examples"' not in html


def test_a_corrupt_predictions_line_becomes_a_warning(rich: Path):
    with open(rich / PREDICTIONS_FILE, "a") as f:
        f.write('{"arm": "lora", "id": "item-9\n')
    html = report.render_html(load_run(rich))
    assert 'class="warn"' in html and "corrupt JSON line" in html


# ------------------------------------------------------------------ markdown


def test_markdown_tables(rich: Path):
    md = report.render_markdown(load_run(rich))
    assert ("| Metric | Zero-shot | lora | Abs. gain | Rel. gain | 95% CI (abs.) | p | p (Holm) |"
            in md)
    rouge = next(line for line in md.splitlines() if line.startswith("| ROUGE-L |"))
    assert "**+" in rouge and "yes" in rouge and rouge.count("|") == 10
    assert "| Perplexity (↓) |" in md and "[report.html](report.html)" in md
    assert "<script" not in md
    for line in md.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), line


def test_markdown_escapes_untrusted_arm_names(tmp_path: Path):
    run = load_run(make_run(tmp_path, arms={"baseline": (0.3, 2.5), "x|<i>y": (0.4, 2.0)}))
    md = report.render_markdown(run)
    assert "| x\\|&lt;i&gt;y |" in md


# ------------------------------------------------------------------ files, CLI, imports


def test_write_reports_writes_both_files(rich: Path):
    paths = report.write_reports(load_run(rich))
    assert [p.name for p in paths] == ["report.html", "report.md"]
    assert all(p.parent == rich and p.stat().st_size > 1000 for p in paths)


def test_cli_report_writes_both_files(rich: Path):
    result = CliRunner().invoke(app, ["report", str(rich / RUN_FILE)])
    assert result.exit_code == 0, result.output
    assert (rich / "report.html").is_file() and (rich / "report.md").is_file()
    assert "report.html" in result.output


def test_cli_report_bad_path_exits_2(tmp_path: Path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2


def test_missing_templates_is_a_clear_error(rich: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv(templating.TEMPLATES_ENV, str(tmp_path / "empty"))
    with pytest.raises(HarnessError, match="report templates not found"):
        report.render_html(load_run(rich))


# ------------------------------------------------------------------ plots


@pytest.mark.parametrize(("lo", "hi", "first", "last"), [
    (0.0, 1.0, 0.0, 1.0), (0.27, 0.46, 0.25, 0.5), (1.8, 2.6, 1.8, 2.6), (5.0, 5.0, 4.4, 5.6),
    (-12.0, 40.0, -20.0, 40.0),
])
def test_nice_ticks_cover_the_range(lo, hi, first, last):
    ticks = plots.nice_ticks(lo, hi)
    assert ticks[0] == pytest.approx(first) and ticks[-1] == pytest.approx(last)
    assert 3 <= len(ticks) <= 8


def test_chart_labels_are_escaped():
    svg = plots.line_chart([plots.Series("<b>x</b>", [(0, 1), (1, 2)], "#000")],
                           title="t", x_label="x", y_label="y")
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert plots.line_chart([], title="t", x_label="x", y_label="y") is None


def test_a_sweep_with_many_arms_renders(tmp_path: Path):
    arms = {"baseline": (0.3, 2.5), **{f"r{r}-lr{lr}": (0.35, 2.0) for r in (8, 16, 32)
                                       for lr in ("1e-4", "2e-4")}}
    path = rich_run(tmp_path, n=20, arms=arms)
    html = report.render_html(load_run(path))
    assert html.count("<h3>r") == 6  # one headline table per sweep cell
    forest = html.split("Relative improvement over baseline</title>")[1].split("</svg>")[0]
    assert forest.count("<circle") == 6 * 6  # six quality metrics per cell
    assert all(f"{a} train" in html for a in arms if a != "baseline")


# ------------------------------------------------------------------ colours, p-values, forest


def edit_comparison(path: Path, candidate: str, metric: str, **changes: Any) -> None:
    rec = json.loads((path / RUN_FILE).read_text())
    for c in rec["comparisons"]:
        if (c["candidate"], c["metric"]) == (candidate, metric):
            c.update(changes)
    (path / RUN_FILE).write_text(json.dumps(rec))


def cli_report(path: Path) -> tuple[str, str]:
    res = CliRunner().invoke(app, ["report", str(path)])
    assert res.exit_code == 0, res.output
    return (path / "report.html").read_text(), (path / "report.md").read_text()


def test_colour_says_significantly_better_or_worse_and_nothing_else(tmp_path: Path):
    """ROUGE up and perplexity up (both significant): green and red; a rise that is not
    significant is neither (it was a faded green)."""
    path = rich_run(tmp_path, arms={"baseline": (0.30, 2.5), "lora": (0.45, 3.0)})
    edit_comparison(path, "lora", "rouge2", significant=False, p_value_holm=0.2)
    rec = json.loads((path / RUN_FILE).read_text())
    rows = {c["metric"]: c for c in rec["comparisons"]}
    assert rows["perplexity"]["abs_diff"] > 0 and rows["perplexity"]["significant"]
    assert rows["rouge2"]["abs_diff"] > 0
    html, _ = cli_report(path)
    ppl, rouge = headline_row(html, "lora", "perplexity"), headline_row(html, "lora", "rougeL")
    assert 'class="num bad strong"' in ppl and "good" not in ppl
    assert 'class="num good strong"' in rouge and "bad" not in rouge
    ns = headline_row(html, "lora", "rouge2")
    assert 'class="num  ns"' in ns and "good" not in ns and "bad" not in ns
    forest = html.split("Relative improvement over baseline</title>")[1].split("</svg>")[0]
    marker = {m: f for f, m in re.findall(r'fill="([^"]+)"[^>]*><title>lora · ([^:]+):', forest)}
    assert marker["Perplexity"] == plots.TONE_COLORS["bad"]
    assert marker["ROUGE-L"] == plots.TONE_COLORS["good"]
    assert marker["ROUGE-2"] == "#fff"  # not significant: hollow


def test_p_beside_the_ci_is_unadjusted_and_holm_decides_with_enough_digits(tmp_path: Path):
    """Holm p 0.0496 printed as 0.050 read as alpha itself; the CI sits beside an unadjusted
    p, the Holm p has its own labelled column."""
    path = rich_run(tmp_path)
    edit_comparison(path, "lora", "rougeL", p_value=0.012, p_value_holm=0.0496,
                    significant=True)
    html, md = cli_report(path)
    assert '<th class="num">p</th><th class="num">p (Holm)</th>' in html
    row = headline_row(html, "lora", "rougeL")
    assert '<td class="num">0.012</td>' in row and '<td class="num">0.0496</td>' in row
    assert "| 95% CI (abs.) | p | p (Holm) | Significant |" in md
    line = next(x for x in md.splitlines() if x.startswith("| ROUGE-L |"))
    assert "| 0.012 | 0.0496 |" in line
    assert "0.050" not in row


def forest_rows(html: str) -> tuple[tuple[float, float], dict[str, tuple[float, float]], str]:
    """The forest plot's x axis (first and last grid line) and each row's CI line (x1, x2)."""
    svg = html.split("Relative improvement over baseline</title>")[1].split("</svg>")[0]
    grid = [float(x) for x in re.findall(r'<line class="(?:grid|zero)" x1="([\d.]+)"', svg)]
    labels = {float(y): name for y, name in re.findall(
        r'<text x="[\d.]+" y="([\d.]+)" text-anchor="end" class="tick">([^<]+)</text>', svg)}
    lines = {labels[float(y) + 4]: (float(a), float(b)) for a, b, y in re.findall(
        r'<line x1="([\d.]+)" x2="([\d.]+)" y1="([\d.]+)" y2="[\d.]+" stroke="[^"]+" '
        r'stroke-width="2.5"', svg)}
    return (min(grid), max(grid)), lines, svg


def test_one_huge_relative_change_does_not_squash_the_forest_plot(tmp_path: Path):
    path = rich_run(tmp_path)
    edit_comparison(path, "qlora", "perplexity", rel_gain=22.56, rel_ci_low=20.0,
                    rel_ci_high=25.0)
    html, _ = cli_report(path)
    (lo, hi), lines, svg = forest_rows(html)
    widths = {k: (b - a) / (hi - lo) for k, (a, b) in lines.items()
              if k != "qlora · Perplexity"}
    assert len(widths) == 11
    assert sorted(widths.values())[len(widths) // 2] > 0.05, widths
    assert "-2256.0%" in svg and 'class="clip"' in svg  # the outlier: an arrow and its value
    a, b = lines["qlora · Perplexity"]
    assert a == pytest.approx(lo) and b < lo + 0.1 * (hi - lo)  # cut at the left edge


def test_a_forest_plot_without_outliers_is_not_clipped(rich: Path):
    (lo, hi), lines, svg = forest_rows(report.render_html(load_run(rich)))
    assert 'class="clip"' not in svg and len(lines) == 12
    assert all(lo <= a <= b <= hi for a, b in lines.values())


def test_terminal_summary_labels_both_p_values_and_colours_by_direction(rich: Path):
    from harness.cli import summary

    rec = json.loads((rich / RUN_FILE).read_text())
    for c in rec["comparisons"]:
        if (c["candidate"], c["metric"]) == ("qlora", "perplexity"):
            c.update(abs_diff=0.9, significant=True)  # a significant rise: worse
        if (c["candidate"], c["metric"]) == ("lora", "rouge2"):
            c.update(significant=False)
    tables = {str(t.columns[2].header): t
              for t in (f.tables[0] for f in summary.summary_table(rec).renderables)}
    assert list(tables) == ["lora", "qlora"]  # one table per adapter arm
    headers = [str(c.header) for c in tables["lora"].columns]
    assert headers[2:6] == ["lora", "Δ [95% CI]", "p", "p (Holm)"]

    def cell(arm: str, col: int, metric: str) -> Any:
        metric_cells = [str(x) for x in tables[arm].columns[0]._cells]
        return tables[arm].columns[col]._cells[metric_cells.index(metric)]

    comps = {(c["candidate"], c["metric"]): c for c in rec["comparisons"]}
    assert str(cell("lora", 4, "rougeL")) == F.p_value(comps[("lora", "rougeL")]["p_value"])
    assert str(cell("lora", 5, "rougeL")) == F.p_value(
        comps[("lora", "rougeL")]["p_value_holm"])
    assert cell("lora", 3, "rougeL").style == "green"
    assert cell("lora", 3, "perplexity ↓").style == "green"
    assert cell("qlora", 3, "perplexity ↓").style == "red"
    assert cell("lora", 3, "rouge2").style == ""


def test_forest_plot_clips_on_either_side_with_one_arrow_per_cut():
    rows = [plots.Interval(f"m{i}", v, v - 2, v + 2, "#000") for i, v in enumerate((3, 5, 8))]
    right = plots.Interval("big", 3000.0, 2800.0, 3200.0, "#000")  # all beyond the right edge
    wide = plots.Interval("wide", 4.0, -900.0, 6.0, "#000")  # only its low end is beyond
    svg = str(plots.interval_chart([*rows, right, wide], title="t", x_label="x",
                                   value_fmt=lambda v: f"{v:+g}"))
    assert svg.count('class="clip"') == 2 and ">+3000</text>" in svg
    assert plots.axis_range([3, 5, 8, 3000]) == (0.0, 8)
    assert plots.axis_range([3, 5, 8, 20]) == (0.0, 20)  # not squashed: everything shown
