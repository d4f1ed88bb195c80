"""A changed model is noticed: weights that differ anywhere (here only in the middle, copied
over the old ones with their mtime kept, as `cp -p`, `rsync -a` and `tar x` do) miss the
zero-shot cache and stop `harness resume`; the record names the model's files by sha256,
and a file is hashed once per change, not once per run. Through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import hashes, train
from harness.rundir.record import load_run

from .conftest import save_tiny_model

runner = CliRunner()
MIB = 1 << 20
WEIGHTS = "model.safetensors"
EVAL_ONLY = ("--eval-only", "--set", "eval.max_new_tokens=2")


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    """The tiny Llama at hidden 256: 5.7 MB of weights, so a middle exists beyond the first
    and the last MiB."""
    return save_tiny_model(tmp_path_factory.mktemp("wide"), hidden=256)


def _run(suite: Path, out: Path, *args: str) -> Path:
    before = set(out.glob("tiny/*"))
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    (path,) = set(out.glob("tiny/*")) - before
    return path


def _edit_middle(weights: Path, factor: float = 3.0) -> tuple[int, int]:
    """Scale the float32 tensor that holds the file's middle byte, in place (same inode, same
    size) and put the old atime/mtime back. Returns the edited byte range."""
    st = weights.stat()
    raw = bytearray(weights.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    middle = len(raw) // 2
    for name, t in header.items():
        a, b = (8 + n + o for o in t.get("data_offsets", (0, 0)))
        if name != "__metadata__" and a <= middle < b and t["dtype"] == "F32":
            raw[a:b] = (np.frombuffer(bytes(raw[a:b]), dtype="<f4") * factor).tobytes()
            with open(weights, "r+b") as f:  # overwrite, as `cp -p new old` does
                f.write(raw)
            os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert weights.stat().st_size == st.st_size and weights.stat().st_ino == st.st_ino
            return a, b
    raise AssertionError("no float32 tensor holds the middle byte")


def _plain_transformers_loss(model_dir: Path, rows: list[dict]) -> float:
    """Token-weighted reference NLL with transformers alone: prompt (BOS, trailing spaces
    moved to the response) masked, reference + EOS scored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll = tokens = 0.0
    for r in rows:
        prompt = r["prompt"].rstrip(" ")
        p = tok(prompt)["input_ids"]
        q = tok(r["prompt"][len(prompt):] + r["reference"], add_special_tokens=False)[
            "input_ids"] + [tok.eos_token_id]
        assert len(p) + len(q) <= 512  # the test's data.max_length: nothing truncated
        with torch.no_grad():
            out = model(torch.tensor([p + q]), labels=torch.tensor([[-100] * len(p) + q]))
        nll += out.loss.item() * len(q)
        tokens += len(q)
    return nll / tokens


def test_weights_changed_in_the_middle_with_the_mtime_kept_miss_the_cache(suite_dir, wide_model):
    model = suite_dir / "model"
    shutil.copytree(wide_model, model)
    args = (*EVAL_ONLY, "--set", f"model.name_or_path={model}", "--set", "data.max_length=512")
    first = _run(suite_dir / "tiny.toml", suite_dir / "out", *args)
    cached = _run(suite_dir / "tiny.toml", suite_dir / "out", *args)
    assert load_run(cached).record["arms"]["baseline"].get("cached") is True

    a, b = _edit_middle(model / WEIGHTS)
    assert MIB < a and b < (model / WEIGHTS).stat().st_size - MIB  # not in the edges
    after = _run(suite_dir / "tiny.toml", suite_dir / "out", *args)
    loaded = load_run(after)
    base = loaded.record["arms"]["baseline"]
    assert base.get("cached") is None  # measured again, not served from the cache
    old_loss = load_run(first).record["arms"]["baseline"]["metrics"]["loss"]
    true_loss = _plain_transformers_loss(model, loaded.items("baseline"))
    assert base["metrics"]["loss"] == pytest.approx(true_loss, rel=1e-4)
    assert abs(old_loss - true_loss) > 1e-3
    # run.json names every file of the model by the sha256 of its bytes
    files = loaded.record["model_fingerprint"]["files"]
    assert files[str((model / WEIGHTS).resolve())] == hashlib.sha256(
        (model / WEIGHTS).read_bytes()).hexdigest()
    assert str((model / "config.json").resolve()) in files
    assert str((model / "tokenizer.json").resolve()) in files


def test_a_file_is_hashed_once_per_change_not_once_per_run(suite_dir, tiny_model_dir,
                                                           monkeypatch):
    model = suite_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    monkeypatch.setattr(hashes, "RACY_S", -1.0)  # the copy is seconds old: keep its hash
    read: list[str] = []
    real = hashes.sha256_of
    monkeypatch.setattr(hashes, "sha256_of", lambda p: read.append(Path(p).name) or real(p))
    args = (*EVAL_ONLY, "--set", f"model.name_or_path={model}")
    _run(suite_dir / "tiny.toml", suite_dir / "out", *args)
    assert read.count(WEIGHTS) == 1 and read.count("config.json") == 1
    _run(suite_dir / "tiny.toml", suite_dir / "out", *args)
    _run(suite_dir / "tiny.toml", suite_dir / "out", *args, "--set", "eval.batch_size=2")
    assert read.count(WEIGHTS) == 1  # two more runs: stat only
    _edit_middle(model / WEIGHTS)
    _run(suite_dir / "tiny.toml", suite_dir / "out", *args)
    assert read.count(WEIGHTS) == 2 and read.count("config.json") == 1


def _interrupt_training(monkeypatch) -> None:
    def interrupted(*a, **k):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(train, "train_adapter", interrupted)


def test_resume_refuses_a_run_whose_model_changed(suite_dir, tiny_model_dir, monkeypatch):
    """Interrupted after its baseline; the weights change (mtime kept): resuming would pair
    the old model's baseline with an adapter trained on the new one."""
    model = suite_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    real = train.train_adapter
    _interrupt_training(monkeypatch)
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out",
                              str(suite_dir / "out"), "--set", f"model.name_or_path={model}",
                              "--set", "train.max_steps=2", "--set", "eval.max_new_tokens=2"])
    assert res.exit_code == 1 and "interrupted by SIGTERM" in res.output, res.output
    (failed,) = (suite_dir / "out" / "tiny").iterdir()
    state = (failed / ".state.json").read_bytes()
    monkeypatch.setattr(train, "train_adapter", real)

    _edit_middle(model / WEIGHTS)
    res = runner.invoke(app, ["resume", str(failed)])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "the model changed since the run started" in lines[0], lines
    assert f"{(model / WEIGHTS).resolve()}: sha256" in lines[0]
    assert (failed / ".state.json").read_bytes() == state  # nothing touched
    assert load_run(failed).record["status"] == "failed"

    shutil.rmtree(model)
    shutil.copytree(tiny_model_dir, model)  # the model it started with: resumable again
    res = runner.invoke(app, ["resume", str(failed)])
    assert res.exit_code == 0, res.output
    assert load_run(failed).record["status"] == "success"


def test_unchanged_model_fingerprint_is_the_same_after_a_copy(tmp_path, tiny_model_dir):
    """The cache key names files by content, not path: a copy of the folder is the same model."""
    from harness.run import modeling
    from harness.suite.config import ModelSpec

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    keys = [modeling.model_identity(ModelSpec(name_or_path=str(p)),
                                    modeling.ModelSource(str(p), str(p), None, None),
                                    tmp_path).content for p in (tiny_model_dir, copy)]
    assert keys[0] == keys[1] and keys[0] is not None
