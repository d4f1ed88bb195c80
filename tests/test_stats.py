"""harness.stats.paired against independent computations (SciPy, hand loops), plus its contracts."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from harness.errors import InputError, RecordError
from harness.metrics import ALL_KEYS, ROUGE_KEYS
from harness.rundir.record import COMPARISON_KEYS
from harness.stats import paired as stats
from harness.suite import config

from .factories import arm_metrics, make_items


def paired_rows(n: int, *, shift: float = 0.0, nll_shift: float = 0.0, seed: int = 0,
                noise: float = 0.05, other_tokens: bool = False
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Baseline rows and a correlated candidate: same items, scores moved by shift + noise."""
    base = make_items(n, seed=seed, rouge_mean=0.3, nll_mean=2.0)
    rng = np.random.default_rng(seed + 1)
    cand = []
    for r in base:
        c = dict(r)
        for k in ROUGE_KEYS:
            c[k] = float(np.clip(r[k] + shift + rng.normal(0, noise), 0, 1))
        if other_tokens:  # e.g. a second base model with its own tokenizer
            c["n_tokens"] = int(r["n_tokens"] + rng.integers(-3, 4))
        c["nll_sum"] = max(0.01, (r["loss"] + nll_shift + rng.normal(0, noise)) * c["n_tokens"])
        c["loss"] = c["nll_sum"] / c["n_tokens"]
        cand.append(c)
    return base, cand


def compare(base: list[dict[str, Any]], cand: list[dict[str, Any]], **kw: Any
            ) -> dict[str, dict[str, Any]]:
    rows = stats.compare_arms(base, cand, arm_metrics(base), arm_metrics(cand),
                              baseline="baseline", candidate="lora", **kw)
    return {r["metric"]: r for r in rows}


def col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=float)


def assert_ci_close(ours: dict[str, Any], lo: float, hi: float, *, rel: bool = False) -> None:
    # Independent 10k-resample estimates of a 2.5 % quantile differ by ~1 % of the CI width
    # (see the module docstring of harness.stats.paired); 6 % is > 4 standard errors.
    a, b = ("rel_ci_low", "rel_ci_high") if rel else ("ci_low", "ci_high")
    tol = 0.06 * (hi - lo)
    assert ours[a] == pytest.approx(lo, abs=tol)
    assert ours[b] == pytest.approx(hi, abs=tol)


# ---------------------------------------------------------------- against SciPy


def test_mean_metric_ci_matches_scipy_paired_bootstrap():
    base, cand = paired_rows(300, shift=0.01, noise=0.08)
    ours = compare(base, cand, metrics=["rougeL"])["rougeL"]
    a, c = col(base, "rougeL"), col(cand, "rougeL")
    ref = sps.bootstrap((a, c), lambda x, y, axis: y.mean(axis) - x.mean(axis), paired=True,
                        vectorized=True, method="percentile", n_resamples=10_000, rng=1)
    assert_ci_close(ours, *ref.confidence_interval)
    rel = sps.bootstrap((a, c), lambda x, y, axis: (y.mean(axis) - x.mean(axis)) / x.mean(axis),
                        paired=True, vectorized=True, method="percentile", n_resamples=10_000,
                        rng=2)
    assert_ci_close(ours, *rel.confidence_interval, rel=True)


def _ppl(nll: np.ndarray, tok: np.ndarray, axis: int) -> np.ndarray:
    return np.exp(nll.sum(axis) / tok.sum(axis))


def test_perplexity_ci_matches_scipy_bootstrap_of_sums():
    base, cand = paired_rows(250, nll_shift=-0.03, noise=0.2, other_tokens=True)
    ours = compare(base, cand, metrics=["perplexity"])["perplexity"]
    data = (col(base, "nll_sum"), col(base, "n_tokens"), col(cand, "nll_sum"),
            col(cand, "n_tokens"))
    ref = sps.bootstrap(data, lambda an, at, cn, ct, axis: _ppl(cn, ct, axis) - _ppl(an, at, axis),
                        paired=True, vectorized=True, method="percentile", n_resamples=10_000,
                        rng=3)
    assert_ci_close(ours, *ref.confidence_interval)


def test_sign_flip_p_matches_scipy_permutation_test():
    base, cand = paired_rows(200, shift=0.004, noise=0.1, seed=4)
    ours = compare(base, cand, metrics=["rouge1"])["rouge1"]
    a, c = col(base, "rouge1"), col(cand, "rouge1")
    ref = sps.permutation_test((a, c), lambda x, y, axis: y.mean(axis) - x.mean(axis),
                               permutation_type="samples", vectorized=True,
                               n_resamples=10_000, rng=5)
    assert 0.01 < ref.pvalue < 0.5, "the example should sit where p is informative"
    # Two independent 10k-permutation p-values near 0.1 differ by ~0.004 (1 SE each).
    assert ours["p_value"] == pytest.approx(ref.pvalue, abs=0.02)
    assert ours["test"] == "sign-flip"


def test_label_swap_p_for_loss_matches_scipy_permutation_test():
    base, cand = paired_rows(200, nll_shift=-0.025, noise=0.25, seed=6, other_tokens=True)
    ours = compare(base, cand, metrics=["loss"])["loss"]
    nll = np.concatenate([col(base, "nll_sum"), col(cand, "nll_sum")])
    tok = np.concatenate([col(base, "n_tokens"), col(cand, "n_tokens")])
    n = len(base)

    def loss_diff(x: np.ndarray, y: np.ndarray) -> float:
        # x, y hold row codes: swapping them per item swaps the arm labels of that item
        xi, yi = x.astype(int), y.astype(int)
        return nll[yi].sum() / tok[yi].sum() - nll[xi].sum() / tok[xi].sum()

    ref = sps.permutation_test((np.arange(n), np.arange(n) + n), loss_diff,
                               permutation_type="samples", n_resamples=4_000, rng=7)
    assert 0.01 < ref.pvalue < 0.5
    assert ours["p_value"] == pytest.approx(ref.pvalue, abs=0.025)
    assert ours["test"] == "label-swap"


# ---------------------------------------------------------------- behaviour


def test_known_shift_is_detected():
    base, cand = paired_rows(120, shift=0.05, nll_shift=-0.1, seed=8)
    rows = compare(base, cand)
    for m in ("rougeL", "rouge1", "loss", "perplexity"):
        assert rows[m]["p_value"] < 0.01, m
        assert rows[m]["significant"] is True
        assert rows[m]["ci_low"] * rows[m]["ci_high"] > 0, "CI excludes 0"
    assert rows["loss"]["abs_diff"] < 0 < rows["rougeL"]["abs_diff"]


def test_false_positive_rate_is_near_alpha():
    hits = {"rougeL": 0, "loss": 0}
    sims = 200
    for s in range(sims):
        base, cand = paired_rows(60, seed=1000 + s, noise=0.1)  # no shift: the null holds
        rows = compare(base, cand, metrics=list(hits), n_resamples=400, seed=s)
        for m in hits:
            hits[m] += rows[m]["p_value"] <= 0.05
    for m, h in hits.items():
        # 200 draws at a true 5 %: SD 1.5 points, so 1..10 % is a +-3 SD band
        assert 0.01 <= h / sims <= 0.10, (m, h / sims)


def test_perplexity_ci_is_recomputed_from_sums_like_a_hand_loop():
    base = [{"id": f"i{i}", "nll_sum": nll, "n_tokens": t, "loss": nll / t}
            for i, (nll, t) in enumerate([(10, 5), (3, 3), (40, 10), (8, 2), (12, 6), (5, 5)])]
    cand = [{**r, "nll_sum": r["nll_sum"] * f, "loss": r["loss"] * f}
            for r, f in zip(base, (0.9, 1.1, 0.7, 0.95, 1.0, 0.8), strict=True)]
    bm = {"perplexity": 99.0}  # point values come from the metric dicts, untouched
    cm = {"perplexity": 42.0}
    row = stats.compare_arms(base, cand, bm, cm, baseline="b", candidate="c",
                             metrics=["perplexity"], n_resamples=60, seed=3)[0]
    an, at, cn, ct = (np.array([r[k] for r in rows], dtype=float)
                      for rows in (base, cand) for k in ("nll_sum", "n_tokens"))
    diffs = []
    for idx in np.concatenate(list(stats.bootstrap_indices(6, 60, 3))):
        diffs.append(math.exp(cn[idx].sum() / ct[idx].sum())
                     - math.exp(an[idx].sum() / at[idx].sum()))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    assert (row["baseline_value"], row["candidate_value"], row["abs_diff"]) == (99.0, 42.0, -57.0)
    mean_of_ratios = np.mean(np.exp(cn / ct)) - np.mean(np.exp(an / at))
    sums = math.exp(cn.sum() / ct.sum()) - math.exp(an.sum() / at.sum())
    assert not math.isclose(mean_of_ratios, sums, rel_tol=0.05), "the example must tell them apart"


def test_holm_matches_hand_computation():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, max(0.04*1, 0.06)=0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    base, cand = paired_rows(80, shift=0.01, seed=9)
    rows = [r for r in compare(base, cand).values() if r["p_value"] is not None]
    assert [r["p_value_holm"] for r in rows] == pytest.approx(stats.holm(col(rows, "p_value")))
    assert all(r["significant"] == (r["p_value_holm"] <= 0.05) for r in rows)


def test_rows_follow_the_comparison_contract_and_are_json_safe():
    base, cand = paired_rows(40, shift=0.02)
    rows = compare(base, cand, n_resamples=300)
    assert list(rows) == [m for m in ALL_KEYS if m in arm_metrics(base)]
    extra = {"rel_ci_low", "rel_ci_high", "p_value_holm", "significant", "lower_is_better",
             "paired", "n_items", "test"}
    for r in rows.values():
        assert set(COMPARISON_KEYS) | extra <= set(r)
        assert r["abs_diff"] == pytest.approx(r["candidate_value"] - r["baseline_value"])
        assert r["rel_gain"] == pytest.approx(r["abs_diff"] / r["baseline_value"])
    json.dumps(list(rows.values()), allow_nan=False)
    assert rows["loss"]["lower_is_better"] and not rows["rougeL"]["lower_is_better"]


def test_system_metrics_are_point_differences_only():
    base, cand = paired_rows(30)
    rows = stats.compare_arms(base, cand, arm_metrics(base, peak_memory_bytes=2e9),
                              arm_metrics(cand, peak_memory_bytes=2.5e9), baseline="b",
                              candidate="c", metrics=["peak_memory_bytes", "rougeL"],
                              n_resamples=200)
    mem, rouge = rows
    assert mem["abs_diff"] == 0.5e9 and mem["rel_gain"] == pytest.approx(0.25)
    assert (mem["ci_low"], mem["p_value"], mem["paired"], mem["test"]) == (None, None, False,
                                                                           "none")
    assert rouge["paired"] is True and rouge["n_items"] == 30
    assert rouge["p_value_holm"] == rouge["p_value"], "Holm over the one tested metric"


def test_pairs_by_id_not_by_position_and_refuses_other_items():
    base, cand = paired_rows(50, shift=0.02, seed=10)
    bm, cm = arm_metrics(base), arm_metrics(cand)

    def rows(b: list[dict[str, Any]], c: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return stats.compare_arms(b, c, bm, cm, baseline="b", candidate="c", n_resamples=500)

    assert rows(base, cand[::-1]) == rows(base, cand)
    with pytest.raises(RecordError, match="item ids differ"):
        rows(base, cand[:-1])
    with pytest.raises(RecordError, match="repeat"):
        rows(base, cand[:-1] + cand[:1])


def test_seed_makes_results_reproducible():
    base, cand = paired_rows(50, shift=0.01, seed=11)
    a, b = compare(base, cand, seed=5), compare(base, cand, seed=5)
    assert a == b
    c = compare(base, cand, seed=6)
    assert c["rougeL"]["ci_low"] != a["rougeL"]["ci_low"]


def test_identical_arms_give_p_one_and_a_zero_ci():
    base, _ = paired_rows(25)
    row = compare(base, [dict(r) for r in base], metrics=["rouge2", "loss"])
    for r in row.values():
        assert r["p_value"] == 1.0 and r["ci_low"] == r["ci_high"] == 0.0


def test_zero_baseline_gives_no_relative_gain():
    base, cand = paired_rows(20, shift=0.1)
    for r in base:
        r["rouge2"] = 0.0
    row = compare(base, cand, metrics=["rouge2"])["rouge2"]
    assert row["baseline_value"] == 0.0
    assert row["rel_gain"] is None and row["rel_ci_low"] is None
    assert row["ci_low"] is not None


def test_no_items_means_point_rows_and_missing_metrics_are_left_out():
    base, cand = paired_rows(10)
    bm, cm = arm_metrics(base), arm_metrics(cand)
    del cm["gen_tokens_per_s"]
    rows = stats.compare_arms([], [], bm, cm, baseline="b", candidate="c")
    assert [r["metric"] for r in rows] == [m for m in ALL_KEYS if m in cm]
    assert all(r["p_value"] is None and r["paired"] is False for r in rows)
    with pytest.raises(InputError, match="unknown metric"):
        stats.compare_arms(base, cand, bm, cm, baseline="b", candidate="c", metrics=["meteor"])


# ---------------------------------------------------------------- records and settings


def record(fp: str | None, run_id: str = "r1") -> dict[str, Any]:
    return {"suite": "toy", "run_id": run_id, "data": {"eval_fingerprint": fp}}


def test_check_pairable_refuses_different_eval_sets():
    stats.check_pairable(record("fp-a", "r1"), record("fp-a", "r2"))
    with pytest.raises(RecordError) as e:
        stats.check_pairable(record("fp-a", "r1"), record("fp-b", "r2"))
    msg = str(e.value)
    assert "toy/r1" in msg and "toy/r2" in msg and "fp-a" in msg and "fp-b" in msg
    assert "\n" not in msg
    with pytest.raises(RecordError, match="missing"):
        stats.check_pairable(record(None, "r1"), record(None, "r2"))


def test_stats_record_and_settings_validation():
    assert stats.stats_record(2000, 7, 0.1) == {
        "method": "paired_bootstrap", "n_resamples": 2000, "seed": 7, "alpha": 0.1,
        "p_value_test": "paired_permutation"}
    s = config.StatsSettings.from_record({"n_resamples": 500, "seed": 3}, alpha=0.01)
    assert (s.n_resamples, s.seed, s.alpha) == (500, 3, 0.01)
    with pytest.raises(InputError, match="n_resamples"):
        config.StatsSettings(n_resamples=0)
    with pytest.raises(InputError, match="alpha"):
        config.StatsSettings(alpha=1.5)


def test_resampling_matrices_have_the_documented_shapes():
    idx = np.concatenate(list(stats.bootstrap_indices(7, 23, 0)))
    assert idx.shape == (23, 7) and idx.dtype == np.int32 and idx.min() >= 0 and idx.max() < 7
    masks = np.concatenate(list(stats.swap_masks(13, 9, 0)))
    assert masks.shape == (9, 13) and set(np.unique(masks)) <= {0.0, 1.0}


@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_both_summation_routes_equal_a_plain_gather(k: int):
    """<= 4 distinct columns go through complex gathers, more through a count matrix."""
    rng = np.random.default_rng(k)
    values = rng.random((37, k))
    values[:, -1] = values[:, 0]  # a duplicated column (n_tokens on one tokenizer) is reused
    idx = np.concatenate(list(stats.bootstrap_indices(37, 120, 0)))
    want = values[idx].sum(axis=1)  # (120, k)
    assert stats.ColumnSums(values)(idx) == pytest.approx(want, rel=1e-12)
