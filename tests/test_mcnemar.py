"""Right/wrong metrics (acc, acc_norm): the paired p-value is the exact McNemar test on the
discordant items, with its mid-p, the CI the paired bootstrap of the accuracy difference, and
the row's ``test`` says so. Checked against SciPy, through compare_arms, seedstats, a record
and the gate / compare CLIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from harness.errors import RecordError
from harness.rundir import results
from harness.rundir.record import RECORD_SHAPE, check_shape, load_run
from harness.stats import paired as stats
from harness.stats import seedstats
from harness.suite import config

from .factories import make_run

SET = "mc"


def mid_p(b: int, c: int) -> float:
    """Fagerland, Lydersen & Laake (2013): 2 (P[X <= m] - P[X = m] / 2), X ~ Bin(b + c, 1/2)."""
    m, n = min(b, c), b + c
    return 1.0 if n == 0 else float(2 * (sps.binom.cdf(m, n, 0.5) - 0.5 * sps.binom.pmf(m, n, 0.5)))


def exact_p(b: int, c: int) -> float:
    return 1.0 if b + c == 0 else float(sps.binomtest(min(b, c), b + c, 0.5).pvalue)


def discordant_counts() -> list[tuple[int, int]]:
    rng = np.random.default_rng(7)
    drawn = [tuple(int(x) for x in rng.integers(0, hi, size=2)) for hi in (4, 20, 200, 3000)
             for _ in range(40)]
    edges = [(0, 0), (0, 1), (1, 0), (0, 12), (5, 5), (60, 60), (1000, 1000), (1, 999),
             (2500, 2600)]
    return edges + drawn  # type: ignore[return-value]


@pytest.mark.parametrize(("b", "c"), discordant_counts())
def test_mcnemar_p_is_scipy_binomtest_and_mid_p_scipy_binom(b: int, c: int):
    p, mid = stats.mcnemar(b, c)
    assert p == pytest.approx(exact_p(b, c), rel=1e-10, abs=1e-300)
    assert mid == pytest.approx(min(1.0, mid_p(b, c)), rel=1e-10, abs=1e-300)
    assert 0 <= mid <= p <= 1  # the mid-p never exceeds the exact p (0: below 1e-308)
    assert stats.mcnemar(c, b) == (p, mid)  # two-sided: symmetric in the arms


def right_wrong(n: int, *, base_acc: float, flip_to_right: float, flip_to_wrong: float,
                seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of a multiple-choice set for two arms: the candidate keeps the baseline's answer
    except a share of items it turns right / wrong (acc_norm moves independently)."""
    rng = np.random.default_rng(seed)
    base, cand = [], []
    for i in range(n):
        row_b, row_c = {"id": f"q{i}", "set": SET}, {"id": f"q{i}", "set": SET}
        for key in ("acc", "acc_norm"):
            right = float(rng.random() < base_acc)
            u = rng.random()
            flipped = (1.0 if u < flip_to_right else right) if right == 0 else \
                (0.0 if u < flip_to_wrong else right)
            row_b[key], row_c[key] = right, flipped
        base.append(row_b)
        cand.append(row_c)
    return base, cand


def metrics_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {f"{SET}/{k}": float(np.mean([r[k] for r in rows])) for k in ("acc", "acc_norm")}


def counts(base: list[dict[str, Any]], cand: list[dict[str, Any]], key: str) -> tuple[int, int]:
    a, c = np.array([r[key] for r in base]), np.array([r[key] for r in cand])
    return int(((a == 1) & (c == 0)).sum()), int(((a == 0) & (c == 1)).sum())


def test_an_accuracy_comparison_is_mcnemar_with_a_bootstrap_ci_and_holm():
    base, cand = right_wrong(400, base_acc=0.6, flip_to_right=0.05, flip_to_wrong=0.25, seed=1)
    rows = {r["metric"]: r for r in stats.compare_arms(
        base, cand, metrics_of(base), metrics_of(cand), baseline="baseline", candidate="lora")}
    assert list(rows) == [f"{SET}/acc", f"{SET}/acc_norm"]
    for key in ("acc", "acc_norm"):
        row, (b, c) = rows[f"{SET}/{key}"], counts(base, cand, key)
        assert b > c > 0
        assert row["test"] == "mcnemar-exact" and row["paired"] and row["n_items"] == 400
        assert row["p_value"] == pytest.approx(exact_p(b, c), rel=1e-10)
        assert row["p_value_mid"] == pytest.approx(mid_p(b, c), rel=1e-10)
        assert row["abs_diff"] == pytest.approx((c - b) / 400)
        x, y = np.array([r[key] for r in base]), np.array([r[key] for r in cand])
        ref = sps.bootstrap((x, y), lambda u, v, axis: v.mean(axis) - u.mean(axis),
                            paired=True, vectorized=True, method="percentile",
                            n_resamples=10_000, rng=3).confidence_interval
        tol = 0.06 * (ref.high - ref.low)  # two independent 10k-resample quantile estimates
        assert row["ci_low"] == pytest.approx(ref.low, abs=tol)
        assert row["ci_high"] == pytest.approx(ref.high, abs=tol)
    p = sorted(r["p_value"] for r in rows.values())  # Holm by hand: m = 2
    holm = [min(1.0, 2 * p[0]), min(1.0, max(2 * p[0], p[1]))]
    assert sorted(r["p_value_holm"] for r in rows.values()) == pytest.approx(holm)
    assert all(r["significant"] == (r["p_value_holm"] <= 0.05) for r in rows.values())


def test_mcnemar_and_permutation_rows_share_one_holm_family():
    base, cand = right_wrong(120, base_acc=0.5, flip_to_right=0.1, flip_to_wrong=0.1, seed=2)
    rng = np.random.default_rng(5)
    for r in (*base, *cand):  # a loss on the same items: its p is the permutation test's
        r["n_tokens"] = 10
        r["nll_sum"] = float(rng.normal(20, 2))
    bm, cm = metrics_of(base), metrics_of(cand)
    for rows_, m in ((base, bm), (cand, cm)):
        m[f"{SET}/loss"] = sum(r["nll_sum"] for r in rows_) / (10 * len(rows_))
    rows = stats.compare_arms(base, cand, bm, cm, baseline="baseline", candidate="lora",
                              n_resamples=2000)
    tests = {r["metric"]: r["test"] for r in rows}
    assert tests == {f"{SET}/loss": "label-swap", f"{SET}/acc": "mcnemar-exact",
                     f"{SET}/acc_norm": "mcnemar-exact"}
    assert "p_value_mid" not in next(r for r in rows if r["metric"] == f"{SET}/loss")
    assert [r["p_value_holm"] for r in rows] == pytest.approx(
        stats.holm([r["p_value"] for r in rows]))


def test_identical_answers_give_p_one():
    base, _ = right_wrong(50, base_acc=0.5, flip_to_right=0, flip_to_wrong=0, seed=3)
    row = stats.compare_arms(base, base, metrics_of(base), metrics_of(base), baseline="baseline",
                             candidate="lora", metrics=[f"{SET}/acc"])[0]
    assert (row["p_value"], row["p_value_mid"], row["ci_low"], row["ci_high"]) == (1, 1, 0, 0)


def test_an_accuracy_column_that_is_not_right_or_wrong_is_refused():
    base, cand = right_wrong(30, base_acc=0.5, flip_to_right=0.1, flip_to_wrong=0.1, seed=4)
    cand[7]["acc"] = 0.5
    with pytest.raises(RecordError, match=r"mc/acc: the candidate's per-item 'acc' must be 0 or"):
        stats.compare_arms(base, cand, metrics_of(base), metrics_of(cand), baseline="baseline",
                           candidate="lora")


def test_seed_statistics_work_for_accuracy():
    base, _ = right_wrong(200, base_acc=0.6, flip_to_right=0, flip_to_wrong=0, seed=5)
    seeds = {f"lora@s{s}": right_wrong(200, base_acc=0.6, flip_to_right=0.1,
                                       flip_to_wrong=0.02 * s, seed=5)[1] for s in range(3)}
    rows = seedstats.compare_recipe(
        base, seeds, metrics_of(base), {s: metrics_of(r) for s, r in seeds.items()},
        baseline="baseline", recipe="lora", metrics=[f"{SET}/acc"],
        settings=config.StatsSettings(n_resamples=2000))
    (row,) = rows
    diffs = [np.mean([r["acc"] for r in seeds[s]]) - np.mean([r["acc"] for r in base])
             for s in seeds]
    assert row["per_seed_diff"] == pytest.approx(dict(zip(seeds, diffs, strict=True)))
    assert row["abs_diff"] == pytest.approx(np.mean(diffs))
    assert row["seed_sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert row["ci_low"] < row["abs_diff"] < row["ci_high"] and row["n_items"] == 200


# ---------------------------------------------------------------- records and the CLIs


def with_mc_set(run: Path, *, flip_to_wrong: float) -> Path:
    """make_run's record plus a multiple-choice set scored on both arms (lora vs baseline)."""
    rec = json.loads((run / results.RUN_FILE).read_text())
    preds = [json.loads(x) for x in (run / results.PREDICTIONS_FILE).read_text().splitlines()]
    base, cand = right_wrong(300, base_acc=0.7, flip_to_right=0.02, flip_to_wrong=flip_to_wrong,
                             seed=6)
    for arm, rows in (("baseline", base), ("lora", cand)):
        preds += [{"arm": arm, **r} for r in rows]
        rec["arms"][arm]["metrics"].update(metrics_of(rows))
    rec["data"]["eval_sets"] = {SET: {"fingerprint": "fp-mc", "n_items": 300,
                                      "metrics": ["acc", "acc_norm"]}}
    (run / results.RUN_FILE).write_text(json.dumps(rec))
    (run / results.PREDICTIONS_FILE).write_text("".join(json.dumps(p) + "\n" for p in preds))
    return run


def cli(*args: str) -> Any:
    from harness.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(("flip_to_wrong", "exit_code", "said"), [
    (0.3, 1, "excludes the margin"), (0.0, 0, "")])
def test_a_sig_gate_rule_on_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     flip_to_wrong: float, exit_code: int, said: str):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    run = with_mc_set(make_run(tmp_path, n=20), flip_to_wrong=flip_to_wrong)
    res = cli("gate", str(run), "--rule", f"{SET}/acc:-1%:sig:vs-zero-shot")
    assert res.exit_code == exit_code, res.output
    assert said in res.output


def test_compare_names_mcnemar_for_accuracy_rows(tmp_path: Path):
    run = with_mc_set(make_run(tmp_path, n=20), flip_to_wrong=0.2)
    res = cli("compare", str(run), "--format", "json")
    assert res.exit_code == 0, res.output
    rows = {r["metric"]: r for r in json.loads(res.output)["comparisons"]
            if r["candidate_arm"] == "lora"}
    b, c = counts(*right_wrong(300, base_acc=0.7, flip_to_right=0.02, flip_to_wrong=0.2,
                               seed=6), "acc")
    assert rows[f"{SET}/acc"]["test"] == "mcnemar-exact"
    assert rows[f"{SET}/acc"]["p_value"] == pytest.approx(exact_p(b, c), rel=1e-10)
    assert rows["rougeL"]["test"] == "sign-flip"
    md = cli("compare", str(run)).output
    assert "paired, n=300, McNemar" in md and "paired, n=20 |" in md
    assert "the exact McNemar test" in md
    plain = cli("compare", str(make_run(tmp_path / "plain", n=20))).output
    assert "McNemar" not in plain  # said only where a table has an accuracy row


def test_a_record_row_names_its_test_and_mid_p(tmp_path: Path):
    row = {"metric": "mc/acc", "test": "mcnemar-exact", "p_value_mid": 0.03}
    check_shape({"comparisons": [row]}, RECORD_SHAPE, tmp_path)
    with pytest.raises(RecordError, match=r"`comparisons\[0\]\.test` must be a string"):
        check_shape({"comparisons": [{**row, "test": 3}]}, RECORD_SHAPE, tmp_path)
    with pytest.raises(RecordError, match=r"`comparisons\[0\]\.p_value_mid` must be a number"):
        check_shape({"comparisons": [{**row, "p_value_mid": "low"}]}, RECORD_SHAPE, tmp_path)
    run = make_run(tmp_path)  # a row without `test` (none written so) still loads
    rec = json.loads((run / results.RUN_FILE).read_text())
    rec["comparisons"] = [{"metric": "loss", "baseline": "baseline", "candidate": "lora"}]
    (run / results.RUN_FILE).write_text(json.dumps(rec))
    assert "test" not in load_run(run).record["comparisons"][0]
