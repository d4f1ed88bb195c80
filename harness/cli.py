"""Command-line interface. The only module that prints or chooses exit codes.

Exit codes: 0 ok; 1 a regression was found or a run failed; 2 bad input (config, data, usage).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from harness.errors import HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark and evaluate parameter-efficient fine-tuning: zero-shot vs adapter, "
    "on the same items, with paired significance.",
)
# Piped output (CI logs, `| tee`) would otherwise wrap the summary table at 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=120)
err = Console(stderr=True)

SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a suite key: dotted.key=value (value read as TOML, "
                 "else as a plain string). Repeatable."),
]


def _fail(e: HarnessError) -> None:
    err.print(f"[red]error:[/red] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(e.exit_code)


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="Suite TOML file.")],
    set_: SetOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Results directory.")] = Path("results"),
) -> None:
    """Evaluate the base model zero-shot, train the adapter(s), evaluate them on the same items."""
    from harness import config, pipeline, progress

    try:
        s = config.load_suite(suite, set_ or [])
        with progress.console_progress(err) as prog:
            outcome = pipeline.run_suite(s, out_dir, progress=prog)
    except HarnessError as e:
        _fail(e)
    out.print(progress.summary_table(outcome.record))
    out.print(f"run directory: {outcome.path}", soft_wrap=True, highlight=False)
    if outcome.record["status"] != "success":
        err.print("run failed: " + outcome.record["error"]["message"], soft_wrap=True,
                  markup=False, highlight=False)
        raise typer.Exit(1)
    failed = [n for n, a in outcome.record["arms"].items() if a.get("status") == "failed"]
    if failed:
        err.print(f"{len(failed)} arm(s) failed: {', '.join(failed)} (see run.json)",
                  soft_wrap=True, markup=False)
        raise typer.Exit(1)


@app.command()
def validate(
    suites: Annotated[list[Path], typer.Argument(help="Suite TOML files.")],
    set_: SetOpt = None,
) -> None:
    """Check suites (schema, data files, field mapping, templates, model source) without
    loading weights."""
    from harness import config, pipeline

    failed = 0
    for path in suites:
        try:
            s = config.load_suite(path, set_ or [])
            info = pipeline.preflight(s)
            out.print(f"{path}: ok ({info})", highlight=False, soft_wrap=True)
        except HarnessError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            failed = max(failed, e.exit_code)
    raise typer.Exit(failed)


@app.command()
def plan(
    suite: Annotated[Path, typer.Argument(help="Suite TOML file.")],
    set_: SetOpt = None,
) -> None:
    """Print steps, batch sizes, parameter counts and weight memory without loading weights."""
    from harness import config
    from harness import plan as planning

    try:
        s = config.load_suite(suite, set_ or [])
        out.print(planning.render_plan(planning.make_plan(s)), highlight=False, markup=False,
                  soft_wrap=True)
    except HarnessError as e:
        _fail(e)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run directories or run.json files.")],
    fmt: Annotated[str, typer.Option("--format", help="md | csv | json | html")] = "md",
    output: Annotated[Optional[Path], typer.Option("--output", help="Write to FILE.")] = None,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
) -> None:
    """Relative-gain table of every adapter arm against its baseline, with CIs and p-values."""
    from harness import compare as comparing
    from harness.results import load_run

    try:
        text = comparing.compare_runs([load_run(r) for r in runs], fmt=fmt, alpha=alpha)
    except HarnessError as e:
        _fail(e)
    _emit(text, output)


@app.command()
def gate(
    candidate: Annotated[str, typer.Argument(help="Candidate run directory or run.json.")],
    baseline: Annotated[str, typer.Option("--baseline", help="Baseline run.")],
    rule: Annotated[Optional[list[str]], typer.Option(
        "--rule", help="e.g. rougeL:-1%  perplexity:+2%  loss:+0.05  (repeatable)")] = None,
) -> None:
    """Fail (exit 1) when the candidate regresses against the baseline beyond the rules."""
    from harness import gate as gating
    from harness.results import load_run

    try:
        outcome = gating.run_gate(load_run(candidate), load_run(baseline), cli_rules=rule or [])
    except HarnessError as e:
        _fail(e)
    for w in outcome.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    out.print(outcome.markdown, highlight=False, markup=False, soft_wrap=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(outcome.markdown + "\n")
    raise typer.Exit(outcome.exit_code)


@app.command()
def report(run_: Annotated[str, typer.Argument(metavar="RUN", help="Run directory.")]) -> None:
    """Re-render report.html and report.md from the stored record alone."""
    from harness import report as reporting
    from harness.results import load_run

    try:
        paths = reporting.write_reports(load_run(run_))
    except HarnessError as e:
        _fail(e)
    for p in paths:
        out.print(str(p), highlight=False, soft_wrap=True)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    output.write_text(text, encoding="utf-8")
    out.print(f"wrote {output}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
