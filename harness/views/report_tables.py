"""The report's tables beside the headline: every arm's metrics, training, where existing
adapters came from, token lengths and the config."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from harness import metrics as M
from harness.metrics import SYSTEM_KEYS, lower_is_better
from harness.rundir.record import Status
from harness.stats import measured
from harness.views import formatting as F
from harness.views.report_data import ReportData, as_dict, metric_column

# ------------------------------------------------------------------ tables


def arm_table(d: ReportData) -> dict[str, Any]:
    """Every arm's metrics side by side (arms as rows: sweeps have many), best in bold."""
    metrics_by_arm = {a: as_dict(as_dict(d.arm_records.get(a)).get("metrics")) for a in d.arms}
    keys = _ordered({k for m in metrics_by_arm.values() for k in m})
    marks = {a: measured.mark_of(d.record, a) for a in d.arms}
    best = {k: _best([F.number(m.get(k)) for a, m in metrics_by_arm.items()
                      if not (marks[a] and k in SYSTEM_KEYS)], k) for k in keys}
    rows = [{"arm": a, "status": str(as_dict(d.arm_records.get(a)).get("status", "not run")),
             "cells": [_arm_cell(k, m.get(k), best[k], marks[a]) for k in keys]}
            for a, m in metrics_by_arm.items()]
    show_status = any(r["status"] != Status.SUCCESS for r in rows)
    return {"columns": [metric_column(k) for k in keys], "rows": rows, "show_status": show_status}


def _arm_cell(key: str, v: Any, best: float | None, mark: str | None) -> dict[str, Any]:
    """Speed and memory not comparable with the baseline's (a cached baseline, an arm another
    process measured: measured.mark) are marked and never best."""
    if mark and key in SYSTEM_KEYS and v is not None:
        return {"text": f"{F.metric(key, v)} ({mark})", "best": False}
    return {"text": F.metric(key, v), "best": F.number(v) is not None and F.number(v) == best}


def _ordered(keys: Iterable[str]) -> list[str]:
    known = sorted((k for k in keys if M.is_known(k)), key=M.sort_key)
    return known + sorted(set(keys) - set(known))


def _best(values: list[float | None], metric: str) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or min(vals) == max(vals):
        return None  # nothing to single out
    return min(vals) if lower_is_better(metric) else max(vals)


TRAIN_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("global_steps", "Steps", F.count),
    ("epochs", "Epochs", lambda v: F.cell("epochs", v)),
    ("effective_batch_size", "Effective batch", F.count),
    ("trainable_params", "Trainable params", F.count),
    ("total_params", "Total params", F.count),
    ("trainable_share", "Trainable %", lambda v: F.percent(v, signed=False).replace("%", " %")),
    ("adapter_bytes", "Adapter size", F.byte_size),
    ("train_runtime_s", "Train time", F.seconds),
    ("train_tokens_per_s", "Train tokens/s", lambda v: F.metric("eval_tokens_per_s", v)),
    ("padding_efficiency", "Padding efficiency", lambda v: F.percent(v, signed=False)),
    ("precision", "Precision (as trained)", str),
    ("packed", "Packed (padding-free rows)", lambda v: "yes" if v else "no"),
    ("batch_tokens", "Tokens per packed forward (at most)", F.count),
    ("train_tokens", "Train tokens", F.count),
    ("final_train_loss", "Final train loss (last logged)", lambda v: F.metric("loss", v)),
    ("mean_train_loss", "Mean train loss (all steps)", lambda v: F.metric("loss", v)),
    ("best_eval_loss", "Best eval loss", lambda v: F.metric("loss", v)),
)
# Redundant with padding_efficiency or internal: not shown.
TRAIN_HIDDEN = frozenset({"computed_tokens", "config"})
LENGTH_LABELS = {
    "n": "Examples", "mean": "Mean tokens", "median": "Median tokens", "max": "Max tokens",
    "mean_response": "Mean response tokens", "share_truncated": "Truncated",
    "dropped_too_long": "Dropped (too long)",
}


def _cell_of(key: str) -> Callable[[Any], str]:
    return lambda v: F.cell(key, v)


def training_table(d: ReportData) -> dict[str, Any] | None:
    """One column per adapter arm. Rows: the train-config knobs that differ between arms (a
    sweep's cells) first, then what training measured, known rows in order and formatted;
    rows that are null in every arm are skipped."""
    raw = {a: as_dict(v) for a, v in as_dict(d.record.get("training")).items()}
    if not raw:
        return None
    varying = _varying(raw)
    per_arm = {a: _with_share(v) for a, v in raw.items()}
    present = {k for v in per_arm.values() for k, x in v.items()
               if _scalar(x) and x is not None} - TRAIN_HIDDEN
    known = {k for k, _, _ in TRAIN_ROWS}
    rows: list[tuple[str, dict[str, Any], Callable[[Any], str]]] = [
        ("config." + k, {a: varying[a].get(k) for a in raw}, F.raw)
            for k in sorted({k for v in varying.values() for k in v})]
    rows += [(name, {a: v.get(k) for a, v in per_arm.items()}, f)
             for k, name, f in TRAIN_ROWS if k in present]
    rows += [(k.replace("_", " "), {a: v.get(k) for a, v in per_arm.items()}, _cell_of(k))
             for k in sorted(present - known)]
    return {"arms": list(raw), "rows": [{"label": name, "cells": [f(vals[a]) for a in raw]}
                                        for name, vals, f in rows]}


EXISTING_ROWS = (("path", "From"), ("revision", "Revision"), ("commit", "Commit"),
                 ("peft_type", "PEFT type"), ("r", "Rank"), ("target_modules", "Targets"),
                 ("params", "Parameters"), ("base_model", "Trained on"),
                 ("sha256", "Weights sha256"))


def existing_table(d: ReportData) -> dict[str, Any] | None:
    """Where each existing adapter came from (the arms harness did not train)."""
    origins = {a: as_dict(as_dict(d.arm_records.get(a)).get("origin")) for a in d.arms}
    origins = {a: o for a, o in origins.items() if o}
    if not origins:
        return None
    rows = [{"label": label, "cells": [F.count(o.get(k)) if k == "params" else F.raw(o.get(k))
                                       for o in origins.values()]}
            for k, label in EXISTING_ROWS if any(o.get(k) is not None for o in origins.values())]
    return {"arms": list(origins), "rows": rows}


def _varying(training: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm, the train-config entries (dotted keys) whose values differ across arms."""
    flat = {a: dict(F.flatten(as_dict(t.get("config")))) for a, t in training.items()}
    keys = {k for f in flat.values() for k in f}
    varying = {k for k in keys if len({json.dumps(f.get(k), default=str)
                                       for f in flat.values()}) > 1}
    return {a: {k: f.get(k) for k in varying} for a, f in flat.items()} if len(flat) > 1 else {}


def _with_share(t: dict[str, Any]) -> dict[str, Any]:
    n, total = F.number(t.get("trainable_params")), F.number(t.get("total_params"))
    return {**t, "trainable_share": n / total} if n is not None and total else t


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def length_table(lengths: dict[str, Any]) -> dict[str, Any] | None:
    """Length statistics per split (``{split: {stat: x}}``) or per split and field
    (``{split: {field: {stat: x}}}``); shares are shown as percentages."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for split, v in lengths.items():
        v = as_dict(v)
        nested = {f: s for f, s in v.items() if isinstance(s, dict)}
        rows += [(f"{split} · {f}", s) for f, s in nested.items()]
        flat = {k: x for k, x in v.items() if _scalar(x)}
        rows += [(split, flat)] if flat else []
    keys = list(dict.fromkeys(k for _, s in rows for k, x in s.items() if _scalar(x)))
    if not rows or not keys:
        return None
    return {"columns": [LENGTH_LABELS.get(k, k.replace("_", " ")) for k in keys],
            "rows": [{"split": name, "cells": [F.cell(k, s.get(k)) for k in keys]}
                     for name, s in rows]}


def config_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The model and training sub-configs flattened to dotted keys."""
    sections = [("Model", config.get("model")), ("Training / adapter", config.get("train"))]
    return [{"title": t, "rows": [(k, F.raw(v)) for k, v in F.flatten(as_dict(s))]}
            for t, s in sections if as_dict(s)]
