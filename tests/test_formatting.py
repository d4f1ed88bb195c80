"""harness.views.formatting against strings written out by hand: what compare, report, gate and
progress print for a value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.rundir.record import LoadedRun
from harness.views import formatting as F

NOT_NUMBERS = [None, math.nan, math.inf, -math.inf, True, "0.5"]


@pytest.mark.parametrize("v", NOT_NUMBERS)
def test_what_is_not_a_finite_number_reads_as_a_dash(v):
    assert F.number(v) is None
    for text in (F.metric("rougeL", v), F.p_value(v), F.percent(v), F.count(v),
                 F.seconds(v), F.byte_size(v)):
        assert text == "—"


@pytest.mark.parametrize(("p", "text"), [
    (0.0, "<0.001"), (0.000999, "<0.001"), (0.001, "0.001"), (0.0014, "0.001"),
    (0.0449, "0.045"), (0.05, "0.050"), (1.0, "1.000"),
])
def test_p_values_print_three_decimals_down_to_a_floor(p, text):
    assert F.p_value(p) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (3_702_784, "3.53 MiB"),
    (2e9, "1.86 GiB"), (5 * 2**40, "5120.00 GiB"), (-1536, "-1.50 KiB"),
])
def test_bytes_take_binary_units_up_to_gib(n, text):
    assert F.byte_size(n) == text


@pytest.mark.parametrize(("name", "v", "signed", "text"), [
    ("rougeL", 0.45678, False, "0.4568"),
    ("rougeL", 0.0007, True, "+0.0007"),
    ("rougeL", -0.0312, True, "-0.0312"),
    ("rougeL", 0.0, True, "+0.0000"),
    ("loss", 1.2345678, False, "1.2346"),
    ("perplexity", 1234.5, False, "1,234.5000"),
    ("bleu", 23.456, False, "23.46"),
    ("gen_tokens_per_s", 12345.67, False, "12,345.7"),
    ("eval_tokens_per_s", -5.0, True, "-5.0"),
    ("peak_memory_bytes", 2e9, False, "1.86 GiB"),
    ("peak_memory_bytes", 5 * 2**20, True, "+5.00 MiB"),
    ("peak_memory_bytes", -5 * 2**20, True, "-5.00 MiB"),
    ("peak_memory_bytes", 0, True, "0 B"),
    ("general/rougeL", 0.5, False, "0.5000"),  # an extra eval set reads like the main one
    ("something_new", 0.000123456, False, "0.0001235"),
])
def test_metric_values_by_name(name, v, signed, text):
    assert F.metric(name, v, signed=signed) == text


@pytest.mark.parametrize(("v", "signed", "digits", "text"), [
    (0.173, True, 1, "+17.3%"), (-0.03, True, 2, "-3.00%"), (0.0, True, 1, "+0.0%"),
    (0.8125, False, 1, "81.2%"), (1.0, False, 1, "100.0%"),
])
def test_percentages(v, signed, digits, text):
    assert F.percent(v, signed=signed, digits=digits) == text


def test_intervals_and_confidence_levels():
    show = lambda v: F.metric("loss", v, signed=True)  # noqa: E731
    assert F.interval(-0.2, 0.1, show) == "[-0.2000, +0.1000]"
    assert F.interval(None, 0.1, show) == "—"
    assert F.interval(0.1, math.nan, show, missing="") == ""
    assert (F.ci_level(0.05), F.ci_level(0.1), F.ci_level(0.001)) == ("95%", "90%", "99.9%")


@pytest.mark.parametrize(("s", "text"), [
    (0, "0.0 s"), (60.04, "60.0 s"), (119.9, "119.9 s"), (120, "2 min 0 s"),
    (312.5, "5 min 12 s"), (7199, "119 min 59 s"), (7200, "2 h 0 min"), (11_040, "3 h 4 min"),
])
def test_seconds(s, text):
    assert F.seconds(s) == text


def test_clock_and_counts():
    assert (F.clock(0), F.clock(312.9), F.clock(3 * 3600 + 4 * 60 + 5)) == (
        "0:00:00", "0:05:12", "3:04:05")
    assert (F.count(921_600), F.count(7.0), F.count(0)) == ("921,600", "7", "0")


@pytest.mark.parametrize(("key", "v", "text"), [
    ("share_truncated", 0.031, "3.1%"), ("share_truncated", 3.0, "3"),  # not a share: > 1
    ("max", 1024, "1,024"), ("mean", 398.04, "398"), ("median", 377.5, "377.5"),
    ("loss", 1.8, "1.8000"), ("adapter_bytes", 3_702_784, "3.53 MiB"),
    ("flag", True, "yes"), ("flag", False, "no"), ("missing", None, "—"),
    ("modules", ["q_proj", "v_proj"], "q_proj, v_proj"), ("name", "lora", "lora"),
])
def test_generic_cells(key, v, text):
    assert F.cell(key, v) == text


def test_raw_config_values_as_spelled():
    assert (F.raw(2e-4), F.raw(True), F.raw(None), F.raw([]), F.raw(["a", 1])) == (
        "0.0002", "true", "—", "[]", "a, 1")


@pytest.mark.parametrize(("value", "text"), [
    ("a|b", "a\\|b"),
    ("line one\nline two\r\n", "line one line two"),
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ("<0.001", "&lt;0.001"),
    ("AT&T", "AT&amp;T"),  # so an escaped &lt; cannot be smuggled in as text
    (None, ""),
    (0.5, "0.5"),
])
def test_md_cell_escaping(value, text):
    assert F.md_cell(value) == text


def test_flatten_gives_dotted_keys_and_keeps_lists():
    assert F.flatten({"train": {"r": 8, "lora": {"targets": ["q", "v"]}}, "name": "t"}) == [
        ("train.r", 8), ("train.lora.targets", ["q", "v"]), ("name", "t")]


def test_run_labels_of_records_and_loaded_runs(tmp_path: Path):
    assert F.run_label({"suite": "xsum", "run_id": "20261122T101500-a1b2c3"}) == (
        "xsum/20261122T101500-a1b2c3")
    assert F.run_label({}) == "?/?"
    folder = tmp_path / "toy" / "20261122T000000-abcdef"
    assert F.run_label(LoadedRun(folder, {})) == "toy/20261122T000000-abcdef"


@pytest.mark.parametrize(("record", "text"), [
    ({"status": "failed", "error": {"message": "CUDA out of memory"}},
     "status 'failed': CUDA out of memory"),
    ({"status": "failed", "error": "killed"}, "status 'failed': killed"),
    ({"status": "failed", "error": None}, "status 'failed'"),
    ({"status": "running", "error": {"type": "KeyboardInterrupt"}}, "status 'running'"),
    ({}, "status None"),
])
def test_failure_text(record, text):
    assert F.failure(record) == text


@pytest.mark.parametrize(("p", "alpha", "text"), [
    (0.0496, 0.05, "0.0496"),  # three decimals would print alpha itself: "0.050"
    (0.0504, 0.05, "0.0504"),
    (0.04999, 0.05, "0.04999"),
    (0.05, 0.05, "0.050"),  # alpha exactly: nothing to decide
    (0.0449, 0.05, "0.045"), (0.458, 0.05, "0.458"), (0.0004, 0.05, "<0.001"),
    (0.0096, 0.01, "0.0096"), (0.0104, 0.01, "0.0104"), (0.0149, 0.01, "0.015"),
])
def test_p_values_keep_the_digits_that_decide_at_alpha(p, alpha, text):
    assert F.p_value(p, alpha) == text


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.1])
def test_a_printed_p_never_reads_as_alpha_or_across_it(alpha):
    """Every p a 10,000-resample permutation test can give, (1 + k) / 10,001, printed: the text
    reads on the same side of alpha as the number, and reads as alpha only when it is."""
    for k in range(10_001):
        p = (1 + k) / 10_001
        text = F.p_value(p, alpha)
        if text.startswith("<"):
            assert p < float(text[1:]) <= alpha, text
            continue
        assert (float(text) <= alpha) == (p <= alpha), (p, text)
        assert float(text) != alpha or p == alpha, (p, text)


@pytest.mark.parametrize(("metric", "diff", "significant", "tone"), [
    ("perplexity", 3.0, True, "bad"),  # perplexity up: worse, whatever the sign says
    ("perplexity", -3.0, True, "good"),
    ("general/loss", 0.2, True, "bad"),  # an extra set reads like the main one
    ("rougeL", 0.1, True, "good"), ("rougeL", -0.1, True, "bad"),
    ("rougeL", 0.1, False, ""),  # not significant: neutral, never a faded green
    ("peak_memory_bytes", 5e6, None, ""),  # one number per arm, no test: neutral
    ("rougeL", 0.0, True, ""), ("rougeL", None, True, ""),
])
def test_tone_is_better_or_worse_in_the_metric_direction_and_only_when_significant(
        metric, diff, significant, tone):
    assert F.tone(metric, diff, significant) == tone
