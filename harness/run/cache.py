"""Zero-shot baseline cache: evaluate the base model once, reuse it across runs and cells.

The zero-shot arm depends only on the base model, its loading (dtype, quantization,
attention), the eval items and templates, the encoding (max length, truncation), the
generation settings, the device and the library versions. All of those go into the key, so a
change to any of them misses the cache; an adapter arm is never stored or read here.

Entries: ``$HARNESS_CACHE/baselines/<key>.json`` = {"key_fields", "arm", "rows"}, written
atomically. A corrupt entry is ignored (and recomputed), never trusted. An entry that cannot
be written (``store`` raises OSError) loses only the reuse: the pipeline warns and goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.run.cachedir import cache_dir
from harness.run.env import versions
from harness.run.modeling import ModelSource
from harness.rundir import results
from harness.suite.config import EvalSpec, Suite

log = logging.getLogger(__name__)

# Bumped when what an entry holds changes for the same key, so an older entry is not served as
# today's numbers: 2 kept only the metrics a set asks for (1 added perplexity to every set); 3:
# CPU evaluation runs on prepacked linear weights, whose products sum in another order (~1e-6
# relative), and an arm's numbers must come from one kernel beside the baseline's; 4: the
# teacher-forced NLL is computed in place (torch's float32 cross-entropy read 8.4e-6 nats per
# token low against float64 on the default suite's general set, this 1.5e-8) and choices are
# scored tree-masked after a shared context prefix (sums in another order, ~5e-5 nats).
ENTRY_VERSION = 4


def baseline_key_fields(suite: Suite, spec: EvalSpec, source: ModelSource, device: str,
                        eval_fingerprint: str, variant: str | None = None,
                        content: str | None = None, sets: Sequence[Any] = ()
                        ) -> dict[str, Any]:
    """``spec``: the [eval] settings the arm is scored with (max_new_tokens fitted to the
    model's context), so the key holds what ran. ``content`` is
    modeling.model_identity().content: the sha256 of every byte of the local weights, config
    and tokenizer files, or the hub commit, so a model folder overwritten in place misses the
    cache (a path alone served a stale loss: 6.01 cached vs 11.07 true; size, mtime and the
    first and last MiB: 5.9946 vs 6.0319 for weights changed in the middle by a copy that kept
    the mtime). ``sets``: the extra eval sets (data.EvalSet) scored with the arm; each one's
    items and settings join the key (none: the key of a suite without sets)."""
    import harness

    m, d = suite.model, suite.data
    v = versions()
    fields: dict[str, Any] = {
        "entry": ENTRY_VERSION, "model": source.label, "content": content, "revision": m.revision,
        "tokenizer": m.tokenizer, "dtype": m.dtype, "attn": m.attn_implementation,
        "quantization": m.quantization.model_dump() if m.quantization else None,
        "eval_fingerprint": eval_fingerprint, "variant": variant,
        "templates": [d.prompt_template, d.response_template, d.chat_template, d.system_prompt],
        "encoding": [d.max_length, d.truncation_side],
        "eval": spec.model_dump(mode="json"),
        "device": device,
        "versions": [harness.__version__, v["torch"], v["transformers"], v["bitsandbytes"]],
    }
    if sets:
        # An lm-eval task's scoring (filters, process_results) is lm-eval's code: its version
        # joins the key beside the requests' fingerprint.
        fields["sets"] = [{"name": s.name, "fingerprint": s.fingerprint,
                           "spec": s.spec.model_dump(mode="json"),
                           **({"task": s.task.summary()} if s.task else {})} for s in sets]
    return fields


def key_of(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return cache_dir() / "baselines" / f"{key}.json"


Entry = tuple[dict[str, Any], list[dict[str, Any]]]


def load(fields: dict[str, Any], ids: list[str]) -> Entry | None:
    """(arm record, prediction rows) of an earlier identical zero-shot evaluation of the items
    ``ids`` (in eval order), or None. An entry of any other shape is corrupt: ignored and
    recomputed, never trusted."""
    path = _path(key_of(fields))
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        problem = _shape_problem(entry, fields, ids)
    except (OSError, ValueError) as e:
        problem = str(e)
    if problem:
        log.warning("ignoring corrupt baseline cache entry %s: %s", path, problem)
        return None
    return entry["arm"], entry["rows"]


def _shape_problem(entry: Any, fields: dict[str, Any], ids: list[str]) -> str | None:
    if not isinstance(entry, dict) or entry.get("key_fields") != fields:
        return "not an entry for this key"
    arm, rows = entry.get("arm"), entry.get("rows")
    if not isinstance(arm, dict) or not isinstance(arm.get("metrics"), dict):
        return "no arm metrics"
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return "rows are not a list of objects"
    if [r.get("id") for r in rows] != ids:
        return f"{len(rows)} rows for {len(ids)} eval items, or not the same items"
    return None


def store(fields: dict[str, Any], arm: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path = _path(key_of(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"key_fields": fields, "arm": arm, "rows": rows}
    results.atomic_write_text(path, results.dumps(entry, indent=None))


def describe_failure(e: OSError) -> str:
    """``/x/cache/baselines: Not a directory``: where the cache write failed and why."""
    where = e.filename or cache_dir()
    return f"{where}: {e.strerror or e}"
