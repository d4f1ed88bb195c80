"""Linear layers with their weights prepacked for oneDNN while an arm is evaluated on the CPU.

`nn.Linear` on the CPU calls MKL's sgemm, which lays the weight out into its blocked format
again on every call. For inference the weight does not change, so oneDNN's blocked layout
can be made once (``torch.ops.mkldnn._reorder_linear_weight``, what torch.compile's CPU
backend does with frozen weights) and every call skips that work. Measured on 2 CPU cores
for SmolLM2-135M's [1536 x 576] projection: 1.6x at 32 rows (a decode step of a batch of
32), 4.6x at 8, 1.3x at 1,664 (a prefill). The products are the same float32 products in
another summation order: logits differ by ~1e-6 relative, the greedy text of the default
suite's prompts was identical (32 of 32).

The cost is memory: the packed copy sits beside the weight for the evaluation (538 MB of
float32 for SmolLM2-135M, whose LM head is a linear layer too), so it is made only when the
copies take at most a quarter of the memory still available, and only for float32
`nn.Linear` layers (not peft's, not bitsandbytes'); training never runs under it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

ROWS_HINT = 32  # the row count oneDNN picks its blocking for: a decode step's batch
MEMORY_SHARE = 0.25  # of the available memory the packed copies may take


def usable(model: Any) -> list[Any]:
    """The layers to pack: float32 `nn.Linear` on the CPU, when oneDNN is there and their
    copies fit (empty: pack nothing)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return []
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear
              and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]
    size = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    return layers if size <= MEMORY_SHARE * _available_bytes() else []


@contextlib.contextmanager
def prepacked(model: Any) -> Iterator[int]:
    """Inside: ``model``'s usable layers run on packed weights when no gradient is asked
    for. Yields how many were packed; a layer oneDNN refuses stays as it is."""
    packed = []
    try:
        for layer in usable(model):
            if _pack(layer):
                packed.append(layer)
        yield len(packed)
    finally:
        for layer in packed:
            del layer.forward  # back to the class's own


def _pack(layer: Any) -> bool:
    import torch

    try:
        with torch.no_grad():
            weight = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), ROWS_HINT)
    except (RuntimeError, AttributeError):  # a torch built without this op
        return False

    def forward(self: Any, x: Any) -> Any:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight,
                                                  self.bias, "none", [], "")
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    layer.forward = types.MethodType(forward, layer)
    return True


def _available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
