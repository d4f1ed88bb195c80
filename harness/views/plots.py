"""Small inline-SVG charts for the HTML report: line, grouped-bar, interval (forest) and
scatter plots.

No matplotlib: reports render in a plain CI job from records alone, and four chart kinds fit
in a few hundred lines. Every label is escaped. The SVG carries no ``xmlns`` URL (inline
SVG in HTML5 does not need one), so a report holds no http(s) strings of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from harness.suite import arms as A

W = 640  # viewBox width; CSS scales each chart to its column
# Okabe-Ito-like, colour-blind safe; the zero-shot baseline is always grey. No green and no red:
# those two say "significantly better / worse" (TONE_COLORS), never which arm.
BASELINE_COLOR = "#8b94a3"
PALETTE = ("#2563eb", "#e36b0a", "#a23fd4", "#0891b2", "#a16207", "#cc79a7", "#334155")
# formatting.tone's classes, as the report's CSS colours them (--good, --bad).
TONE_COLORS = {"good": "#0f7b45", "bad": "#c0362c"}
HOLLOW = "#fff"
# A forest plot's axis covers every value unless that would shrink the robust range of the
# values (within OUTLIER_MADS scaled MADs of their median) to under 1 / SQUASH of the plot
# width; values beyond it are drawn as arrows at the edge with their number.
OUTLIER_MADS, SQUASH, MAD_TO_SD = 10.0, 3.0, 1.4826


@dataclass(frozen=True)
class Series:
    """One line of a line chart; ``markers`` for sparse series such as eval loss."""

    name: str
    points: list[tuple[float, float]]
    color: str
    dashed: bool = False
    markers: bool = False


@dataclass(frozen=True)
class Bars:
    """One bar per category; ``errors`` are absolute (low, high) whisker ends or None.
    ``marked``: values not comparable with the others (speed or memory another process
    measured), drawn hollow and dashed."""

    name: str
    color: str
    values: list[float | None]
    errors: list[tuple[float, float] | None] = field(default_factory=list)
    marked: bool = False


@dataclass(frozen=True)
class Interval:
    """One row of a forest plot: a point estimate and an optional interval."""

    label: str
    value: float
    low: float | None
    high: float | None
    color: str
    strong: bool = False  # significant (kept for callers; the fill follows ``tone``)
    tone: str = ""  # formatting.tone: "good" / "bad" fill the marker green / red


@dataclass(frozen=True)
class Dot:
    """One point of a scatter plot with an optional vertical interval; ``marked`` points are
    filled and joined by the frontier line, the others hollow."""

    label: str  # written beside the point
    x: float
    y: float
    low: float | None
    high: float | None
    color: str
    marked: bool = False
    tip: str = ""  # the hover text; the label when empty


@dataclass(frozen=True)
class Scale:
    """Linear map from data [lo, hi] to pixels [a, b]."""

    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, v: float) -> float:
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """Grey for ``baseline``; every other arm (template variants too) its own palette colour."""
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(A.others(arms))}
    return {A.BASELINE: BASELINE_COLOR, **colors}


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-15)
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - start) / step - 1e-9)
    return [round(start + i * step, 12) for i in range(count + 1)]


def fmt_tick(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v:,.0f}"
    return f"{v:.6g}"


# ------------------------------------------------------------------ drawing primitives


def _svg(title: str, body: str, height: int, width: int = W) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


def _text(x: float, y: float, s: str, cls: str = "", anchor: str = "middle", **kw: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in kw.items())
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}"{extra}>'
            f"{escape(s)}</text>")


def _y_axis(ys: Scale, ticks: list[float], x0: float, x1: float, label: str) -> str:
    """Horizontal grid lines with tick labels on the left and a rotated axis label."""
    out = []
    for t in ticks:
        y = ys(t)
        out.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(_text(x0 - 6, y + 4, fmt_tick(t), "tick", "end"))
    mid = (ys.a + ys.b) / 2
    out.append(_text(14, mid, label, "axis", transform=f"rotate(-90 14 {mid:.1f})"))
    return "".join(out)


def _legend_layout(names: list[str], x: float, right: float) -> list[tuple[float, int]]:
    """(x, row) of each entry: greedy rows, about 7 viewBox units per character."""
    out, cx, row = [], x, 0
    for name in names:
        width = 30 + 7 * len(name)
        if cx + width > right and cx > x:
            cx, row = x, row + 1
        out.append((cx, row))
        cx += width
    return out


def _legend_rows(names: list[str], x: float, right: float) -> int:
    """How many rows the legend takes, so the plot area can start below it."""
    return 1 + max((row for _, row in _legend_layout(names, x, right)), default=0)


def _legend(entries: list[tuple[str, str, bool]], x: float, y: float, right: float) -> str:
    """Swatches at the top; long legends wrap onto further rows (16 units apart)."""
    out = []
    layout = _legend_layout([name for name, _, _ in entries], x, right)
    for (name, color, dashed), (cx, row) in zip(entries, layout, strict=True):
        cy = y + 16 * row
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<line x1="{cx}" x2="{cx + 18}" y1="{cy - 4}" y2="{cy - 4}" '
                   f'stroke="{color}" stroke-width="3"{dash}/>')
        out.append(_text(cx + 23, cy, name, "legend", "start"))
    return "".join(out)


# ------------------------------------------------------------------ charts


def line_chart(series: list[Series], *, title: str, x_label: str, y_label: str,
               width: int = W) -> Markup | None:
    """Lines against a shared x axis (training steps); None when there is nothing to draw."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return None
    height, left, right, bottom = 300, 64, width - 16, 300 - 44
    top = 28 + 16 * _legend_rows([s.name for s in series], left, right)
    xt = nice_ticks(min(p[0] for p in pts), max(p[0] for p in pts))
    yt = nice_ticks(min(p[1] for p in pts), max(p[1] for p in pts))
    xs, ys = Scale(xt[0], xt[-1], left, right), Scale(yt[0], yt[-1], bottom, top)
    body = [_y_axis(ys, yt, left, right, y_label)]
    body += [_text(xs(t), bottom + 16, fmt_tick(t), "tick") for t in xt]
    body.append(_text((left + right) / 2, height - 6, x_label, "axis"))
    body += [_polyline(s, xs, ys) for s in series]
    body.append(_legend([(s.name, s.color, s.dashed) for s in series], left, 16, right))
    return _svg(title, "".join(body), height, width)


def _polyline(s: Series, xs: Scale, ys: Scale) -> str:
    coords = " ".join(f"{xs(x):.1f},{ys(y):.1f}" for x, y in sorted(s.points))
    dash = ' stroke-dasharray="6 4"' if s.dashed else ""
    line = (f'<polyline class="series" fill="none" stroke="{s.color}" stroke-width="2"'
            f'{dash} points="{coords}"><title>{escape(s.name)}</title></polyline>')
    if not (s.markers or len(s.points) == 1):
        return line
    dots = "".join(f'<circle cx="{xs(x):.1f}" cy="{ys(y):.1f}" r="3.5" fill="{s.color}">'
                   f"<title>{escape(s.name)}: {fmt_tick(y)}</title></circle>"
                   for x, y in s.points)
    return line + dots


def bar_chart(
    categories: list[str],
    bars: list[Bars],
    *,
    title: str,
    y_label: str,
    value_fmt: Callable[[float], str] = fmt_tick,
) -> Markup | None:
    """Grouped bars (one group per category, one bar per series) from zero, with whiskers;
    series without any value (an arm that never ran) take no slot."""
    bars = [b for b in bars if any(v is not None for v in b.values)]
    vals = [v for b in bars for v in b.values if v is not None]
    if not vals:
        return None
    whiskers = [x for b in bars for e in b.errors if e for x in e]
    height, left, right, bottom = 280, 64, W - 16, 280 - 40
    top = 28 + 16 * _legend_rows([b.name for b in bars], left, right)
    yt = nice_ticks(min(0.0, *vals, *whiskers), max(0.0, *vals, *whiskers))
    ys = Scale(yt[0], yt[-1], bottom, top)
    group_w = (right - left) / len(categories)
    body = [_y_axis(ys, yt, left, right, y_label)]
    for ci, cat in enumerate(categories):
        gx = left + ci * group_w
        body.append(_text(gx + group_w / 2, bottom + 18, cat, "tick"))
        body += _bar_group(bars, ci, gx, group_w, ys, value_fmt)
    body.append(_legend([(b.name, b.color, b.marked) for b in bars], left, 16, right))
    return _svg(title, "".join(body), height)


def _bar_group(bars: list[Bars], ci: int, gx: float, group_w: float, ys: Scale,
               value_fmt: Callable[[float], str]) -> list[str]:
    bw = min(48.0, group_w * 0.8 / len(bars))
    x = gx + (group_w - bw * len(bars)) / 2
    out = []
    for b in bars:
        v = b.values[ci]
        if v is not None:
            y0, y1 = sorted((ys(0.0), ys(v)))
            fill = (f'fill="{b.color}" fill-opacity="0.15" stroke="{b.color}" '
                    'stroke-dasharray="4 2"' if b.marked else f'fill="{b.color}"')
            out.append(f'<rect x="{x + 2:.1f}" y="{y0:.1f}" width="{bw - 4:.1f}" '
                       f'height="{max(y1 - y0, 0.5):.1f}" {fill} rx="2">'
                       f"<title>{escape(b.name)}: {escape(value_fmt(v))}</title></rect>")
            err = b.errors[ci] if ci < len(b.errors) else None
            # A value label where there is room and no whisker to collide with.
            label = _text(x + bw / 2, y0 - 5, value_fmt(v), "value") if bw >= 34 else ""
            out.append(_whisker(x + bw / 2, err, ys) if err else label)
        x += bw
    return out


def _whisker(cx: float, err: tuple[float, float], ys: Scale) -> str:
    lo, hi = ys(err[0]), ys(err[1])
    return (f'<path class="whisker" d="M{cx:.1f},{lo:.1f}V{hi:.1f}'
            f'M{cx - 5:.1f},{lo:.1f}h10M{cx - 5:.1f},{hi:.1f}h10"/>')


def interval_chart(rows: list[Interval], *, title: str, x_label: str,
                   value_fmt: Callable[[float], str] = fmt_tick) -> Markup | None:
    """Forest plot: one row per estimate, a CI bar and a zero line; the marker is green /
    red when significantly better / worse (``tone``), hollow otherwise. A few values far
    beyond the rest (a +2256% change beside +5% ones) are clipped (``axis_range``): an arrow
    at the edge and the value written beside it."""
    if not rows:
        return None
    row_h, top, left, right = 26, 16, 210, W - 20
    height = top + row_h * len(rows) + 44
    ends = [x for r in rows for x in (r.value, r.low, r.high) if x is not None]
    xt = nice_ticks(*axis_range(ends))
    xs, bottom = Scale(xt[0], xt[-1], left, right), top + row_h * len(rows)
    body = []
    for t in xt:
        cls = "zero" if t == 0 else "grid"
        body.append(f'<line class="{cls}" x1="{xs(t):.1f}" x2="{xs(t):.1f}" y1="{top}" '
                    f'y2="{bottom}"/>' + _text(xs(t), bottom + 16, fmt_tick(t), "tick"))
    body.append(_text((left + right) / 2, height - 8, x_label, "axis"))
    body += [_interval_row(r, top + row_h * (i + 0.5), xs, left, value_fmt)
             for i, r in enumerate(rows)]
    return _svg(title, "".join(body), height)


def axis_range(values: Sequence[float]) -> tuple[float, float]:
    """[lo, hi] for a forest plot's axis, always with 0: every value, unless a few outliers
    would squash the rest. The robust range holds the values within ``OUTLIER_MADS`` scaled
    median absolute deviations of the median; it is used when the full range is more than
    ``SQUASH`` times as wide (one +2256% among changes of a few % left them ~1 px wide)."""
    vals = sorted([0.0, *values])
    med = _median(vals)
    spread = MAD_TO_SD * _median(sorted(abs(v - med) for v in vals))
    full = (vals[0], vals[-1])
    if spread == 0:
        return full
    inside = [v for v in vals if abs(v - med) <= OUTLIER_MADS * spread]
    robust = (min(0.0, inside[0]), max(0.0, inside[-1]))
    squashed = full[1] - full[0] > SQUASH * (robust[1] - robust[0])
    return robust if squashed and robust[1] > robust[0] else full


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    return (sorted_values[(n - 1) // 2] + sorted_values[n // 2]) / 2


def _interval_row(r: Interval, y: float, xs: Scale, left: float,
                  value_fmt: Callable[[float], str]) -> str:
    lo_x, hi_x = sorted((xs.a, xs.b))

    def clip(v: float) -> float:
        return min(max(xs(v), lo_x), hi_x)

    out = [_text(left - 10, y + 4, r.label, "tick", "end")]
    if r.low is not None and r.high is not None:
        out.append(f'<line x1="{clip(r.low):.1f}" x2="{clip(r.high):.1f}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="{r.color}" stroke-width="2.5"/>')
        out += [_arrow(xs(v), y, lo_x, hi_x, r.color) for v in (r.low, r.high)
                if not lo_x <= xs(v) <= hi_x and not _with_point(xs(v), xs(r.value), lo_x, hi_x)]
    fill = TONE_COLORS.get(r.tone, HOLLOW)
    tip = f"<title>{escape(r.label)}: {escape(value_fmt(r.value))}</title>"
    x = xs(r.value)
    if lo_x <= x <= hi_x:
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" '
                   f'stroke="{r.color}" stroke-width="2">{tip}</circle>')
    else:  # beyond the axis: an arrowhead at the edge, and the number it stands for
        out.append(_arrow(x, y, lo_x, hi_x, r.color, fill, tip))
        inward = 14 if x < lo_x else -14
        out.append(_text(clip(r.value) + inward, y - 7, value_fmt(r.value), "value",
                         "start" if x < lo_x else "end"))
    return "".join(out)


def _with_point(x: float, point_x: float, lo_x: float, hi_x: float) -> bool:
    """An interval end clipped on the side where the point is clipped too: the point's arrow
    shows both."""
    return not lo_x <= point_x <= hi_x and (x < lo_x) == (point_x < lo_x)


def _arrow(x: float, y: float, lo_x: float, hi_x: float, color: str,
           fill: str | None = None, tip: str = "") -> str:
    """A triangle at the axis edge pointing outward, where a value lies beyond it."""
    edge, d = (lo_x, -1) if x < lo_x else (hi_x, 1)
    pts = f"{edge + 8 * d:.1f},{y:.1f} {edge:.1f},{y - 6:.1f} {edge:.1f},{y + 6:.1f}"
    return (f'<polygon class="clip" points="{pts}" fill="{fill or color}" stroke="{color}" '
            f'stroke-width="1.5">{tip}</polygon>')


def scatter_chart(dots: list[Dot], *, title: str, x_label: str, y_label: str,
                  log_x: bool = False, legend: Sequence[tuple[str, str]] = (),
                  x_fmt: Callable[[float], str] = fmt_tick) -> Markup | None:
    """Points with vertical whiskers, a zero line, each point's label beside it, and the
    marked points joined left to right (dashed); ``log_x`` for counts spanning decades (3.6k
    trainable parameters beside 1.2M). None when no point has a usable x."""
    dots = [d for d in dots if d.x > 0 or not log_x]
    if not dots:
        return None
    height, left, right, bottom = 320, 64, W - 24, 320 - 44
    top = 28 + 16 * _legend_rows([n for n, _ in legend], left, right) if legend else 20
    ys_all = [v for d in dots for v in (d.y, d.low, d.high) if v is not None]
    yt = nice_ticks(min(0.0, *ys_all), max(0.0, *ys_all))
    xt, xs = _x_axis([d.x for d in dots], log_x, left, right)
    ys = Scale(yt[0], yt[-1], bottom, top)
    body = [_y_axis(ys, yt, left, right, y_label),
            f'<line class="zero" x1="{left}" x2="{right}" y1="{ys(0):.1f}" y2="{ys(0):.1f}"/>']
    body += [_text(xs(t), bottom + 16, x_fmt(t), "tick") for t in xt]
    body.append(_text((left + right) / 2, height - 6, x_label, "axis"))
    body.append(_frontier_line([d for d in dots if d.marked], xs, ys))
    body += [_dot(d, xs, ys) for d in dots]
    if legend:
        body.append(_legend([(n, c, False) for n, c in legend], left, 16, right))
    return _svg(title, "".join(body), height)


def _x_axis(values: list[float], log_x: bool, left: float, right: float
            ) -> tuple[list[float], Callable[[float], float]]:
    """Ticks and the x position of a value: whole decades on a log axis (at least one)."""
    if not log_x:  # 5% of the range spare on each side: a point on the edge loses its label
        pad = 0.05 * (max(values) - min(values))
        xt = nice_ticks(min(values) - pad, max(values) + pad)
        return xt, Scale(xt[0], xt[-1], left, right)
    # a fifth of a decade spare on each side, for the same reason
    lo = math.floor(math.log10(min(values)) - 0.2)
    hi = max(math.ceil(math.log10(max(values)) + 0.2), lo + 1)
    scale = Scale(lo, hi, left, right)
    return [10.0 ** k for k in range(lo, hi + 1)], lambda v: scale(math.log10(v))


def _frontier_line(dots: list[Dot], xs: Callable[[float], float], ys: Scale) -> str:
    if len(dots) < 2:
        return ""
    coords = " ".join(f"{xs(d.x):.1f},{ys(d.y):.1f}" for d in sorted(dots, key=lambda d: d.x))
    return (f'<polyline class="frontier" fill="none" stroke="{BASELINE_COLOR}" '
            f'stroke-width="1.5" stroke-dasharray="5 3" points="{coords}"/>')


def _dot(d: Dot, xs: Callable[[float], float], ys: Scale) -> str:
    x, y = xs(d.x), ys(d.y)
    whisker = _whisker(x, (d.low, d.high), ys) if d.low is not None and d.high is not None else ""
    fill = d.color if d.marked else HOLLOW
    tip = f"<title>{escape(d.tip or d.label)}</title>"
    # the label right of the point, or left of it in the plot's last quarter (room to end)
    label = (_text(x + 8, y - 8, d.label, "value", "start") if x < W * 0.75
             else _text(x - 8, y - 8, d.label, "value", "end"))
    return (whisker + f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{fill}" '
            f'stroke="{d.color}" stroke-width="2">{tip}</circle>' + label)
