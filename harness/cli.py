"""Command-line interface. The only module that prints or chooses exit codes.

Exit codes: 0 ok; 1 a regression was found or a run failed; 2 bad input (config, data, usage).
Messages are printed as plain text, never as rich markup: a key, a path or a value such as
``[/red]`` must reach the user as written.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.segment import Segment
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from harness import __version__
from harness.errors import HarnessError

EXIT_INPUT = 2
# typer checks --format against compare's formats: a bad one is a usage error (exit 2) that
# lists them. Spelled here, not imported: compare pulls in NumPy, which tripled the start-up
# time of every command (0.11 -> 0.30 s for --version); a test keeps both lists equal.
class CompareFormat(enum.StrEnum):
    md = "md"
    csv = "csv"
    json = "json"
    html = "html"


COMPARE_FORMATS = tuple(f.value for f in CompareFormat)


# ---------------------------------------------------------------- help without type noise


def _plain_params(params: list[Any]) -> list[Any]:
    """Typer prints a type beside every parameter (`<list[str]>`, `<path>`, `<bool>` on
    --help) and braces around required arguments in the usage line. Show only the metavars
    we chose. Instance attributes, so a typer without these hooks just ignores them."""
    for p in params:
        if p.param_type_name == "argument":
            p.display_type_rich = lambda ctx: None
            p._usage_display_name = lambda p=p: _usage_name(p)
        else:
            p.display_type_rich = lambda ctx, p=p: p.metavar
    return params


def _usage_name(p: Any) -> str:
    name = p.metavar or p.name.upper()
    return name if p.nargs == 1 or name.endswith("...") else name + "..."


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    # Markdown: docstrings keep their fenced examples, and brackets in them are not markup.
    rich_markup_mode="markdown",
    help="Benchmark and evaluate parameter-efficient fine-tuning: zero-shot vs adapter, "
    "on the same items, with paired significance.",
)


class _Console(Console):
    """Every print goes through here, so no caller can forget: text reaches the terminal with
    its control characters escaped (formatting.printable; names in records, data and suites
    come from files), and never as rich markup or emoji codes (an arm named ``[/red]``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # before layout, so a table sizes its columns for the escaped text
        return super().render_str(_escaped(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # after layout: what a Text (a progress line) still holds; control segments are rich's
        # own cursor moves
        return super()._render_buffer(
            s if s.control else Segment(_escaped(s.text), s.style) for s in buffer)


def _escaped(text: str) -> str:
    """formatting.printable, imported only for text that may need it: formatting pulls in
    NumPy (0.2 s), which `harness --version` need not wait for."""
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    from harness import formatting

    return formatting.printable(text)


# Piped output (CI logs, `| tee`) would otherwise wrap the summary table at 80 columns.
out = _Console() if sys.stdout.isatty() else _Console(width=120)
err = _Console(stderr=True)

AdapterOpt = Annotated[
    Optional[list[str]],
    typer.Option("--adapter", metavar="NAME=DIR",
                 help="Also evaluate an existing PEFT adapter (a folder or a hub id) as arm "
                      "NAME on the same base and items. Repeatable."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE",
                 help="Override a suite key, e.g. `train.max_steps=5` (the value is read as "
                      "TOML, else as a plain string). Repeatable."),
]


# ---------------------------------------------------------------- printing


def _say(label: str, style: str, message: str) -> None:
    """One stderr line per message line: a coloured label, then the message as written (its
    control characters escaped)."""
    for line in message.splitlines() or [""]:
        err.print(Text.assemble((label, style), " ", _escaped(line)), soft_wrap=True,
                  highlight=False)


def _error(message: str) -> None:
    _say("error:", "red", message)


def _warning(message: str) -> None:
    _say("warning:", "yellow", message)


def _print(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(e: HarnessError) -> None:
    _error(str(e))
    raise typer.Exit(e.exit_code)


# ---------------------------------------------------------------- commands


def _version(value: bool) -> None:
    if value:
        _print(f"harness {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True,
        callback=_version)] = False,
) -> None:
    """Benchmark and evaluate parameter-efficient fine-tuning: zero-shot vs adapter, on the
    same items, with paired significance."""


@app.command(cls=_Command)
def run(
    suite: Annotated[Path, typer.Argument(metavar="SUITE", help="Suite TOML file.")],
    set_: SetOpt = None,
    adapter: AdapterOpt = None,
    eval_only: Annotated[bool, typer.Option(
        "--eval-only", help="Skip the suite's [train] / [sweep]: the zero-shot baseline and "
        "the existing adapters only.")] = False,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", metavar="I/N", help="Run shard I (0-based) of N: the adapter arms I, I+N, "
        "I+2N, ... of the sweep, the zero-shot baseline, and the existing adapters in shard "
        "0 only. Join the shards with `harness merge`.")] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Results directory; a run lands in DIR/SUITE_NAME/RUN_ID/."
    )] = Path("results"),
) -> None:
    """Evaluate the base model zero-shot, train the adapter(s), evaluate them on the same items.

    Existing adapters (`[[adapters]]` in the suite, or `--adapter NAME=DIR`: a folder or a
    hub id) are evaluated on the same base and items. Exit 1 when the run (or an arm) fails;
    SIGTERM or Ctrl-C still saves a `failed` record.

    Example:

    ```
    harness run suites/default.toml --set train.max_steps=5 --out results
    harness run suites/default.toml --eval-only --adapter mine=results/default/RUN_ID/adapters/lora
    harness run suites/llama32_finetome_sweep.toml --shard 0/3 --out results/shards
    ```
    """
    from harness import pipeline, progress, suitefile
    from harness.shard import Shard

    try:
        part = Shard.parse(shard) if shard is not None else None
        s = suitefile.load_suite(suite, set_ or [], adapter or [])
    except HarnessError as e:
        _fail(e)
    if eval_only:
        s = s.model_copy(update={"train": None, "sweep": None})
    _offline_without_network(s)
    if _other_rank(s):
        raise typer.Exit(_worker(s, part))
    try:
        with _stop_on_signals(), progress.console_progress(err) as prog:
            outcome = pipeline.run_suite(s, out_dir, progress=prog, shard=part, source=suite)
    except HarnessError as e:
        _fail(e)
    except KeyboardInterrupt as e:  # before the run started: the pipeline records the rest
        why = str(e) or "SIGINT"
        _error(f"interrupted by {why} before the run started; nothing was recorded")
        raise typer.Exit(1) from None
    _outcome(outcome)


def _outcome(outcome: Any) -> None:
    """The summary table and the run directory; exit 1 when the run or an arm failed."""
    _print_tables(outcome.record)
    _print(f"run directory: {outcome.path}")
    if outcome.record["status"] != "success":
        _error("run failed: " + outcome.record["error"]["message"])
        raise typer.Exit(1)
    failed = [n for n, a in outcome.record["arms"].items() if a.get("status") == "failed"]
    if failed:
        _error(f"{len(failed)} arm(s) failed: {', '.join(failed)} (see run.json)")
        raise typer.Exit(1)


def _print_tables(record: dict[str, Any]) -> None:
    """The summary table, then the across-seeds table of a run with ``train.seeds``."""
    from harness import progress

    out.print(progress.summary_table(record))
    seeds = progress.seed_table(record)
    if seeds is not None:
        out.print(seeds)


@app.command(cls=_Command)
def resume(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="The run's staging folder (DIR/SUITE/.RUN_ID.partial), or "
        "DIR/SUITE/RUN_ID.")],
) -> None:
    """Continue a run that was killed (SIGKILL, a lost machine) or interrupted (SIGTERM,
    Ctrl-C) where it was, into the same run directory.

    The arms it had measured are kept, a training that was cut continues from its last
    checkpoint (same seed, same data order), and the rest runs. RUN_DIR is the hidden staging
    folder a killed run leaves, the `failed` run directory of an interrupted one, or
    DIR/SUITE/RUN_ID while only its staging folder exists. Refused (exit 2) while the run's
    process is alive, or when the harness version, the suite file, the data or the base
    model's files changed since it started, or when a kept arm's saved metrics are not what
    its saved per-item rows give.

    Example:

    ```
    harness resume results/default/.20261122T101500-a1b2c3.partial
    ```
    """
    from harness import distributed, pipeline, progress
    from harness import resume as resuming

    if distributed.active():
        _error("harness resume runs in one process; start it without torchrun / accelerate")
        raise typer.Exit(EXIT_INPUT)
    try:
        r = resuming.load(run_dir)
        with _stop_on_signals(), progress.console_progress(err) as prog:
            outcome = pipeline.run_suite(r.suite, r.out_dir, progress=prog, shard=r.shard,
                                         resumed=r)
    except HarnessError as e:
        _fail(e)
    except KeyboardInterrupt as e:
        _error(f"interrupted by {str(e) or 'SIGINT'} before the run resumed; it is unchanged")
        raise typer.Exit(1) from None
    _outcome(outcome)


def _other_rank(suite: Any) -> bool:
    """Under torchrun / accelerate: join the process group; True on every rank but 0."""
    from harness import distributed, modeling

    if not distributed.active():
        return False
    distributed.setup(modeling.pick_device(suite.model))
    return not distributed.is_main()


def _worker(suite: Any, shard: Any = None) -> int:
    """A rank other than 0: the same pipeline (its share of every evaluation, its part of
    training), its run directory staged in a temporary folder that is deleted, nothing
    printed. Returns the exit code of its part."""
    import tempfile

    from harness import pipeline

    with tempfile.TemporaryDirectory(prefix="harness-rank-") as tmp:
        try:
            outcome = pipeline.run_suite(suite, Path(tmp), shard=shard)  # rank 0's arms
        except (HarnessError, KeyboardInterrupt):
            return 1
    return 0 if outcome.record["status"] == "success" else 1


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM (timeout, CI cancellation, docker stop) and SIGINT end a run the same way: a
    KeyboardInterrupt in the main thread, which the pipeline turns into a saved `failed`
    record. The first signal restores the previous handlers, so a second one still kills a
    run whose record is being saved."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    kinds = (signal.SIGTERM, signal.SIGINT)
    previous = {k: signal.getsignal(k) for k in kinds}

    def restore() -> None:
        for k, handler in previous.items():
            signal.signal(k, handler)

    def stop(signum: int, frame: Any) -> None:
        restore()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for k in kinds:
        signal.signal(k, stop)
    try:
        yield
    finally:
        restore()


@app.command(cls=_Command)
def validate(
    suites: Annotated[list[Path], typer.Argument(metavar="SUITE...", help="Suite TOML files.")],
    set_: SetOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Check suites (schema, data files, field mapping, templates, model source, gate rules)
    without loading weights; every problem of a suite is listed, one line each.

    Example:

    ```
    harness validate suites/*.toml --set data.eval_size=8
    ```
    """
    from harness import suitefile

    failed, loaded = 0, []
    for path in suites:
        try:
            loaded.append((path, suitefile.load_suite(path, set_ or [], adapter or [])))
        except HarnessError as e:
            _error(str(e))
            failed = max(failed, e.exit_code)
    _offline_without_network(*(s for _, s in loaded))
    for path, s in loaded:
        failed = max(failed, _validate_one(path, s))
    raise typer.Exit(failed)


def _validate_one(path: Path, suite: Any) -> int:
    from harness import pipeline

    try:
        info = pipeline.preflight(suite, offline_ok=True)
    except HarnessError as e:
        _error("\n".join(ln if str(path) in ln else f"{path}: {ln}" for ln in str(e).splitlines()))
        return e.exit_code
    for w in info.warnings:
        _warning(f"{path}: {w}")
    for u in info.unchecked:
        _warning(f"{path}: not checked (offline): {u}")
    _print(f"{path}: ok ({info})" + (" except what needs the network" if info.unchecked else ""))
    return 0


def _offline_without_network(*suites: Any) -> None:
    """With no route to the hub, huggingface_hub and datasets retry for minutes before they
    fail (35-48 s for one hub adapter); offline mode makes them read the local cache and give
    up at once. Asked once per command, only of suites that use the hub (`validate`, `plan`,
    `run`), and set before either library is imported (they read the variable at import)."""
    from harness import config

    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or not any(map(config.uses_hub, suites)):
        return
    from harness.modeling import hub_reachable

    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        _warning("the Hugging Face Hub cannot be reached: working offline, from the local "
                 "cache only")


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


@app.command(cls=_Command)
def plan(
    suite: Annotated[Path, typer.Argument(metavar="SUITE", help="Suite TOML file.")],
    set_: SetOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Print arms, eval sets, steps, batch sizes, parameter counts and weight memory without
    loading weights. Offline with a hub model whose config is not cached, everything else is
    planned and the parameters and memory are marked as not planned (exit 0).

    Example:

    ```
    harness plan suites/llama32_finetome_sweep.toml
    ```
    """
    from harness import plan as planning
    from harness import suitefile

    try:
        s = suitefile.load_suite(suite, set_ or [], adapter or [])
        _offline_without_network(s)
        _print(planning.render_plan(planning.make_plan(s)))
    except HarnessError as e:
        _fail(e)


@app.command(cls=_Command)
def compare(
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
    from harness import compare as comparing
    from harness import config
    from harness.results import check_writable

    try:
        if output is not None:
            check_writable(output.parent, output.name)
        level = config.DEFAULT_ALPHA if alpha is None else alpha
        text = comparing.compare_runs(_readable_runs(runs), fmt=fmt.value, alpha=level)
    except HarnessError as e:
        _fail(e)
    _emit(text, output)


def _readable_runs(args: list[str]) -> list[Any]:
    """The runs that load. Among several, an unreadable one (corrupt, half-copied, from a newer
    harness) is a warning and is skipped, as pytest-benchmark skips a corrupt saved run; with
    none left, or a lone run, it is the error."""
    from harness.errors import RecordError
    from harness.results import load_run

    loaded, bad = [], []
    for arg in args:
        try:
            loaded.append(load_run(arg))
        except RecordError as e:
            bad.append(e)
    if bad and not loaded:
        raise bad[0]
    for err in bad:
        _warning(f"skipped: {err}")
    return loaded


@app.command(cls=_Command)
def gate(
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
) -> None:
    """Fail (exit 1) when the candidate regresses against the baseline beyond the rules.

    A rule ending in `:vs-zero-shot` compares each adapter arm with the zero-shot arm of the
    same run (a forgetting check within one run); without `--baseline` only those rules
    apply. The Markdown summary is printed and appended to `$GITHUB_STEP_SUMMARY` when set.

    Examples:

    ```
    harness gate results/ci/*/ --baseline results/baselines/ci --rule rougeL:-1%
    harness gate results/default/*/ --rule general/perplexity:+5%:vs-zero-shot
    ```
    """
    from harness import gate as gating
    from harness.results import load_run

    try:
        cand = load_run(candidate)
        base = load_run(baseline) if baseline is not None else None
        outcome = gating.run_gate(cand, base, cli_rules=rule or [])
    except HarnessError as e:
        _fail(e)
    for w in outcome.warnings:
        _warning(w)
    _print(outcome.markdown)
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
        _warning(f"cannot append to $GITHUB_STEP_SUMMARY ({summary}): {e.strerror}")


@app.command(cls=_Command)
def report(run_: Annotated[str, typer.Argument(metavar="RUN", help="Run directory.")]) -> None:
    """Re-render report.html and report.md from the stored record alone (no torch).

    Example:

    ```
    harness report results/default/20261122T101500-a1b2c3
    ```
    """
    from harness import report as reporting
    from harness.results import check_writable, load_run

    try:
        loaded = load_run(run_)
        check_writable(loaded.path, *reporting.REPORT_FILES)
        paths = reporting.write_reports(loaded)
    except HarnessError as e:
        _fail(e)
    for p in paths:
        _print(str(p))


@app.command(cls=_Command)
def merge(
    runs: Annotated[list[str], typer.Argument(
        metavar="RUN...", help="The shards' run directories or run.json files: every shard "
                               "0..N-1 of one suite, once.")],
    out_dir: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Results directory; the merged run lands in "
                                     "DIR/SUITE_NAME/RUN_ID/.")],
) -> None:
    """Join the shards of one sweep (`harness run SUITE --shard I/N`) into one run directory.

    The merged run holds shard 0's baseline and existing adapters, every shard's trained
    arms with their adapters and logs, comparisons recomputed on the joined arms, and the
    reports: compare / gate / report read it like any run. Shards of other suites, configs,
    eval items, models or harness versions, a missing, repeated or failed shard, or one whose
    run.json metrics are not what its own per-item rows give: exit 2, nothing written.

    Example:

    ```
    harness merge results/shards/llama32_finetome_sweep/* --out results
    ```
    """
    from harness import merge as merging
    from harness.results import load_run

    try:
        with _stop_on_signals():  # the staged merge is removed, not left to look resumable
            outcome = merging.merge_runs([load_run(r) for r in runs], out_dir)
    except HarnessError as e:
        _fail(e)
    except KeyboardInterrupt as e:
        _error(f"interrupted by {str(e) or 'SIGINT'}: nothing was written")
        raise typer.Exit(1) from None
    _print_tables(outcome.record)
    _print(f"run directory: {outcome.path}")
    failed = [n for n, a in outcome.record["arms"].items() if a.get("status") == "failed"]
    if failed:
        _error(f"{len(failed)} arm(s) failed: {', '.join(failed)} (see run.json)")
        raise typer.Exit(1)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        text = _escaped(text)  # a table for the terminal: names from records escaped
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        _error(f"--output {output}: cannot write: {e.strerror}")
        raise typer.Exit(EXIT_INPUT) from None
    _print(f"wrote {output}")


# ---------------------------------------------------------------- process setup


def _has_gpu(environ: MutableMapping[str, str], dev: Path = Path("/dev")) -> bool:
    """A GPU without importing torch (the point is to configure it before it loads): an
    NVIDIA or AMD device node, unless CUDA_VISIBLE_DEVICES hides every device."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any((dev / node).exists() for node in ("nvidiactl", "nvidia0", "kfd"))


def quiet_openmp(environ: MutableMapping[str, str] = os.environ,
                 dev: Path = Path("/dev")) -> None:
    """OMP_WAIT_POLICY=PASSIVE on CPU-only machines unless the user chose a policy: libgomp's
    spin-waiting threads made evaluation 4x slower on a 2-core CPU shared with another job.
    Not with a GPU: there PASSIVE made a small model's evaluation 2.8x slower."""
    if "OMP_WAIT_POLICY" not in environ and not _has_gpu(environ, dev):
        environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main() -> None:
    quiet_openmp()  # before anything imports torch: OpenMP reads it once, at load
    app()


if __name__ == "__main__":
    main()
