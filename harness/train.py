"""Train one LoRA/QLoRA adapter with transformers' Trainer.

Ours: the TrainSpec -> TrainingArguments mapping, the dataset of pre-tokenized items (dynamic
padding through DataCollatorForSeq2Seq: labels padded with -100, prompt tokens already -100),
the callback that hands every logged train/eval loss to the caller (which writes
train_log.jsonl), and token accounting (real tokens vs computed tokens = padding efficiency).
Training computes; the caller owns every folder it writes into and saves the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import TrainSpec
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


def training_arguments(spec: TrainSpec, out: Path, device: str, has_validation: bool,
                       report_to: Sequence[str] | None = None):
    """``report_to``: the integrations the Trainer creates itself (default: the spec's)."""
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
        report_to=list(spec.report_to if report_to is None else report_to) or "none",
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
    model: Any, tokenizer: Any, spec: TrainSpec, *, arm: str,
    train_items: Sequence[Encoded], val_items: Sequence[Encoded], output_dir: Path, device: str,
    log_row: LogRow, on_step: Callable[[], None] = lambda: None,
    tensorboard_dir: Path | None = None,
) -> TrainResult:
    """Train ``model`` (already wrapped by peft) and return it with a summary of the run.

    ``output_dir`` is the caller's scratch folder: the Trainer saves checkpoints there (needed
    to reload the best one) and the caller removes it. TensorBoard's events, when
    ``spec.report_to`` names it, go to ``tensorboard_dir``. Nothing else is written."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback

    report_to, reporters = _reporting(spec, tensorboard_dir)
    args = training_arguments(spec, output_dir, device, has_validation=bool(val_items),
                              report_to=report_to)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = _trainer_class()(
        model=model, args=args, data_collator=collator, train_dataset=_Items(train_items),
        eval_dataset=_Items(val_items) if val_items else None,
        callbacks=[_log_callback(arm, log_row, on_step), *reporters],
    )
    trainer.remove_callback(PrinterCallback)  # prints raw dicts; train_log.jsonl has them
    out = trainer.train()
    return TrainResult(model=trainer.model, summary=_summary(trainer, out, spec))


def _reporting(spec: TrainSpec, tensorboard_dir: Path | None) -> tuple[list[str], list[Any]]:
    """(report_to for the Trainer, callbacks it gets besides). transformers 5 takes
    TensorBoard's folder from $TENSORBOARD_LOGGING_DIR, else output_dir (scratch, deleted
    after training); a callback told its folder writes where the caller says without
    changing the process's environment, and still only on the main process."""
    if "tensorboard" not in spec.report_to or tensorboard_dir is None:
        return list(spec.report_to), []
    from transformers.integrations import TensorBoardCallback

    board = TensorBoardCallback()
    board.logging_dir = str(tensorboard_dir)  # read at on_train_begin, on rank 0 only
    return [r for r in spec.report_to if r != "tensorboard"], [board]


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
