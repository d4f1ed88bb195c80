"""A record's paired evidence, computed from its arms and prediction rows: each adapter arm
against the zero-shot baseline, each recipe trained with several seeds against it. The
pipeline and `harness merge` (which recomputes them on joined shards) both call these, so a
merged sweep's numbers are a single run's."""

from __future__ import annotations

from typing import Any

from harness import metrics as M
from harness.rundir.record import Status
from harness.stats import measured, retained, seedstats
from harness.stats import paired as stats
from harness.suite import arms, config


def arm_comparisons(record: dict[str, Any], predictions: list[dict[str, Any]], name: str,
                    settings: config.StatsSettings) -> list[dict[str, Any]]:
    """Arm ``name`` of ``record`` against its baseline, paired over ``predictions`` (a run's,
    or a merge's). Speed and memory are compared only when both arms were
    measured by the same live process (measured.comparable): not a cached baseline, not an
    arm a killed run measured before `harness resume`, not another shard's."""
    base = record["arms"][arms.BASELINE]["metrics"]
    cand = record["arms"][name]["metrics"]
    where = measured.of(record, arms.BASELINE), measured.of(record, name)
    metrics = sorted((k for k, v in base.items() if v is not None and cand.get(k) is not None
                      and measured.keep(k, *where)), key=M.sort_key)
    return stats.compare_arms(
        [r for r in predictions if r["arm"] == arms.BASELINE],
        [r for r in predictions if r["arm"] == name],
        base, cand, baseline=arms.BASELINE, candidate=name, metrics=metrics,
        n_resamples=settings.n_resamples, seed=settings.seed, alpha=settings.alpha,
    )


def seed_comparisons(record: dict[str, Any], predictions: list[dict[str, Any]],
                     settings: config.StatsSettings) -> list[dict[str, Any]]:
    """Each recipe trained with several seeds (``lora@s0``, ...) against the baseline across
    its seeds: is the gain bigger than the noise of training itself (seedstats)?"""
    recipes: dict[str, list[str]] = {}
    for name, arm in record["arms"].items():
        recipe, seed = arms.recipe_of(name)
        if seed is not None and arm.get("status") == Status.SUCCESS:
            recipes.setdefault(recipe, []).append(name)
    base = record["arms"][arms.BASELINE]["metrics"]
    rows: list[dict[str, Any]] = []
    for recipe, names in recipes.items():
        rows += seedstats.compare_recipe(
            [r for r in predictions if r["arm"] == arms.BASELINE],
            {n: [r for r in predictions if r["arm"] == n] for n in names},
            base, {n: record["arms"][n]["metrics"] for n in names},
            baseline=arms.BASELINE, recipe=recipe,
            metrics=sorted((k for k in base if M.is_per_item(k)), key=M.sort_key),
            settings=settings)
    return rows


def export_comparison(record: dict[str, Any], predictions: list[dict[str, Any]], export: str,
                      source: str, settings: config.StatsSettings) -> dict[str, Any]:
    """Export arm ``export`` against its source adapter arm: per metric the share of the
    adapter's gain over the zero-shot arm that the export keeps (with its paired bootstrap
    CI), and the greedy-output agreement on the suite's own items."""
    rows = {role: [r for r in predictions if r["arm"] == arm]
            for role, arm in (("base", arms.BASELINE), ("adapter", source),
                              ("export", export))}
    have = record["arms"][export]["metrics"]
    metrics = sorted((k for k, v in have.items() if v is not None and M.is_per_item(k)),
                     key=M.sort_key)
    return {"export": export, "from": source,
            "retained": retained.export_rows(rows, metrics, n_resamples=settings.n_resamples,
                                             seed=settings.seed, alpha=settings.alpha),
            "agreement": retained.agreement(rows["adapter"], rows["export"])}
