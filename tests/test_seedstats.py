"""Seed-aware comparison of a recipe: calibrated under seed noise, checked by simulation and
against an independent computation (SciPy's t quantile, a hand bootstrap loop)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import paired as stats
from harness.stats.seedstats import compare_recipe
from harness.suite import config

from .factories import arm_metrics, make_items


def seeded_arms(n_seeds: int, sim: int, *, n: int = 60, seed_sd: float = 0.04,
                noise: float = 0.1, effect: float = 0.0
                ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """A baseline and n_seeds adapters of one recipe: per-item loss moved by the recipe's
    effect, the seed's own offset (training noise) and per-item noise."""
    base = make_items(n, seed=5000 + sim, rouge_mean=0.3, nll_mean=2.0)
    rng = np.random.default_rng(sim)
    arms = {}
    for s in range(n_seeds):
        offset = rng.normal(0, seed_sd)
        rows = []
        for r in base:
            loss = max(0.01 / r["n_tokens"], r["loss"] + effect + offset + rng.normal(0, noise))
            rows.append({**r, "loss": loss, "nll_sum": loss * r["n_tokens"]})
        arms[f"lora@s{s}"] = rows
    return base, arms


def recipe_row(base, arms, n_resamples=400, seed=0) -> dict[str, Any]:
    seed_metrics = {k: arm_metrics(v) for k, v in arms.items()}
    row, = compare_recipe(base, arms, arm_metrics(base), seed_metrics,
                          baseline="baseline", recipe="lora", metrics=["loss"],
                          settings=config.StatsSettings(n_resamples=n_resamples, seed=seed,
                                                        alpha=0.05))
    return row


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_false_positive_rate_under_seed_noise_is_at_most_alpha(n_seeds):
    sims = 200
    hits = sum(recipe_row(*seeded_arms(n_seeds, s), seed=s)["significant"] for s in range(sims))
    # 200 draws: at a true 5% the SD is 1.5 points; the item-level test (below) is at ~55%.
    assert hits / sims <= 0.08, hits / sims


def test_item_level_test_alone_calls_seed_noise_significant():
    """Why the seed level is needed: one seed's paired test rejects a true null most times."""
    hits = 0
    for s in range(100):
        base, arms = seeded_arms(1, s)
        row, = stats.compare_arms(base, arms["lora@s0"], arm_metrics(base),
                                  arm_metrics(arms["lora@s0"]), baseline="b", candidate="c",
                                  metrics=["loss"], n_resamples=400, seed=s)
        hits += row["p_value"] <= 0.05
    assert hits / 100 >= 0.3


def test_a_real_recipe_effect_is_found_with_five_seeds():
    found = sum(recipe_row(*seeded_arms(5, s, effect=-0.08), seed=s)["significant"]
                for s in range(40))
    assert found / 40 >= 0.7


def test_interval_equals_an_independent_computation():
    base, arms = seeded_arms(4, 7)
    row = recipe_row(base, arms, n_resamples=300, seed=3)

    def loss(rows, idx):
        return sum(rows[i]["nll_sum"] for i in idx) / sum(rows[i]["n_tokens"] for i in idx)

    everything = range(len(base))
    d = [loss(a, everything) - loss(base, everything) for a in arms.values()]
    boot = [np.mean([loss(a, idx) - loss(base, idx) for a in arms.values()])
            for idx in np.concatenate(list(stats.bootstrap_indices(len(base), 300, 3)))]
    se = math.sqrt(np.var(d, ddof=1) / 4 + np.var(boot, ddof=1))
    half = sps.t.ppf(0.975, 3) * se
    assert row["abs_diff"] == pytest.approx(np.mean(d), rel=1e-9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        (np.mean(d) - half, np.mean(d) + half), rel=1e-9)
    assert row["per_seed_diff"] == pytest.approx(dict(zip(arms, d)), rel=1e-9)
    assert row["n_seeds"] == 4 and row["seeds"] == list(arms)


def test_one_seed_gives_no_recipe_row():
    base, arms = seeded_arms(1, 0)
    assert compare_recipe(base, arms, arm_metrics(base),
                          {k: arm_metrics(v) for k, v in arms.items()}, baseline="baseline",
                          recipe="lora", metrics=["loss"],
                          settings=config.StatsSettings(n_resamples=100, seed=0, alpha=0.05)) == []
