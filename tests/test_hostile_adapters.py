"""Hostile adapter folders: an `adapter_config.json` with values of the wrong JSON type, a
safetensors file whose header cannot be read, a config peft refuses or cannot lay on the model,
and a hub adapter without a network. `validate`, `plan` and `run` refuse each with exit 2 and
one line naming the file (and the key) before a weight loads; nothing is written."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import modeling

from .test_adapters import _peft_adapter, eval_only

runner = CliRunner()
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_model_dir) -> Path:
    return _peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("good") / "qv", "lora_qv")


def _copy(good: Path, tmp_path: Path, edit=None) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    if edit is not None:
        cfg = bad / "adapter_config.json"
        cfg.write_text(json.dumps(edit(json.loads(cfg.read_text()))))
    return bad


def _refused(suite_dir: Path, adapter: Path, *needles: str,
             commands=("validate", "plan", "run")) -> dict[str, str]:
    """Each command: exit 2, one line holding every needle, nothing written; its line."""
    out, lines = suite_dir / "results", {}
    for cmd in commands:
        args = [cmd, str(eval_only(suite_dir)), "--adapter", f"bad={adapter}"]
        res = runner.invoke(app, args + (["--out", str(out)] if cmd == "run" else []))
        shown = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2, (cmd, res.output)
        assert len(shown) == 1, (cmd, res.output)  # one line, no traceback
        for needle in needles:
            assert needle in res.output, (cmd, needle, res.output)
        lines[cmd] = shown[0]
    assert not out.exists() or not any(out.rglob("*")), "nothing may be written"
    return lines


# ---------------------------------------------------------------- values of the wrong type


@pytest.mark.parametrize("key, value", [
    ("r", "8"),
    ("target_modules", 5),
    ("lora_alpha", [1]),
    ("lora_dropout", "0.1"),
    ("use_dora", "yes"),
    ("use_rslora", 1),  # JSON 1 is no boolean, though Python's True == 1
    ("layers_to_transform", ["0"]),
    ("peft_type", ["LORA"]),
    ("task_type", 7),
])
def test_config_value_of_the_wrong_type_is_one_line_naming_file_and_key(
        suite_dir, good, tmp_path, key, value):
    bad = _copy(good, tmp_path, lambda c: {**c, key: value})
    # the file as written, read strictly: the value is there, of another JSON type
    assert json.loads((bad / "adapter_config.json").read_text())[key] == value
    lines = _refused(suite_dir, bad, str(bad / "adapter_config.json"), key)
    assert json.dumps(value) in lines["validate"] or repr(value) in lines["validate"]


def test_config_that_is_not_an_object_names_the_file(suite_dir, good, tmp_path):
    bad = _copy(good, tmp_path, lambda c: [c])
    _refused(suite_dir, bad, str(bad / "adapter_config.json"), "not a JSON object")


def test_values_as_peft_itself_writes_them_pass(suite_dir, good, tmp_path):
    """The checker must not refuse what peft wrote: JSON nulls, {} for a nested config, a
    string task type, an int where a float is declared (lora_dropout 0), a float where peft
    declares an int but takes any number (harness's own trainer writes lora_alpha 16.0)."""
    raw = json.loads((good / "adapter_config.json").read_text())
    assert raw["loftq_config"] == {} and raw["lora_dropout"] == 0.0
    ok = _copy(good, tmp_path, lambda c: {**c, "lora_dropout": 0, "lora_alpha": 8.0})
    res = runner.invoke(app, ["validate", str(eval_only(suite_dir)), "--adapter", f"ok={ok}"])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- corrupt safetensors header


def _header_len(f: Path) -> int:
    return struct.unpack("<Q", f.read_bytes()[:8])[0]


CORRUPT = {
    "garbage": lambda b, n: b"not a safetensors file at all, just text\n" * 4,
    "length_past_the_end": lambda b, n: struct.pack("<Q", len(b) * 10) + b[8:],
    "header_not_json": lambda b, n: b[:8] + b"\xff" * n + b[8 + n:],
    "tensors_past_the_end": lambda b, n: b[: 8 + n + 16],
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_safetensors_header_is_exit_2_naming_the_file(suite_dir, good, tmp_path, case):
    from safetensors import SafetensorError, safe_open

    bad = _copy(good, tmp_path)
    f = bad / WEIGHTS
    f.write_bytes(CORRUPT[case](f.read_bytes(), _header_len(good / WEIGHTS)))
    with pytest.raises(SafetensorError):  # independently: safetensors cannot read it
        with safe_open(str(f), framework="pt") as st:
            list(st.keys())
    _refused(suite_dir, bad, str(f), "not a readable safetensors file",
             commands=("validate", "plan"))


# ---------------------------------------------------------------- configs that cannot load


def _peft_cannot_load(model_dir: Path, folder: Path) -> None:
    """Independently of harness: plain transformers + peft fail to load the folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with pytest.raises((ValueError, TypeError, RuntimeError)):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(folder))


@pytest.mark.parametrize("edit, needle", [
    ({"r": -4}, "`r` should be a positive integer"),
    ({"target_modules": ["q_proj", "v_proj", "norm"]}, "is not supported"),
    ({"layers_to_transform": [5]}, "not found in the base model"),
    ({"target_modules": []}, "target_modules"),
    ({"r": 4.0}, "float"),  # a number, as the type check allows: peft's wrap refuses it
])
def test_adapter_peft_cannot_load_fails_validate_in_one_line(
        suite_dir, good, tmp_path, tiny_model_dir, edit, needle):
    bad = _copy(good, tmp_path, lambda c: {**c, **edit})
    _peft_cannot_load(tiny_model_dir, bad)
    lines = _refused(suite_dir, bad, str(bad / "adapter_config.json"), needle)
    assert "peft cannot apply it to LlamaForCausalLM" in lines["validate"]


def test_rank_of_the_file_against_the_config_still_refused(suite_dir, good, tmp_path,
                                                           tiny_model_dir):
    """The header check covers a lora_A of another rank than the config's r (a gap would be
    an adapter loading with mismatched shapes)."""
    bad = _copy(good, tmp_path, lambda c: {**c, "r": 16})
    _peft_cannot_load(tiny_model_dir, bad)
    _refused(suite_dir, bad, "tensors do not fit", "(4, 32) in the adapter, (16, 32) in the model")


# ---------------------------------------------------------------- a hub adapter, no network


@pytest.mark.parametrize("cmd, code", [("validate", 0), ("plan", 0), ("run", 2)])
def test_hub_adapter_without_network_goes_offline_at_once(suite_dir, monkeypatch, cmd, code):
    """No HF_HUB_OFFLINE and no route to the hub: the one probe `validate` makes for hub models
    and datasets runs for a hub adapter too (once), and the download is asked offline, where
    huggingface_hub gives up at once instead of ~35-48 s of retries."""
    import huggingface_hub

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    probes, asked = [], []
    monkeypatch.setattr(modeling, "hub_reachable", lambda *a, **k: probes.append(1) or False)

    def download(repo_id, filename, **kw):
        asked.append(__import__("os").environ.get("HF_HUB_OFFLINE"))
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    out = suite_dir / "results"
    args = [cmd, str(eval_only(suite_dir)), "--adapter", "hub=someone/no-such-adapter"]
    res = runner.invoke(app, args + (["--out", str(out)] if cmd == "run" else []))
    assert res.exit_code == code, res.output
    assert probes == [1], "one probe of the hub per command"
    assert asked and set(asked) == {"1"}, "the hub adapter is fetched in offline mode"
    assert "cannot be reached" in res.output and "someone/no-such-adapter" in res.output
    assert not out.exists() or not any(out.rglob("*"))


def test_local_suite_without_hub_adapter_makes_no_probe(suite_dir, good, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda *a, **k: pytest.fail("probed"))
    res = runner.invoke(app, ["validate", str(eval_only(suite_dir)), "--adapter", f"ok={good}"])
    assert res.exit_code == 0, res.output
