""""This adapter does nothing": an adapter arm whose saved weights make no update to the
base (every LoRA B matrix zero, every IA3 vector one: what peft's initialisation gives, so
an adapter saved before any optimizer step), or whose per-item losses all equal the zero-shot
arm's. Such an arm's "no change" would read as a result; it is a mistake upstream (a training
that never stepped, the wrong folder exported). Computes and returns a reason; the pipeline
warns and records it, and gate fails the arm unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.run import adapters

# Per-item loss equality, relative to the loss (nats/token): float noise between two
# evaluations of the same weights is ~1e-7 relative; any trained adapter moves losses far more.
LOSS_TOL = 1e-6


def zero_update(folder: Path | None) -> str | None:
    """Why the adapter saved in ``folder`` leaves the base unchanged, or None: LoRA's update is
    B @ A (zero when every B is zero), IA3's an elementwise scaling (the identity when every
    vector is one)."""
    tensors = _tensors(folder)
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    if lora_b and all(not bool(t.count_nonzero()) for t in lora_b):
        return (f"every LoRA B matrix is zero ({len(lora_b)} of them), so B @ A adds nothing "
                "to the base (an adapter saved before any training step)")
    ia3 = [t for k, t in tensors.items() if "ia3_l" in k]
    if ia3 and all(bool((t == 1).all()) for t in ia3):
        return (f"every IA3 vector is 1 ({len(ia3)} of them), so it scales nothing (an "
                "adapter saved before any training step)")
    return None


def _tensors(folder: Path | None) -> dict[str, Any]:
    path = adapters.weights_file(folder)
    if path is None:
        return {}
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    return dict(torch.load(str(path), map_location="cpu", weights_only=True))


def same_losses(base_rows: Sequence[Mapping[str, Any]], arm_rows: Sequence[Mapping[str, Any]]
                ) -> str | None:
    """Why the arm's per-item losses are the zero-shot arm's, or None: every item both scored
    (every eval set, paired by set and id) within LOSS_TOL relative."""
    base = {(r.get("set"), r["id"]): r.get("loss") for r in base_rows}
    pairs: list[tuple[float, float]] = []
    for r in arm_rows:
        b, a = base.get((r.get("set"), r["id"])), r.get("loss")
        if b is not None and a is not None:
            pairs.append((float(b), float(a)))
    if not pairs or any(abs(a - b) > LOSS_TOL * max(1.0, abs(b)) for b, a in pairs):
        return None
    return (f"its per-item losses equal the zero-shot arm's on all {len(pairs)} items "
            f"(within {LOSS_TOL:g} relative)")
