"""CI regression gate: a candidate run against a baseline run, under threshold rules. No torch.

Rules (pytest-benchmark ``--benchmark-compare-fail`` style; parsed by
`harness.suite.gaterules`), each the largest allowed change in the metric's *worse* direction:

- ``rougeL:-1%``      rougeL may not drop more than 1 % relative to the baseline
- ``perplexity:+2%``  perplexity may not rise more than 2 %
- ``loss:+0.05``      loss may not rise more than 0.05 (absolute, metric units)
- ``rougeL:1%``       no sign: the metric's worse direction is implied
- ``rougeL:-1%:sig``  fail only when the paired CI of the change lies wholly beyond the margin;
  a point estimate beyond it whose CI still reaches the margin only warns.
- ``general/perplexity:+5%:vs-zero-shot``  within the candidate run: each adapter arm against
  that run's own zero-shot arm (a forgetting check needs no baseline run); combines with
  ``:sig``. Without ``--baseline`` only these rules are applied: a suite's other rules are
  skipped with a warning, a CLI one is bad input.

A sign pointing the *better* way (``perplexity:-2%``) would fail on improvements; it is refused
as a mistake. Rules come from the suite's ``[gate]`` table recorded in the candidate
(``config.gate.rules``) and from ``--rule``; a CLI rule replaces the suite's rules for its metric.

Which arms (rules without ``:vs-zero-shot``): each adapter arm (an arm with an adapter path) of
the candidate against the baseline run's arm of the same name; if no name matches, the
candidate's first adapter arm against the baseline's first. Runs with no adapter arms (eval-only
suites) gate their zero-shot ``baseline`` arms. Values are paired over items by id (the same
``stats.compare_arms`` as compare) and a gate across different eval sets is refused: a threshold
on different items measures the items, not the model.

Outcomes: exit 0 pass; 1 a rule failed or the candidate run failed; bad rules, unknown metrics,
a failed baseline or differing eval sets raise InputError / RecordError (exit 2). Different
devices or library versions only warn. Throughput and memory rules apply only to arms whose
speed and memory are comparable (measured.comparable: the same process, so never across two
runs); otherwise they are skipped with "not comparable" and the reason, neither pass nor fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness import metrics as M
from harness.errors import InputError, RecordError
from harness.rundir.record import LoadedRun, Status
from harness.stats import measured
from harness.stats import paired as stats
from harness.suite import arms as A
from harness.suite import config
from harness.suite.gaterules import VS_ZERO_SHOT, Rule, parse_rule
from harness.views import formatting as F

LIBRARIES = ("torch", "transformers", "peft")
# Float slack when comparing a change with its limit: rougeL 0.5 -> 0.495 is exactly -1 %
# but computes as -1.0000000000000009 %.
EPS = 1e-12


@dataclass(frozen=True)
class Check:
    """One rule applied to one candidate arm."""

    rule: Rule
    arm: str
    baseline_arm: str
    status: str  # "pass" | "fail" | "warn" | "skip"
    message: str
    row: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class GateOutcome:
    exit_code: int  # 0 pass, 1 regression or failed candidate
    markdown: str
    warnings: list[str]
    checks: tuple[Check, ...] = ()


# ---------------------------------------------------------------- one rule on one arm


def describe_change(rule: Rule, v: float | None) -> str:
    """A change in the rule's units: ``-3.00%`` (two decimals: a change just past a 1 %
    margin must not read as ``-1.0%``) or ``+0.1000`` in the metric's own units."""
    return F.percent(v, digits=2) if rule.relative else F.metric(rule.metric, v, signed=True)


def describe_ci(rule: Rule, row: Mapping[str, Any]) -> str:
    """``[lo, hi]`` of the change; a dash when the row has no CI."""
    _, lo, hi = rule.keys
    return F.interval(row.get(lo), row.get(hi), lambda v: describe_change(rule, v))


def check(rule: Rule, row: Mapping[str, Any] | None,
          values: tuple[Mapping[str, Any], Mapping[str, Any]], arm: str, baseline_arm: str,
          not_comparable: str | None = None) -> Check:
    """``rule`` on one arm: its comparison row (None when the metric was not compared)
    and both arms' recorded metrics (candidate, baseline). ``not_comparable``: why the
    two arms' speed and memory cannot be compared (measured.reason), None if they can."""
    def result(status: str, message: str) -> Check:
        return Check(rule, arm, baseline_arm, status, message, row)

    if row is None:
        return _unmeasured(rule, values, arm, baseline_arm)
    if rule.metric in M.DEVICE_BOUND and not_comparable:
        return result("skip", f"not comparable: {not_comparable}")
    worse = rule.worsening(row)
    if worse is None:
        return result("skip", "the baseline value is 0, so a relative change is "
                      "undefined; use an absolute rule")
    if worse <= rule.limit + EPS:
        return result("pass", "within the limit")
    change = describe_change(rule, row[rule.keys[0]])
    beyond = f"{rule.metric} {change} is beyond the allowed {rule.allowed()}"
    if not rule.require_sig:
        return result("fail", beyond)
    status, message = _significance(rule, row, beyond)
    return result(status, message)


def _significance(rule: Rule, row: Mapping[str, Any], beyond: str) -> tuple[str, str]:
    """':sig' rules fail only when even the CI's most favourable end is beyond the margin."""
    _, lo_key, hi_key = rule.keys
    lo, hi = row.get(lo_key), row.get(hi_key)
    if lo is None or hi is None:
        return "warn", f"{beyond}, but no CI is available to confirm it"
    best_end = lo if M.lower_is_better(rule.metric) else -hi  # least worsening in the CI
    ci = describe_ci(rule, row)
    if best_end > rule.limit + EPS:
        return "fail", f"{beyond} and the CI {ci} excludes the margin"
    return "warn", f"{beyond}, but the CI {ci} reaches the margin (not significant)"


def _unmeasured(rule: Rule, values: tuple[Mapping[str, Any], Mapping[str, Any]], arm: str,
                baseline_arm: str) -> Check:
    """No comparison row: a NaN / inf candidate value is a regression, a missing one bad
    input."""
    cand, base = (v.get(rule.metric) for v in values)
    if isinstance(base, float) and not math.isfinite(base):
        raise RecordError(f"baseline arm {baseline_arm}: {rule.metric} is {base}; pick "
                          "another baseline")
    if isinstance(cand, float) and not math.isfinite(cand) and base is not None:
        return Check(rule, arm, baseline_arm, "fail", f"candidate {rule.metric} is {cand}")
    raise InputError(f"gate rule {rule.text!r}: {rule.metric} is not recorded for both "
                     f"{arm} (candidate) and {baseline_arm} (baseline)")


# ---------------------------------------------------------------- rules


def suite_rules(record: Mapping[str, Any]) -> list[str]:
    """Rule strings from the recorded suite's ``[gate]`` table (none when absent)."""
    gate = (record.get("config") or {}).get("gate")
    if gate is None:
        return []
    rules = gate.get("rules", []) if isinstance(gate, Mapping) else None
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise InputError(f"config.gate.rules of {F.run_label(record)} must be a list of "
                         f"strings like 'rougeL:-1%', got {rules!r}")
    return rules


def gate_rules(record: Mapping[str, Any], cli_rules: Sequence[str]) -> list[Rule]:
    """Suite rules, with every metric named by a CLI rule taken from the CLI instead (a
    ``:vs-zero-shot`` rule replaces only the suite's ``:vs-zero-shot`` rule of its metric)."""
    cli = [parse_rule(r, source="cli") for r in cli_rules]
    suite = [parse_rule(r, source="suite") for r in suite_rules(record)]
    overridden = {(r.metric, r.vs_zero_shot) for r in cli}
    rules = [r for r in suite if (r.metric, r.vs_zero_shot) not in overridden] + cli
    if not rules:
        raise InputError("no gate rules: pass --rule (e.g. --rule rougeL:-1%) or add "
                         "[gate] rules = [...] to the suite")
    return list(dict.fromkeys(rules))  # drop exact duplicates, keep order


# ---------------------------------------------------------------- the gate


def run_gate(candidate: LoadedRun, baseline: LoadedRun | None, *,
             cli_rules: list[str], allow_noop: bool = False) -> GateOutcome:
    """Apply the rules to every candidate arm: against its baseline-run counterpart, and
    (``:vs-zero-shot`` rules) against the candidate run's own zero-shot arm. With no baseline
    run only the ``:vs-zero-shot`` rules apply. An adapter arm the run found to do nothing
    (``noop``) fails the gate whatever the rules say, unless ``allow_noop``."""
    rules = gate_rules(candidate.record, cli_rules)
    within = [r for r in rules if r.vs_zero_shot]
    across, notes = _across_rules(rules, baseline, within)
    if baseline is not None and baseline.record.get("status") != Status.SUCCESS:
        raise RecordError(f"baseline run {F.run_label(baseline)} did not succeed "
                          f"({F.failure(baseline.record)}); pick another baseline")
    if candidate.record.get("status") != Status.SUCCESS:
        return _failed_candidate(candidate, baseline)
    checks: list[Check] = []
    if across and baseline is not None:
        checks += _against_baseline_run(candidate, baseline, across, notes)
    checks += _against_zero_shot(candidate, within)
    noops = [] if allow_noop else noop_failures(candidate)
    code = 1 if noops or any(c.status == "fail" for c in checks) else 0
    md = render(candidate, baseline, checks, notes, code, noops)
    warnings = notes + [f"{c.rule.text} on arm {c.arm}: {c.message}" for c in checks
                        if c.status in ("warn", "skip")]
    return GateOutcome(code, md, warnings, tuple(checks))


def _across_rules(rules: list[Rule], baseline: LoadedRun | None, within: list[Rule]
                  ) -> tuple[list[Rule], list[str]]:
    """The rules that need a baseline run, and what is said about them when there is none:
    a suite's are skipped with a note, a CLI one (asked for by name) is bad input."""
    across = [r for r in rules if not r.vs_zero_shot]
    if baseline is not None:
        return across, []
    cli = [r for r in across if r.source == "cli"]
    if cli:
        raise InputError(f"gate rule {cli[0].text!r} compares with a baseline run: pass "
                         f"--baseline RUN, or write {cli[0].text}:{VS_ZERO_SHOT} to compare "
                         "each adapter arm with this run's zero-shot arm")
    if not within:
        raise InputError(f"no --baseline and no :{VS_ZERO_SHOT} rule: pass --baseline RUN, "
                         f"or a rule such as --rule general/perplexity:+5%:{VS_ZERO_SHOT}")
    return [], [f"suite rule {r.text} needs a baseline run and is not applied (no --baseline)"
                for r in across]


def _against_baseline_run(candidate: LoadedRun, baseline: LoadedRun, rules: list[Rule],
                          notes: list[str]) -> list[Check]:
    extra_sets = [s for s in dict.fromkeys(M.split(r.metric)[0] for r in rules) if s]
    stats.check_pairable(candidate.record, baseline.record, extra_sets)
    notes += env_warnings(candidate.record, baseline.record)
    checks: list[Check] = []
    for cand_arm, base_arm in arm_pairs(candidate, baseline, notes):
        checks += _check_arm(candidate, baseline, cand_arm, base_arm, rules)
    return checks


def _against_zero_shot(run: LoadedRun, rules: list[Rule]) -> list[Check]:
    """``:vs-zero-shot`` rules: each adapter arm against the same run's zero-shot arm, paired
    over the same items (the run's own comparison, recomputed from its rows)."""
    if not rules:
        return []
    arms = A.adapters(run.record.get("arms") or {})
    if not arms:
        raise RecordError(f"{F.run_label(run)} has no adapter arm to compare with its "
                          f"zero-shot arm (rule {rules[0].text})")
    if A.BASELINE not in (run.record.get("arms") or {}):
        raise RecordError(f"{F.run_label(run)} has no zero-shot arm ({A.BASELINE})")
    # a cached zero-shot arm's speed and memory come from another process: _check_arm skips
    # those rules with the reason (measured.reason)
    return [c for arm in arms for c in _check_arm(run, run, arm, A.BASELINE, rules)]


def noop_failures(run: LoadedRun) -> list[str]:
    """One line per adapter arm the run recorded as doing nothing (its ``noop`` reason)."""
    recorded = run.record.get("arms") or {}
    return [f"arm {name} does nothing: {recorded[name]['noop']} (--allow-noop accepts it)"
            for name in A.adapters(recorded)
            if isinstance(recorded[name], Mapping) and recorded[name].get("noop")]


def _failed_candidate(candidate: LoadedRun, baseline: LoadedRun | None) -> GateOutcome:
    msg = f"candidate run {F.run_label(candidate)} failed ({F.failure(candidate.record)})"
    against = F.run_label(baseline) if baseline is not None else "none (its own zero-shot arm)"
    md = (f"## harness gate: ❌ FAIL\n\n{F.md_cell(msg)}.\n\nBaseline: "
          f"{F.md_cell(against)}. No rules were evaluated.\n")
    return GateOutcome(1, md, [msg])


def _device(record: Mapping[str, Any]) -> Any:
    return (record.get("env") or {}).get("device")


def env_warnings(cand: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """Differences that make the comparison less clean without making it meaningless."""
    out = []
    if _device(cand) != _device(base):
        out.append(f"records come from different devices (candidate {_device(cand)}, baseline "
                   f"{_device(base)}): throughput and memory rules are skipped")
    env_c, env_b = cand.get("env") or {}, base.get("env") or {}
    diffs = [f"{lib} {env_c.get(lib)} vs {env_b.get(lib)}" for lib in LIBRARIES
             if env_c.get(lib) != env_b.get(lib)]
    if diffs:
        out.append("library versions differ (candidate vs baseline): " + ", ".join(diffs))
    precisions = _precision_diffs(cand.get("training") or {}, base.get("training") or {})
    if precisions:  # train.precision = "auto" resolves per machine: bf16 is another training
        out.append("arms trained in different precisions (candidate vs baseline): "
                   + ", ".join(precisions))
    return out


def _precision_diffs(cand: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """Same-named trained arms whose recorded training precision differs (records from
    before it was recorded say nothing)."""
    pairs = {arm: (cand[arm].get("precision"), base[arm].get("precision"))
             for arm in sorted(cand.keys() & base.keys())
             if isinstance(cand[arm], Mapping) and isinstance(base[arm], Mapping)}
    return [f"{arm} {c} vs {b}" for arm, (c, b) in pairs.items() if c and b and c != b]


def arm_pairs(candidate: LoadedRun, baseline: LoadedRun, warnings: list[str]
              ) -> list[tuple[str, str]]:
    """(candidate arm, baseline-run arm) pairs: same names, else the first adapter arms."""
    cand, base = (A.adapters(r.record.get("arms") or {}) for r in (candidate, baseline))
    if not cand and not base:
        return [(A.BASELINE, A.BASELINE)]
    if not cand or not base:
        which = "candidate" if not cand else "baseline"
        raise RecordError(f"cannot gate {F.run_label(candidate)} against "
                          f"{F.run_label(baseline)}: the {which} run has no adapter arm")
    pairs = [(a, a) for a in cand if a in base]
    if not pairs:
        warnings.append(f"no candidate arm has a namesake in the baseline run; gating "
                        f"{cand[0]} against {base[0]}")
        return [(cand[0], base[0])]
    warnings += [f"candidate arm {a} has no namesake in the baseline run and is not gated"
                 for a in cand if a not in base]
    return pairs


def _arm(run: LoadedRun, name: str) -> Mapping[str, Any]:
    return (run.record.get("arms") or {})[name]


def _check_arm(candidate: LoadedRun, baseline: LoadedRun, cand_arm: str, base_arm: str,
               rules: Sequence[Rule]) -> list[Check]:
    if _arm(baseline, base_arm).get("status", Status.SUCCESS) != Status.SUCCESS:
        raise RecordError(f"baseline run {F.run_label(baseline)}: arm {base_arm} did not "
                          "succeed")
    if _arm(candidate, cand_arm).get("status", Status.SUCCESS) != Status.SUCCESS:
        msg = f"candidate arm {cand_arm} did not succeed ({F.failure(_arm(candidate, cand_arm))})"
        return [Check(r, cand_arm, base_arm, "fail", msg) for r in rules]
    rows = _comparison_rows(candidate, baseline, cand_arm, base_arm, rules)
    values = (_values(_arm(candidate, cand_arm)), _values(_arm(baseline, base_arm)))
    why = measured.reason(measured.of(candidate.record, cand_arm),
                          measured.of(baseline.record, base_arm))
    return [check(r, rows.get(r.metric), values, cand_arm, base_arm, why) for r in rules]


def _values(arm: Mapping[str, Any]) -> dict[str, Any]:
    """An arm's metrics, a value stored as null because it was not finite read back as what
    it was (``non_finite``: {"gen_tokens_per_s": "inf"}), so a rule on it fails as
    ``candidate gen_tokens_per_s is inf`` instead of calling the metric unrecorded."""
    bad = arm.get("non_finite")
    if not isinstance(bad, Mapping):
        bad = {}
    return {**(arm.get("metrics") or {}),
            **{k: float(v) for k, v in bad.items() if v in ("nan", "inf", "-inf")}}


def _comparison_rows(candidate: LoadedRun, baseline: LoadedRun, cand_arm: str, base_arm: str,
                     rules: Sequence[Rule]) -> dict[str, dict[str, Any]]:
    settings = config.StatsSettings.from_record(candidate.record.get("stats"))
    needed = list(dict.fromkeys(r.metric for r in rules))
    base_items, cand_items = baseline.items(base_arm), candidate.items(cand_arm)
    if not (base_items and cand_items):  # no predictions.jsonl: point values only
        if any(r.require_sig for r in rules):
            raise RecordError(f"':sig' rules need per-item predictions; "
                              f"{F.run_label(candidate)} or {F.run_label(baseline)} has none "
                              f"for arm {cand_arm}/{base_arm}")
        base_items, cand_items = [], []
    rows = stats.compare_arms(
        base_items, cand_items,
        _arm(baseline, base_arm).get("metrics") or {},
        _arm(candidate, cand_arm).get("metrics") or {},
        baseline=base_arm, candidate=cand_arm, metrics=needed,
        n_resamples=settings.n_resamples, seed=settings.seed, alpha=settings.alpha,
    )
    return {r["metric"]: r for r in rows}


# ---------------------------------------------------------------- summary


RESULT = {"pass": "✅ pass", "fail": "❌ FAIL", "warn": "⚠️ warn", "skip": "⏭️ skipped"}


def render(candidate: LoadedRun, baseline: LoadedRun | None, checks: Sequence[Check],
           warnings: Sequence[str], code: int, noops: Sequence[str] = ()) -> str:
    """The Markdown summary printed by the CLI and appended to $GITHUB_STEP_SUMMARY. Values
    from the records (arm names, paths, messages) go through ``md_cell``: no raw HTML."""
    failed = sum(c.status == "fail" for c in checks)
    why = [f"{failed} regression{'s' * (failed != 1)}"] if failed else []
    why += [f"{len(noops)} adapter{'s' * (len(noops) != 1)} that do{'es' * (len(noops) == 1)} "
            "nothing"] if noops else []
    verdict = "✅ pass" if code == 0 else f"❌ FAIL ({', '.join(why)})"
    against = (f"vs baseline {F.run_label(baseline)}" if baseline is not None
               else "vs its own zero-shot arm")
    lines = [f"## harness gate: {verdict}", "",
             F.md_cell(f"Candidate {F.run_label(candidate)} {against}, eval set "
                       f"{stats.eval_fingerprint(candidate.record)}."), ""]
    lines += [_md_row(["Rule", "Arm", "Baseline", "Candidate", "Change", "CI of change",
                       "Result"]), "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    lines += [_check_line(c) for c in checks]
    lines += _bullets("Adapters that do nothing", noops)
    lines += _bullets("Warnings", warnings)
    return "\n".join(lines) + "\n"


def _check_line(c: Check) -> str:
    r, row = c.rule, c.row or {}
    arm = c.arm if c.arm == c.baseline_arm else f"{c.arm} vs {c.baseline_arm}"
    if r.vs_zero_shot:
        arm = f"{c.arm} vs zero-shot (same run)"
    return _md_row([
        f"`{r.text}` ({r.source})", arm,  # a parsed rule has no HTML or pipes
        F.metric(r.metric, row.get("baseline_value")),
        F.metric(r.metric, row.get("candidate_value")),
        describe_change(r, row.get(r.keys[0])), describe_ci(r, row),
        f"{RESULT[c.status]}: {c.message}" if c.status != "pass" else RESULT["pass"]])


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(F.md_cell(s) for s in cells) + " |"


def _bullets(title: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    return ["", f"{title}:"] + [f"- {F.md_cell(w)}" for w in items] if items else []
