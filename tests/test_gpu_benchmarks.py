"""benchmarks/gpu.sh, the one command for every GPU ratio: without a CUDA device it says so in
one line and exits 0 before any benchmark runs; its table (benchmarks/gpu_summary.py) has one
row per comparison a pytest-benchmark JSON file holds, with that file's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_sh_without_a_cuda_device_says_so_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="": no device for torch even on a GPU machine, so this test never
    # starts the benchmarks themselves
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "HARNESS_BENCH_GPU_JSON": str(tmp_path / "bench.json")}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], env=env, text=True,
                         capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stdout
    assert lines[0].startswith("benchmarks/gpu.sh: ") and "nothing to measure" in lines[0]
    assert "no NVIDIA GPU" in lines[0] or "sees no CUDA device" in lines[0]
    assert not (tmp_path / "bench.json").exists()  # pytest never ran


def _bench(group: str, **info) -> dict:
    return {"group": group, "name": group, "extra_info": {"gpu": "NVIDIA H100 80GB HBM3",
                                                          **info}}


def _report() -> dict:
    arm = dict(batch=8, seq=512, gradient_checkpointing=False)
    return {"datetime": "2026-12-07T01:00:00+00:00", "benchmarks": [
        _bench("gpu-train", quantized=False, tokens_per_s=24000.0, peak_vram_gib=13.2, **arm),
        _bench("gpu-train", quantized=True, tokens_per_s=13200.0, peak_vram_gib=11.9,
               speed_vs_lora=0.55, **arm),
        _bench("gpu-train-vs-trainer", harness_tokens_per_s=30000.0, harness_mfu_4n=0.127,
               trainer_tokens_per_s=20000.0, trainer_mfu_4n=0.085, ratio_vs_trainer=1.5,
               harness_peak_vram_gib=9.5, compile_tokens_per_s=33000.0,
               compile_peak_vram_gib=9.1, compile_ratio_vs_eager=1.1,
               liger_tokens_per_s=None, liger_ratio_vs_eager=None),
        _bench("eval-loss-gpu", model="tinyllama-1.1b", batch=32, harness_tokens_per_s=90000.0,
               lm_eval_tokens_per_s=80000.0, ratio=1.134, max_rel_diff_loglik=3.8e-3),
        _bench("generate-gpu", model="tinyllama-1.1b", batch=32, dtype="float32",
               harness_tokens_per_s=2000.0, lm_eval_tokens_per_s=1000.0, ratio=2.0,
               identical_texts="64/64"),
    ]}


def test_the_summary_has_one_row_per_comparison_with_its_numbers(tmp_path):
    report = _report()
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_summary.py"),
                          str(path)], text=True, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "device: NVIDIA H100 80GB HBM3"
    assert lines[1].startswith("versions: torch ") and "transformers " in lines[1]
    assert lines[2] == f"date: {report['datetime']}"
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines
             if ln.startswith("| ") and not ln.startswith("| comparison")]
    assert len(table) == 5  # train vs Trainer, compile (liger did not run), QLoRA, eval, gen

    def row(prefix: str) -> list[str]:
        return next(r for r in table if r[0].startswith(prefix))

    trainer = row("LoRA training, packed vs Trainer")
    assert trainer[3] == "**1.50x**"
    assert trainer[1] == "30,000 tok/s, MFU 12.7%" and trainer[2] == "20,000 tok/s, MFU 8.5%"
    assert row("LoRA training, train.compile = true")[3] == "**1.10x**"
    assert not [r for r in table if "liger" in r[0]]
    assert row("QLoRA")[3] == f"{11.9 / 13.2:.2f}x VRAM, **0.55x** speed"
    assert row("teacher-forced")[3] == "**1.13x** (log-lik. within 3.8e-03)"
    assert row("greedy generation")[3] == "**2.00x** (64/64 texts identical)"


def test_a_run_that_wrote_no_results_says_so(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_summary.py"),
                          str(tmp_path / "absent.json")], text=True, capture_output=True,
                         timeout=120, check=False)
    assert res.returncode == 1 and "no benchmark results" in res.stdout
