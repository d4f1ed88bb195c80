"""The CLI's side of bad input and of stopping: messages printed as written (never as rich
markup), every problem of a suite at once, strict flags, folder-safe names, gate rules checked
by `validate`, help text, SIGTERM / SIGINT during `run`, and the OpenMP wait policy.

Bad input: exit code 2, one line per problem naming the file and line or the `--set`, no
traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import __version__, cli
from harness.cli import app, running

from .test_bad_input import edit

runner = CliRunner()
REPO = Path(__file__).parent.parent


def refused(suite_dir: Path, *extra: str, lines: int = 1) -> list[str]:
    """`validate` and `run` both exit 2 with ``lines`` error lines and write nothing; the
    lines of `run`'s output."""
    out = suite_dir / "results"
    before = set(suite_dir.iterdir())
    for cmd in ("validate", "run"):
        args = [cmd, str(suite_dir / "tiny.toml"), *extra]
        args += ["--out", str(out)] if cmd == "run" else []
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (cmd, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        found = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(found) == lines, res.output
        assert all(ln.startswith("error: ") for ln in found), res.output
        assert "Traceback" not in res.output
    assert set(suite_dir.iterdir()) == before, "nothing may be written (not even beside --out)"
    return found


# ---------------------------------------------------------------- 1. literal messages


def test_error_text_with_brackets_is_printed_literally(suite_dir):
    p = suite_dir / "tiny.toml"
    text = p.read_text()
    p.write_text(text[:text.index("[train]")] + "[[sweep.cells]]\nname = 'a'\nset = {}\n")
    (line,) = refused(suite_dir)
    assert line == "error: tiny: [sweep] needs a [train] table"


def test_markup_in_a_set_value_is_not_interpreted(suite_dir):
    (line,) = refused(suite_dir, "--set", "data.eval_size=[/red]")
    assert line.startswith("error: --set data.eval_size=[/red]: data.eval_size:")
    assert "(got '[/red]')" in line


# ---------------------------------------------------------------- 2. unreadable input


def test_non_utf8_suite_file_is_one_line(suite_dir):
    p = suite_dir / "tiny.toml"
    p.write_bytes(p.read_bytes().replace(b'name = "tiny"', b'name = "tiny"  # caf\xe9', 1))
    (line,) = refused(suite_dir)
    assert "tiny.toml:1: not UTF-8 text (byte 0xe9)" in line


# ---------------------------------------------------------------- 3. names that are folders


@pytest.mark.parametrize("name", ["..", ".", "...", ".hidden", "-x"])
def test_suite_names_that_are_not_plain_folders_are_refused(suite_dir, name):
    edit(suite_dir, 'name = "tiny"', f'name = "{name}"')
    (line,) = refused(suite_dir)
    assert f"tiny.toml:1: name: {name!r} cannot name a folder" in line


def test_set_name_dotdot_is_refused_naming_the_set(suite_dir):
    (line,) = refused(suite_dir, "--set", "name=..")
    assert line.startswith("error: --set name=..: name: '..' cannot name a folder")


def test_sweep_cell_and_template_names_follow_the_same_rule(suite_dir):
    text = (suite_dir / "tiny.toml").read_text()
    text += ('\n[eval.baseline_templates]\n".." = "{{ instruction }}"\n'
             '\n[[sweep.cells]]\nname = "ok"\nset = {}\n\n[[sweep.cells]]\nname = ".."\n'
             'set = { "train.r" = 4 }\n')
    (suite_dir / "tiny.toml").write_text(text)
    lines = refused(suite_dir, lines=2)
    n = len(text.splitlines())
    key_line = text.splitlines().index('".." = "{{ instruction }}"') + 1
    assert any(f'tiny.toml:{key_line}: eval.baseline_templates."..": \'..\' cannot name a '
               "folder" in ln for ln in lines), lines
    assert any(f"tiny.toml:{n - 1}: sweep.cells.1.name: '..' cannot name a folder" in ln
               for ln in lines), lines


# ---------------------------------------------------------------- 4. strict booleans


@pytest.mark.parametrize("value", ['"yes"', "1", '"y"', '"true"'])
def test_trust_remote_code_must_be_a_toml_boolean(suite_dir, value):
    p = suite_dir / "tiny.toml"
    edit(suite_dir, "\n[data]", f"trust_remote_code = {value}\n\n[data]")
    line_no = p.read_text().splitlines().index(f"trust_remote_code = {value}") + 1
    (line,) = refused(suite_dir)
    assert f"tiny.toml:{line_no}: model.trust_remote_code: expected true or false" in line


def test_cache_baseline_no_is_refused_and_real_booleans_work(suite_dir):
    edit(suite_dir, "[eval]\n", '[eval]\ncache_baseline = "no"\n')
    (line,) = refused(suite_dir)
    assert "eval.cache_baseline: expected true or false (got 'no')" in line
    edit(suite_dir, 'cache_baseline = "no"', "cache_baseline = false")
    res = runner.invoke(app, ["validate", str(suite_dir / "tiny.toml"), "--set",
                              "model.trust_remote_code=false", "--set", "data.dedupe=true"])
    assert res.exit_code == 0, res.output


def test_a_set_boolean_must_be_true_or_false(suite_dir):
    (line,) = refused(suite_dir, "--set", "model.trust_remote_code=yes")
    assert line == ("error: --set model.trust_remote_code=yes: model.trust_remote_code: "
                    "expected true or false (got 'yes')")


# ---------------------------------------------------------------- 5. gate rules


def test_a_malformed_suite_gate_rule_fails_validation(suite_dir):
    text = (suite_dir / "tiny.toml").read_text() + '\n[gate]\nrules = ["rougeL:-1%", "garbage"]\n'
    (suite_dir / "tiny.toml").write_text(text)
    (line,) = refused(suite_dir)
    n = len(text.splitlines())
    assert f"tiny.toml:{n}: gate.rules.1: bad gate rule 'garbage'" in line


def test_a_gate_rule_with_the_wrong_sign_names_the_fix(suite_dir):
    (suite_dir / "tiny.toml").write_text((suite_dir / "tiny.toml").read_text()
                                         + '\n[gate]\nrules = ["perplexity:-2%"]\n')
    (line,) = refused(suite_dir)
    assert "gate.rules.0" in line and "write perplexity:+2%" in line


# ---------------------------------------------------------------- 6. every error at once


def test_every_error_is_reported_with_its_line_or_its_set(suite_dir):
    edit(suite_dir, "learning_rate = 0.02", "learnig_rate = 0.02")
    edit(suite_dir, "max_steps = 24", 'max_steps = "many"')
    lines = (suite_dir / "tiny.toml").read_text().splitlines()
    typo = lines.index("learnig_rate = 0.02") + 1
    steps = lines.index('max_steps = "many"') + 1
    found = refused(suite_dir, "--set", "data.eval_size=abc", "--set", "nonsense", lines=4)
    text = "\n".join(found)
    assert "error: --set 'nonsense': expected dotted.key=value" in text
    assert f"tiny.toml:{typo}: train.learnig_rate: unknown key (did you mean 'learning_rate'?)" \
        in text
    assert f"tiny.toml:{steps}: train.max_steps: " in text
    assert "error: --set data.eval_size=abc: data.eval_size: " in text
    assert "(got 'abc')" in text


def test_a_union_key_is_one_problem_not_one_per_member(suite_dir):
    (line,) = refused(suite_dir, "--set", "train.target_modules=5")
    assert "train.target_modules: Input should be a valid list or 'all-linear' (got 5)" in line


# ---------------------------------------------------------------- 7. help and --version


COMMANDS = ["run", "validate", "plan", "compare", "gate", "report", "resume", "merge"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_has_an_example_and_no_type_noise(cmd):
    res = runner.invoke(app, [cmd, "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    for noise in ("<list", "<path>", "<bool>", "<str>", "<float>", "PATH", "TEXT", "{"):
        assert noise not in res.output, (noise, res.output)
    assert "Example" in res.output and f"harness {cmd} " in res.output


def test_top_level_help_lists_commands_without_type_noise():
    res = runner.invoke(app, ["--help"], terminal_width=100)
    assert res.exit_code == 0 and "<bool>" not in res.output and "--version" in res.output
    assert all(c in res.output for c in COMMANDS)


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"harness {__version__}"


# ---------------------------------------------------------------- 10. SIGTERM / SIGINT


def _wait_for_training(parent: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the run's staging folder has a train_log line: the baseline arm is measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        logs = list(parent.glob(".*.partial/train_log.jsonl")) if parent.is_dir() else []
        if logs and logs[0].read_text().strip():
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run never started training")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_run_saves_a_failed_record_and_exits_1(suite_dir, sig):
    out = suite_dir / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite_dir / "tiny.toml"), "--out",
         str(out), "--set", "train.max_steps=400", "--set", "train.eval_strategy=no"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=suite_dir)
    _wait_for_training(out / "tiny", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    (run_dir,) = (out / "tiny").iterdir()  # no .partial folder left beside it
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["error"]["type"] == "KeyboardInterrupt"
    assert record["error"]["message"] == sig.name
    assert record["arms"]["baseline"]["metrics"]["loss"] > 0
    assert f"error: interrupted by {sig.name}: the run was recorded as failed in {run_dir}" \
        in stderr.replace("\n", "")


def test_signal_handlers_are_restored_after_a_run(suite_dir):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with running.stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ---------------------------------------------------------------- 11. OMP_WAIT_POLICY


def test_passive_openmp_on_a_cpu_only_machine(tmp_path):
    env: dict[str, str] = {}
    cli.quiet_openmp(env, dev=tmp_path)  # an empty /dev: no GPU
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    cli.quiet_openmp(env, dev=tmp_path)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}, "the user's choice is kept"


def test_openmp_left_alone_when_a_gpu_is_visible(tmp_path):
    (tmp_path / "nvidiactl").touch()
    env: dict[str, str] = {}
    cli.quiet_openmp(env, dev=tmp_path)
    assert env == {}
    env = {"CUDA_VISIBLE_DEVICES": ""}  # every device hidden: a CPU run after all
    cli.quiet_openmp(env, dev=tmp_path)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


def _policy_seen_by_harness(**extra: str) -> str:
    """OMP_WAIT_POLICY as `harness --version` (cli.main) leaves it, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=str(REPO), **extra)
    code = ("import atexit, os, sys\n"
            "atexit.register(lambda: print(os.environ.get('OMP_WAIT_POLICY')))\n"
            "sys.argv = ['harness', '--version']\n"
            "from harness import cli\n"
            "assert 'torch' not in sys.modules\n"
            "cli.main()\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[-1]


def test_harness_sets_passive_openmp_in_a_fresh_process():
    expected = "None" if cli._has_gpu(os.environ) else "PASSIVE"
    assert _policy_seen_by_harness() == expected
    assert _policy_seen_by_harness(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
