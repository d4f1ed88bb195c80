"""`harness run`, `harness resume` and `harness merge`: the commands that write a run
directory, and how they end (signals, the summary, exit codes)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from harness.cli.checking import offline_without_network
from harness.cli.console import EXIT_INPUT, err, error, fail, show
from harness.cli.options import AdapterOpt, ExportOpt, SetOpt
from harness.errors import HarnessError


def run_command(
    suite: Annotated[Path, typer.Argument(metavar="SUITE", help="Suite TOML file.")],
    set_: SetOpt = None,
    adapter: AdapterOpt = None,
    export: ExportOpt = None,
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
    from harness.run import pipeline, progress
    from harness.suite import suitefile
    from harness.suite.sweep import Shard

    try:
        part = Shard.parse(shard) if shard is not None else None
        s = suitefile.load_suite(suite, set_ or [], adapter or [], export or [])
    except HarnessError as e:
        fail(e)
    if eval_only:
        s = s.model_copy(update={"train": None, "sweep": None})
    offline_without_network(s)
    if _other_rank(s):
        raise typer.Exit(_worker(s, part))
    try:
        with stop_on_signals(), progress.console_progress(err) as prog:
            outcome = pipeline.run_suite(s, out_dir, progress=prog, shard=part, source=suite)
    except HarnessError as e:
        fail(e)
    except KeyboardInterrupt as e:  # before the run started: the pipeline records the rest
        why = str(e) or "SIGINT"
        error(f"interrupted by {why} before the run started; nothing was recorded")
        raise typer.Exit(1) from None
    _outcome(outcome)


def _outcome(outcome: Any) -> None:
    """The summary table and the run directory; exit 1 when the run or an arm failed."""
    from harness.cli.summary import print_tables
    from harness.rundir.record import Status

    print_tables(outcome.record)
    show(f"run directory: {outcome.path}")
    if outcome.record["status"] != Status.SUCCESS:
        error("run failed: " + outcome.record["error"]["message"])
        raise typer.Exit(1)
    failed = [n for n, a in outcome.record["arms"].items() if a.get("status") == Status.FAILED]
    if failed:
        error(f"{len(failed)} arm(s) failed: {', '.join(failed)} (see run.json)")
        raise typer.Exit(1)


def resume_command(
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
    from harness.run import distributed, pipeline, progress, resume

    if distributed.active():
        error("harness resume runs in one process; start it without torchrun / accelerate")
        raise typer.Exit(EXIT_INPUT)
    try:
        r = resume.load(run_dir)
        with stop_on_signals(), progress.console_progress(err) as prog:
            outcome = pipeline.run_suite(r.suite, r.out_dir, progress=prog, shard=r.shard,
                                         resumed=r)
    except HarnessError as e:
        fail(e)
    except KeyboardInterrupt as e:
        error(f"interrupted by {str(e) or 'SIGINT'} before the run resumed; it is unchanged")
        raise typer.Exit(1) from None
    _outcome(outcome)


def _other_rank(suite: Any) -> bool:
    """Under torchrun / accelerate: join the process group; True on every rank but 0."""
    from harness.run import distributed, modeling

    if not distributed.active():
        return False
    distributed.setup(modeling.pick_device(suite.model))
    return not distributed.is_main()


def _worker(suite: Any, shard: Any = None) -> int:
    """A rank other than 0: the same pipeline (its share of every evaluation, its part of
    training), its run directory staged in a temporary folder that is deleted, nothing
    printed. Returns the exit code of its part."""
    import tempfile

    from harness.run import pipeline
    from harness.rundir.record import Status

    with tempfile.TemporaryDirectory(prefix="harness-rank-") as tmp:
        try:
            outcome = pipeline.run_suite(suite, Path(tmp), shard=shard)  # rank 0's arms
        except (HarnessError, KeyboardInterrupt):
            return 1
    return 0 if outcome.record["status"] == Status.SUCCESS else 1


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
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


def merge_command(
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
    from harness.cli.summary import print_tables
    from harness.run import merge
    from harness.rundir.record import Status, load_run

    try:
        with stop_on_signals():  # the staged merge is removed, not left to look resumable
            outcome = merge.merge_runs([load_run(r) for r in runs], out_dir)
    except HarnessError as e:
        fail(e)
    except KeyboardInterrupt as e:
        error(f"interrupted by {str(e) or 'SIGINT'}: nothing was written")
        raise typer.Exit(1) from None
    print_tables(outcome.record)
    show(f"run directory: {outcome.path}")
    failed = [n for n, a in outcome.record["arms"].items() if a.get("status") == Status.FAILED]
    if failed:
        error(f"{len(failed)} arm(s) failed: {', '.join(failed)} (see run.json)")
        raise typer.Exit(1)


def export_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory.")],
    arm: Annotated[str, typer.Argument(metavar="ARM", help="An adapter arm of the run.")],
    fmt: Annotated[str, typer.Option(
        "--format", metavar="FORMAT", help="merged: the adapter merged into the base's "
        "weights (a transformers folder); merged-nf4 / merged-int8: those weights "
        "quantized with bitsandbytes; gguf-f16 / gguf-q8_0 / gguf-q4_0: a GGUF file.")
    ] = "merged",
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="A new or empty folder for the artifact.")] = Path("export"),
) -> None:
    """Write the deployable artifact of an adapter arm: the folder `AutoModelForCausalLM`
    loads, with a model card naming the base, the adapter's sha256 and the run.

    Example:

    ```
    harness export results/default/RUN_ID lora --format merged --out deploy/lora-merged
    ```
    """
    from harness.run import exports

    try:
        info = exports.export_arm(run_dir, arm, fmt, out)
    except HarnessError as e:
        fail(e)
    show(f"{arm} ({fmt}): {out} ({info['bytes']:,} bytes of weights, sha256 {info['sha256']})")
