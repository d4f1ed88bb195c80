"""Weights & Biases: one run per arm, grouped under the harness run's id (W&B's "group"),
with the arm's config, its training curve by step, its eval metrics, training summary and
comparisons in the run's summary, and the reports (and the adapter's model card) as a
``report`` artifact."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.rundir.record import Status
from harness.suite.tracking import WandbTarget
from harness.tracking import entries

ARTIFACT_TYPE = "report"
CARD_NAME = "model_card.md"  # adapters/<arm>/README.md, named for what it is beside the reports
_ARTIFACT_CHARS = re.compile(r"[^\w.-]")  # W&B's artifact names: letters, digits, _ . -


def log(run_dir: Path, record: Mapping[str, Any], target: WandbTarget) -> str:
    """Log one W&B run per arm; returns where."""
    import wandb

    if target.dir is not None:
        Path(target.dir).mkdir(parents=True, exist_ok=True)
    hooks = sys.exit, sys.excepthook
    try:
        folders = [_arm_run(wandb, run_dir, record, arm, target) for arm in record["arms"]]
    finally:
        wandb.teardown()  # stop W&B's service process: the run is over
        # wandb.init replaces both (to see how a script ends) and leaves them replaced: the
        # process is harness's, whose exit codes they must not touch
        sys.exit, sys.excepthook = hooks
    where = f"offline in {folders[-1]}" if target.mode == "offline" and folders else "online"
    return f"W&B group {record['run_id']} in project {target.project} ({where})"


def _arm_run(wandb: Any, run_dir: Path, record: Mapping[str, Any], arm: str,
             target: WandbTarget) -> Path:
    """One arm's W&B run; returns the folder W&B keeps its runs in (``<dir>/wandb``)."""
    config = {**entries.run_params(record), **entries.arm_params(record, arm)}
    run = wandb.init(
        project=target.project, entity=target.entity, mode=target.mode, dir=target.dir,
        group=str(record["run_id"]), name=arm, job_type="harness", config=config,
        reinit="create_new", save_code=False,
        # the process's own stdout stays harness's, and no CPU / GPU sampling thread runs
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    try:
        for step, row in entries.curve(run_dir, arm):
            run.log(row, step=step)
        run.summary.update({**entries.run_metrics(record), **entries.arm_metrics(record, arm)})
        _artifact(wandb, run, run_dir, record, arm)
    finally:
        run.finish(exit_code=0 if record["arms"][arm].get("status") == Status.SUCCESS else 1)
    return Path(run.dir).parents[1]  # run.dir: <dir>/wandb/offline-run-<time>-<id>/files


def _artifact(wandb: Any, run: Any, run_dir: Path, record: Mapping[str, Any], arm: str) -> None:
    files = entries.reports(run_dir)
    card = entries.model_card(run_dir, arm)
    if card is not None:
        files.append(card)
    if not files:
        return
    art = wandb.Artifact(_ARTIFACT_CHARS.sub("-", f"report-{record['run_id']}-{arm}"),
                         type=ARTIFACT_TYPE)
    for path in files:
        art.add_file(str(path), name=CARD_NAME if path == card else path.name)
    run.log_artifact(art)
