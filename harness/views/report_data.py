"""What the report reads from a run, gathered once, and how it names metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import metrics as M
from harness.errors import RecordError
from harness.metrics import lower_is_better
from harness.rundir.record import LoadedRun
from harness.suite import arms as A
from harness.suite.config import DEFAULT_ALPHA
from harness.views import formatting as F

# ------------------------------------------------------------------ reading the run


@dataclass
class ReportData:
    """Everything the report reads, gathered once; unreadable files become warnings."""

    record: dict[str, Any]
    arms: list[str]
    items: dict[str, list[dict[str, Any]]]
    train_log: list[dict[str, Any]]
    alpha: float
    warnings: list[str] = field(default_factory=list)

    @property
    def arm_records(self) -> dict[str, Any]:
        return as_dict(self.record.get("arms"))


def read_data(run: LoadedRun) -> ReportData:
    warnings: list[str] = []
    preds = _tolerant(lambda: run.predictions, warnings)
    log = _tolerant(run.train_log, warnings)
    record = run.record
    arms = _arm_names(list(as_dict(record.get("arms"))), preds, log)
    items = {a: [p for p in preds if p.get("arm") == a] for a in arms}
    alpha = F.number(as_dict(record.get("stats")).get("alpha")) or DEFAULT_ALPHA
    warnings += [str(w) for w in record.get("warnings") or [] if w]  # the pipeline's own
    return ReportData(record, arms, items, log, alpha, warnings)


def _tolerant(read: Callable[[], list[dict[str, Any]]], warnings: list[str]) -> list[dict]:
    """A failed run may leave a half-written JSONL line: report the rest, say what was lost."""
    try:
        return [r for r in read() if isinstance(r, dict)]
    except RecordError as e:
        warnings.append(str(e))
        return []


def _arm_names(record_arms: list[str], preds: list[dict], log: list[dict]) -> list[str]:
    """Record order, then arms only seen in predictions or the train log; baseline first."""
    seen = record_arms + [r.get("arm") for r in preds] + [r.get("arm") for r in log]
    return A.baseline_first(dict.fromkeys(a for a in seen if isinstance(a, str)))


def as_dict(v: Any) -> dict[str, Any]:
    """A record's mapping, or {} where the record holds anything else (or nothing)."""
    return v if isinstance(v, dict) else {}


# ------------------------------------------------------------------ metric names


def label(metric: str) -> str:
    """The metric's label from the metric table, its eval set in brackets: ``ROUGE-L (xsum)``."""
    eval_set, name = M.split(metric)
    text = M.LABELS.get(name, name)
    return f"{text} ({eval_set})" if eval_set else text


def ci_label(alpha: float) -> str:
    """``95% CI`` at alpha 0.05."""
    return f"{F.ci_level(alpha)} CI"


def metric_column(key: str) -> dict[str, Any]:
    """A table's column header for a metric: its key, label and direction."""
    return {"key": key, "label": label(key), "lower": lower_is_better(key)}


def memory_kind(env: dict[str, Any]) -> str:
    """What peak_memory_bytes counts, in the record's own words (record.upgrade words it for
    records older than the description)."""
    return str(env.get("memory_description") or "")
