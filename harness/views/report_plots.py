"""The report's inline SVG charts (HTML only), drawn by ``harness.views.plots``."""

from __future__ import annotations

import math
import statistics
from typing import Any

from harness import metrics as M
from harness.metrics import ROUGE_KEYS, lower_is_better
from harness.stats import measured
from harness.suite import arms as A
from harness.views import formatting as F
from harness.views import plots
from harness.views.report_data import ReportData, as_dict, ci_label, label, memory_kind
from harness.views.report_headline import by_metric, headline_tables, significant

# ------------------------------------------------------------------ plots (HTML only)


def charts(d: ReportData) -> list[dict[str, Any]]:
    colors = plots.arm_colors(d.arms)
    drawn = [_loss_plot(d, colors), _rouge_plot(d, colors), _gain_plot(d, colors),
             _system_plot(d, colors), _memory_plot(d, colors)]
    return [c for c in drawn if c and c["svg"] is not None]


def _loss_plot(d: ReportData, colors: dict[str, str]) -> dict[str, Any]:
    series = []
    for arm in d.arms:
        rows = [r for r in d.train_log
                if r.get("arm") == arm and F.number(r.get("step")) is not None]
        for key, suffix, dashed in (("loss", "train", False), ("eval_loss", "eval", True)):
            pts = [(float(r["step"]), float(r[key])) for r in rows
                   if F.number(r.get(key)) is not None]
            if pts:
                series.append(plots.Series(f"{arm} {suffix}", pts, colors[arm], dashed, dashed))
    svg = plots.line_chart(series, title="Training and eval loss", x_label="optimizer step",
                           y_label="loss (nats / token)", width=960)
    return {"title": "Loss curves", "svg": svg, "wide": True,
            "caption": "Solid: training loss; dashed with dots: eval loss, per adapter arm."}


def _rouge_plot(d: ReportData, colors: dict[str, str]) -> dict[str, Any]:
    keys = [k for k in ROUGE_KEYS if any(k in _arm_metrics(d, a) for a in d.arms)]
    z = statistics.NormalDist().inv_cdf(1 - d.alpha / 2)
    bars = [plots.Bars(a, colors[a], [F.number(_arm_metrics(d, a).get(k)) for k in keys],
                       [_mean_ci(d.items[a], k, F.number(_arm_metrics(d, a).get(k)), z)
                        for k in keys]) for a in d.arms]
    svg = plots.bar_chart([label(k) for k in keys], bars, title="ROUGE by arm",
                          y_label="F-measure", value_fmt=lambda v: f"{v:.3f}") if keys else None
    return {"title": "ROUGE by arm", "svg": svg, "wide": False,
            "caption": f"Whiskers: {ci_label(d.alpha)} of the mean over items "
                       "(normal approximation)."}


def _arm_metrics(d: ReportData, arm: str) -> dict[str, Any]:
    return as_dict(as_dict(d.arm_records.get(arm)).get("metrics"))


def _mean_ci(items: list[dict[str, Any]], key: str, centre: float | None,
             z: float) -> tuple[float, float] | None:
    vals = [v for v in (F.number(r.get(key)) for r in items) if v is not None]
    if centre is None or len(vals) < 2:
        return None
    half = z * statistics.stdev(vals) / math.sqrt(len(vals))
    return centre - half, centre + half


def _gain_plot(d: ReportData, colors: dict[str, str]) -> dict[str, Any]:
    """Relative improvement with its CI, signed so that right is always better."""
    rows = []
    for g in headline_tables(d):
        for c in by_metric([c for c in d.record.get("comparisons") or []
                             if isinstance(c, dict) and c.get("candidate") == g["candidate"]
                             and c.get("baseline", A.BASELINE) == g["baseline"]]):
            row = _gain_interval(c, g["candidate"], colors, d.alpha)
            rows += [row] if row else []
    svg = plots.interval_chart(rows, title="Relative improvement over baseline",
                               x_label="relative improvement over baseline, %  (right = better)",
                               value_fmt=lambda v: F.percent(v / 100))
    return {"title": "Relative improvement", "svg": svg, "wide": False,
            "caption": f"Bars: {ci_label(d.alpha)}; dot green / red: significantly better / "
                       f"worse at α = {d.alpha:g} (Holm), hollow: not significant. "
                       "Lower-is-better metrics are sign-flipped; a metric whose baseline is 0 "
                       "has no relative gain and is left out. A value far beyond the others is "
                       "drawn as an arrow at the edge with its number, so the rest stay readable."}


def _gain_interval(c: dict[str, Any], arm: str, colors: dict[str, str],
                   alpha: float) -> plots.Interval | None:
    m, rel, base = str(c["metric"]), F.number(c.get("rel_gain")), F.number(c.get("baseline_value"))
    if rel is None or not M.is_per_item(m):  # throughput and memory have their own charts
        return None
    lo, hi = F.number(c.get("rel_ci_low")), F.number(c.get("rel_ci_high"))
    if (lo is None or hi is None) and base and F.number(c.get("ci_low")) is not None:
        lo, hi = F.number(c.get("ci_low")) / base, F.number(c.get("ci_high")) / base  # type: ignore
    sign = -100.0 if lower_is_better(m) else 100.0
    ends = sorted((sign * lo, sign * hi)) if lo is not None and hi is not None else (None, None)
    name = f"{arm} · {label(m)}"
    sig = significant(c, alpha)
    return plots.Interval(name, sign * rel, ends[0], ends[1], colors.get(arm, plots.PALETTE[0]),
                          strong=bool(sig), tone=F.tone(m, c.get("abs_diff"), sig))


def _system_plot(d: ReportData, colors: dict[str, str]) -> dict[str, Any]:
    keys = ("eval_tokens_per_s", "gen_tokens_per_s")
    bars = [_system_bars(d, a, colors, [F.number(_arm_metrics(d, a).get(k)) for k in keys])
            for a in d.arms]
    svg = plots.bar_chart([label(k) for k in keys], bars, title="Throughput by arm",
                          y_label="tokens / s", value_fmt=lambda v: f"{v:,.1f}")
    return {"title": "Throughput", "svg": svg, "wide": False,
            "caption": "Teacher-forced eval and greedy generation; model loading excluded."
                       + _marked_caption(d)}


def _system_bars(d: ReportData, arm: str, colors: dict[str, str], values: list[float | None]
                 ) -> plots.Bars:
    """An arm's speed or memory bars; hollow and labelled when not comparable with the
    baseline's (measured.mark_of)."""
    mark = measured.mark_of(d.record, arm)
    name = f"{arm} ({mark})" if mark else arm
    return plots.Bars(name, colors[arm], values, marked=bool(mark))


def _marked_caption(d: ReportData) -> str:
    if not any(measured.mark_of(d.record, a) for a in d.arms):
        return ""
    return (" Hollow, dashed bars: measured by another process (cached, or before a resume):"
            " not comparable with the others.")


def _memory_plot(d: ReportData, colors: dict[str, str]) -> dict[str, Any]:
    gib = [F.number(_arm_metrics(d, a).get("peak_memory_bytes")) for a in d.arms]
    bars = [_system_bars(d, a, colors, [None if v is None else v / 2**30])
            for a, v in zip(d.arms, gib, strict=True)]
    kind = memory_kind(as_dict(d.record.get("env")))
    svg = plots.bar_chart(["Peak memory"], bars, title="Peak memory by arm", y_label="GiB",
                          value_fmt=lambda v: f"{v:.2f}")
    return {"title": "Peak memory", "svg": svg, "wide": False,
            "caption": (f"Measured as {kind}." if kind else "") + _marked_caption(d)}
