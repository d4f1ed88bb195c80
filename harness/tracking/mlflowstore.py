"""MLflow: one parent run per harness run (its id, suite, status, wall time, the reports as
artifacts) and a nested child run per arm (config as params; eval metrics, training summary and
comparisons as metrics; the training curve by step; the adapter's model card). Written through
``MlflowClient`` against the configured store, never the process-wide active run."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import quieted
from harness.rundir.record import Status
from harness.suite.tracking import MlflowTarget
from harness.tracking import entries

PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs by
# MLflow refuses other characters in metric and param keys; an arm like "lora@s0" names a run,
# never a key, so only odd metric names (an lm-eval task's "acc,none") are rewritten.
_KEY_CHARS = re.compile(r"[^\w\-. :/]")
# MLflow refuses parameter values over 6,000 characters (a long prompt template).
MAX_PARAM_CHARS = 6000
_BATCH = 1000  # MLflow's limits per log_batch call: 1,000 metrics, 100 params
_PARAMS = 100


def log(run_dir: Path, record: Mapping[str, Any], target: MlflowTarget) -> str:
    """Log the run; returns where (the parent run's id and the store)."""
    from mlflow.tracking import MlflowClient

    # MLflow sets its own logger to INFO when imported (after the run's redirect of library
    # output): its database set-up lines are no news. Warnings still show.
    with quieted("mlflow", logging.WARNING):
        return _log(MlflowClient(tracking_uri=target.tracking_uri), run_dir, record, target)




def _log(client: Any, run_dir: Path, record: Mapping[str, Any], target: MlflowTarget) -> str:
    experiment = _experiment(client, target)
    parent = client.create_run(experiment, run_name=str(record["run_id"]),
                               tags={"harness.run_id": str(record["run_id"])})
    pid = parent.info.run_id
    _write(client, pid, entries.run_params(record), _at(entries.run_metrics(record), 0))
    for path in entries.reports(run_dir):
        client.log_artifact(pid, str(path))
    for arm in record["arms"]:
        _child(client, experiment, pid, run_dir, record, arm)
    client.set_terminated(pid, status=_status(record["status"]))
    return f"MLflow run {pid} in {client.tracking_uri}"


def _experiment(client: Any, target: MlflowTarget) -> str:
    found = client.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(target.experiment,
                                    artifact_location=_artifacts_beside(client.tracking_uri))


def _artifacts_beside(uri: str) -> str | None:
    """A SQLite store's artifacts in ``mlartifacts`` beside its database (MLflow's default
    is ./mlruns of whatever folder the process runs in); other stores keep their own."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()


def _child(client: Any, experiment: str, parent: str, run_dir: Path,
           record: Mapping[str, Any], arm: str) -> None:
    run = client.create_run(experiment, run_name=arm,
                            tags={PARENT_TAG: parent, "harness.arm": arm})
    rid = run.info.run_id
    steps = [m for step, row in entries.curve(run_dir, arm) for m in _at(row, step)]
    _write(client, rid, entries.arm_params(record, arm),
           _at(entries.arm_metrics(record, arm), 0) + steps)
    card = entries.model_card(run_dir, arm)
    if card is not None:
        client.log_artifact(rid, str(card))
    client.set_terminated(rid, status=_status(record["arms"][arm].get("status")))


def _at(values: Mapping[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key(k), v, now, step) for k, v in values.items()]


def _write(client: Any, rid: str, params: Mapping[str, Any], metrics: list[Any]) -> None:
    from mlflow.entities import Param

    kept = [Param(key(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if v is not None]
    for i in range(0, len(kept), _PARAMS):
        client.log_batch(rid, params=kept[i:i + _PARAMS])
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(rid, metrics=metrics[i:i + _BATCH])


def key(name: str) -> str:
    """``name`` as MLflow accepts a key: other characters become "_"."""
    return _KEY_CHARS.sub("_", name)


def _status(status: Any) -> str:
    return "FINISHED" if status == Status.SUCCESS else "FAILED"
