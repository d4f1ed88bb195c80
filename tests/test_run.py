"""`harness run` end to end through the CLI on a tiny model: the run directory contract,
fine-tuning helps, perplexity = exp(loss), the adapter reloads and reproduces its loss,
failures leave a `failed` record, runs never overwrite each other."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir import results
from harness.rundir.record import load_run

from .factories import validate_run_dir

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir) -> Path:
    """One real run shared by the tests below (about 20 s on 2 cores)."""
    from .conftest import ASSETS, tiny_suite_text

    d = tmp_path_factory.mktemp("suite")
    (d / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    (d / "tiny.toml").write_text(tiny_suite_text(tiny_model_dir))
    res = run_cli("run", str(d / "tiny.toml"), "--out", str(d / "results"))
    assert res.exit_code == 0, res.output
    assert "run directory:" in res.output and "rougeL" in res.output
    (path,) = (d / "results" / "tiny").iterdir()
    return path


def test_run_directory_matches_contract(finished):
    rec = validate_run_dir(finished)
    assert rec["status"] == "success" and rec["error"] is None
    assert set(rec["arms"]) == {"baseline", "lora"}
    assert rec["arms"]["baseline"]["adapter"] is None
    assert rec["arms"]["lora"]["adapter"] == "adapters/lora"
    assert rec["data"]["n_eval"] == 12 and rec["data"]["n_train"] == 64
    assert rec["env"]["device"] == "cpu"
    assert rec["env"]["memory_kind"] == "eval_weights_plus_anon_rss_increase"
    assert {"commit", "dirty"} <= set(rec["env"]["git"])
    assert rec["config"]["train"]["r"] == 8  # the resolved suite
    assert not any(p.name.startswith(".") for p in finished.parent.iterdir())  # no staging left
    assert not (finished / results.SCRATCH_DIR).exists()  # trainer checkpoints are cleaned up


def test_fine_tuning_beats_zero_shot_loss(finished):
    arms = load_run(finished).record["arms"]
    assert arms["lora"]["metrics"]["loss"] < arms["baseline"]["metrics"]["loss"] - 0.5


def test_perplexity_is_exp_of_token_weighted_loss(finished):
    run = load_run(finished)
    for arm, a in run.record["arms"].items():
        m, rows = a["metrics"], run.items(arm)
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
        weighted = sum(r["nll_sum"] for r in rows) / sum(r["n_tokens"] for r in rows)
        assert m["loss"] == pytest.approx(weighted)
        assert m["rougeL"] == pytest.approx(sum(r["rougeL"] for r in rows) / len(rows))


def test_predictions_pair_items_across_arms(finished):
    run = load_run(finished)
    assert [r["id"] for r in run.items("baseline")] == [r["id"] for r in run.items("lora")]
    assert all(r["loss"] == pytest.approx(r["nll_sum"] / r["n_tokens"])
               for r in run.predictions)
    assert all(0 <= r["rougeL"] <= 1 and r["gen_tokens"] <= 8 for r in run.predictions)


def test_comparisons_cover_every_metric(finished):
    rec = load_run(finished).record
    by_metric = {c["metric"]: c for c in rec["comparisons"]}
    assert {"loss", "perplexity", "rouge1", "rougeL", "eval_tokens_per_s"} <= set(by_metric)
    loss = by_metric["loss"]
    assert loss["abs_diff"] == pytest.approx(loss["candidate_value"] - loss["baseline_value"])
    assert loss["rel_gain"] == pytest.approx(loss["abs_diff"] / loss["baseline_value"])


def test_train_log_has_train_and_eval_loss(finished):
    log = load_run(finished).train_log()
    train_rows = [r for r in log if "loss" in r]
    eval_rows = [r for r in log if "eval_loss" in r]
    assert len(train_rows) >= 24 // 4 and {r["arm"] for r in log} == {"lora"}
    assert [r["step"] for r in eval_rows] == [12, 24]
    assert all("learning_rate" in r and "epoch" in r for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_training_summary_records_tokens_and_padding(finished):
    t = load_run(finished).record["training"]["lora"]
    assert t["global_steps"] == 24 and t["train_tokens"] > 0
    assert 0 < t["padding_efficiency"] <= 1 and t["train_tokens_per_s"] > 0
    assert 0 < t["trainable_params"] < t["total_params"] and t["adapter_bytes"] > 0


def test_adapter_is_peft_format_with_card_and_reloads(finished, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from harness.run import modeling, scoring
    from harness.run.encoding import encode
    from harness.suite.config import DataSpec
    from harness.suite.prompts import Example

    adapter = finished / "adapters" / "lora"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\n") and f"base_model: {tiny_model_dir}" in card
    assert "library_name: peft" in card
    run = load_run(finished)
    rows = run.items("lora")
    tok = modeling.load_tokenizer(_suite(run).model, str(tiny_model_dir))
    spec = DataSpec(**{k: v for k, v in run.record["config"]["data"].items() if v is not None})
    enc = [encode(Example(r["id"], r["prompt"], r["reference"]), tok, spec) for r in rows]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    scores, _ = scoring.teacher_forced(model, enc, 4, tok.pad_token_id)
    for s, r in zip(scores, rows):
        assert s.nll_sum == pytest.approx(r["nll_sum"], rel=1e-4)


def _suite(run):
    from harness.suite.config import Suite

    return Suite.model_validate(run.record["config"])


def test_reports_written(finished):
    assert (finished / "report.html").is_file() and (finished / "report.md").is_file()


def test_second_run_never_overwrites(suite_dir):
    out = suite_dir / "results"
    args = ["run", str(suite_dir / "tiny.toml"), "--out", str(out), "--set", "train.max_steps=2",
            "--set", "data.eval_size=4", "--set", "eval.metrics=['loss']"]
    assert run_cli(*args).exit_code == 0
    assert run_cli(*args).exit_code == 0
    runs = sorted((out / "tiny").iterdir())
    assert len(runs) == 2 and runs[0].name != runs[1].name
    assert all(json.loads((r / "run.json").read_text())["status"] == "success" for r in runs)


def test_eval_only_suite_has_baseline_arm_only(suite_dir):
    text = (suite_dir / "tiny.toml").read_text()
    (suite_dir / "evalonly.toml").write_text(text[: text.index("[train]")].replace(
        'name = "tiny"', 'name = "evalonly"'))
    res = run_cli("run", str(suite_dir / "evalonly.toml"), "--out", str(suite_dir / "r"),
                  "--set", "data.eval_size=4")
    assert res.exit_code == 0, res.output
    (path,) = (suite_dir / "r" / "evalonly").iterdir()
    rec = validate_run_dir(path)
    assert list(rec["arms"]) == ["baseline"] and rec["comparisons"] == []


def test_crash_mid_run_leaves_failed_record(suite_dir, monkeypatch):
    from harness.run import train

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train, "train_adapter", boom)
    res = run_cli("run", str(suite_dir / "tiny.toml"), "--out", str(suite_dir / "results"),
                  "--set", "data.eval_size=4")
    assert res.exit_code == 1
    (path,) = (suite_dir / "results" / "tiny").iterdir()
    rec = validate_run_dir(path)
    assert rec["status"] == "failed"
    assert rec["error"]["type"] == "RuntimeError" and "out of memory" in rec["error"]["message"]
    assert rec["error"]["stage"] == "train:lora"
    assert rec["arms"]["baseline"]["status"] == "success"  # what was measured before the crash
    assert rec["arms"]["lora"]["status"] == "failed"
    assert "out of memory" in (path / "report.html").read_text()
