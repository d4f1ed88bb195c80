"""harness gate: rule parsing, every exit code through the CLI, suite rules, significance,
device and version warnings, $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.errors import InputError, RecordError
from harness.metrics import ROUGE_KEYS
from harness.rundir import results
from harness.rundir.record import load_run
from harness.rundir.results import RUN_FILE
from harness.suite import gaterules
from harness.views import gate

from .factories import arm_metrics, make_run


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never append to a real GitHub step summary when the suite itself runs in Actions."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture()
def base(tmp_path: Path) -> Path:
    return make_run(tmp_path / "baselines", n=60)


def derive(baseline: Path, out: Path, *, rouge_factor: float = 1.0, noise: float = 0.0,
           nll_add: float = 0.0, device: str | None = None, env: dict[str, Any] | None = None,
           config: dict[str, Any] | None = None, system: dict[str, float] | None = None,
           rename: dict[str, str] | None = None) -> Path:
    """A candidate run on the baseline's items: lora's per-item scores moved in a known way.

    The noise is centred, so the candidate's mean rouge is exactly rouge_factor x the
    baseline's while its spread (and so the CI) grows with ``noise``.
    """
    src = load_run(baseline)
    rec = json.loads(json.dumps(src.record))
    rows = [dict(r) for r in src.predictions]
    lora = [r for r in rows if r["arm"] == "lora"]
    e = np.random.default_rng(0).normal(0, 1, len(lora))
    e = noise * (e - e.mean())
    for r, d in zip(lora, e, strict=True):
        for k in ROUGE_KEYS:
            r[k] = r[k] * rouge_factor + d
        r["nll_sum"] += nll_add * r["n_tokens"]
        r["loss"] = r["nll_sum"] / r["n_tokens"]
    rec["arms"]["lora"]["metrics"] = arm_metrics(lora, **(system or {}))
    rec["env"].update(env or {}, **({"device": device} if device else {}))
    rec["config"].update(config or {})
    for old, new in (rename or {}).items():
        rec["arms"][new] = rec["arms"].pop(old)
        for r in rows:
            r["arm"] = new if r["arm"] == old else r["arm"]
    return write_run(out, rec, rows)


def write_run(out: Path, rec: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    run = results.create_run_dir(out, rec["suite"])
    rec["run_id"] = run.final.name
    run.write_jsonl(results.PREDICTIONS_FILE, rows)
    run.write_json(results.RUN_FILE, rec)
    return run.finalize()


def cli(*args: str) -> Any:
    from harness.cli import app

    return CliRunner().invoke(app, ["gate", *args])


def outcome(cand: Path, base: Path, *rules: str) -> gate.GateOutcome:
    return gate.run_gate(load_run(cand), load_run(base), cli_rules=list(rules))


# ---------------------------------------------------------------- rules


def test_rules_parse_into_small_objects():
    r = gaterules.parse_rule("rougeL:-1%")
    assert (r.metric, r.limit, r.relative, r.require_sig, r.source) == (
        "rougeL", 0.01, True, False, "cli")
    assert gaterules.parse_rule("loss:+0.05") == gaterules.Rule("loss:+0.05", "loss", 0.05,
                                                                False, False)
    assert gaterules.parse_rule("perplexity:2%:sig", source="suite").require_sig
    assert gaterules.parse_rule("perplexity:2%").allowed() == "+2%"  # unsigned: the worse way
    assert gaterules.parse_rule("rougeL:1%").allowed() == "-1%"


@pytest.mark.parametrize(("text", "why"), [
    ("rougeL", "expected METRIC"), ("rougeL:-x%", "expected METRIC"),
    ("rougeL:-1%:strict", "expected METRIC"), ("bogus:-1%", "unknown metric 'bogus'"),
    ("rougeL:+1%", "write rougeL:-1%"), ("perplexity:-2%:sig", "write perplexity:+2%:sig"),
    ("peak_memory_bytes:+5%:sig", "one number per arm"),
])
def test_malformed_rules_are_refused_by_name(text: str, why: str):
    with pytest.raises(InputError, match="bad gate rule") as e:
        gaterules.parse_rule(text)
    assert repr(text) in str(e.value) and why in str(e.value)


def test_suite_rules_are_used_and_cli_rules_override_them_per_metric():
    rec = {"config": {"gate": {"rules": ["rougeL:-1%", "loss:+0.05"]}}}
    rules = gate.gate_rules(rec, ["rougeL:-5%"])
    assert [(r.text, r.source) for r in rules] == [("loss:+0.05", "suite"), ("rougeL:-5%", "cli")]
    assert gate.gate_rules({"config": {}}, ["loss:+1"])[0].text == "loss:+1"
    with pytest.raises(InputError, match="no gate rules"):
        gate.gate_rules({"config": {}}, [])
    with pytest.raises(InputError, match="list of strings"):
        gate.gate_rules({"config": {"gate": {"rules": "rougeL:-1%"}}}, [])


# ---------------------------------------------------------------- exit codes through the CLI


def test_exit_0_when_within_every_rule(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path, rouge_factor=0.995)  # -0.5 %, allowed -1 %
    res = cli(str(cand), "--baseline", str(base), "--rule", "rougeL:-1%", "--rule", "loss:+0.05")
    assert res.exit_code == 0, res.output
    assert "## harness gate: ✅ pass" in res.stdout and "`rougeL:-1%` (cli)" in res.stdout


def test_exit_1_on_a_regression_and_the_summary_is_appended(base: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    cand = derive(base, tmp_path, rouge_factor=0.97)  # -3 %
    res = cli(str(cand), "--baseline", str(base), "--rule", "rougeL:-1%", "--rule", "loss:+0.05")
    assert res.exit_code == 1
    text = summary.read_text()
    expected = outcome(cand, base, "rougeL:-1%", "loss:+0.05").markdown
    assert text == "# earlier step\n" + expected + "\n"
    assert "❌ FAIL (1 regression)" in text and "rougeL -3.00% is beyond the allowed -1%" in text


@pytest.mark.parametrize("rule", ["rougeL", "bogus:-1%", "rougeL:+1%"])
def test_exit_2_on_a_bad_rule(base: Path, tmp_path: Path, rule: str):
    res = cli(str(derive(base, tmp_path)), "--baseline", str(base), "--rule", rule)
    assert res.exit_code == 2 and repr(rule) in res.stderr


def test_exit_2_on_a_bad_path_or_a_different_eval_set(base: Path, tmp_path: Path):
    res = cli(str(tmp_path / "missing"), "--baseline", str(base), "--rule", "rougeL:-1%")
    assert res.exit_code == 2 and "not a run directory" in res.stderr
    other = make_run(tmp_path / "other", n=60, eval_fingerprint="fp-other")
    res = cli(str(other), "--baseline", str(base), "--rule", "rougeL:-1%")
    assert res.exit_code == 2 and "eval sets differ" in res.stderr
    with pytest.raises(RecordError, match="fp-other"):
        outcome(other, base, "rougeL:-1%")


def test_failed_candidate_exits_1_with_its_error(base: Path, tmp_path: Path):
    failed = make_run(tmp_path / "c", n=60, status="failed", error={"message": "NaN loss at 12"})
    res = cli(str(failed), "--baseline", str(base), "--rule", "rougeL:-1%")
    assert res.exit_code == 1 and "NaN loss at 12" in res.stdout and "FAIL" in res.stdout


def test_failed_baseline_is_a_record_error(base: Path, tmp_path: Path):
    failed = make_run(tmp_path / "b", n=60, status="failed", error={"message": "OOM"})
    res = cli(str(base), "--baseline", str(failed), "--rule", "rougeL:-1%")
    assert res.exit_code == 2 and "baseline run" in res.stderr and "OOM" in res.stderr


# ---------------------------------------------------------------- rules from the record


def test_suite_gate_rules_apply_and_cli_overrides_them(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path, rouge_factor=0.97, config={"gate": {"rules": ["rougeL:-1%"]}})
    res = cli(str(cand), "--baseline", str(base))
    assert res.exit_code == 1 and "`rougeL:-1%` (suite)" in res.stdout
    res = cli(str(cand), "--baseline", str(base), "--rule", "rougeL:-5%")
    assert res.exit_code == 0 and "(suite)" not in res.stdout


def test_no_rules_anywhere_is_bad_input(base: Path, tmp_path: Path):
    res = cli(str(derive(base, tmp_path)), "--baseline", str(base))
    assert res.exit_code == 2 and "no gate rules" in res.stderr


def test_absolute_and_relative_rules_on_lower_is_better_metrics(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path, nll_add=0.1)  # loss +0.1 nats, perplexity +~10.5 %
    assert outcome(cand, base, "loss:+0.05").exit_code == 1
    assert outcome(cand, base, "loss:+0.2").exit_code == 0
    assert outcome(cand, base, "perplexity:+2%").exit_code == 1
    assert outcome(cand, base, "perplexity:+11%").exit_code == 0
    better = derive(base, tmp_path, nll_add=-0.3)
    assert outcome(better, base, "loss:+0", "perplexity:+0%").exit_code == 0


# ---------------------------------------------------------------- significance


def test_sig_rule_warns_when_the_ci_reaches_the_margin(base: Path, tmp_path: Path):
    noisy = derive(base, tmp_path, rouge_factor=0.98, noise=0.15)  # -2 %, but a wide CI
    plain = outcome(noisy, base, "rougeL:-1%")
    assert plain.exit_code == 1
    sig = outcome(noisy, base, "rougeL:-1%:sig")
    assert sig.exit_code == 0 and sig.checks[0].status == "warn"
    assert any("not significant" in w for w in sig.warnings)
    assert "⚠️ warn" in sig.markdown


def test_sig_rule_fails_when_the_ci_excludes_the_margin(base: Path, tmp_path: Path):
    clean = derive(base, tmp_path, rouge_factor=0.95, noise=0.001)  # -5 %, tight CI
    res = outcome(clean, base, "rougeL:-1%:sig")
    assert res.exit_code == 1 and "excludes the margin" in res.checks[0].message
    row = res.checks[0].row
    assert row is not None and row["rel_ci_high"] < -0.01


# ---------------------------------------------------------------- environments and arms


def test_different_devices_skip_throughput_rules_with_a_message(base: Path, tmp_path: Path):
    slow = {"eval_tokens_per_s": 100.0}  # the baseline's toy record says 400
    other_device = derive(base, tmp_path, device="cuda:0 NVIDIA H100", system=slow)
    res = outcome(other_device, base, "eval_tokens_per_s:-5%", "rougeL:-1%")
    assert res.exit_code == 0
    assert [c.status for c in res.checks] == ["skip", "pass"]
    assert any("different devices" in w for w in res.warnings)
    assert "⏭️ skipped" in res.markdown


def test_speed_and_memory_rules_across_processes_say_not_comparable(base: Path, tmp_path: Path):
    """Two runs are two processes: a 4x slower candidate neither passes nor fails a throughput
    rule, it is skipped as not comparable (it used to fail: 400 -> 100 tok/s, -75%); a record
    whose arms share the baseline's process is still gated."""
    slow = {"eval_tokens_per_s": 100.0, "peak_memory_bytes": 9e9}  # the baseline: 400, 2e9
    cand = derive(base, tmp_path, system=slow)
    res = outcome(cand, base, "eval_tokens_per_s:-5%", "peak_memory_bytes:+5%", "rougeL:-1%")
    assert res.exit_code == 0
    assert [c.status for c in res.checks] == ["skip", "skip", "pass"]
    assert all("not comparable: they were measured by different processes" in c.message
               for c in res.checks[:2])
    assert res.markdown.count("⏭️ skipped: not comparable") == 2
    one = {"process": "p1", "cached": False, "device": "cpu", "memory": "eval_peak_rss"}
    rec = json.loads((cand / "run.json").read_text())
    base_rec = json.loads((base / "run.json").read_text())
    for r in (rec, base_rec):
        for arm in r["arms"].values():
            arm["measured"] = one
    (cand / "run.json").write_text(json.dumps(rec))
    (base / "run.json").write_text(json.dumps(base_rec))
    res = outcome(cand, base, "eval_tokens_per_s:-5%", "peak_memory_bytes:+5%")
    assert res.exit_code == 1 and [c.status for c in res.checks] == ["fail", "fail"]
    assert "eval_tokens_per_s -75.00% is beyond the allowed -5%" in res.checks[0].message
    base_rec["arms"]["lora"]["measured"] = {**one, "cached": True}  # read from the cache
    (base / "run.json").write_text(json.dumps(base_rec))
    res = outcome(cand, base, "eval_tokens_per_s:-5%")
    assert res.exit_code == 0 and "zero-shot cache" in res.checks[0].message


def test_arms_trained_in_different_precisions_warn(base: Path, tmp_path: Path):
    """train.precision = "auto" is bf16 on one machine and fp32 on another: the gate still
    runs its rules, and says the two trainings were different computations."""
    cand = derive(base, tmp_path)
    for path, precision in ((base, "fp32"), (cand, "bf16")):
        rec = json.loads((path / "run.json").read_text())
        rec["training"]["lora"]["precision"] = precision
        (path / "run.json").write_text(json.dumps(rec))
    res = outcome(cand, base, "rougeL:-1%")
    assert res.exit_code == 0
    assert "arms trained in different precisions (candidate vs baseline): lora bf16 vs fp32" \
        in res.warnings
    same = outcome(base, base, "rougeL:-1%")
    assert not any("precisions" in w for w in same.warnings)


def test_library_version_differences_only_warn(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path, env={"transformers": "4.57.0"})
    res = outcome(cand, base, "rougeL:-1%")
    assert res.exit_code == 0
    assert any("transformers 4.57.0 vs 5.0.0" in w for w in res.warnings)
    assert "library versions differ" in res.markdown


def test_arms_fall_back_to_the_first_adapter_when_names_differ(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path, rouge_factor=0.97, rename={"lora": "qlora"})
    res = outcome(cand, base, "rougeL:-1%")
    assert res.exit_code == 1
    assert (res.checks[0].arm, res.checks[0].baseline_arm) == ("qlora", "lora")
    assert any("gating qlora against lora" in w for w in res.warnings)


def test_failed_candidate_arm_fails_the_gate(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path)
    rec = json.loads((cand / RUN_FILE).read_text())
    rec["arms"]["lora"]["status"] = "failed"
    (cand / RUN_FILE).write_text(json.dumps(rec))
    res = outcome(cand, base, "rougeL:-1%")
    assert res.exit_code == 1 and "did not succeed" in res.markdown


def test_fallback_skips_zero_shot_template_arms(tmp_path: Path):
    arms = {"baseline": (0.3, 2.5), "baseline@short": (0.3, 2.5), "lora": (0.45, 1.8)}
    base = make_run(tmp_path / "b", n=30, arms=arms)
    cand = derive(base, tmp_path, rename={"lora": "qlora"})
    for path in (base, cand):
        rec = json.loads((path / RUN_FILE).read_text())
        rec["arms"]["baseline@short"]["adapter"] = None
        (path / RUN_FILE).write_text(json.dumps(rec))
    res = outcome(cand, base, "rougeL:-1%")
    assert [(c.arm, c.baseline_arm) for c in res.checks] == [("qlora", "lora")]


def test_nan_candidate_fails_and_an_unrecorded_metric_is_bad_input(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path)
    rec = json.loads((cand / RUN_FILE).read_text())
    rec["arms"]["lora"]["metrics"]["loss"] = float("nan")  # json writes NaN; a diverged run
    del rec["arms"]["lora"]["metrics"]["gen_tokens_per_s"]
    (cand / RUN_FILE).write_text(json.dumps(rec))
    res = outcome(cand, base, "loss:+0.05")
    assert res.exit_code == 1 and "candidate loss is nan" in res.markdown
    with pytest.raises(InputError, match="gen_tokens_per_s is not recorded"):
        outcome(cand, base, "gen_tokens_per_s:-5%")


def test_a_metric_stored_null_as_not_finite_fails_its_rule(base: Path, tmp_path: Path):
    """Records store a non-finite value as null and name it in the arm's ``non_finite``."""
    cand = derive(base, tmp_path)
    rec = json.loads((cand / RUN_FILE).read_text())
    rec["arms"]["lora"]["metrics"]["eval_tokens_per_s"] = None
    rec["arms"]["lora"]["non_finite"] = {"eval_tokens_per_s": "inf"}
    (cand / RUN_FILE).write_text(json.dumps(rec))
    res = outcome(cand, base, "eval_tokens_per_s:-50%")
    assert res.exit_code == 1 and "candidate eval_tokens_per_s is inf" in res.markdown


def test_an_adapter_arm_that_failed_before_saving_still_fails_the_gate(base: Path, tmp_path: Path):
    cand = derive(base, tmp_path)
    rec = json.loads((cand / RUN_FILE).read_text())
    rec["arms"]["lora"].update(status="failed", adapter=None, metrics={})
    (cand / RUN_FILE).write_text(json.dumps(rec))
    res = outcome(cand, base, "rougeL:-1%")
    assert res.exit_code == 1 and res.checks[0].status == "fail"
