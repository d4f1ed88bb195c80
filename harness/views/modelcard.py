"""The adapter card's front matter (adapters/<arm>/README.md): the hub's card metadata with a
``model-index`` of the arm's eval results, built with huggingface_hub's own ``ModelCardData``
and ``EvalResult``, so the hub (and ``huggingface_hub.ModelCard.load``) reads back what the
record holds.

The model-index schema has one value per metric and no notion of a baseline, so the zero-shot
base model's value is a second result beside each metric, on the same dataset, named
"<metric> (zero-shot base)"; ``args.arm`` says which arm each value is (the adapter's arm name,
or ``baseline``). Only finite quality metrics: speed and memory say nothing about the adapter
on another machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from harness import metrics as M
from harness.stats import measured
from harness.suite import arms as A
from harness.views import formatting as F
from harness.views.report_data import as_dict

TASK = "text-generation"
ZERO_SHOT = "zero-shot base"


def front_matter(record: Mapping[str, Any], *, arm: str, base_model: str, method: str,
                 metrics: Mapping[str, Any]) -> str:
    """The YAML between the card's ``---`` lines: base_model and library_name (what the hub
    and peft link an adapter to its base by), the task, tags, and the model-index."""
    from huggingface_hub import ModelCardData

    results = eval_results(record, arm, metrics)
    data = ModelCardData(
        base_model=base_model, library_name="peft", pipeline_tag=TASK,
        tags=[f"base_model:adapter:{base_model}", method, "harness"],
        model_name=f"{record.get('suite')}/{arm}" if results else None,
        eval_results=results or None)
    return data.to_yaml()


def eval_results(record: Mapping[str, Any], arm: str, metrics: Mapping[str, Any]) -> list[Any]:
    """For each finite quality metric of the arm: its value, then the zero-shot base's."""
    from huggingface_hub import EvalResult

    base = as_dict(as_dict(as_dict(record.get("arms")).get(A.BASELINE)).get("metrics"))
    out = []
    for key, value in metrics.items():
        if measured.is_system(key) or F.number(value) is None:
            continue
        eval_set, name = M.split(key)
        shown = M.LABELS.get(name, name)
        where = {"task_type": TASK, **dataset(record, eval_set), "metric_type": name}
        out.append(EvalResult(**where, metric_name=shown, metric_value=float(value),
                              metric_args={"arm": arm}))
        if F.number(base.get(key)) is not None:
            out.append(EvalResult(**where, metric_name=f"{shown} ({ZERO_SHOT})",
                                  metric_value=float(base[key]),
                                  metric_args={"arm": A.BASELINE}))
    return out


def dataset(record: Mapping[str, Any], eval_set: str | None) -> dict[str, Any]:
    """The EvalResult's dataset fields: the hub dataset or file the items came from (type), a
    short name, its config and split where the suite set them, and which items (the eval
    fingerprint and count, so two cards on the same items can be told apart)."""
    config, data = as_dict(record.get("config")), as_dict(record.get("data"))
    if eval_set is None:
        spec = as_dict(config.get("data"))
        source = spec.get("dataset") or spec.get("eval_path") or spec.get("path")
        split = spec.get("eval_split") if spec.get("dataset") else None
        items = {"fingerprint": data.get("eval_fingerprint"), "n_items": data.get("n_eval")}
        name = str(spec.get("dataset") or PurePath(str(source or "unknown")).name)
    else:
        spec = as_dict(as_dict(as_dict(config.get("eval")).get("sets")).get(eval_set))
        summary = as_dict(as_dict(data.get("eval_sets")).get(eval_set))
        source = summary.get("source") or spec.get("dataset") or spec.get("path")
        split = spec.get("split") if spec.get("dataset") else None
        items = {"fingerprint": summary.get("fingerprint"), "n_items": summary.get("n_items")}
        name = eval_set
    return {"dataset_type": str(source or "unknown"), "dataset_name": name,
            "dataset_config": spec.get("config_name"), "dataset_split": split,
            "dataset_args": {k: v for k, v in items.items() if v is not None} or None}
