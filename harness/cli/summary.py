"""The end-of-run summary for the terminal: zero-shot vs each adapter arm, and the
across-seeds table, rendered from a record (rich tables that fit 80 columns)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from harness import metrics as M
from harness.cli.console import out
from harness.metrics import SYSTEM_KEYS, lower_is_better
from harness.stats import measured
from harness.suite import arms as A
from harness.suite import config
from harness.views import formatting as F


def print_tables(record: dict[str, Any]) -> None:
    """The summary table, then the across-seeds table of a run with ``train.seeds``."""
    out.print(summary_table(record))
    seeds = seed_table(record)
    if seeds is not None:
        out.print(seeds)


def summary_table(record: dict[str, Any]) -> Group:
    """Zero-shot vs each adapter arm, one table per arm and one row per metric, with the
    paired CI when present: three arms side by side need 130 columns, one arm's table fits 80
    with every CI on one line (only a long metric or arm name folds). A run without adapter
    arms: the zero-shot numbers alone."""
    alpha = (record.get("stats") or {}).get("alpha", config.DEFAULT_ALPHA)
    arms = A.others(record.get("arms", {}))
    tables: list[RenderableType] = [
        Fitted(_arm_table(record, a, alpha), _arm_table(record, a, alpha, True)) for a in arms]
    return Group(*tables or [_arm_table(record, None, alpha)])


class Fitted:
    """The first of ``tables`` whose every row fits the console on one line, else the last."""

    def __init__(self, *tables: Table):
        self.tables = tables

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fits = [t for t in self.tables if _width(console, options, t) <= options.max_width]
        yield (fits or self.tables[-1:])[0]


def _width(console: Console, options: ConsoleOptions, table: Table) -> int:
    return table.__rich_measure__(console, options).maximum


def _arm_table(record: dict[str, Any], arm: str | None, alpha: float,
               stacked: bool = False) -> Table:
    """``stacked``: the CI under the change, 10 to 16 columns narrower (at 80 columns a
    perplexity's "-369.5617 [-375.0735, -362.7676]" left 9 for the metric's name)."""
    title = f"{record.get('suite')} / {record.get('run_id')}"
    table = _narrow_table(title + (f": {arm} vs {A.BASELINE_LABEL}" if arm else ""))
    _add_column(table, "metric")
    _add_column(table, A.BASELINE_LABEL)
    if arm is not None:
        _add_column(table, arm)
        # the CI is per metric: the p beside it is too; Holm's decides significance
        for name in (f"Δ [{F.ci_level(alpha)} CI]", "p", "p (Holm)"):
            _add_column(table, name, fixed=True)
    comps = {c["metric"]: c for c in record.get("comparisons", []) if c.get("candidate") == arm}
    base = record.get("arms", {}).get(A.BASELINE, {}).get("metrics", {})
    for m in sorted((k for k in base if M.is_known(k)), key=M.sort_key):
        if base.get(m) is None:
            continue
        row = [m + (" ↓" if lower_is_better(m) else ""), _value(record, A.BASELINE, m)]
        if arm is not None:
            delta = _delta(comps.get(m), m, alpha, "\n" if stacked else " ")
            if m in SYSTEM_KEYS and not measured.comparable(measured.of(record, arm),
                                                            measured.of(record, A.BASELINE)):
                delta = F.DASH, F.DASH, F.DASH  # older records stored such differences
            row += [_value(record, arm, m), *delta]
        table.add_row(*row)
    return table


def _value(record: dict[str, Any], arm: str, metric: str) -> str:
    """The arm's value; speed and memory not comparable with the baseline's marked."""
    text = F.metric(metric, record["arms"][arm].get("metrics", {}).get(metric))
    mark = measured.mark_of(record, arm) if metric in SYSTEM_KEYS else None
    return f"{text} ({mark})" if mark and text != F.DASH else text


def _delta(c: dict[str, Any] | None, metric: str, alpha: float, sep: str = " "
           ) -> tuple[Text | str, str, str]:
    """The change with its CI after ``sep`` (green / red only when significantly better /
    worse), the metric's own p and the Holm-adjusted p."""
    if not c or c.get("abs_diff") is None:
        return F.DASH, F.DASH, F.DASH
    text = F.metric(metric, c["abs_diff"], signed=True)
    ci = F.interval(c.get("ci_low"), c.get("ci_high"),
                    lambda v: F.metric(metric, v, signed=True), missing="")
    style = F.RICH_STYLES[F.tone(metric, c["abs_diff"], c.get("significant"))]
    return (Text(f"{text}{sep}{ci}".rstrip(), style=style), F.p_value(c.get("p_value"), alpha),
            F.p_value(c.get("p_value_holm"), alpha))


def seed_table(record: dict[str, Any]) -> Group | None:
    """Each recipe trained with several seeds against zero-shot (``seed_comparisons``), one
    table per recipe: the mean over seeds of each seed's difference and the interval that
    counts seed-to-seed and item noise, the truth about the recipe where one seed's table
    tells about one adapter. None when the run has no such rows."""
    rows = [c for c in record.get("seed_comparisons") or [] if isinstance(c, dict)
            and M.is_known(str(c.get("metric")))]
    if not rows:
        return None
    alpha = (record.get("stats") or {}).get("alpha", config.DEFAULT_ALPHA)
    recipes = sorted({str(c.get("recipe")) for c in rows})
    by_recipe = {r: [c for c in rows if str(c.get("recipe")) == r] for r in recipes}
    return Group(*[Fitted(_seed_recipe_table(rs, r, alpha), _seed_recipe_table(rs, r, alpha, True))
                   for r, rs in by_recipe.items()])


def _seed_recipe_table(rows: list[dict[str, Any]], recipe: str, alpha: float,
                       stacked: bool = False) -> Table:
    seeds = rows[0].get("n_seeds", "?")
    table = _narrow_table(
        f"Across training seeds: {recipe} ({seeds} seeds), mean over seeds vs zero-shot, "
        f"{F.ci_level(alpha)} CI across seeds and items")
    for name in ("metric", A.BASELINE_LABEL, "mean", "Δ [CI]", "seed SD", "sig."):
        _add_column(table, name, fixed=name in ("Δ [CI]", "sig."))
    for c in sorted(rows, key=lambda c: M.sort_key(str(c["metric"]))):
        m = str(c["metric"])
        delta, _, _ = _delta(c, m, alpha, "\n" if stacked else " ")
        table.add_row(m + (" ↓" if lower_is_better(m) else ""),
                      F.metric(m, c.get("baseline_value")), F.metric(m, c.get("candidate_value")),
                      delta, F.metric(m, c.get("seed_sd")),
                      "yes" if c.get("significant") else "no")
    return table


def _narrow_table(title: str) -> Table:
    """A terminal table that reads at 80 columns: no borders, a rule under the header."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True)


def _add_column(table: Table, name: str, fixed: bool = False) -> None:
    """The first column left-aligned, the rest right. ``fixed`` columns (a change with its CI,
    p-values) never wrap; the others (names, values) fold on a narrow terminal rather than
    end in "…"."""
    table.add_column(name, justify="right" if table.columns else "left", no_wrap=fixed,
                     overflow="fold")
