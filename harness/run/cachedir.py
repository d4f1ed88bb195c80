"""``$HARNESS_CACHE`` (default ``~/.cache/harness``): the folder every run on this machine
shares. It holds GGUF models converted once (``models/``, harness/modeling.py), zero-shot
evaluations reused across runs (``baselines/``, harness/cache.py) and the sha256 of model
files by their stat (``file_hashes.json``, harness/hashes.py). No torch."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
