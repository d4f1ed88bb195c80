"""Zero-shot baseline cache: evaluate the base model once, reuse it across runs and cells.

The zero-shot arm depends only on the base model, its loading (dtype, quantization,
attention), the eval items and templates, the encoding (max length, truncation), the
generation settings, the device and the library versions. All of those go into the key, so a
change to any of them misses the cache; an adapter arm is never stored or read here.

Entries: ``$HARNESS_CACHE/baselines/<key>.json`` = {"key_fields", "arm", "rows"}, written
atomically. A corrupt entry is ignored (and recomputed), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from harness import results
from harness.config import Suite
from harness.env import versions
from harness.modeling import ModelSource, cache_dir

log = logging.getLogger(__name__)


def baseline_key_fields(suite: Suite, source: ModelSource, device: str,
                        eval_fingerprint: str, variant: str | None = None) -> dict[str, Any]:
    import harness

    m, d = suite.model, suite.data
    v = versions()
    return {
        "model": source.label, "cache_key": source.cache_key, "revision": m.revision,
        "tokenizer": m.tokenizer, "dtype": m.dtype, "attn": m.attn_implementation,
        "quantization": m.quantization.model_dump() if m.quantization else None,
        "eval_fingerprint": eval_fingerprint, "variant": variant,
        "templates": [d.prompt_template, d.response_template, d.chat_template, d.system_prompt],
        "encoding": [d.max_length, d.truncation_side],
        "eval": suite.eval.model_dump(mode="json"),
        "device": device,
        "versions": [harness.__version__, v["torch"], v["transformers"], v["bitsandbytes"]],
    }


def key_of(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return cache_dir() / "baselines" / f"{key}.json"


def load(fields: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(arm record, prediction rows) of an earlier identical zero-shot evaluation, or None."""
    path = _path(key_of(fields))
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["key_fields"] != fields:
            return None
        return entry["arm"], entry["rows"]
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring corrupt baseline cache entry %s: %s", path, e)
        return None


def store(fields: dict[str, Any], arm: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path = _path(key_of(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"key_fields": fields, "arm": arm, "rows": rows}
    results.atomic_write_text(path, json.dumps(entry, ensure_ascii=False))
