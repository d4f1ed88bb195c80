"""The [train] table: the adapter method with its knobs, and the Trainer's settings."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from harness.suite import methods
from harness.suite.numbers import (
    MAX_ARMS,
    MAX_EPOCHS,
    Batch,
    Flag,
    Fraction,
    PositiveScale,
    Rank,
    Scale,
    Seed,
    Steps,
    StepsOrZero,
    Strict,
    Tokens,
)


class TrainSpec(Strict):
    """The adapter recipe (a peft method and its knobs) and the Trainer knobs the seed reports
    name. QLoRA = this + a 4-bit model. A knob the method does not take is refused; one it
    takes and the suite leaves out gets the method's default (see ``methods``)."""

    method: methods.Method = "lora"
    r: Optional[Rank] = None
    alpha: Optional[PositiveScale] = None
    dropout: Optional[Fraction] = None
    target_modules: Optional[Union[list[str], Literal["all-linear"]]] = None
    bias: Optional[Literal["none", "all", "lora_only"]] = None
    feedforward_modules: Optional[list[str]] = None  # ia3: the layers scaled on their input
    rank_dropout: Optional[Fraction] = None  # loha, lokr
    module_dropout: Optional[Fraction] = None  # loha, lokr
    init_r: Optional[Rank] = None  # adalora: the rank each layer starts from; r is the target
    pissa_niter: Optional[Steps] = None  # pissa: fast-SVD iterations (none: the exact SVD)

    learning_rate: PositiveScale = 2e-4
    epochs: Annotated[float, Field(gt=0, le=MAX_EPOCHS)] = 1.0
    max_steps: Optional[Steps] = None
    batch_size: Batch = 8
    eval_batch_size: Optional[Batch] = None
    gradient_accumulation_steps: Batch = 1
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt",
    ] = "linear"
    warmup_ratio: Fraction = 0.0
    warmup_steps: StepsOrZero = 0
    optimizer: Literal[
        "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit",
        "paged_adamw_8bit", "paged_adamw_32bit",
    ] = "adamw_torch"
    weight_decay: Scale = 0.0
    max_grad_norm: Scale = 1.0
    # "auto": bf16 mixed precision where the device multiplies bf16 natively (a CUDA GPU with
    # bf16, a CPU with AVX512-BF16 or AMX), else fp32; the run's training summary records
    # which one ran (modeling.train_precision).
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "fp32"
    seed: Seed = 0
    # Train the recipe once per seed (arms <arm>@s<seed>); the report then compares the recipe
    # with its baseline across seeds (seedstats), beside each seed's paired results.
    seeds: Optional[Annotated[list[Seed], Field(min_length=1, max_length=MAX_ARMS)]] = None
    logging_steps: Steps = 10
    eval_strategy: Literal["no", "epoch", "steps"] = "epoch"
    eval_steps: Optional[Steps] = None
    save_strategy: Literal["no", "epoch", "steps"] = "no"
    save_steps: Optional[Steps] = None
    save_total_limit: Optional[Steps] = None
    # With save_strategy = "no": a scratch checkpoint every this many optimizer steps, only so
    # `harness resume` can continue a killed run; the newest alone is kept, and it is deleted
    # when training ends. Unset: ~10% of the steps (a multiple of logging_steps); 0: none.
    checkpoint_steps: Optional[StepsOrZero] = None
    load_best_model_at_end: Flag = False
    gradient_checkpointing: Flag = False
    group_by_length: Flag = True
    # Padding-free training: each optimizer step's examples (the sampler's, as unpacked) are
    # concatenated into rows of at most batch_tokens tokens, positions restarting per example.
    packing: Flag = True
    # Unset: batch_size x the longest train example, the most an unpacked micro-batch holds, so
    # packing never needs more activation memory than padding did (and a step of
    # gradient_accumulation_steps micro-batches still merges into fewer forwards).
    batch_tokens: Optional[Tokens] = None
    # Opt-in speed switches, off by default: neither changes what is computed, only how.
    # compile: torch.compile (inductor) of the model; packed rows break its graph at each
    # example's attention, which stays eager. liger: Liger's Triton kernels (RMSNorm, RoPE,
    # SwiGLU, fused linear cross-entropy) for the model's layers: CUDA only, and the
    # liger-kernel package (pip install 'harness[gpu]').
    compile: Flag = False
    liger: Flag = False
    # On CUDA out-of-memory, halve the per-device batch (accelerate) instead of failing.
    auto_find_batch_size: Flag = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []

    @field_validator(*sorted(methods.ALL_KNOBS))
    @classmethod
    def _taken(cls, v: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")  # validated first: declared first
        key = str(info.field_name)
        if v is not None and method is not None and not methods.takes(method, key):
            raise ValueError(f"method {method!r} does not take {key} (its knobs: "
                             f"{', '.join(methods.KNOBS[method])})")
        return v

    @property
    def knobs(self) -> dict[str, Any]:
        """The method's knobs with their effective values: {"r": 8, "alpha": 16.0, ...}."""
        return methods.effective(self.method, {k: getattr(self, k) for k in methods.ALL_KNOBS})

    def knob(self, key: str) -> Any:
        """One knob's effective value; None for a knob the method does not take."""
        return self.knobs.get(key)

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("train.eval_strategy = 'steps' needs train.eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            raise ValueError("train.save_strategy = 'steps' needs train.save_steps")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"train.seeds repeats a seed: {self.seeds}")
        if self.load_best_model_at_end and self.save_strategy != self.eval_strategy:
            raise ValueError("train.load_best_model_at_end needs save_strategy == eval_strategy")
        return self
