"""Speed of harness.stats.paired.compare_arms at the design size: 10,000 items x 10,000 resamples.

Run with ``pytest benchmarks/`` (the default ``pytest`` run only collects tests/). Timings are
reported by pytest-benchmark and never asserted: a loaded CI box must not fail a build.
Target from the brief: one metric in ~2 s or less on the 2-core CI machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from harness.metrics import ALL_KEYS, ROUGE_KEYS
from harness.stats import paired as stats

N_ITEMS = 10_000
N_RESAMPLES = 10_000

# pytest-benchmark's own marker: 3 rounds of a ~1 s call, no calibration loop.
pytestmark = pytest.mark.benchmark(group="stats", min_rounds=3, warmup=False)


def arm(seed: int, shift: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-item rows and arm metrics built with NumPy (make_items loops in Python)."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(5, 41, N_ITEMS)
    nll = np.maximum(0.05, rng.normal(2.0 - shift, 0.3, N_ITEMS)) * tok
    rouge = np.clip(rng.normal(0.3 + shift, 0.15, (N_ITEMS, len(ROUGE_KEYS))), 0, 1)
    rows = [{"id": f"item-{i:05d}", "nll_sum": float(nll[i]), "n_tokens": int(tok[i]),
             **{k: float(rouge[i, j]) for j, k in enumerate(ROUGE_KEYS)}} for i in range(N_ITEMS)]
    loss = float(nll.sum() / tok.sum())
    metrics = {"loss": loss, "perplexity": float(np.exp(loss)),
               **{k: float(rouge[:, j].mean()) for j, k in enumerate(ROUGE_KEYS)},
               "eval_tokens_per_s": 400.0, "gen_tokens_per_s": 50.0, "peak_memory_bytes": 2e9}
    return rows, metrics


@pytest.fixture(scope="module")
def arms() -> tuple[Any, ...]:
    (bi, bm), (ci, cm) = arm(0, 0.0), arm(1, 0.01)
    return bi, ci, bm, cm


@pytest.mark.parametrize("metrics", [["rougeL"], ["perplexity"], list(ALL_KEYS)],
                         ids=["rougeL", "perplexity", "all"])
def test_compare_arms_10k_items_10k_resamples(benchmark: Any, arms: tuple[Any, ...],
                                              metrics: list[str]) -> None:
    bi, ci, bm, cm = arms
    rows = benchmark.pedantic(
        stats.compare_arms, args=(bi, ci, bm, cm),
        kwargs={"baseline": "baseline", "candidate": "lora", "metrics": metrics,
                "n_resamples": N_RESAMPLES, "seed": 0},
        rounds=3, iterations=1,
    )
    benchmark.extra_info.update(n_items=N_ITEMS, n_resamples=N_RESAMPLES, metrics=len(metrics))
    print(f"\ncompare_arms {N_ITEMS:,} items x {N_RESAMPLES:,} resamples, {metrics[0]}"
          f"{' + ...' if len(metrics) > 1 else ''}: median {benchmark.stats['median']:.2f} s")
    assert all(r["p_value"] is not None for r in rows if r["metric"] in ("rougeL", "perplexity"))
