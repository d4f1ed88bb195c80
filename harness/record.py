"""run.json and its sibling files read back, and the shape every reader relies on. No torch."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import RecordError
from harness.results import PREDICTIONS_FILE, RUN_FILE, TRAIN_LOG_FILE
from harness.shard import MAX_SHARDS
from harness.stats import MAX_RESAMPLES

SCHEMA_VERSION = 1
RUN_KEYS = (
    "schema_version", "suite", "run_id", "status", "error", "config", "env", "data",
    "arms", "comparisons", "stats", "training", "started_at", "finished_at", "wall_time_s",
)
COMPARISON_KEYS = (
    "metric", "baseline", "candidate", "baseline_value", "candidate_value", "abs_diff",
    "rel_gain", "ci_low", "ci_high", "p_value",
)


# ---------------------------------------------------------------- reading (no torch)


@dataclass
class LoadedRun:
    """A run read back from disk: the record plus lazily read per-item predictions."""

    path: Path
    record: dict[str, Any]
    _predictions: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        return str(self.record.get("run_id", self.path.name))

    @property
    def suite(self) -> str:
        return str(self.record.get("suite", self.path.parent.name))

    @property
    def predictions(self) -> list[dict[str, Any]]:
        if self._predictions is None:
            self._predictions = read_jsonl(self.path / PREDICTIONS_FILE)
        return self._predictions

    def items(self, arm: str) -> list[dict[str, Any]]:
        """Per-item rows of one arm, in eval order."""
        return [p for p in self.predictions if p.get("arm") == arm]

    def train_log(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / TRAIN_LOG_FILE)


def resolve_run_path(arg: str | Path) -> Path:
    """A RUN argument is a run directory or its run.json."""
    p = Path(arg)
    if p.is_file() and p.name == RUN_FILE:
        return p.parent
    if p.is_dir() and (p / RUN_FILE).is_file():
        return p
    raise RecordError(f"{arg}: not a run directory or run.json (no {RUN_FILE} found)")


def load_run(arg: str | Path) -> LoadedRun:
    """Read a run record; RecordError (one line naming run.json) when it is not a usable one."""
    path = resolve_run_path(arg)
    where = path / RUN_FILE
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: corrupt JSON at line {e.lineno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise RecordError(f"{where}: not UTF-8 text (byte offset {e.start})") from e
    except OSError as e:
        raise RecordError(f"{where}: cannot read: {e.strerror}") from e
    if not isinstance(record, dict) or "schema_version" not in record:
        raise RecordError(f"{where}: not a harness run record (no schema_version)")
    version = record["schema_version"]
    # bool is an int subclass; "1" or null would otherwise fail the comparison below
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordError(f"{where}: schema_version must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {version} is newer than this harness "
                          f"understands ({SCHEMA_VERSION}); upgrade harness")
    check_shape(record, RECORD_SHAPE, where)
    return LoadedRun(path=path, record=record)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: corrupt JSON line: {e.msg}") from e
            if not isinstance(row, dict):
                raise RecordError(f"{path}:{lineno}: a line must be an object, got "
                                  f"{json_kind(row)}")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- the shape readers rely on
#
# One check, at load, of every key a reader (compare, gate, report, merge, resume) uses: a
# record is a file someone else may have written or edited, and a list where an object was
# expected used to reach the user as a traceback, a `stats.n_resamples` of 1e12 as a hang.
# Keys are checked where present (records of earlier versions lack some); other keys are free.

@dataclass(frozen=True)
class Kind:
    """A JSON value of one of ``kinds`` (json_kind's names; "a number" takes integers too),
    a number within ``lo``..``hi`` (and finite) where a bound is given."""

    kinds: tuple[str, ...]
    lo: float | None = None
    hi: float | None = None
    open: bool = False  # bounds excluded: alpha in (0, 1)


@dataclass(frozen=True)
class Obj:
    """A JSON object (or null, with ``null``): ``keys`` checked where present, ``required``
    always there, ``each`` checks every value."""

    keys: Mapping[str, Node] = field(default_factory=dict)
    each: Node | None = None
    required: tuple[str, ...] = ()
    null: bool = False


@dataclass(frozen=True)
class ListOf:
    """A JSON list (or null, with ``null``) whose every item is ``item``."""

    item: Node
    null: bool = False


Node = Kind | Obj | ListOf

_TEXT = Kind(("a string", "null"))
_NUMBER = Kind(("a number", "null"))  # NaN too: records older than the strict writer hold it
_FLAG = Kind(("true or false", "null"))
_ANY_OBJ = Obj(null=True)
_ERROR = Kind(("an object", "a string", "null"))
_ROW_NUMBERS = ("baseline_value", "candidate_value", "abs_diff", "rel_gain", "ci_low",
                "ci_high", "rel_ci_low", "rel_ci_high", "p_value", "p_value_holm", "seed_sd")
_ROW = {"metric": Kind(("a string",)), "baseline": _TEXT, "candidate": _TEXT,
        "significant": _FLAG, "n_items": Kind(("an integer", "null"), lo=0),
        **{k: _NUMBER for k in _ROW_NUMBERS}}
_ARM = Obj({"model": _TEXT, "adapter": _TEXT, "source": _TEXT, "status": _TEXT,
            "metrics": Obj(each=_NUMBER, null=True), "non_finite": _ANY_OBJ,
            "measured": _ANY_OBJ, "cached": _FLAG, "error": _ERROR})
RECORD_SHAPE = Obj({
    "suite": Kind(("a string",)), "run_id": Kind(("a string",)), "status": _TEXT,
    "error": _ERROR, "config": _ANY_OBJ, "env": _ANY_OBJ,
    "data": Obj({"eval_fingerprint": _TEXT, "lengths": _ANY_OBJ,
                 "eval_sets": Obj(each=Obj({"fingerprint": _TEXT}, null=True), null=True)},
                null=True),
    "arms": Obj(each=_ARM, null=True),
    "comparisons": ListOf(Obj(_ROW, required=("metric",)), null=True),
    "seed_comparisons": ListOf(Obj({**_ROW, "recipe": Kind(("a string",)),
                                    "n_seeds": Kind(("an integer",), lo=1)},
                                   required=("metric", "recipe", "n_seeds")), null=True),
    # what the readers recompute: bounded as the suite config bounds it (stats.MAX_RESAMPLES)
    "stats": Obj({"n_resamples": Kind(("an integer",), lo=1, hi=MAX_RESAMPLES),
                  "seed": Kind(("an integer",), lo=0),
                  "alpha": Kind(("a number",), lo=0, hi=1, open=True)}, null=True),
    "training": Obj(each=_ANY_OBJ, null=True),
    "shard": Obj({"index": Kind(("an integer",), lo=0, hi=MAX_SHARDS - 1),
                  "count": Kind(("an integer",), lo=1, hi=MAX_SHARDS),
                  "arms": ListOf(Kind(("a string",)))},
                 required=("index", "count", "arms"), null=True),
    "warnings": ListOf(Kind(("a string", "null")), null=True),
    "resumes": ListOf(Obj({"kept": ListOf(Kind(("a string",)), null=True)}), null=True),
})


def check_shape(value: Any, shape: Node, where: Path, key: str = "") -> None:
    """RecordError, one line naming ``where`` and the first key (``arms.lora.metrics``) whose
    value is not what ``shape`` says, or a bound it exceeds."""
    problem = _problem(value, shape, key)
    if problem is not None:
        raise RecordError(f"{where}: {problem}")


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words: ``a list``, ``an integer``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _problem(value: Any, shape: Node, key: str) -> str | None:
    if isinstance(shape, Kind):
        return _kind_problem(value, shape, key)
    if value is None and shape.null:
        return None
    want = "an object" if isinstance(shape, Obj) else "a list"
    if json_kind(value) != want:
        return f"{f'`{key}`' if key else 'the top level'} must be {want}, got {json_kind(value)}"
    if isinstance(shape, ListOf):
        return _first(_problem(v, shape.item, f"{key}[{i}]") for i, v in enumerate(value))
    missing = [k for k in shape.required if k not in value]
    if missing:
        return f"`{_dotted(key, missing[0])}` is missing"
    return _first(_problem(v, sub, _dotted(key, str(k))) for k, v in value.items()
                  if (sub := shape.keys.get(k, shape.each)) is not None)


def _kind_problem(value: Any, kind: Kind, key: str) -> str | None:
    got = json_kind(value)
    if got == "a number" and math.isfinite(value) and value.is_integer():
        got = "an integer"  # JSON's 1e4 is 10000
    if got not in kind.kinds and not (got == "an integer" and "a number" in kind.kinds):
        return f"`{key}` must be {' or '.join(kind.kinds)}, got {got}"
    if kind.lo is None and kind.hi is None or value is None:
        return None
    lo = -math.inf if kind.lo is None else kind.lo
    hi = math.inf if kind.hi is None else kind.hi
    inside = lo < value < hi if kind.open else lo <= value <= hi
    if inside and math.isfinite(value):
        return None
    bounds = f"{'above' if kind.open else 'at least'} {_bound(lo)}" if kind.hi is None else \
        f"{'between' if kind.open else 'within'} {_bound(lo)} and {_bound(hi)}"
    return f"`{key}` must be {bounds}, got {value!r}"


def _bound(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _dotted(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _first(problems: Iterable[str | None]) -> str | None:
    return next((p for p in problems if p is not None), None)


@dataclass(frozen=True)
class RunOutcome:
    """A finished run or merge: its final folder and the record written there."""

    path: Path
    record: dict[str, Any]
