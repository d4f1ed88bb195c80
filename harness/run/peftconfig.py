"""A [train] recipe as the peft config of its method, and what training one needs besides:
LoftQ's initialisation against the quantized base, AdaLoRA's rank budget per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    return peft.LoraConfig(r=k["r"], init_lora_weights=_lora_init(train, meta),
                           use_dora=method == "dora", use_rslora=method == "rslora", **common)


def _lora_init(train: TrainSpec, meta: bool) -> bool | str:
    if meta or train.method not in ("pissa", "olora"):
        return True
    if train.method == "olora":
        return "olora"
    niter = train.knob("pissa_niter")
    return f"pissa_niter_{niter}" if niter else "pissa"


def loftq_init(model: Any, base_folder: Path | None) -> None:
    """Set the LoRA pairs of a 4-bit ``model`` so that base + A·B is closest to the full-
    precision weights, read from the base's safetensors files (peft's LoftQ for a quantized
    base)."""
    from peft.utils.loftq_utils import replace_lora_weights_loftq

    replace_lora_weights_loftq(model, model_path=str(base_folder) if base_folder else None)


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
