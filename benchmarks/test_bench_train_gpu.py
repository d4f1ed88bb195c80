"""LoRA training on one GPU: harness (packed, the default) vs a plain transformers Trainer with
dynamic padding, and harness with its opt-in kernels (train.compile, train.liger).

TinyLlama-1.1B shape with random weights in bf16 (the `tinyllama_dir` fixture), LoRA r16 on
every linear layer but the LM head, dropout 0, AdamW, bf16 mixed precision: the recipe of
test_bench_gpu.py. The items are what packing is for: lengths drawn from 128-512 tokens, a
32-token prefix every item shares (a system prompt), the prompt (the prefix and a third of the
rest) masked from the loss. Both sides use the same TrainingArguments (harness.run.train's),
the same random sampler and seed, so step i trains the same 8 examples on both:

- Trainer: `DataCollatorForSeq2Seq` (pad to the batch's longest, labels -100), the model's
  own SDPA over the padded batch, logits at every position.
- harness: `train_adapter`, each step's examples one padding-free row, attention per example,
  the prefix they share run once, the LM head only at scored positions; then the same
  with `train.compile = true` and with `train.liger = true` (skipped when liger-kernel is
  not installed), once each.

tokens/s counts real tokens (prompt + response, no padding) over the steps after
`WARMUP_STEPS`, each step's end CUDA-synchronised; both sides count the same tokens per step
(taken from the Trainer's batches). MFU(4N) = tokens/s x (4 x 1.034e9 + 6 x LoRA params) /
the GPU's dense bf16 peak, the convention of test_bench_gpu.py, for both sides alike: the
work harness skips (padding, prompt logits) is not credited, so the MFU ratio is the speed
ratio. Skipped without CUDA. Knobs: HARNESS_BENCH_GPU_TRAIN_STEPS [30],
HARNESS_BENCH_GPU_TRAIN_ROUNDS [2], HARNESS_BENCH_GPU_KERNELS [1; 0 skips the compile and
Liger arms].
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conftest import TINYLLAMA  # noqa: E402
from test_bench_gpu import gpu_suite, matmul_params, peak_flops  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (LoRA training vs the Trainer, tokens/s, MFU)"),
    pytest.mark.benchmark(group="gpu-train-vs-trainer", warmup=False),
]

STEPS = int(os.environ.get("HARNESS_BENCH_GPU_TRAIN_STEPS", 30))
ROUNDS = int(os.environ.get("HARNESS_BENCH_GPU_TRAIN_ROUNDS", 2))
KERNELS = os.environ.get("HARNESS_BENCH_GPU_KERNELS", "1") != "0"
BATCH = 8
WARMUP_STEPS = 8  # allocator growth, cuBLAS heuristics and, for compile, most recompiles
LENGTHS = (128, 512)  # tokens per item, uniform
SHARED_PREFIX = 32


def varied_items(n: int, vocab: int, seed: int = 0) -> list[Any]:
    """Random token items of varied length with a shared prefix; prompt tokens masked."""
    from harness.run.encoding import IGNORE_INDEX, Encoded

    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab, (SHARED_PREFIX,), generator=g).tolist()
    lengths = torch.randint(LENGTHS[0], LENGTHS[1] + 1, (n,), generator=g).tolist()
    out = []
    for i, length in enumerate(lengths):
        ids = prefix + torch.randint(3, vocab, (length - SHARED_PREFIX,), generator=g).tolist()
        prompt = SHARED_PREFIX + (length - SHARED_PREFIX) // 3
        labels = (IGNORE_INDEX,) * prompt + tuple(ids[prompt:])
        out.append(Encoded(id=f"v{i}", input_ids=tuple(ids), labels=labels, prompt_len=prompt,
                           full_len=length, truncated=False))
    return out


def bench_suite(model_dir: Path, **train: Any) -> Any:
    """test_bench_gpu's LoRA recipe, dropout 0 (no masks of different shapes on the two
    sides), the random sampler of a plain Trainer, a loss logged every step."""
    from harness.suite import suitefile

    return suitefile.with_overrides(gpu_suite(model_dir, False, False), {
        "train.dropout": 0.0, "train.group_by_length": False, "train.max_steps": STEPS,
        "train.batch_size": BATCH,
        "train.logging_steps": 1, **{f"train.{k}": v for k, v in train.items()}})


class Counted:
    """A collator that remembers each batch's real tokens, in the order the Trainer asks."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.tokens = inner, []

    def __call__(self, features: list[dict]) -> Any:
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return self.inner(features)


def _fresh(suite: Any, model_dir: Path, device: str) -> Any:
    from harness.run import adapterload, modeling

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return adapterload.attach_adapter(modeling.load_model(suite.model, str(model_dir), device),
                                      suite.train, suite.model.quantization)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def plain_trainer(suite: Any, model_dir: Path, items: list, out: Path,
                  device: str = "cuda") -> dict[str, Any]:
    """A notebook's LoRA Trainer on the same model, arguments and items."""
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback

    from harness.run import modeling, train

    tok = modeling.load_tokenizer(suite.model, str(model_dir))
    collator = Counted(DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            ends.append(time.perf_counter())

    rows = [{"input_ids": list(e.input_ids), "labels": list(e.labels),
             "attention_mask": [1] * len(e.input_ids)} for e in items]
    args = train.training_arguments(suite.train, out, device, has_validation=False)
    trainer = Trainer(model=_fresh(suite, model_dir, device), args=args,
                      data_collator=collator, train_dataset=rows, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    out_ = {"ends": ends, "step_tokens": collator.tokens[:len(ends)], "losses": losses,
            "peak_vram_gib": _peak_gib(device)}
    del trainer
    return out_


def harness_trainer(suite: Any, model_dir: Path, items: list, out: Path,
                    device: str = "cuda") -> dict[str, Any]:
    """harness.run.train.train_adapter, as `harness run` trains an arm."""
    from harness.run import modeling, train

    tok = modeling.load_tokenizer(suite.model, str(model_dir))
    ends: list[float] = []
    rows: list[dict] = []

    def on_step() -> None:
        _sync(device)
        ends.append(time.perf_counter())

    model = _fresh(suite, model_dir, device)
    lora, _ = modeling.count_params(model)
    result = train.train_adapter(model, tok, suite.train, arm="bench", train_items=items,
                                 val_items=[], output_dir=out, device=device,
                                 log_row=rows.append, on_step=on_step)
    out_ = {"ends": ends, "losses": [r["loss"] for r in rows if "loss" in r],
            "summary": result.summary, "lora_params": lora, "peak_vram_gib": _peak_gib(device)}
    del model, result
    return out_


def steady_tokens_per_s(run: dict[str, Any], step_tokens: list[int]) -> float:
    """Real tokens of the steps after WARMUP_STEPS over their wall time."""
    ends = run["ends"]
    return sum(step_tokens[WARMUP_STEPS:len(ends)]) / (ends[-1] - ends[WARMUP_STEPS - 1])


def compare(model_dir: Path, tmp: Path, alternate: Any, device: str = "cuda",
            vocab: int = TINYLLAMA["vocab_size"]) -> dict[str, Any]:
    """Both sides alternated A-B-B-A ``ROUNDS`` times, then the kernel arms once each."""
    items = varied_items(STEPS * BATCH, vocab)  # one epoch: every side sees every item
    runs: dict[str, list[dict[str, Any]]] = {"harness": [], "trainer": []}
    suite = bench_suite(model_dir)
    alternate(lambda i: runs["harness"].append(
                  harness_trainer(suite, model_dir, items, tmp / f"h{i}", device)),
              lambda i: runs["trainer"].append(
                  plain_trainer(suite, model_dir, items, tmp / f"t{i}", device)),
              ROUNDS)
    for name, on in (("compile", KERNELS), ("liger", KERNELS and _liger())):
        if on:
            runs[name] = [harness_trainer(bench_suite(model_dir, **{name: True}), model_dir,
                                          items, tmp / name, device)]
    return summarize(runs, items)


def _liger() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def summarize(runs: dict[str, list[dict[str, Any]]], items: list) -> dict[str, Any]:
    step_tokens = runs["trainer"][0]["step_tokens"]
    assert len(step_tokens) == STEPS and sum(step_tokens) == sum(len(e.input_ids) for e in items)
    tps = {name: sum(steady_tokens_per_s(r, step_tokens) for r in rs) / len(rs)
           for name, rs in runs.items()}
    h = runs["harness"][0]
    assert h["summary"]["train_tokens"] == sum(step_tokens)  # the same examples, all of them
    assert h["summary"]["packed"] and h["summary"]["padding_efficiency"] == 1.0
    flops = 4 * matmul_params(TINYLLAMA) + 6 * h["lora_params"]
    peak = peak_flops() if torch.cuda.is_available() else None
    out: dict[str, Any] = {
        "steps": STEPS, "timed_steps": STEPS - WARMUP_STEPS, "batch": BATCH,
        "item_tokens": f"{LENGTHS[0]}-{LENGTHS[1]}", "real_tokens": sum(step_tokens),
        "rounds": ROUNDS, "lora_params": h["lora_params"], "flops_per_token": flops,
        # tokens of the examples that a pack's shared prefix, run once, stood in for
        "shared_prefix_tokens": h["summary"].get("shared_prefix_tokens"),
        "step_loss_max_rel_gap": max(abs(a - b) / abs(b) for a, b in zip(
            h["losses"], runs["trainer"][0]["losses"])),
    }
    for name, rate in tps.items():
        out[f"{name}_tokens_per_s"] = round(rate, 1)
        out[f"{name}_mfu_4n"] = round(rate * flops / peak, 4) if peak else None
        out[f"{name}_peak_vram_gib"] = runs[name][0]["peak_vram_gib"]
    out["ratio_vs_trainer"] = round(tps["harness"] / tps["trainer"], 3)
    for name in ("compile", "liger"):
        out[f"{name}_ratio_vs_eager"] = (round(tps[name] / tps["harness"], 3)
                                         if name in tps else None)
    return out


def test_lora_training_vs_trainer_on_gpu(benchmark: Any, tinyllama_dir: Path, tmp_path: Path,
                                         alternate: Any, record: Any) -> None:
    out = compare(tinyllama_dir, tmp_path, alternate)
    record(gpu=torch.cuda.get_device_name(), liger_installed=_liger(), **out)
    for name in ("harness", "trainer", "compile", "liger"):
        assert out.get(f"{name}_tokens_per_s", 1) > 0
    # bf16 on both sides, other reduction orders (packed rows vs padded batches, logits only
    # where scored): the same examples' losses agree to bf16's few digits, not to fp32's
    assert out["step_loss_max_rel_gap"] < 5e-2
