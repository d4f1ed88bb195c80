"""Quality against cost: each trained arm's gain over the zero-shot base on the headline
metric beside what it cost to train, and which arms are Pareto-optimal on each cost.

Read from the record alone: ``comparisons`` (the arm against ``baseline``) for the gain and
its paired CI, ``seed_comparisons`` for a recipe trained with several seeds (one point for the
recipe: the mean over seeds and the across-seeds interval, never one seed alone), and
``training`` for the costs. The report draws it and ``harness compare`` carries its columns.

Pareto-optimal on a cost: no other point is at least as good on the gain (in the metric's own
direction) and at least as cheap, and strictly better on one of the two. Judged on the point
gains: a CI says how sure each gain is, and the report shows it beside the mark.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.metrics import lower_is_better
from harness.suite import arms as A
from harness.views import formatting as F
from harness.views.report_data import as_dict
from harness.views.report_headline import CARD_METRICS

# (record key, label, short name for the Pareto columns): the three costs a recipe is chosen by.
COSTS = (("trainable_params", "Trainable parameters", "params"),
         ("train_runtime_s", "Train time (s)", "time"),
         ("peak_train_memory_bytes", "Peak training memory", "memory"))
COST_KEYS = tuple(k for k, _, _ in COSTS)
# Records written before train.method trained LoRA only (QLoRA is LoRA over a 4-bit base).
DEFAULT_METHOD = "lora"


@dataclass(frozen=True)
class Point:
    """One trained arm, or one recipe over its seed arms."""

    name: str
    arms: tuple[str, ...]
    method: str | None
    r: Any
    diff: float | None  # candidate - zero-shot, in the metric's own units and sign
    low: float | None  # its CI (paired bootstrap, or across seeds)
    high: float | None
    seeds: int  # 0 for an arm trained once
    costs: dict[str, float | None]
    pareto: dict[str, bool | None]  # cost key -> on the frontier; None: not judged


@dataclass(frozen=True)
class Frontier:
    metric: str
    points: list[Point]


def headline_metric(record: Mapping[str, Any]) -> str | None:
    """The report's headline metric (the first of CARD_METRICS that a trained arm has a
    comparison with the zero-shot base on), None when no trained arm has one."""
    trained = set(as_dict(record.get("training")))
    have = {str(c.get("metric")) for c in _rows(record, "comparisons")
            if c.get("baseline") == A.BASELINE and c.get("candidate") in trained}
    have |= {str(c.get("metric")) for c in _rows(record, "seed_comparisons")}
    return next((m for m in CARD_METRICS if m in have), None)


def frontier(record: Mapping[str, Any]) -> Frontier | None:
    """Every successful trained arm (recipe, when seeded) on the headline metric."""
    metric = headline_metric(record)
    if metric is None:
        return None
    groups: dict[str, list[str]] = {}
    seeded = {str(c.get("recipe")): c for c in _rows(record, "seed_comparisons")
              if c.get("metric") == metric}
    for arm in _trained(record):
        recipe, seed = A.recipe_of(arm)
        groups.setdefault(recipe if seed is not None and recipe in seeded else arm, []).append(arm)
    points = [_point(record, metric, name, arms, seeded.get(name)) for name, arms in groups.items()]
    return Frontier(metric, _with_pareto(points, lower_is_better(metric)))


def _rows(record: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    return [c for c in record.get(key) or [] if isinstance(c, dict)]


def _trained(record: Mapping[str, Any]) -> list[str]:
    arms = as_dict(record.get("arms"))
    return [a for a in as_dict(record.get("training"))
            if as_dict(arms.get(a)).get("status", "success") == "success"]


def _point(record: Mapping[str, Any], metric: str, name: str, arms: list[str],
           seed_row: dict[str, Any] | None) -> Point:
    training = as_dict(record.get("training"))
    row = seed_row or next((c for c in _rows(record, "comparisons")
                            if c.get("baseline") == A.BASELINE and c.get("candidate") == name
                            and c.get("metric") == metric), {})
    config = as_dict(as_dict(training.get(arms[0])).get("config"))
    method = str(config.get("method") or DEFAULT_METHOD) if config else None
    costs = {k: _mean([F.number(as_dict(training.get(a)).get(k)) for a in arms])
             for k in COST_KEYS}
    return Point(name, tuple(arms), method, config.get("r"), F.number(row.get("abs_diff")),
                 F.number(row.get("ci_low")), F.number(row.get("ci_high")),
                 len(arms) if seed_row else 0, costs, {})


def _mean(values: list[float | None]) -> float | None:
    """Seeds of one recipe: their mean cost (train time varies by run); None if one lacks it."""
    return None if not values or None in values else statistics.fmean(values)  # type: ignore


def _with_pareto(points: list[Point], lower: bool) -> list[Point]:
    sign = -1.0 if lower else 1.0
    return [Point(**{**p.__dict__, "pareto": {k: _optimal(p, points, k, sign)
                                              for k in COST_KEYS}}) for p in points]


def _optimal(p: Point, points: list[Point], cost: str, sign: float) -> bool | None:
    """No other point at least as good and as cheap, better on one; None without both."""
    me = _judged(p, cost, sign)
    if me is None:
        return None
    gain, spend = me
    for q in points:
        other = _judged(q, cost, sign) if q is not p else None
        if other is None:
            continue
        q_gain, q_spend = other
        if q_gain >= gain and q_spend <= spend and (q_gain > gain or q_spend < spend):
            return False
    return True


def _judged(p: Point, cost: str, sign: float) -> tuple[float, float] | None:
    """(gain, cost) with the gain signed so that higher is better; None without either."""
    spend = p.costs[cost]
    return None if p.diff is None or spend is None else (sign * p.diff, spend)


def pareto_marks(p: Point) -> str:
    """``params, time``: the costs on whose frontier the point lies."""
    return ", ".join(short for k, _, short in COSTS if p.pareto.get(k)) or F.DASH


# The columns `harness compare --format csv/json` adds to each row, for its candidate arm.
ARM_COLUMNS = ("method", "r", *COST_KEYS, "frontier_metric",
               *(f"pareto_{short}" for _, _, short in COSTS))


def arm_columns(record: Mapping[str, Any], front: Frontier | None, arm: str) -> dict[str, Any]:
    """A trained arm's method, rank and own costs as run.json holds them, and the Pareto
    flags of its point (its recipe's, for a seed arm); all None for an arm harness did not
    train."""
    out: dict[str, Any] = dict.fromkeys(ARM_COLUMNS)
    entry = as_dict(as_dict(record.get("training")).get(arm))
    if not entry:
        return out
    config = as_dict(entry.get("config"))
    out.update(method=str(config.get("method") or DEFAULT_METHOD) if config else None,
               r=_as_stored(config.get("r")), **{k: _as_stored(entry.get(k)) for k in COST_KEYS})
    point = next((p for p in front.points if arm in p.arms), None) if front else None
    if front and point:
        out["frontier_metric"] = front.metric
        out.update({f"pareto_{short}": point.pareto.get(k) for k, _, short in COSTS})
    return out


def _as_stored(v: Any) -> Any:
    """A finite number as run.json holds it (an int stays an int), else None."""
    return v if F.number(v) is not None else None
