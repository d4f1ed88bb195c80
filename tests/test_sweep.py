"""Sweeps: cells and grids expand into adapter arms; `harness run` evaluates the zero-shot
baseline once for all of them, trains one adapter per cell, compares every cell with the
baseline, and a cell that crashes is recorded as failed while the others go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.rundir.record import load_run
from harness.suite import config, suitefile, sweep

from .conftest import ASSETS, tiny_suite_text

runner = CliRunner()

# Named cells first, then the grid (cartesian product, named from the keys' last parts).
SWEEP = '''
[[sweep.cells]]
name = "r4"
set = { "train.r" = 4 }

[[sweep.cells]]
name = "big_batch"
set = { "train.batch_size" = 16 }

[sweep.grid]
"train.learning_rate" = [0.02, 0.01]
'''
ARMS = ["r4", "big_batch", "learning_rate0.02", "learning_rate0.01"]


def write_suite(d: Path, model_dir: Path, extra: str = SWEEP) -> Path:
    (d / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    path = d / "tiny.toml"
    path.write_text(tiny_suite_text(model_dir) + extra)
    return path


# ---------------------------------------------------------------- expand


def load(tmp_path: Path, extra: str) -> config.Suite:
    p = tmp_path / "s.toml"
    p.write_text(tiny_suite_text(Path("/nonexistent-model")) + extra)
    return suitefile.load_suite(p)


def test_cells_then_grid_in_order(tmp_path):
    arms = sweep.expand(load(tmp_path, SWEEP))
    assert [n for n, _ in arms] == ARMS
    cells = dict(arms)
    assert cells["r4"].train.r == 4 and cells["r4"].train.learning_rate == 0.02
    assert cells["big_batch"].train.batch_size == 16
    assert cells["learning_rate0.01"].train.learning_rate == 0.01
    assert all(c.sweep is None and c.data == arms[0][1].data for c in cells.values())


def test_grid_is_the_cartesian_product(tmp_path):
    grid = '[sweep.grid]\n"train.r" = [4, 8]\n"train.learning_rate" = [0.01, 0.001]\n'
    arms = sweep.expand(load(tmp_path, grid))
    assert [n for n, _ in arms] == ["r4_learning_rate0.01", "r4_learning_rate0.001",
                                    "r8_learning_rate0.01", "r8_learning_rate0.001"]
    assert [(c.train.r, c.train.learning_rate) for _, c in arms] == [
        (4, 0.01), (4, 0.001), (8, 0.01), (8, 0.001)]


def test_grid_values_make_plain_folder_names(tmp_path):
    grid = ('[sweep.grid]\n"train.target_modules" = [["q_proj", "v_proj"], "all-linear"]\n'
            '"train.optimizer" = ["adamw_torch"]\n')
    arms = sweep.expand(load(tmp_path, grid))
    assert [n for n, _ in arms] == ["target_modulesq_proj,v_proj_optimizeradamw_torch",
                                    "target_modulesall-linear_optimizeradamw_torch"]
    assert arms[0][1].train.target_modules == ["q_proj", "v_proj"]


def test_no_sweep_is_one_lora_arm(tmp_path):
    suite = load(tmp_path, "")
    assert sweep.expand(suite) == [("lora", suite)]


@pytest.mark.parametrize("extra, needle", [
    ('[[sweep.cells]]\nname = "a"\nset = { "train.r" = 4 }\n'
     '[[sweep.cells]]\nname = "a"\nset = { "train.r" = 8 }\n', "['a']"),
    ('[sweep.grid]\n"train.r" = [4, 4]\n', "['r4']"),  # a grid can collide with itself
    ('[[sweep.cells]]\nname = "r4"\nset = { "train.r" = 2 }\n[sweep.grid]\n"train.r" = [4]\n',
     "['r4']"),
    ('[[sweep.cells]]\nname = "baseline"\nset = { "train.r" = 4 }\n', "'baseline'"),
])
def test_duplicate_or_reserved_names(tmp_path, extra, needle):
    with pytest.raises(ConfigError, match="unique and not 'baseline'") as e:
        sweep.expand(load(tmp_path, extra))
    assert needle in str(e.value)


@pytest.mark.parametrize("key", ["data.train_size", "model.dtype", "eval.max_new_tokens",
                                 "stats.seed", "name"])
def test_shared_tables_cannot_be_overridden(tmp_path, key):
    extra = f'[[sweep.cells]]\nname = "x"\nset = {{ "{key}" = 1 }}\n'
    with pytest.raises(ConfigError, match=r"sweep cell 'x': cannot override .*shared"):
        sweep.expand(load(tmp_path, extra))


def test_a_bad_cell_value_names_the_cell(tmp_path):
    extra = '[[sweep.cells]]\nname = "neg"\nset = { "train.r" = -1 }\n'
    with pytest.raises(ConfigError, match=r"sweep cell 'neg': .*train\.r"):
        sweep.expand(load(tmp_path, extra))


def test_empty_sweep_and_sweep_without_train(tmp_path):
    with pytest.raises(ConfigError, match="neither cells nor grid"):
        sweep.expand(load(tmp_path, "[sweep]\n"))
    text = tiny_suite_text(Path("/m"))
    p = tmp_path / "e.toml"
    p.write_text(text[: text.index("[train]")] + SWEEP)
    with pytest.raises(ConfigError, match=r"\[sweep\] needs a \[train\] table"):
        sweep.expand(suitefile.load_suite(p))


# ---------------------------------------------------------------- harness run


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir) -> Path:
    """One sweep run (4 cells) where the big-batch cell dies of a (simulated) CUDA OOM."""
    from harness.run import train

    d = tmp_path_factory.mktemp("sweep")
    real = train.train_adapter

    def oom_on_big_batch(model, tok, spec, **kw):
        if spec.batch_size == 16:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, tok, spec, **kw)

    args = ["run", str(write_suite(d, tiny_model_dir)), "--out", str(d / "results"),
            "--set", "train.max_steps=2", "--set", "data.eval_size=4",
            "--set", "eval.max_new_tokens=4", "--set", "stats.n_resamples=200"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(d / "cache"))
        mp.setattr(train, "train_adapter", oom_on_big_batch)
        res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 1, res.output  # a failed cell fails the command, not the record
    assert "1 arm(s) failed: big_batch" in res.output
    (path,) = (d / "results" / "tiny").iterdir()
    return path


def test_one_arm_per_cell_and_one_shared_baseline(swept):
    rec = load_run(swept).record
    assert list(rec["arms"]) == ["baseline", *ARMS]
    rows = [json.loads(x) for x in (swept / "predictions.jsonl").read_text().splitlines()]
    base_ids = [r["id"] for r in rows if r["arm"] == "baseline"]
    assert len(base_ids) == len(set(base_ids)) == rec["data"]["n_eval"] == 4
    for arm in ("r4", "learning_rate0.02", "learning_rate0.01"):
        assert [r["id"] for r in rows if r["arm"] == arm] == base_ids  # paired, same order


def test_one_adapter_per_successful_cell(swept):
    rec = load_run(swept).record
    ok = ["r4", "learning_rate0.02", "learning_rate0.01"]
    assert sorted(p.name for p in (swept / "adapters").iterdir()) == sorted(ok)
    for arm in ok:
        assert rec["arms"][arm]["adapter"] == f"adapters/{arm}"
        assert (swept / "adapters" / arm / "adapter_config.json").is_file()
        assert rec["training"][arm]["global_steps"] == 2
    cfg = {a: rec["training"][a]["config"] for a in ok}
    assert cfg["r4"]["r"] == 4 and cfg["learning_rate0.01"]["learning_rate"] == 0.01
    adapter = json.loads((swept / "adapters" / "r4" / "adapter_config.json").read_text())
    assert adapter["r"] == 4


def test_every_cell_is_compared_with_the_baseline(swept):
    comps = load_run(swept).record["comparisons"]
    assert {c["baseline"] for c in comps} == {"baseline"}
    by_cell = {a: {c["metric"] for c in comps if c["candidate"] == a}
               for a in ("r4", "learning_rate0.02", "learning_rate0.01")}
    assert all({"loss", "perplexity", "rougeL"} <= m for m in by_cell.values())


def test_a_failing_cell_is_recorded_and_the_others_go_on(swept):
    rec = load_run(swept).record
    failed = rec["arms"]["big_batch"]
    assert failed["status"] == "failed" and failed["adapter"] is None
    assert "out of memory" in failed["error"]["message"]
    assert failed["error"]["stage"] == "train:big_batch"
    assert not any(c["candidate"] == "big_batch" for c in rec["comparisons"])
    after = [a for a in ARMS[ARMS.index("big_batch") + 1:]]  # cells after the failure ran
    assert all(rec["arms"][a]["status"] == "success" for a in after)
    assert rec["status"] == "success"  # some cells succeeded: the run is usable
