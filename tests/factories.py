"""Build run directories that follow the record contract, without torch or a model.

Used by the tests of everything that only reads records (stats, compare, gate, report).
The shapes here are the ones `pipeline.run_suite` writes; tests/test_pipeline.py checks a
real run against `validate_run_dir` below so the two cannot drift apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from harness.metrics import ROUGE_KEYS
from harness.rundir import results
from harness.rundir.record import (
    COMPARISON_KEYS,
    RUN_KEYS,
    SCHEMA_VERSION,
    ArmEntry,
    PredictionRow,
    SeedComparisonRow,
    Status,
    load_run,
)


def make_items(n: int, *, seed: int, rouge_mean: float, nll_mean: float) -> list[dict[str, Any]]:
    """Per-item rows for one arm: rouge in [0, 1], nll_sum over 5..40 reference tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        n_tok = int(rng.integers(5, 41))
        nll = float(max(0.05, rng.normal(nll_mean, 0.3))) * n_tok
        row: dict[str, Any] = {
            "id": f"item-{i:04d}",
            "prompt": f"Prompt {i} <b>bold</b>",
            "reference": f"Reference {i}",
            "prediction": f"Prediction {i} <script>alert(1)</script>",
            "loss": nll / n_tok,
            "nll_sum": nll,
            "n_tokens": n_tok,
            "gen_tokens": int(rng.integers(1, 20)),
        }
        for k in ROUGE_KEYS:
            row[k] = float(np.clip(rng.normal(rouge_mean, 0.15), 0.0, 1.0))
        rows.append(row)
    return rows


def arm_metrics(items: list[dict[str, Any]], **system: float) -> dict[str, float]:
    nll = sum(r["nll_sum"] for r in items)
    tok = sum(r["n_tokens"] for r in items)
    m = {"loss": nll / tok, "perplexity": math.exp(nll / tok)}
    for k in ROUGE_KEYS:
        m[k] = float(np.mean([r[k] for r in items]))
    m.update({"eval_tokens_per_s": 400.0, "gen_tokens_per_s": 50.0, "peak_memory_bytes": 2e9})
    m.update(system)
    return m


def loss_only_items(eval_set: str, n: int, *, seed: int, nll_mean: float
                    ) -> list[dict[str, Any]]:
    """Rows of an extra eval set scored by loss only: no generation, so no prediction."""
    rows = make_items(n, seed=seed, rouge_mean=0.0, nll_mean=nll_mean)
    return [{**{k: v for k, v in r.items() if k not in ROUGE_KEYS}, "set": eval_set,
             "prompt": "", "prediction": None, "gen_tokens": None} for r in rows]


def set_metrics(eval_set: str, items: list[dict[str, Any]]) -> dict[str, float]:
    nll = sum(r["nll_sum"] for r in items)
    tok = sum(r["n_tokens"] for r in items)
    return {f"{eval_set}/loss": nll / tok, f"{eval_set}/perplexity": math.exp(nll / tok)}


def make_run(
    out_dir: Path,
    *,
    suite: str = "toy",
    n: int = 50,
    arms: dict[str, tuple[float, float]] | None = None,
    seed: int = 0,
    status: str = "success",
    device: str = "cpu",
    eval_fingerprint: str = "fp-toy-0001",
    error: dict[str, Any] | None = None,
    forgetting: dict[str, dict[str, float]] | None = None,
) -> Path:
    """A finished run directory. ``arms`` maps arm name -> (rouge_mean, nll_mean);
    ``forgetting`` maps an extra eval set's name -> {arm: nll_mean}: a loss-only set marked
    ``forgetting = true`` (no generation), scored on every arm, whose item ids repeat the
    suite's own (``item-0000``...) as two local files without an id column do."""
    arms = arms or {"baseline": (0.30, 2.5), "lora": (0.45, 1.8)}
    run = results.create_run_dir(out_dir, suite)
    preds, record_arms, log = [], {}, []
    for j, (arm, (rouge_mean, nll_mean)) in enumerate(arms.items()):
        items = make_items(n, seed=seed + 17 * j, rouge_mean=rouge_mean, nll_mean=nll_mean)
        preds += [{"arm": arm, **r} for r in items]
        adapter = None if arm == "baseline" else f"{results.ADAPTERS_DIR}/{arm}"
        record_arms[arm] = {
            "model": "toy/model", "adapter": adapter, "status": "success",
            "metrics": arm_metrics(items),
        }
        for k, (name, nll_by_arm) in enumerate((forgetting or {}).items()):
            rows = loss_only_items(name, n, seed=seed + 17 * j + 1000 * (k + 1),
                                   nll_mean=nll_by_arm[arm])
            preds += [{"arm": arm, **r} for r in rows]
            record_arms[arm]["metrics"].update(set_metrics(name, rows))
        if adapter:
            log += [{"arm": arm, "step": s, "epoch": s / 10, "loss": 3.0 - 0.1 * s,
                     "learning_rate": 1e-4} for s in range(1, 11)]
            log += [{"arm": arm, "step": 10, "epoch": 1.0, "eval_loss": nll_mean}]
    record = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "run_id": run.final.name,
        "status": status,
        "error": error,
        "config": {"name": suite, "model": {"name_or_path": "toy/model"}},
        "env": {"device": device, "memory_kind": "eval_peak_rss", "harness_version": "0.1.0",
                "torch": "2.13.0", "transformers": "5.0.0", "peft": "0.18.0",
                "python": "3.11.7", "git": {"commit": "abc1234", "dirty": False}},
        "data": {"eval_fingerprint": eval_fingerprint, "n_train": 100, "n_eval": n,
                 **({"eval_sets": {name: {"fingerprint": f"fp-{name}-0001", "n_items": n,
                                          "source": f"data/{name}.jsonl",
                                          "metrics": ["loss", "perplexity"],
                                          "forgetting": True}
                                   for name in forgetting}} if forgetting else {})},
        "arms": record_arms,
        "comparisons": [],
        "seed_comparisons": [],
        "stats": {"method": "paired_bootstrap", "n_resamples": 2000, "seed": 0, "alpha": 0.05},
        "training": {a: {"trainable_params": 1000, "total_params": 100000}
                     for a in arms if a != "baseline"},
        "warnings": [],
        "started_at": "2026-11-22T00:00:00Z",
        "finished_at": "2026-11-22T00:01:00Z",
        "wall_time_s": 60.0,
    }
    run.write_jsonl(results.PREDICTIONS_FILE, preds)
    run.write_jsonl(results.TRAIN_LOG_FILE, log)
    run.write_json(results.RUN_FILE, record)
    return run.finalize()


def validate_run_dir(path: Path) -> dict[str, Any]:
    """Assert a run directory follows README's run-directory contract (the types of
    harness/record.py); returns the record."""
    loaded = load_run(path)
    rec = loaded.record
    missing = [k for k in RUN_KEYS if k not in rec]
    assert not missing, f"run.json lacks {missing}"
    assert rec["schema_version"] == SCHEMA_VERSION
    assert rec["status"] in (Status.SUCCESS, Status.FAILED)
    assert {"eval_fingerprint", "n_train", "n_eval"} <= set(rec["data"])
    assert "baseline" in rec["arms"]
    for name, arm in rec["arms"].items():
        assert ArmEntry.__required_keys__ <= set(arm), name
        assert arm["status"] in set(Status), name
    for c in rec["comparisons"]:
        assert set(COMPARISON_KEYS) <= set(c), c
    for c in rec["seed_comparisons"]:
        assert SeedComparisonRow.__required_keys__ <= set(c), c
    for p in loaded.predictions:
        # the suite's own rows always carry ROUGE (null without generation); an extra eval
        # set's rows carry the metrics that set asks for
        pred_keys = set(PredictionRow.__annotations__) | (set(ROUGE_KEYS) if p["set"] is None
                                                          else set())
        assert pred_keys <= set(p), set(p) ^ pred_keys
    return rec
