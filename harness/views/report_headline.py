"""The report's headline: each comparison with the zero-shot baseline, the cards of the
best arm per main metric and of forgetting, the leaderboard of several arms, and the
across-seeds rows of recipes trained with several seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness import metrics as M
from harness.metrics import lower_is_better
from harness.stats import measured
from harness.stats.paired import MCNEMAR
from harness.suite import arms as A
from harness.views import formatting as F
from harness.views.formatting import DASH
from harness.views.report_data import ReportData, as_dict, label, metric_column

CARD_METRICS = ("rougeL", "rouge1", "perplexity", "loss")
# What a forgetting set's card, leaderboard column and check row show, the first it has:
# what fine-tuning cost in accuracy says more than its change in perplexity.
FORGETTING_METRICS = ("acc", "perplexity", "loss")


# ------------------------------------------------------------------ headline


def headline_tables(d: ReportData) -> list[dict[str, Any]]:
    """One table per (candidate, baseline) pair, metrics in the canonical order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in _comparable_rows(d.record):
        if c.get("metric"):
            key = (str(c.get("candidate", "?")), str(c.get("baseline", A.BASELINE)))
            groups.setdefault(key, []).append(c)
    return [{"candidate": cand, "baseline": base,
             "baseline_label": A.label(base),
             "rows": [_headline_row(c, d.alpha) for c in by_metric(cs)]}
            for (cand, base), cs in groups.items()]


def by_metric(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = [c for c in rows if M.is_known(str(c["metric"]))]
    return (sorted(known, key=lambda c: M.sort_key(str(c["metric"])))
            + [c for c in rows if not M.is_known(str(c["metric"]))])


def forgetting_rows(d: ReportData) -> list[dict[str, Any]]:
    """What fine-tuning cost on each set marked ``forgetting``: its accuracy (else
    perplexity, else loss) per adapter arm against the zero-shot baseline, with the paired
    CI."""
    sets = as_dict(as_dict(d.record.get("data")).get("eval_sets"))
    rows = {(c.get("candidate"), c.get("metric")): c
            for c in d.record.get("comparisons") or []
            if isinstance(c, dict) and c.get("baseline") == A.BASELINE}
    out = []
    for name, spec in sets.items():
        if not as_dict(spec).get("forgetting"):
            continue
        for arm in A.adapters(d.arm_records):
            c = next((rows[arm, M.keyed(name, k)] for k in FORGETTING_METRICS
                      if (arm, M.keyed(name, k)) in rows), None)
            if c is not None:
                out.append({"set": name, "arm": arm, "n_items": as_dict(spec).get("n_items"),
                            **_points_first(_headline_row(c, d.alpha)),
                            "metric": label(M.base(c["metric"]))})
    return out


def forgetting_change_label(rows: list[dict[str, Any]]) -> str:
    """The forgetting check's change column: relative, unless an accuracy row puts its
    change in points first."""
    return "Change" if any(r.get("binary") for r in rows) else "Rel. change"


def _points_first(row: dict[str, Any]) -> dict[str, Any]:
    """An accuracy's change in the forgetting check: in points, its relative change after it
    (a -25% relative change of 40% is -10 points)."""
    if not row.get("binary"):
        return row
    rel = "" if row["rel"] == DASH else f" ({row['rel']} relative)"
    return {**row, "rel": row["abs"] + rel, "rel_ci": ""}


def seed_rows(d: ReportData) -> list[dict[str, Any]]:
    """Recipes trained with several seeds against the baseline (seedstats rows)."""
    rows = [c for c in d.record.get("seed_comparisons") or [] if isinstance(c, dict)]
    return [{"recipe": c.get("recipe"), "n_seeds": c.get("n_seeds"),
             "seed_sd": F.metric(str(c["metric"]), c.get("seed_sd")),
             **_headline_row({**c, "p_value": None}, d.alpha),
             "sig": bool(c.get("significant")),
             "tone": F.tone(str(c["metric"]), c.get("abs_diff"), bool(c.get("significant")))}
            for c in by_metric(rows)]


def _headline_row(c: dict[str, Any], alpha: float) -> dict[str, Any]:
    m = str(c["metric"])
    diff, sig = F.number(c.get("abs_diff")), significant(c, alpha)
    return {
        "metric": label(m), "key": m, "lower": lower_is_better(m),
        "baseline": value_text(m, c.get("baseline_value")),
        "candidate": value_text(m, c.get("candidate_value")),
        "candidate_value": F.number(c.get("candidate_value")),
        "abs": change_text(m, diff), "rel": F.percent(c.get("rel_gain")),
        "ci": F.interval(c.get("ci_low"), c.get("ci_high"), lambda v: change_text(m, v, False)),
        "p_name": p_name(c), "binary": M.is_binary(m),
        "rel_ci": F.interval(c.get("rel_ci_low"), c.get("rel_ci_high"), F.percent, missing=""),
        "p": F.p_value(c.get("p_value_holm"), alpha), "p_raw": F.p_value(c.get("p_value"), alpha),
        "sig": sig, "tone": F.tone(m, diff, sig),
    }


def value_text(metric: str, v: Any) -> str:
    """An accuracy (a share of items right) in percent, any other metric by its decimals."""
    return F.percent(v, signed=False) if M.is_binary(metric) else F.metric(metric, v)


def change_text(metric: str, diff: Any, unit: bool = True) -> str:
    """A change in accuracy in percentage points, any other change by the metric's decimals."""
    return F.points(diff, unit) if M.is_binary(metric) else F.metric(metric, diff, True)


def p_name(c: dict[str, Any]) -> str:
    """What the row's unadjusted p is: ``McNemar p`` (exact, on the discordant items) for a
    right/wrong metric, plain ``p`` (a permutation p) for the others."""
    return "McNemar p" if c.get("test") == MCNEMAR else "p"


def _p(c: dict[str, Any]) -> float | None:
    holm = F.number(c.get("p_value_holm"))
    return holm if holm is not None else F.number(c.get("p_value"))


def significant(c: dict[str, Any], alpha: float) -> bool | None:
    """The record's verdict, else p (Holm when present) <= alpha; None for point-only rows
    (throughput, memory), which stats marks ``significant: false`` without any test."""
    p = _p(c)
    if p is None:
        return None
    return bool(c["significant"]) if isinstance(c.get("significant"), bool) else p <= alpha


@dataclass(frozen=True)
class _Entry:
    """One contender for the headline: an arm against zero-shot, or a recipe trained with
    several seeds, whose rows are then the across-seeds mean and interval (seedstats), never
    one seed alone: a seed's own paired test measures that adapter, not the recipe."""

    name: str
    label: str
    rows: dict[str, dict[str, Any]]  # metric key -> display row (_headline_row)
    seeds: int = 0


def contenders(d: ReportData, headline: list[dict[str, Any]]) -> list[_Entry]:
    """Arms compared with the zero-shot baseline, in arm order; a recipe's seed arms give way
    to one entry for the recipe where the record has its across-seeds rows."""
    recipes: dict[str, list[dict[str, Any]]] = {}
    for r in seed_rows(d):
        recipes.setdefault(str(r["recipe"]), []).append(r)
    out: dict[str, _Entry] = {}
    for g in headline:
        if g["baseline"] != A.BASELINE:
            continue
        recipe, seed = A.recipe_of(g["candidate"])
        if seed is not None and recipe in recipes:
            rows = recipes[recipe]
            out.setdefault(recipe, _Entry(recipe, f"{recipe} · {rows[0]['n_seeds']} seeds",
                                          {r["key"]: r for r in rows}, int(rows[0]["n_seeds"])))
        else:
            out[g["candidate"]] = _Entry(g["candidate"], g["candidate"],
                                         {r["key"]: r for r in g["rows"]})
    return list(out.values())


def _best_entry(entries: list[_Entry], metric: str) -> _Entry | None:
    """The entry with the best point value of ``metric`` in its own direction (first on a
    tie); None when no entry has it."""
    have = [e for e in entries if F.number(e.rows.get(metric, {}).get("candidate_value"))
            is not None]
    if not have:
        return None
    sign = -1.0 if lower_is_better(metric) else 1.0
    return max(have, key=lambda e: sign * e.rows[metric]["candidate_value"])


def _main_metrics(entries: list[_Entry]) -> list[str]:
    return [k for k in CARD_METRICS if any(k in e.rows for e in entries)]


def forgetting_sets(d: ReportData) -> list[str]:
    sets = as_dict(as_dict(d.record.get("data")).get("eval_sets"))
    return [name for name, spec in sets.items() if as_dict(spec).get("forgetting")]


def _forgetting_metric(entries: list[_Entry], eval_set: str) -> str | None:
    """A forgetting set's headline number: its accuracy (a multiple-choice set), else its
    perplexity, else its loss."""
    keys = tuple(M.keyed(eval_set, k) for k in FORGETTING_METRICS)
    return next((k for k in keys if any(k in e.rows for e in entries)), None)


def headline_cards(entries: list[_Entry], forgetting: list[str]) -> list[dict[str, Any]]:
    """Each main metric of the arm (or seeded recipe) best at it, then what the leading arm
    (best at the first main metric) cost on each forgetting set: red when significantly
    worse."""
    main = _main_metrics(entries)
    cards = []
    for key in main:
        best = _best_entry(entries, key)
        cards += [_card(best, key)] if best else []
    lead = (_best_entry(entries, main[0]) if main else None) or next(iter(entries), None)
    if lead is None:
        return cards
    for eval_set in forgetting:
        metric = _forgetting_metric([lead], eval_set)
        cards += [_forgetting_card(lead, metric, eval_set)] if metric else []
        cards += _worst_forgetting(entries, lead, eval_set)
    return cards


def _worst_forgetting(entries: list[_Entry], lead: _Entry, eval_set: str
                      ) -> list[dict[str, Any]]:
    """Another arm's forgetting card, when it is the worst of all and significantly worse: a
    sweep's best cell may forget little while another cell forgot much."""
    metric = _forgetting_metric(entries, eval_set)
    have = [e for e in entries if metric in e.rows
            and F.number(e.rows[metric].get("candidate_value")) is not None] if metric else []
    if not metric or not have:
        return []
    worse = 1.0 if lower_is_better(metric) else -1.0
    worst = max(have, key=lambda e: worse * e.rows[metric]["candidate_value"])
    card = _forgetting_card(worst, metric, eval_set)
    return [card] if worst is not lead and card["alert"] else []


def _card(e: _Entry, key: str) -> dict[str, Any]:
    row = e.rows[key]
    # An accuracy's change reads in points alone: a relative % beside it reads as points too.
    rel = {"rel": DASH} if row.get("binary") else {}
    return {**row, **rel, "arm": e.label, "seeds": e.seeds, "forgetting": False,
            "alert": False, "verdict": _verdict(row)}


def _verdict(row: dict[str, Any]) -> str:
    """In words, for the cards: better / worse in the metric's own direction, and whether it
    is significant (across seeds for a seeded recipe)."""
    if row["sig"] is None or not row["tone"]:
        return ""
    way = "better" if row["tone"] == "good" else "worse"
    return f"significantly {way}" if row["sig"] else f"{way}, not significant"


def _forgetting_card(e: _Entry, key: str, eval_set: str) -> dict[str, Any]:
    card = _card(e, key)
    return {**card, "forgetting": True, "set": eval_set,
            "alert": card["tone"] == "bad" and card["sig"] is True}


def leaderboard(d: ReportData, entries: list[_Entry]) -> dict[str, Any] | None:
    """Several arms (a sweep, several adapters or recipes): arms x main metrics and each
    forgetting set, each cell its value, change and CI; ranked by the first main metric."""
    if len(entries) < 2:
        return None
    forgetting = [_forgetting_metric(entries, s) for s in forgetting_sets(d)]
    keys = _main_metrics(entries) + [k for k in forgetting if k]
    ranked = sorted(entries, key=lambda e: _rank(e, keys[0])) if keys else entries
    best = {k: _best_entry(entries, k) for k in keys}
    return {"columns": [metric_column(k) for k in keys],
            "rows": [{"arm": e.name, "label": e.label,
                      "cells": [_board_cell(e.rows.get(k), best[k] is e) for k in keys]}
                     for e in ranked]}


def _rank(e: _Entry, key: str) -> float:
    v = F.number(e.rows.get(key, {}).get("candidate_value"))
    if v is None:
        return math.inf
    return v if lower_is_better(key) else -v


def _board_cell(row: dict[str, Any] | None, best: bool) -> dict[str, Any]:
    if row is None:
        return {"value": DASH, "abs": "", "ci": "", "tone": "", "sig": None, "best": False}
    return {"value": row["candidate"], "abs": row["abs"],
            "ci": "" if row["ci"] == DASH else row["ci"], "tone": row["tone"],
            "sig": row["sig"], "best": best}


def _comparable_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's comparisons, less speed and memory between arms that are not comparable
    (records written before the pipeline left those out, or resumed by such a version)."""
    return [c for c in record.get("comparisons") or [] if isinstance(c, dict)
            and measured.keep(str(c.get("metric")),
                              measured.of(record, str(c.get("baseline", A.BASELINE))),
                              measured.of(record, str(c.get("candidate"))))]
