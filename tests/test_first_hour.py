"""A newcomer's first hour: a run that reports only the metrics its sets ask for."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import ASSETS, tiny_suite_text

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

