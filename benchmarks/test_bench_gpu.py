"""LoRA vs QLoRA training on one GPU, TinyLlama-1.1B shape, random weights.

No network: the model is built from TinyLlama-1.1B's config numbers with random weights, saved
as bf16 safetensors and loaded back through harness.run.modeling.load_model (4-bit nf4 for QLoRA),
so speed, memory and MFU are real even though quality is not. Training is
harness.run.train.train_adapter on fixed-length synthetic items (no padding), LoRA r16 on every
linear layer, bf16, AdamW, no gradient checkpointing.

Reported per arm: steady-state tokens/s (steps after WARMUP_STEPS, timed with a CUDA sync at
each step end), peak VRAM (`torch.cuda.max_memory_allocated` over training, weights included),
weight memory, and MFU against the GPU's dense bf16 peak; for QLoRA also its memory saving
over LoRA. Skipped without CUDA; needs bitsandbytes (`pip install -e '.[quant]'`) for QLoRA.

FLOPs per trained token (model FLOPs, the MFU convention):
- full fine-tuning costs 6·N: 2·N forward, 2·N for activation gradients, 2·N for weight
  gradients;
- LoRA freezes the base weights, so their weight gradients are never computed: 4·N_frozen
  (forward + activation gradients) + 6·N_lora for the adapters (tiny next to N).
N counts the matmul weights (attention and MLP projections, LM head; not the embedding
lookup). Attention score/value products (~4·L·T·d per token forward, ~5% at T=512) are left
out, so MFU is slightly understated. QLoRA counts the same FLOPs: dequantizing nf4 weights is
overhead, not model work, which is exactly what its lower MFU shows.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conftest import TINYLLAMA  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (LoRA/QLoRA speed, VRAM and MFU)"),
    pytest.mark.benchmark(group="gpu-train", warmup=False),
]

SEQ = int(os.environ.get("HARNESS_BENCH_GPU_SEQ", 512))
BATCH = int(os.environ.get("HARNESS_BENCH_GPU_BATCH", 8))  # 8 seqs * 512 tok = 4,096 tok/step
STEPS = int(os.environ.get("HARNESS_BENCH_GPU_STEPS", 40))
WARMUP_STEPS = 10  # allocator growth, cuBLAS heuristics, bnb kernels: not steady state
LORA_R = 16

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s. Override: HARNESS_BENCH_PEAK_TFLOPS.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
             ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12),
             ("L4", 121e12)]

RESULTS: dict[tuple[str, bool], dict[str, Any]] = {}


def peak_flops() -> float | None:
    if "HARNESS_BENCH_PEAK_TFLOPS" in os.environ:
        return float(os.environ["HARNESS_BENCH_PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name()
    return next((f for key, f in PEAK_BF16 if key in name), None)


def matmul_params(cfg: dict[str, Any]) -> int:
    """N: attention + MLP projections of every layer, plus the LM head (TinyLlama: 1.034e9)."""
    d, ff, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff  # q, o; k, v; gate, up, down
    return L * per_layer + d * cfg["vocab_size"]


def gpu_suite(model_dir: Path, quantized: bool, checkpointing: bool) -> Any:
    from harness.suite import suitefile

    model: dict[str, Any] = {"name_or_path": str(model_dir), "dtype": "bfloat16",
                             "device": "cuda"}
    if quantized:  # QLoRA as the TinyLlama coding report ran it: nf4, double quant, bf16 compute
        model["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                 "compute_dtype": "bfloat16"}
    raw = {
        "name": "gpu-bench", "model": model,
        "data": {"path": "unused.jsonl", "prompt_template": "{{ x }}",
                 "response_template": "{{ y }}"},
        "train": {"r": LORA_R, "alpha": 2 * LORA_R, "dropout": 0.05,
                  "target_modules": "all-linear", "learning_rate": 2e-4, "max_steps": STEPS,
                  "batch_size": BATCH, "precision": "bf16", "optimizer": "adamw_torch",
                  "eval_strategy": "no", "logging_steps": STEPS, "seed": 0,
                  "gradient_checkpointing": checkpointing},
    }
    return suitefile.validate_suite(raw, path=model_dir / "gpu-bench.toml")


def synthetic_items(n: int) -> list[Any]:
    """Fixed-length random token sequences, loss on every token but the first."""
    from harness.run.encoding import IGNORE_INDEX, Encoded

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TINYLLAMA["vocab_size"], (n, SEQ), generator=g).tolist()
    return [Encoded(id=f"s{i}", input_ids=tuple(row), labels=(IGNORE_INDEX, *row[1:]),
                    prompt_len=1, full_len=SEQ, truncated=False) for i, row in enumerate(ids)]


def train_once(model_dir: Path, quantized: bool, checkpointing: bool,
               work: Path) -> dict[str, Any]:
    from harness.run import adapterload, modeling, train

    suite = gpu_suite(model_dir, quantized, checkpointing)
    tok = modeling.load_tokenizer(suite.model, str(model_dir))
    # The previous arm's Trainer sits in reference cycles: without a collection its 2.1 GiB of
    # bf16 weights were still allocated and counted against the next arm.
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = adapterload.attach_adapter(modeling.load_model(suite.model, str(model_dir), "cuda"),
                                 suite.train, suite.model.quantization)
    lora_params, _ = modeling.count_params(model)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() - base
    step_end: list[float] = []

    def on_step() -> None:
        torch.cuda.synchronize()
        step_end.append(time.perf_counter())

    torch.cuda.reset_peak_memory_stats()
    result = train.train_adapter(model, tok, suite.train, arm="gpu", train_items=synthetic_items(
        STEPS * BATCH), val_items=[], output_dir=work, device="cuda", log_row=lambda r: None,
        on_step=on_step)
    peak = torch.cuda.max_memory_allocated() - base
    tokens_per_step = BATCH * SEQ
    timed = len(step_end) - 1 - WARMUP_STEPS
    tps = tokens_per_step * timed / (step_end[-1] - step_end[WARMUP_STEPS])
    flops_per_token = 4 * matmul_params(TINYLLAMA) + 6 * lora_params
    peak_f = peak_flops()
    out = {
        "gpu": torch.cuda.get_device_name(), "quantized": quantized,
        "gradient_checkpointing": checkpointing, "seq": SEQ,
        "batch": BATCH, "steps": STEPS, "timed_steps": timed,
        "tokens_per_s": round(tps, 1),
        "peak_vram_gib": round(peak / 2**30, 3), "weights_gib": round(weights / 2**30, 3),
        "lora_params": lora_params, "matmul_params": matmul_params(TINYLLAMA),
        "flops_per_token": flops_per_token,
        "mfu": round(tps * flops_per_token / peak_f, 4) if peak_f else None,
        "peak_tflops": peak_f / 1e12 if peak_f else None,
        "final_train_loss": result.summary["final_train_loss"],
        "padding_efficiency": result.summary["padding_efficiency"],
    }
    del model, result
    gc.collect()
    torch.cuda.empty_cache()
    return out


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("arm", ["lora", "qlora"])
def test_lora_qlora_tinyllama(benchmark: Any, tinyllama_dir: Path, tmp_path: Path, arm: str,
                              checkpointing: bool, record: Any) -> None:
    if arm == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs pip install -e '.[quant]'")
    out = benchmark.pedantic(train_once, args=(tinyllama_dir, arm == "qlora", checkpointing,
                                               tmp_path / arm),
                             rounds=1, iterations=1, warmup_rounds=0)
    RESULTS[arm, checkpointing] = out
    lora = RESULTS.get(("lora", checkpointing))
    if arm == "qlora" and lora:  # parametrize order: lora ran just before
        out["vram_saving_vs_lora"] = round(1 - out["peak_vram_gib"] / lora["peak_vram_gib"], 3)
        out["weight_saving_vs_lora"] = round(1 - out["weights_gib"] / lora["weights_gib"], 3)
        out["speed_vs_lora"] = round(out["tokens_per_s"] / lora["tokens_per_s"], 3)
    record(arm=arm, **out)
    assert out["padding_efficiency"] == 1.0
    assert out["final_train_loss"] == out["final_train_loss"]  # not NaN
    if "weight_saving_vs_lora" in out:  # nf4 projections: ~1/4 of bf16 (fp32 head/embeddings)
        assert out["weight_saving_vs_lora"] > 0.3, "QLoRA weights should be far smaller"
