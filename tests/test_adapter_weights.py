"""Existing adapters are measured on the very base the suite names, whatever came before them,
and only with the weights their file really holds: an adapter that carries base-model weights
cannot change the other arms, and one whose tensors are missing, renamed or shaped for
another model is refused (exit 2, one line) instead of being scored as the untouched base."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import encoding
from harness.rundir.record import LoadedRun, load_run
from harness.suite import data, suitefile

from .conftest import build_model, build_tokenizer
from .test_adapters import _peft_adapter, eval_only
from .test_bad_input import check_refused

runner = CliRunner()
WEIGHTS = "adapter_model.safetensors"


def _head_adapter(out: Path, base=None) -> Path:
    """A q_proj + lm_head LoRA made on ``base``, by default another model of the same shape
    (another seed, as a fine-tuned variant would be): peft saves that model's lm_head beside
    the LoRA tensors (`lm_head.base_layer.weight`, save_embedding_layers="auto")."""
    import torch
    from peft import LoraConfig, get_peft_model

    other = base if base is not None else build_model(build_tokenizer(), seed=7)
    torch.manual_seed(11)
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "lm_head"],
                                     init_lora_weights=False, task_type="CAUSAL_LM")
                   ).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pair")
    return {"head": _head_adapter(root / "head"),
            "qv": _peft_adapter(tiny_model_dir, root / "qv", "lora_qv")}


def _plain_losses(model, model_dir: Path, suite_path: Path) -> dict[str, float]:
    """Mean NLL per eval item with one plain forward each: the reference, not harness code."""
    import torch
    from transformers import AutoTokenizer

    suite = suitefile.load_suite(suite_path)
    splits = data.load_splits(suite)
    items, _ = encoding.encode_all(splits.eval, AutoTokenizer.from_pretrained(model_dir),
                                   suite.data)
    with torch.no_grad():
        return {ex.id: float(model.eval()(input_ids=torch.tensor([e.input_ids]),
                                          labels=torch.tensor([e.labels])).loss)
                for ex, e in zip(splits.eval, items)}


def _fresh(model_dir: Path, adapter: Path | None = None):
    """The base loaded anew, with ``adapter`` loaded by plain peft alone on it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return PeftModel.from_pretrained(base, adapter) if adapter else base


def _run(suite: Path, out: Path, *adapters: tuple[str, Path]) -> LoadedRun:
    args = ["run", str(suite), "--out", str(out)]
    for name, path in adapters:
        args += ["--adapter", f"{name}={path}"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (run,) = (out / "tiny").iterdir()
    return load_run(run)


def _losses(run: LoadedRun, arm: str) -> dict[str, float]:
    return {r["id"]: r["loss"] for r in run.items(arm)}


def _gap(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


def test_an_arms_numbers_do_not_depend_on_the_arms_before_it(suite_dir, tiny_model_dir, pair):
    suite = eval_only(suite_dir)
    first = _run(suite, suite_dir / "a", ("head", pair["head"]), ("qv", pair["qv"]))
    second = _run(suite, suite_dir / "b", ("qv", pair["qv"]), ("head", pair["head"]))
    for arm in ("baseline", "head", "qv"):
        mean = {k: sum(v.values()) / len(v) for k, v in
                (("head first", _losses(first, arm)), ("qv first", _losses(second, arm)))}
        assert _gap(_losses(first, arm), _losses(second, arm)) < 1e-5, (arm, mean)
    # each arm is what plain peft gives with that adapter alone on a freshly loaded base
    alone = {name: _plain_losses(_fresh(tiny_model_dir, path), tiny_model_dir, suite)
             for name, path in pair.items()}
    alone["baseline"] = _plain_losses(_fresh(tiny_model_dir), tiny_model_dir, suite)
    for run in (first, second):
        for arm, theirs in alone.items():
            assert _gap(_losses(run, arm), theirs) < 1e-4, arm
        assert all(run.record["arms"][a]["status"] == "success" for a in pair)
        # the head adapter brought weights of its own base: said, not silently used
        assert any("head" in w and "lm_head" in w for w in run.record["warnings"])


def test_base_weights_equal_to_the_suites_cost_no_reload(suite_dir, tiny_model_dir, pair,
                                                         monkeypatch):
    """The usual case (an lm_head LoRA made on this very base carries its unchanged head):
    nothing to warn about, and the base still loads once for every arm."""
    from transformers import AutoModelForCausalLM

    from harness.run import modeling

    same = _head_adapter(suite_dir / "same", AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    loads = []
    real = modeling.load_model
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    run = _run(eval_only(suite_dir), suite_dir / "o", ("same", same), ("qv", pair["qv"]))
    assert len(loads) == 1 and run.record["warnings"] == []
    alone = _plain_losses(_fresh(tiny_model_dir, pair["qv"]), tiny_model_dir, eval_only(suite_dir))
    assert _gap(_losses(run, "qv"), alone) < 1e-4


# ---------------------------------------------------------------- weights that do not fit


def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of adapter ``src`` whose safetensors holds ``edit(tensors)``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / WEIGHTS)
    save_file(edit(tensors), dst / WEIGHTS, metadata={"format": "pt"})
    return dst


def _wrong_base(tmp_path: Path) -> Path:
    """A q/v LoRA made on a model of hidden size 64 (the suite's has 32)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    out = tmp_path / "wide"
    get_peft_model(build_model(build_tokenizer(), hidden=64), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
        task_type="CAUSAL_LM")).save_pretrained(out)
    return out


_PREFIX = "base_model.model."
_EDITS = {
    # another exporter's key prefix: not one tensor lands in the adapter
    "renamed": lambda t: {k.removeprefix(_PREFIX): v for k, v in t.items()},
    # a truncated export: layer 1's tensors are gone
    "truncated": lambda t: {k: v for k, v in t.items() if ".layers.1." not in k},
    # a tensor the config does not describe (k_proj is not among its targets)
    "unexpected": lambda t: {**t, _PREFIX + "model.layers.0.self_attn.k_proj.lora_A.weight":
                             t[_PREFIX + "model.layers.0.self_attn.q_proj.lora_A.weight"].clone()},
}


@pytest.mark.parametrize("case, needles", [
    ("renamed", ["adapters.bad", "8 of the adapter's 8 tensors", "another key prefix",
                 "e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                 "e.g. model.layers.0.self_attn.q_proj.lora_A.weight"]),
    ("truncated", ["adapters.bad", "lacks 4 of the adapter's 8 tensors",
                   "layers.1.self_attn.q_proj.lora_A.weight"]),
    ("unexpected", ["adapters.bad", "k_proj.lora_A.weight"]),
    ("wrong_base", ["adapters.bad", "q_proj.lora_A.weight", "(4, 64)", "(4, 32)"]),
])
def test_adapter_weights_that_do_not_fit_are_refused(suite_dir, pair, tmp_path, case, needles):
    if case == "wrong_base":
        bad = _wrong_base(tmp_path)
    else:
        bad = _edited(pair["qv"], tmp_path / "bad", _EDITS[case])
    check_refused(suite_dir, *needles, extra=["--adapter", f"bad={bad}"])


def test_weights_that_did_not_load_fail_the_arm_at_load_time(suite_dir, tiny_model_dir, pair,
                                                              tmp_path):
    """A .bin adapter has no header to read before loading: peft's own load result is the
    check, and the arm fails naming the missing tensors instead of scoring the bare base."""
    import torch
    from safetensors.torch import load_file

    bad = tmp_path / "bin"
    shutil.copytree(pair["qv"], bad)
    tensors = load_file(bad / WEIGHTS)
    (bad / WEIGHTS).unlink()
    torch.save({k: v for k, v in tensors.items() if ".layers.1." not in k},
               bad / "adapter_model.bin")
    res = runner.invoke(app, ["run", str(eval_only(suite_dir)), "--out", str(suite_dir / "o"),
                              "--adapter", f"bad={bad}", "--adapter", f"qv={pair['qv']}"])
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    rec = load_run(run).record
    arm = rec["arms"]["bad"]
    assert arm["status"] == "failed", arm
    assert "layers.1.self_attn.q_proj.lora_A" in arm["error"]["message"]
    assert rec["arms"]["qv"]["status"] == "success"  # the others are still measured
    qv = {r["id"]: r["loss"] for r in load_run(run).items("qv")}
    suite = eval_only(suite_dir)
    assert _gap(qv, _plain_losses(_fresh(tiny_model_dir, pair["qv"]), tiny_model_dir, suite)) < 1e-4
    assert res.exit_code == 1 and "bad" in res.output


def test_other_peft_kinds_load_and_match_plain_peft(suite_dir, tiny_model_dir, tmp_path):
    """The header and load checks know peft's other layouts: DoRA's magnitude vectors, a
    modules_to_save copy, IA3, prefix tuning's embeddings (loaded outside the state dict).
    IA3 after the modules_to_save LoRA is another way the base could change: unloading the
    LoRA type hands back the adapter's copy of lm_head, not the base's. Prefix tuning is
    checked for loading only: its batched losses are not plain peft's one-item ones (up to
    0.023 apart on this model, as before these checks)."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kinds = {
        "dora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                           init_lora_weights=False, task_type="CAUSAL_LM"),
        "mts": LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                          init_lora_weights=False, task_type="CAUSAL_LM"),
        "prefix": PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    }
    made = {}
    for name, cfg in kinds.items():
        torch.manual_seed(3)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
        if name == "mts":  # a copy equal to the base's head would change nothing
            with torch.no_grad():
                model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
        model.save_pretrained(tmp_path / name)
        made[name] = tmp_path / name
        if name == "mts":
            made["ia3"] = _peft_adapter(tiny_model_dir, tmp_path / "ia3", "ia3")
    suite = eval_only(suite_dir)
    args = [a for name, path in made.items() for a in ("--adapter", f"{name}={path}")]
    res = runner.invoke(app, ["validate", str(suite), *args])
    assert res.exit_code == 0, res.output
    run = _run(suite, suite_dir / "o", *made.items())
    assert run.record["warnings"] == []  # none of them writes into the base
    base = _losses(run, "baseline")
    for name, path in made.items():
        assert run.record["arms"][name]["status"] == "success", name
        if name == "prefix":
            continue
        theirs = _plain_losses(_fresh(tiny_model_dir, path), tiny_model_dir, suite)
        assert _gap(_losses(run, name), theirs) < 1e-4, name
        assert _gap(_losses(run, name), base) > 1e-3, name  # a real change
