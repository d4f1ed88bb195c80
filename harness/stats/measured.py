"""Where an arm's speed and memory were measured, and whether two arms' can be compared. No torch.

Throughput and memory (metrics.SYSTEM_KEYS) have one number per arm and depend on the process
that measured them: a cold start, a loaded machine, what the process held before (a zero-shot
baseline from the cache was timed by another process at another time; a resumed run's kept
arms by the process that was killed; another run, another shard or another machine by theirs).
Each arm records ``measured``::

    {"process": "<token of the process that evaluated it>", "cached": false,
     "device": "cpu", "memory": "<how peak_memory_bytes was measured>"}

and every reader (pipeline, merge, compare, gate, report, terminal summary, model card) asks
``comparable(of(rec_a, arm_a), of(rec_b, arm_b))`` before it sets two arms' speed or memory
side by side. Records written before arms had the block get one derived from the record: the
run id stands for the process, each resume starts a new one (``resumes[i].kept`` names the
arms an earlier process measured), and a cached arm is never comparable.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from harness import metrics as M
from harness.suite import arms as A

KEY = "measured"
# One token per process: arms evaluated by this process share it, any other process has another.
PROCESS = uuid.uuid4().hex[:16]
CACHED = "cached"
OTHER_PROCESS = "other process"


def block(env: Mapping[str, Any]) -> dict[str, Any]:
    """The ``measured`` block of an arm this process evaluates now, in the run's ``env``."""
    return {"process": PROCESS, "cached": False, "device": env.get("device"),
            "memory": env.get("memory_kind")}


def elsewhere(measured: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An arm's block as another run takes it over (`harness resume`: ``stopped``; `harness
    merge`: the shard's run id): its process stays apart from any other, even one in the same
    interpreter (tests run shards and resumes in one process)."""
    return {**measured, "process": f"{measured.get('process')}/{where}"}


def of(record: Mapping[str, Any], arm: str) -> dict[str, Any]:
    """Arm ``arm``'s ``measured`` block, derived from the record when it has none."""
    entry = (record.get("arms") or {}).get(arm) or {}
    own = entry.get(KEY)
    if isinstance(own, Mapping):
        return dict(own)
    env = record.get("env") or {}
    return {"process": f"run:{record.get('run_id')}#{_attempt(record, arm)}",
            "cached": bool(entry.get("cached")), "device": env.get("device"),
            "memory": env.get("memory_kind")}


def _attempt(record: Mapping[str, Any], arm: str) -> int:
    """Which process of a resumed run measured ``arm``: 0 the first, i+1 the i-th resume."""
    resumes = [r for r in record.get("resumes") or [] if isinstance(r, Mapping)]
    for i, r in enumerate(resumes):
        if arm in (r.get("kept") or []):
            return i
    return len(resumes)


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two arms' speed and memory were measured under the same conditions: by the
    same live process (not read from the cache), on the same device, the same way."""
    return reason(a, b) is None


def reason(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Why two arms' speed and memory are not comparable (None: they are)."""
    if a.get("device") != b.get("device"):
        return "they were measured on different devices"
    if a.get("cached") or b.get("cached"):
        return "one was read from the zero-shot cache (measured by an earlier process)"
    if not a.get("process") or a.get("process") != b.get("process"):
        return "they were measured by different processes"
    if a.get("memory") != b.get("memory"):
        return "their memory was measured in different ways"
    return None


def mark(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """A short label for arm ``a``'s speed and memory beside arm ``b``'s when the two are not
    comparable: ``cached`` or ``other process``; None when they are."""
    if comparable(a, b):
        return None
    return CACHED if a.get("cached") else OTHER_PROCESS


def is_system(metric: str) -> bool:
    return M.base(metric) in M.SYSTEM_KEYS


def keep(metric: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``metric`` may be compared between two arms with these blocks."""
    return not is_system(metric) or comparable(a, b)


def mark_of(record: Mapping[str, Any], arm: str) -> str | None:
    """How a report marks an arm's speed and memory beside the baseline's: the baseline
    itself when it came from the cache, any other arm not comparable with it (``mark``)."""
    base = of(record, A.BASELINE)
    if arm == A.BASELINE:
        return CACHED if base.get("cached") else None
    return mark(of(record, arm), base)
