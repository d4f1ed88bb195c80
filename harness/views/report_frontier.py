"""The report's "Quality and cost" section: the frontier (harness.views.frontier) as a table,
and in HTML one scatter plot per cost, drawn by ``harness.views.plots``."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from harness.metrics import lower_is_better
from harness.views import formatting as F
from harness.views import plots
from harness.views.frontier import COSTS, Frontier, Point, frontier, pareto_marks
from harness.views.report_data import ReportData, label
from harness.views.report_headline import change_text

NOT_RECORDED = "not recorded"  # a record older than the measurement, never 0
MIN_POINTS = 2  # one arm has nothing to be weighed against


def frontier_table(d: ReportData) -> dict[str, Any] | None:
    """The section's table: one row per trained arm (recipe, when seeded); None with fewer
    than two."""
    f = frontier(d.record)
    if f is None or len(f.points) < MIN_POINTS:
        return None
    return {"metric": label(f.metric), "lower": lower_is_better(f.metric),
            "seeded": any(p.seeds for p in f.points),
            "rows": [_row(f.metric, p) for p in f.points]}


def _row(metric: str, p: Point) -> dict[str, Any]:
    show = lambda v: change_text(metric, v, False)  # noqa: E731
    return {"name": p.name, "seeds": p.seeds, "method": p.method or F.DASH, "r": F.raw(p.r),
            "gain": change_text(metric, p.diff), "ci": F.interval(p.low, p.high, show),
            "params": _or_missing(p.costs["trainable_params"], F.count),
            "time": _or_missing(p.costs["train_runtime_s"], F.seconds),
            "memory": _or_missing(p.costs["peak_train_memory_bytes"], F.byte_size),
            "pareto": pareto_marks(p)}


def _or_missing(v: float | None, show: Any) -> str:
    return NOT_RECORDED if v is None else show(v)


def frontier_plots(d: ReportData) -> list[dict[str, Any]]:
    """One scatter per cost ({"title", "svg"}): gain (up = better) against that cost, Pareto
    points filled; a cost fewer than two points have is not drawn."""
    f = frontier(d.record)
    if f is None or len(f.points) < MIN_POINTS:
        return []
    methods = list(dict.fromkeys(p.method or F.DASH for p in f.points))
    colors = {m: plots.PALETTE[i % len(plots.PALETTE)] for i, m in enumerate(methods)}
    drawn = [(title, _scatter(f, key, title, colors)) for key, title, _ in COSTS]
    return [{"title": f"{label(f.metric)} gain against {title.replace(' (s)', '').lower()}",
             "svg": svg} for title, svg in drawn if svg is not None]


def _scatter(f: Frontier, key: str, title: str, colors: dict[str, str]) -> Markup | None:
    sign = -1.0 if lower_is_better(f.metric) else 1.0
    unit, scale = _unit(key, [p.costs[key] for p in f.points])
    dots = [plots.Dot(p.name, p.costs[key] / scale, sign * p.diff,  # type: ignore[operator]
                      *_flipped(sign, p.low, p.high), colors[p.method or F.DASH],
                      bool(p.pareto.get(key)), _tip(f.metric, p))
            for p in f.points if p.costs[key] is not None and p.diff is not None]
    if len(dots) < MIN_POINTS:  # old records lack peak memory: no plot of one point
        return None
    return plots.scatter_chart(
        dots, title=f"{label(f.metric)} gain against {title.replace(' (s)', '').lower()}",
        x_label=title.replace(" (s)", "") + (f" ({unit})" if unit else ""),
        y_label=f"{label(f.metric)} gain (up = better)", log_x=key == "trainable_params",
        legend=[(m, c) for m, c in colors.items()],
        x_fmt=_decade if key == "trainable_params" else plots.fmt_tick)


def _decade(v: float) -> str:
    """A log axis' tick: 1k, 10k, 1M (a full 1,000,000 crowds its neighbours)."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _unit(key: str, values: list[float | None]) -> tuple[str, float]:
    """Seconds as they are; memory in MiB, or GiB from 1 GiB up; parameters as counts."""
    if key == "train_runtime_s":
        return "s", 1.0
    if key == "peak_train_memory_bytes":
        big = max((v for v in values if v is not None), default=0.0) >= 2**30
        return ("GiB", 2.0**30) if big else ("MiB", 2.0**20)
    return "", 1.0


def _flipped(sign: float, low: float | None, high: float | None
             ) -> tuple[float | None, float | None]:
    if low is None or high is None:
        return None, None
    a, b = sorted((sign * low, sign * high))
    return a, b


def _tip(metric: str, p: Point) -> str:
    ci = F.interval(p.low, p.high, lambda v: change_text(metric, v, False))
    on = pareto_marks(p)
    return (f"{p.name} ({p.method or F.DASH}): {label(metric)} {change_text(metric, p.diff)} "
            f"{ci}" + (f"; Pareto-optimal on {on}" if on != F.DASH else ""))
