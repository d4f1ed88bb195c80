"""Non-finite numbers: a NaN loss is a failed arm, never a success; every record file is strict
JSON (no bare NaN / Infinity, checked with a parser that rejects them, as JSON.parse does); a
non-finite number in a suite is refused at validate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir import results

from .test_adapters import _peft_adapter, eval_only
from .test_bad_input import check_refused

runner = CliRunner()


def _reject(name: str):
    raise ValueError(f"not JSON: {name}")


def strict(text: str):
    """json.loads as a strict parser (a browser's JSON.parse) reads it: NaN, Infinity refused."""
    return json.loads(text, parse_constant=_reject)


def strict_lines(path: Path) -> list:
    return [strict(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _nan_adapter(good: Path, out: Path) -> Path:
    """A copy of ``good`` whose first lora_B tensor is all NaN (a diverged export)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(good, out)
    f = out / "adapter_model.safetensors"
    tensors = load_file(f)
    key = next(k for k in sorted(tensors) if "lora_B" in k)
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, f)
    return out


@pytest.fixture(scope="module")
def adapters_made(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nan-adapters")
    good = _peft_adapter(tiny_model_dir, root / "good", "lora_qv")
    return {"good": good, "nan": _nan_adapter(good, root / "nan")}


def _run(suite: Path, out: Path, adapter: Path) -> tuple[int, Path, str]:
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), "--adapter", f"x={adapter}"])
    (run,) = (out / "tiny").iterdir()
    return res.exit_code, run, res.output


def test_adapter_with_nan_weights_is_a_failed_arm_in_strict_json(suite_dir, adapters_made):
    suite = eval_only(suite_dir)
    code, run, output = _run(suite, suite_dir / "cand", adapters_made["nan"])
    assert code == 1, output
    rec = strict((run / "run.json").read_text(encoding="utf-8"))
    rows = strict_lines(run / "predictions.jsonl")
    arm = rec["arms"]["x"]
    assert arm["status"] == "failed" and rec["status"] == "failed"
    assert arm["metrics"]["loss"] is None and arm["metrics"]["perplexity"] is None
    assert set(arm["non_finite"]) >= {"loss", "perplexity"}
    assert arm["non_finite"]["loss"] == "nan"
    assert "loss" in arm["error"]["message"] and "not finite" in arm["error"]["message"]
    assert all(r["loss"] is None for r in rows if r["arm"] == "x")
    assert all(isinstance(r["loss"], float) for r in rows if r["arm"] == "baseline")
    assert rec["arms"]["baseline"]["status"] == "success"
    assert not any(c["candidate"] == "x" for c in rec["comparisons"])

    # compare: strict JSON, and no "nan" printed for a person
    js = runner.invoke(app, ["compare", str(run), "--format", "json"])
    assert js.exit_code == 0, js.output
    strict(js.stdout)
    md = runner.invoke(app, ["compare", str(run)])
    cells = [ln for ln in md.stdout.splitlines() if ln.startswith("|")]
    assert md.exit_code == 0 and not any("nan" in ln.lower() for ln in cells), md.output

    # gate: the same suite with a good adapter of the same name is the baseline
    good_code, good_run, good_out = _run(suite, suite_dir / "base", adapters_made["good"])
    assert good_code == 0, good_out
    gate = runner.invoke(app, ["gate", str(run), "--baseline", str(good_run), "--rule",
                               "loss:+0.05"])
    assert gate.exit_code == 1, gate.output
    assert "FAIL" in gate.output and "loss" in gate.output and "not finite" in gate.output


def _two_arms(suite: Path, out: Path, first: Path, second: Path):
    return runner.invoke(app, ["run", str(suite), "--out", str(out), "--adapter",
                               f"ok={first}", "--adapter", f"x={second}"])


def test_one_nan_arm_among_good_ones_fails_the_run_and_the_gate(suite_dir, adapters_made):
    """Two existing arms, one NaN: exit 1, the good arm compared, the bad one failed by gate."""
    suite = eval_only(suite_dir)
    good, nan = adapters_made["good"], adapters_made["nan"]
    res = _two_arms(suite, suite_dir / "o", good, nan)
    assert res.exit_code == 1, res.output
    assert "1 arm(s) failed: x" in res.output
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    rec = strict((run / "run.json").read_text(encoding="utf-8"))
    assert rec["arms"]["ok"]["status"] == "success" and rec["arms"]["x"]["status"] == "failed"
    assert {c["candidate"] for c in rec["comparisons"]} == {"ok"}
    assert _two_arms(suite, suite_dir / "b", good, good).exit_code == 0
    (base,) = (suite_dir / "b" / "tiny").iterdir()
    gate = runner.invoke(app, ["gate", str(run), "--baseline", str(base), "--rule", "loss:+0.05"])
    assert gate.exit_code == 1, gate.output
    assert "candidate arm x did not succeed" in gate.output and "not finite" in gate.output


def test_a_diverged_training_run_is_a_failed_arm(suite_dir):
    """learning_rate 1e30 (finite, so the suite is valid) drives the adapter to NaN."""
    out = suite_dir / "out"
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(out),
                              "--set", "train.learning_rate=1e30", "--set", "train.max_steps=2",
                              "--set", "train.eval_strategy=no"])
    assert res.exit_code == 1, res.output
    assert "run failed: arm lora: loss = nan" in res.output
    (run,) = (out / "tiny").iterdir()
    rec = strict((run / "run.json").read_text(encoding="utf-8"))
    strict_lines(run / "predictions.jsonl")
    strict_lines(run / "train_log.jsonl")
    assert rec["status"] == "failed" and rec["arms"]["lora"]["status"] == "failed"
    assert rec["arms"]["lora"]["non_finite"]["loss"] == "nan"
    card = (run / "adapters" / "lora" / "README.md").read_text()
    assert "| loss |" not in card and "nan" not in card


def test_writer_never_writes_bare_nan(tmp_path):
    """The one writer: floats, numpy scalars, nested; NaN/inf become null."""
    import numpy as np

    rd = results.create_run_dir(tmp_path, "s")
    obj = {"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32("nan"),
           "d": {"e": -float("inf")}, "f": np.array([1.0, np.nan])}
    strict(results.dumps(obj))
    rd.write_jsonl("p.jsonl", [obj])
    rd.append_jsonl("p.jsonl", obj)
    rows = strict_lines(rd.path / "p.jsonl")
    assert rows[0] == rows[1] == {"a": None, "b": [None, 1.5], "c": None, "d": {"e": None},
                                  "f": [1.0, None]}


@pytest.mark.parametrize("override, key", [
    ("train.learning_rate=inf", "train.learning_rate"),
    ("train.epochs=nan", "train.epochs"),
    ("train.alpha=inf", "train.alpha"),
    ("train.max_grad_norm=inf", "train.max_grad_norm"),
    ("train.weight_decay=nan", "train.weight_decay"),
    ("eval.temperature=inf", "eval.temperature"),
])
def test_non_finite_config_values_are_refused(suite_dir, override, key):
    check_refused(suite_dir, f"--set {override}", key, "finite", extra=["--set", override])


def test_non_finite_value_in_the_file_names_its_line(suite_dir):
    path = suite_dir / "tiny.toml"
    text = path.read_text().replace("learning_rate = 0.02", "learning_rate = inf")
    path.write_text(text)
    line = text.splitlines().index("learning_rate = inf") + 1
    check_refused(suite_dir, f"tiny.toml:{line}", "train.learning_rate", "finite")


def test_non_finite_value_in_a_sweep_is_refused(suite_dir):
    path = suite_dir / "tiny.toml"
    grid = '\n[sweep]\ngrid = { "train.learning_rate" = [0.01, inf] }\n'
    path.write_text(path.read_text() + grid)
    check_refused(suite_dir, "train.learning_rate", "finite")


def test_compare_of_an_older_record_holding_nan_prints_and_writes_none(tmp_path):
    """Records written before the strict writer can hold bare NaN (json.loads reads it): every
    compare format skips or blanks those values, and its JSON stays strict."""
    from .factories import make_run

    run = make_run(tmp_path, n=20)
    rec = json.loads((run / "run.json").read_text())
    rec["arms"]["lora"]["metrics"]["loss"] = float("nan")
    rec["arms"]["lora"]["metrics"]["eval_tokens_per_s"] = float("inf")
    for row in rec["comparisons"]:
        row["ci_low"] = float("nan")
    (run / "run.json").write_text(json.dumps(rec))  # json writes NaN / Infinity bare
    for fmt in ("md", "csv", "json"):
        res = runner.invoke(app, ["compare", str(run), "--format", fmt])
        assert res.exit_code == 0, res.output
        assert not any(w in res.stdout.lower() for w in ("nan", "inf")), (fmt, res.stdout)
    strict(runner.invoke(app, ["compare", str(run), "--format", "json"]).stdout)
