"""Train one LoRA/QLoRA adapter with transformers' Trainer.

Ours: the suite -> TrainingArguments mapping, the dataset of pre-tokenized items (dynamic
padding through DataCollatorForSeq2Seq: labels padded with -100, prompt tokens already -100),
the callback that writes every logged train/eval loss to train_log.jsonl, token accounting
(real tokens vs computed tokens = padding efficiency) and the adapter's model card.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import Suite, TrainSpec
from harness.encoding import Encoded

LogRow = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    model: Any  # the trained PeftModel (best checkpoint when load_best_model_at_end)
    summary: dict[str, Any]


class _Items:
    """Map-style dataset of pre-tokenized items (the Trainer's collator pads per batch)."""

    def __init__(self, items: Sequence[Encoded]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.items[i]
        return {"input_ids": list(e.input_ids), "labels": list(e.labels),
                "attention_mask": [1] * len(e.input_ids)}


def training_arguments(spec: TrainSpec, out: Path, device: str, has_validation: bool):
    from transformers import TrainingArguments

    evaluate = spec.eval_strategy if has_validation else "no"
    warmup: float = spec.warmup_steps if spec.warmup_steps else spec.warmup_ratio
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.eval_batch_size or spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=warmup,  # an int is steps, a float in [0, 1) a ratio of total steps
        optim=spec.optimizer,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        fp16=spec.precision == "fp16",
        bf16=spec.precision == "bf16",
        seed=spec.seed,
        data_seed=spec.seed,
        logging_strategy="steps",
        logging_steps=spec.logging_steps,
        logging_first_step=True,
        eval_strategy=evaluate,
        eval_steps=spec.eval_steps,
        save_strategy=spec.save_strategy if evaluate != "no" or not spec.load_best_model_at_end
        else "no",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        save_only_model=True,
        load_best_model_at_end=spec.load_best_model_at_end and evaluate != "no",
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to=spec.report_to or "none",
        train_sampling_strategy="group_by_length" if spec.group_by_length else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        auto_find_batch_size=spec.auto_find_batch_size and device == "cuda",
    )


def _trainer_class():
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """Counts real (attention) and computed (padded) tokens of every training batch."""

        real_tokens = 0
        computed_tokens = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            self.real_tokens += int(mask.sum())
            self.computed_tokens += int(mask.numel())
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingTrainer


def _log_callback(arm: str, log_row: LogRow, on_step: Callable[[], None]):
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the end-of-training summary, recorded elsewhere
                return
            keep = {k: v for k, v in logs.items() if k in _LOG_KEYS}
            log_row({"arm": arm, "step": state.global_step,
                     "epoch": round(state.epoch or 0.0, 4), **keep})

        def on_step_end(self, args, state, control, **kw):
            on_step()

    return LogCallback()


_LOG_KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss")


def train_adapter(
    model: Any, tokenizer: Any, suite: Suite, *, arm: str,
    train_items: Sequence[Encoded], val_items: Sequence[Encoded], work_dir: Path, device: str,
    log_row: LogRow, on_step: Callable[[], None] = lambda: None,
    tensorboard_dir: Path | None = None,
) -> TrainResult:
    """Train ``model`` (already wrapped by peft) and return it with a summary of the run."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback

    spec = suite.train
    assert spec is not None
    args = training_arguments(spec, work_dir, device, has_validation=bool(val_items))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    with _tensorboard_dir(tensorboard_dir if "tensorboard" in spec.report_to else None):
        trainer = _trainer_class()(
            model=model, args=args, data_collator=collator, train_dataset=_Items(train_items),
            eval_dataset=_Items(val_items) if val_items else None,
            callbacks=[_log_callback(arm, log_row, on_step)],
        )
        trainer.remove_callback(PrinterCallback)  # prints raw dicts; train_log.jsonl has them
        out = trainer.train()
    summary = _summary(trainer, out, spec)
    shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints: the adapter is saved separately
    with contextlib.suppress(OSError):  # the shared checkpoints/ folder, once no arm uses it
        work_dir.parent.rmdir()
    return TrainResult(model=trainer.model, summary=summary)


@contextlib.contextmanager
def _tensorboard_dir(path: Path | None) -> Iterator[None]:
    """transformers 5 takes TensorBoard's folder from this variable (default: output_dir,
    which holds checkpoints and is deleted after training)."""
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if path is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if path is not None and old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        elif old is not None:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


def _summary(trainer: Any, out: Any, spec: TrainSpec) -> dict[str, Any]:
    runtime = float(out.metrics.get("train_runtime", 0.0))
    state = trainer.state
    evals = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
    losses = [float(r["loss"]) for r in state.log_history if "loss" in r]
    return {
        "global_steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "train_runtime_s": round(runtime, 3),
        # The Trainer's training_loss is the mean over all steps; the last logged value is what
        # the loss had come down to (logged every `logging_steps`, averaged over that window).
        "mean_train_loss": float(out.training_loss),
        "final_train_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None,
        "best_checkpoint": Path(state.best_model_checkpoint).name
        if state.best_model_checkpoint else None,
        "train_tokens": trainer.real_tokens,
        "computed_tokens": trainer.computed_tokens,
        "train_tokens_per_s": round(trainer.real_tokens / runtime, 2) if runtime else None,
        "padding_efficiency": round(trainer.real_tokens / trainer.computed_tokens, 4)
        if trainer.computed_tokens else None,
        "train_batch_size": state.train_batch_size,  # smaller than asked after an OOM back-off
        "effective_batch_size": (state.train_batch_size or spec.batch_size)
        * spec.gradient_accumulation_steps,
    }


def save_adapter(model: Any, adapter_dir: Path) -> int:
    """PEFT format (adapter_config.json + adapter_model.safetensors); returns bytes on disk."""
    model.save_pretrained(str(adapter_dir))
    return sum(p.stat().st_size for p in adapter_dir.glob("adapter_model*"))


def write_model_card(adapter_dir: Path, *, base_model: str, suite: Suite, arm: str,
                     metrics: dict[str, Any], baseline: dict[str, Any]) -> Path:
    """README.md whose front matter names the base model and library (the hub's card format)."""
    spec = suite.train
    assert spec is not None
    rows = "\n".join(
        f"| {k} | {baseline.get(k, float('nan')):.4g} | {v:.4g} |"
        for k, v in metrics.items() if isinstance(v, (int, float)) and k in baseline
    )
    text = f"""---
base_model: {base_model}
library_name: peft
pipeline_tag: text-generation
tags:
- base_model:adapter:{base_model}
- lora
- harness
---

# {suite.name} / {arm}

LoRA adapter (r={spec.r}, alpha={spec.alpha:g}, dropout={spec.dropout:g}, targets=
{spec.target_modules}) trained by `harness` on suite `{suite.name}`:
lr {spec.learning_rate:g}, {spec.scheduler} schedule, optimizer {spec.optimizer},
batch {spec.batch_size} x {spec.gradient_accumulation_steps} accumulation, precision
{spec.precision}.

| metric | zero-shot | this adapter |
|---|---|---|
{rows}

See the run's `run.json` and `report.html` for confidence intervals and per-item scores.
"""
    path = adapter_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
