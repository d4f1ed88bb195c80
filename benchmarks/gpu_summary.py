"""The table benchmarks/gpu.sh prints: every GPU ratio from one pytest-benchmark JSON file.

    python benchmarks/gpu_summary.py gpu-bench.json

Reads the numbers the GPU benchmarks stored in `extra_info` (nothing is measured here) and
prints the device, the library versions of this environment, the date of the run and one
Markdown row per comparison, ready to paste into benchmarks/README.md. A benchmark that did
not run (skipped, failed before it recorded) has no row.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "lm-eval",
             "liger-kernel")
Row = tuple[str, str, str, str]  # comparison, harness side, the other side, ratio


def versions() -> str:
    out = []
    for name in LIBRARIES:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def _n(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and v < 1:
        return f"{v:.1%}"
    return f"{v:,.0f}{unit}" if isinstance(v, int | float) else str(v)


def _x(v: Any) -> str:
    return "—" if v is None else f"**{v:.2f}x**"


def train_rows(i: dict[str, Any]) -> Iterator[Row]:
    """test_bench_train_gpu.py: harness vs the Trainer, then the kernel arms."""
    yield ("LoRA training, packed vs Trainer + DataCollatorForSeq2Seq (tokens/s, MFU 4N)",
           f"{_n(i['harness_tokens_per_s'])} tok/s, MFU {_n(i['harness_mfu_4n'])}",
           f"{_n(i['trainer_tokens_per_s'])} tok/s, MFU {_n(i['trainer_mfu_4n'])}",
           _x(i["ratio_vs_trainer"]))
    for name, label in (("compile", "train.compile"), ("liger", "train.liger")):
        if i.get(f"{name}_tokens_per_s") is not None:
            yield (f"LoRA training, {label} = true vs eager harness",
                   f"{_n(i[f'{name}_tokens_per_s'])} tok/s, peak "
                   f"{i[f'{name}_peak_vram_gib']} GiB",
                   f"{_n(i['harness_tokens_per_s'])} tok/s, peak {i['harness_peak_vram_gib']} GiB",
                   _x(i[f"{name}_ratio_vs_eager"]))


def qlora_rows(infos: list[dict[str, Any]]) -> Iterator[Row]:
    """test_bench_gpu.py: QLoRA's peak VRAM next to LoRA's at the same tokens per step."""
    lora = {i["gradient_checkpointing"]: i for i in infos if not i["quantized"]}
    for i in infos:
        base = lora.get(i["gradient_checkpointing"])
        if not i["quantized"] or base is None:
            continue
        ckpt = ", checkpointed" if i["gradient_checkpointing"] else ""
        yield (f"QLoRA nf4 vs LoRA peak VRAM, {i['batch']} x {i['seq']} tokens/step{ckpt}",
               f"{i['peak_vram_gib']} GiB, {_n(i['tokens_per_s'])} tok/s",
               f"{base['peak_vram_gib']} GiB, {_n(base['tokens_per_s'])} tok/s",
               f"{i['peak_vram_gib'] / base['peak_vram_gib']:.2f}x VRAM, "
               f"{_x(i.get('speed_vs_lora'))} speed")


def eval_row(i: dict[str, Any]) -> Row:
    return (f"teacher-forced eval vs lm-eval loglikelihood, {i['model']}, batch {i['batch']}",
            f"{_n(i['harness_tokens_per_s'])} tok/s", f"{_n(i['lm_eval_tokens_per_s'])} tok/s",
            f"{_x(i['ratio'])} (log-lik. within {i['max_rel_diff_loglik']:.1e})")


def generate_row(i: dict[str, Any]) -> Row:
    return (f"greedy generation vs lm-eval generate_until, {i['model']}, batch {i['batch']}, "
            f"{i['dtype']}", f"{_n(i['harness_tokens_per_s'])} tok/s",
            f"{_n(i['lm_eval_tokens_per_s'])} tok/s",
            f"{_x(i['ratio'])} ({i['identical_texts']} texts identical)")


def rows(benchmarks: list[dict[str, Any]]) -> list[Row]:
    by_group: dict[str, list[dict[str, Any]]] = {}
    for b in benchmarks:
        by_group.setdefault(b.get("group") or "", []).append(b.get("extra_info") or {})
    out: list[Row] = []
    for info in by_group.get("gpu-train-vs-trainer", []):
        out += train_rows(info)
    out += qlora_rows(by_group.get("gpu-train", []))
    out += [eval_row(i) for i in by_group.get("eval-loss-gpu", [])]
    out += [generate_row(i) for i in by_group.get("generate-gpu", [])]
    return out


def device(benchmarks: list[dict[str, Any]]) -> str:
    names = {(b.get("extra_info") or {}).get("gpu") for b in benchmarks}
    return ", ".join(sorted(n for n in names if n)) or "unknown"


def summary(report: dict[str, Any]) -> str:
    benchmarks = report.get("benchmarks", [])
    table = rows(benchmarks)
    lines = [f"device: {device(benchmarks)}", f"versions: {versions()}",
             f"date: {report.get('datetime', 'unknown')}", ""]
    if not table:
        return "\n".join(lines + ["no GPU benchmark recorded a result"])
    lines += ["| comparison | harness | other | ratio |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in table]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/gpu_summary.py BENCHMARK.json", file=sys.stderr)
        return 2
    path = Path(argv[1])
    if not path.is_file():
        print(f"{path}: no benchmark results (pytest stopped before writing them)")
        return 1
    print(summary(json.loads(path.read_text("utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
