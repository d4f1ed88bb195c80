"""Existing adapters (`[[adapters]]`, `--adapter NAME=PATH`): PEFT folders made elsewhere
(a notebook, LLaMA-Factory, axolotl, Unsloth, TRL) or on the hub, evaluated as arms on the
suite's one base model.

Preflight reads only ``adapter_config.json`` and the safetensors header (no weights): the
folder or hub id exists, the config parses, peft knows its ``peft_type``, every value has the
JSON type peft's config class declares and the class accepts it, the header is readable, its
target modules exist in the model's meta-device shapes, peft can wrap that model with it, and
the weights file holds exactly the tensors peft would make for that config on that model, in
their shapes. Every problem is an AdapterError (exit 2) naming the file and the key or tensor;
``read_config`` and ``stored_shapes`` are the one reader of each file. A
``base_model_name_or_path`` other than the suite's model is a warning.
"""

from __future__ import annotations

import json
import math
import re
from collections import abc as collections_abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InputError, one_line
from harness.run import hashes
from harness.run.shapes import ModelShape, matches
from harness.suite.config import AdapterSpec, Suite

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
    if not suite.on_hub(spec):
        source, cfg_path, commit = str(local), local / CONFIG_FILE, None
    else:
        source = spec.path
        cfg_path, commit = _hub_config(spec, where)
    cfg = read_config(cfg_path, where)
    stored = stored_shapes(cfg_path.parent, where)  # a corrupt header fails even without the model
    if shape is not None:
        _check_targets(cfg, shape, where)
        _check_weights(cfg_path.parent, cfg, stored, shape, where)
    warnings = _base_warning(suite, cfg, where)
    return ExistingAdapter(spec.name, source, spec.revision, commit, cfg, warnings)


def read_config(path: Path, where: str) -> dict[str, Any]:
    """The one reader of an ``adapter_config.json``: a JSON object whose ``peft_type`` this
    peft knows, whose every value has the type peft's config class declares for its key, and
    that the class itself accepts (its own range checks, such as ``r`` > 0). Anything else is
    an AdapterError naming the file and the key, before a model or a weight is touched."""
    cfg = _read_json(path, where)
    what = f"{where}: {path}"
    _check_type(cfg, what)
    _check_fields(cfg, what)
    peft_config(cfg, what)
    return cfg


def _read_json(path: Path, where: str) -> dict[str, Any]:
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

    from harness.run.modeling import hub_commit

    try:
        path = Path(hf_hub_download(spec.path, CONFIG_FILE, revision=spec.revision))
    except Exception as e:  # noqa: BLE001 - offline, missing repo, gated: all say the same
        raise AdapterUnavailable(f"{where}: hub adapter {spec.path!r} cannot be fetched: "
                                 f"{one_line(e)}") from e
    return path, hub_commit(spec.path, spec.revision)


class AdapterUnavailable(AdapterError):
    """A hub adapter that cannot be reached here (validate lists it as unchecked)."""


def _check_type(cfg: dict[str, Any], what: str) -> None:
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    kind = cfg.get("peft_type")
    if not isinstance(kind, str) or kind not in PEFT_TYPE_TO_CONFIG_MAPPING:
        known = ", ".join(sorted(str(getattr(k, "value", k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING))
        raise AdapterError(f"{what}: peft_type {kind!r} is not one this peft can load "
                           f"(it loads: {known})")


def _check_fields(cfg: dict[str, Any], what: str) -> None:
    """Each value against the type peft's config dataclass declares for its key: peft itself
    checks none of them (``"r": "8"`` fails at the first comparison, mid-run). Keys this peft
    does not declare are left to it (it drops them with a warning)."""
    import typing

    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    try:
        hints = typing.get_type_hints(PEFT_TYPE_TO_CONFIG_MAPPING[cfg["peft_type"]])
    except Exception:  # noqa: BLE001 - an annotation this Python cannot resolve: peft decides
        return
    for key, value in cfg.items():
        if key in hints and not _fits(value, hints[key]):
            raise AdapterError(f"{what}: {key} must be {_describe(hints[key])}, got "
                               f"{_shown(value)}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for ``hint`` (a JSON list for a tuple, an object for a
    nested config dataclass, a string for an enum); a form not handled here passes."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:  # peft widens some ("pissa_niter_[number of iters]"): the type
        return any(_fits(value, type(a)) for a in args)
    if origin is not None or hint in (list, tuple, dict):
        return _fits_container(value, origin or hint, args)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    return _fits_scalar(value, hint)


def _fits_container(value: Any, kind: Any, args: tuple[Any, ...]) -> bool:
    if kind is dict:
        return isinstance(value, dict) and (len(args) < 2 or all(_fits(v, args[1])
                                                                 for v in value.values()))
    if kind in (list, tuple, collections_abc.Sequence):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, list) and all(any(_fits(v, a) for a in items) or not items
                                               for v in value)
    return True


# JSON types a declared scalar accepts: 0.0 is written 0, and peft declares int where it
# takes any number (harness's own adapters write `"lora_alpha": 16.0`; an `r` of 8.0 is left
# to peft's wrap, which refuses it); true is an int in Python, not here.
_SCALARS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int, float), float: (int, float),
                                         str: (str,), type(None): (type(None),)}


def _fits_scalar(value: Any, hint: Any) -> bool:
    import enum

    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str) or value in {m.value for m in hint}
    kinds = _SCALARS.get(hint)
    if kinds is None:
        return True
    return isinstance(value, kinds) and (hint is bool or not isinstance(value, bool))


_JSON_NAMES = {bool: "true or false", int: "a number", float: "a number", str: "a string",
               list: "a list", tuple: "a list", dict: "an object", type(None): "null"}


def _describe(hint: Any) -> str:
    """``Optional[list[str]]`` -> "a list of strings or null": the JSON a key takes."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " or ".join(dict.fromkeys(_describe(type(a)) for a in args))
    if origin in (list, tuple) and args and args[0] in _JSON_NAMES:
        return f"a list of {_JSON_NAMES[args[0]].split()[-1]}s"
    if origin is not None and origin not in (list, tuple, dict):  # a union
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    base = origin or hint
    return _JSON_NAMES.get(base, "a string" if isinstance(base, type) and issubclass(
        base, str) else "an object")


def _shown(value: Any) -> str:
    """A config value as the file writes it, cut to one short line."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def peft_config(cfg: dict[str, Any], what: str) -> Any:
    """The config as peft's own class builds it (as ``PeftConfig.from_pretrained`` does), its
    refusals (``r`` <= 0, ``lora_alpha`` with ``use_rslora`` ...) as AdapterError."""
    import warnings

    from peft import PeftConfig

    try:
        with warnings.catch_warnings():  # keys of a newer peft: dropped, as the load will
            warnings.simplefilter("ignore")
            return PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**cfg))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise AdapterError(f"{what}: peft refuses it: {one_line(e)}") from e


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
    from harness.run.modeling import resolve_source, same_conversion

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


def stored_shapes(folder: Path | None, where: str = "adapter") -> Shapes | None:
    """Tensor name -> shape in the adapter's safetensors file, from its header alone; None for
    .bin or no file (a hub adapter not in the local cache). A file safetensors cannot read (a
    header that is not JSON, a length past the end, tensors past the end) is an AdapterError."""
    from safetensors import SafetensorError, safe_open

    f = folder / WEIGHT_FILES[0] if folder else None
    if f is None or not f.is_file():
        return None
    try:
        with safe_open(str(f), framework="pt") as st:  # reads the header; slices stay lazy
            return {key: tuple(st.get_slice(key).get_shape()) for key in st.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{where}: {f} is not a readable safetensors file: "
                           f"{one_line(e)}") from e


def _check_weights(folder: Path, cfg: dict[str, Any], stored: Shapes | None, shape: ModelShape,
                   where: str) -> None:
    """The weights file's header against what peft makes of it on this model (peft's own
    key mapping, run on a meta-device copy): a tensor the adapter needs but the file lacks
    would be evaluated as its fresh initialisation (for LoRA: no change at all), one the
    model has no place for is dropped, and a shape of another model fails deep inside
    PyTorch. A config peft cannot apply to the model fails here as it would fail the load.
    Skipped when the header is not here (.bin, uncached hub weights) or peft cannot map the
    keys without weights: the load itself is checked then. ``stored``: stored_shapes."""
    what = f"{where}: {folder / WEIGHT_FILES[0]}"
    mapped = _as_loaded(folder, cfg, stored, shape, where) if stored is not None else None
    if stored is None or mapped is None:
        return
    given, model = mapped
    _check_names(what, stored, given, model, shape)
    wrong = [k for k in given if k in model and given[k] != model[k]]
    if wrong:
        k = wrong[0]
        raise AdapterError(f"{where}: {len(wrong)} tensors do not fit {shape.architecture}: "
                           f"{_strip(k)} is {given[k]} in the adapter, {model[k]} in the model "
                           "(was it trained on another base model?)")


# Adapter tensors peft shares across layers or keeps outside the file (it leaves them out of
# its own missing-keys warning too). VeRA's per-layer vera_A / vera_B are views of one frozen
# random pair, saved once as base_model.vera_A / vera_B (or regrown from its PRNG key).
_SHARED = ("vblora_vector_bank", "prompt_encoder", ".tinylora_v.", ".unilora_theta_d.",
           ".vera_A.", ".vera_B.")


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
    return "first: " + shown_names([_strip(k, adapter) for k in keys])


def shown_names(names: list[str]) -> str:
    """The first few names and how many more: "a, b, c, ... 5 more"."""
    more = f", ... {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


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


def _as_loaded(folder: Path, cfg: dict[str, Any], stored: Shapes, shape: ModelShape,
               where: str) -> tuple[Shapes, Shapes] | None:
    """(the file's tensors under the names peft loads them to, the wrapped model's tensors),
    name -> shape: peft wraps a copy of the meta-device model (resized to the adapter's own
    tokenizer, as the run does) and maps the keys; the load itself is caught before any
    tensor is copied. None when peft cannot map them without real weights."""
    import warnings

    import torch
    from peft import set_peft_model_state_dict

    config = _meta_config(peft_config(cfg, where))
    if shape.meta is None or config.is_prompt_learning:  # its encoder loads outside the dict
        return None
    model, given = _wrapped(shape, folder, config, f"{where}: {folder / CONFIG_FILE}"), {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_state_dict = lambda sd, **_: given.update(
                {k: tuple(v.shape) for k, v in sd.items()})
            set_peft_model_state_dict(model, {k: torch.empty(v, device="meta")
                                              for k, v in stored.items()}, _META_ADAPTER)
    except Exception:  # noqa: BLE001 - our check's limit, not the adapter's fault
        return None
    return given, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta_config(config: Any) -> Any:
    """Inits that read the base weights (PiSSA, OLoRA, LoftQ, EVA, CorDA: a string in
    ``init_lora_weights``) cannot run on the meta device; the file's tensors replace any init,
    and their shapes are the same."""
    if isinstance(getattr(config, "init_lora_weights", None), str):
        config.init_lora_weights = False
    return config


def _wrapped(shape: ModelShape, folder: Path, config: Any, what: str) -> Any:
    """peft's wrap of a meta copy of the model. What peft refuses here (a target that is no
    layer it can adapt, ``layers_to_transform`` past the last layer, no target at all) it
    refuses in the run too, after the baseline's evaluation."""
    import warnings

    from peft import get_peft_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_peft_model(_meta_copy(shape, folder), config,
                                  adapter_name=_META_ADAPTER, low_cpu_mem_usage=True)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise AdapterError(f"{what}: peft cannot apply it to {shape.architecture}: "
                           f"{one_line(e)}") from e


def _meta_copy(shape: ModelShape, folder: Path) -> Any:
    import copy

    model = copy.deepcopy(shape.meta)
    tok = adapter_tokenizer(folder)
    if tok is not None and len(tok) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=False)  # the mean reads weights
    return model


def weights_file(folder: Path | None) -> Path | None:
    """The adapter's weight file (safetensors, else .bin), or None."""
    if folder is None:
        return None
    return next((Path(folder) / n for n in WEIGHT_FILES if (Path(folder) / n).is_file()), None)


def weights_sha256(folder: Path) -> str | None:
    """sha256 of the adapter's weight file: what was evaluated, byte for byte."""
    f = weights_file(folder)
    return hashes.sha256_of(f) if f is not None else None


def adapter_tokenizer(folder: Path | None):
    """The tokenizer saved with an adapter (added tokens, a chat template), or None."""
    if folder is None or not any((folder / f).is_file()
                                 for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    from harness.run.modeling import with_pad_token

    return with_pad_token(AutoTokenizer.from_pretrained(str(folder)))


def adapter_folder(source: str, revision: str | None) -> Path | None:
    """The local folder holding the adapter's files (a hub adapter: its cached snapshot)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: no hash rather than a failed arm
        return None
