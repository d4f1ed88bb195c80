"""``[tracking]``: where a finished run's numbers go besides its run directory (MLflow, W&B,
TensorBoard). Read like every table; the loggers are harness.tracking. Nothing here changes a
number of the record or a cache key: the trackers only read the finished run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Optional

from harness.suite.numbers import Flag, NonEmpty, Strict


class MlflowTarget(Strict):
    """An MLflow tracking store: one parent run per harness run, a nested run per arm."""

    # unset: MLflow's own choice (MLFLOW_TRACKING_URI, else its default store)
    tracking_uri: Optional[NonEmpty] = None
    experiment: NonEmpty = "harness"


class WandbTarget(Strict):
    """Weights & Biases: one run per arm, grouped under the harness run's id."""

    project: NonEmpty = "harness"
    entity: Optional[NonEmpty] = None
    mode: Literal["online", "offline"] = "online"
    dir: Optional[NonEmpty] = None  # unset: W&B's own (WANDB_DIR, else the working folder)


class TrackingSpec(Strict):
    mlflow: Optional[MlflowTarget] = None
    wandb: Optional[WandbTarget] = None
    tensorboard: Flag = False  # event files under tracking/tensorboard/<arm>/ of the run

    @property
    def configured(self) -> bool:
        return self.mlflow is not None or self.wandb is not None or self.tensorboard

    def resolved(self, resolve: Callable[[str], Path]) -> TrackingSpec:
        """Relative sqlite / file URIs and W&B's dir made absolute with ``resolve`` (the
        suite's: from the suite file's folder, as every path of a suite)."""
        update: dict[str, object] = {}
        if self.mlflow is not None and self.mlflow.tracking_uri is not None:
            uri = local_uri(self.mlflow.tracking_uri, resolve)
            update["mlflow"] = self.mlflow.model_copy(update={"tracking_uri": uri})
        if self.wandb is not None and self.wandb.dir is not None:
            update["wandb"] = self.wandb.model_copy(update={"dir": str(resolve(self.wandb.dir))})
        return self.model_copy(update=update)


_SQLITE = "sqlite:///"  # three slashes, then the path: a fourth makes it absolute
_BARE_SCHEMES = ("databricks", "databricks-uc", "uc")  # MLflow's URIs without a colon


def local_uri(uri: str, resolve: Callable[[str], Path]) -> str:
    """``uri`` with a relative local path resolved; servers and absolute paths unchanged."""
    if uri.startswith(_SQLITE):
        path = uri[len(_SQLITE):]
        if not path or path.startswith(("/", ":memory:")):
            return uri
        return _SQLITE + str(resolve(path))  # absolute: its own leading slash is the fourth
    if uri.startswith("file:") and not uri.startswith("file://"):
        return resolve(uri[len("file:"):]).as_uri()
    if ":" in uri.split("/")[0] or uri.split("/")[0] in _BARE_SCHEMES:
        return uri  # a server, a database or Databricks
    return resolve(uri).as_uri()  # MLflow reads a bare path as a local file store
