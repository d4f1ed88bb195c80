"""``--shard I/N``: which of a sweep's adapter arms one machine trains (`harness merge` joins
the shards' run directories)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import InputError

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
