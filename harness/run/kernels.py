"""Liger's kernels (train.liger) for training only.

The Trainer applies Liger (``use_liger_kernel``) by patching, for the rest of the process: the
model instance's forwards (RMSNorm, SwiGLU MLP, the LM's fused linear cross-entropy, bound
into each module's ``__dict__``), and the model family's module (``modeling_llama``'s RoPE
function and its RMSNorm / MLP classes, which every model of that family built later would
use), for some families ``torch.nn.functional.cross_entropy`` too. A run evaluates the
zero-shot arm before training and the trained arm after it, and the paired statistics need
both computed by the same kernels; so ``training_only`` puts back everything Liger may have
replaced once training ends. Parameters are untouched: Liger reads the same weights.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_BOUND = ("forward", "extra_repr", "_get_name")  # what Liger binds onto module instances
_ABSENT = object()


@contextlib.contextmanager
def training_only(model: Any, enabled: bool) -> Iterator[None]:
    """With ``enabled``, whatever Liger patches while the block runs is undone at its end."""
    if not enabled:
        yield
        return
    undo = _snapshot(model)
    try:
        yield
    finally:
        undo()


def _snapshot(model: Any):
    import torch.nn.functional as F
    from transformers.trainer_utils import unwrap_peft_model

    base = unwrap_peft_model(model)  # what the Trainer hands Liger
    bound = [(m, {k: m.__dict__.get(k, _ABSENT) for k in _BOUND}) for m in base.modules()]
    family = sys.modules[type(base).__module__]
    names = dict(vars(family))
    head_forward = type(base).__dict__.get("forward", _ABSENT)
    cross_entropy = F.cross_entropy

    def undo() -> None:
        for module, before in bound:
            for key, value in before.items():
                _put_back(module.__dict__, key, value)
        for key, value in names.items():
            if vars(family).get(key, _ABSENT) is not value:
                setattr(family, key, value)
        if head_forward is not _ABSENT:
            type.__setattr__(type(base), "forward", head_forward)
        F.cross_entropy = cross_entropy

    return undo


def _put_back(attrs: dict[str, Any], key: str, value: Any) -> None:
    if value is _ABSENT:
        attrs.pop(key, None)
    else:
        attrs[key] = value
