"""Exports of an adapter arm: what is deployed instead of the adapter, built here so the run
can evaluate it as an arm of its own (``<from>+<format>``) and pair it with its source.

``merged``: the adapter merged into the base's weights (peft ``merge_and_unload``), in the
base's dtype; a QLoRA adapter merges into the de-quantized (unquantized) base, as people
deploy it. The artifact is saved as a transformers folder to measure its size and sha256;
it is kept in the run directory only when the suite asks (``keep``): weights are large.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.run import memory

RUNTIME = "transformers"  # what evaluates a merged export: the same stack as the adapter


@dataclass(frozen=True)
class Built:
    model: Any  # ready to evaluate
    info: dict[str, Any]  # the record's arms.<arm>.export


def merged(load_base: Callable[[], Any], adapter: Path, tok: Any, device: str,
           keep: Path | None) -> Built:
    """The adapter in ``adapter`` merged into a freshly loaded, unquantized base; saved into
    ``keep`` (or a temporary folder) for its bytes and sha256."""
    from peft import PeftModel

    start = time.perf_counter()
    with memory.PeakMemory(device) as peak:
        model = PeftModel.from_pretrained(load_base(), str(adapter)).merge_and_unload()
        seconds = time.perf_counter() - start
        with _folder(keep) as out:
            model.save_pretrained(str(out))
            tok.save_pretrained(str(out))
            size, digest = _weights(out)
    return Built(model.eval(), {
        "format": "merged", "runtime": RUNTIME, "bytes": size, "sha256": digest,
        "seconds": round(seconds, 3), "peak_memory_bytes": peak.bytes,
        "path": str(keep) if keep else None, "dtype": str(next(model.parameters()).dtype)})


@contextlib.contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    tmp = Path(tempfile.mkdtemp(prefix="harness-export-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _weights(folder: Path) -> tuple[int, str]:
    """Bytes and sha256 of the weight files (safetensors shards, in name order)."""
    files = sorted(folder.glob("*.safetensors"))
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return sum(f.stat().st_size for f in files), h.hexdigest()
