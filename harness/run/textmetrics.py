"""Per-item scores of generated text against its reference. No torch (bertscore loads it).

Each scorer returns one dict per item: the item's own value (for the example browser) and,
for corpus metrics, the sufficient statistics whose sums make the corpus score
(metrics.from_sums). Definitions are the libraries' own: rouge-score for ROUGE, sacrebleu for
BLEU (13a tokenizer, exp smoothing) and chrF (char order 6, beta 2), bert-score for BERTScore.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness import metrics as M
from harness.errors import InputError

Row = dict[str, Any]

EXACT_MATCH_RULE = ("lowercased, Unicode punctuation removed, whitespace runs collapsed to one "
                    "space and stripped; articles and numbers are kept as they are")


def normalize(text: str) -> str:
    """The exact_match normalisation (EXACT_MATCH_RULE)."""
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch
                   for ch in text.lower())
    return re.sub(r"\s+", " ", kept).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[Row]:
    return [{"exact_match": float(normalize(p) == normalize(r))}
            for p, r in zip(predictions, references, strict=True)]


def rouge(predictions: Sequence[str], references: Sequence[str], stemmer: bool = True
          ) -> list[Row]:
    """Per-item F-measures (0..1) of rouge-score for rouge1/2/L/Lsum."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(M.ROUGE_KEYS), use_stemmer=stemmer)
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        s = scorer.score(ref, pred)  # (target, prediction)
        rows.append({k: s[k].fmeasure for k in M.ROUGE_KEYS})
    return rows


def bleu(predictions: Sequence[str], references: Sequence[str]) -> list[Row]:
    """Per-item n-gram counts (the ``bleu_*`` columns) and sentence BLEU (``bleu``)."""
    from sacrebleu.metrics import BLEU

    corpus, sentence = BLEU(), BLEU(effective_order=True)  # sacrebleu's sentence-level advice
    # sacrebleu exposes per-segment statistics only through this (stable since 2.0) method.
    stats = corpus._extract_corpus_statistics(list(predictions), [list(references)])
    return [{**dict(zip(M.BLEU_COLUMNS, map(int, s), strict=True)),
             "bleu": sentence._compute_score_from_stats(list(s)).score} for s in stats]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> list[Row]:
    """Per-item character n-gram counts (the ``chrf_*`` columns) and sentence chrF."""
    from sacrebleu.metrics import CHRF

    scorer = CHRF()
    stats = scorer._extract_corpus_statistics(list(predictions), [list(references)])
    return [{**dict(zip(M.CHRF_COLUMNS, map(int, s), strict=True)),
             "chrf": scorer._compute_score_from_stats(list(s)).score} for s in stats]


def corpus_columns(key: str, predictions: Sequence[str],
                   reference_streams: Sequence[Sequence[str]]) -> list[Row]:
    """Per-item sacrebleu statistics of ``key`` (bleu, chrf or ter) with one or more
    references per item (``reference_streams[k][i]``: item i's k-th reference, sacrebleu's
    layout): the columns whose sums give sacrebleu's corpus score (metrics.from_sums)."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    scorer = {"bleu": BLEU, "chrf": CHRF, "ter": TER}[key]()
    stats = scorer._extract_corpus_statistics(list(predictions),
                                              [list(r) for r in reference_streams])
    return [dict(zip(M.columns(key), map(float, s), strict=True)) for s in stats]


BERTSCORE_MODEL = "roberta-large"  # bert-score's English default: a 1.4 GB hub download


def bertscore(predictions: Sequence[str], references: Sequence[str], model: str | None = None,
              num_layers: int | None = None) -> list[Row]:
    """Per-item BERTScore F1 (0..1, no baseline rescaling). Needs ``pip install bert-score``
    and its model: ``eval.bertscore_model`` (a local folder or a hub id, downloaded once)."""
    try:
        from bert_score import BERTScorer
    except ImportError as e:
        raise InputError("metric 'bertscore' needs the bert-score package: "
                         "pip install 'harness[bertscore]'") from e
    scorer = BERTScorer(model_type=model or BERTSCORE_MODEL, num_layers=num_layers,
                        lang=None if model else "en")
    # An empty text scores 0, bert-score's own convention for an empty candidate (its encoder
    # of empty strings fails on transformers 5, so empty pairs never reach it).
    scored = [i for i, (p, r) in enumerate(zip(predictions, references, strict=True))
              if p.strip() and r.strip()]
    f1 = [0.0] * len(predictions)
    if scored:
        _, _, got = scorer.score([predictions[i] for i in scored], [references[i] for i in scored])
        for i, x in zip(scored, got.tolist(), strict=True):
            f1[i] = float(x)
    return [{"bertscore": x} for x in f1]


@dataclass(frozen=True)
class ScoreOptions:
    """The suite's scorer settings (eval.rouge_stemmer, eval.bertscore_model / _layers)."""

    stemmer: bool = True
    bertscore_model: str | None = None
    bertscore_layers: int | None = None


Scorer = Callable[[Sequence[str], Sequence[str], ScoreOptions], list[Row]]
# The per-item scorer of each generated-text metric choice (metrics.TABLE's ``choice``), in
# the order their columns join a predictions.jsonl row.
SCORERS: dict[str, Scorer] = {
    "rouge": lambda p, r, o: rouge(p, r, o.stemmer),
    "exact_match": lambda p, r, o: exact_match(p, r),
    "bleu": lambda p, r, o: bleu(p, r),
    "chrf": lambda p, r, o: chrf(p, r),
    "bertscore": lambda p, r, o: bertscore(p, r, o.bertscore_model, o.bertscore_layers),
}


# The libraries each scorer imports on first use. rouge-score pulls in nltk and scikit-learn:
# ~595 modules and ~50 MiB, which the first arm a process evaluated carried in its
# peak_memory_bytes (tiny suite, zero-shot vs adapter: 56.6 vs 4.4 MiB of growth).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "rouge": ("rouge_score.rouge_scorer",),
    "bleu": ("sacrebleu.metrics",),
    "chrf": ("sacrebleu.metrics",),
    "bertscore": ("bert_score",),
}


def preload(names: Sequence[str]) -> None:
    """Import the libraries of the generation metrics named (config names), so that an arm's
    measured evaluation does not include importing them. A missing optional library is left
    for its scorer to report."""
    import importlib

    for name in names:
        for module in LIBRARIES.get(name, ()):
            try:
                importlib.import_module(module)
            except ImportError:
                pass


def score(names: Sequence[str], predictions: Sequence[str], references: Sequence[str], *,
          stemmer: bool = True, bertscore_model: str | None = None,
          bertscore_layers: int | None = None) -> list[Row]:
    """The per-item rows of every generation metric named (config names: rouge, exact_match,
    bleu, chrf, bertscore), merged per item."""
    options = ScoreOptions(stemmer, bertscore_model, bertscore_layers)
    rows: list[Row] = [{} for _ in predictions]
    for name, scorer in SCORERS.items():
        if name not in names:
            continue
        for row, extra in zip(rows, scorer(predictions, references, options), strict=True):
            row.update(extra)
    return rows


def keys(names: Sequence[str]) -> list[str]:
    """The metric keys (arm metrics) the config's generation metric names produce."""
    return [k for k in M.keys_of(names) if M.BY_KEY[k].generated]
