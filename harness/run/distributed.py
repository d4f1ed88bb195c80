"""Several processes, one run: ``torchrun --nproc-per-node N -m harness run SUITE`` (or
``accelerate launch -m harness run SUITE``).

Every rank runs the same pipeline, so every decision (cache hit, arm order, early stop) is
the same on all of them. Training goes through the Trainer's own distributed path (DDP; FSDP
or DeepSpeed when the user's accelerate config says so): ``train.batch_size`` stays per
device. Evaluation is data-parallel: rank r scores items r, r + N, r + 2N, ... (loss and
generation) and the rows are gathered back into eval order on every rank. Only rank 0 writes
the run directory, the baseline cache and the reports; the other ranks stage theirs in a
temporary folder they delete, and print nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1


def setup(device: str) -> None:
    """Join the process group torchrun / accelerate describe in the environment (NCCL on
    GPUs, gloo on CPUs) and pin this rank's GPU, so "cuda" means this rank's device."""
    if not active():
        return
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def my_share(n: int) -> list[int]:
    """The item indices this rank evaluates: strided, so ranks get similar lengths."""
    return list(range(rank(), n, world_size()))


def gather(part: Sequence[T], n: int) -> list[T]:
    """Every rank's share (as given by my_share) back into one list in item order."""
    if not active():
        return list(part)
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(part))
    out: list[Any] = [None] * n
    for r, rows in enumerate(parts):
        for i, row in zip(range(r, n, world_size()), rows, strict=True):
            out[i] = row
    return out


def all_values(value: T) -> list[T]:
    """One value from each rank (e.g. its time or peak memory), on every rank."""
    if not active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def combined_rate(count: float, per_s: float) -> float:
    """A throughput of all ranks: every rank's ``count`` (tokens) over the slowest rank's time
    (``count / per_s`` on each), since the step ends when the last rank does."""
    parts = all_values((count, count / per_s if per_s else 0.0))
    wall = max(w for _, w in parts)
    return sum(c for c, _ in parts) / wall if wall else 0.0
