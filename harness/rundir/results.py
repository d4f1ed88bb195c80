"""The run directory: written once, atomically; read back without torch.

Layout of ``<out>/<suite>/<run_id>/`` (the public contract in README):

- ``run.json``          the record (harness/record.py)
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

from harness.errors import InputError, RecordError

RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
TRAIN_LOG_FILE = "train_log.jsonl"
REPORT_FILES = ("report.html", "report.md")  # views.report.write_reports writes these, in order
ADAPTERS_DIR = "adapters"
EXPORTS_DIR = "exports"  # [[exports]] with keep = true: the deployable artifacts
MODEL_CARD_FILE = "README.md"  # inside adapters/<arm>/: the hub's name for a model card
TENSORBOARD_DIR = "tensorboard"  # tensorboard/<arm>/ when train.report_to names it
# tracking/tensorboard/<arm>/: each arm's eval metrics and comparisons ([tracking] tensorboard)
TRACKING_TENSORBOARD_DIR = "tracking/tensorboard"
SCRATCH_DIR = "scratch"  # working files of a stage while it runs; gone when it ends



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
