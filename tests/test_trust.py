"""Numbers a user can trust: the same suite gives the same adapter, the baseline cache never
serves a stale answer, each figure measures what its name says. Through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir import results
from harness.rundir.record import load_run, read_jsonl

runner = CliRunner()


def run_suite(suite: Path, out: Path, *extra: str) -> Path:
    """Run through the CLI; the new run directory."""
    before = set((out / "tiny").iterdir()) if (out / "tiny").exists() else set()
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    (path,) = set((out / "tiny").iterdir()) - before
    return path


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / results.TRAIN_LOG_FILE) if "loss" in r]


def item_losses(run: Path, arm: str) -> list[float]:
    return [r["loss"] for r in load_run(run).items(arm)]


def test_same_suite_same_adapter_cold_and_cached(suite_dir):
    import torch

    suite, out = suite_dir / "tiny.toml", suite_dir / "results"
    cold = run_suite(suite, out)
    torch.rand(1000)  # whatever ran before in the process must not change the adapter
    cached = run_suite(suite, out)
    assert load_run(cached).record["arms"]["baseline"].get("cached") is True
    assert load_run(cold).record["arms"]["baseline"].get("cached") is None
    assert train_losses(cold) == train_losses(cached) and len(train_losses(cold)) >= 5
    assert item_losses(cold, "lora") == item_losses(cached, "lora")
    assert item_losses(cold, "baseline") == item_losses(cached, "baseline")


FAST = ("--set", "train.max_steps=2", "--set", "eval.max_new_tokens=2")


def test_model_overwritten_in_place_misses_the_cache(suite_dir, tiny_model_dir):
    import shutil

    from .conftest import build_model

    model = suite_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    args = (*FAST, "--set", f"model.name_or_path={model}")
    first = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *args)
    again = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *args)
    assert load_run(again).record["arms"]["baseline"].get("cached") is True
    from transformers import AutoTokenizer

    build_model(AutoTokenizer.from_pretrained(model), seed=1).save_pretrained(model)  # new weights
    after = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *args)
    base = load_run(after).record["arms"]["baseline"]
    assert base.get("cached") is None
    assert item_losses(after, "baseline") != item_losses(first, "baseline")


def test_cache_entry_of_the_wrong_shape_is_recomputed(suite_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    first = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
    (entry,) = (tmp_path / "baselines").iterdir()
    good = json.loads(entry.read_text())
    short = {**good, "rows": good["rows"][:-1]}
    no_metrics = {**good, "arm": {"metrics": None}}
    for bad in ([], None, "x", {"key_fields": good["key_fields"]}, short, no_metrics):
        entry.write_text(json.dumps(bad))
        run = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
        rec = load_run(run).record
        assert rec["status"] == "success" and rec["arms"]["baseline"].get("cached") is None
        assert item_losses(run, "baseline") == item_losses(first, "baseline")
        assert len(rec["comparisons"]) > 0  # paired with the lora arm


def _store_many(cache_root: str, n: int) -> int:
    import os

    os.environ["HARNESS_CACHE"] = cache_root
    from harness.run import cache

    failures = 0
    for i in range(n):
        try:
            cache.store({"k": 1}, {"metrics": {"loss": i}}, [{"id": "a"}])
        except OSError:
            failures += 1
    return failures


def test_two_writers_of_one_cache_entry_do_not_collide(tmp_path):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(4) as pool:
        failures = pool.starmap(_store_many, [(str(tmp_path), 300)] * 4)
    assert failures == [0, 0, 0, 0]
    (entry,) = (tmp_path / "baselines").iterdir()  # one entry, no temp files left
    assert json.loads(entry.read_text())["rows"] == [{"id": "a"}]


def test_cpu_peak_memory_is_each_arm_own_eval_phase(suite_dir):
    import resource

    import numpy as np

    block = np.ones(2**30 // 8)  # the process's lifetime peak RSS now includes 1 GiB
    del block
    run = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rec = load_run(run).record
    assert rec["env"]["memory_kind"] == "eval_weights_plus_anon_rss_increase"
    assert "during this arm's evaluation" in rec["env"]["memory_description"]
    for arm in ("baseline", "lora"):
        peak = rec["arms"][arm]["metrics"]["peak_memory_bytes"]
        assert 0 < peak < lifetime - 500 * 2**20, arm


def _leave_heap_behind(mib: int) -> list[bytes]:
    """What a training leaves resident: ``mib`` MiB of 2,000-byte blocks (malloc's, not
    Python's small-object arenas), every other one freed, so each page keeps a live block and
    neither gc nor malloc_trim can hand the freed half back."""
    blocks = [bytes([i % 251]) * 2000 for i in range(mib * 2**20 // 2000)]  # distinct, touched
    kept = blocks[::2]
    del blocks
    return kept


def test_what_training_leaves_resident_is_not_the_adapter_memory(suite_dir, monkeypatch):
    """The adapter's eval reports what the adapter needs, not the heap training left: with
    256 MiB left resident after training, the lora arm's peak_memory_bytes stays within
    24 MiB of the zero-shot arm's (the process's RSS put it 256 MiB above before), and both
    hold at least the model's weights (bytes of the safetensors file's tensors)."""
    from safetensors import safe_open

    from harness.run import train

    leftovers: list[list[bytes]] = []
    real = train.train_adapter

    def leaky(*a, **k):
        out = real(*a, **k)
        leftovers.append(_leave_heap_behind(256))
        return out

    monkeypatch.setattr(train, "train_adapter", leaky)
    rec = load_run(run_suite(suite_dir / "tiny.toml", suite_dir / "results",
                                     *FAST)).record
    assert leftovers and rec["status"] == "success"
    base, lora = (rec["arms"][a]["metrics"]["peak_memory_bytes"] for a in ("baseline", "lora"))
    assert abs(lora - base) < 24 * 2**20, (lora - base) / 2**20
    model_dir = Path(rec["config"]["model"]["name_or_path"])
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        weights = sum(f.get_tensor(k).nbytes for k in f.keys())  # noqa: SIM118
    assert min(base, lora) >= weights
    kind = "eval_weights_plus_anon_rss_increase"
    assert rec["env"]["memory_kind"] == kind
    assert {rec["arms"][a]["measured"]["memory"] for a in ("baseline", "lora")} == {kind}


def test_the_first_arm_a_process_evaluates_is_not_charged_for_importing_the_metrics(suite_dir):
    """In a fresh process the zero-shot arm is the first to score ROUGE, and importing
    rouge-score (nltk, scikit-learn: ~595 modules) inside its peak-memory window put it ~50 MiB
    above the adapter's on the tiny model (49.1-50.3 MiB measured); the libraries now load
    before the window. What is left between the arms is ~20 MiB of the kernels' own first-call
    set-up. A subprocess: in this test process rouge-score is long imported."""
    import subprocess
    import sys

    out = suite_dir / "results"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite_dir / "tiny.toml"),
                           "--out", str(out), *FAST], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HARNESS_CACHE": str(suite_dir / "c")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = (out / "tiny").iterdir()
    arms = load_run(run).record["arms"]
    base, lora = (arms[a]["metrics"]["peak_memory_bytes"] for a in ("baseline", "lora"))
    assert base - lora < 32 * 2**20, (base - lora) / 2**20


def test_train_losses_named_for_what_they_are(suite_dir):
    run = run_suite(suite_dir / "tiny.toml", suite_dir / "results")
    t = load_run(run).record["training"]["lora"]
    logged = train_losses(run)
    assert t["final_train_loss"] == logged[-1]  # the last logged loss
    assert t["mean_train_loss"] > t["final_train_loss"]  # the mean over all 24 steps
    assert "Mean train loss (all steps)" in (run / "report.md").read_text()


def test_cached_baseline_speed_is_marked_and_not_compared(suite_dir):
    suite, out = suite_dir / "tiny.toml", suite_dir / "results"
    cold = load_run(run_suite(suite, out, *FAST)).record
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    (path,) = set((out / "tiny").iterdir()) - {out / "tiny" / cold["run_id"]}
    warm = load_run(path).record
    speed = {"eval_tokens_per_s", "gen_tokens_per_s", "peak_memory_bytes"}
    assert speed <= {c["metric"] for c in cold["comparisons"]}
    assert not speed & {c["metric"] for c in warm["comparisons"]}
    assert {"loss", "rougeL"} <= {c["metric"] for c in warm["comparisons"]}
    assert "(cached)" in res.output  # the terminal table
    md = (path / "report.md").read_text()
    assert md.count("(cached)") == 3  # both speeds and memory of the baseline row
    card = (path / "adapters" / "lora" / "README.md").read_text()
    assert card.count("(cached, not comparable)") == 3  # the zero-shot speeds and memory
    assert warm["arms"]["baseline"]["measured"]["cached"] is True
    assert warm["arms"]["lora"]["measured"]["cached"] is False


def test_model_card_lists_the_arm_metrics(suite_dir):
    run = run_suite(suite_dir / "tiny.toml", suite_dir / "results", *FAST)
    arms = load_run(run).record["arms"]
    card = (run / "adapters" / "lora" / "README.md").read_text()
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] in arms["lora"]["metrics"]:
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    assert {"loss", "perplexity", "rougeL", "eval_tokens_per_s"} <= set(rows)
    for metric, (zero_shot, adapter) in rows.items():
        assert zero_shot == float(f"{arms['baseline']['metrics'][metric]:.4g}"), metric
        assert adapter == float(f"{arms['lora']['metrics'][metric]:.4g}"), metric


# ---------------------------------------------------------------- faults


def test_interrupted_gguf_conversion_leaves_no_temp_folder(suite_dir, tmp_path, monkeypatch):
    from unittest import mock

    import transformers

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))

    def save_then_interrupt(out, *a, **k):
        Path(out).mkdir(parents=True)
        (Path(out) / "model.safetensors").write_bytes(bytes(1 << 20))  # half a conversion
        raise KeyboardInterrupt

    fake = mock.Mock(save_pretrained=save_then_interrupt, config=mock.Mock())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: fake)
    text = (suite_dir / "tiny.toml").read_text()
    (suite_dir / "tiny.toml").write_text(text[: text.index("[train]")])
    runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(suite_dir / "out"),
                        "--set", f"model.name_or_path={gguf}"])
    models = Path(os.environ["HARNESS_CACHE"]) / "models"
    assert models.is_dir() and list(models.iterdir()) == []


def test_leftover_partial_folder_of_a_dead_run_is_reported(suite_dir):
    import subprocess

    out = suite_dir / "results"
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    killed = out / "tiny" / ".20260101T000000-aaaaaa.partial"
    alive = out / "tiny" / ".20260101T000000-bbbbbb.partial"
    for folder, pid in ((killed, dead), (alive, str(os.getpid()))):
        folder.mkdir(parents=True)
        (folder / ".owner").write_text(pid)
    lock = results.RunLock.take(alive)  # what a live run holds (its pid alone decides nothing)
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(out), *FAST])
    assert lock is not None
    lock.release()
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and killed.name in res.output
    assert alive.name not in res.output  # a live run's staging folder is not a leftover
    (run,) = [p for p in (out / "tiny").iterdir() if not p.name.startswith(".")]
    warnings = load_run(run).record["warnings"]
    assert any(killed.name in w for w in warnings)


def test_report_write_failure_is_a_failed_run(suite_dir, monkeypatch):
    import errno

    from harness.views import report

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_reports", disk_full)
    out = suite_dir / "results"
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(out), *FAST])
    assert res.exit_code == 1, res.output
    assert "No space left on device" in res.output and "Traceback" not in res.output
    (run,) = (out / "tiny").iterdir()
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"]["stage"] == "write"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def _tmpfs(path: Path, size: str) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("size", ["16k", "64k", "150k", "400k"])
def test_full_disk_never_leaves_a_success_record(suite_dir, tmp_path, size):
    """A real small filesystem (needs root to mount tmpfs; skipped otherwise)."""
    import subprocess
    import sys

    mnt = tmp_path / "disk"
    if not _tmpfs(mnt, size):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = subprocess.run([sys.executable, "-m", "harness.cli", "run",
                            str(suite_dir / "tiny.toml"), "--out", str(mnt), *FAST],
                           capture_output=True, text=True, timeout=300)
        stray = [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]
        records = [json.loads(p.read_text()) for p in mnt.rglob("run.json")]
        complete = all((p.parent / f).is_file() for p in mnt.rglob("run.json")
                       for f in ("report.html", "report.md", "predictions.jsonl"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert "Traceback" not in r.stderr, r.stderr
    assert not stray
    if r.returncode == 0:
        assert records and records[0]["status"] == "success" and complete
    else:
        assert r.returncode == 1, r.stderr
        assert "No space left on device" in r.stderr
        assert all(rec["status"] == "failed" for rec in records)


# ---------------------------------------------------------------- what a user sees


def test_piped_run_prints_training_steps_and_keeps_library_warnings_in_a_log(suite_dir):
    import subprocess
    import sys

    out = suite_dir / "results"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite_dir / "tiny.toml"),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("train lora: step")]
    assert len(steps) >= 6 and any("step 24/24" in ln for ln in steps[-2:])
    assert all("loss" in ln and "elapsed" in ln for ln in steps)
    assert any("ETA" in ln for ln in steps)
    for noise in ("Warning", "warnings.warn", "save_embedding_layers"):
        assert noise not in r.stderr + r.stdout, noise
    (run,) = (out / "tiny").iterdir()
    log = (run / "harness.log").read_text()
    assert "save_embedding_layers" in log  # peft's warning, kept for whoever debugs the run


def test_max_new_tokens_beyond_the_context_is_capped_and_said(suite_dir):
    out = suite_dir / "results"
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(out),
                              "--set", "train.max_steps=2", "--set", "eval.max_new_tokens=1000000"])
    assert res.exit_code == 0, res.output
    assert "context of 512 tokens" in res.output and "generating at most" in res.output
    (run,) = (out / "tiny").iterdir()
    loaded = load_run(run)
    cap = loaded.record["eval_limits"]["max_new_tokens"]
    longest = max(r["n_tokens"] for r in loaded.predictions)  # reference tokens: a lower bound
    assert 0 < cap < 512 - 8 and longest < 512
    assert all(r["gen_tokens"] <= cap for r in loaded.predictions)


def test_validate_offline_checks_what_it_can_and_says_what_it_could_not(suite_dir, monkeypatch):
    from harness.run import modeling

    text = (suite_dir / "tiny.toml").read_text().replace(
        'path = "instruct.jsonl"', 'dataset = "someone/not-cached-anywhere"')
    (suite_dir / "hub.toml").write_text(text.replace('name = "tiny"', 'name = "hub"'))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = runner.invoke(app, ["validate", str(suite_dir / "hub.toml"),
                              "--set", "model.name_or_path=someone/not-a-cached-model"])
    assert res.exit_code == 0, res.output
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    lines = res.output.splitlines()
    assert any("cannot be reached" in ln for ln in lines)
    unchecked = [ln for ln in lines if "not checked (offline)" in ln]
    assert len(unchecked) == 2 and all("hub.toml" in ln for ln in unchecked)
    assert any("someone/not-cached-anywhere" in ln for ln in unchecked)
    assert any("someone/not-a-cached-model" in ln for ln in unchecked)
    # what needs no network is still checked: a bad key fails as before
    bad = runner.invoke(app, ["validate", str(suite_dir / "hub.toml"), "--set", "train.r=0"])
    assert bad.exit_code == 2
    # and `run` cannot run without the data: bad input, not a warning
    ran = runner.invoke(app, ["run", str(suite_dir / "hub.toml"), "--out", str(suite_dir / "o")])
    assert ran.exit_code == 2 and not (suite_dir / "o").exists()


def test_validate_warns_when_training_would_log_no_eval_loss(suite_dir):
    res = runner.invoke(app, ["validate", str(suite_dir / "tiny.toml"),
                              "--set", "data.validation_size=0",
                              "--set", "train.eval_strategy=epoch"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "no eval loss" in res.output
    assert "data.validation_size" in res.output


def test_hub_model_is_keyed_by_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    """Offline, the local Hugging Face cache says which commit `main` is: a new download of
    the same id (refs/main moved) is another model for the zero-shot cache."""
    from harness.run import modeling

    repo = tmp_path / "hub" / "models--someone--model"
    for sha in ("a" * 40, "b" * 40):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (repo / "refs" / "main").write_text("a" * 40)
    assert modeling.hub_commit("someone/model", None) == "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)
    assert modeling.hub_commit("someone/model", None) == "b" * 40
    assert modeling.hub_commit("someone/model", "c" * 40) == "c" * 40  # a commit is itself
    assert modeling.hub_commit("someone/other", None) is None  # unknown: never cached
    # the suite's model.revision decides which commit keys the baseline, not main's
    (repo / "refs" / "v1").write_text("a" * 40)
    from harness.suite.config import ModelSpec

    src = modeling.ModelSource("someone/model", "someone/model", None, None)
    spec = ModelSpec(name_or_path="someone/model", revision="v1")
    assert modeling.model_identity(spec, src, tmp_path).content == "a" * 40
    assert modeling.model_identity(ModelSpec(name_or_path="someone/model"), src,
                                   tmp_path).content == "b" * 40


def test_sweep_cell_failing_after_its_eval_is_recorded_failed(suite_dir, monkeypatch):
    real = results.RunDir.write_text

    def card(run_dir, name, text):
        if name == f"{results.ADAPTERS_DIR}/a/{results.MODEL_CARD_FILE}":
            raise OSError("cannot write the card")
        return real(run_dir, name, text)

    monkeypatch.setattr(results.RunDir, "write_text", card)
    cells = '[{name = "a", set = {"train.r" = 4}}, {name = "b", set = {"train.r" = 8}}]'
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out",
                              str(suite_dir / "o"), *FAST, "--set", f"sweep.cells={cells}"])
    assert res.exit_code == 1, res.output
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    loaded = load_run(run)
    arms = loaded.record["arms"]
    assert arms["a"]["status"] == "failed" and "cannot write the card" in arms["a"]["error"][
        "message"]
    assert arms["b"]["status"] == "success" and arms["b"]["source"] == "trained"
    assert {c["candidate"] for c in loaded.record["comparisons"]} == {"b"}
    assert loaded.items("a") == []  # no rows of an arm whose record was never written
