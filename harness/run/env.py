"""Provenance of a run: versions, device, git commit and dirty flag. Imports torch lazily."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness

# liger-kernel: None (and not shown) unless installed; train.liger runs its kernels
_PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel",
             "datasets", "rouge-score", "numpy", "scipy")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = None
    return out


def git_state(where: Path) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding ``where`` (None outside a repo)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                               timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if commit else None}


def describe(device: str, where: Path) -> dict[str, Any]:
    import torch

    from harness.run.memory import MEMORY_KINDS

    memory_kind, memory_description = MEMORY_KINDS["cuda" if device == "cuda" else "cpu"]

    info: dict[str, Any] = {
        "harness_version": harness.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        **versions(),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "memory_kind": memory_kind,
        "memory_description": memory_description,
        "git": git_state(where),
    }
    return info
