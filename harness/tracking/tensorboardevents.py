"""TensorBoard: event files under tracking/tensorboard/<arm>/ of the run, one scalar per eval
metric, training-summary number and comparison number of the arm (step 0). The training curve
is not repeated: train.report_to = ["tensorboard"] writes it to tensorboard/<arm>/ live.
Written with tensorboard's own event writer (no torch, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.rundir import results
from harness.tracking import entries

FOLDER = results.TRACKING_TENSORBOARD_DIR


def log(run_dir: Path, record: Mapping[str, Any]) -> str:
    for arm in record["arms"]:
        _write(run_dir / FOLDER / arm, entries.arm_metrics(record, arm))
    return f"TensorBoard events in {FOLDER}/"


def _write(folder: Path, scalars: Mapping[str, float]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(folder))
    try:
        for tag, value in scalars.items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(summary=summary, step=0))
    finally:
        writer.close()
