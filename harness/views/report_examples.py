"""The report's per-example browser: items joined across arms, the largest gains and
regressions first."""

from __future__ import annotations

from typing import Any

from harness.suite import arms as A
from harness.views import formatting as F
from harness.views.report_data import ReportData

MAX_EXAMPLES = 200  # the browser stays fast; the largest gains and regressions are kept
MAIN_SET = "main"  # how the browser names the suite's own eval set beside the extra ones


def example_browser(d: ReportData) -> dict[str, Any] | None:
    """Items joined across arms by (eval set, id): two sets may share ids. Within each set the
    largest gains of the first adapter come first (ROUGE-L, else the drop in loss)."""
    if not any(d.items.values()):
        return None
    adapters = A.others(d.arms)  # every arm with a gain over baseline, variants too
    by_arm = {a: {_item_key(r): r for r in d.items[a]} for a in d.arms}
    keys = list(dict.fromkeys(_item_key(r) for a in d.arms for r in d.items[a]))
    rows = [_example(k, d.arms, adapters, by_arm) for k in keys]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    limits = _per_set_limits({s: sum(r["set"] == s for r in rows) for s in sets}, MAX_EXAMPLES)
    shown = [r for s in sets for r in _capped([r for r in rows if r["set"] == s], limits[s])]
    return {"arms": d.arms, "adapters": adapters, "rows": shown, "total": len(rows),
            "sets": [{"value": s, "label": s or MAIN_SET} for s in sets] if len(sets) > 1
            else [], "generated": any(r["generated"] for r in rows),
            "multiple_choice": any(r["multiple_choice"] for r in rows)}


def _item_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row.get("set") or ""), str(row.get("id"))


def _per_set_limits(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Share the browser's rows between the sets: the smallest first, each taking at most an
    equal share of what is left, so a 40-item set shows whole beside a 10,000-item one."""
    limits, left = {}, total
    for i, (name, n) in enumerate(sorted(sizes.items(), key=lambda kv: kv[1])):
        limits[name] = min(n, left // (len(sizes) - i))
        left -= limits[name]
    return limits


def _capped(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """One set's rows by gain (largest first), keeping both extremes; unknown gains last."""
    known = sorted((r for r in rows if r["order"] is not None), key=lambda r: r["order"],
                   reverse=True)
    unknown = [r for r in rows if r["order"] is None]  # no baseline or no adapter row
    return _keep_extremes(known, limit) + unknown[:max(0, limit - len(known))]


def _example(key: tuple[str, str], arms: list[str], adapters: list[str],
             by_arm: dict[str, dict[tuple[str, str], dict[str, Any]]]) -> dict[str, Any]:
    rows = {a: by_arm[a].get(key) for a in arms}
    first = next(r for r in rows.values() if r)
    base = rows.get(A.BASELINE) or {}
    outputs = [_output(a, rows[a], base) for a in arms]
    mine = [o for o in outputs if o["arm"] in adapters]
    gains, losses = [o["d_rouge"] for o in mine], [o["d_loss"] for o in mine]
    return {"id": key[1], "set": key[0], "set_label": key[0] or MAIN_SET,
            "multiple_choice": any(o["choices"] for o in outputs),
            "prompt": str(first.get("prompt") or ""), "reference": str(first.get("reference", "")),
            "outputs": outputs, "gains": gains, "loss_changes": losses,
            "generated": any(o["generated"] for o in outputs),
            "order": _order(gains[0] if gains else None, losses[0] if losses else None)}


def _order(gain: float | None, loss_change: float | None) -> float | None:
    """The first adapter's per-item ROUGE-L gain, else its drop in loss: the default order."""
    if gain is not None:
        return gain
    return None if loss_change is None else -loss_change


def _output(arm: str, row: dict[str, Any] | None, base: dict[str, Any]) -> dict[str, Any]:
    row = row or {}
    rl, loss = F.number(row.get("rougeL")), F.number(row.get("loss"))
    b_rl, b_loss = F.number(base.get("rougeL")), F.number(base.get("loss"))
    own = arm == A.BASELINE  # no gain over itself
    d_rouge = None if own or rl is None or b_rl is None else rl - b_rl
    d_loss = None if own or loss is None or b_loss is None else loss - b_loss
    # A set scored by loss only has no generation: its prediction is null, not a text; a
    # multiple-choice item's prediction is the choice it picked, shown among its choices.
    choices = _choices(row)
    generated = row.get("prediction") is not None and not choices
    return {"arm": arm, "present": bool(row), "generated": generated, "choices": choices,
            "right": _right(row.get("acc")), "right_norm": _right(row.get("acc_norm")),
            "text": str(row["prediction"]) if generated else "",
            "rouge": F.metric("rougeL", rl) if rl is not None else None,
            "loss": F.metric("loss", loss),
            "d_rouge": d_rouge, "d_rouge_text": F.metric("rougeL", d_rouge, True),
            "d_loss": d_loss, "d_loss_text": F.metric("loss", d_loss, True),
            "tone": _item_tone("rougeL", d_rouge), "loss_tone": _item_tone("loss", d_loss)}


def _choices(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A multiple-choice row's choices, each with its summed log-likelihood (nats) and
    whether it is the gold answer, the pick (highest log-likelihood) and the length-normalised
    pick; [] for any other row."""
    texts, lls = row.get("choices"), row.get("loglikelihoods")
    if not isinstance(texts, list) or not isinstance(lls, list) or len(texts) != len(lls):
        return []
    return [{"text": str(t), "ll": _nats(ll), "gold": i == row.get("gold"),
             "pick": i == row.get("pick"), "pick_norm": i == row.get("pick_norm")}
            for i, (t, ll) in enumerate(zip(texts, lls, strict=True))]


def _nats(v: Any) -> str:
    """A log-likelihood in nats to 2 decimals: choices differ by tenths of a nat and more."""
    x = F.number(v)
    return F.DASH if x is None else f"{x:.2f}"


def _right(v: Any) -> str:
    """An item's 1.0 / 0.0 as ``right`` / ``wrong``; "" where the row has none."""
    x = F.number(v)
    return "" if x is None else ("right" if x == 1.0 else "wrong")


def _item_tone(metric: str, diff: float | None) -> str:
    """One item's change in the example browser: no test exists for a single item, so its
    colour says only better / worse in the metric's direction (the browser's legend says so)."""
    return F.tone(metric, diff, True)


def _keep_extremes(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """``rows`` sorted by gain: keep the largest gains and the largest regressions."""
    if len(rows) <= limit:
        return rows
    head = limit // 2
    return rows[:head] + rows[len(rows) - (limit - head):]
