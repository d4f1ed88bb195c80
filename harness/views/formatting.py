"""How harness writes numbers and text for people: one implementation per job, used by
compare, report, gate, progress, plan and the model card.

Every function takes what a record may hold (a number, None, NaN, text) and returns a string;
a number that is missing or not finite reads as an em dash. No torch, no numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from harness import metrics as M
from harness.suite import config

DASH = "—"
# Float keys holding a share in 0..1, shown as percentages (e.g. the lengths' share_truncated).
SHARE_WORDS = ("share", "frac", "efficiency", "pct", "truncated")
# Smaller p-values read "<0.001": further digits describe the resample count, not the model.
P_FLOOR = 0.001
# Three decimals, more only where three would read as alpha or across it (0.0496 at alpha 0.05
# is not "0.050"); 8 resolve any permutation p of up to 10^7 resamples.
P_DECIMALS, P_MAX_DECIMALS = 3, 8
# The colour class of a change (CSS classes of the reports, keys of RICH_STYLES).
GOOD, BAD, NEUTRAL = "good", "bad", ""
RICH_STYLES = {GOOD: "green", BAD: "red", NEUTRAL: ""}
# What a terminal obeys rather than shows: C0 controls (ESC starts colour, cursor, title and
# clear-screen sequences; BEL ends a title), DEL, C1 controls (0x9b is a one-byte CSI) and the
# bidirectional overrides that reorder what is shown. Newline and tab stay: they only lay out.
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def number(v: Any) -> float | None:
    """A finite number, or None (missing, null, NaN, inf, a bool, text)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


# ---------------------------------------------------------------- numbers


def metric(name: str, v: Any, signed: bool = False) -> str:
    """A metric value (or a difference of two, ``signed``) by the metric's name: memory in
    binary units, the known scores to their table's decimals (metrics.DECIMALS), anything else
    to 4 significant digits.
    An extra eval set's ``X/rougeL`` reads like ``rougeL``."""
    x = number(v)
    if x is None:
        return DASH
    key = M.base(name)
    sign = "+" if signed else ""
    found = M.entry(name)
    if found is not None and found.decimals is not None:  # acc_bytes is a score, not a size
        return format(x, f"{sign},.{found.decimals}f")
    if key.endswith("_bytes"):
        return ("+" if signed and x > 0 else "-" if x < 0 else "") + byte_size(abs(x))
    return format(x, f"{sign}.4g")


def byte_size(v: Any) -> str:
    """``512 B``, ``3.53 MiB``, ``1.86 GiB`` (binary units; GiB is the largest)."""
    n = number(v)
    if n is None:
        return DASH
    if n < 0:
        return "-" + byte_size(-n)
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def percent(v: Any, signed: bool = True, digits: int = 1) -> str:
    """A fraction as a percentage: 0.173 -> ``+17.3%``; a relative change when ``signed``."""
    x = number(v)
    return DASH if x is None else format(100 * x, f"{'+' if signed else ''}.{digits}f") + "%"


def points(v: Any, unit: bool = True, digits: int = 1) -> str:
    """A difference of two shares (accuracies) in percentage points, always signed:
    -0.023 -> ``-2.3 points`` (``-2.3`` without ``unit``, for an interval's ends)."""
    x = number(v)
    if x is None:
        return DASH
    text = format(100 * x or 0.0, f"+.{digits}f")  # `or`: -0.0 reads +0.0
    return f"{text} points" if unit else text


def p_value(v: Any, alpha: float = config.DEFAULT_ALPHA) -> str:
    """``<0.001`` below ``P_FLOOR`` (below alpha when alpha is smaller), else three decimals
    (``0.042``), or as many more as it takes for the text to decide at ``alpha`` as the number
    does: 0.0496 reads ``0.0496``, never ``0.050``."""
    x = number(v)
    if x is None:
        return DASH
    floor = min(P_FLOOR, alpha)
    if x < floor:
        return f"<{floor:g}"
    for digits in range(P_DECIMALS, P_MAX_DECIMALS + 1):
        text = f"{x:.{digits}f}"
        shown = float(text)
        if (shown <= alpha) == (x <= alpha) and (shown != alpha or x == alpha):
            break
    return text


def tone(metric: str, diff: Any, significant: Any) -> str:
    """The colour of a change, for every renderer: ``good`` (green) when significantly better
    in the metric's own direction (a lower perplexity is better), ``bad`` (red) when
    significantly worse, ``""`` (neutral) when not significant, untested (throughput and
    memory: one number per arm) or unchanged. Colour never means "significant" alone."""
    d = number(diff)
    if not d or significant is not True:
        return NEUTRAL
    return GOOD if (d < 0) == M.lower_is_better(metric) else BAD


def ci_level(alpha: float) -> str:
    """The confidence level of a two-sided interval at ``alpha``: 0.05 -> ``95%``."""
    return f"{100 * (1 - alpha):.4g}%"


def interval(low: Any, high: Any, show: Callable[[float], str], missing: str = DASH) -> str:
    """``[low, high]`` with each end written by ``show``; ``missing`` when an end is absent."""
    lo, hi = number(low), number(high)
    return missing if lo is None or hi is None else f"[{show(lo)}, {show(hi)}]"


def count(v: Any) -> str:
    """A count with thousands separators: ``921,600``."""
    x = number(v)
    return DASH if x is None else f"{x:,.0f}"


def seconds(v: Any) -> str:
    """A duration for a summary: ``42.0 s``, ``5 min 12 s``, ``3 h 4 min``."""
    s = number(v)
    if s is None:
        return DASH
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def clock(v: float) -> str:
    """A duration as a progress bar's clock: ``0:05:12``."""
    m, s = divmod(int(v), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


# ---------------------------------------------------------------- values of any kind


def raw(v: Any) -> str:
    """A config value as the suite spelled it (no rounding, no percentages)."""
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v) or "[]"
    return str(v)


def cell(key: str, v: Any) -> str:
    """A table cell for a value of any kind under ``key``: metrics by name, shares as %,
    counts with separators, yes / no, text as is."""
    if isinstance(v, bool) or v is None:
        return DASH if v is None else ("yes" if v else "no")
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    if not isinstance(v, int | float):
        return str(v)
    if key in M.DECIMALS or key.endswith("_bytes"):
        return metric(key, v)
    if isinstance(v, float) and 0 <= v <= 1 and any(w in key for w in SHARE_WORDS):
        return percent(v, signed=False)
    return f"{v:,}" if isinstance(v, int) else f"{v:,.4g}"


def printable(text: str, json: bool = False) -> str:
    """Text from a file (an arm, column or suite name, a message quoting one) as a terminal may
    show it: every control character (``CONTROLS``) written as Python writes its escape,
    ``\\x1b`` or ``\\u202e``, so a name cannot retitle the window, clear the screen or hide
    itself. ``json``: as JSON's ``\\u001b`` instead, for JSON text, whose writer leaves such
    characters only inside strings, where the escape reads back as the same character."""
    if json:
        return CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return CONTROLS.sub(lambda m: ascii(m.group())[1:-1], text)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as written: text that would start a formula (``=``,
    ``+``, ``-``, ``@``, tab, CR) gets a leading ``'``, as OWASP advises; numbers, and text
    that is a number (``-0.12``), stay as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def md_cell(value: Any) -> str:
    """One GitHub-Markdown table cell: no row breaks, no column breaks, no raw HTML, no
    control characters."""
    text = printable(" ".join(("" if value is None else str(value)).split()))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|")


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{"train": {"r": 8}} -> [("train.r", 8)]: config keys as a reader types them in --set;
    lists stay values."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += flatten(v, key + ".") if isinstance(v, Mapping) else [(key, v)]
    return out


# ---------------------------------------------------------------- runs


def run_label(run: Any) -> str:
    """``suite/run_id`` of a record, or of a loaded run (whose folder names fill in what its
    record lacks)."""
    if isinstance(run, Mapping):
        return f"{run.get('suite', '?')}/{run.get('run_id', '?')}"
    return f"{run.suite}/{run.run_id}"


def failure(record: Mapping[str, Any]) -> str:
    """Why a run did not succeed: ``status 'failed': CUDA out of memory``."""
    err = record.get("error")
    msg = err.get("message") if isinstance(err, Mapping) else err
    return f"status {record.get('status')!r}" + (f": {msg}" if msg else "")


def disagreement(d: M.Disagreement) -> str:
    """``arm 'lora', metric loss: stored 5.9946, its 12 rows give 6.0319``; every digit
    (``repr``) where the metric's own decimals would print the two alike."""
    shown = [metric(d.metric, v) if number(v) is not None else repr(v)
             for v in (d.stored, d.recomputed)]
    if shown[0] == shown[1]:
        shown = [repr(d.stored), repr(d.recomputed)]
    again = (f"its {d.n_rows} rows give {shown[1]}" if d.recomputed is not None
             else f"its {d.n_rows} rows lack a column it needs")
    return f"arm {d.arm!r}, metric {d.metric}: stored {shown[0]}, {again}"
