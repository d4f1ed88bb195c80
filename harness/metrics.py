"""Metric names, their direction and how they aggregate over eval items. No torch."""

from __future__ import annotations

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Token-weighted over reference tokens: per-item rows carry nll_sum and n_tokens and the corpus
# value is recomputed from sums (perplexity = exp(sum nll / sum tokens)), never a mean of ratios.
CORPUS_KEYS = ("loss", "perplexity")
# One number per arm, no per-item values: compared as point differences only.
SYSTEM_KEYS = ("eval_tokens_per_s", "gen_tokens_per_s", "peak_memory_bytes")
QUALITY_KEYS = CORPUS_KEYS + ROUGE_KEYS
ALL_KEYS = QUALITY_KEYS + SYSTEM_KEYS

LOWER_IS_BETTER = frozenset({"loss", "perplexity", "peak_memory_bytes"})
# Throughput and memory depend on the machine: comparable only on the same device.
DEVICE_BOUND = frozenset(SYSTEM_KEYS)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def is_per_item(metric: str) -> bool:
    """Whether a paired, item-level statistic exists for this metric."""
    return metric in QUALITY_KEYS
