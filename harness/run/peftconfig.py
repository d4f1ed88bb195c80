"""A [train] recipe as the peft config of its method, and what training one needs besides:
LoftQ's initialisation against the quantized base, AdaLoRA's rank budget per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import ModelSourceError
from harness.suite.training import TrainSpec

_PEFT_TYPES = {"ia3": "IA3", "loha": "LOHA", "lokr": "LOKR", "vera": "VERA",
               "adalora": "ADALORA"}


def peft_type(method: str) -> str:
    """The peft type an adapter of ``method`` is saved as (DoRA, rsLoRA, PiSSA, OLoRA and
    LoftQ are LoRA with another init or forward)."""
    return _PEFT_TYPES.get(method, "LORA")


def peft_config(train: TrainSpec, total_steps: int | None = None, *, meta: bool = False) -> Any:
    """The method's peft config. ``total_steps``: AdaLoRA's schedule length (its rank budget
    shrinks over it); ``meta``: for a model on the meta device (plan), where the inits that
    read the base weights (PiSSA, OLoRA) cannot run and would give the same shapes anyway."""
    import peft

    k = train.knobs
    method = train.method
    if method == "ia3":
        return peft.IA3Config(target_modules=k["target_modules"],
                              feedforward_modules=k["feedforward_modules"], task_type="CAUSAL_LM")
    if method in ("loha", "lokr"):
        cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
        return cls(r=k["r"], alpha=k["alpha"], rank_dropout=k["rank_dropout"],
                   module_dropout=k["module_dropout"], target_modules=k["target_modules"],
                   task_type="CAUSAL_LM")
    if method == "vera":
        return peft.VeraConfig(r=k["r"], vera_dropout=k["dropout"], bias=k["bias"],
                               target_modules=k["target_modules"], task_type="CAUSAL_LM")
    common = dict(lora_alpha=k["alpha"], lora_dropout=k["dropout"],
                  target_modules=k["target_modules"], bias=k["bias"], task_type="CAUSAL_LM")
    if method == "adalora":
        # tinit/tfinal 0: the budget schedule spans the whole training (peft's defaults)
        return peft.AdaLoraConfig(target_r=k["r"], init_r=k["init_r"],
                                  total_step=max(total_steps or 1, 1), **common)
    init: Any = _lora_init(train, meta)  # peft types it as a Literal of its init names
    return peft.LoraConfig(r=k["r"], init_lora_weights=init,
                           use_dora=method == "dora", use_rslora=method == "rslora", **common)


def _lora_init(train: TrainSpec, meta: bool) -> bool | str:
    if meta or train.method not in ("pissa", "olora"):
        return True
    if train.method == "olora":
        return "olora"
    niter = train.knob("pissa_niter")
    return f"pissa_niter_{niter}" if niter else "pissa"


def loftq_init(model: Any, base_folder: Path | None) -> None:
    """LoftQ for a 4-bit base: each LoRA pair set so that 4-bit base + scaling * B @ A is the
    closest rank-r fit to the full-precision weight, read from the base's safetensors: the
    rank-r SVD of W - dequant(Q), split as sqrt(S) on each side (peft's decomposition).

    Not peft's ``replace_lora_weights_loftq``: it moves every weight to CUDA (or XPU)
    unconditionally, so it fails on a CPU, and it ignores the pair's scaling alpha / r: with
    the default alpha 16 at r 8 the pair enters the forward doubled and overshoots the
    residual it was fitted to."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import Linear4bit

    weights = _full_precision(base_folder)
    prefix = "base_model.model."
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, Linear4bit):
                continue
            key = name.removeprefix(prefix) + ".weight"
            full = weights(key).to(torch.float32)
            q = module.base_layer.weight
            residual = full - bnb.functional.dequantize_4bit(q.data, q.quant_state).float()
            u, s, vh = torch.linalg.svd(residual, full_matrices=False)  # once per layer
            for adapter in module.lora_A:
                r, scale = module.r[adapter], module.scaling[adapter]
                root = torch.sqrt(s[:r] / scale)  # scale * (u sqrt) (sqrt vh) = rank-r fit
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                a.copy_((root[:, None] * vh[:r]).to(a.dtype))
                b.copy_((u[:, :r] * root[None, :]).to(b.dtype))


def _full_precision(folder: Path | None):
    """name -> tensor over the base's safetensors files (one or sharded)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors")) if folder else []
    if not files:
        raise ModelSourceError(f"train.method = 'loftq' reads the base's full-precision "
                               f"weights from safetensors files; {folder} has none")
    index = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            index.update({k: f for k in handle.keys()})

    def get(key: str):
        if key not in index:
            raise ModelSourceError(f"train.method = 'loftq': {key} is not in the base's "
                                   f"safetensors files ({folder})")
        with safe_open(str(index[key]), framework="pt") as handle:
            return handle.get_tensor(key)

    return get


def budget_callback(model: Any) -> Any:
    """AdaLoRA reallocates its rank budget from each step's gradients: peft's
    ``update_and_allocate`` after the optimizer step and before the gradients are zeroed
    (the Trainer's ``on_optimizer_step``); the Trainer does not call it itself."""
    from transformers import TrainerCallback

    class AdaLoraBudget(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kw):
            model.base_model.update_and_allocate(state.global_step)

    return AdaLoraBudget()


def meta_counts(meta_model: Any, train: TrainSpec, total_steps: int | None) -> tuple[int, int]:
    """(trainable parameters, parameters the adapter adds) of ``train``'s method laid over a
    copy of the meta-device model: peft's own count, so every method is sized as it will
    train (a rank formula would fit LoRA alone). ValueError: peft refuses the recipe."""
    import copy
    import warnings

    from peft import get_peft_model

    model = copy.deepcopy(meta_model)
    before = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(model, peft_config(train, total_steps, meta=True),
                                 low_cpu_mem_usage=True)
    params = list(wrapped.parameters())
    return (sum(p.numel() for p in params if p.requires_grad),
            sum(p.numel() for p in params) - before)
