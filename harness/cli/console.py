"""What the CLI prints, and how. Messages are printed as plain text, never as rich markup: a
key, a path or a value such as ``[/red]`` must reach the user as written.

Exit codes: 0 ok; 1 a regression was found or a run failed; 2 bad input (config, data, usage).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from harness.errors import HarnessError

EXIT_INPUT = 2


class PlainConsole(Console):
    """Every print goes through here, so no caller can forget: text reaches the terminal with
    its control characters escaped (formatting.printable; names in records, data and suites
    come from files), and never as rich markup or emoji codes (an arm named ``[/red]``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # before layout, so a table sizes its columns for the escaped text
        return super().render_str(escaped(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # after layout: what a Text (a progress line) still holds; control segments are rich's
        # own cursor moves
        return super()._render_buffer(
            s if s.control else Segment(escaped(s.text), s.style) for s in buffer)


def escaped(text: str) -> str:
    """formatting.printable, imported only for text that may need it: formatting pulls in
    NumPy (0.2 s), which `harness --version` need not wait for."""
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    from harness.views import formatting

    return formatting.printable(text)


# Piped output (CI logs, `| tee`) would otherwise wrap the summary table at 80 columns.
out = PlainConsole() if sys.stdout.isatty() else PlainConsole(width=120)
err = PlainConsole(stderr=True)


def say(label: str, style: str, message: str) -> None:
    """One stderr line per message line: a coloured label, then the message as written (its
    control characters escaped)."""
    for line in message.splitlines() or [""]:
        err.print(Text.assemble((label, style), " ", escaped(line)), soft_wrap=True,
                  highlight=False)


def error(message: str) -> None:
    say("error:", "red", message)


def warning(message: str) -> None:
    say("warning:", "yellow", message)


def show(text: str) -> None:
    """``text`` on stdout as one plain line (a long one is not wrapped)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def fail(e: HarnessError) -> NoReturn:
    error(str(e))
    raise typer.Exit(e.exit_code)
