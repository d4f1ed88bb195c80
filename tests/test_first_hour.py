"""A newcomer's first hour: `harness plan` offline on a hub suite, a run that reports only
the metrics its sets ask for, and a README whose suite reference and install lines are true."""

from __future__ import annotations

import json
import math
import re
import shutil
import tomllib
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import ASSETS, REPO, tiny_suite_text

runner = CliRunner()

# ---------------------------------------------------------------- metrics: only what was asked

ARITH = [{"q": f"{a} + {b} =", "a": str(a + b)} for a, b in
         [(2, 3), (7, 5), (11, 4), (9, 9), (6, 1), (3, 8)]]
ARITH_SET = '''
[eval.sets.arith]
path = "arith.jsonl"
fields = { q = "q", a = "a" }
prompt_template = "{{ q }} "
response_template = "{{ a }}"
metrics = ["loss", "exact_match"]
'''


@pytest.fixture(scope="module")
def arith_run(tmp_path_factory, tiny_model_dir):
    """A tiny suite whose own set asks for loss and ROUGE and whose `arith` set for loss and
    exact match: (terminal output, run directory)."""
    d = tmp_path_factory.mktemp("arith")
    shutil.copy(ASSETS / "instruct.jsonl", d / "instruct.jsonl")
    (d / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARITH), "utf-8")
    (d / "tiny.toml").write_text(tiny_suite_text(tiny_model_dir) + ARITH_SET, "utf-8")
    res = runner.invoke(app, ["run", str(d / "tiny.toml"), "--out", str(d / "r"),
                              "--set", "train.max_steps=2", "--set", "data.eval_size=6",
                              "--set", "eval.metrics=['loss', 'rouge']"])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in (d / "r" / "tiny").iterdir() if not p.name.startswith(".")]
    return res.output, run_dir


def test_a_set_gets_only_the_metrics_it_asked_for(arith_run):
    output, run_dir = arith_run
    rec = json.loads((run_dir / "run.json").read_text("utf-8"))
    for arm in ("baseline", "lora"):
        keys = set(rec["arms"][arm]["metrics"])
        assert {"arith/loss", "arith/exact_match", "loss", "rougeL"} <= keys, (arm, keys)
        assert "arith/perplexity" not in keys and "perplexity" not in keys, (arm, keys)
    compared = {c["metric"] for c in rec["comparisons"]}
    assert {"arith/loss", "arith/exact_match", "loss"} <= compared
    assert not {"arith/perplexity", "perplexity"} & compared
    assert "perplexity" not in (run_dir / "report.md").read_text("utf-8").lower()
    assert "perplexity" not in output.lower()  # the terminal table
    table = runner.invoke(app, ["compare", str(run_dir)])
    assert table.exit_code == 0 and "perplexity" not in table.output.lower(), table.output


def test_the_asked_loss_is_the_token_weighted_mean_of_the_rows(arith_run):
    _, run_dir = arith_run
    rec = json.loads((run_dir / "run.json").read_text("utf-8"))
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text("utf-8")
            .splitlines()]
    mine = [r for r in rows if r["arm"] == "baseline" and r["set"] == "arith"]
    assert len(mine) == len(ARITH)
    loss = sum(r["nll_sum"] for r in mine) / sum(r["n_tokens"] for r in mine)
    assert math.isclose(rec["arms"]["baseline"]["metrics"]["arith/loss"], loss, rel_tol=1e-12)


# ---------------------------------------------------------------- plan offline, hub model

HUB_ID = "nobody-cached/no-such-model-7b"  # a hub id with no config in the (empty) cache


@pytest.fixture()
def hub_suite(tmp_path, monkeypatch) -> Path:
    """The tiny suite on a hub model id that is not cached, offline, with an extra set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    shutil.copy(ASSETS / "instruct.jsonl", tmp_path / "instruct.jsonl")
    (tmp_path / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARITH), "utf-8")
    text = tiny_suite_text(Path("unused")).replace('"unused"', json.dumps(HUB_ID))
    text = text.replace("max_steps = 24\n", "epochs = 3\n")  # steps from the data size
    (tmp_path / "hub.toml").write_text(text + ARITH_SET, "utf-8")
    return tmp_path / "hub.toml"


def test_plan_offline_without_the_model_config_plans_the_rest(hub_suite):
    res = runner.invoke(app, ["plan", str(hub_suite)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"model config for {HUB_ID}: not in the local Hugging Face" in " ".join(out.split())
    assert "not planned: architecture, parameters, LoRA sizes and memory" in out
    # what needs no config: items, arms, sets, optimizer steps (64 train items, batch 8)
    assert "data        train 64 / validation 8 / eval 12" in out
    assert "arms        baseline, lora" in out
    assert f"arith ({len(ARITH)} items)" in out
    steps = math.ceil(64 / 8)
    assert f"steps/epoch   {steps} = ceil(ceil(64 / 8) / 1)" in out
    assert f"total steps   {3 * steps} = ceil(3 epochs x {steps})" in out
    assert "trainable     not planned" in out and "train memory  not planned" in out
    assert "error" not in out.lower() and "Traceback" not in out


def test_plan_offline_sweep_lists_every_cell(hub_suite):
    with open(hub_suite, "a", encoding="utf-8") as f:
        f.write('\n[sweep]\ngrid = { "train.r" = [4, 8] }\n')
    res = runner.invoke(app, ["plan", str(hub_suite)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rows = [x.split() for x in lines if x.startswith("r") and x.split()[0][1:].isdigit()]
    assert [r[:2] for r in rows] == [["r4", "4"], ["r8", "8"]], res.output
    assert "train memory: not planned (no model config here)" in lines


# ---------------------------------------------------------------- the README's suite reference


def _reference() -> str:
    """The ```toml block under README's "## A suite"."""
    text = (REPO / "README.md").read_text("utf-8")
    start = text.index("```toml", text.index("\n## A suite\n")) + len("```toml")
    return text[start:text.index("```", start)]


def _sections(block: str) -> dict[str, str]:
    """Table header ("" for the top) -> its lines; [eval.sets.general] counts as eval.sets."""
    out: dict[str, str] = {"": ""}
    name = ""
    for line in block.splitlines():
        head = re.match(r"\[\[?([\w.]+)\]\]?", line)
        if head:
            name = re.sub(r"^eval\.sets\.\w+$", "eval.sets", head[1])
            out.setdefault(name, "")
        out[name] += line + "\n"
    return out


def _tables(model, prefix: str = ""):
    """(table path, its model) for the suite and every table below it, as config reads them:
    a field whose type is a model (or a list / dict of models) is a table of its own."""
    from pydantic import BaseModel

    yield prefix, model
    for name, f in model.model_fields.items():
        kinds = [f.annotation, *typing.get_args(f.annotation)]
        kinds += [a for k in kinds for a in typing.get_args(k)]
        sub = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if sub is not None:
            yield from _tables(sub, f"{prefix}.{name}".lstrip("."))


def test_the_suite_reference_names_every_key_config_reads():
    from harness.suite.config import Suite

    sections = _sections(_reference())
    missing = []
    for table, model in _tables(Suite):
        text = sections.get(table)
        if text is None:
            missing.append(f"[{table}]")
            continue
        for field, f in model.model_fields.items():
            if f.exclude:
                continue
            name = f.alias or field  # the TOML key: [[exports]] from (a Python keyword)
            as_table = f"{table}.{name}".lstrip(".") in sections
            if not as_table and not re.search(rf"(^|[\s#;{{,]){name}\s*=", text, re.M):
                missing.append(f"{table}.{name}".lstrip("."))
    assert not missing, f"README's suite reference lacks {missing}"


def test_the_suite_reference_is_a_valid_suite(tmp_path):
    """Every key it shows (comments aside) is one config accepts, with a value it accepts."""
    from harness.suite import suitefile

    raw = tomllib.loads(_reference())
    suite = suitefile.validate_suite(raw, path=tmp_path / "ref.toml", text=_reference(), origins={})
    assert suite.sweep is not None and len(suite.sweep.grid) == 2
    assert list(suite.eval.baseline_templates) == ["terse"]


# ---------------------------------------------------------------- a quiet terminal offline


def test_importing_bitsandbytes_offline_prints_nothing_after_the_cli_quiets_libraries():
    """The README's first command runs offline, and importing bitsandbytes there (peft does)
    made the `kernels` package that transformers requires log a hub trust-check warning to the
    terminal on every run; bitsandbytes' own warning was already quieted."""
    import os
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")
    pytest.importorskip("kernels")
    code = ("import logging; logging.basicConfig(); "
            "from harness.run.progress import quiet_libraries; quiet_libraries(); "
            "import bitsandbytes")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "kernels-community" not in out.stderr, out.stderr
