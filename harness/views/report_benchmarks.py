"""The report's Benchmarks section: one table per multiple-choice set, its accuracy per arm in
percent and each adapter's change against the zero-shot baseline in percentage points, with
the paired CI and the comparison row's own p (exact McNemar for right/wrong metrics)."""

from __future__ import annotations

from typing import Any

from harness import metrics as M
from harness.suite import arms as A
from harness.views import formatting as F
from harness.views.report_data import ReportData, as_dict, label
from harness.views.report_headline import change_text, p_name, significant, value_text

# config.eval.sets.<set>.task of a benchmark set: the suite's own multiple-choice data, or an
# lm-evaluation-harness task (whose right/wrong metrics the table shows).
BENCHMARK_TASKS = ("multiple_choice", "lm_eval")


def benchmark_tables(d: ReportData) -> list[dict[str, Any]]:
    """One table per multiple-choice set that some arm has a right/wrong metric of, in the
    suite's set order."""
    sets = as_dict(as_dict(as_dict(d.record.get("config")).get("eval")).get("sets"))
    data = as_dict(as_dict(d.record.get("data")).get("eval_sets"))
    tables = []
    for name, spec in sets.items():
        keys = _keys(d, name) if as_dict(spec).get("task") in BENCHMARK_TASKS else []
        if keys:
            info = as_dict(data.get(name))
            tables.append({"set": name, "n_items": F.count(info.get("n_items")),
                           "forgetting": bool(info.get("forgetting")),
                           "rows": [r for k in keys for r in _rows(d, k)]})
    return tables


def _keys(d: ReportData, eval_set: str) -> list[str]:
    """The set's right/wrong metrics any arm has, in the metric table's order."""
    have = {k for a in d.arm_records.values() for k in as_dict(as_dict(a).get("metrics"))}
    return [M.keyed(eval_set, k) for k in M.ALL_KEYS
            if k in M.BINARY_KEYS and M.keyed(eval_set, k) in have]


def _rows(d: ReportData, key: str) -> list[dict[str, Any]]:
    """Every arm with the metric: the zero-shot baseline as the reference, each other arm with
    its comparison against it (where the record has one)."""
    versus = {c.get("candidate"): c for c in d.record.get("comparisons") or []
              if isinstance(c, dict) and c.get("metric") == key
              and c.get("baseline") == A.BASELINE}
    rows = []
    for arm in d.arms:
        value = as_dict(as_dict(d.arm_records.get(arm)).get("metrics")).get(key)
        if F.number(value) is not None:
            rows.append(_row(key, arm, value, versus.get(arm), d.alpha))
    return rows


def _row(key: str, arm: str, value: Any, c: dict[str, Any] | None,
         alpha: float) -> dict[str, Any]:
    shown = value_text(key, value)
    row: dict[str, Any] = {
        "metric": label(M.base(key)), "key": key, "arm": arm, "label": A.label(arm),
        "value": shown, "change": "", "ci": "", "p": "", "test": "", "p_holm": "",
        "sig": None, "tone": ""}
    if c is None:
        return row
    diff, sig = F.number(c.get("abs_diff")), significant(c, alpha)
    change = change_text(key, diff)
    ci = F.interval(c.get("ci_low"), c.get("ci_high"), lambda v: change_text(key, v, False))
    p, name = F.p_value(c.get("p_value"), alpha), p_name(c)
    return {**row, "change": change, "ci": ci, "p": p, "test": name.removesuffix(" p"),
            "p_holm": F.p_value(c.get("p_value_holm"), alpha), "sig": sig,
            "tone": F.tone(key, diff, sig)}

