"""`harness resume RUN_DIR`: a run killed (SIGKILL, a lost machine) or interrupted (SIGTERM,
Ctrl-C) continues where it was, into the same run id.

While a run is staged in ``out/<suite>/.<run_id>.partial/`` the pipeline keeps a journal of
two hidden working files there:

- ``.state.json``: what the run was started from (harness version, the suite file and its
  sha256, the folder the suite's relative paths resolve from), the record so far and the arms
  measured; rewritten atomically when the run starts and after each arm;
- ``.predictions.partial.jsonl``: each measured arm's per-item rows, appended *before* the
  state names the arm, so rows of an arm a kill cut short are never mistaken for its result.

A training's checkpoints stay in ``scratch/<arm>/`` (a periodic one, kept only for this, when
the suite asks for none: ``train.checkpoint_steps``). ``load`` checks that a run can be resumed
and rebuilds its suite from the recorded config; the pipeline then skips the arms measured,
continues a cut training from its newest checkpoint, runs the rest and finalizes as usual. A
run that succeeds drops the working files; a failed one keeps them, so it can be resumed too.

Refused (InputError, exit 2, one line): a run whose writer is alive, a finished run, another
harness version, an edited suite file, changed data, a base model whose weights, config or
tokenizer files changed (their sha256, run.json's ``model_fingerprint``), a kept arm whose
metrics its journaled rows do not give back (metrics.check_rows), a state of another format
version or whose keys are not what ``STATE_SHAPE`` says (record.check_shape names the key).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import harness
from harness import metrics as M
from harness.errors import InputError
from harness.run import modeling, train
from harness.rundir import record, results
from harness.rundir.journal import (
    MODEL_KEY,
    PREDICTIONS_FILE,
    STATE_FILE,
    STATE_SHAPE,
    STATE_VERSION,
    Journal,
    config_sha256,
    file_ref,
)
from harness.rundir.record import Status
from harness.stats import measured
from harness.suite import config
from harness.suite.config import Suite
from harness.views import formatting


class ResumeRefused(InputError):
    """A run that cannot (or must not) be resumed; the message says why, in one line."""


# ---------------------------------------------------------------- resuming


@dataclass
class Resumed:
    """A run `load` found resumable; ``claim`` takes its folder over."""

    suite: Suite
    out_dir: Path  # what `harness run --out` was
    staging: Path
    final: Path
    from_final: bool  # a finalized failed run, moved back into staging by claim
    journal: Journal
    record: dict[str, Any]
    predictions: list[dict[str, Any]]  # the rows of the arms kept
    lock: results.RunLock  # taken by `load`, held until the run is finalized

    def release(self) -> None:
        """Refused before the run started (``claim`` or earlier): another try may take it."""
        _let_go(self.lock, self.final if self.from_final and self.final.is_dir() else self.staging)

    @property
    def shard(self) -> Any:
        from harness.suite.sweep import Shard

        s = self.record.get("shard")
        return Shard(int(s["index"]), int(s["count"])) if s else None

    def claim(self, splits: Any, sets: Sequence[Any] = ()) -> results.RunDir:
        """Check the data still is what the run measured (``splits``: data.DataSplits,
        ``sets``: data.EvalSet), then own the folder (``load`` took its lock and wrote
        who we are in .owner, which a finalized run's rename moves along) and tidy it for the
        arms still to run."""
        _check_data(self.record.get("data") or {}, splits.summary(),
                    {s.name: s.fingerprint for s in sets}, self.staging)
        if self.from_final:
            try:
                os.replace(self.final, self.staging)
            except OSError as e:
                raise ResumeRefused(f"{self.final}: cannot take the run over ({e.strerror}); "
                                    "is another `harness resume` on it?") from e
        run_dir = results.RunDir(final=self.final, path=self.staging, lock=self.lock)
        self.journal.dir = run_dir
        self.record.setdefault("resumes", []).append(
            {"at": record.iso_time(time.time()), "kept": list(self.journal.done),
             "from_step": _tidy(self.staging, set(self.journal.done))})
        return run_dir


def load(path: str | Path) -> Resumed:
    """A run to continue: its staging folder, its final folder (a run that failed or was
    interrupted), or ``out/<suite>/<run_id>`` while only the staging folder exists. Checks
    everything that needs no weights; nothing is changed until ``claim``."""
    staging, final, from_final, lock = _locate(Path(path))
    try:
        return _loaded(staging, final, from_final, lock)
    except BaseException:
        _let_go(lock, final if from_final else staging)
        raise


def _loaded(staging: Path, final: Path, from_final: bool, lock: results.RunLock) -> Resumed:
    where = final if from_final else staging
    state = _read_state(where)
    _check_versions(state, where)
    suite = _suite_of(state, where)
    done = [a for a in state["done"] if a in (state["record"].get("arms") or {})]
    _check_model(state["record"].get(MODEL_KEY), suite, where, bool(done))
    record = _kept(state["record"], set(done))
    rows = _kept_rows(where / PREDICTIONS_FILE, set(done))
    _check_rows(record, rows, where / STATE_FILE)
    journal = Journal(results.RunDir(final=final, path=where),
                      {k: state[k] for k in ("harness_version", "base_dir", "suite_file",
                                             "config_sha256")},
                      done=done, started=time.time() - float(state.get("elapsed_s") or 0.0))
    return Resumed(suite, final.parent.parent, staging, final, from_final, journal, record, rows,
                   lock)


def _locate(p: Path) -> tuple[Path, Path, bool, results.RunLock]:
    """(staging folder, final folder, whether the run is in its final folder, its lock)."""
    if p.name == results.RUN_FILE and p.is_file():
        p = p.parent
    p = p.resolve()
    if p.name.startswith(".") and p.name.endswith(results.PARTIAL_SUFFIX):
        staging, final = p, p.parent / p.name[1:-len(results.PARTIAL_SUFFIX)]
    else:
        staging, final = p.parent / f".{p.name}{results.PARTIAL_SUFFIX}", p
    if staging.is_dir():
        if final.exists():
            raise ResumeRefused(f"{staging}: its run {final.name} exists already; nothing to "
                                "resume (delete the staging folder)")
        return staging, final, False, _lock(staging)
    if (final / results.RUN_FILE).is_file():
        lock = _lock(final)
        if record.load_run(final).record.get("status") == Status.SUCCESS:
            lock.release()
            raise ResumeRefused(f"{final}: the run finished (status success); nothing to resume")
        return staging, final, True, lock
    raise ResumeRefused(f"{p}: not a run directory or a run's staging folder "
                        f"(.<run_id>{results.PARTIAL_SUFFIX})")


def _lock(folder: Path) -> results.RunLock:
    """The run's lock: whoever holds it is writing the run (a run, or another resume), alive
    by definition, since the kernel drops a flock with its process."""
    try:
        lock = results.claim_folder(folder)  # .owner names us in another resume's message
    except FileNotFoundError:
        raise ResumeRefused(f"{folder}: moved away while being resumed; is another "
                            "`harness resume` on it?") from None
    if lock is None:
        raise ResumeRefused(f"{folder}: the run is still being written by "
                            f"{results.describe_owner(folder)}; wait for it or stop it first")
    return lock


def _let_go(lock: results.RunLock, folder: Path) -> None:
    """Refused: the folder as it was, without the owner file ``_lock`` wrote, its lock free
    (the lock alone says whether a writer is alive; a dead writer's .owner says nothing)."""
    (folder / results.OWNER_FILE).unlink(missing_ok=True)
    lock.release()


def _read_state(folder: Path) -> dict[str, Any]:
    where = folder / STATE_FILE
    if not where.is_file():
        raise ResumeRefused(f"{folder}: no {STATE_FILE}: the run was stopped before it saved "
                            "any progress, or by a harness without resume; run the suite again")
    try:
        state = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ResumeRefused(f"{where}: unreadable resume state ({e})") from e
    if not isinstance(state, dict):
        raise ResumeRefused(f"{where}: not a harness resume state (an object), got "
                            f"{record.json_kind(state)}")
    version = state.get("state_version")
    if version != STATE_VERSION and "state_version" in state:  # another layout: not read on
        raise ResumeRefused(f"{where}: its resume state format is version {version!r}; this "
                            f"harness ({harness.__version__}) reads version {STATE_VERSION}; "
                            "resume it with the harness that started it or run the suite again")
    record.check_shape(state, STATE_SHAPE, where)
    return state


def _check_versions(state: dict[str, Any], where: Path) -> None:
    if state.get("harness_version") != harness.__version__:
        raise ResumeRefused(f"{where}: started by harness {state.get('harness_version')}, this "
                            f"is harness {harness.__version__}; resume it with that version or "
                            "run the suite again")
    ref = state.get("suite_file")
    if ref is None:
        return
    suite_file = Path(ref["path"])
    if not suite_file.is_file():
        raise ResumeRefused(f"{where}: its suite file {suite_file} is gone; resuming needs the "
                            "suite the run started from")
    if file_ref(suite_file)["sha256"] != ref["sha256"]:
        raise ResumeRefused(f"{where}: the suite file {suite_file} changed since the run "
                            "started; restore it or run the suite again")


def _suite_of(state: dict[str, Any], where: Path) -> Suite:
    """The suite exactly as the run resolved it (``--set`` and ``--adapter`` included)."""
    dumped = state["record"].get("config")
    if not isinstance(dumped, dict) or config_sha256(dumped) != state.get("config_sha256"):
        raise ResumeRefused(f"{where}: the recorded config does not match its hash; the resume "
                            "state is damaged")
    try:
        suite = Suite.model_validate({**dumped, "base_dir": state["base_dir"]})
    except ValidationError as e:
        raise ResumeRefused(f"{where}: the recorded config no longer validates "
                            f"({e.errors()[0]['msg']})") from e
    if config.dump(suite) != dumped:  # a default that moved between versions
        raise ResumeRefused(f"{where}: the recorded config does not rebuild the same suite")
    return suite


def _check_model(recorded: Any, suite: Suite, where: Path, measured: bool) -> None:
    """The base model's weights, config and tokenizer are still the ones the kept arms were
    measured on (modeling.model_identity, the zero-shot cache's key): new weights would pair
    the old baseline with adapters of the new model."""
    if not isinstance(recorded, dict):
        if measured:
            raise ResumeRefused(f"{where}: the run recorded no {MODEL_KEY}, so the model it "
                                "measured cannot be checked; run the suite again")
        return  # stopped before the model was loaded: nothing measured to pair with
    now = modeling.model_identity(suite.model, modeling.resolve_source(suite), suite.base_dir)
    if now.content is None or now.content != recorded.get("content"):
        raise ResumeRefused(f"{where}: the model changed since the run started "
                            f"({_what_changed(recorded.get('files') or {}, now)}); restore it "
                            "or run the suite again")


def _what_changed(was: dict[str, str], now: modeling.Identity) -> str:
    """``/m/model.safetensors: sha256 1a2b3c4d5e6f now, 9f8e7d6c5b4a then``, or why not."""
    for path in sorted(set(was) | set(now.files)):
        a, b = was.get(path), now.files.get(path)
        if a != b:
            return f"{path}: " + ("gone" if b is None else "new" if a is None else
                                  f"sha256 {b[:12]} now, {a[:12]} then")
    return "its hub commit or source cannot be resolved" if now.content is None else \
        "another hub commit or source"


def _check_rows(record: dict[str, Any], rows: list[dict[str, Any]], state: Path) -> None:
    """A kept arm's metrics are its journaled rows' (metrics.check_rows): the resumed record
    carries them on, so a damaged or edited state must not."""
    d = M.check_arms(record["arms"], rows)
    if d is not None:
        raise ResumeRefused(f"{state}: {formatting.disagreement(d)}: the state contradicts "
                            f"its {PREDICTIONS_FILE}; run the suite again")


def _check_data(recorded: dict[str, Any], now: dict[str, Any], sets: dict[str, str],
                where: Path) -> None:
    changed = [k for k in ("eval_fingerprint", "train_fingerprint")
               if recorded.get(k) != now.get(k)]
    was = {n: (s or {}).get("fingerprint") for n, s in (recorded.get("eval_sets") or {}).items()}
    changed += [f"eval_sets.{n}" for n in sorted(set(was) | set(sets)) if was.get(n) != sets.get(n)]
    if changed:
        raise ResumeRefused(f"{where}: the suite's data changed since the run started "
                            f"({', '.join(changed)} differ); run the suite again")


def _kept(record: dict[str, Any], done: set[str]) -> dict[str, Any]:
    """The record without what the arms still to run had left in it."""
    rec = dict(record)
    # Their speed and memory were measured by the process that stopped: never compared with
    # the arms the resuming process measures (measured.comparable).
    rec["arms"] = {n: {**a, measured.KEY: measured.elsewhere(measured.of(record, n), "stopped")}
                   for n, a in (record.get("arms") or {}).items() if n in done}
    rec["training"] = {n: t for n, t in (record.get("training") or {}).items() if n in done}
    rec["comparisons"] = [c for c in record.get("comparisons") or [] if c.get("candidate") in done]
    rec["seed_comparisons"] = []  # computed once every arm is in
    rec.update(status=Status.RUNNING, error=None, finished_at=None, wall_time_s=None)
    return rec


def _kept_rows(path: Path, done: set[str]) -> list[dict[str, Any]]:
    return [r for r in _read_lines(path) if r.get("arm") in done]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a kill mid-write leaves a last line cut short, which is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _tidy(staging: Path, done: set[str]) -> dict[str, int]:
    """Make the folder what an uninterrupted run had at the same point: the kept arms' rows
    only in the predictions journal; per arm still to run, its newest complete checkpoint
    (nothing else in its scratch folder) and its train_log rows up to that step (none, and no
    TensorBoard events, when it starts over). Returns the arms continued -> their step."""
    results.atomic_write_text(staging / PREDICTIONS_FILE,
                              results.jsonl(_kept_rows(staging / PREDICTIONS_FILE, done)))
    steps: dict[str, int] = {}
    for folder in sorted((staging / results.SCRATCH_DIR).glob("*")):
        newest = train.newest_checkpoint(folder) if folder.name not in done else None
        for p in folder.iterdir():
            if newest is not None and p == newest.path:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
        if newest is not None:
            steps[folder.name] = newest.step
    log = staging / results.TRAIN_LOG_FILE
    if log.is_file():
        rows = [r for r in _read_lines(log)
                if r.get("arm") in done or r.get("step", 0) <= steps.get(str(r.get("arm")), -1)]
        results.atomic_write_text(log, results.jsonl(rows))
    for board in (staging / results.TENSORBOARD_DIR).glob("*"):
        if board.name not in done and board.name not in steps:
            shutil.rmtree(board, ignore_errors=True)
    return steps
