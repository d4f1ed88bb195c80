"""Exports of an adapter arm: what is deployed instead of the adapter, built here so the run
can evaluate it as an arm of its own (``<from>+<format>``) and pair it with its source.

``merged``: the adapter merged into the base's weights (peft ``merge_and_unload``), in the
base's dtype; a QLoRA adapter merges into the de-quantized (unquantized) base, as people
deploy it. ``merged-nf4`` / ``merged-int8``: those merged weights loaded back through
bitsandbytes (4-bit NF4, 8-bit), as a quantized deployment serves them. ``gguf-f16`` /
``gguf-q8_0`` / ``gguf-q4_0``: those merged weights written as a GGUF file (harness.run.
ggufwriter) and read back through transformers' GGUF loader. The artifact is
saved as a transformers folder to measure its size and sha256; it is kept in the run
directory only when the suite asks (``keep``): weights are large.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.run import adapters, ggufwriter, memory, modeling
from harness.rundir.record import Status
from harness.suite import arms, config
from harness.suite.config import ModelSpec, Quantization
from harness.views import templating

RUNTIME = "transformers"  # what evaluates a merged export: the same stack as the adapter
# merged-<q>: the merged weights loaded back through bitsandbytes, as they are served.
QUANTIZED: dict[str, dict[str, Any]] = {"merged-nf4": {"bits": 4, "quant_type": "nf4"},
                                        "merged-int8": {"bits": 8}}
FORMATS = ("merged", *QUANTIZED, *ggufwriter.FORMATS)
GGUF_FILE = "model.gguf"
# What evaluates a GGUF export: transformers' GGUF loader, which de-quantizes every tensor to
# float32 (the quantization error stays in the weights; llama.cpp's kernels are not run).
GGUF_RUNTIME = "transformers-gguf (de-quantized to float32)"


@dataclass(frozen=True)
class Built:
    model: Any  # ready to evaluate
    info: dict[str, Any]  # the record's arms.<arm>.export


def build(fmt: str, base: ModelSpec, path: str, adapter: Path, tok: Any, device: str,
          keep: Path | None) -> Built:
    """Export ``fmt`` of the adapter in ``adapter``: merged into a freshly loaded, unquantized
    ``base`` (a QLoRA adapter into the de-quantized weights, as it is deployed), then for a
    quantized format loaded back through bitsandbytes; saved into ``keep`` (or a temporary
    folder) for its bytes and sha256."""
    from peft import PeftModel

    unquantized = base.model_copy(update={"quantization": None})
    start = time.perf_counter()
    with memory.PeakMemory(device) as peak, _folder(None) as scratch:
        base_model = modeling.load_model(unquantized, path, device)
        base_bytes = memory.weight_bytes(base_model)  # the base as deployed beside an adapter
        model = PeftModel.from_pretrained(base_model, str(adapter)).merge_and_unload()
        extra: dict[str, Any] = {}
        if fmt in QUANTIZED:
            _save(model, tok, scratch)
            model = modeling.load_model(_quantized(unquantized, fmt, device), str(scratch),
                                        device)
        with _folder(keep) as out:
            if fmt in ggufwriter.FORMATS:
                extra = ggufwriter.write(model, tok, out / GGUF_FILE, fmt)
                model = _gguf_model(out, device)
            else:
                _save(model, tok, out)
            seconds = time.perf_counter() - start
            size, digest = _weights(out)
    return Built(model.eval(), {
        "format": fmt, "runtime": _runtime(fmt), "bytes": size, "sha256": digest,
        "seconds": round(seconds, 3), "peak_memory_bytes": peak.bytes,
        "path": str(keep) if keep else None, "dtype": str(next(model.parameters()).dtype),
        "base_bytes": base_bytes, **extra})


def _runtime(fmt: str) -> str:
    if fmt in ggufwriter.FORMATS:
        return GGUF_RUNTIME
    return RUNTIME + ("+bitsandbytes" if fmt in QUANTIZED else "")


def _gguf_model(folder: Path, device: str) -> Any:
    """The GGUF file read back by transformers' GGUF loader, as a user of transformers
    would load it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE,
                                                 dtype=torch.float32)
    model.to(device)  # type: ignore[arg-type]  # transformers types `to` as taking a model
    return model


def _quantized(spec: ModelSpec, fmt: str, device: str) -> ModelSpec:
    """The spec that loads merged weights as ``fmt``: compute in float32 on a CPU (its 4-bit
    kernels), else in the suite's quantization compute dtype or bfloat16."""
    compute = (spec.quantization.compute_dtype if spec.quantization
               else "float32" if device == "cpu" else "bfloat16")
    return spec.model_copy(update={"quantization": Quantization(
        **QUANTIZED[fmt], compute_dtype=compute)})


def _save(model: Any, tok: Any, folder: Path) -> None:
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


@contextlib.contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    tmp = Path(tempfile.mkdtemp(prefix="harness-export-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _weights(folder: Path) -> tuple[int, str]:
    """Bytes and sha256 of the weight files (safetensors shards or the GGUF file, in name
    order)."""
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.gguf")])
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return sum(f.stat().st_size for f in files), h.hexdigest()



def export_arm(run_dir: Path, arm: str, fmt: str, out: Path) -> dict[str, Any]:
    """``harness export``: arm ``arm`` of the run in ``run_dir`` built as ``fmt`` into ``out``
    (a new or empty folder), with a model card naming the base, the adapter's sha256 and the
    run that evaluated it. InputError, with nothing written, for an arm that is not an
    adapter of the run, a format harness does not build, or an ``out`` that holds files."""
    from harness.rundir.record import load_run

    loaded = load_run(run_dir)
    folder, sha = _adapter_of(loaded.record, Path(loaded.path), arm)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: harness exports {', '.join(FORMATS)}")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out}: not empty; give a new or empty folder")
    suite = config.Suite.model_validate(loaded.record["config"])
    source = modeling.resolve_source(suite)
    path = modeling.ensure_converted(source)
    device = modeling.pick_device(suite.model)
    tok = modeling.load_tokenizer(suite.model, path)
    built = build(fmt, suite.model, path, folder, tok, device, out)
    card = templating.render("export_card.md.j2", base_model=source.label, arm=arm,
                             fmt=fmt, adapter_sha256=sha, run_id=loaded.record.get("run_id"),
                             suite=loaded.record.get("suite"), info=built.info)
    (out / "README.md").write_text(card, encoding="utf-8")
    return built.info


def source_folder(entry: dict[str, Any], run_dir: Path) -> Path | None:
    """Where the adapter of a record's arm entry is: a trained arm's in the run directory,
    an existing arm's where it was evaluated from (a hub adapter's cached snapshot)."""
    if entry.get("source") == arms.TRAINED:
        return run_dir / str(entry["adapter"])
    origin = entry.get("origin") or {}
    return adapters.adapter_folder(str(origin.get("path") or entry["adapter"]),
                                   origin.get("revision"))


def _adapter_of(record: dict[str, Any], run_dir: Path, arm: str) -> tuple[Path, str | None]:
    """The folder of adapter arm ``arm`` (trained: in the run; existing: where it was
    evaluated from) and its weights' sha256."""
    found = (record.get("arms") or {}).get(arm)
    have = [n for n, a in (record.get("arms") or {}).items()
            if isinstance(a, dict) and a.get("source") in (arms.TRAINED, arms.EXISTING)
            and a.get("status") == Status.SUCCESS]
    if arm not in have or not isinstance(found, dict):
        raise InputError(f"arm {arm!r}: not a successful adapter arm of this run; it has "
                         f"{', '.join(have) or 'none'}")
    folder = source_folder(found, run_dir)
    if folder is None or not folder.is_dir():
        raise InputError(f"arm {arm!r}: its adapter folder {folder} is not on this machine")
    return folder, adapters.weights_sha256(folder)
