"""Progress reporting for long stages (rich).

Library code takes a `Progress` and calls it; only the CLI builds the rich one that draws.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Column
from rich.text import Text

from harness.views import formatting as F

# advance(n) moves a bar by n; advance(0, info="loss 1.23") shows the latest numbers beside it.
Advance = Callable[..., None]


class Progress(Protocol):
    def stage(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def task(self, description: str, total: int | None) -> Advance: ...


class NullProgress:
    def stage(self, text: str) -> None:
        logging.getLogger("harness").info(text)

    def warn(self, text: str) -> None:
        logging.getLogger("harness").warning(text)

    def task(self, description: str, total: int | None) -> Advance:
        return lambda n, info=None: None


class RichProgress:
    def __init__(self, bar: RichBar):
        self.bar = bar

    # Text here names arms and quotes files: formatting.printable escapes it before layout.
    def stage(self, text: str) -> None:
        self.bar.console.print(Text.assemble(("> ", "bold"), F.printable(text)),
                               highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.bar.console.print(Text.assemble(("warning: ", "yellow"), F.printable(text)),
                               highlight=False, soft_wrap=True)

    def task(self, description: str, total: int | None) -> Advance:
        tid = self.bar.add_task(F.printable(description), total=total, info="")

        def advance(n: int, info: str | None = None) -> None:
            info = info and F.printable(info)
            if info:
                self.bar.update(tid, advance=n, info=info)
            else:
                self.bar.update(tid, advance=n)
            if info and not self.bar.console.is_terminal:
                self._line(tid, info)

        return advance

    def _line(self, tid: Any, info: str) -> None:
        """Without a terminal (CI logs, `| tee`) no bar is drawn: one line per logged step, so a
        ten-minute training is never silent."""
        t = self.bar.tasks[tid]
        eta = "" if t.time_remaining is None else f", ETA {F.clock(t.time_remaining)}"
        self.bar.console.print(
            f"{t.description}: step {int(t.completed)}/{int(t.total or 0)}, {info}, "
            f"elapsed {F.clock(t.elapsed or 0)}{eta}", markup=False, highlight=False,
            soft_wrap=True)


@contextlib.contextmanager
def console_progress(console: Console) -> Iterator[RichProgress]:
    quiet_libraries()
    # Step and ETA keep their width on any terminal (80 columns included): the bar is short
    # (12 columns) and the latest numbers wrap under themselves rather than push them away.
    # Descriptions and numbers are plain text, never markup: they name arms from the suite.
    fixed = Column(no_wrap=True)
    bar = RichBar(TextColumn("{task.description}", markup=False, table_column=fixed),
                  BarColumn(bar_width=12),
                  MofNCompleteColumn(table_column=fixed), TimeElapsedColumn(table_column=fixed),
                  TextColumn("ETA", table_column=fixed), TimeRemainingColumn(table_column=fixed),
                  TextColumn("{task.fields[info]}", markup=False,
                             table_column=Column(ratio=1)),
                  console=console, expand=True)
    with bar:
        yield RichProgress(bar)


def quiet_libraries() -> None:
    """transformers/datasets draw their own tqdm bars and warnings; ours replace them.
    bitsandbytes warns on import (no optional `kernels` package) before a run has a log file,
    and offline the `kernels` package (which transformers requires) warns that it skipped a
    hub trust check for bitsandbytes' CPU kernel, on every run of the README's first command."""
    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
