"""The journal a run keeps while it is staged, so `harness resume` can continue it: two hidden
working files in ``out/<suite>/.<run_id>.partial/`` (``.state.json``: what the run was started
from, the record so far and the arms measured; ``.predictions.partial.jsonl``: each measured
arm's per-item rows, appended *before* the state names the arm), and the shape a reader checks
``.state.json`` against. No torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness.rundir import record, results
from harness.suite import config
from harness.suite.config import Suite

STATE_FILE = ".state.json"
MODEL_KEY = "model_fingerprint"  # run.json: modeling.Identity.as_record()
PREDICTIONS_FILE = ".predictions.partial.jsonl"
STATE_VERSION = 1

# What `load` and the resumed pipeline read from a .state.json (record.check_shape: a key of
# the wrong JSON type is refused naming it, as in a run.json): written by Journal.save.
_STRING = record.Kind(("a string",))
STATE_SHAPE = record.Obj({
    "state_version": record.Kind(("an integer",)), "harness_version": _STRING,
    "base_dir": _STRING, "config_sha256": _STRING,
    "suite_file": record.Obj({"path": _STRING, "sha256": _STRING},
                              required=("path", "sha256"), null=True),
    "done": record.ListOf(_STRING),
    "elapsed_s": record.Kind(("a number", "null"), lo=0),
    "record": record.Obj({**record.RECORD_SHAPE.keys, MODEL_KEY: record.Obj(
        {"content": record.Kind(("a string", "null")),
         "files": record.Obj(each=_STRING, null=True)}, null=True)}),
}, required=("state_version", "harness_version", "base_dir", "config_sha256", "done",
             "record"))


@dataclass
class Journal:
    """The run's progress as `harness resume` reads it back."""

    dir: results.RunDir
    meta: dict[str, Any]  # what the run was started from
    done: list[str] = field(default_factory=list)  # arms measured, in order
    started: float = field(default_factory=time.time)  # minus earlier attempts' time

    @classmethod
    def begin(cls, run_dir: results.RunDir, suite: Suite, source: Path | None) -> Journal:
        """``source``: the suite file, when the run was started from one."""
        return cls(run_dir, {"harness_version": harness.__version__,
                             "base_dir": str(suite.base_dir),
                             "suite_file": file_ref(source) if source else None,
                             "config_sha256": config_sha256(config.dump(suite))})

    def save(self, record: dict[str, Any]) -> None:
        state = {"state_version": STATE_VERSION, **self.meta, "done": self.done,
                 "elapsed_s": round(time.time() - self.started, 3), "record": record}
        self.dir.write_json(STATE_FILE, state)

    def arm_done(self, name: str, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        with open(self.dir.path / PREDICTIONS_FILE, "a", encoding="utf-8") as f:
            f.write(results.jsonl(rows))
        self.done.append(name)
        self.save(record)

    def close(self) -> None:
        """The run succeeded: nothing is left to resume, so the working files go."""
        for name in (STATE_FILE, PREDICTIONS_FILE):
            (self.dir.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir.path / results.SCRATCH_DIR, ignore_errors=True)


def config_sha256(dumped: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


def file_ref(path: Path) -> dict[str, str]:
    path = Path(path).resolve()
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
