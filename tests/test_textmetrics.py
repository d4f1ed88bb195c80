"""Generation metrics against the libraries that define them: sacrebleu's own corpus scores,
rouge-score, and a slow bootstrap that re-scores the corpus with sacrebleu per resample."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from harness import metrics as M
from harness.run import textmetrics
from harness.stats import paired as stats

WORDS = "the a cat dog sat on mat ran fast slow red blue tree under over house".split()


def _corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs, hyps = [], []
    for i in range(n):
        ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        kind = i % 5
        if kind == 0:
            hyp = ref  # exact
        elif kind == 1:
            hyp = ""  # nothing generated
        elif kind == 2:
            hyp = rng.choice(WORDS)  # shorter than every n-gram order above 1
        else:
            hyp = " ".join(w if rng.random() < 0.6 else rng.choice(WORDS) for w in ref.split())
        refs.append(ref + ("." if i % 3 == 0 else ""))
        hyps.append(hyp.capitalize() if i % 4 == 0 else hyp)
    return hyps, refs


def _sums(rows: list[dict], cols: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {c: np.asarray(float(sum(r[c] for r in rows))) for c in cols}


CORPUS_METRICS = {"bleu": (textmetrics.bleu, M.BLEU_COLUMNS, BLEU),
                  "chrf": (textmetrics.chrf, M.CHRF_COLUMNS, CHRF)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", list(CORPUS_METRICS))
def test_corpus_metric_from_summed_statistics_equals_sacrebleu(metric, seed):
    score_rows, cols, reference = CORPUS_METRICS[metric]
    hyps, refs = _corpus(60, seed)
    rows = score_rows(hyps, refs)
    ours = float(M.from_sums(metric, _sums(rows, cols), len(rows)))
    assert ours == pytest.approx(reference().corpus_score(hyps, [refs]).score, abs=1e-9)


def test_corpus_scores_of_degenerate_corpora_match_sacrebleu():
    for hyps, refs in ([[""], ["a b c"]], [["a"], ["a"]], [["x y"], ["a b c d e"]],
                       [["a b c d"], ["a b c d"]]):
        b = textmetrics.bleu(hyps, refs)
        c = textmetrics.chrf(hyps, refs)
        assert float(M.from_sums("bleu", _sums(b, M.BLEU_COLUMNS), 1)) == pytest.approx(
            BLEU().corpus_score(hyps, [refs]).score, abs=1e-9)
        assert float(M.from_sums("chrf", _sums(c, M.CHRF_COLUMNS), 1)) == pytest.approx(
            CHRF().corpus_score(hyps, [refs]).score, abs=1e-9)


def test_per_item_values_are_sacrebleu_sentence_scores():
    hyps, refs = _corpus(10, 3)
    for row, h, r in zip(textmetrics.bleu(hyps, refs), hyps, refs):
        assert row["bleu"] == pytest.approx(BLEU(effective_order=True).sentence_score(h, [r]).score)
    for row, h, r in zip(textmetrics.chrf(hyps, refs), hyps, refs):
        assert row["chrf"] == pytest.approx(CHRF().sentence_score(h, [r]).score)


def test_bleu_resampled_from_sums_equals_sacrebleu_on_each_resample():
    """The bootstrap's BLEU of a resample, from summed statistics, is sacrebleu's corpus BLEU
    of the resampled sentences (checked on 30 resamples)."""
    hyps, refs = _corpus(40, 4)
    rows = textmetrics.bleu(hyps, refs)
    values = np.array([[r[c] for c in M.BLEU_COLUMNS] for r in rows], dtype=np.float64)
    for idx in next(stats.bootstrap_indices(len(rows), 30, seed=7))[:30]:
        sums = dict(zip(M.BLEU_COLUMNS, values[idx].sum(axis=0)))
        ref = BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
        assert float(M.from_sums("bleu", sums, len(idx))) == pytest.approx(ref, abs=1e-9)


def _slow_bleu_ci(hyps_b, hyps_c, refs, n_resamples, alpha, seed):
    rng = np.random.default_rng(seed)
    n, diffs = len(refs), []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        r = [[refs[i] for i in idx]]
        diffs.append(BLEU().corpus_score([hyps_c[i] for i in idx], r).score
                     - BLEU().corpus_score([hyps_b[i] for i in idx], r).score)
    return np.quantile(diffs, [alpha / 2, 1 - alpha / 2])


def test_bootstrap_ci_of_bleu_matches_a_sacrebleu_per_resample_reference():
    hyps_c, refs = _corpus(50, 5)
    rng = random.Random(9)
    hyps_b = [" ".join(w for w in h.split() if rng.random() < 0.7) for h in hyps_c]
    ids = [str(i) for i in range(len(refs))]
    base = [{"id": i, **r} for i, r in zip(ids, textmetrics.bleu(hyps_b, refs))]
    cand = [{"id": i, **r} for i, r in zip(ids, textmetrics.bleu(hyps_c, refs))]
    mb = {"bleu": BLEU().corpus_score(hyps_b, [refs]).score}
    mc = {"bleu": BLEU().corpus_score(hyps_c, [refs]).score}
    row, = stats.compare_arms(base, cand, mb, mc, baseline="b", candidate="c",
                              metrics=["bleu"], n_resamples=4000, seed=1)
    lo, hi = _slow_bleu_ci(hyps_b, hyps_c, refs, 600, 0.05, seed=2)
    width = hi - lo
    # Monte-Carlo SE of a 2.5% quantile: ~3% of the width at 600 resamples, ~1% at 4,000.
    assert row["ci_low"] == pytest.approx(lo, abs=0.12 * width)
    assert row["ci_high"] == pytest.approx(hi, abs=0.12 * width)
    assert row["abs_diff"] == pytest.approx(mc["bleu"] - mb["bleu"], abs=1e-9)


@pytest.mark.parametrize(("pred", "ref", "same"), [
    ("Paris.", "paris", True), ("  The   answer ", "the answer", True),
    ("the answer", "answer", False), ("42", "42.0", False), ("São Paulo!", "são paulo", True),
])
def test_exact_match_normalisation(pred, ref, same):
    assert textmetrics.exact_match([pred], [ref])[0]["exact_match"] == float(same)


def test_rouge_rows_are_rouge_score_fmeasures():
    from rouge_score import rouge_scorer

    hyps, refs = _corpus(8, 6)
    rows = textmetrics.rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(list(M.ROUGE_KEYS), use_stemmer=True)
    for row, h, r in zip(rows, hyps, refs):
        assert row["rougeL"] == scorer.score(r, h)["rougeL"].fmeasure


def test_set_keys_keep_the_direction_and_columns_of_their_metric():
    assert M.lower_is_better("general/perplexity") and not M.lower_is_better("general/bleu")
    assert M.columns("general/loss") == ("nll_sum", "n_tokens")
    assert M.is_known("general/chrf") and not M.is_known("general/peak_memory_bytes")
    assert not M.is_known("/loss") and not M.is_known("general/non-sense")
    # Any other identifier is a task's own mean metric (an lm-eval task names its metrics);
    # gate then says when a run did not record it.
    assert M.is_known("general/nonsense") and not M.is_known("nonsense")
    assert sorted(["general/loss", "rougeL", "loss", "a/bleu"], key=M.sort_key) == [
        "loss", "rougeL", "a/bleu", "general/loss"]


def test_bertscore_is_bert_score_f1_on_a_local_model(tmp_path):
    """bert-score's own functional API on a tiny random BERT saved locally (no download)."""
    bert_score = pytest.importorskip("bert_score", reason="bertscore is an optional extra")
    import torch
    from transformers import BertConfig, BertModel

    from .conftest import build_tokenizer

    tok = build_tokenizer()
    tok.model_max_length = 128
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    preds, refs = ["the cat sat", "a dog ran fast", ""], ["the cat sat on the mat", "dogs", "x"]
    rows = textmetrics.bertscore(preds, refs, model=str(tmp_path), num_layers=2)
    _, _, f1 = bert_score.score(preds[:2], refs[:2], model_type=str(tmp_path), num_layers=2)
    assert [r["bertscore"] for r in rows[:2]] == pytest.approx(f1.tolist(), abs=1e-6)
    assert rows[2]["bertscore"] == 0.0  # an empty generation
