"""run.json and its sibling files: their types, and the one place that builds, upgrades, writes
and reads them. No torch.

The public contract is README's run-directory section; ``RunRecord``, ``ArmEntry``,
``ComparisonRow``, ``SeedComparisonRow`` and ``PredictionRow`` below are its keys and types,
and ``RECORD_SHAPE`` what every reader checks before it reads one. A record of an earlier
``schema_version`` is brought to this one by ``upgrade`` as ``load_run`` reads it, so no reader
needs to know what older harnesses wrote.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

from harness.errors import RecordError, RunFailed
from harness.rundir.results import (
    ADAPTERS_DIR,
    PREDICTIONS_FILE,
    REPORT_FILES,
    RUN_FILE,
    TRAIN_LOG_FILE,
    RunDir,
)
from harness.suite import arms
from harness.suite.config import MAX_RESAMPLES
from harness.suite.sweep import MAX_SHARDS

# 2: every key of the types below (1 lacked none a reader needs, but its prediction rows may
# lack `nll_sum` and its `env` `memory_description`: `upgrade` derives them).
SCHEMA_VERSION = 2


class Status(StrEnum):
    """A run's ``status`` and each arm's: ``running`` until it ends (a killed run's record, an
    arm being trained), then ``success`` or ``failed``."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class ErrorEntry(TypedDict):
    """Why a run or an arm failed: the exception's type and message, the stage it happened in
    (``train:lora``, ``eval:baseline``, ``write``), the last frames of its traceback."""

    type: str
    message: str
    stage: str
    traceback: str | None


class Measured(TypedDict):
    """Where an arm's speed and memory were measured (harness/measured.py)."""

    process: str
    cached: bool
    device: str | None
    memory: str | None


class _ArmKeys(TypedDict):
    model: str  # the base model as the suite names it
    adapter: str | None  # adapters/<arm> of a trained arm, the path or hub id of an existing one
    source: str | None  # arms.ZERO_SHOT, TRAINED or EXISTING
    status: Status
    metrics: dict[str, float | None]  # <metric> and <set>/<metric>; null where not finite


class ArmEntry(_ArmKeys, total=False):
    """``arms.<name>``: one evaluated model, zero-shot or with an adapter."""

    measured: Measured
    error: ErrorEntry
    non_finite: dict[str, str]  # metric -> "nan" / "inf" / "-inf"
    cached: bool  # a zero-shot arm read from the baseline cache
    origin: dict[str, Any]  # an existing adapter: where its weights came from
    merged_for_eval: bool  # a trained arm evaluated with its adapter merged in
    noop: str  # why the adapter does nothing (harness.run.noop); gate fails the arm


class _ComparisonKeys(TypedDict):

    metric: str
    baseline: str
    candidate: str
    baseline_value: float
    candidate_value: float
    abs_diff: float
    rel_gain: float | None  # null when the baseline value is 0
    ci_low: float | None  # null: a point comparison (throughput, memory)
    ci_high: float | None
    p_value: float | None
    rel_ci_low: float | None
    rel_ci_high: float | None
    p_value_holm: float | None
    significant: bool
    lower_is_better: bool
    paired: bool
    n_items: int | None
    # Which test gave p_value: sign-flip or label-swap (permutation), mcnemar-exact (a right /
    # wrong metric), none (no per-item values). Every record carries it.
    test: str


class ComparisonRow(_ComparisonKeys, total=False):
    """``comparisons[i]``: one metric of one arm against the baseline (harness/stats/paired.py)."""

    p_value_mid: float  # mcnemar-exact rows: the McNemar mid-p beside the exact p_value


class SeedComparisonRow(TypedDict):
    """``seed_comparisons[i]``: a recipe trained with several seeds against the baseline
    (harness/stats/seedstats.py)."""

    metric: str
    baseline: str
    recipe: str
    seeds: list[str]
    baseline_value: float
    candidate_value: float
    abs_diff: float
    rel_gain: float | None
    ci_low: float | None
    ci_high: float | None
    rel_ci_low: float | None
    rel_ci_high: float | None
    per_seed_diff: dict[str, float]
    seed_sd: float
    item_sd: float | None
    significant: bool
    lower_is_better: bool
    n_items: int
    n_seeds: int
    method: str


class PredictionRow(TypedDict):
    """One line of predictions.jsonl: one item of one eval set scored by one arm, with each
    generation metric's per-item value and sufficient statistics (``rouge1``, ``bleu_*``...)
    beside these keys."""

    arm: str
    set: str | None  # null: the suite's own eval set
    id: str
    prompt: str
    reference: str
    prediction: str | None  # null without generation
    loss: float
    nll_sum: float
    n_tokens: int
    gen_tokens: int | None


class _RunKeys(TypedDict):
    schema_version: int
    suite: str
    run_id: str
    status: Status
    error: ErrorEntry | None
    config: dict[str, Any]  # the resolved suite (config.dump)
    env: dict[str, Any]  # versions, device, git, memory_kind, memory_description
    data: dict[str, Any]  # fingerprints, counts, lengths, eval_sets
    arms: dict[str, ArmEntry]  # baseline first
    comparisons: list[ComparisonRow]
    seed_comparisons: list[SeedComparisonRow]
    stats: dict[str, Any]  # stats.stats_record(...)
    training: dict[str, dict[str, Any]]  # trained arm -> steps, runtime, parameters...
    warnings: list[str]
    started_at: str
    finished_at: str | None
    wall_time_s: float | None


class RunRecord(_RunKeys, total=False):
    """run.json: the keys every record has, and these where they apply."""

    model_fingerprint: dict[str, Any]  # {"content", "files"}: resume compares it
    eval_limits: dict[str, int]  # max_new_tokens capped to the model's context
    shard: dict[str, Any]  # {"index", "count", "arms"}: `harness run --shard`
    merged_from: list[str]  # the shards' run ids: `harness merge`
    resumes: list[dict[str, Any]]  # {"at", "kept", "from_step"}: `harness resume`


# The keys every record of this version has, and those of every comparison row.
RUN_KEYS = tuple(_RunKeys.__annotations__)
COMPARISON_KEYS = tuple(_ComparisonKeys.__annotations__)


# ---------------------------------------------------------------- building and writing


def skeleton(*, suite: str, run_id: str, config: dict[str, Any], data: dict[str, Any],
             stats: dict[str, Any], warnings: list[str], started_at: str) -> RunRecord:
    """The record of a run that starts: no arms yet, ``running`` until it is saved."""
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "run_id": run_id,
        "status": Status.RUNNING,
        "error": None,
        "config": config,
        "env": {},
        "data": data,
        "arms": {},
        "comparisons": [],
        "seed_comparisons": [],
        "stats": stats,
        "training": {},
        "warnings": list(warnings),
        "started_at": started_at,
        "finished_at": None,
        "wall_time_s": None,
    }


def overall_status(record: Mapping[str, Any]) -> Status:
    """Failed when the zero-shot arm failed (a NaN baseline: nothing can be compared with
    it) or every adapter arm did; one failed sweep cell among good ones fails only itself."""
    if record["arms"].get(arms.BASELINE, {}).get("status") == Status.FAILED:
        return Status.FAILED
    others = [record["arms"][n] for n in arms.others(record["arms"])]
    if others and all(a.get("status") == Status.FAILED for a in others):
        return Status.FAILED
    return Status.SUCCESS


def noop_warning(arm: str, reason: str) -> str:
    """The run's warning for an adapter arm that does nothing (``arms.<arm>.noop``)."""
    return f"arm {arm} does nothing: {reason}"


def iso_time(t: float) -> str:
    """A record's timestamp (``started_at``, ``finished_at``, a resume's ``at``): UTC, to the
    second, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# What run.json says while the run's files are being written: a crash or a full disk during
# the writes leaves this, never a record that claims success for files that did not land.
INCOMPLETE = {"type": "IncompleteWrite", "stage": "write",
              "message": "the run's files were not all written (crash or full disk)"}


def save(rd: RunDir, record: Mapping[str, Any], predictions: Iterable[Mapping[str, Any]],
         render: Callable[[Path, Any], object]) -> None:
    """Write a run's record into its staging folder, the one way a run, a resumed run and a
    merge do: run.json saying failed (``INCOMPLETE``) first, then predictions.jsonl, the
    reports (``render``: report.render_into, which a record does not import) and run.json as
    it is last. OSError when a write fails: the caller decides what is kept."""
    rd.write_json(RUN_FILE, {**record, "status": Status.FAILED, "error": INCOMPLETE})
    rd.write_jsonl(PREDICTIONS_FILE, predictions)
    render(rd.path, record)
    rd.write_json(RUN_FILE, record)


def save_failed_write(rd: RunDir, record: dict[str, Any], e: OSError,
                      error: Mapping[str, Any]) -> None:
    """Record a failed write (``error``, of ``e``), making room for run.json if the disk is
    full (the reports and predictions are incomplete anyway), move the folder into place and
    raise RunFailed."""
    record["status"] = Status.FAILED
    record["error"] = error
    # Last resort: a record without its adapter beats an adapter without its record.
    for room in (*REPORT_FILES, PREDICTIONS_FILE, ADAPTERS_DIR):
        try:
            rd.write_json(RUN_FILE, record)
            break
        except OSError:
            shutil.rmtree(rd.path / room, ignore_errors=True)
            (rd.path / room).unlink(missing_ok=True)
    final = rd.finalize()
    said = ("its run.json says failed" if (final / RUN_FILE).is_file()
            else "not even run.json could be written")
    raise RunFailed(f"{final}: the run's files could not be written ({e.strerror or e}); {said}")


# ---------------------------------------------------------------- upgrading


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A record of an earlier ``schema_version`` (checked to be an integer) as this version
    writes it, in place: what earlier harnesses left out is derived here, so no reader needs
    a fallback. 1 -> 2: ``env.memory_description`` (records before it had only
    ``env.memory_kind``, whose words, underscores read as spaces, say the same)."""
    env = record.get("env")
    if isinstance(env, dict) and not env.get("memory_description") and env.get("memory_kind"):
        env["memory_description"] = str(env["memory_kind"]).replace("_", " ")
    record["schema_version"] = max(record["schema_version"], SCHEMA_VERSION)
    return record


def upgrade_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """predictions.jsonl rows as this version writes them, in place: rows of early records
    carry only the per-item mean loss, and ``nll_sum`` (what losses are summed from) is
    loss x n_tokens."""
    for r in rows:
        if "nll_sum" not in r and "loss" in r and "n_tokens" in r:
            try:
                r["nll_sum"] = float(r["loss"]) * float(r["n_tokens"])
            except (TypeError, ValueError):
                continue  # stats names the row that lacks a numeric nll_sum
    return rows


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
            self._predictions = upgrade_rows(read_jsonl(self.path / PREDICTIONS_FILE))
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
    return LoadedRun(path=path, record=upgrade(record))


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
                "ci_high", "rel_ci_low", "rel_ci_high", "p_value", "p_value_holm", "p_value_mid",
                "seed_sd")
_ROW = {"metric": Kind(("a string",)), "baseline": _TEXT, "candidate": _TEXT,
        "significant": _FLAG, "n_items": Kind(("an integer", "null"), lo=0), "test": _TEXT,
        **{k: _NUMBER for k in _ROW_NUMBERS}}
_ARM = Obj({"model": _TEXT, "adapter": _TEXT, "source": _TEXT, "status": _TEXT,
            "metrics": Obj(each=_NUMBER, null=True), "non_finite": _ANY_OBJ,
            "measured": _ANY_OBJ, "cached": _FLAG, "error": _ERROR, "noop": _TEXT})
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
    # what the readers recompute: bounded as the suite config bounds it (config.MAX_RESAMPLES)
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
