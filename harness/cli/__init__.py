"""Command-line interface: the only package that prints or chooses exit codes (exit codes and
printing: harness/cli/console.py). The commands, in the order `harness --help` lists them, are
registered here; each lives in the module of its concept."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated

import typer

from harness import __version__
from harness.cli import checking, reading, running
from harness.cli.console import show
from harness.cli.options import PlainCommand, PlainGroup

app = typer.Typer(
    cls=PlainGroup,
    add_completion=False,
    no_args_is_help=True,
    # Markdown: docstrings keep their fenced examples, and brackets in them are not markup.
    rich_markup_mode="markdown",
    help="Benchmark and evaluate parameter-efficient fine-tuning: zero-shot vs adapter, "
    "on the same items, with paired significance.",
)


def _version(value: bool) -> None:
    if value:
        show(f"harness {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True,
        callback=_version)] = False,
) -> None:
    """Benchmark and evaluate parameter-efficient fine-tuning: zero-shot vs adapter, on the
    same items, with paired significance."""


for _name, _command in (
    ("run", running.run_command),
    ("resume", running.resume_command),
    ("validate", checking.validate_command),
    ("plan", checking.plan_command),
    ("compare", reading.compare_command),
    ("gate", reading.gate_command),
    ("report", reading.report_command),
    ("merge", running.merge_command),
    ("export", running.export_command),
):
    app.command(_name, cls=PlainCommand)(_command)


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
