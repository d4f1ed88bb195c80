"""A recipe trained with several seeds against one arm: is the gain bigger than the noise of
training itself?

Two adapters of one recipe with different seeds differ, and a paired test over items alone
calls that difference "significant" (it tests *this adapter*, not the recipe): in a simulation
with seed noise of 0.04 nats and item noise of 0.1 (60 items), the item-level test rejected a
true null 55% of the time. Two levels of noise are counted here:
- seeds: each seed's difference from the baseline d_s (the metric recomputed from sums), their
  mean is the estimate, their spread s_d the seed level;
- items: the variance of the seed mean under a paired bootstrap over items (one item draw
  shared by the baseline and every seed, recomputed from resampled sums as stats does).
The interval is mean +- t(S-1) * sqrt(s_d^2 / S + v_items). A plain two-level bootstrap
(seeds with replacement, then items) was tried first: with 3 seeds it has only 10 distinct
seed draws and rejected a true null 16% of the time at alpha 0.05 (17.5% with 2 seeds, 12.5%
with 5). This interval counts the items' noise twice (s_d holds part of it), so it errs on the
safe side: 0-4% false positives in the same simulation (2-10 seeds, 500 draws each; see
tests/test_seedstats.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import t as t_dist

from harness import metrics as M
from harness.stats import paired as stats
from harness.suite import config

METHOD = "seed_t_item_bootstrap"


def compare_recipe(
    base_items: Sequence[Mapping[str, Any]],
    seed_items: Mapping[str, Sequence[Mapping[str, Any]]],
    base_metrics: Mapping[str, Any],
    seed_metrics: Mapping[str, Mapping[str, Any]],
    *,
    baseline: str,
    recipe: str,
    metrics: Sequence[str],
    settings: config.StatsSettings,
) -> list[dict[str, Any]]:
    """One row per per-item metric present in every arm: the mean over seeds of each seed's
    difference, its interval (module docstring), the per-seed differences and their spread."""
    seeds = list(seed_items)
    present = [m for m in metrics if M.is_per_item(m) and stats.is_number(base_metrics.get(m))
               and all(stats.is_number(seed_metrics[s].get(m)) for s in seeds)]
    if len(seeds) < 2:
        return []
    rows = []
    for eval_set in dict.fromkeys(M.split(m)[0] for m in present):  # each set on its own items
        family = [m for m in present if M.split(m)[0] == eval_set]
        base = stats.set_items(base_items, eval_set)
        if not base:
            continue
        cols = sorted({c for m in family for c in M.columns(m)})
        paired = [stats.pair_items(base, stats.set_items(seed_items[s], eval_set),
                                   baseline=baseline, candidate=s, columns=cols) for s in seeds]
        v_items = _item_variance(paired, family, cols, settings)
        rows += [_row(m, v_items[m], base_metrics, seed_metrics, seeds, baseline, recipe,
                      paired[0].n, settings) for m in family]
    return rows


def _item_variance(paired: list[stats.PairedItems], metrics: Sequence[str],
                   cols: Sequence[str], settings: config.StatsSettings) -> dict[str, float]:
    """Bootstrap variance over items of the mean over seeds of each seed's difference."""
    n, k, n_seeds = paired[0].n, len(cols), len(paired)
    base = np.column_stack([paired[0].base[c] for c in cols])  # (n, k)
    cands = [np.column_stack([p.cand[c] for c in cols]) for p in paired]  # S x (n, k)
    column_sums = stats.ColumnSums(np.hstack([base, *cands]))  # (n, (S+1) k)
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for idx in stats.bootstrap_indices(n, settings.n_resamples, settings.seed):
        sums = column_sums(idx)  # (rows, (S+1) k)
        arm = [{c: sums[:, a * k + j] for j, c in enumerate(cols)} for a in range(n_seeds + 1)]
        for m in metrics:
            vb = M.from_sums(m, arm[0], n)
            out[m].append(np.mean([M.from_sums(m, a, n) - vb for a in arm[1:]], axis=0))
    return {m: _var(np.concatenate(v)) for m, v in out.items()}


def _var(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.var(values, ddof=1)) if values.size > 1 else float("nan")


def _row(metric: str, v_items: float, base_metrics: Mapping[str, Any],
         seed_metrics: Mapping[str, Mapping[str, Any]], seeds: list[str], baseline: str,
         recipe: str, n_items: int, settings: config.StatsSettings) -> dict[str, Any]:
    b = float(base_metrics[metric])
    per_seed = [float(seed_metrics[s][metric]) - b for s in seeds]
    mean, seed_sd = float(np.mean(per_seed)), float(np.std(per_seed, ddof=1))
    se = math.sqrt(seed_sd**2 / len(seeds) + v_items)
    half = float(t_dist.ppf(1 - settings.alpha / 2, len(seeds) - 1)) * se
    lo, hi = (mean - half, mean + half) if math.isfinite(half) else (None, None)
    rel_lo, rel_hi = (lo / b, hi / b) if b and lo is not None and hi is not None else (None, None)
    return {
        "metric": metric, "baseline": baseline, "recipe": recipe, "seeds": seeds,
        "baseline_value": b, "candidate_value": b + mean, "abs_diff": mean,
        "rel_gain": mean / b if b else None, "ci_low": lo, "ci_high": hi,
        "rel_ci_low": rel_lo, "rel_ci_high": rel_hi,  # relative to the baseline value
        "per_seed_diff": dict(zip(seeds, per_seed, strict=True)),
        "seed_sd": seed_sd, "item_sd": math.sqrt(v_items) if v_items >= 0 else None,
        "significant": lo is not None and hi is not None and (lo > 0 or hi < 0),
        "lower_is_better": M.lower_is_better(metric), "n_items": n_items,
        "n_seeds": len(seeds), "method": METHOD,
    }

