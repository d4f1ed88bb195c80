"""Paired statistics for two arms evaluated on the same items. NumPy only, no torch.

What is computed, per metric, for a candidate arm against a baseline arm:

- **Point values** come from the arms' recorded metric dicts (the numbers the pipeline wrote);
  ``abs_diff = candidate - baseline`` and ``rel_gain = abs_diff / baseline`` (None when the
  baseline is 0).
- **Confidence interval**: paired percentile bootstrap. Items are resampled with replacement
  *as pairs* (both arms keep the same items in a resample), the metric is recomputed for each
  arm on the resample, and the ``alpha/2`` and ``1 - alpha/2`` quantiles of the difference give
  the CI of ``abs_diff``; the same resamples give the CI of ``rel_gain`` (difference divided by
  the resampled baseline value). Percentile rather than BCa: it needs no jackknife (which
  would cost n extra evaluations at 10,000 items) and with hundreds of items the sampling
  distribution of a mean is close to symmetric, where the two agree.
- **p-value**: two-sided paired permutation test. Under the null "the two arms are
  exchangeable on every item" each item's pair of scores may swap arm labels. For mean metrics
  (ROUGE) swapping labels flips the sign of the item's difference, i.e. a sign-flip test on
  per-item differences (``test="sign-flip"``). For the ratio metrics ``loss`` and
  ``perplexity`` (sum NLL / sum tokens) the swapped sums are recomputed and the ratio difference
  re-evaluated (``test="label-swap"``), so the corpus metric is tested as it is defined, not via
  a per-item proxy. ``p = (1 + #{|T*| >= |T_obs|}) / (1 + n_resamples)`` (Phipson & Smyth 2010:
  never 0, exact-level test), so 10,000 resamples resolve p down to ~1e-4.
  A permutation p rather than one read off the bootstrap: it is exact under its null at any
  sample size and its false-positive rate is alpha by construction (tests/test_stats.py checks
  ~5% on simulated null comparisons).
- **Right/wrong metrics** (``acc``, ``acc_norm``: ``Metric.binary``): the p-value is the exact
  McNemar test (``test="mcnemar-exact"``). Only the items the arms disagree on carry
  information: b = baseline right and candidate wrong, c = the reverse; under the null each
  such item is either way with probability 1/2, so ``p = min(1, 2 P[X <= min(b, c)])`` with
  X ~ Bin(b + c, 1/2) (1 when b + c = 0), computed in exact integer arithmetic. That is the
  permutation test's exact distribution, with no resampling error, and what
  ``scipy.stats.binomtest`` gives. ``p_value_mid`` is its mid-p, ``2 (P[X <= m] - P[X = m] / 2)``
  (Fagerland, Lydersen & Laake 2013: closer to alpha than the exact test, which is
  conservative at small b + c); the exact p decides Holm and ``significant``. The CI is the
  paired bootstrap of the accuracy difference, as for any other metric.
- **Holm** step-down correction over the metrics of one comparison that have a p-value
  (``p_value_holm``); ``significant`` is ``p_value_holm <= alpha``. The raw p is kept beside it
  as ``p_value``: unadjusted, like the CI, so the two are read together and the Holm p alone
  decides significance (the renderers label them ``p`` and ``p (Holm)``).
  loss and perplexity are one test in two guises (exp is monotone) and both count in Holm:
  slightly conservative, never anti-conservative.
- Corpus metrics are recomputed from resampled *sums* (``sum nll_sum / sum n_tokens``;
  perplexity = exp of that), never as a mean of per-item values. System metrics (throughput,
  peak memory) have one number per arm: point difference only, CI and p are None.

Speed: one seeded resample matrix (n_resamples x n_items) per comparison, shared by every
metric. It is never materialised whole (10,000 x 10,000 int32 = 400 MB); it is drawn in row
chunks of ~500k cells (50 rows x 10,000 items: 2 MB of indices, cache-resident; 2.6x faster
than 1,000-row chunks here) and each chunk yields the column sums every metric needs
(``ColumnSums``: gathers for a few columns, a bincount count matrix for many). The permutation
masks are drawn the same way, as packed random bits. Results depend only on (seed,
n_resamples, n_items) and the data. 10,000 x 10,000 for one metric: ~0.7 s on the 2-core box.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from harness import metrics as M
from harness.errors import InputError, RecordError
from harness.suite.config import DEFAULT_ALPHA, DEFAULT_RESAMPLES, StatsSettings

METHOD = "paired_bootstrap"
P_VALUE_TEST = "paired_permutation"  # every metric's but a right/wrong one's (MCNEMAR)
MCNEMAR = "mcnemar-exact"
# ~500k cells per chunk: 4 MB of int64 counts stays in cache (measured fastest, see docstring).
CHUNK_CELLS = 500_000
# Relative tolerance when counting |T*| >= |T_obs|: sums of 10k float64 values carry ~1e-13
# relative error, so a permutation equal to the observed one must still count as extreme.
TIE_RTOL = 1e-9


def stats_record(n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, alpha: float = DEFAULT_ALPHA
                 ) -> dict[str, Any]:
    """The ``stats`` block of run.json: method, n_resamples, seed, alpha, p_value_test."""
    settings = StatsSettings(n_resamples=n_resamples, seed=seed, alpha=alpha)
    return {"method": METHOD, **settings.model_dump(), "p_value_test": P_VALUE_TEST}


# ---------------------------------------------------------------- pairing records


def run_label(record: Mapping[str, Any]) -> str:
    return f"{record.get('suite', '?')}/{record.get('run_id', '?')}"


def eval_fingerprint(record: Mapping[str, Any]) -> str | None:
    data = record.get("data") or {}
    fp = data.get("eval_fingerprint")
    return str(fp) if fp else None


def same_eval_set(record_a: Mapping[str, Any], record_b: Mapping[str, Any]) -> bool:
    """True when both records name the same (non-empty) eval fingerprint."""
    fa = eval_fingerprint(record_a)
    return fa is not None and fa == eval_fingerprint(record_b)


def shared_extra_sets(record_a: Mapping[str, Any], record_b: Mapping[str, Any]) -> set[str]:
    """The extra eval sets ([eval.sets.*]) both records scored on the same items."""
    def fingerprints(record: Mapping[str, Any]) -> dict[str, Any]:
        sets = (record.get("data") or {}).get("eval_sets") or {}
        return {n: (s or {}).get("fingerprint") for n, s in sets.items()}

    fa, fb = fingerprints(record_a), fingerprints(record_b)
    return {n for n, fp in fa.items() if fp and fb.get(n) == fp}


def check_pairable(record_a: Mapping[str, Any], record_b: Mapping[str, Any],
                   extra_sets: Sequence[str] = ()) -> None:
    """Refuse to pair two runs whose eval items differ (a paired test needs the same items),
    on the suite's own set and on each extra set named."""
    differ = sorted(set(extra_sets) - shared_extra_sets(record_a, record_b))
    if differ:
        raise RecordError(
            f"cannot pair runs {run_label(record_a)} and {run_label(record_b)} on eval set(s) "
            f"{', '.join(differ)}: absent from one run or scored on other items "
            "(data.eval_sets.<set>.fingerprint differs)")
    if same_eval_set(record_a, record_b):
        return
    fa, fb = eval_fingerprint(record_a), eval_fingerprint(record_b)
    raise RecordError(
        f"cannot pair runs {run_label(record_a)} and {run_label(record_b)}: their eval sets "
        f"differ (data.eval_fingerprint {fa or 'missing'} vs {fb or 'missing'})"
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = (m - np.arange(m)) * p[order]  # smallest p times m, next times m-1, ...
    adjusted = np.minimum(np.maximum.accumulate(stepped), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


# ---------------------------------------------------------------- resampling matrices


def _chunk_rows(n_items: int, n_resamples: int) -> int:
    return max(1, min(n_resamples, CHUNK_CELLS // max(n_items, 1)))


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent bootstrap and permutation streams from one recorded seed."""
    boot, perm = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def bootstrap_indices(n_items: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The shared resample index matrix, (n_resamples, n_items) int32, in row chunks."""
    rng = _streams(seed)[0]
    step = _chunk_rows(n_items, n_resamples)
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        yield rng.integers(0, n_items, size=(rows, n_items), dtype=np.int32)


def swap_masks(n_items: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Permutation masks, (n_resamples, n_items) of 0/1 (1 = swap arm labels), in chunks."""
    rng = _streams(seed)[1]
    step = _chunk_rows(n_items, n_resamples)
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        packed = rng.integers(0, 256, size=(rows, (n_items + 7) // 8), dtype=np.uint8)
        yield np.unpackbits(packed, axis=1, count=n_items).astype(np.float64)


def _counts(idx: np.ndarray) -> np.ndarray:
    """Index rows -> how often each item was drawn, (rows, n_items) float64."""
    rows, n = idx.shape
    flat = idx + (np.arange(rows, dtype=np.int64) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


class ColumnSums:
    """Sums of per-item columns over each bootstrap row: (rows, n) indices -> (rows, k).

    Two exact routes to the same sums (they differ only in float rounding, ~1e-16), timed at
    10k items x 10k resamples on the 2-core box:
    - up to ``GATHER_MAX`` distinct columns: gather the values and sum. Columns go in pairs
      as complex128 (real, imag), so one gather serves two: 0.42 s per pair vs 0.34 s for one
      float64 column; the item vector (160 KB) stays in cache.
    - more columns: a count matrix (bincount, ~0.3 s quiet, 0.9 s CPU on a loaded box) times
      the (n, k) values with einsum, whose cost grows slowly with k (+0.5 s for 11 columns
      vs +2 s for six complex gathers).
    No BLAS in either: two hundred small OpenBLAS products, each syncing its two threads, went
    from 0.16 s to 2.4 s (and worse) when other jobs shared the two cores.
    Columns that are equal (n_tokens of two arms on one tokenizer) are summed once.
    """

    GATHER_MAX = 4

    def __init__(self, values: np.ndarray) -> None:  # values: (n, k) float64
        self.distinct, self.inverse = _distinct_columns(values)
        d = self.distinct.shape[1]
        self.packed = None
        if d <= self.GATHER_MAX:
            padded = np.zeros((values.shape[0], d + d % 2))
            padded[:, :d] = self.distinct
            self.packed = [padded[:, j] + 1j * padded[:, j + 1] for j in range(0, d, 2)]

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        if self.packed is None:
            sums = np.einsum("rn,nd->rd", _counts(idx), self.distinct)  # (rows, d)
        else:
            pairs = [v[idx].sum(axis=1) for v in self.packed]  # each (rows,) complex
            sums = np.column_stack([x for z in pairs for x in (z.real, z.imag)])
        return sums[:, self.inverse]  # (rows, k)


def _masked_sums(mask: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``mask @ delta`` without BLAS (see ColumnSums): (rows, n) 0/1 x (n, k) -> (rows, k).

    A multiply-and-sum per column (~0.08 s per column at 10k x 10k; einsum took 0.64 s for
    five), skipping all-zero columns (n_tokens of two arms on one tokenizer).
    """
    out = np.zeros((mask.shape[0], delta.shape[1]))
    for j in np.flatnonzero(np.any(delta != 0, axis=0)):
        out[:, j] = (mask * delta[:, j]).sum(axis=1)
    return out


def _distinct_columns(values: np.ndarray) -> tuple[np.ndarray, list[int]]:
    keep: list[int] = []
    inverse = []
    for j in range(values.shape[1]):
        same = [i for i, c in enumerate(keep) if np.array_equal(values[:, c], values[:, j])]
        if not same:
            keep.append(j)
        inverse.append(same[0] if same else len(keep) - 1)
    return values[:, keep], inverse


# ---------------------------------------------------------------- metric kernels


def _metric_value(metric: str, sums: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """A metric from column sums over a (re)sample of n items; arrays broadcast over resamples."""
    return M.from_sums(metric, sums, n)


def _columns_for(metric: str) -> tuple[str, ...]:
    return M.columns(metric)


@dataclass(frozen=True)
class PairedItems:
    """Per-item columns of both arms, aligned by item id: name -> (n_items,) float64."""

    n: int
    base: dict[str, np.ndarray]
    cand: dict[str, np.ndarray]


def _item_column(rows: Sequence[Mapping[str, Any]], col: str, arm: str) -> np.ndarray:
    try:
        return np.array([float(r[col]) for r in rows])
    except (KeyError, TypeError, ValueError) as e:
        raise RecordError(f"arm {arm}: per-item rows lack a numeric {col!r} ({e})") from e


def _ids(rows: Sequence[Mapping[str, Any]], arm: str) -> dict[str, int]:
    ids = {str(r.get("id")): i for i, r in enumerate(rows)}
    if len(ids) != len(rows):
        raise RecordError(f"arm {arm}: per-item rows repeat an id ({len(rows) - len(ids)} dupes)")
    return ids


def pair_items(base_items: Sequence[Mapping[str, Any]], cand_items: Sequence[Mapping[str, Any]],
               *, baseline: str, candidate: str, columns: Sequence[str]) -> PairedItems:
    """Align the candidate's rows to the baseline's order by id; refuse differing id sets."""
    bid, cid = _ids(base_items, baseline), _ids(cand_items, candidate)
    if bid.keys() != cid.keys():
        only_b, only_c = len(bid.keys() - cid.keys()), len(cid.keys() - bid.keys())
        raise RecordError(
            f"cannot pair {candidate} with {baseline}: item ids differ ({only_b} only in "
            f"{baseline}, {only_c} only in {candidate})"
        )
    cand_sorted = [cand_items[cid[i]] for i in bid]
    base = {c: _item_column(base_items, c, baseline) for c in columns}
    cand = {c: _item_column(cand_sorted, c, candidate) for c in columns}
    return PairedItems(len(bid), base, cand)


# ---------------------------------------------------------------- resampling engine


def _resample(p: PairedItems, metrics: Sequence[str], settings: StatsSettings
              ) -> dict[str, dict[str, np.ndarray]]:
    """Bootstrap diffs / rel gains and permutation statistics, each (n_resamples,) per metric."""
    cols = sorted({c for m in metrics for c in _columns_for(m)})
    base = np.column_stack([p.base[c] for c in cols])  # (n, k)
    cand = np.column_stack([p.cand[c] for c in cols])  # (n, k)
    column_sums, delta = ColumnSums(np.hstack([base, cand])), cand - base  # (n, 2k), (n, k)
    tot_b, tot_c = base.sum(0), cand.sum(0)  # (k,)
    out: dict[str, dict[str, list[np.ndarray]]] = {m: {"diff": [], "rel": [], "perm": []}
                                                   for m in metrics}
    k, B = len(cols), settings.n_resamples
    for idx in bootstrap_indices(p.n, B, settings.seed):
        sums = column_sums(idx)  # (rows, 2k)
        _collect_boot(out, metrics, cols, sums[:, :k], sums[:, k:], p.n)
    # A right/wrong metric's p is McNemar's, exact: no permutations for it, and its columns
    # (unless another metric shares them) stay out of the masked sums (all-zero delta).
    permuted = [m for m in metrics if not M.is_binary(m)]
    needed = {c for m in permuted for c in _columns_for(m)}
    delta[:, [j for j, c in enumerate(cols) if c not in needed]] = 0.0
    for mask in swap_masks(p.n, B, settings.seed) if permuted else ():
        moved = _masked_sums(mask, delta)  # (rows, k): how far swapping moves each column sum
        _collect_perm(out, permuted, cols, tot_b + moved, tot_c - moved, p.n)
    return {m: {key: np.concatenate(v) if v else np.empty(0) for key, v in parts.items()}
            for m, parts in out.items()}


def _as_sums(cols: Sequence[str], arr: np.ndarray) -> dict[str, np.ndarray]:
    return {c: arr[..., j] for j, c in enumerate(cols)}


def _collect_boot(out: dict[str, Any], metrics: Sequence[str], cols: Sequence[str],
                  sb: np.ndarray, sc: np.ndarray, n: int) -> None:
    b_sums, c_sums = _as_sums(cols, sb), _as_sums(cols, sc)
    for m in metrics:
        vb, vc = _metric_value(m, b_sums, n), _metric_value(m, c_sums, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[m]["diff"].append(vc - vb)
            out[m]["rel"].append((vc - vb) / vb)


def _collect_perm(out: dict[str, Any], metrics: Sequence[str], cols: Sequence[str],
                  sb: np.ndarray, sc: np.ndarray, n: int) -> None:
    b_sums, c_sums = _as_sums(cols, sb), _as_sums(cols, sc)
    for m in metrics:
        out[m]["perm"].append(_metric_value(m, c_sums, n) - _metric_value(m, b_sums, n))


def _observed(p: PairedItems, metric: str) -> float:
    """The statistic the permutation distribution is compared with, from the items."""
    b = {c: v.sum() for c, v in p.base.items()}
    c = {c: v.sum() for c, v in p.cand.items()}
    return float(_metric_value(metric, c, p.n) - _metric_value(metric, b, p.n))


def permutation_p(observed: float, null: np.ndarray) -> float:
    """Two-sided Monte-Carlo p: (1 + #{|T*| >= |T_obs|}) / (1 + n)."""
    null = null[np.isfinite(null)]
    hits = np.count_nonzero(np.abs(null) >= abs(observed) * (1 - TIE_RTOL))
    return float((1 + hits) / (1 + len(null)))


def binomial_tail(k: int, n: int) -> tuple[float, float]:
    """``(P[X <= k], P[X = k])`` for X ~ Bin(n, 1/2), exactly: integer binomial coefficients over
    2^n, rounded once to float (an exact fraction converts correctly rounded; at n = 10,000 the
    sum takes ~10 ms)."""
    term, total = 1, 1  # C(n, 0)
    for j in range(k):
        term = term * (n - j) // (j + 1)  # C(n, j + 1), exact
        total += term
    return float(Fraction(total, 2**n)), float(Fraction(term, 2**n))


def mcnemar(b: int, c: int) -> tuple[float, float]:
    """Exact two-sided McNemar p and its mid-p from the discordant counts (module docstring):
    b items only the baseline got right, c only the candidate."""
    m, n = min(b, c), b + c
    if n == 0:
        return 1.0, 1.0
    cdf, pmf = binomial_tail(m, n)
    return min(1.0, 2 * cdf), min(1.0, 2 * cdf - pmf)


def _discordant(p: PairedItems, metric: str) -> tuple[int, int]:
    """(b, c) of a right/wrong metric; RecordError when its per-item column holds anything but
    0 and 1 (McNemar would count it silently wrong)."""
    col = M.columns(metric)[0]
    base, cand = p.base[col], p.cand[col]
    for arm, v in (("baseline", base), ("candidate", cand)):
        bad = v[(v != 0) & (v != 1)]
        if bad.size:
            raise RecordError(f"{metric}: the {arm}'s per-item {col!r} must be 0 or 1 (right "
                              f"or wrong), got {bad[0]!r}")
    return int(np.count_nonzero((base == 1) & (cand == 0))), \
        int(np.count_nonzero((base == 0) & (cand == 1)))


def interval(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]  # a resample whose baseline is 0 has no relative gain
    if values.size == 0:
        return None, None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------- public entry point


def compare_arms(
    base_items: Sequence[Mapping[str, Any]],
    cand_items: Sequence[Mapping[str, Any]],
    base_metrics: Mapping[str, Any],
    cand_metrics: Mapping[str, Any],
    *,
    baseline: str,
    candidate: str,
    metrics: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> list[dict[str, Any]]:
    """One comparison row per metric recorded (numeric) in both arms' metric dicts (all
    known ones, the suite's set first, when ``metrics`` is None).

    Per-item metrics get a paired CI and p-value when both item lists are non-empty; with no
    items at all (e.g. runs on different eval sets) every row is a point difference only.
    """
    settings = StatsSettings(n_resamples=n_resamples, seed=seed, alpha=alpha)
    if metrics is None:
        metrics = sorted((m for m in base_metrics if M.is_known(m)), key=M.sort_key)
    unknown = [m for m in metrics if not M.is_known(m)]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; known: {', '.join(M.ALL_KEYS)}")
    present = [m for m in metrics
               if is_number(base_metrics.get(m)) and is_number(cand_metrics.get(m))]
    rows = [_point_row(m, base_metrics, cand_metrics, baseline, candidate) for m in present]
    tested = [r for r in rows if M.is_per_item(r["metric"])]
    # Each eval set is its own family: own items, own pairing, own Holm correction.
    for eval_set in dict.fromkeys(M.split(r["metric"])[0] for r in tested):
        family = [r for r in tested if M.split(r["metric"])[0] == eval_set]
        b, c = set_items(base_items, eval_set), set_items(cand_items, eval_set)
        if b or c:
            cols = sorted({col for r in family for col in _columns_for(r["metric"])})
            paired = pair_items(b, c, baseline=baseline, candidate=candidate, columns=cols)
            _fill_paired(family, paired, settings)
    return rows


def set_items(rows: Sequence[Mapping[str, Any]], eval_set: str | None
              ) -> list[Mapping[str, Any]]:
    """The per-item rows of one eval set: ``set`` names an extra set; the suite's own items
    have none (or null)."""
    return [r for r in rows if r.get("set") == eval_set]


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool: a metric value a comparison can use."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _point_row(metric: str, base_metrics: Mapping[str, Any], cand_metrics: Mapping[str, Any],
               baseline: str, candidate: str) -> dict[str, Any]:
    b, c = float(base_metrics[metric]), float(cand_metrics[metric])
    return {
        "metric": metric, "baseline": baseline, "candidate": candidate,
        "baseline_value": b, "candidate_value": c, "abs_diff": c - b,
        "rel_gain": (c - b) / b if b != 0 else None,
        "ci_low": None, "ci_high": None, "p_value": None,
        "rel_ci_low": None, "rel_ci_high": None, "p_value_holm": None, "significant": False,
        "lower_is_better": M.lower_is_better(metric), "paired": False, "n_items": None,
        "test": "none",
    }


def _fill_paired(rows: list[dict[str, Any]], paired: PairedItems, settings: StatsSettings) -> None:
    """Add CIs, p-values and the Holm correction to the per-item metric rows, in place."""
    dist = _resample(paired, [r["metric"] for r in rows], settings)
    for r in rows:
        d = dist[r["metric"]]
        r["ci_low"], r["ci_high"] = interval(d["diff"], settings.alpha)
        if r["baseline_value"] != 0:
            r["rel_ci_low"], r["rel_ci_high"] = interval(d["rel"], settings.alpha)
        r["paired"], r["n_items"] = True, paired.n
        if M.is_binary(r["metric"]):
            r["p_value"], r["p_value_mid"] = mcnemar(*_discordant(paired, r["metric"]))
            r["test"] = MCNEMAR
            continue
        r["p_value"] = permutation_p(_observed(paired, r["metric"]), d["perm"])
        r["test"] = "sign-flip" if M.is_item_mean(r["metric"]) else "label-swap"
    for r, adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        r["p_value_holm"] = adj
        r["significant"] = bool(adj <= settings.alpha)
