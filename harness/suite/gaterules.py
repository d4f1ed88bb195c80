"""The gate-rule syntax of a suite's ``[gate]`` table and of ``harness gate --rule``:
``METRIC:[+|-]N[%][:sig][:vs-zero-shot]`` -> `Rule`. Part of the suite, below statistics: the
schema checks its rules here without importing the gate (which reads records and computes
statistics), and `harness.views.gate` applies them (`gate.check`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness import metrics as M
from harness.errors import InputError

RULE_RE = re.compile(
    r"^(?P<metric>(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z_][A-Za-z0-9_]*):(?P<sign>[+-]?)(?P<num>\d+(?:\.\d*)?|\.\d+)"
    r"(?P<pct>%?)(?P<flags>(?::[A-Za-z-]+)*)$"
)
SIG, VS_ZERO_SHOT = "sig", "vs-zero-shot"
RULE_HELP = ("METRIC:[+|-]N[%][:sig][:vs-zero-shot], e.g. rougeL:-1%  perplexity:+2%  "
             "loss:+0.05  rougeL:-1%:sig  general/perplexity:+5%:vs-zero-shot")


@dataclass(frozen=True)
class Rule:
    """How far a metric may move in its worse direction: ``limit`` >= 0, a fraction if relative.

    Built from text by ``parse_rule``; ``gate.check`` applies it to one comparison row (the paired
    statistics of ``stats.compare_arms``), as pytest-benchmark's checks own their ``fails``.
    """

    text: str
    metric: str
    limit: float
    relative: bool
    require_sig: bool
    source: str = "cli"  # "cli" | "suite"
    vs_zero_shot: bool = False  # each adapter arm against its own run's zero-shot arm

    def allowed(self) -> str:
        sign = "+" if M.lower_is_better(self.metric) else "-"
        if self.relative:
            return f"{sign}{self.limit * 100:g}%"
        return f"{sign}{self.limit:g}"

    @property
    def keys(self) -> tuple[str, str, str]:
        """The row's change and the ends of its CI, in the rule's units."""
        if self.relative:
            return "rel_gain", "rel_ci_low", "rel_ci_high"
        return "abs_diff", "ci_low", "ci_high"

    def worsening(self, row: Mapping[str, Any]) -> float | None:
        """How far the row's change goes in the metric's worse direction (negative = it
        improved); None when there is no change to measure (a relative one off a 0 baseline)."""
        v = row.get(self.keys[0])
        if v is None:
            return None
        return float(v) if M.lower_is_better(self.metric) else -float(v)


def parse_rule(text: str, *, source: str = "cli") -> Rule:
    """``rougeL:-1%`` -> Rule; InputError naming the rule when it is malformed."""
    where = "--rule" if source == "cli" else "the suite's [gate] rules"
    m = RULE_RE.match(text.strip())
    if not m:
        raise InputError(f"bad gate rule {text!r} (from {where}): expected {RULE_HELP}")
    flags = _flags(text, m["flags"], where)
    metric = m["metric"]
    if not M.is_known(metric):
        raise InputError(f"bad gate rule {text!r} (from {where}): unknown metric {metric!r}; "
                         f"known: {', '.join(M.ALL_KEYS)}, or <set>/<metric> for an extra "
                         "eval set")
    _check_sign(text, metric, m["sign"], where)
    if SIG in flags and not M.is_per_item(metric):
        raise InputError(f"bad gate rule {text!r} (from {where}): ':sig' needs per-item values "
                         f"and {metric} has one number per arm")
    num = float(m["num"])
    if not math.isfinite(num):  # 400 digits parse as inf: a rule that could never fail
        raise InputError(f"bad gate rule {text!r} (from {where}): the limit is not a finite "
                         "number")
    return Rule(text.strip(), metric, num / 100 if m["pct"] else num, bool(m["pct"]),
                SIG in flags, source, VS_ZERO_SHOT in flags)


def _flags(text: str, flags: str, where: str) -> list[str]:
    """``:sig:vs-zero-shot`` -> ["sig", "vs-zero-shot"]: each known, each at most once."""
    names = flags.split(":")[1:]
    for name in names:
        if name not in (SIG, VS_ZERO_SHOT):
            raise InputError(f"bad gate rule {text!r} (from {where}): unknown flag ':{name}'; "
                             f"expected {RULE_HELP}")
    if len(set(names)) < len(names):
        raise InputError(f"bad gate rule {text!r} (from {where}): a flag is repeated")
    return names


def _check_sign(text: str, metric: str, sign: str, where: str) -> None:
    worse = "+" if M.lower_is_better(metric) else "-"
    if sign and sign != worse:
        way = "lower" if worse == "+" else "higher"
        fixed = f"{metric}:{worse}{text.strip()[len(metric) + 2:]}"
        raise InputError(
            f"bad gate rule {text!r} (from {where}): {way} is better for {metric}, so its "
            f"allowed regression has sign {worse}; write {fixed}"
        )
