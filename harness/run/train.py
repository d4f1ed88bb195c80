"""Train one LoRA/QLoRA adapter with transformers' Trainer.

Ours: the TrainSpec -> TrainingArguments mapping, the dataset of pre-tokenized items (dynamic
padding through DataCollatorForSeq2Seq: labels padded with -100, prompt tokens already -100),
the callback that hands every logged train/eval loss to the caller (which writes
train_log.jsonl), token accounting (real tokens vs computed tokens = padding efficiency), the
step arithmetic the Trainer will follow (`schedule`: `harness plan` shows it, the progress
bar counts it) and the checkpoint policy (`checkpoint_steps`, `newest_checkpoint`: what
`harness resume` continues from). Training computes; the caller owns every folder it writes
into and saves the adapter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import one_line
from harness.run import distributed, kernels, linearpack, modeling, packing, peftconfig
from harness.run.encoding import Encoded
from harness.suite.config import TrainSpec

LogRow = Callable[[dict[str, Any]], None]
CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's folder names: checkpoint-<global step>
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint with it is whole
AUTO_CHECKPOINTS = 10  # per training, when the suite sets no train.checkpoint_steps


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
                       report_to: Sequence[str] | None = None,
                       checkpoint_steps: int | None = None):
    """``report_to``: the integrations the Trainer creates itself (default: the spec's);
    ``checkpoint_steps``: see ``_saving``."""
    from transformers import TrainingArguments

    evaluate = spec.eval_strategy if has_validation else "no"
    precision = modeling.train_precision(spec.precision, device)
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
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        seed=spec.seed,
        data_seed=spec.seed,
        logging_strategy="steps",
        logging_steps=spec.logging_steps,
        logging_first_step=True,
        eval_strategy=evaluate,
        eval_steps=spec.eval_steps,
        **_saving(spec, evaluate, checkpoint_steps),
        load_best_model_at_end=spec.load_best_model_at_end and evaluate != "no",
        greater_is_better=False,
        report_to=list(spec.report_to if report_to is None else report_to) or "none",
        train_sampling_strategy="group_by_length" if spec.group_by_length else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        auto_find_batch_size=spec.auto_find_batch_size and device == "cuda",
        torch_compile=spec.compile,
        use_liger_kernel=spec.liger,
    )


def _saving(spec: TrainSpec, evaluate: str, checkpoint_steps: int | None) -> dict[str, Any]:
    """The suite's checkpoints; with none asked for and ``checkpoint_steps`` given, one every
    that many steps that only `harness resume` uses (the newest alone is kept). Optimizer,
    scheduler and RNG states are saved beside the weights, so any checkpoint resumes exactly
    (for LoRA the Adam moments are 2x the adapter: megabytes). Saving draws no random numbers
    and changes no weight, so it cannot change the numbers. Those get no metric_for_best_model:
    the Trainer would keep the best-eval checkpoint and, with a limit of 1, delete the last."""
    strategy = (spec.save_strategy if evaluate != "no" or not spec.load_best_model_at_end
                else "no")
    if strategy == "no" and checkpoint_steps:
        return {"save_strategy": "steps", "save_steps": checkpoint_steps, "save_total_limit": 1,
                "save_only_model": False, "metric_for_best_model": None}
    return {"save_strategy": strategy, "save_steps": spec.save_steps,
            "save_total_limit": spec.save_total_limit, "save_only_model": False,
            "metric_for_best_model": "eval_loss"}


def _trainer_class():
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """Counts real (attention) and computed (padded) tokens of every training batch;
        with ``batch_tokens`` set, trains each optimizer step's examples packed (``packing``)."""

        real_tokens = 0
        computed_tokens = 0
        shared_tokens = 0  # examples' tokens a shared prefix stood in for (packing.collate)
        share_prefix = False  # packs run the prefix their examples share once
        resume_only = False  # its checkpoints are only for `harness resume`: best effort
        checkpoint_error: str | None = None  # why they stopped (a full disk)
        batch_tokens: int | None = None  # packed training's budget per pack; None: unpacked

        def training_step(self, model, inputs, num_items_in_batch=None):
            if "packs" in inputs:
                return self._packed_step(model, inputs["packs"], num_items_in_batch)
            mask = inputs["attention_mask"]
            self.real_tokens += int(mask.sum())
            self.computed_tokens += int(mask.numel())
            return super().training_step(model, inputs, num_items_in_batch)

        def _packed_step(self, model, packs, num_items_in_batch):
            import torch

            loss = torch.zeros((), device=self.args.device)  # an entry may hold no pack
            for pack in packs:
                tokens = int(pack["input_ids"].numel())  # no padding: all of them are real
                shared = packing.shared_tokens(pack)
                self.real_tokens += tokens + shared
                self.computed_tokens += tokens
                self.shared_tokens += shared
                loss = loss + super().training_step(model, pack, num_items_in_batch)
            return loss

        def get_train_dataloader(self):
            if self.batch_tokens is None:
                return super().get_train_dataloader()
            # Same sampler and micro-batches as unpacked; get_batch_samples packs a step's
            # examples. Eval keeps the padding collator.
            collator, self.data_collator = self.data_collator, list
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = collator

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            if self.batch_tokens is None:
                return super().get_batch_samples(epoch_iterator, num_batches, device)
            raw, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
            if not raw:
                return raw, None
            # after an out-of-memory back-off (auto_find_batch_size) packs shrink with the batch
            budget = max(1, self.batch_tokens * self._train_batch_size
                         // self.args.train_batch_size)
            entries = packing.step_entries(raw, budget, distributed.active(),
                                           self.share_prefix)
            packs = [p for e in entries for p in e["packs"]]
            return entries, self._get_num_items_in_batch(packs, device)

        def floating_point_ops(self, inputs):
            if "packs" in inputs:
                return sum(super(CountingTrainer, self).floating_point_ops(p)
                           for p in inputs["packs"])
            return super().floating_point_ops(inputs)

        def _save_checkpoint(self, model, trial):
            if not self.resume_only:
                return super()._save_checkpoint(model, trial)
            if self.checkpoint_error is not None:
                return None
            try:
                return super()._save_checkpoint(model, trial)
            except (OSError, RuntimeError) as e:  # torch.save on a full disk: RuntimeError
                # A checkpoint that only resuming needs must not fail a training that would
                # succeed: drop the half-written one, save no more, say so in the summary.
                folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                shutil.rmtree(folder, ignore_errors=True)
                self.checkpoint_error = one_line(e)
                logging.getLogger("harness").warning(
                    "resume checkpoints off after a failed save: %s", self.checkpoint_error)
                return None

        def _run_epoch(self, *args, **kwargs):
            # Resumed from the last step's checkpoint (a run killed while its adapter was
            # evaluated), transformers 5.24 would still take one step past max_steps.
            if self.state.max_steps and self.state.global_step >= self.state.max_steps:
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

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
    tensorboard_dir: Path | None = None, checkpoint_steps: int | None = None,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train ``model`` (already wrapped by peft) and return it with a summary of the run.

    ``output_dir`` is the caller's scratch folder: the Trainer saves checkpoints there (needed
    to reload the best one, or to resume: ``checkpoint_steps``) and the caller removes it.
    ``resume_from``: a checkpoint of this very training to continue from (weights, optimizer,
    scheduler, RNG, data position), so the rest of the steps are the uninterrupted run's.
    TensorBoard's events, when ``spec.report_to`` names it, go to ``tensorboard_dir``.
    Nothing else is written."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback

    report_to, reporters = _reporting(spec, tensorboard_dir)
    args = training_arguments(spec, output_dir, device, has_validation=bool(val_items),
                              report_to=report_to, checkpoint_steps=checkpoint_steps)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    # the suite saves nothing, yet the Trainer does: checkpoints only for resuming
    resume_only = spec.save_strategy == "no" and args.save_strategy != "no"
    tally = _tally_callback(resume_from, save_last=resume_only)
    # The Trainer applies Liger (train.liger) as it starts; its patches end with training.
    with kernels.training_only(model, spec.liger):
        trainer = _trainer_class()(
            model=model, args=args, data_collator=collator, train_dataset=_Items(train_items),
            eval_dataset=_Items(val_items) if val_items else None,
            callbacks=[_log_callback(arm, log_row, on_step), tally, *reporters,
                       *([peftconfig.budget_callback(model)] if spec.method == "adalora" else [])],
        )
        tally.attach(trainer)
        trainer.resume_only = resume_only
        trainer.batch_tokens = _batch_tokens(spec, model, train_items)
        trainer.share_prefix = trainer.batch_tokens is not None and packing.shares_prefix(model)
        trainer.remove_callback(PrinterCallback)  # prints raw dicts; train_log.jsonl has them
        attention = (packing.packed_attention(model) if trainer.batch_tokens
                     else contextlib.nullcontext())
        # frozen base weights prepacked on the CPU (1.12x the default suite's fp32 steps), in
        # bf16 under bf16 autocast; a compiled model is left to inductor, which cannot lower
        # the packed product
        packed = (linearpack.prepacked(model, training=True, autocast=_autocast_dtype(args))
                  if not spec.compile and not args.fp16 else contextlib.nullcontext())
        with attention, packed:
            out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return TrainResult(model=trainer.model, summary=_summary(trainer, out, spec, tally))


def _autocast_dtype(args: Any) -> Any:
    import torch

    return torch.bfloat16 if args.bf16 else None


def _precision(args: Any) -> str:
    """The precision the Trainer's arguments train in ("auto" resolved by them)."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def _batch_tokens(spec: TrainSpec, model: Any, items: Sequence[Encoded]) -> int | None:
    """The packing budget per forward, or None to train unpacked (asked for, or a model whose
    attention cannot keep packed examples apart: said once, and the record shows it). Unset:
    batch_size x the longest item, what the largest padded micro-batch computes; on 2 CPU
    cores packs of 1,024-4,096 tokens trained at one rate (SmolLM2-135M: 155-160 tokens/s,
    256 tokens: 136), so a larger default would buy no speed, only memory on a GPU."""
    if not spec.packing:
        return None
    why = packing.unpackable(model)
    if why is not None:
        logging.getLogger("harness").warning("train.packing: %s; training unpacked", why)
        return None
    longest = max((len(e.input_ids) for e in items), default=1)
    return spec.batch_tokens or spec.batch_size * longest


def _tally_callback(resume_from: Path | None, save_last: bool = False):
    """What a checkpoint carries besides the Trainer's own state, so that a resumed training
    is the uninterrupted one: tokens, the train-loss sum (the Trainer's training_loss averages
    only the steps of its own train() call) and runtime for the summary, and the CPU RNG
    state at the start of the epoch. The length-grouped sampler shuffles with the global RNG
    when an epoch starts; the Trainer restores the RNG of the checkpoint's step only after
    that, so without it a resumed epoch would see its items in another order. It all rides
    in the checkpoint's trainer_state.json (``stateful_callbacks``), which the Trainer writes
    last: a checkpoint with that file is complete. ``save_last``: also checkpoint the last
    step, so a run killed while its adapter is evaluated resumes with 0 steps to train."""
    import base64
    import json
    import math
    import time

    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class HarnessTally(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.before: dict[str, Any] = {"real_tokens": 0, "computed_tokens": 0,
                                           "shared_tokens": 0, "loss_sum": 0.0,
                                           "runtime_s": 0.0, "step": 0}
            self.epoch_rng: dict[str, Any] | None = None
            self.started = time.perf_counter()
            if resume_from is not None:
                saved = json.loads((resume_from / "trainer_state.json").read_text("utf-8"))
                entry = saved.get("stateful_callbacks", {}).get(type(self).__name__, {})
                self.before.update(entry.get("attributes", {}), step=saved["global_step"])

        def attach(self, trainer: Any) -> None:
            self.trainer = trainer
            trainer.real_tokens = int(self.before["real_tokens"])
            trainer.computed_tokens = int(self.before["computed_tokens"])
            trainer.shared_tokens = int(self.before["shared_tokens"])

        def on_epoch_begin(self, args, state, control, **kw):
            # state.epoch is e + (steps done in e) / steps per epoch, exactly e + 1.0 after
            # e's last step: its floor is the epoch that starts now, resumed or not.
            epoch = math.floor(state.epoch or 0.0)
            saved = self.before.pop("epoch_rng", None)  # once: for the epoch resumed in
            if saved and saved["epoch"] == epoch:
                raw = bytearray(base64.b64decode(saved["state"]))
                torch.set_rng_state(torch.frombuffer(raw, dtype=torch.uint8))
            elif resume_from is not None and saved is not None:
                # Cut at an epoch's end: the next one starts from the checkpoint's RNG (the
                # Trainer loads it right after this), so that is the state to remember.
                rng_file = resume_from / "rng_state.pth"
                if rng_file.is_file():
                    torch.set_rng_state(torch.load(rng_file, weights_only=False)["cpu"])
            rng = torch.get_rng_state().numpy().tobytes()
            self.epoch_rng = {"epoch": epoch, "state": base64.b64encode(rng).decode()}

        def on_step_end(self, args, state, control, **kw):
            if save_last and state.global_step >= state.max_steps:
                control.should_save = True

        def loss_sum(self) -> float:
            """Sum of the per-step train losses so far, this call's and the ones before."""
            t = self.trainer
            pending = getattr(t, "_tr_loss", 0.0)  # not yet drained into the total by a log
            pending = float(pending.item() if hasattr(pending, "item") else pending or 0.0)
            return float(self.before["loss_sum"]) + float(
                getattr(t, "_total_loss_scalar", 0.0)) + pending

        def state(self) -> dict[str, Any]:
            t = self.trainer
            if t is None:  # the Trainer's constructor asks before attach()
                return {"args": {}, "attributes": {}}
            return {"args": {}, "attributes": {
                "real_tokens": t.real_tokens, "computed_tokens": t.computed_tokens,
                "shared_tokens": t.shared_tokens,
                "loss_sum": self.loss_sum(), "epoch_rng": self.epoch_rng,
                "runtime_s": float(self.before["runtime_s"]) + time.perf_counter()
                - self.started}}

    return HarnessTally()


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


def _summary(trainer: Any, out: Any, spec: TrainSpec, tally: Any) -> dict[str, Any]:
    """``tally``: what the steps before a resumed checkpoint took (nothing when not resumed),
    added to this call's numbers so the summary covers the whole training."""
    before = tally.before
    runtime = float(before["runtime_s"]) + float(out.metrics.get("train_runtime", 0.0))
    state = trainer.state
    steps = state.global_step - int(before["step"])  # this call's steps
    mean_loss = ((float(before["loss_sum"]) + float(out.training_loss) * steps)
                 / max(state.global_step, 1) if before["step"] else float(out.training_loss))
    evals = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
    losses = [float(r["loss"]) for r in state.log_history if "loss" in r]
    # Under DDP each rank counts its own micro-batches: the run's tokens are the ranks' sum.
    real = sum(distributed.all_values(trainer.real_tokens))
    computed = sum(distributed.all_values(trainer.computed_tokens))
    shared = sum(distributed.all_values(trainer.shared_tokens))
    world = distributed.world_size()
    return {
        "global_steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "train_runtime_s": round(runtime, 3),
        # The Trainer's training_loss is the mean over all steps; the last logged value is what
        # the loss had come down to (logged every `logging_steps`, averaged over that window).
        "mean_train_loss": mean_loss,
        "final_train_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None,
        # only the suite's own checkpoints: the ones kept for resuming are no result
        "best_checkpoint": Path(state.best_model_checkpoint).name
        if state.best_model_checkpoint and spec.save_strategy != "no" else None,
        "train_tokens": real,
        "computed_tokens": computed,  # token positions run: padding in, shared prefixes once
        "shared_prefix_tokens": shared,  # examples' tokens a prefix run once per pack served
        "train_tokens_per_s": round(real / runtime, 2) if runtime else None,
        "padding_efficiency": round(real / (computed + shared), 4) if computed else None,
        "precision": _precision(trainer.args),  # as it ran: train.precision = "auto" resolved
        "packed": trainer.batch_tokens is not None,  # padding-free rows (train.packing)
        "batch_tokens": trainer.batch_tokens,
        "train_batch_size": state.train_batch_size,  # per device; smaller after an OOM back-off
        "world_size": world,  # processes training together (DDP)
        "effective_batch_size": (state.train_batch_size or spec.batch_size)
        * spec.gradient_accumulation_steps * world,
        **({"resumed_from_step": int(before["step"])} if before["step"] else {}),
        **({"checkpoint_error": trainer.checkpoint_error} if trainer.checkpoint_error else {}),
    }


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Schedule:
    """The optimizer steps a training of ``n_train`` items makes, as the Trainer counts them
    (None where the item count is not known yet: `harness plan` before the data loads)."""

    n_train: int | None
    batch_size: int
    accumulation: int
    epochs: float
    steps_per_epoch: int | None
    total_steps: int | None
    warmup_steps: int | None

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulation


def schedule(spec: TrainSpec, n_train: int | None) -> Schedule:
    per_epoch = steps_per_epoch(n_train, spec.batch_size, spec.gradient_accumulation_steps)
    total = spec.max_steps or (math.ceil(spec.epochs * per_epoch) if per_epoch else None)
    return Schedule(n_train=n_train, batch_size=spec.batch_size,
                    accumulation=spec.gradient_accumulation_steps, epochs=spec.epochs,
                    steps_per_epoch=per_epoch, total_steps=total,
                    warmup_steps=warmup_steps(spec, total))


def steps_per_epoch(n_train: int | None, batch_size: int, accumulation: int) -> int | None:
    """transformers 5 Trainer: batches = ceil(n / batch); a trailing partial accumulation
    group still makes an optimizer step, so ceil(batches / accumulation), at least 1."""
    if not n_train:
        return None
    batches = math.ceil(n_train / batch_size)
    return max(1, math.ceil(batches / accumulation))  # 2,000 ex / 2 / 8 -> 125


def warmup_steps(spec: TrainSpec, total: int | None) -> int | None:
    """TrainingArguments.get_warmup_steps: an explicit count wins, else ceil(ratio * total)."""
    if spec.warmup_steps:
        return spec.warmup_steps
    if total is None:
        return None
    return math.ceil(total * spec.warmup_ratio)  # 0.03 * 512 -> 16


# ---------------------------------------------------------------- checkpoints


class Checkpoint(NamedTuple):
    path: Path
    step: int


def newest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete Trainer checkpoint in ``folder`` (a kill during a save leaves a
    ``checkpoint-N`` without its trainer_state.json: not resumable)."""
    found = [Checkpoint(p, int(p.name[len(CHECKPOINT_PREFIX):]))
             for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
             if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / TRAINER_STATE).is_file()]
    return max(found, key=lambda c: c.step, default=None)


def checkpoint_steps(spec: TrainSpec, total_steps: int | None) -> int | None:
    """How often a training saves a checkpoint that is only there for resuming (None: never).
    ``train.checkpoint_steps`` if set (0: never), else every ~10% of the steps rounded up to a
    multiple of ``logging_steps``: the Trainer's logged loss averages the steps since the last
    log, a window a resume must not cut (then the resumed train_log equals the uninterrupted
    one). 500 steps, logging every 10 -> a checkpoint every 50. None under torchrun /
    accelerate: a resume runs as one process, and every rank would save its own."""
    if distributed.active():
        return None
    if spec.checkpoint_steps is not None:
        return spec.checkpoint_steps or None
    if not total_steps:
        return None
    windows = math.ceil(total_steps / AUTO_CHECKPOINTS / spec.logging_steps)
    return spec.logging_steps * max(1, windows)
