"""Existing adapters (`[[adapters]]`, `--adapter NAME=PATH`): PEFT folders made elsewhere
(a notebook, LLaMA-Factory, axolotl, Unsloth, TRL) or on the hub, evaluated as arms on the
suite's one base model.

Preflight reads only ``adapter_config.json`` (no weights): the folder or hub id exists, the
config parses, peft knows its ``peft_type``, its target modules exist in the model's
meta-device shapes. A ``base_model_name_or_path`` other than the suite's model is a warning.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import AdapterSpec, Suite
from harness.errors import InputError, one_line
from harness.shapes import ModelShape, matches

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


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
    from safetensors import safe_open

    f = folder / WEIGHT_FILES[0] if folder else None
    if f is None or not f.is_file():
        return None
    total = 0
    with safe_open(str(f), framework="pt") as st:  # reads the header; slices stay lazy
        for key in st.keys():
            n = 1
            for d in st.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def weights_sha256(folder: Path) -> str | None:
    """sha256 of the adapter's weight file: what was evaluated, byte for byte."""
    for name in WEIGHT_FILES:
        f = folder / name
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
    return None
