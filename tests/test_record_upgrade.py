"""A record written by an earlier harness still loads, reports, compares and gates.

``assets/records/v1/<run_id>/`` is a real run directory of schema version 1, written by
`harness run` on the tiny test model (6 eval items with ROUGE, a 2-step LoRA arm, an extra
loss-only eval set ``general`` with ``forgetting = true``, 200 resamples). Only what no reader
uses was left out: the adapter's weights and ``harness.log``; the folder the suite was run from
reads ``/home/user/record-v1`` everywhere. Its ``report.md`` and ``report.html`` are the ones
that harness rendered: re-rendering the record must give them back byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir import record
from harness.rundir.record import SCHEMA_VERSION, load_run
from harness.rundir.results import PREDICTIONS_FILE, RUN_FILE
from harness.views import report

from .conftest import ASSETS, REPO
from .factories import make_run
from .test_report import edit_record

V1 = next((ASSETS / "records" / "v1").iterdir())
REPORTS = ("report.md", "report.html")


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture()
def v1(tmp_path: Path) -> Path:
    """A copy of the fixture: readers may write into a run directory (its reports)."""
    return Path(shutil.copytree(V1, tmp_path / V1.name))


def stored(path: Path = V1) -> dict[str, Any]:
    """run.json as the json module reads it, strictly (no NaN / Infinity)."""
    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads((path / RUN_FILE).read_text(encoding="utf-8"), parse_constant=refuse)


def test_the_fixture_is_a_version_1_record_with_arms_comparisons_and_rouge():
    rec = stored()
    assert rec["schema_version"] == 1 and rec["status"] == "success"
    assert list(rec["arms"]) == ["baseline", "lora"]
    assert {c["candidate"] for c in rec["comparisons"]} == {"lora"}
    rows = [json.loads(line) for line in (V1 / PREDICTIONS_FILE).read_text().splitlines()]
    assert len(rows) == 2 * (6 + 4)  # two arms x (6 own items + 4 of the extra set)
    assert all("rougeL" in r for r in rows if r["set"] is None)


def test_load_run_keeps_every_arm_comparison_and_row():
    run = load_run(V1)
    rec = stored()
    assert run.run_id == V1.name and run.suite == "record-v1"
    for name, arm in rec["arms"].items():
        assert run.record["arms"][name]["metrics"] == arm["metrics"]
        assert run.record["arms"][name]["status"] == arm["status"]
    assert run.record["comparisons"] == rec["comparisons"]
    assert len(run.items("lora")) == 10 and len(run.items("baseline")) == 10


def test_report_renders_the_reports_that_harness_wrote(v1: Path):
    for name in REPORTS:
        (v1 / name).unlink()
    res = CliRunner().invoke(app, ["report", str(v1)])
    assert res.exit_code == 0, res.output
    for name in REPORTS:
        assert (v1 / name).read_bytes() == (V1 / name).read_bytes(), name


def test_compare_gives_the_recorded_numbers(v1: Path):
    res = CliRunner().invoke(app, ["compare", str(v1), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {(r["candidate"], r["metric"]): r for r in json.loads(res.stdout)["comparisons"]}
    rec = stored()
    for c in rec["comparisons"]:  # recomputed from predictions.jsonl: the same numbers
        got = rows[(c["candidate"], c["metric"])]
        for key in ("baseline_value", "candidate_value", "ci_low", "ci_high", "p_value"):
            if c[key] is None:  # speed and memory: one number per arm, no CI or p
                assert got[key] is None, (c["metric"], key)
            else:
                assert got[key] == pytest.approx(c[key], rel=1e-12, abs=1e-12), (c["metric"], key)
    assert rows[("lora", "loss")]["candidate_value"] == rec["arms"]["lora"]["metrics"]["loss"]


def test_gate_against_itself_and_its_own_zero_shot_arm(v1: Path):
    res = CliRunner().invoke(app, ["gate", str(v1), "--baseline", str(V1),
                                   "--rule", "perplexity:+2%", "--rule", "loss:+0.05"])
    assert res.exit_code == 0, res.output
    assert "327.1482" in res.output  # lora's perplexity, both sides
    res = CliRunner().invoke(app, ["gate", str(v1), "--rule",
                                   "general/perplexity:+5%:vs-zero-shot"])
    assert res.exit_code == 0, res.output
    metrics = stored()["arms"]
    base, lora = (metrics[a]["metrics"]["general/perplexity"] for a in ("baseline", "lora"))
    assert f"{base:.4f}" in res.output and f"{lora:.4f}" in res.output
    assert f"{(lora - base) / base:+.2%}" in res.output


# ---------------------------------------------------------------- what upgrade derives


def _compare_json(run: Path) -> dict[tuple[str, str], dict[str, Any]]:
    res = CliRunner().invoke(app, ["compare", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    return {(r["candidate"], r["metric"]): r for r in json.loads(res.stdout)["comparisons"]}


def test_rows_without_nll_sum_compare_as_the_rows_with_it(tmp_path: Path):
    """Early predictions.jsonl rows carry only the per-item mean loss: nll_sum is rebuilt as
    loss x n_tokens when the run is read, so perplexity's interval is the full rows' one."""
    full = make_run(tmp_path / "full", n=40, seed=12)
    slim = make_run(tmp_path / "slim", n=40, seed=12)
    rows = [json.loads(line) for line in (slim / PREDICTIONS_FILE).read_text().splitlines()]
    (slim / PREDICTIONS_FILE).write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "nll_sum"}) + "\n" for r in rows))
    edit_record(slim, schema_version=1)
    want, got = _compare_json(full)[("lora", "perplexity")], _compare_json(slim)[
        ("lora", "perplexity")]
    assert got["paired"] and got["ci_low"] == pytest.approx(want["ci_low"], rel=1e-9)
    assert got["ci_high"] == pytest.approx(want["ci_high"], rel=1e-9)


def test_a_record_before_memory_description_says_what_its_memory_kind_says(tmp_path: Path):
    run = make_run(tmp_path)  # env has memory_kind "eval_peak_rss" and no description
    edit_record(run, schema_version=1)
    loaded = load_run(run)
    assert loaded.record["schema_version"] == SCHEMA_VERSION == 2
    assert loaded.record["env"]["memory_description"] == "eval peak rss"
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "| Peak memory measured as | eval peak rss |" in (run / "report.md").read_text()


def test_a_merge_says_failed_until_its_files_have_landed(tmp_path: Path, monkeypatch):
    """A merge writes its run as a run does: while the reports are rendered, run.json already
    says failed (IncompleteWrite), so a crash there leaves no record claiming success."""
    shard = make_run(tmp_path / "shards")
    edit_record(shard, shard={"index": 0, "count": 1, "arms": ["lora"]})
    seen: list[Any] = []
    render = report.render_into

    def spy(path: Path, rec: Any) -> None:
        where = path / RUN_FILE
        seen.append(json.loads(where.read_text())["error"] if where.exists() else None)
        render(path, rec)

    monkeypatch.setattr(report, "render_into", spy)
    res = CliRunner().invoke(app, ["merge", str(shard), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert seen == [{"type": "IncompleteWrite", "stage": "write", "message": "the run's files "
                     "were not all written (crash or full disk)"}]
    merged = next((tmp_path / "out" / "toy").iterdir())
    assert stored(merged)["status"] == "success" and stored(merged)["error"] is None


def test_readme_names_every_key_of_the_record_types():
    """README's run-directory section is the public contract: it names each key the types
    hold, and the schema version."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The run directory"):text.index("## Beyond one machine")]
    assert f"`schema_version` {SCHEMA_VERSION}" in section
    for kind in (record.RunRecord, record.ArmEntry, record.ComparisonRow,
                 record.SeedComparisonRow, record.PredictionRow, record.Measured):
        keys = [k for base in reversed(kind.__mro__) for k in getattr(base, "__annotations__", {})]
        missing = [k for k in keys if f"`{k}`" not in section and f'"{k}"' not in section]
        assert not missing, (kind.__name__, missing)
    assert all(f"`{s.value}`" in section for s in record.Status)
