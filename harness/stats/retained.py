"""How much of an adapter's gain an export of it keeps: for each per-item metric, the
retained fraction (export - base) / (adapter - base) with its paired bootstrap CI (the three
arms resampled together, over the items all three scored), and how often the export's greedy
text is the adapter's own. 1.0: the export keeps the whole gain; 0: it is back to the base.
No torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness import metrics as M
from harness.stats.paired import ColumnSums, bootstrap_indices, interval


def export_rows(rows: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Sequence[str], *,
                n_resamples: int, seed: int, alpha: float) -> list[dict[str, Any]]:
    """``rows``: the prediction rows of ``base``, ``adapter`` and ``export``. One row per
    metric of ``metrics`` with per-item values that every arm has."""
    out = []
    for metric in metrics:
        if not M.is_per_item(metric):
            continue
        arrays = _aligned(rows, metric)
        if arrays is None:
            continue
        out.append(_retained(metric, arrays, n_resamples, seed, alpha))
    return out


def _aligned(rows: Mapping[str, Sequence[Mapping[str, Any]]], metric: str
             ) -> dict[str, np.ndarray] | None:
    """Each arm's (n, k) column values over the items all three scored, in one item order."""
    eval_set, cols = M.split(metric)[0], M.columns(metric)
    by_id = {arm: {r["id"]: r for r in rs if r.get("set") == eval_set}
             for arm, rs in rows.items()}
    ids = sorted(set.intersection(*(set(d) for d in by_id.values())))
    try:
        arrays = {arm: np.array([[float(d[i][c]) for c in cols] for i in ids])
                  for arm, d in by_id.items()}
    except (KeyError, TypeError, ValueError):
        return None
    return arrays if ids else None


def _retained(metric: str, arrays: dict[str, np.ndarray], n_resamples: int, seed: int,
              alpha: float) -> dict[str, Any]:
    cols = M.columns(metric)
    n = len(next(iter(arrays.values())))
    point = _fraction(metric, {a: v.sum(axis=0)[None, :] for a, v in arrays.items()}, cols, n)
    sums = {a: ColumnSums(v) for a, v in arrays.items()}
    draws = [_fraction(metric, {a: s(idx) for a, s in sums.items()}, cols, n)
             for idx in bootstrap_indices(n, n_resamples, seed)]
    lo, hi = interval(np.concatenate(draws), alpha) if draws else (None, None)
    value = float(point[0])
    return {"metric": metric, "retained": value if np.isfinite(value) else None,
            "ci_low": lo, "ci_high": hi, "n_items": n, "n_resamples": n_resamples}


def _fraction(metric: str, sums: dict[str, np.ndarray], cols: Sequence[str], n: int
              ) -> np.ndarray:
    """(export - base) / (adapter - base) per resample row; inf / nan where the adapter's
    gain is 0 (no gain to keep: the interval leaves those rows out)."""
    value = {a: M.from_sums(metric, {c: s[:, j] for j, c in enumerate(cols)}, n)
             for a, s in sums.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        return (value["export"] - value["base"]) / (value["adapter"] - value["base"])


def agreement(adapter_rows: Sequence[Mapping[str, Any]],
              export_rows_: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The share of items (the suite's own set) whose greedy text is the same for both."""
    mine = {r["id"]: r.get("prediction") for r in adapter_rows if r.get("set") is None}
    pairs = [(mine[r["id"]], r.get("prediction")) for r in export_rows_
             if r.get("set") is None and r["id"] in mine]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    same = sum(a == b for a, b in pairs)
    return {"same": same, "n_items": len(pairs), "share": same / len(pairs)}
