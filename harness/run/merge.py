"""Sweep cells across machines: ``harness run SUITE --shard I/N`` and ``harness merge``.

A sweep's adapter arms (``sweep.expand``: cells, and a cell once per seed, ``cell@s<seed>``)
are independent, so shard I of N trains arms I, I+N, I+2N, ... and writes an ordinary run
directory whose run.json says ``"shard": {"index": I, "count": N, "arms": [...]}``. Every shard
evaluates the zero-shot arms (from the baseline cache when the shards share one); the existing
adapters (``[[adapters]]``, ``--adapter``) run in shard 0 only. The config is not changed: all
shards record the same ``config``, which is how ``merge`` tells they belong together.

``merge`` joins the shards into one run directory, as if one machine had run the sweep: shard
0's zero-shot and existing arms, every shard's trained arms (in ``sweep.expand`` order, rebuilt
by interleaving the shards' arm lists), their training entries, train-log and prediction rows
and ``adapters/`` folders, comparisons recomputed against the one baseline with the pipeline's
own functions, and the reports rendered. It refuses (InputError, exit 2, one line) shards that
do not make exactly one whole sweep: other suites, configs, eval items or harness versions,
missing or repeated shards, a shard that failed, one that evaluated another model
(``model_fingerprint``), or one whose run.json holds a quality metric its own
predictions.jsonl rows do not give back (metrics.check_rows: the merged record keeps the
point numbers and recomputes the intervals from the rows). Speed and memory of an arm
trained in another shard than the baseline were measured by another process (often on another
machine): each arm keeps its ``measured`` block, so they are not compared
(harness/measured.py), as with a cached baseline.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import metrics as M
from harness.errors import InputError, RunFailed
from harness.run import pairing
from harness.rundir import record, results
from harness.rundir.record import LoadedRun, Status
from harness.stats import measured
from harness.suite import arms, config
from harness.suite.sweep import Shard
from harness.views import formatting, report

SHARD_KEY = "shard"
MERGED_KEY = "merged_from"
_TRAIN_OUTPUTS = (results.ADAPTERS_DIR, results.TENSORBOARD_DIR)  # <dir>/<arm>/ per trained arm


# ---------------------------------------------------------------- merge


@dataclass(frozen=True)
class _Part:
    """One shard's run, as read back."""

    run: LoadedRun
    shard: Shard
    trained: list[str]

    def __str__(self) -> str:
        return f"shard {self.shard} ({self.run.run_id})"


@dataclass(frozen=True)
class _Merged:
    record: dict[str, Any]
    predictions: list[dict[str, Any]]
    train_log: list[dict[str, Any]]
    copies: list[tuple[Path, str]]  # (a shard's folder, its path in the merged run)


def merge_runs(runs: Sequence[LoadedRun], out_dir: Path) -> record.RunOutcome:
    """Check that ``runs`` are the shards 0..N-1 of one sweep, join them and write the merged
    run into ``out_dir/<suite>/<run_id>/``; nothing is written when a check fails."""
    parts = _check(runs)
    return _write(_join(parts), Path(out_dir))


def _check(runs: Sequence[LoadedRun]) -> list[_Part]:
    parts = _check_shard_set([_part(r) for r in runs])
    first = parts[0]
    for p in parts:
        if p.run.record.get("status") != Status.SUCCESS:
            error = (p.run.record.get("error") or {}).get("message") or "no error recorded"
            raise InputError(f"{p} failed ({error}): rerun that shard, then merge")
    for p in parts[1:]:
        _check_same(first, p)
    for p in parts:
        _check_rows(p)
    return parts


def _check_rows(p: _Part) -> None:
    """The merged record keeps each shard's point numbers and recomputes the intervals from
    its rows: the two must be one computation (metrics.check_rows), not an edited run.json."""
    d = M.check_arms(p.run.record.get("arms") or {}, p.run.predictions)
    if d is not None:
        raise InputError(f"{p.run.path / results.RUN_FILE} ({p}): "
                         f"{formatting.disagreement(d)}: its run.json contradicts its "
                         f"{results.PREDICTIONS_FILE}; rerun that shard")


def _part(run: LoadedRun) -> _Part:
    info = run.record.get(SHARD_KEY)
    if not isinstance(info, Mapping):
        raise InputError(f"{run.path}: not a shard (its run.json has no {SHARD_KEY!r}; "
                         "a shard is made by harness run --shard I/N)")
    try:
        shard = Shard(int(info["index"]), int(info["count"]))
        trained = [str(a) for a in info["arms"]]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{run.path}: run.json's {SHARD_KEY!r} needs index, count and "
                         f"arms, got {info!r}") from None
    return _Part(run, shard, trained)


def _check_shard_set(parts: list[_Part]) -> list[_Part]:
    """One suite, one N, each index 0..N-1 exactly once; sorted by index."""
    if not parts:
        raise InputError("nothing to merge: name the shards' run directories")
    first = parts[0]
    for p in parts[1:]:
        if p.run.suite != first.run.suite:
            raise InputError(f"cannot merge runs of different suites: {first.run.suite!r} "
                             f"({first}) and {p.run.suite!r} ({p})")
        if p.shard.count != first.shard.count:
            raise InputError(f"{p} and {first} split the sweep differently (N = "
                             f"{p.shard.count} vs {first.shard.count})")
    seen: dict[int, _Part] = {}
    for p in parts:
        if p.shard.index in seen:
            raise InputError(f"shard {p.shard} given twice: {seen[p.shard.index].run.path} and "
                             f"{p.run.path}")
        seen[p.shard.index] = p
    n = first.shard.count
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise InputError(f"shard(s) {', '.join(missing)} of suite {first.run.suite!r} missing: "
                         f"merge needs every shard 0..{n - 1} once")
    return [seen[i] for i in range(n)]


def _check_same(first: _Part, p: _Part) -> None:
    """The shards ran one sweep: same config, same harness, the same eval items."""
    a, b = first.run.record, p.run.record
    diff = _first_difference(a.get("config"), b.get("config"), "config")
    if diff:
        raise InputError(f"{p} was run with another config than {first}: {diff}")
    va = (a.get("env") or {}).get("harness_version")
    vb = (b.get("env") or {}).get("harness_version")
    if va != vb:
        raise InputError(f"{p} ran harness {vb} and {first} harness {va} "
                         "(env.harness_version differs): rerun the shards with one version")
    ma, mb = (((r.get("model_fingerprint") or {}).get("content")) for r in (a, b))
    if ma and mb and ma != mb:  # shards before model_fingerprint was recorded: not known
        raise InputError(f"{p} evaluated another model than {first} (model_fingerprint.content "
                         f"{mb} vs {ma}): its weights, config or tokenizer files differ")
    for key, fa, fb in _fingerprints(a, b):
        if fa != fb:
            raise InputError(f"{p} evaluated other items than {first}: {key} {fb} vs {fa}")
    for name in a.get("arms") or {}:
        if arms.is_zero_shot(name) and _item_ids(first.run, name) != _item_ids(p.run, name):
            raise InputError(f"{p} scored other items for arm {name!r} than {first}: its "
                             "zero-shot evaluation is not the same eval")


def _first_difference(a: Any, b: Any, path: str) -> str | None:
    """``config.train.max_steps = 5 vs 4``: the first key whose values differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{path}.{k} is set in only one of them"
            diff = _first_difference(a[k], b[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    return None if a == b else f"{path} = {b!r} vs {a!r}"


def _fingerprints(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    da, db = a.get("data") or {}, b.get("data") or {}
    out = [("data.eval_fingerprint", da.get("eval_fingerprint"), db.get("eval_fingerprint"))]
    sa, sb = da.get("eval_sets") or {}, db.get("eval_sets") or {}
    for name in list(sa) + [n for n in sb if n not in sa]:
        out.append((f"data.eval_sets.{name}.fingerprint", (sa.get(name) or {}).get("fingerprint"),
                    (sb.get(name) or {}).get("fingerprint")))
    return out


def _item_ids(run: LoadedRun, arm: str) -> list[tuple[Any, Any]]:
    return [(r.get("set"), r.get("id")) for r in run.items(arm)]


# ---------------------------------------------------------------- join


def _join(parts: list[_Part]) -> _Merged:
    first = parts[0]
    owner = _owners(parts)
    rows = {id(p): _by_arm(p.run.predictions) for p in parts}
    logs = {id(p): _by_arm(p.run.train_log()) for p in parts}
    trained = [a for a in owner if owner[a] is not first or a in first.trained]
    rec = copy.deepcopy(first.run.record)
    rec.pop(SHARD_KEY, None)
    # each arm keeps where its speed and memory were measured (older shards: derived here)
    rec["arms"] = {a: {**owner[a].run.record["arms"][a], measured.KEY: measured.elsewhere(
        measured.of(owner[a].run.record, a), owner[a].run.run_id)} for a in owner}
    rec["training"] = {a: owner[a].run.record["training"][a] for a in trained
                       if a in (owner[a].run.record.get("training") or {})}
    predictions = [r for a in owner for r in rows[id(owner[a])].get(a, [])]
    rec["comparisons"], rec["seed_comparisons"] = _comparisons(rec, predictions)
    rec["status"] = record.overall_status(rec)
    failed = [a["error"] for a in rec["arms"].values() if a.get("error")]
    rec["error"] = failed[0] if rec["status"] == Status.FAILED and failed else None
    rec.update(_provenance(parts))
    return _Merged(rec, predictions,
                   [r for a in trained for r in logs[id(owner[a])].get(a, [])],
                   _copies(trained, owner))


def _owners(parts: list[_Part]) -> dict[str, _Part]:
    """Arm name -> the shard whose evaluation the merged run keeps, in the order one unsharded
    run writes them: shard 0's zero-shot and existing arms, then the trained arms in
    ``sweep.expand`` order (shard k holds arms k, k+N, ...: interleave them back)."""
    first, n = parts[0], len(parts)
    total = sum(len(p.trained) for p in parts)
    for p in parts:
        if len(p.trained) != len(range(p.shard.index, total, n)):
            raise InputError(f"{p} trained {len(p.trained)} arm(s), not every {n}th of "
                             f"{total}: the shards do not split one sweep")
    own = {a: first for a in first.run.record.get("arms") or {} if a not in first.trained}
    for j in range(total):
        part = parts[j % n]
        name = part.trained[j // n]
        if name in own or name not in (part.run.record.get("arms") or {}):
            raise InputError(f"{part}: arm {name!r} is missing from its arms or also in "
                             "another shard")
        own[name] = part
    return own


def _by_arm(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.get("arm")), []).append(r)
    return out


def _comparisons(rec: dict[str, Any], predictions: list[dict[str, Any]]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pipeline's comparisons, recomputed on the joined arms against shard 0's baseline."""
    settings = config.StatsSettings.from_record(rec.get("stats"))
    rows: list[dict[str, Any]] = []
    for name in arms.others(rec["arms"]):
        if rec["arms"][name].get("status") != Status.FAILED:
            rows += pairing.arm_comparisons(rec, predictions, name, settings)
    return rows, pairing.seed_comparisons(rec, predictions, settings)


def _provenance(parts: list[_Part]) -> dict[str, Any]:
    """Which runs were merged, every shard's warnings once, and the time span they cover;
    ``wall_time_s`` adds up the shards' (machine time, not the elapsed time)."""
    recs = [p.run.record for p in parts]
    walls = [w for r in recs if isinstance(w := r.get("wall_time_s"), int | float)]
    starts = [r["started_at"] for r in recs if r.get("started_at")]
    ends = [r["finished_at"] for r in recs if r.get("finished_at")]
    return {
        MERGED_KEY: [p.run.run_id for p in parts],
        "warnings": list(dict.fromkeys(w for r in recs for w in r.get("warnings") or [])),
        "started_at": min(starts) if starts else None,
        "finished_at": max(ends) if ends else None,
        "wall_time_s": round(sum(walls), 2) if len(walls) == len(recs) else None,
    }


def _copies(trained: list[str], owner: dict[str, _Part]) -> list[tuple[Path, str]]:
    out = []
    for name in trained:
        for folder in _TRAIN_OUTPUTS:
            src = owner[name].run.path / folder / name
            if src.is_dir():
                out.append((src, f"{folder}/{name}"))
    return out


# ---------------------------------------------------------------- write


def _write(m: _Merged, out_dir: Path) -> record.RunOutcome:
    """Staged like a run (results.create_run_dir) and saved as a run is (record.save: run.json
    says failed until every file has landed), then moved into place; a failed write removes
    the staging folder: the shards still hold everything."""
    rd = results.create_run_dir(out_dir, m.record["suite"])
    m.record["run_id"] = rd.final.name
    try:
        for src, rel in m.copies:
            shutil.copytree(src, rd.path / rel)
        rd.write_jsonl(results.TRAIN_LOG_FILE, m.train_log)
        record.save(rd, m.record, m.predictions, report.render_into)
        return record.RunOutcome(path=rd.finalize(), record=m.record)
    except OSError as e:
        shutil.rmtree(rd.path, ignore_errors=True)
        raise RunFailed(f"{rd.final}: the merged run could not be written "
                        f"({e.strerror or e}); nothing was kept") from e
    except BaseException:
        shutil.rmtree(rd.path, ignore_errors=True)
        raise
