"""An adapter says which base it was trained on in a form that means the same on any machine:
the base the suite named (hub id, local path, or package:file), not a folder of harness's model
cache. Evaluated elsewhere (another HARNESS_CACHE), harness's own adapter is not "trained on
another base"; one that names another base still is.

A packaged GGUF is stood in for by a fake installed package (a folder on sys.path with a
``.gguf`` and a dist-info) whose "conversion" copies the tiny model, so the cache machinery is
the real one without the real 98 MB model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import modeling
from harness.rundir.record import load_run

from .conftest import tiny_suite_text

runner = CliRunner()
PKG, GGUF = "fakegguf", "Tiny-135M.Q4_1.gguf"
LABEL = f"{PKG}:{GGUF}"


@pytest.fixture()
def packaged(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A suite whose model is ``package = "fakegguf"``; returns the suite file."""
    site = tmp_path / "site"
    (site / PKG).mkdir(parents=True)
    (site / PKG / "__init__.py").write_text("")
    (site / PKG / GGUF).write_bytes(b"GGUF not really")
    dist = site / f"{PKG}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(modeling, "_convert",
                        lambda src, out: shutil.copytree(tiny_model_dir, out))
    suite_dir = tmp_path / "suite"
    suite_dir.mkdir()
    shutil.copy(Path(__file__).parent / "assets" / "instruct.jsonl", suite_dir)
    model = f'package = "{PKG}"\ngguf_file = "{GGUF}"\n'
    text = tiny_suite_text(tiny_model_dir)
    start = text.index("[model]\n") + len("[model]\n")
    text = text[:start] + model + text[text.index("\n", start) + 1:]
    (suite_dir / "tiny.toml").write_text(text)
    return suite_dir / "tiny.toml"


def _use_cache(monkeypatch, path: Path, suite: Path) -> None:
    """This machine's model cache, with the suite's model converted into it already."""
    from harness.suite import suitefile

    monkeypatch.setenv("HARNESS_CACHE", str(path))
    modeling.ensure_converted(modeling.resolve_source(suitefile.load_suite(suite)))


def _train(suite: Path, out: Path) -> Path:
    res = runner.invoke(app, ["run", str(suite), "--out", str(out), "--set", "train.max_steps=2",
                              "--set", "train.eval_strategy=no"])
    assert res.exit_code == 0, res.output
    (run,) = (out / "tiny").iterdir()
    return run / "adapters" / "lora"


def _eval_with(suite: Path, out: Path, adapter: Path):
    res = runner.invoke(app, ["run", str(suite), "--eval-only", "--out", str(out),
                              "--adapter", f"mine={adapter}"])
    assert res.exit_code == 0, res.output
    (run,) = (out / "tiny").iterdir()
    return res.output, load_run(run).record


def test_trained_adapter_names_the_suites_base_and_is_recognised_elsewhere(packaged, tmp_path,
                                                                           monkeypatch):
    _use_cache(monkeypatch, tmp_path / "cache-a", packaged)
    adapter = _train(packaged, tmp_path / "a")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == LABEL
    card = (adapter / "README.md").read_text()
    assert f"\nbase_model: {LABEL}\n" in card

    _use_cache(monkeypatch, tmp_path / "cache-b", packaged)  # another machine
    output, rec = _eval_with(packaged, tmp_path / "b", adapter)
    assert "trained on" not in output and not rec["warnings"], (output, rec["warnings"])
    assert rec["arms"]["mine"]["origin"]["base_model"] == LABEL


def _config_naming(made: Path, tmp_path: Path, base: str) -> Path:
    folder = tmp_path / f"ad-{len(list(tmp_path.glob('ad-*')))}"
    shutil.copytree(made, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg,
                                                            "base_model_name_or_path": base}))
    return folder


def _validate_warns(suite: Path, adapter: Path) -> bool:
    res = runner.invoke(app, ["validate", str(suite), "--adapter", f"x={adapter}"])
    assert res.exit_code == 0, res.output
    return "trained on base_model_name_or_path" in res.output


def test_old_cache_folders_are_recognised_and_other_bases_still_warn(packaged, tmp_path,
                                                                     monkeypatch):
    """Adapters of older harness versions name the converted copy in *their* machine's cache
    (``<cache>/models/<package>-<version>-<gguf stem>``): the same conversion is the same base;
    another package, version or file, and another hub id, are not."""
    _use_cache(monkeypatch, tmp_path / "cache-a", packaged)
    made = _train(packaged, tmp_path / "a")
    key = f"{PKG}-1.0-{Path(GGUF).stem}"
    same = ["/home/someone/.cache/harness/models/" + key, LABEL]
    other = ["/home/someone/.cache/harness/models/" + key.replace("1.0", "2.0"),
             "/home/someone/.cache/harness/models/other-1.0-Tiny-135M.Q4_1",
             "someone/other-model", f"{PKG}:Other.gguf", "/elsewhere/" + key]
    _use_cache(monkeypatch, tmp_path / "cache-b", packaged)
    for base in same:
        assert not _validate_warns(packaged, _config_naming(made, tmp_path, base)), base
    for base in other:
        assert _validate_warns(packaged, _config_naming(made, tmp_path, base)), base


def test_hub_and_local_bases_are_named_as_the_suite_names_them(suite_dir, tiny_model_dir):
    """A local model: its absolute path (what peft wrote before, and what the user named); a
    hub id, with or without a GGUF in the repo: the id itself, so the hub links the card."""
    from harness.suite import suitefile

    suite = suitefile.load_suite(suite_dir / "tiny.toml")
    assert modeling.resolve_source(suite).label == str(tiny_model_dir)
    for override in ({"model.name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                     {"model.name_or_path": "someone/repo-GGUF", "model.gguf_file": "m.gguf"}):
        hub = suitefile.with_overrides(suite, override)
        assert modeling.resolve_source(hub).label == override["model.name_or_path"]
