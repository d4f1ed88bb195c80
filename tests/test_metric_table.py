"""The metric table (metrics.TABLE) is the one place a metric's facts live: the suite's
choices, the scorers, the statistics' columns, the number formats and the report's labels all
follow it, so adding a metric is one entry plus its scorer."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from harness import metrics as M
from harness.errors import ConfigError
from harness.run import textmetrics
from harness.suite import config, suitefile
from harness.views import formatting, report_data

from .test_config import MINIMAL, write

GENERATED = [m for m in M.TABLE if m.generated]


def test_the_table_keeps_the_metrics_and_their_order():
    """Tables, reports and comparisons list metrics in this order (metrics.sort_key)."""
    assert M.ALL_KEYS == ("loss", "perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum",
                          "exact_match", "chrf", "bleu", "bertscore", "acc", "acc_norm",
                          "acc_mutual_info", "acc_bytes", "f1", "mcc", "ter", "brier_score",
                          "doc_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte",
                          "eval_tokens_per_s", "gen_tokens_per_s", "peak_memory_bytes")
    assert len(set(M.ALL_KEYS)) == len(M.TABLE)


def test_suite_choices_are_the_tables():
    """config accepts exactly the table's choices, in its order (pydantic's error lists them)."""
    choices = list(dict.fromkeys(m.choice for m in M.TABLE if m.choice is not None))
    assert list(typing.get_args(config.MetricName)) == choices == list(M.CHOICES)
    assert M.GENERATION_CHOICES == {m.choice for m in GENERATED}


def test_scorers_are_the_generated_choices():
    assert set(textmetrics.SCORERS) == {m.choice for m in GENERATED}
    assert textmetrics.keys(list(M.CHOICES)) == [m.key for m in GENERATED]
    assert textmetrics.keys(["bleu", "rouge"]) == ["bleu", "rouge1", "rouge2", "rougeL",
                                                   "rougeLsum"]  # the suite's order


@pytest.mark.parametrize("entry", M.TABLE, ids=lambda m: m.key)
def test_formats_and_labels_follow_the_table(entry: M.Metric):
    x = 1234.56789
    want = (f"{x:,.{entry.decimals}f}" if entry.decimals is not None
            else formatting.byte_size(x))  # memory: binary units
    assert formatting.metric(entry.key, x) == want
    assert formatting.metric(f"general/{entry.key}", x) == want
    assert report_data.label(entry.key) == entry.label
    assert report_data.label(f"general/{entry.key}") == f"{entry.label} (general)"


@pytest.mark.parametrize("entry", M.TABLE, ids=lambda m: m.key)
def test_statistics_follow_the_table(entry: M.Metric):
    assert M.lower_is_better(entry.key) is entry.lower_is_better
    assert M.is_per_item(entry.key) is bool(entry.columns)
    assert (entry.key in M.SYSTEM_KEYS) is (not entry.columns)
    assert (entry.key in M.DEVICE_BOUND) is entry.device_bound
    assert (entry.key in M.MEAN_KEYS) is entry.item_mean
    assert M.is_binary(f"x/{entry.key}") is entry.binary
    if entry.binary:  # McNemar needs one 0/1 column whose mean is the metric
        assert entry.item_mean and entry.columns == (entry.key,) and not entry.generated
    if entry.columns:
        assert M.columns(f"x/{entry.key}") == entry.columns


@pytest.mark.parametrize("entry", [m for m in M.TABLE if m.item_mean], ids=lambda m: m.key)
def test_a_mean_metric_is_the_mean_of_its_column(entry: M.Metric):
    rows = [{entry.key: v} for v in (0.25, 0.5, 1.0)]
    assert M.from_rows(entry.key, rows) == pytest.approx(float(np.mean([0.25, 0.5, 1.0])))


def test_right_or_wrong_metrics_are_accuracy_and_its_length_normalised_form():
    assert [(m.key, m.label, m.choice) for m in M.TABLE if m.binary] == [
        ("acc", "Accuracy", "acc"),
        ("acc_norm", "Accuracy (length-normalised)", "acc_norm"),
        ("acc_mutual_info", "Accuracy (mutual information)", None),  # lm-eval tasks only
        ("acc_bytes", "Accuracy (per byte)", None)]
    assert M.MULTIPLE_CHOICE_CHOICES == ("acc", "acc_norm")
    assert M.from_rows("mc/acc", [{"acc": v} for v in (1.0, 0.0, 1.0, 1.0)]) == 0.75


@pytest.mark.parametrize("choice", M.CHOICES)
def test_a_suite_accepts_each_choice(tmp_path: Path, choice: str):
    if choice in M.MULTIPLE_CHOICE_CHOICES:  # scored on a multiple-choice set, and only there
        text = MINIMAL + ('\n[eval.sets.mc]\npath = "mc.jsonl"\ntask = "multiple_choice"\n'
                          f'prompt_template = "{{{{ question }}}}"\nmetrics = ["{choice}"]\n')
        assert suitefile.load_suite(write(tmp_path, text)).eval.sets["mc"].metrics == [choice]
        return
    text = MINIMAL + f'\n[eval]\nmetrics = ["{choice}"]\n'
    suite = suitefile.load_suite(write(tmp_path, text))
    assert suite.eval.metrics == [choice]
    assert suite.eval.generate is (choice in M.GENERATION_CHOICES)


@pytest.mark.parametrize("where", ["[eval]", "[eval.sets.general]\npath = \"g.jsonl\"\n"
                                   "response_template = \"{{ text }}\""])
@pytest.mark.parametrize("choice", M.MULTIPLE_CHOICE_CHOICES)
def test_a_generate_set_refuses_accuracy(tmp_path: Path, where: str, choice: str):
    """Accuracy picks one of several choices: a generate set has none to pick from."""
    from typer.testing import CliRunner

    from harness.cli import app

    path = write(tmp_path, MINIMAL + f'\n{where}\nmetrics = ["loss", "{choice}"]\n')
    res = CliRunner().invoke(app, ["validate", str(path)])
    key = "eval.metrics" if where == "[eval]" else "eval.sets.general.metrics"
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{key}: '{choice}': scored on a multiple-choice set only" in res.output


def test_a_suite_rejects_a_name_outside_the_table(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        suitefile.load_suite(write(tmp_path, MINIMAL + '\n[eval]\nmetrics = ["rougeL"]\n'))
    assert "eval.metrics" in str(e.value) and "'bertscore'" in str(e.value)


def test_the_table_imports_no_scorer_library():
    """``import harness.metrics`` stays light: sacrebleu and rouge-score load with their
    scorers (textmetrics), torch never."""
    code = ("import sys, harness.metrics; "
            "print(sorted(m for m in ('sacrebleu', 'rouge_score', 'torch', 'bert_score') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("degenerate", [False, True])
@pytest.mark.parametrize("name, agg", sorted(M.LM_EVAL))
def test_lm_eval_task_metrics_equal_lm_evals_own_aggregation(name: str, agg: str,
                                                             degenerate: bool):
    """Each lm-eval metric harness pairs, recomputed from per-document sums, equals lm-eval's
    registered aggregation of the same per-document values (what process_results gives);
    ``degenerate``: every answer and prediction 0 (F1 and MCC's empty denominators)."""
    pytest.importorskip("lm_eval.api.metrics")  # registers the aggregations
    import numpy as np
    from lm_eval.api import registry

    rng = np.random.default_rng(0)
    lls = rng.uniform(-40.0, -0.5, size=9)
    counts = rng.integers(1, 30, size=9)
    labels = np.zeros((9, 2), dtype=int) if degenerate else rng.integers(0, 2, size=(9, 2))
    key = M.LM_EVAL[(name, agg)]
    if key in M.TEXT_PAIR_KEYS:
        words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "home"]
        texts = [" ".join(rng.choice(words, size=int(k))) for k in rng.integers(0, 9, 18)]
        values = [(texts[2 * i % 9], texts[(2 * i + 1) % 9]) for i in range(9)]
        if degenerate:
            values[0] = ("", "")  # an empty reference and prediction
        rows = textmetrics.corpus_columns(key, [p for _, p in values],
                                          [[r for r, _ in values]])
    elif key == "brier_score":
        probs = rng.dirichlet(np.ones(4), size=9)
        values = [(int(g), p.tolist()) for g, p in zip(labels[:, 0] * 3, probs)]
        rows = [{"brier_score": float(np.sum((np.asarray(p) - np.eye(4)[g]) ** 2))}
                for g, p in values]
    elif key in M.CONFUSION_KEYS:
        values = [tuple(int(x) for x in pair) for pair in labels]
        rows = [{f"{key}_tp": float(g and p), f"{key}_fp": float(p and not g),
                 f"{key}_fn": float(g and not p), f"{key}_tn": float(not g and not p)}
                for g, p in values]
    elif agg in ("weighted_perplexity", "bits_per_byte"):
        values = list(zip(lls.tolist(), counts.tolist()))
        rows = [dict(zip(M.columns(key), v)) for v in values]
    else:
        values = lls.tolist() if agg == "perplexity" else labels[:, 0].tolist()
        rows = [{M.columns(key)[0]: v} for v in values]
    theirs = registry.AGGREGATION_REGISTRY[agg](values)
    assert M.from_rows(key, rows) == pytest.approx(float(theirs), rel=1e-9, abs=1e-12)
    assert M.lower_is_better(key) == (agg in ("perplexity", "weighted_perplexity",
                                               "bits_per_byte", "ter", "brier_score"))


def test_a_sets_metric_the_table_lacks_is_a_tasks_own_mean():
    """An lm-eval task's own mean-aggregated metric (keyed <set>/<name>): per item, the mean
    of its column, higher better, listed after the table's metrics; never a bare name, and
    never a per-arm system metric of a set."""
    rows = [{"contains": v} for v in (1.0, 0.0, 0.5, 1.0)]
    assert M.is_known("qa/contains") and M.is_per_item("qa/contains")
    assert not M.is_known("contains") and not M.is_known("qa/eval_tokens_per_s")
    assert not M.is_known("qa/not-a-name")
    assert M.from_rows("qa/contains", rows) == 0.625
    assert not M.lower_is_better("qa/contains") and not M.is_binary("qa/contains")
    assert M.is_item_mean("qa/contains")
    assert sorted(["qa/contains", "qa/acc", "loss"], key=M.sort_key) == [
        "loss", "qa/acc", "qa/contains"]
