"""train.seeds through the CLI on the tiny model: one adapter per seed, each the adapter a
single-seed run of that seed trains, a recipe row across seeds, and compare's seed-noise
notes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.record import load_run

from .conftest import ASSETS, cli_run, tiny_suite_text

runner = CliRunner()


def write(d: Path, model_dir: Path, seeds: str) -> Path:
    shutil.copy(ASSETS / "instruct.jsonl", d / "instruct.jsonl")
    text = tiny_suite_text(model_dir).replace("max_steps = 24", "max_steps = 6")
    text = text.replace("seed = 0\n\n[eval]", f"seed = 0\n{seeds}\n\n[eval]")
    (d / "tiny.toml").write_text(text + '\n[eval.sets.general]\npath = "instruct.jsonl"\n'
                                 'fields = { output = "output" }\n'
                                 'response_template = "{{ output }}"\neval_size = 10\n',
                                 encoding="utf-8")
    return d / "tiny.toml"


run = cli_run


@pytest.fixture(scope="module")
def seeded_cli(tmp_path_factory, tiny_model_dir) -> tuple[Path, str]:
    """``harness run`` of the three-seed suite: its run directory and what it printed."""
    d = tmp_path_factory.mktemp("seeds")
    suite = write(d, tiny_model_dir, "seeds = [0, 1, 2]")
    res = runner.invoke(app, ["run", str(suite), "--out", str(d / "results")])
    assert res.exit_code == 0, res.output
    return next((d / "results" / "tiny").iterdir()), res.stdout


@pytest.fixture(scope="module")
def seeded(seeded_cli) -> Path:
    return seeded_cli[0]


def test_one_adapter_per_seed_and_a_recipe_row(seeded):
    rec = load_run(seeded).record
    assert [a for a in rec["arms"] if a != "baseline"] == ["lora@s0", "lora@s1", "lora@s2"]
    assert {rec["training"][a]["config"]["seed"] for a in ("lora@s0", "lora@s1", "lora@s2")} == {
        0, 1, 2}
    rows = {r["metric"]: r for r in rec["seed_comparisons"]}
    assert {"loss", "perplexity", "general/loss"} <= set(rows)
    loss = rows["loss"]
    per_seed = [rec["arms"][a]["metrics"]["loss"] - rec["arms"]["baseline"]["metrics"]["loss"]
                for a in ("lora@s0", "lora@s1", "lora@s2")]
    assert loss["abs_diff"] == pytest.approx(sum(per_seed) / 3)
    assert loss["n_seeds"] == 3 and loss["recipe"] == "lora" and loss["seed_sd"] > 0
    assert loss["ci_low"] < loss["abs_diff"] < loss["ci_high"]
    assert "Across training seeds" in (seeded / "report.md").read_text(encoding="utf-8")


def test_terminal_and_report_headline_show_the_recipe_across_seeds(seeded_cli):
    path, printed = seeded_cli
    rec = load_run(path).record
    assert "Across training seeds" in printed
    rows = {r["metric"]: r for r in rec["seed_comparisons"]}
    loss = rows["loss"]
    delta = f"{loss['abs_diff']:+.4f} [{loss['ci_low']:+.4f}, {loss['ci_high']:+.4f}]"
    assert "Across training seeds: lora (3 seeds)" in printed  # one table per recipe
    assert any(x.startswith("loss ↓") and delta in x and f"{loss['seed_sd']:.4f}" in x
               for x in printed.splitlines())
    # the report's cards: the recipe's mean and across-seeds interval, not lora@s0 alone
    html = (path / "report.html").read_text(encoding="utf-8")
    cards = html.split('<div class="cards">')[1].split("</section>")[0]
    loss_card = cards.split("Loss <span")[1].split('<div class="card')[0]
    assert "lora · 3 seeds" in loss_card and "lora@s0" not in cards
    assert f"[{loss['ci_low']:+.4f}, {loss['ci_high']:+.4f}]" in loss_card


def test_a_seed_arm_is_the_adapter_a_single_seed_run_trains(seeded, tmp_path, tiny_model_dir):
    single = run(write(tmp_path, tiny_model_dir, ""), tmp_path / "results", "train.seed=1")
    ours = [r["loss"] for r in load_run(seeded).items("lora@s1") if r["set"] is None]
    theirs = [r["loss"] for r in load_run(single).items("lora") if r["set"] is None]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_compare_of_single_seed_runs_says_it_cannot_tell(tmp_path, tiny_model_dir):
    suite = write(tmp_path, tiny_model_dir, "")
    a = run(suite, tmp_path / "a", "train.seed=1")
    b = run(suite, tmp_path / "b", "train.seed=2")
    res = runner.invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "cannot tell" in " ".join(res.output.split())


def test_compare_judges_by_the_seed_noise_a_run_measured(seeded, tmp_path, tiny_model_dir):
    other = run(write(tmp_path, tiny_model_dir, "seeds = [3, 4]"), tmp_path / "results")
    res = runner.invoke(app, ["compare", str(seeded), str(other)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "seed noise" in text and "cannot tell" not in text
