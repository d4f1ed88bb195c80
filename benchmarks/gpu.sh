#!/usr/bin/env bash
# Every GPU ratio of benchmarks/ in one command, on a machine with one CUDA GPU, offline:
#
#   bash benchmarks/gpu.sh                 # then a table: device, versions, date, ratios
#   bash benchmarks/gpu.sh -k generate     # extra arguments go to pytest
#
# Runs test_bench_gpu.py (LoRA / QLoRA tokens/s, MFU, peak VRAM), test_bench_train_gpu.py
# (harness vs the Trainer, train.compile, train.liger), test_bench_eval_gpu.py and
# test_bench_generate_gpu.py (vs lm-eval at batch 32) in one pytest process, then
# benchmarks/gpu_summary.py on its JSON. Without a CUDA GPU it says so and exits 0: nothing
# to measure is not a failure. Otherwise it exits with pytest's status, after the table.
# Sizes: the HARNESS_BENCH_GPU_* variables in each file's docstring and benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

no_gpu() {
  echo "benchmarks/gpu.sh: $1; nothing to measure here (exit 0). The CPU benchmarks:" \
       "pytest benchmarks/ --benchmark-only -s"
  exit 0
}
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
  || no_gpu "no NVIDIA GPU (nvidia-smi finds none)"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || no_gpu "torch $(python -c 'import torch; print(torch.__version__)') sees no CUDA device"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's harness
json="${HARNESS_BENCH_GPU_JSON:-$(mktemp -d)/gpu-bench.json}"
status=0
python -m pytest benchmarks/test_bench_gpu.py benchmarks/test_bench_train_gpu.py \
  benchmarks/test_bench_eval_gpu.py benchmarks/test_bench_generate_gpu.py \
  --benchmark-only -s --benchmark-json="$json" "$@" || status=$?
echo
python benchmarks/gpu_summary.py "$json" || true
echo "(numbers: $json)"
exit "$status"
