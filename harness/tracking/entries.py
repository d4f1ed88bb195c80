"""What every tracker logs, read from the finished record and the run's files: the run's
identity, each arm's config, eval metrics, comparisons and training curve, the report files.
Plain names and numbers; each backend only writes them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.rundir import record as rec
from harness.rundir import results

# The numbers of a comparison row a tracker gets (significant as 1 / 0): the difference, its
# confidence interval, the p-value and its Holm-adjusted value.
COMPARISON_FIELDS = ("abs_diff", "rel_gain", "ci_low", "ci_high", "p_value", "p_value_holm",
                     "significant")


def run_params(record: Mapping[str, Any]) -> dict[str, str]:
    """The harness run's identity, as a tracker's run parameters."""
    return {"run_id": str(record["run_id"]), "suite": str(record["suite"]),
            "status": str(record["status"]), "started_at": str(record["started_at"])}


def run_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    wall = record.get("wall_time_s")
    return {"wall_time_s": float(wall)} if wall is not None and _number(wall) else {}


def arm_params(record: Mapping[str, Any], arm: str) -> dict[str, Any]:
    """An arm's model, adapter, source, status, method and training config (``train.<key>``,
    nested tables dotted)."""
    entry = record["arms"][arm]
    config = (record.get("training") or {}).get(arm, {}).get("config") or {}
    return {"model": entry.get("model"), "adapter": entry.get("adapter"),
            "source": entry.get("source"), "status": entry.get("status"),
            "method": config.get("method"), **flatten(config, "train")}


def arm_metrics(record: Mapping[str, Any], arm: str) -> dict[str, float]:
    """``eval/<metric>`` (the arm's finite metrics), ``train/<key>`` (its training summary's
    numbers) and ``compare/<baseline>/<metric>/<field>`` (its comparisons)."""
    out = {f"eval/{k}": float(v) for k, v in record["arms"][arm]["metrics"].items()
           if _number(v)}
    summary = (record.get("training") or {}).get(arm) or {}
    out |= {f"train/{k}": float(v) for k, v in summary.items() if _number(v)}
    for row in comparisons(record, arm):
        for field in COMPARISON_FIELDS:
            if _number(row.get(field)):
                out[f"compare/{row['baseline']}/{row['metric']}/{field}"] = float(row[field])
    return out


def comparisons(record: Mapping[str, Any], arm: str) -> list[Mapping[str, Any]]:
    return [row for row in record.get("comparisons") or [] if row["candidate"] == arm]


def curve(run_dir: Path, arm: str) -> list[tuple[int, dict[str, float]]]:
    """train_log.jsonl's rows of ``arm`` as (optimizer step, ``train/<key>`` numbers)."""
    rows = rec.read_jsonl(run_dir / results.TRAIN_LOG_FILE)
    return [(int(r["step"]), {f"train/{k}": float(v) for k, v in r.items()
                              if k not in ("arm", "step") and _number(v)})
            for r in rows if r.get("arm") == arm]


def reports(run_dir: Path) -> list[Path]:
    """report.html and report.md, those that were written."""
    return [run_dir / name for name in results.REPORT_FILES if (run_dir / name).is_file()]


def model_card(run_dir: Path, arm: str) -> Path | None:
    path = run_dir / results.ADAPTERS_DIR / arm / results.MODEL_CARD_FILE
    return path if path.is_file() else None


def flatten(value: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """{"a": {"b": 1}} under "train" -> {"train.a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}.{k}"
        out |= flatten(v, key) if isinstance(v, Mapping) else {key: v}
    return out


def _number(v: Any) -> bool:
    """A finite int or float; a bool (``significant``) counts as 1 / 0."""
    return isinstance(v, (int, float)) and math.isfinite(v)
