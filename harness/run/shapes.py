"""A model's module tree from its config alone: built on the meta device (shapes, no memory,
no weights read; ~4 s for phi-2 on 2 cores), so layer names and sizes are the real ones, not a
formula per architecture. `plan` counts parameters on it; preflight checks LoRA targets and
existing adapters against it before any weights load.

peft's matching rule, which `lora_targets` follows: a target matches a module whose name
equals it or ends with ``"." + target``; ``"all-linear"`` is every Linear / Conv1D except the
output head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError, ModelSourceError, ModelUnavailable
from harness.run.modeling import ModelSource
from harness.suite.config import ModelSpec

_LORA_KINDS = ("linear", "conv1d", "embedding")


@dataclass(frozen=True)
class Layer:
    """One named module. ``kind`` is linear / conv1d / embedding, else the module's class."""

    name: str
    kind: str
    in_features: int = 0
    out_features: int = 0
    bias: int = 0  # bias elements


@dataclass(frozen=True)
class ModelShape:
    """What the plan and preflight need from the meta-device model."""

    architecture: str
    model_type: str
    config_source: str
    total_params: int
    bias_params: int  # every *.bias parameter (LoRA bias="all" trains them all)
    layers: tuple[Layer, ...]
    output_layer: str | None  # the LM head: never quantized, excluded from "all-linear"
    quantizable_params: int  # Linear/Conv1D weights bitsandbytes would quantize
    quantizable_rows: int  # their output rows (8-bit keeps one fp32 scale per row)
    hidden_size: int | None
    num_layers: int | None
    intermediate_size: int | None
    vocab_size: int | None
    gated_mlp: bool  # SwiGLU-style: gate and up projections both of intermediate size
    # the meta-device model itself: existing adapters are laid onto a copy of it to learn the
    # tensor names and shapes their weights file must hold
    meta: Any = field(default=None, repr=False, compare=False)


def model_shape(spec: ModelSpec, source: ModelSource) -> ModelShape:
    """Config -> meta-device model -> shapes. No weights are read or allocated."""
    cfg, where = load_config(spec, source)
    model = _meta_model(cfg, spec)
    layers = tuple(_layer(name, m) for name, m in model.named_modules() if name)
    head = _output_layer(model)
    quantizable = [x for x in layers if x.kind in ("linear", "conv1d") and x.name != head]
    hidden, n_layers, inter, vocab = _sizes(cfg)
    return ModelShape(
        architecture=type(model).__name__, model_type=getattr(cfg, "model_type", "?"),
        config_source=where, total_params=sum(p.numel() for p in model.parameters()),
        bias_params=sum(p.numel() for n, p in model.named_parameters() if _is_bias(n)),
        layers=layers, output_layer=head,
        quantizable_params=sum(x.in_features * x.out_features for x in quantizable),
        quantizable_rows=sum(x.out_features for x in quantizable),
        hidden_size=hidden, num_layers=n_layers, intermediate_size=inter, vocab_size=vocab,
        gated_mlp=_gated(layers, inter, n_layers), meta=model,
    )


def _sizes(cfg: Any) -> tuple[int | None, int | None, int | None, int | None]:
    """(hidden, blocks, MLP width, vocab) of the text model; None where the config lacks it."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    hidden = getattr(text, "hidden_size", None)
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or (
        4 * hidden if hidden else None)  # GPT-2 style configs leave the MLP at 4h
    return hidden, getattr(text, "num_hidden_layers", None), inter, getattr(text, "vocab_size",
                                                                             None)


def load_config(spec: ModelSpec, src: ModelSource) -> tuple[Any, str]:
    """(config, where it came from): local dir, converted GGUF cache, GGUF metadata, or the
    hub id (HF cache, or fetched when a network exists)."""
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    conv = src.converted
    if conv is not None and (conv / "config.json").is_file():
        return _auto_config(str(conv), src.label, kw), f"converted cache {conv}"
    kw["revision"] = spec.revision
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
        return _auto_config(src.path, src.label, kw), f"GGUF metadata of {src.gguf_file}"
    local = os.path.isdir(src.path)
    where = f"{src.path}/config.json" if local else f"hub id {src.path} (cache or network)"
    return _auto_config(src.path, src.label, kw), where


def _auto_config(path: str, label: str, kw: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError, KeyError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        if not os.path.exists(path) and (_offline() or "connect" in text.lower()):
            raise ModelUnavailable(f"model config for {label}: not in the local Hugging Face "
                                   "cache, and the hub cannot be reached") from e
        raise ModelSourceError(f"model config for {label} cannot be read: {text}") from e


def _offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.lower() in ("1", "true", "yes", "on") for f in flags)


def _meta_model(cfg: Any, spec: ModelSpec) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):  # shapes only: a 7B model costs no memory here
            return AutoModelForCausalLM.from_config(cfg, trust_remote_code=spec.trust_remote_code)
    except (ValueError, KeyError, ImportError) as e:
        raise ModelSourceError(f"model {spec.label}: cannot build a causal LM from its config "
                               f"({type(cfg).__name__}): {e}") from e


def _layer(name: str, m: Any) -> Layer:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    bias = getattr(m, "bias", None)
    nb = bias.numel() if isinstance(bias, nn.Parameter) else 0
    if isinstance(m, nn.Linear):
        return Layer(name, "linear", m.in_features, m.out_features, nb)
    if isinstance(m, Conv1D):  # GPT-2 style: weight is (in, out)
        return Layer(name, "conv1d", m.weight.shape[0], m.weight.shape[1], nb)
    if isinstance(m, nn.Embedding):  # LoRA A: r x vocab, B: dim x r
        return Layer(name, "embedding", m.num_embeddings, m.embedding_dim)
    return Layer(name, type(m).__name__)


def _output_layer(model: Any) -> str | None:
    head = model.get_output_embeddings()
    return next((n for n, m in model.named_modules() if m is head), None) if head else None


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def _gated(layers: Sequence[Layer], inter: int | None, n_blocks: int | None) -> bool:
    """Gate + up projections (2 per block of intermediate size), or one fused of 2x size."""
    if not inter or not n_blocks:
        return False
    outs = [x.out_features for x in layers if x.kind == "linear"]
    return outs.count(inter) >= 2 * n_blocks or outs.count(2 * inter) >= n_blocks


# ---------------------------------------------------------------- LoRA targets


def lora_targets(shape: ModelShape, targets: list[str] | str,
                 ) -> tuple[list[Layer], tuple[str, ...]]:
    """(layers peft would wrap, targets that matched nothing), with peft's matching rule;
    ConfigError when none matches or one names a module LoRA cannot wrap."""
    if targets == "all-linear":
        picked = [x for x in shape.layers
                  if x.kind in ("linear", "conv1d") and x.name != shape.output_layer]
        return picked, ()
    picked = [x for x in shape.layers if any(matches(x.name, t) for t in targets)]
    unmatched = tuple(t for t in targets if not any(matches(x.name, t) for x in picked))
    _check_targets(shape, picked, targets)
    return picked, unmatched


def matches(name: str, target: str) -> bool:
    """peft's rule for a target module given by name: the name itself or its dotted suffix."""
    return name == target or name.endswith("." + target)


def _check_targets(shape: ModelShape, picked: list[Layer], targets: Sequence[str]) -> None:
    """peft raises on both of these at get_peft_model time; say so before any weights load."""
    bad = [x for x in picked if x.kind not in _LORA_KINDS]
    if bad:
        raise ConfigError(f"train.target_modules: {bad[0].name} is a {bad[0].kind}, which LoRA "
                          f"cannot wrap; target its Linear layers: {_linear_names(shape)}")
    if not picked:
        raise ConfigError(f"train.target_modules: none of {list(targets)} is in "
                          f"{shape.architecture}; its Linear layers: {_linear_names(shape)}")


def _linear_names(shape: ModelShape) -> str:
    names = dict.fromkeys(x.name.rsplit(".", 1)[-1] for x in shape.layers
                          if x.kind in ("linear", "conv1d"))
    return ", ".join(names)
