"""The metric table: every metric harness reports is one ``Metric`` entry in ``TABLE``, and
the suite's metric choices, the scorers, the statistics, the number formats and the report's
labels all read it. No torch, and no scorer library (textmetrics imports those).

Every quality metric is a function of *sums* of per-item columns (its sufficient statistics),
so the paired bootstrap and the permutation test recompute it from resampled sums, never by
re-scoring the corpus:
- loss / perplexity: token-weighted, ``sum nll / sum tokens`` (never a mean of ratios);
- rouge*, exact_match, bertscore: the mean of a per-item score;
- acc, acc_norm (multiple-choice sets): the mean of a per-item 1.0 right / 0.0 wrong, so the
  paired p-value is the exact McNemar test on the items the arms disagree on (``binary``);
- bleu, chrf: sacrebleu's corpus score from summed n-gram counts (``bleu_*`` / ``chrf_*``
  columns of each predictions.jsonl row), on sacrebleu's 0-100 scale;
- an lm-evaluation-harness task's metrics (``LM_EVAL``): its mean-aggregated ones as above,
  and its perplexities from summed log-likelihoods and word / byte counts, which is what its
  own ``perplexity``, ``weighted_perplexity`` and ``bits_per_byte`` aggregations compute.

A metric of an extra eval set is keyed ``<set>/<metric>`` (``general/perplexity``); the
suite's own eval set keeps the bare names.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import numpy as np

BLEU_ORDER = 4  # sacrebleu's default max n-gram order
CHRF_ORDER = 6  # sacrebleu's default character n-gram order (word order 0: chrF, not chrF++)
CHRF_BETA = 2
BLEU_COLUMNS = ("bleu_sys_len", "bleu_ref_len",
                *(f"bleu_correct{n}" for n in range(1, BLEU_ORDER + 1)),
                *(f"bleu_total{n}" for n in range(1, BLEU_ORDER + 1)))
CHRF_COLUMNS = tuple(f"chrf_{kind}{n}" for n in range(1, CHRF_ORDER + 1)
                     for kind in ("hyp", "ref", "match"))
LOSS_COLUMNS = ("nll_sum", "n_tokens")

Sums = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Metric:
    """One metric: everything harness knows about it. Adding a metric is one entry in ``TABLE``
    plus, for a generated-text metric, its scorer in ``textmetrics.SCORERS`` under ``choice``."""

    key: str  # its name in an arm's metrics, a comparison row and a gate rule
    label: str  # how the report names it
    # The suite's name for it in ``eval.metrics`` ("rouge" selects all four ROUGE keys); None:
    # measured on every arm, not chosen (throughput, memory).
    choice: str | None
    # The per-item columns (predictions.jsonl) whose sums determine it; () for a metric with one
    # number per arm and no per-item values (throughput, memory).
    columns: tuple[str, ...] = ()
    # The metric from its columns' sums over a (re)sample of n items: (sums, n) -> value.
    value_from_sums: Callable[[Sums, int], np.ndarray] | None = field(default=None, repr=False)
    item_mean: bool = False  # the mean of a per-item score: the permutation test flips signs
    lower_is_better: bool = False
    generated: bool = False  # scored on generated text: textmetrics.SCORERS[choice]
    device_bound: bool = False  # depends on the machine: comparable only on the same device
    # Each item is right (1.0) or wrong (0.0): the paired p-value is the exact McNemar test.
    binary: bool = False
    decimals: int | None = None  # printed decimal places; None: formatting's own default

    @property
    def per_item(self) -> bool:
        """Whether a paired, item-level statistic exists for it."""
        return bool(self.columns)


def _mean_of(column: str, sums: Sums, n: int) -> np.ndarray:
    return np.asarray(sums[column]) / n


def _mean_loss(sums: Sums, n: int) -> np.ndarray:
    """Token-weighted: ``sum nll / sum tokens``, never a mean of per-item ratios."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sums["nll_sum"]) / np.asarray(sums["n_tokens"])


def _perplexity(sums: Sums, n: int) -> np.ndarray:
    return np.exp(_mean_loss(sums, n))


def _bleu(sums: Sums, n: int) -> np.ndarray:
    return bleu_from_sums(sums)


def _chrf(sums: Sums, n: int) -> np.ndarray:
    return chrf_from_sums(sums)


def _exp_neg(ll: str, units: str | None, sums: Sums, n: int) -> np.ndarray:
    """exp(-sum ll / sum units), units None: per document (lm-eval's ``perplexity`` and
    ``weighted_perplexity`` aggregations)."""
    denominator = n if units is None else np.asarray(sums[units])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.exp(-np.asarray(sums[ll]) / denominator)


def _bits_per_byte(sums: Sums, n: int) -> np.ndarray:
    """-sum ll / sum bytes / ln 2 (lm-eval's ``bits_per_byte`` aggregation)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.asarray(sums["rolling_ll"]) / np.asarray(sums["n_bytes"]) / math.log(2)


def _counts(sums: Sums, prefix: str, *kinds: str) -> list[np.ndarray]:
    return [np.asarray(sums[f"{prefix}_{k}"], dtype=np.float64) for k in kinds]


def _binary_f1(sums: Sums, n: int) -> np.ndarray:
    """2 TP / (2 TP + FP + FN), label 1 positive; 0 when there is neither a positive answer
    nor a positive prediction (sklearn's f1_score with its zero_division default)."""
    tp, fp, fn = _counts(sums, "f1", "tp", "fp", "fn")
    denominator = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, 0.0)


def _mcc(sums: Sums, n: int) -> np.ndarray:
    """Matthews' correlation of binary answers and predictions; 0 when a row or column of the
    confusion matrix is empty (sklearn's matthews_corrcoef)."""
    tp, tn, fp, fn = _counts(sums, "mcc", "tp", "tn", "fp", "fn")
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)


def _ter(sums: Sums, n: int) -> np.ndarray:
    """sacrebleu's corpus TER: 100 x summed edits / summed (average) reference lengths; 100
    for edits against empty references, 0 when both are empty."""
    edits, ref_len = _counts(sums, "ter", "edits", "ref_len")
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100 * np.where(ref_len > 0, edits / ref_len, np.where(edits > 0, 1.0, 0.0))


def _item_score(key: str, label: str, choice: str) -> Metric:
    """A generated-text metric that is the mean of a per-item score in 0..1: 4 decimals show
    gains the size of the phi-2 XSum report's ROUGE-2 (+0.0007)."""
    return Metric(key, label, choice, (key,), partial(_mean_of, key), item_mean=True,
                  generated=True, decimals=4)


def _right_or_wrong(key: str, label: str) -> Metric:
    """A multiple-choice accuracy: the mean of a per-item 1.0 / 0.0; 4 decimals (a share, so
    0.0001 is a hundredth of a percentage point)."""
    return Metric(key, label, key, (key,), partial(_mean_of, key), item_mean=True,
                  binary=True, decimals=4)


def _task_perplexity(key: str, label: str, columns: tuple[str, ...], value: Callable) -> Metric:
    """A perplexity of an lm-evaluation-harness task (no suite chooses it: the task does)."""
    return Metric(key, label, None, columns, value, lower_is_better=True, decimals=4)


def _throughput(key: str, label: str) -> Metric:
    """Tokens per second: one number per arm; one decimal."""
    return Metric(key, label, None, device_bound=True, decimals=1)


# In the order every table, report and comparison lists metrics (``sort_key``).
TABLE: tuple[Metric, ...] = (
    Metric("loss", "Loss", "loss", LOSS_COLUMNS, _mean_loss, lower_is_better=True, decimals=4),
    Metric("perplexity", "Perplexity", "perplexity", LOSS_COLUMNS, _perplexity,
           lower_is_better=True, decimals=4),
    _item_score("rouge1", "ROUGE-1", "rouge"),
    _item_score("rouge2", "ROUGE-2", "rouge"),
    _item_score("rougeL", "ROUGE-L", "rouge"),
    _item_score("rougeLsum", "ROUGE-Lsum", "rouge"),
    _item_score("exact_match", "Exact match", "exact_match"),
    # sacrebleu's corpus scores from summed n-gram counts, on its 0-100 scale: 2 decimals, as
    # sacrebleu prints them.
    Metric("chrf", "chrF", "chrf", CHRF_COLUMNS, _chrf, generated=True, decimals=2),
    Metric("bleu", "BLEU", "bleu", BLEU_COLUMNS, _bleu, generated=True, decimals=2),
    _item_score("bertscore", "BERTScore F1", "bertscore"),
    _right_or_wrong("acc", "Accuracy"),
    _right_or_wrong("acc_norm", "Accuracy (length-normalised)"),
    # Scored only by an lm-evaluation-harness task that names them (LM_EVAL).
    Metric("acc_mutual_info", "Accuracy (mutual information)", None, ("acc_mutual_info",),
           partial(_mean_of, "acc_mutual_info"), item_mean=True, binary=True, decimals=4),
    Metric("acc_bytes", "Accuracy (per byte)", None, ("acc_bytes",),
           partial(_mean_of, "acc_bytes"), item_mean=True, binary=True, decimals=4),
    # Corpus-level scores of binary (0 / 1) answers and predictions, from summed confusion
    # counts (lm-eval's f1 and matthews_corrcoef aggregations, e.g. GLUE's MRPC and CoLA).
    Metric("f1", "F1 (binary)", None, ("f1_tp", "f1_fp", "f1_fn"), _binary_f1, decimals=4),
    Metric("mcc", "Matthews correlation", None, ("mcc_tp", "mcc_tn", "mcc_fp", "mcc_fn"), _mcc,
           decimals=4),
    Metric("ter", "TER", None, ("ter_edits", "ter_ref_len"), _ter, lower_is_better=True,
           decimals=2),
    # Per document sum_k (p_k - 1[k = answer])^2 over the choices' normalised probabilities.
    Metric("brier_score", "Brier score", None, ("brier_score",),
           partial(_mean_of, "brier_score"), item_mean=True, lower_is_better=True, decimals=4),
    _task_perplexity("doc_perplexity", "Perplexity (per document)", ("doc_ll",),
                     partial(_exp_neg, "doc_ll", None)),
    _task_perplexity("word_perplexity", "Word perplexity", ("rolling_ll", "n_words"),
                     partial(_exp_neg, "rolling_ll", "n_words")),
    _task_perplexity("byte_perplexity", "Byte perplexity", ("rolling_ll", "n_bytes"),
                     partial(_exp_neg, "rolling_ll", "n_bytes")),
    _task_perplexity("bits_per_byte", "Bits per byte", ("rolling_ll", "n_bytes"),
                     _bits_per_byte),
    _throughput("eval_tokens_per_s", "Eval tokens/s"),
    _throughput("gen_tokens_per_s", "Gen tokens/s"),
    # Printed in binary units (formatting.byte_size), hence no decimals.
    Metric("peak_memory_bytes", "Peak memory", None, lower_is_better=True, device_bound=True),
)
BY_KEY = {m.key: m for m in TABLE}

ALL_KEYS = tuple(BY_KEY)
QUALITY_KEYS = tuple(m.key for m in TABLE if m.per_item)
# One number per arm, no per-item values: compared as point differences only.
SYSTEM_KEYS = tuple(m.key for m in TABLE if not m.per_item)
# Scored from teacher-forced log-likelihoods, no generation needed.
CORPUS_KEYS = tuple(m.key for m in TABLE if m.per_item and not m.generated)
ROUGE_KEYS = tuple(m.key for m in TABLE if m.choice == "rouge")
LOWER_IS_BETTER = frozenset(m.key for m in TABLE if m.lower_is_better)
DEVICE_BOUND = frozenset(m.key for m in TABLE if m.device_bound)
MEAN_KEYS = frozenset(m.key for m in TABLE if m.item_mean)
BINARY_KEYS = frozenset(m.key for m in TABLE if m.binary)
# Scored on a multiple-choice set only (each choice's log-likelihood), never on a generate set.
MULTIPLE_CHOICE_CHOICES = tuple(m.choice for m in TABLE if m.choice and m.binary)
# The suite's ``eval.metrics`` choices, in table order, and those that need generated text.
CHOICES = tuple(dict.fromkeys(m.choice for m in TABLE if m.choice))
GENERATION_CHOICES = frozenset(m.choice for m in TABLE if m.choice and m.generated)
DECIMALS = {m.key: m.decimals for m in TABLE if m.decimals is not None}
LABELS = {m.key: m.label for m in TABLE}

# An lm-evaluation-harness task's metric -> its key here, by (lm-eval's metric name, the name
# of its aggregation). The per-document value lm-eval's process_results gives is a number
# (the key's one column), a (log-likelihood, words or bytes) pair (its two columns), or an
# (answer, prediction) pair of binary labels (CONFUSION_KEYS).
# lm-eval's "perplexity" is the exp of minus the mean *document* log-likelihood: harness's own
# perplexity is token-weighted, so the task's gets its own key.
LM_EVAL: dict[tuple[str, str], str] = {
    ("acc", "mean"): "acc",
    ("acc_norm", "mean"): "acc_norm",
    ("acc_mutual_info", "mean"): "acc_mutual_info",
    ("acc_bytes", "mean"): "acc_bytes",
    ("exact_match", "mean"): "exact_match",
    ("perplexity", "perplexity"): "doc_perplexity",
    ("word_perplexity", "weighted_perplexity"): "word_perplexity",
    ("byte_perplexity", "weighted_perplexity"): "byte_perplexity",
    ("bits_per_byte", "bits_per_byte"): "bits_per_byte",
    ("f1", "f1"): "f1",
    ("mcc", "matthews_corrcoef"): "mcc",
    ("bleu", "bleu"): "bleu",
    ("chrf", "chrf"): "chrf",
    ("ter", "ter"): "ter",
    ("brier_score", "brier_score"): "brier_score",
}
# The metrics whose per-document value is (references, prediction): sacrebleu's sufficient
# statistics of each document become its columns (harness.run.textmetrics.corpus_columns).
TEXT_PAIR_KEYS = ("bleu", "chrf", "ter")
# The metrics whose per-document value is an (answer, prediction) pair of 0 / 1 labels, kept
# as confusion-count columns (``<key>_tp`` ...).
CONFUSION_KEYS = ("f1", "mcc")

SET_SEP = "/"  # <set>/<metric>: a metric of an extra eval set


def split(key: str) -> tuple[str | None, str]:
    """``general/loss`` -> ("general", "loss"); ``loss`` -> (None, "loss")."""
    head, sep, tail = key.rpartition(SET_SEP)
    return (head, tail) if sep else (None, key)


def base(key: str) -> str:
    return split(key)[1]


def keyed(eval_set: str | None, metric: str) -> str:
    return metric if eval_set is None else f"{eval_set}{SET_SEP}{metric}"


def finite(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """An arm's metrics with every NaN / inf as None (strict JSON has neither), and what each
    of those was, for the record's ``non_finite``: ``{"loss": "nan"}``."""
    bad = {k: str(v) for k, v in metrics.items()
           if isinstance(v, float) and not math.isfinite(v)}
    return {k: None if k in bad else v for k, v in metrics.items()}, bad


# An lm-evaluation-harness task's own mean-aggregated metric that the table does not name
# (``contains``, ``f1_mean``...): keyed ``<set>/<name>``, the mean of its per-item column.
TASK_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def entry(key: str) -> Metric | None:
    """The table's entry for ``key``'s metric; for a set's metric the table does not name, a
    task's own mean (``task_mean``); None for an unknown bare name."""
    eval_set, name = split(key)
    found = BY_KEY.get(name)
    if found is None and eval_set and TASK_METRIC_NAME.fullmatch(name):
        return task_mean(name)
    return found


@functools.cache
def task_mean(name: str) -> Metric:
    """An lm-eval task's metric aggregated by the mean of per-document values, higher better."""
    return Metric(name, name, None, (name,), partial(_mean_of, name), item_mean=True,
                  decimals=4)


def is_known(key: str) -> bool:
    """A metric name, bare or of an extra set (system metrics are per arm, never per set)."""
    eval_set, _ = split(key)
    found = entry(key)
    if eval_set is None:
        return found is not None
    return bool(eval_set) and found is not None and found.per_item


def sort_key(key: str) -> tuple[bool, str, int, str]:
    """The suite's own set first, then extra sets by name; metrics in ALL_KEYS order, then a
    task's own metrics by name."""
    eval_set, name = split(key)
    rank = ALL_KEYS.index(name) if name in BY_KEY else len(ALL_KEYS)
    return (eval_set is not None, eval_set or "", rank, name)


def lower_is_better(metric: str) -> bool:
    found = entry(metric)
    return bool(found and found.lower_is_better)


def is_per_item(metric: str) -> bool:
    """Whether a paired, item-level statistic exists for this metric."""
    found = entry(metric)
    return bool(found and found.per_item)


def is_binary(metric: str) -> bool:
    """Whether each item is right or wrong (its paired p-value is McNemar's)."""
    found = entry(metric)
    return bool(found and found.binary)


def is_item_mean(metric: str) -> bool:
    """Whether it is the mean of a per-item score (the permutation test flips signs)."""
    found = entry(metric)
    return bool(found and found.item_mean)


def columns(metric: str) -> tuple[str, ...]:
    """The per-item columns whose sums determine the metric."""
    found = entry(metric)
    return found.columns if found and found.columns else (base(metric),)


def from_sums(metric: str, sums: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """The metric from column sums over a (re)sample of n items; arrays broadcast over
    resamples (each sum has the same shape, e.g. (n_resamples,))."""
    found = entry(metric)
    if found is None or found.value_from_sums is None:
        raise KeyError(f"{metric} has no per-item columns")
    return found.value_from_sums(sums, n)


def keys_of(choices: Iterable[str]) -> list[str]:
    """The metric keys the suite's ``eval.metrics`` choices produce, in the choices' order:
    ``["loss", "rouge"]`` -> loss, rouge1, rouge2, rougeL, rougeLsum."""
    return [m.key for c in choices for m in TABLE if m.choice == c]


def from_rows(metric: str, rows: Sequence[Mapping[str, Any]]) -> float:
    """The metric over ``rows`` (one arm's on one eval set): its columns summed in row order,
    then from_sums. How an arm's number is computed, and how merge and resume check one."""
    sums = {c: np.asarray(float(sum(r[c] for r in rows))) for c in columns(metric)}
    return float(from_sums(metric, sums, len(rows)))


# Recomputing from the same rows repeats the same float operations in the same order, so a
# stored number equals its recomputation exactly; the tolerance only forgives a last-digit
# difference of another platform's libm (exp in perplexity, BLEU's geometric mean).
REL_TOL = 1e-9


class Disagreement(NamedTuple):
    """A stored quality metric that the arm's own per-item rows do not give back."""

    arm: str
    metric: str
    stored: Any
    recomputed: float | None  # None: the rows lack a column the metric needs
    n_rows: int


def check_rows(arm: str, stored: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
               ) -> Disagreement | None:
    """The first quality metric of ``stored`` (arm ``arm``'s metrics) that differs from its
    recomputation from ``rows`` (that arm's rows, every eval set). Throughput and memory have
    no per-item rows: they are not checked; a null metric (not computed) neither."""
    for key, value in stored.items():
        if not is_per_item(key) or value is None:
            continue
        mine = [r for r in rows if r.get("set") == split(key)[0]]
        try:
            again: float | None = from_rows(key, mine)
        except (KeyError, TypeError, ValueError):
            again = None
        if again is None or not _same(value, again):
            return Disagreement(arm, key, value, again, len(mine))
    return None


def check_arms(arms: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
               ) -> Disagreement | None:
    """``check_rows`` for every arm of a record (``arms``: run.json's, ``rows``: every arm's
    prediction rows): the first disagreement, or None."""
    for name, arm in arms.items():
        stored = arm.get("metrics") if isinstance(arm, Mapping) else None
        d = check_rows(name, stored or {}, [r for r in rows if r.get("arm") == name])
        if d is not None:
            return d
    return None


def _same(stored: Any, again: float) -> bool:
    if isinstance(stored, bool) or not isinstance(stored, int | float):
        return False
    if math.isnan(stored) or math.isnan(again):
        return math.isnan(stored) and math.isnan(again)
    return math.isclose(stored, again, rel_tol=REL_TOL, abs_tol=1e-12)


def bleu_from_sums(sums: Mapping[str, np.ndarray]) -> np.ndarray:
    """sacrebleu's corpus BLEU (exp smoothing, no effective order), vectorised.

    Orders with no correct n-gram get 100 / (2^k * total), k counting such orders so far
    (NIST "exp" smoothing); an order with no n-grams at all (every hypothesis shorter than
    n words) scores 0, as sacrebleu's floored log makes it.
    """
    sys_len = np.asarray(sums["bleu_sys_len"], dtype=np.float64)
    ref_len = np.asarray(sums["bleu_ref_len"], dtype=np.float64)
    correct = np.stack([np.asarray(sums[f"bleu_correct{n}"], dtype=np.float64)
                        for n in range(1, BLEU_ORDER + 1)], axis=-1)
    total = np.stack([np.asarray(sums[f"bleu_total{n}"], dtype=np.float64)
                      for n in range(1, BLEU_ORDER + 1)], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(sys_len < ref_len,
                      np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0), 1.0)
        missing = (correct == 0) & (total > 0)
        halvings = np.cumsum(missing, axis=-1)
        precision = np.where(missing, 100.0 / (2.0 ** halvings * total), 100.0 * correct / total)
        precision = np.where(total > 0, precision, 0.0)
        log_p = np.where(precision > 0, np.log(np.where(precision > 0, precision, 1.0)),
                         -9999999999.0)
    score = bp * np.exp(log_p.sum(axis=-1) / BLEU_ORDER)
    return np.where(correct.sum(axis=-1) > 0, score, 0.0)


def chrf_from_sums(sums: Mapping[str, np.ndarray]) -> np.ndarray:
    """sacrebleu's corpus chrF (beta 2, char order 6, effective-order averaging), vectorised:
    precision and recall averaged over the orders that have both hypothesis and reference
    n-grams, then their F-beta, times 100."""
    def stack(kind: str) -> np.ndarray:
        return np.stack([np.asarray(sums[f"chrf_{kind}{n}"], dtype=np.float64)
                         for n in range(1, CHRF_ORDER + 1)], axis=-1)

    hyp, ref, match = stack("hyp"), stack("ref"), stack("match")
    eps = 1e-16
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(hyp > 0, match / hyp, eps)
        rec = np.where(ref > 0, match / ref, eps)
        used = (hyp > 0) & (ref > 0)
        n_used = used.sum(axis=-1)
        avg_p = np.where(n_used > 0, (prec * used).sum(axis=-1) / n_used, 0.0)
        avg_r = np.where(n_used > 0, (rec * used).sum(axis=-1) / n_used, 0.0)
        f = CHRF_BETA**2
        score = (1 + f) * avg_p * avg_r / (f * avg_p + avg_r)
    return np.where(avg_p + avg_r > 0, 100 * score, 0.0)
