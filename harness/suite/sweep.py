"""Adapter arms of a suite: one `lora` arm, or one arm per sweep cell (named cells + grid),
each once per training seed when ``train.seeds`` is set (``lora@s0``, ``lora@s1``, ...); and
``--shard I/N``, which of those arms one machine trains (`harness merge` joins the shards' run
directories).

Each cell is the suite with dotted-key overrides applied and re-validated, so a cell can change
anything a `--set` can (train.r, train.learning_rate, train.max_steps, ...). The zero-shot
baseline does not depend on the cells and is evaluated once for all of them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import ConfigError, InputError
from harness.suite import arms, methods
from harness.suite.config import Suite
from harness.suite.suitefile import with_overrides

# Tables a cell may not override: the baseline, the eval items and where the run is tracked
# are shared by all cells.
_SHARED = ("name", "model", "data", "eval", "stats", "sweep", "tracking")


def expand(suite: Suite) -> list[tuple[str, Suite]]:
    """(arm name, cell suite) for every adapter arm; [] for an eval-only suite."""
    return [arm for name, cell in _cells(suite) for arm in _seeded(name, cell)]


def _seeded(name: str, cell: Suite) -> list[tuple[str, Suite]]:
    """One arm per seed of ``train.seeds`` (a cell may set its own), each with train.seed."""
    seeds = cell.train.seeds if cell.train else None
    if not seeds:
        return [(name, cell)]
    return [(arms.seeded(name, s), with_overrides(cell, {"train.seed": s, "train.seeds": None}))
            for s in seeds]


def _cells(suite: Suite) -> list[tuple[str, Suite]]:
    if suite.train is None:
        if suite.sweep:
            raise ConfigError(f"{suite.name}: [sweep] needs a [train] table")
        return []
    if suite.sweep is None:
        return [(arms.DEFAULT_ADAPTER, suite)]
    cells = ([(c.name, dict(c.set)) for c in suite.sweep.cells]
             + grid_cells(suite.sweep.grid, suite.train.method))
    if not cells:
        raise ConfigError(f"{suite.name}: [sweep] has neither cells nor grid")
    names = [n for n, _ in cells]
    bad = sorted({n for n in names if names.count(n) > 1 or n in arms.RESERVED})
    if bad:
        reserved = " or ".join(map(repr, sorted(arms.RESERVED)))
        raise ConfigError(f"{suite.name}: sweep cell names must be unique and not {reserved}: "
                          f"{bad}")
    return [(name, _cell(suite, name, sets)) for name, sets in cells]


def grid_cells(grid: dict[str, list[Any]], method: str = "lora"
               ) -> list[tuple[str, dict[str, Any]]]:
    """Cartesian product; names like `r8_learning_rate0.0002` from the keys' last parts. A
    grid key the cell's method does not take is left out of that cell (``train.r`` means
    nothing to ia3), so the ia3 cells of a method x rank grid are one cell, not one per rank."""
    if not grid:
        return []
    keys = list(grid)
    out: list[tuple[str, dict[str, Any]]] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        given = dict(zip(keys, values))
        cell_method = given.get("train.method", method)
        sets = {k: v for k, v in given.items() if _applies(cell_method, k)}
        name = "_".join(f"{k.rsplit('.', 1)[-1]}{_slug(v)}" for k, v in sets.items())
        if len(sets) == len(given) or all(n != name for n, _ in out):
            out.append((name, sets))
    return out


def _applies(method: Any, key: str) -> bool:
    table, _, leaf = key.partition(".")
    return table != "train" or not isinstance(method, str) or methods.takes(method, leaf)


def _slug(value: Any) -> str:
    """A grid value as part of an arm name, which is also a folder name (adapters/<arm>/): a
    value such as ['q_proj'] or 'a/b' must not add brackets, quotes or a path separator."""
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9_.,-]+", "-", text).strip("-.") or "x"


def _cell(suite: Suite, name: str, sets: dict[str, Any]) -> Suite:
    bad = [k for k in sets if k.split(".")[0] in _SHARED]
    if bad:
        raise ConfigError(f"sweep cell {name!r}: cannot override {bad}: the zero-shot baseline, "
                          "eval items and trackers are shared by all cells")
    own = suite.train.method if suite.train is not None else None
    if sets.get("train.method", own) != own:
        # the suite's own knobs are its method's: a cell switching to ia3 drops [train] r
        sets = {**{f"train.{k}": None for k in methods.ALL_KNOBS
                   if not methods.takes(sets["train.method"], k)}, **sets}
    try:
        return with_overrides(suite, {**sets, "sweep": None})
    except ConfigError as e:
        raise ConfigError(f"sweep cell {name!r}: {e}") from e


# ---------------------------------------------------------------- shards

# Runs split by `harness run --shard I/N` at most: merge lists the shards it misses, one by one.
MAX_SHARDS = 1024


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: it takes the adapter arms i with i % count ==
    index."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/3"`` -> Shard(1, 3); InputError naming ``--shard`` otherwise."""
        head, sep, tail = text.strip().partition("/")
        if not (sep and head.strip().isdigit() and tail.strip().isdigit()):
            raise InputError(f"--shard {text!r}: expected I/N, this shard's 0-based index and "
                             "the number of shards, e.g. --shard 0/3")
        index, count = int(head), int(tail)
        if not 1 <= count <= MAX_SHARDS:
            raise InputError(f"--shard {text!r}: the number of shards N must be within 1 and "
                             f"{MAX_SHARDS:,}")
        if index >= count:
            raise InputError(f"--shard {text!r}: the index I is 0-based, so it must be in "
                             f"0..{count - 1}")
        return cls(index, count)

    def takes(self, i: int) -> bool:
        return i % self.count == self.index

    def as_record(self, trained: Sequence[str]) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "arms": list(trained)}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
