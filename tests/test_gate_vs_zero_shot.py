"""`harness gate RUN --rule general/perplexity:+5%:vs-zero-shot`: a forgetting check within one
run, each adapter arm against that run's zero-shot arm, through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import InputError
from harness.rundir.results import PREDICTIONS_FILE, RUN_FILE
from harness.suite import gaterules
from harness.views import gate

from .factories import make_run
from .test_report import edit_record

RULE = "general/perplexity:+5%:vs-zero-shot"
ARMS = {"baseline": (0.30, 2.5), "lora": (0.45, 1.8), "qlora": (0.40, 2.0)}


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["gate", *args])


def run_with(tmp_path: Path, general: dict[str, float], **record: Any) -> Path:
    """A run whose arms score ``general`` (a loss-only forgetting set) at these nats/token."""
    path = make_run(tmp_path, arms=ARMS, forgetting={"general": general})
    if record:
        edit_record(path, **record)
    return path


def general_perplexity(path: Path, arm: str) -> float:
    rows = [json.loads(x) for x in (path / PREDICTIONS_FILE).read_text().splitlines()]
    mine = [r for r in rows if r["arm"] == arm and r.get("set") == "general"]
    return math.exp(sum(r["nll_sum"] for r in mine) / sum(r["n_tokens"] for r in mine))


def fail_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "FAIL:" in line]


def test_forgetting_beyond_the_margin_fails_naming_arm_and_metric(tmp_path: Path):
    # qlora forgets (+0.5 nats/token on general: perplexity x1.65), lora does not
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.5})
    ratio = general_perplexity(path, "qlora") / general_perplexity(path, "baseline")
    assert ratio > 1.3 and general_perplexity(path, "lora") / general_perplexity(
        path, "baseline") < 1.05
    res = cli(str(path), "--rule", RULE)
    assert res.exit_code == 1, res.output
    [line] = fail_lines(res.stdout)
    assert "qlora vs zero-shot (same run)" in line and "general/perplexity" in line
    assert f"{100 * (ratio - 1):+.2f}%" in line and "allowed +5%" in line
    assert "❌ FAIL (1 regression)" in res.stdout


def test_forgetting_within_the_margin_passes(tmp_path: Path):
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.02})
    assert general_perplexity(path, "qlora") / general_perplexity(path, "baseline") < 1.05
    res = cli(str(path), "--rule", RULE)
    assert res.exit_code == 0, res.output
    assert "✅ pass" in res.stdout and "vs its own zero-shot arm" in res.stdout
    assert res.stdout.count("vs zero-shot (same run)") == 2  # both adapter arms checked


def test_sig_form_fails_only_when_the_ci_clears_the_margin(tmp_path: Path):
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.5})
    res = cli(str(path), "--rule", "general/perplexity:+5%:sig:vs-zero-shot")
    assert res.exit_code == 1 and "excludes the margin" in res.stdout


def test_suite_rules_gate_within_the_run_and_skip_the_others_without_a_baseline(
        tmp_path: Path):
    config = {"name": "toy", "model": {"name_or_path": "toy/model"},
              "gate": {"rules": ["rougeL:-1%", RULE]}}
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.5}, config=config)
    res = cli(str(path))
    assert res.exit_code == 1 and f"`{RULE}` (suite)" in res.stdout
    assert "rougeL:-1% needs a baseline run and is not applied" in res.stderr


def test_with_a_baseline_run_both_kinds_apply(tmp_path: Path):
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.5})
    res = cli(str(path), "--baseline", str(path), "--rule", "rougeL:-1%", "--rule", RULE)
    assert res.exit_code == 1
    assert "`rougeL:-1%` (cli) | lora |" in res.stdout  # the run against itself: unchanged
    assert len(fail_lines(res.stdout)) == 1


def test_a_cross_run_rule_without_baseline_is_bad_input(tmp_path: Path):
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.0})
    res = cli(str(path), "--rule", "general/perplexity:+5%")
    assert res.exit_code == 2 and "--baseline" in res.stderr and "vs-zero-shot" in res.stderr
    assert "Traceback" not in res.output and res.stdout == ""


def test_no_adapter_arm_is_bad_input(tmp_path: Path):
    path = make_run(tmp_path, arms={"baseline": (0.3, 2.5)},
                    forgetting={"general": {"baseline": 2.0}})
    res = cli(str(path), "--rule", RULE)
    assert res.exit_code == 2 and "no adapter arm" in res.stderr


def test_rule_objects_carry_the_flag():
    r = gaterules.parse_rule("general/perplexity:+5%:sig:vs-zero-shot", source="suite")
    assert (r.metric, r.limit, r.relative, r.require_sig, r.vs_zero_shot) == (
        "general/perplexity", 0.05, True, True, True)
    assert not gaterules.parse_rule("loss:+0.05").vs_zero_shot
    for bad in ("loss:+0.05:vs-zero-shot:vs-zero-shot", "loss:+0.05:vs-base"):
        with pytest.raises(InputError, match="bad gate rule"):
            gaterules.parse_rule(bad)
    # a CLI rule replaces only the suite rule of the same metric and kind
    rec = {"config": {"gate": {"rules": ["loss:+0.05", "loss:+0.1:vs-zero-shot"]}}}
    rules = gate.gate_rules(rec, ["loss:+0.2:vs-zero-shot"])
    assert [(r.text, r.source) for r in rules] == [("loss:+0.05", "suite"),
                                                   ("loss:+0.2:vs-zero-shot", "cli")]


def test_validate_accepts_the_rule_in_a_suite(tmp_path: Path):
    from harness.suite import suitefile

    raw = {"name": "toy", "model": {"name_or_path": "toy/model"},
           "data": {"path": "x.jsonl", "prompt_template": "{{ q }}",
                    "response_template": "{{ a }}"},
           "gate": {"rules": [RULE]}}
    suite = suitefile.validate_suite(raw, path=tmp_path / "toy.toml")
    assert suite.gate.rules == [RULE]
    raw["gate"] = {"rules": ["loss:+0.05:vs-base"]}
    with pytest.raises(Exception, match="unknown flag"):
        suitefile.validate_suite(raw, path=tmp_path / "toy.toml")


def test_the_record_is_not_touched(tmp_path: Path):
    path = run_with(tmp_path, {"baseline": 2.0, "lora": 2.0, "qlora": 2.5})
    before = (path / RUN_FILE).read_bytes()
    cli(str(path), "--rule", RULE)
    assert (path / RUN_FILE).read_bytes() == before
