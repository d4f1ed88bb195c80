"""sha256 of whole files (model weights, config, tokenizer), paid once per change of a file.

Nothing sampled identifies weights: size + mtime + the first and last MiB served the old
model's zero-shot loss (5.9946 instead of 6.0319) for weights that differed only in the middle
and kept their mtime, as ``cp -p``, ``rsync -a`` and ``tar x`` keep it. So every byte is
hashed, and the digest is kept in ``$HARNESS_CACHE/file_hashes.json`` under the file's path,
inode, size, mtime and ctime: a later run stats the file instead of reading it again. The
ctime is in the key because the kernel sets it on every write and on every mtime reset
(``os.utime``, ``touch -d``), and no user call can set it back.

A file changed less than ``RACY_S`` before it was read may change again within the same
timestamp tick (1-10 ms on Linux file systems) and keep its stat: its digest is used for
this call but not kept. No torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from harness.run.cachedir import cache_dir
from harness.rundir import results

log = logging.getLogger(__name__)

STORE_FILE = "file_hashes.json"
CHUNK_BYTES = 1 << 20  # streamed: a 538 MB weight file never sits in memory
RACY_S = 2.0


def file_sha256(path: Path) -> str:
    """The sha256 of the file's bytes, from the store when the file's stat is unchanged."""
    path = Path(path).resolve()
    started = time.time()
    st = path.stat()
    stamp = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    store = _read_store()
    known = store.get(str(path))
    if isinstance(known, list) and known[:4] == stamp:
        return str(known[4])
    digest = sha256_of(path)
    if started - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_S:
        _remember(store, str(path), [*stamp, digest])
    return digest


def sha256_of(path: Path) -> str:
    """Every byte, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _store_path() -> Path:
    return cache_dir() / STORE_FILE


def _read_store() -> dict[str, Any]:
    """path -> [inode, size, mtime_ns, ctime_ns, sha256]; an unreadable store is empty (every
    file is hashed again), never trusted."""
    try:
        store = json.loads(_store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return store if isinstance(store, dict) else {}


def _remember(store: dict[str, Any], key: str, entry: list[Any]) -> None:
    """Add ``entry`` and drop the files that are gone. Two writers at once: the last rename
    wins and the other's entry is hashed again next time, never a wrong one kept."""
    kept = {p: e for p, e in store.items() if Path(p).exists()}
    kept[key] = entry
    where = _store_path()
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        results.atomic_write_text(where, json.dumps(kept))
    except OSError as e:  # a read-only cache costs time, not correctness
        log.warning("cannot keep file hashes in %s: %s", where, e)
