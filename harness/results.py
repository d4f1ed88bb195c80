"""The run directory: written once, atomically; read back without torch.

Layout of ``<out>/<suite>/<run_id>/`` (the public contract in README):

- ``run.json``          the record (see ``RUN_KEYS``)
- ``predictions.jsonl`` one line per (arm, eval item)
- ``train_log.jsonl``   one line per logged step of each adapter arm (``arm`` field)
- ``adapters/<arm>/``   PEFT adapter + README.md model card
- ``report.html``, ``report.md``

A run is assembled in a hidden staging folder ``.<run_id>.partial`` beside its final place and
renamed into place once complete, so readers never see half a run; a crash still ends in a
renamed folder whose ``run.json`` says ``"status": "failed"`` with the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import MAX_RESAMPLES
from harness.errors import InputError, RecordError

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
TRAIN_LOG_FILE = "train_log.jsonl"
ADAPTERS_DIR = "adapters"
MODEL_CARD_FILE = "README.md"  # inside adapters/<arm>/: the hub's name for a model card
TENSORBOARD_DIR = "tensorboard"  # tensorboard/<arm>/ when train.report_to names it
SCRATCH_DIR = "scratch"  # working files of a stage while it runs; gone when it ends

RUN_KEYS = (
    "schema_version", "suite", "run_id", "status", "error", "config", "env", "data",
    "arms", "comparisons", "stats", "training", "started_at", "finished_at", "wall_time_s",
)
COMPARISON_KEYS = (
    "metric", "baseline", "candidate", "baseline_value", "candidate_value", "abs_diff",
    "rel_gain", "ci_low", "ci_high", "p_value",
)


def new_run_id() -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class RunDir:
    """A run being written. ``path`` is the staging folder until ``finalize()``."""

    final: Path
    path: Path
    lock: RunLock | None = field(default=None, repr=False, compare=False)  # held until finalize

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_text(self.path / name, dumps(obj))

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        return atomic_write_text(self.path / name, jsonl(rows))

    def append_jsonl(self, name: str, row: Mapping[str, Any]) -> None:
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(jsonl([row]))

    def write_text(self, name: str, text: str) -> Path:
        """``name`` relative to the run (``adapters/lora/README.md``); folders are made."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, text)

    def save_adapter(self, arm: str, model: Any) -> tuple[str, int]:
        """``model.save_pretrained`` (PEFT format: adapter_config.json +
        adapter_model.safetensors) into ``adapters/<arm>``; (that path relative to the run,
        bytes of the weights)."""
        rel = f"{ADAPTERS_DIR}/{arm}"
        model.save_pretrained(str(self.path / rel))
        return rel, sum(p.stat().st_size for p in (self.path / rel).glob("adapter_model*"))

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A folder for what is needed only while a stage runs (the Trainer's checkpoints),
        removed afterwards, crash or not: a run directory holds results, not working files.
        Except after Ctrl-C / SIGTERM (KeyboardInterrupt): `harness resume` continues the
        interrupted stage from them, and removes them once the run succeeds."""
        path = self.path / SCRATCH_DIR / name
        path.mkdir(parents=True, exist_ok=True)
        interrupted = False
        try:
            yield path
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if not interrupted:
                shutil.rmtree(path, ignore_errors=True)
                with contextlib.suppress(OSError):  # the shared folder, once no stage uses it
                    path.parent.rmdir()

    def finalize(self) -> Path:
        """Move the staged run into its final place; never onto an existing run."""
        if self.final.exists():
            raise RecordError(f"{self.final}: a run with this id already exists")
        (self.path / OWNER_FILE).unlink(missing_ok=True)
        os.replace(self.path, self.final)
        self.path = self.final
        if self.lock is not None:  # the folder is in place: nothing writes it any more
            self.lock.release()
        return self.final


# Inside a staging folder: who is writing it (pid, host, boot id, process start), for the
# messages only. Whether a writer is alive is decided by the folder's lock (RunLock), which the
# kernel drops when the process ends however it ends: a pid alone outlives its process (after a
# container restart pid 1 is always alive) and two resumes both saw a dead one.
OWNER_FILE = ".owner"
PARTIAL_SUFFIX = ".partial"
PROBE_S = 0.5  # how long a lock is retried before it counts as held by a live writer


class RunLock:
    """An exclusive ``flock`` on a run's folder, held by the one process writing it from
    ``create_run_dir`` (or `harness resume`) until the run is finalized. The folder itself is
    locked, not a file in it: the lock stays with the folder when it is renamed into place,
    and nothing is left behind. Local filesystems only (NFS may not honour flock)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def take(cls, folder: Path, wait_s: float = PROBE_S) -> RunLock | None:
        """The lock, or None while another process (or another RunLock) holds it for longer
        than ``wait_s``: a run's next sibling only probes it (dead_partials), for
        microseconds, and must not make a writer give up."""
        fd = os.open(folder, os.O_RDONLY)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(0.02)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    __del__ = release


def claim_folder(folder: Path) -> RunLock | None:
    """Lock ``folder`` and write who holds it into its owner file; None when it is held."""
    lock = RunLock.take(folder)
    if lock is not None:
        _write_owner(folder)
    return lock


def _write_owner(folder: Path) -> None:
    atomic_write_text(folder / OWNER_FILE, json.dumps(_owner_info()))


def _owner_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
            "process_start": _process_start(), "since": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _process_start() -> int | None:
    """This process's start, in clock ticks since boot (/proc/self/stat field 22): with the
    boot id it names one process, where a pid is reused."""
    try:
        stat = Path("/proc/self/stat").read_text(encoding="ascii")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def create_run_dir(out_dir: Path, suite_name: str, run_id: str | None = None) -> RunDir:
    """Reserve ``out_dir/suite_name/run_id`` (a new id if taken) and stage into a hidden dir,
    locked by this process until ``finalize``."""
    parent = Path(out_dir) / suite_name
    check_writable(parent)
    parent.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id()
    while (parent / run_id).exists() or (parent / f".{run_id}{PARTIAL_SUFFIX}").exists():
        run_id = new_run_id()
    staging = parent / f".{run_id}{PARTIAL_SUFFIX}"
    staging.mkdir()
    return RunDir(final=parent / run_id, path=staging, lock=claim_folder(staging))


def dead_partials(parent: Path) -> list[Path]:
    """Staging folders under ``parent`` that no process holds: killed runs' leftovers."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.glob(f".*{PARTIAL_SUFFIX}") if p.is_dir() and _unheld(p))


def _unheld(folder: Path) -> bool:
    try:
        lock = RunLock.take(folder, wait_s=0.0)
    except OSError:
        return False
    if lock is None:
        return False
    lock.release()
    return True


def owner(staging: Path) -> dict[str, Any]:
    """What a staging folder's owner file says (pid, host, since...); {} when none or
    unreadable. Older harnesses wrote a bare pid."""
    try:
        text = (staging / OWNER_FILE).read_text(encoding="utf-8").strip()
        info = json.loads(text)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {"pid": info} if isinstance(info, int) else {}


def describe_owner(staging: Path) -> str:
    """``process 4242 on box-1 (since 2026-12-06T13:20:05Z)``, as far as the owner file says."""
    info = owner(staging)
    pid = info.get("pid")
    text = f"process {pid}" if isinstance(pid, int) else "another process"
    if info.get("host"):
        text += f" on {info['host']}"
    return text + (f" (since {info['since']})" if info.get("since") else "")


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def check_writable(folder: Path, *files: str) -> Path:
    """The one check of an output location, made before anything is computed or written:
    ``folder`` exists as a writable folder, or can be created (its nearest existing ancestor
    is a writable folder), and none of ``files`` (names in it to be replaced) is a folder.
    InputError naming the path otherwise; nothing is created."""
    folder = Path(folder)
    label = str(folder)
    for name in files:
        if (folder / name).is_dir():
            raise InputError(f"{folder / name}: cannot be written: a folder is in its place")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a link to nowhere: mkdir would fail on it
            raise InputError(f"{label}: cannot be created: {probe} is a broken link")
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{label}: cannot be created or written: {probe} is a file, "
                         "not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".harness-write-check-", dir=probe)
    except OSError as e:
        raise InputError(f"{label}: cannot write in {probe} ({e.strerror})") from None
    os.close(fd)
    os.unlink(tmp)
    return folder


def atomic_write_text(path: Path, text: str) -> Path:
    """Write beside ``path`` and rename over it: readers see the old file or the new one. The
    temp name is unique per writer (two processes storing one cache entry through one fixed
    name failed 186 of 1,021 writes), and a failed write (disk full) leaves no temp behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# The one JSON writer of every file harness writes (run.json, predictions.jsonl, train_log,
# the resume state, cache entries, `compare --format json`): strict JSON, which has no NaN or
# Infinity (Python's json writes them bare, and JSON.parse, jq's strict readers and most
# languages' parsers reject the whole file). A non-finite float becomes null here; the pipeline
# says which metrics were not finite and why (the arm's ``non_finite``).


def dumps(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text (with a trailing newline when indented)."""
    text = json.dumps(finite(obj), indent=indent, ensure_ascii=False, allow_nan=False,
                      default=_jsonable)
    return text + "\n" if indent is not None else text


def jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    """One strict JSON object per line."""
    return "".join(dumps(r, indent=None) + "\n" for r in rows)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) in it replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:  # numpy / torch scalars
        return finite(o.item())
    if hasattr(o, "tolist"):
        return finite(o.tolist())
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


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

# Runs split by `harness run --shard I/N` at most: merge lists the shards it misses, one by one.
MAX_SHARDS = 1024


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
