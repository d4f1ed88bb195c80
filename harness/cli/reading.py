"""`harness compare`, `harness gate` and `harness report`: read stored records, never torch."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from harness.cli.console import EXIT_INPUT, error, escaped, fail, show, warning
from harness.errors import HarnessError


# typer checks --format against compare's formats: a bad one is a usage error (exit 2) that
# lists them. Spelled here, not imported: compare pulls in NumPy, which tripled the start-up
# time of every command (0.11 -> 0.30 s for --version); a test keeps both lists equal.
class CompareFormat(enum.StrEnum):
    md = "md"
    csv = "csv"
    json = "json"
    html = "html"


COMPARE_FORMATS = tuple(f.value for f in CompareFormat)


def compare_command(
    runs: Annotated[list[str], typer.Argument(
        metavar="RUN...", help="Run directories or their run.json files; the first is the "
                               "reference.")],
    fmt: Annotated[CompareFormat, typer.Option(
        "--format", metavar="FORMAT", help=f"{', '.join(COMPARE_FORMATS)}.")
    ] = CompareFormat(COMPARE_FORMATS[0]),
    output: Annotated[Optional[Path], typer.Option(
        "--output", metavar="FILE", help="Write the table to FILE instead of stdout.")] = None,
    alpha: Annotated[Optional[float], typer.Option(
        metavar="LEVEL", help="Significance level [default: 0.05].")] = None,
) -> None:
    """Relative-gain table of every adapter arm against its baseline, with CIs and p-values.

    With several runs, rows are labelled by what differs between the runs' configs.

    Examples:

    ```
    harness compare results/xsum/20261122T101500-a1b2c3
    harness compare results/sweep/*/ --format csv --output table.csv
    ```
    """
    from harness.rundir.results import check_writable
    from harness.suite import config
    from harness.views import compare

    try:
        if output is not None:
            check_writable(output.parent, output.name)
        level = config.DEFAULT_ALPHA if alpha is None else alpha
        text = compare.compare_runs(_readable_runs(runs), fmt=fmt.value, alpha=level)
    except HarnessError as e:
        fail(e)
    _emit(text, output)


def _readable_runs(args: list[str]) -> list[Any]:
    """The runs that load. Among several, an unreadable one (corrupt, half-copied, from a newer
    harness) is a warning and is skipped, as pytest-benchmark skips a corrupt saved run; with
    none left, or a lone run, it is the error."""
    from harness.errors import RecordError
    from harness.rundir.record import load_run

    loaded, bad = [], []
    for arg in args:
        try:
            loaded.append(load_run(arg))
        except RecordError as e:
            bad.append(e)
    if bad and not loaded:
        raise bad[0]
    for problem in bad:
        warning(f"skipped: {problem}")
    return loaded


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        text = escaped(text)  # a table for the terminal: names from records escaped
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        error(f"--output {output}: cannot write: {e.strerror}")
        raise typer.Exit(EXIT_INPUT) from None
    show(f"wrote {output}")


def gate_command(
    candidate: Annotated[str, typer.Argument(
        metavar="CANDIDATE", help="Candidate run directory or run.json.")],
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", metavar="RUN", help="Baseline run directory or run.json. Optional when "
        "every rule to apply ends in `:vs-zero-shot`.")] = None,
    rule: Annotated[Optional[list[str]], typer.Option(
        "--rule", metavar="RULE", help="e.g. `rougeL:-1%`, `perplexity:+2%`, `loss:+0.05`, "
        "`rougeL:-1%:sig`, `general/perplexity:+5%:vs-zero-shot` (each adapter arm against "
        "the candidate run's own zero-shot arm); replaces the suite's rule for that metric. "
        "Repeatable.")] = None,
    allow_noop: Annotated[bool, typer.Option(
        "--allow-noop", help="Do not fail an adapter arm the run found to do nothing (zero "
        "update, or per-item losses equal to the zero-shot arm's).")] = False,
) -> None:
    """Fail (exit 1) when the candidate regresses against the baseline beyond the rules, or
    has an adapter arm that does nothing (unless `--allow-noop`).

    A rule ending in `:vs-zero-shot` compares each adapter arm with the zero-shot arm of the
    same run (a forgetting check within one run); without `--baseline` only those rules
    apply. The Markdown summary is printed and appended to `$GITHUB_STEP_SUMMARY` when set.

    Examples:

    ```
    harness gate results/ci/*/ --baseline results/baselines/ci --rule rougeL:-1%
    harness gate results/default/*/ --rule general/perplexity:+5%:vs-zero-shot
    ```
    """
    from harness.rundir.record import load_run
    from harness.views import gate

    try:
        cand = load_run(candidate)
        base = load_run(baseline) if baseline is not None else None
        outcome = gate.run_gate(cand, base, cli_rules=rule or [], allow_noop=allow_noop)
    except HarnessError as e:
        fail(e)
    for w in outcome.warnings:
        warning(w)
    show(outcome.markdown)
    _append_summary(outcome.markdown, os.environ.get("GITHUB_STEP_SUMMARY"))
    raise typer.Exit(outcome.exit_code)


def _append_summary(markdown: str, summary: str | None) -> None:
    """A summary file that cannot be written loses the summary, not the gate's verdict."""
    if not summary:
        return
    try:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")
    except OSError as e:
        warning(f"cannot append to $GITHUB_STEP_SUMMARY ({summary}): {e.strerror}")


def report_command(
    run_: Annotated[str, typer.Argument(metavar="RUN", help="Run directory.")],
) -> None:
    """Re-render report.html and report.md from the stored record alone (no torch).

    Example:

    ```
    harness report results/default/20261122T101500-a1b2c3
    ```
    """
    from harness.rundir.record import load_run
    from harness.rundir.results import REPORT_FILES, check_writable
    from harness.views import report

    try:
        loaded = load_run(run_)
        check_writable(loaded.path, *REPORT_FILES)
        paths = report.write_reports(loaded)
    except HarnessError as e:
        fail(e)
    for p in paths:
        show(str(p))
