"""`harness compare` / `gate` / `report` through the CLI: rows labelled by what differs between
runs, Markdown that carries no raw HTML from records (it lands in $GITHUB_STEP_SUMMARY), and
unreadable records or outputs as one line with exit code 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.record import load_run
from harness.rundir.results import RUN_FILE

from .factories import make_run

runner = CliRunner()
HTML = "<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    rec = json.loads((path / RUN_FILE).read_text())
    change(rec)
    (path / RUN_FILE).write_text(json.dumps(rec))
    return path


def with_train(path: Path, **train: Any) -> Path:
    return edit(path, lambda rec: rec["config"].update(train=train))


def md_rows(text: str) -> list[dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip("| ").split(" | ")] for ln in lines]
    return [dict(zip(split[0], cells, strict=True)) for cells in split[2:]]


def one_error_line(res: Any) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


# ---------------------------------------------------------------- 8. arm labels


def test_runs_are_labelled_by_the_config_keys_that_differ(tmp_path: Path):
    a = with_train(make_run(tmp_path, n=12), r=8, learning_rate=2e-4)
    b = with_train(make_run(tmp_path, n=12, seed=1), r=16, learning_rate=2e-4)
    res = runner.invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    pairs = {(r["Candidate"], r["Baseline"]) for r in md_rows(res.stdout)}
    assert pairs == {("train.r=8:lora", "train.r=8:baseline"),
                     ("train.r=16:lora", "train.r=16:baseline"),
                     ("train.r=16:lora", "train.r=8:lora")}
    assert f"- **train.r=16**: toy/{load_run(b).run_id}" in res.stdout


def test_a_key_only_one_run_sets_reads_unset_and_long_values_are_cut(tmp_path: Path):
    a = with_train(make_run(tmp_path, n=12), r=8)
    b = with_train(make_run(tmp_path, n=12, seed=1), r=8, target_modules=["q_proj", "k_proj",
                                                                          "v_proj", "o_proj"])
    res = runner.invoke(app, ["compare", str(a), str(b)])
    labels = {r["Candidate"] for r in md_rows(res.stdout)}
    assert "train.target_modules=unset:lora" in labels
    assert 'train.target_modules=["q_proj", "k_proj", "v…:lora' in labels


def test_runs_with_the_same_config_are_labelled_by_run_id(tmp_path: Path):
    a, b = make_run(tmp_path, n=12), make_run(tmp_path, n=12, seed=1)
    res = runner.invoke(app, ["compare", str(a), str(b)])
    ids = [load_run(p).run_id for p in (a, b)]
    assert {r["Candidate"] for r in md_rows(res.stdout)} == {
        f"{ids[0]}:lora", f"{ids[1]}:lora"}
    assert "#1" not in res.stdout and "#2" not in res.stdout


# ---------------------------------------------------------------- 9. no raw HTML in Markdown


def test_compare_markdown_escapes_arm_names_errors_and_paths(tmp_path: Path):
    good = make_run(tmp_path / HTML, n=10, arms={"baseline": (0.3, 2.5), HTML: (0.4, 2.0)})
    bad = make_run(tmp_path, n=10, seed=2, status="failed",
                   error={"message": f"CUDA {HTML} | broke"})
    res = runner.invoke(app, ["compare", str(good), str(bad)])
    assert res.exit_code == 0, res.output
    assert "<img" not in res.stdout
    assert "&lt;img src=x onerror=alert(1)&gt;" in md_rows(res.stdout)[0]["Candidate"]
    assert "CUDA &lt;img src=x onerror=alert(1)&gt; \\| broke" in res.stdout  # the note
    assert f"{tmp_path}/&lt;img" in res.stdout  # the run's path in the "Runs:" list


def test_gate_summary_escapes_arm_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    arms = {"baseline": (0.3, 2.5), HTML: (0.45, 1.8)}
    base = make_run(tmp_path / "base", n=20, arms=arms)
    cand = make_run(tmp_path / "cand", n=20, arms=arms, seed=0)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    res = runner.invoke(app, ["gate", str(cand), "--baseline", str(base), "--rule", "loss:+0.05"])
    assert res.exit_code == 0, res.output
    for text in (res.stdout, summary.read_text()):
        assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
        assert "`loss:+0.05` (cli)" in text


def test_gate_summary_escapes_a_failed_candidates_error(tmp_path: Path):
    base = make_run(tmp_path / "base", n=20)
    cand = make_run(tmp_path / "cand", n=20, status="failed",
                    error={"message": f"{HTML}\n| injected | row |"})
    res = runner.invoke(app, ["gate", str(cand), "--baseline", str(base), "--rule", "loss:+0.05"])
    assert res.exit_code == 1, res.output
    assert "<img" not in res.stdout and "\n| injected" not in res.stdout
    assert "&lt;img" in res.stdout


def test_an_unwritable_step_summary_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    base = make_run(tmp_path / "base", n=20)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "such" / "summary.md"))
    res = runner.invoke(app, ["gate", str(base), "--baseline", str(base), "--rule", "loss:+0.05"])
    assert res.exit_code == 0, res.output
    assert "warning: cannot append to $GITHUB_STEP_SUMMARY" in res.stderr


# ---------------------------------------------------------------- 2. unreadable records, outputs


@pytest.mark.parametrize("version", ["1", None, 1.0, True, [1]])
@pytest.mark.parametrize("cmd", ["compare", "gate", "report"])
def test_a_schema_version_that_is_not_an_int_is_one_line(tmp_path: Path, cmd: str, version):
    run = edit(make_run(tmp_path, n=5), lambda rec: rec.update(schema_version=version))
    args = [cmd, str(run)] + (["--baseline", str(run), "--rule", "loss:+0.05"]
                              if cmd == "gate" else [])
    line = one_error_line(runner.invoke(app, args))
    assert f"{run / RUN_FILE}: schema_version must be an integer, got {version!r}" in line


@pytest.mark.parametrize("content", ["[1, 2]", '"run"', "null"])
def test_run_json_that_is_not_an_object_is_one_line(tmp_path: Path, content: str):
    run = make_run(tmp_path, n=5)
    (run / RUN_FILE).write_text(content)
    line = one_error_line(runner.invoke(app, ["compare", str(run)]))
    assert "not a harness run record" in line


def test_run_json_that_is_not_utf8_is_one_line(tmp_path: Path):
    run = make_run(tmp_path, n=5)
    (run / RUN_FILE).write_bytes(b'{"schema_version": 1, "suite": "caf\xe9"}')
    line = one_error_line(runner.invoke(app, ["compare", str(run)]))
    assert f"{run / RUN_FILE}: not UTF-8 text" in line


def test_compare_output_that_cannot_be_written_is_one_line(tmp_path: Path):
    run = make_run(tmp_path, n=5)
    target = tmp_path / "nonexistent" / "x.md"
    line = one_error_line(runner.invoke(app, ["compare", str(run), "--output", str(target)]))
    assert line.startswith(f"error: --output {target}: cannot write: ")
    assert not target.parent.exists()
