"""Quality against cost: a real method x rank sweep on the tiny model renders the frontier in
the report and its columns in `harness compare`; seeded recipes are one point; the adapter card
carries a model-index that huggingface_hub reads back equal to the record."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.record import load_run
from harness.rundir.results import RUN_FILE
from harness.views import modelcard, report

from .factories import make_run
from .test_report import comparisons, edit_record

runner = CliRunner()
HEADLINE = "rougeL"  # the tiny suite's first card metric
SWEEP_ARMS = ["methodlora_r4", "methodlora_r8", "methoddora_r4", "methoddora_r8", "methodia3"]
COSTS = {"params": "trainable_params", "time": "train_runtime_s",
         "memory": "peak_train_memory_bytes"}


def _record(run: Path) -> dict[str, Any]:
    return json.loads((run / RUN_FILE).read_text())


def _pareto(points: dict[str, tuple[float, float]]) -> set[str]:
    """Brute force: names whose (gain, cost) no other point weakly dominates, strictly on one."""
    return {a for a, (g, c) in points.items()
            if not any(g2 >= g and c2 <= c and (g2 > g or c2 < c)
                       for b, (g2, c2) in points.items() if b != a)}


def _expected_marks(rec: dict[str, Any]) -> dict[str, set[str]]:
    """Per arm, the cost axes it is Pareto-optimal on, from run.json alone."""
    gain = {c["candidate"]: c["abs_diff"] for c in rec["comparisons"]
            if c["metric"] == HEADLINE and c["baseline"] == "baseline"}
    marks: dict[str, set[str]] = {a: set() for a in rec["training"]}
    for short, key in COSTS.items():
        for a in _pareto({a: (gain[a], t[key]) for a, t in rec["training"].items()}):
            marks[a].add(short)
    return marks


def _md_table(md: str, title: str) -> list[list[str]]:
    """The first table under ``## title``, less its header."""
    table = md.split(f"## {title}")[1].split("\n| ", 1)[1].split("\n\n")[0]
    rows = ("| " + table).splitlines()[2:]
    # cells split where GitHub splits them: at a | not escaped as \|
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip("|"))] for r in rows]


# ---------------------------------------------------------------- the real sweep


def test_method_by_rank_sweep_renders_the_frontier(method_sweep: Path):
    rec = _record(method_sweep)
    assert list(rec["training"]) == SWEEP_ARMS  # ia3 takes no r: one cell, not two
    marks = _expected_marks(rec)
    assert any(marks.values()) and not all(len(m) == 3 for m in marks.values())
    rows = {r[0]: r for r in _md_table((method_sweep / "report.md").read_text(),
                                       "Quality and cost")}
    assert list(rows) == SWEEP_ARMS
    for arm, t in rec["training"].items():
        _, method, r, gain, params, _, _, on = rows[arm]
        assert method == t["config"]["method"] and params == f"{t['trainable_params']:,}"
        assert r == ("—" if method == "ia3" else str(t["config"]["r"]))
        diff = next(c["abs_diff"] for c in rec["comparisons"]
                    if c["candidate"] == arm and c["metric"] == HEADLINE)
        assert gain.startswith(f"{diff:+.4f} [")
        assert set(on.split(", ")) - {"—"} == marks[arm], arm

    html = (method_sweep / "report.html").read_text()
    section = html.split('<section id="frontier">')[1].split("</section>")[0]
    svgs = re.findall(r'<svg class="chart".*?</svg>', section, re.S)
    assert len(svgs) == 3  # against parameters, train time and peak training memory
    for svg, short in zip(svgs, COSTS):
        dots = re.findall(r'<circle class="dot"[^>]* fill="([^"]+)"[^>]*><title>([^<]+)', svg)
        assert len(dots) == 5
        filled = {title.split(" (")[0] for fill, title in dots if fill != "#fff"}
        assert filled == {a for a, m in marks.items() if short in m}, short


def test_compare_csv_and_json_carry_method_rank_costs_and_pareto(method_sweep: Path):
    rec = _record(method_sweep)
    marks = _expected_marks(rec)
    res = runner.invoke(app, ["compare", str(method_sweep), "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert {r["candidate_arm"] for r in rows} == set(SWEEP_ARMS)
    for row in rows:
        t = rec["training"][row["candidate_arm"]]
        assert row["method"] == t["config"]["method"] and row["frontier_metric"] == HEADLINE
        assert row["r"] == ("" if t["config"].get("r") is None else str(t["config"]["r"]))
        for short, key in COSTS.items():
            assert float(row[key]) == t[key]
            assert row[f"pareto_{short}"] == str(short in marks[row["candidate_arm"]])
    res = runner.invoke(app, ["compare", str(method_sweep), "--format", "json"])
    for row in json.loads(res.output)["comparisons"]:
        t = rec["training"][row["candidate_arm"]]
        assert [row[k] for k in COSTS.values()] == [t[k] for k in COSTS.values()]
        assert row["pareto_params"] is ("params" in marks[row["candidate_arm"]])


def test_adapter_card_model_index_reads_back_equal_to_the_record(method_sweep: Path,
                                                                 tiny_model_dir: Path):
    rec = _record(method_sweep)
    base = rec["arms"]["baseline"]["metrics"]
    quality = {"loss", "perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    for arm in SWEEP_ARMS:
        path = method_sweep / "adapters" / arm / "README.md"
        card = ModelCard.load(path)
        assert card.data.base_model == str(tiny_model_dir) and card.data.library_name == "peft"
        assert "| metric | zero-shot | this adapter |" in card.text  # the card's own table
        got = {(r.metric_type, r.metric_args["arm"]): r for r in card.data.eval_results}
        assert {t for t, _ in got} == quality  # no throughput, no memory
        for metric in quality:
            assert got[metric, arm].metric_value == rec["arms"][arm]["metrics"][metric]
            assert got[metric, "baseline"].metric_value == base[metric]
            assert got[metric, "baseline"].metric_name.endswith("(zero-shot base)")
        r = got["loss", arm]
        assert (r.task_type, r.dataset_type) == ("text-generation", "instruct.jsonl")
        assert r.dataset_args == {"fingerprint": rec["data"]["eval_fingerprint"], "n_items": 8}
        name, results = model_index_to_eval_results(metadata_load(path)["model-index"])
        assert name == f"tiny/{arm}" and len(results) == 2 * len(quality)


# ---------------------------------------------------------------- records without training


def _costs(params: int, seconds: float, memory: int | None, method: str = "lora",
           r: int | None = 8) -> dict[str, Any]:
    out = {"trainable_params": params, "total_params": 10 * params, "train_runtime_s": seconds,
           "config": {"method": method, "r": r}}
    return out if memory is None else {**out, "peak_train_memory_bytes": memory}


def test_seeded_recipe_is_one_point_with_its_seed_interval(tmp_path: Path):
    arms = {"baseline": (0.30, 2.5), "lora@s0": (0.40, 2.0), "lora@s1": (0.44, 1.9),
            "dora": (0.50, 1.7)}
    path = make_run(tmp_path, arms=arms)
    seed_row = {"metric": HEADLINE, "baseline": "baseline", "recipe": "lora",
                "seeds": ["lora@s0", "lora@s1"], "abs_diff": 0.12, "ci_low": -0.01,
                "ci_high": 0.25, "n_seeds": 2, "seed_sd": 0.03, "significant": False}
    edit_record(path, comparisons=comparisons(path), seed_comparisons=[seed_row], training={
        "lora@s0": _costs(1000, 10.0, 2**30), "lora@s1": _costs(1000, 14.0, 2**30),
        "dora": _costs(1200, 30.0, None, "dora")})
    md = report.render_markdown(load_run(path))
    rows = {r[0]: r for r in _md_table(md, "Quality and cost")}
    assert list(rows) == ["lora · 2 seeds", "dora"]
    assert rows["lora · 2 seeds"][3] == "+0.1200 [-0.0100, +0.2500]"  # the across-seeds row
    assert rows["lora · 2 seeds"][5] == "12.0 s"  # the seeds' mean train time
    assert rows["dora"][6] == "not recorded"  # an older record's missing peak memory, never 0
    res = runner.invoke(app, ["compare", str(path), "--format", "json"])
    by_arm = {r["candidate_arm"]: r for r in json.loads(res.output)["comparisons"]}
    assert by_arm["lora@s1"]["train_runtime_s"] == 14.0  # the arm's own cost
    assert by_arm["dora"]["peak_train_memory_bytes"] is None
    assert by_arm["dora"]["pareto_memory"] is None  # not judged without the cost


def test_model_index_of_an_extra_eval_set_names_that_set(tmp_path: Path):
    path = make_run(tmp_path, forgetting={"general": {"baseline": 2.0, "lora": 2.2}})
    rec = load_run(path).record
    text = modelcard.front_matter(rec, arm="lora", base_model="toy/model", method="lora",
                                  metrics=rec["arms"]["lora"]["metrics"])
    card = ModelCard(f"---\n{text}\n---\n\n# card\n")
    general = [r for r in card.data.eval_results if r.dataset_name == "general"]
    assert {r.dataset_type for r in general} == {"data/general.jsonl"}
    for r in general:
        arm = r.metric_args["arm"]
        assert r.metric_value == rec["arms"][arm]["metrics"][f"general/{r.metric_type}"]
    assert {r.metric_type for r in general} == {"loss", "perplexity"}


def test_arm_and_method_names_are_escaped_in_the_frontier(tmp_path: Path):
    evil = "<img src=x onerror=alert(1)>|x"
    path = make_run(tmp_path, arms={"baseline": (0.30, 2.5), evil: (0.40, 2.0),
                                    "dora": (0.50, 1.7)})
    edit_record(path, comparisons=comparisons(path), training={
        evil: _costs(1000, 10.0, 2**30, method=evil), "dora": _costs(1200, 30.0, 2**29, "dora")})
    run = load_run(path)
    html, md = report.render_html(run), report.render_markdown(run)
    section = html.split('<section id="frontier">')[1].split("</section>")[0]
    assert section.count('<svg class="chart"') == 3
    assert "<img" not in section and "&lt;img src=x onerror=alert(1)&gt;" in section
    rows = _md_table(md, "Quality and cost")
    assert len(rows) == 2 and all(len(r) == 8 for r in rows)  # the | did not split a cell


def test_a_lower_is_better_headline_counts_a_drop_as_the_gain(tmp_path: Path):
    """Loss alone: the arm whose loss fell most is on the frontier though it cost more."""
    path = make_run(tmp_path, arms={"baseline": (0.30, 2.5), "big": (0.30, 1.8),
                                    "small": (0.30, 2.2)})
    edit_record(path, comparisons=[c for c in comparisons(path) if c["metric"] == "loss"],
                training={"big": _costs(2000, 20.0, 2**30), "small": _costs(1000, 10.0, 2**29)})
    rows = {r[0]: r for r in _md_table(report.render_markdown(load_run(path)),
                                       "Quality and cost")}
    assert float(rows["big"][3].split()[0]) < float(rows["small"][3].split()[0]) < 0
    assert rows["big"][7] == rows["small"][7] == "params, time, memory"
