"""The one entry of the trackers: ``log_run`` sends a finished run to each tracker its suite
names, ``missing`` says before a run which of them cannot be imported."""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.errors import one_line
from harness.suite.tracking import MlflowTarget, TrackingSpec
from harness.tracking import mlflowstore, tensorboardevents, wandbruns

Logger = Callable[[Path, Mapping[str, Any]], str]  # (run dir, record) -> where it went

# tracker -> (the modules it imports, what installs them)
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "mlflow": (("mlflow",), "pip install 'harness[mlflow]'"),
    "wandb": (("wandb",), "pip install 'harness[wandb]'"),
    "tensorboard": (("tensorboard",), "pip install 'harness[tensorboard]'"),
}
# A SQLite store also needs what MLflow's database stores are built on.
SQLITE_MODULES = ("sqlalchemy", "alembic")


def missing(spec: TrackingSpec) -> list[str]:
    """One line per configured tracker whose package is not installed (nothing imported)."""
    out = []
    for name, _ in _loggers(spec):
        modules, install = PACKAGES[name]
        if name == "mlflow" and spec.mlflow and _mlflow_uri(spec.mlflow).startswith("sqlite:"):
            modules += SQLITE_MODULES
        absent = [m for m in modules if not importable(m)]
        if absent:
            out.append(f"tracking.{name}: {', '.join(absent)} not installed; install it with: "
                       f"{install}")
    return out


def _mlflow_uri(target: MlflowTarget) -> str:
    """The store MLflow will open: the suite's, else MLFLOW_TRACKING_URI, else MLflow 3's
    default, a SQLite file."""
    return target.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:"


def importable(module: str) -> bool:
    """Found without importing it (a None in sys.modules, Python's "blocked", is not)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def log_run(run_dir: Path, record: Mapping[str, Any], spec: TrackingSpec,
            note: Callable[[str], object] = lambda _: None) -> list[str]:
    """Send the finished run to every configured tracker, ``note`` saying where each one
    logged it; returns a warning for each that failed. A tracker's failure never raises."""
    warnings = []
    for name, logger in _loggers(spec):
        try:
            note(logger(run_dir, record))
        except Exception as e:  # noqa: BLE001 - a tracker's failure is never the run's
            warnings.append(f"tracking.{name}: not logged ({type(e).__name__}: "
                            f"{one_line(e)}); the run's own files are complete")
    return warnings


def _loggers(spec: TrackingSpec) -> list[tuple[str, Logger]]:
    out: list[tuple[str, Logger]] = []
    if spec.mlflow is not None:
        out.append(("mlflow", functools.partial(mlflowstore.log, target=spec.mlflow)))
    if spec.wandb is not None:
        out.append(("wandb", functools.partial(wandbruns.log, target=spec.wandb)))
    if spec.tensorboard:
        out.append(("tensorboard", tensorboardevents.log))
    return out
