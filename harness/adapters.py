"""Existing adapters (`[[adapters]]`, `--adapter NAME=PATH`): PEFT folders made elsewhere
(a notebook, LLaMA-Factory, axolotl, Unsloth, TRL) or on the hub, evaluated as arms on the
suite's one base model.

Preflight reads only ``adapter_config.json`` and the safetensors header (no weights): the
folder or hub id exists, the config parses, peft knows its ``peft_type``, its target modules
exist in the model's meta-device shapes, and the weights file holds exactly the tensors peft
would make for that config on that model, in their shapes. A ``base_model_name_or_path``
other than the suite's model is a warning.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import hashes
from harness.config import AdapterSpec, Suite
from harness.errors import InputError, one_line
from harness.shapes import ModelShape, matches

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
Shapes = dict[str, tuple[int, ...]]  # tensor name -> shape


class AdapterError(InputError):
    """An existing adapter that cannot be evaluated: missing, unreadable or unfit for the base."""


@dataclass(frozen=True)
class ExistingAdapter:
    name: str
    source: str  # local folder (resolved) or hub id, as the user named it
    revision: str | None
    commit: str | None  # hub: the commit the revision resolved to
    config: dict[str, Any]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "?"))

    @property
    def rank(self) -> int | None:
        r = self.config.get("r")
        return r if isinstance(r, int) else None

    @property
    def target_modules(self) -> Any:
        return self.config.get("target_modules")


def inspect(suite: Suite, spec: AdapterSpec, shape: ModelShape | None) -> ExistingAdapter:
    """What the adapter is, from its config alone; AdapterError naming the problem."""
    where = f"adapters.{spec.name}"
    local = suite.resolve(spec.path)
    if local.exists() or spec.path.startswith((".", "/", "~")):
        source, cfg_path, commit = str(local), local / CONFIG_FILE, None
    else:
        source = spec.path
        cfg_path, commit = _hub_config(spec, where)
    cfg = _read_config(cfg_path, where)
    _check_type(cfg, where)
    if shape is not None:
        _check_targets(cfg, shape, where)
        check_weights(cfg_path.parent, shape, where)
    warnings = _base_warning(suite, cfg, where)
    return ExistingAdapter(spec.name, source, spec.revision, commit, cfg, warnings)


def _read_config(path: Path, where: str) -> dict[str, Any]:
    if not path.parent.is_dir():
        raise AdapterError(f"{where}: no such adapter folder: {path.parent}")
    if not path.is_file():
        raise AdapterError(f"{where}: {path.parent} has no {CONFIG_FILE}: not a PEFT adapter")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{where}: {path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise AdapterError(f"{where}: {path} is not a JSON object")
    return cfg


def _hub_config(spec: AdapterSpec, where: str) -> tuple[Path, str | None]:
    from huggingface_hub import hf_hub_download

    from harness.modeling import hub_commit

    try:
        path = Path(hf_hub_download(spec.path, CONFIG_FILE, revision=spec.revision))
    except Exception as e:  # noqa: BLE001 - offline, missing repo, gated: all say the same
        raise AdapterUnavailable(f"{where}: hub adapter {spec.path!r} cannot be fetched: "
                                 f"{one_line(e)}") from e
    return path, hub_commit(spec.path, spec.revision)


class AdapterUnavailable(AdapterError):
    """A hub adapter that cannot be reached here (validate lists it as unchecked)."""


def _check_type(cfg: dict[str, Any], where: str) -> None:
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    kind = cfg.get("peft_type")
    if kind not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(str(k) for k in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise AdapterError(f"{where}: peft_type {kind!r} is not one this peft can load "
                           f"(it loads: {known})")


def _check_targets(cfg: dict[str, Any], shape: ModelShape, where: str) -> None:
    """Every named target must match a layer of the model (peft's suffix rule, or a regex)."""
    targets = cfg.get("target_modules")
    names = [x.name for x in shape.layers]
    if isinstance(targets, str):
        if targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
            raise AdapterError(f"{where}: target_modules {targets!r} matches no layer of "
                               f"{shape.architecture}")
        return
    missing = [t for t in targets or [] if not any(matches(n, t) for n in names)]
    if missing:
        raise AdapterError(f"{where}: target_modules {missing} are not in "
                           f"{shape.architecture} (was it trained on another base model?)")


def _base_warning(suite: Suite, cfg: dict[str, Any], where: str) -> tuple[str, ...]:
    from harness.modeling import resolve_source, same_conversion

    base = cfg.get("base_model_name_or_path")
    ours = suite.model.name_or_path or suite.model.label
    source = resolve_source(suite)
    names = {ours, suite.model.label, source.label, source.load_path}
    # harness's own adapters name the base as the suite did (source.label); older ones, of a
    # GGUF, named its converted copy in the model cache of the machine that trained them
    if not base or same_conversion(base, source) or any(_same_model(base, n, suite)
                                                        for n in names):
        return ()
    return (f"{where}: trained on base_model_name_or_path {base!r}, evaluated on the suite's "
            f"model {ours!r}",)


def _same_model(a: str, b: str, suite: Suite) -> bool:
    if a == b:
        return True
    pa, pb = suite.resolve(a), suite.resolve(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def stored_params(folder: Path | None) -> int | None:
    """Parameters in the adapter's safetensors file, from its header alone (shapes without
    reading a single weight); None for .bin or no file."""
    stored = stored_shapes(folder)
    if stored is None:
        return None
    return sum(math.prod(s) for s in stored.values())


def stored_shapes(folder: Path | None) -> Shapes | None:
    """Tensor name -> shape in the adapter's safetensors file, from its header alone; None for
    .bin or no file (a hub adapter not in the local cache)."""
    from safetensors import safe_open

    f = folder / WEIGHT_FILES[0] if folder else None
    if f is None or not f.is_file():
        return None
    with safe_open(str(f), framework="pt") as st:  # reads the header; slices stay lazy
        return {key: tuple(st.get_slice(key).get_shape()) for key in st.keys()}


def check_weights(folder: Path, shape: ModelShape, where: str) -> None:
    """The weights file's header against what peft makes of it on this model (peft's own
    key mapping, run on a meta-device copy): a tensor the adapter needs but the file lacks
    would be evaluated as its fresh initialisation (for LoRA: no change at all), one the
    model has no place for is dropped, and a shape of another model fails deep inside
    PyTorch. Skipped when the header cannot be read here (.bin, uncached hub weights) or
    peft cannot wrap a model without weights: the load itself is checked then."""
    stored = stored_shapes(folder)
    mapped = _as_loaded(folder, stored, shape) if stored is not None else None
    if stored is None or mapped is None:
        return
    given, model = mapped
    _check_names(f"{where}: {folder / WEIGHT_FILES[0]}", stored, given, model, shape)
    wrong = [k for k in given if k in model and given[k] != model[k]]
    if wrong:
        k = wrong[0]
        raise AdapterError(f"{where}: {len(wrong)} tensors do not fit {shape.architecture}: "
                           f"{_strip(k)} is {given[k]} in the adapter, {model[k]} in the model "
                           "(was it trained on another base model?)")


# Adapter tensors peft shares across layers or keeps outside the file (it leaves them out of
# its own missing-keys warning too).
_SHARED = ("vblora_vector_bank", "prompt_encoder", ".tinylora_v.", ".unilora_theta_d.")


def _check_names(what: str, stored: Shapes, given: Shapes, model: Shapes,
                 shape: ModelShape) -> None:
    needed = [k for k in model if is_adapter_key(k) and not any(x in k for x in _SHARED)]
    missing = [k for k in needed if k not in given]
    extra = [k for k in given if k not in model and not wrapper_copy(k)]
    if missing:
        n = f"{len(missing)} of the adapter's {len(needed)} tensors"
        if extra:  # the raw names show the prefix that differs
            expected, found = _file_name(missing[0]), _unplaced(stored, model)
            raise AdapterError(f"{what}: {n} are not under the names peft loads (it expects "
                               f"e.g. {expected}, the file has e.g. {found}): another key "
                               "prefix? Evaluated, they would be freshly initialised weights")
        raise AdapterError(f"{what} lacks {n} ({first_keys(missing)}): a truncated export? "
                           "Evaluated, they would be freshly initialised weights")
    if extra:
        raise AdapterError(f"{what} holds {len(extra)} tensors that {shape.architecture} has no "
                           f"place for with this config ({first_keys(extra)})")


# The name peft gives the adapter it wraps the meta model with.
_META_ADAPTER = "default"


def is_adapter_key(key: str, name: str = _META_ADAPTER) -> bool:
    """A tensor of adapter ``name`` (LoRA matrices, a modules_to_save copy), named as in the
    wrapped model; the rest are the base model's own."""
    return f".{name}." in key or key.endswith(f".{name}")


def wrapper_copy(key: str) -> bool:
    """peft's save of resized embeddings also writes the wrapper's own state
    (`lm_head.modules_to_save.weight`, `.original_module.weight`) beside the module's real
    key, which it loads; the copies land nowhere and lose nothing."""
    parts = key.split(".")
    return len(parts) > 1 and parts[-2] in ("modules_to_save", "original_module")


# How many tensor names an error shows: enough to see the pattern (a prefix, a layer).
_SHOWN = 3


def first_keys(keys: list[str], adapter: str = _META_ADAPTER) -> str:
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return "first: " + ", ".join(_strip(k, adapter) for k in keys[:_SHOWN]) + more


def _strip(key: str, adapter: str = _META_ADAPTER) -> str:
    """The module path: the file's name without peft's wrapper prefix, which says nothing."""
    return _file_name(key, adapter).removeprefix("base_model.model.")


def _file_name(key: str, adapter: str = _META_ADAPTER) -> str:
    """A wrapped model's tensor as a weights file names it: without the adapter's name."""
    return key.replace(f".{adapter}.", ".").removesuffix(f".{adapter}")


def _unplaced(stored: Shapes, model: Shapes) -> str:
    """A name in the file that is none of the model's (as files name them)."""
    names = {_file_name(k) for k in model}
    return next((k for k in stored if k not in names), next(iter(stored)))


def _as_loaded(folder: Path, stored: Shapes, shape: ModelShape) -> tuple[Shapes, Shapes] | None:
    """(the file's tensors under the names peft loads them to, the wrapped model's tensors),
    name -> shape: peft wraps a copy of the meta-device model (resized to the adapter's own
    tokenizer, as the run does) and maps the keys; the load itself is caught before any
    tensor is copied. None when peft cannot do that without real weights (an init that
    reads them, such as PiSSA)."""
    import warnings

    import torch
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    if shape.meta is None:
        return None
    given: Shapes = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = PeftConfig.from_pretrained(str(folder))
            if cfg.is_prompt_learning:  # its prompt encoder loads outside load_state_dict
                return None
            model = get_peft_model(_meta_copy(shape, folder), cfg, adapter_name=_META_ADAPTER,
                                   low_cpu_mem_usage=True)
            model.load_state_dict = lambda sd, **_: given.update(
                {k: tuple(v.shape) for k, v in sd.items()})
            set_peft_model_state_dict(model, {k: torch.empty(v, device="meta")
                                              for k, v in stored.items()}, _META_ADAPTER)
    except Exception:  # noqa: BLE001 - our check's limit, not the adapter's fault
        return None
    return given, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta_copy(shape: ModelShape, folder: Path) -> Any:
    import copy

    from harness.modeling import adapter_tokenizer

    model = copy.deepcopy(shape.meta)
    tok = adapter_tokenizer(folder)
    if tok is not None and len(tok) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=False)  # the mean reads weights
    return model


def weights_sha256(folder: Path) -> str | None:
    """sha256 of the adapter's weight file: what was evaluated, byte for byte."""
    for name in WEIGHT_FILES:
        f = folder / name
        if f.is_file():
            return hashes.sha256_of(f)
    return None
