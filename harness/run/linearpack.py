"""Linear layers with their weights prepacked for oneDNN while an arm is evaluated or an
adapter trained on the CPU.

`nn.Linear` on the CPU calls MKL's sgemm, which lays the weight out into its blocked format
again on every call. A weight that does not change (every weight at inference, the frozen
base weights under LoRA) can be laid out once in oneDNN's blocked format
(``torch.ops.mkldnn._reorder_linear_weight``, what torch.compile's CPU backend does with
frozen weights) and every call skips that work. Measured on 2 CPU cores for SmolLM2-135M's
[1536 x 576] projection: 1.6x at 32 rows (a decode step of a batch of 32), 4.6x at 8, 1.3x at
1,664 (a prefill). The products are the same float32 products in another summation order:
logits differ by ~1e-6 relative, the greedy text of the default suite's prompts was
identical (32 of 32).

Training (``prepacked(model, training=True)``) packs a frozen layer twice: its weight for the
forward and its transpose for the input's gradient (a frozen weight needs no gradient of its
own). At a training step's 650-1,000 rows the body's products gained 1.03-1.25x each way and
the LM head's 1.6x forward and 1.2x backward (160 scored rows).

The cost is memory: the packed copies sit beside the weights (538 MB of float32 per copy for
SmolLM2-135M, whose LM head is a linear layer too), so they are made only when they take at
most a quarter of the memory still available, and only for float32 `nn.Linear` layers (not
peft's, not bitsandbytes'); a layer whose weight or bias trains keeps the plain path.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from typing import Any

ROWS_HINT = 32  # the row count oneDNN picks its blocking for: a decode step's batch
MEMORY_SHARE = 0.25  # of the available memory the packed copies may take


def usable(model: Any, training: bool = False, compute: Any = None) -> list[Any]:
    """The layers to pack: float32 `nn.Linear` on the CPU (frozen ones for ``training``),
    when oneDNN is there and their packed copies (in ``compute``, default float32) fit
    (empty: pack nothing)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return []
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear
              and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
              and not (training and _trains(m))]
    copies = 2 if training else 1  # training: the weight and its transpose
    width = (compute or torch.float32).itemsize
    size = copies * sum(m.weight.numel() * width for m in layers)
    return layers if size <= MEMORY_SHARE * _available_bytes() else []


@contextlib.contextmanager
def prepacked(model: Any, training: bool = False, autocast: Any = None) -> Iterator[int]:
    """Inside: ``model``'s usable layers run on packed weights when no gradient is asked
    for, and with ``training`` also when one is (for their input: they are frozen). Yields
    how many were packed; a layer oneDNN refuses stays as it is.

    ``autocast`` (torch.bfloat16): the model runs under CPU autocast to that dtype, which
    casts a frozen weight anew on every call; the copies are packed in that dtype instead
    and each input cast to it, as autocast would (outside autocast: the plain layer)."""
    packed = []
    try:
        for layer in usable(model, training, autocast):
            if _pack(layer, training, autocast):
                packed.append(layer)
        yield len(packed)
    finally:
        for layer in packed:
            del layer.forward  # back to the class's own


def _pack(layer: Any, training: bool, autocast: Any = None) -> bool:
    import torch

    dtype = autocast or torch.float32
    try:
        with torch.no_grad():
            w = layer.weight.detach().to(dtype)
            weight = _reorder(w)
            transposed = _reorder(w.t().contiguous()) if training else None
            bias = None if layer.bias is None else layer.bias.detach().to(dtype)
    except (RuntimeError, AttributeError):  # a torch built without this op
        return False

    def forward(self: Any, x: Any) -> Any:
        if autocast is not None and torch.is_autocast_enabled("cpu") \
                and torch.get_autocast_dtype("cpu") == autocast:
            x = x.to(autocast)
        elif autocast is not None or x.dtype != torch.float32:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if not torch.is_grad_enabled():
            flat = _linear(x.reshape(-1, x.shape[-1]), weight, bias)
        elif transposed is None or _trains(self):
            return torch.nn.functional.linear(x, self.weight, self.bias)
        else:
            flat = _frozen_linear().apply(x.reshape(-1, x.shape[-1]), weight, transposed, bias)
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    layer.forward = types.MethodType(forward, layer)
    return True


def _trains(layer: Any) -> bool:
    return layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad)


def _reorder(weight: Any) -> Any:
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)


def _linear(x: Any, packed: Any, bias: Any) -> Any:
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def _frozen_linear() -> Any:
    import torch

    class FrozenLinear(torch.autograd.Function):
        """y = x W^T + b with W and b frozen: backward gives x's gradient only, as
        grad_y W, from W's transpose packed beside it."""

        @staticmethod
        def forward(ctx: Any, x: Any, packed: Any, transposed: Any, bias: Any) -> Any:
            ctx.transposed = transposed
            return _linear(x, packed, bias)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return _linear(grad.contiguous(), ctx.transposed, None), None, None, None

    return FrozenLinear


def _available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
