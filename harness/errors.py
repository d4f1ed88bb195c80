"""Exceptions raised by library code; only harness.cli turns them into messages and exit codes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages), else its type."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextlib.contextmanager
def quieted(logger: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """A library's own logger held at ``level`` for a block: where harness says the one
    clear line itself (a bad data file), or the library's set-up lines are no news."""
    log = logging.getLogger(logger)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


class HarnessError(Exception):
    """Base class. `exit_code` is what the CLI returns for it."""

    exit_code = 1


class InputError(HarnessError):
    """Bad input from the user: config, data, usage, paths. Exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """A suite file or override that does not validate."""


class DataError(InputError):
    """A data file or field mapping or template that cannot produce examples."""


class DatasetUnavailable(DataError):
    """A hub dataset that cannot be loaded here (no network and not in the local cache)."""


class ModelSourceError(InputError):
    """A model path, hub id or packaged GGUF that cannot be resolved."""


class ModelUnavailable(ModelSourceError):
    """A hub model whose config cannot be fetched here (no network and not in the cache)."""


class RecordError(InputError):
    """A run record that is missing, corrupt, or cannot be paired with another."""


class RunFailed(HarnessError):
    """A run started and failed; a `failed` record was written. Exit code 1."""


class RunInterrupted(RunFailed):
    """Ctrl-C or SIGTERM during a run; its `failed` record was written. Exit code 1."""
