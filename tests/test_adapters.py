"""Existing adapters as arms: made with plain peft here, evaluated by `harness run` on one base
loaded once, numbers checked against an independent PeftModel forward per item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.run import encoding, modeling
from harness.rundir import results
from harness.rundir.record import load_run, read_jsonl
from harness.suite import data, suitefile

from .test_bad_input import check_refused

runner = CliRunner()
REPO = Path(__file__).parent.parent


def _peft_adapter(model_dir: Path, out: Path, kind: str) -> Path:
    """An adapter trained nowhere: peft's own constructors with random (non-identity) init."""
    import torch
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed({"lora_qv": 1, "lora_ko": 2, "ia3": 3}[kind])
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = {
        "lora_qv": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                              init_lora_weights=False, task_type="CAUSAL_LM"),
        "lora_ko": LoraConfig(r=8, lora_alpha=8, target_modules=["k_proj", "o_proj"],
                              init_lora_weights=False, task_type="CAUSAL_LM"),
        "ia3": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                         feedforward_modules=["down_proj"], init_ia3_weights=False,
                         task_type="CAUSAL_LM"),
    }[kind]
    model = get_peft_model(base, cfg)
    if kind == "ia3":  # IA3's random init is near 1: scale so the adapter changes the loss
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "ia3_l" in n:
                    p.mul_(3.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {k: _peft_adapter(tiny_model_dir, root / k, k) for k in ("lora_qv", "lora_ko", "ia3")}


def eval_only(suite_dir: Path) -> Path:
    text = (suite_dir / "tiny.toml").read_text()
    p = suite_dir / "eval.toml"
    p.write_text(text[: text.index("[train]")] + text[text.index("[eval]"):])
    return p


def independent_losses(model_dir: Path, adapter: Path, suite_path: Path) -> dict[str, float]:
    """Mean NLL per eval item: a fresh base, PeftModel.from_pretrained, one plain forward each."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    suite = suitefile.load_suite(suite_path)
    splits = data.load_splits(suite)
    tok = AutoTokenizer.from_pretrained(model_dir)
    items, _ = encoding.encode_all(splits.eval, tok, suite.data)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
    model.eval()
    out = {}
    with torch.no_grad():
        for ex, enc in zip(splits.eval, items):
            ids = torch.tensor([enc.input_ids])
            out[ex.id] = float(model(input_ids=ids, labels=torch.tensor([enc.labels])).loss)
    return out


def test_existing_adapters_on_one_base_match_independent_peft(suite_dir, tiny_model_dir, made,
                                                              monkeypatch):
    loads = []
    real = modeling.load_model
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    suite = eval_only(suite_dir)
    args = ["run", str(suite), "--out", str(suite_dir / "out")]
    for name, path in made.items():
        args += ["--adapter", f"{name}={path}"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(loads) == 1  # the base, once, for the baseline and all three adapters
    (run,) = (suite_dir / "out" / "tiny").iterdir()
    loaded = load_run(run)
    rec = loaded.record
    assert list(rec["arms"]) == ["baseline", "lora_qv", "lora_ko", "ia3"]
    for name, path in made.items():
        arm = rec["arms"][name]
        assert arm["source"] == "existing" and arm["status"] == "success"
        ours = {r["id"]: r["loss"] for r in loaded.items(name)}
        theirs = independent_losses(tiny_model_dir, path, suite)
        assert ours.keys() == theirs.keys()
        assert max(abs(ours[k] - theirs[k]) for k in ours) < 1e-4, name
        base = {r["id"]: r["loss"] for r in loaded.items("baseline")}
        assert max(abs(ours[k] - base[k]) for k in ours) > 1e-3, name  # a real change
        origin = arm["origin"]
        assert origin["peft_type"] == ("IA3" if name == "ia3" else "LORA")
        assert origin["params"] > 0 and len(origin["sha256"]) == 64
    assert rec["arms"]["lora_ko"]["origin"]["r"] == 8
    assert {c["candidate"] for c in rec["comparisons"]} == set(made)


def test_adapters_table_in_a_suite(suite_dir, made):
    text = (suite_dir / "tiny.toml").read_text()
    text += f'\n[[adapters]]\nname = "ext"\npath = {json.dumps(str(made["lora_qv"]))}\n'
    (suite_dir / "tiny.toml").write_text(text)
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(suite_dir / "o"),
                              "--set", "train.max_steps=2"])
    assert res.exit_code == 0, res.output
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    arms = load_run(run).record["arms"]
    assert arms["lora"]["source"] == "trained" and arms["ext"]["source"] == "existing"
    assert arms["baseline"]["source"] == "zero-shot"


def _broken(made: dict[str, Path], tmp_path: Path, edit) -> Path:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(made["lora_qv"], bad)
    cfg = bad / "adapter_config.json"
    cfg.write_text(edit(cfg.read_text()))
    return bad


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such adapter folder"),
    ("not_json", "is not valid JSON"),
    ("targets", "['nonexistent_proj'] are not in LlamaForCausalLM"),
    ("peft_type", "peft_type 'FOO' is not one this peft can load"),
])
def test_bad_adapters_are_refused(suite_dir, made, tmp_path, case, needle):
    edits = {
        "not_json": lambda t: t[:-5],
        "targets": lambda t: json.dumps({**json.loads(t), "target_modules": ["nonexistent_proj"]}),
        "peft_type": lambda t: json.dumps({**json.loads(t), "peft_type": "FOO"}),
    }
    path = tmp_path / "nope" if case == "missing" else _broken(made, tmp_path, edits[case])
    check_refused(suite_dir, "adapters.bad", needle, extra=["--adapter", f"bad={path}"])


def test_adapter_on_another_base_is_a_warning(suite_dir, made, tmp_path):
    path = _broken(made, tmp_path, lambda t: json.dumps(
        {**json.loads(t), "base_model_name_or_path": "someone/other-model"}))
    res = runner.invoke(app, ["validate", str(eval_only(suite_dir)), "--adapter", f"x={path}"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "someone/other-model" in res.output


def test_ci_suite_with_an_earlier_runs_adapter_then_gate(tmp_path):
    ci = REPO / "suites" / "ci.toml"
    first = runner.invoke(app, ["run", str(ci), "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    (earlier,) = (tmp_path / "a" / "ci").iterdir()
    res = runner.invoke(app, ["run", str(ci), "--out", str(tmp_path / "b"),
                              "--adapter", f"mine={earlier / 'adapters' / 'lora'}"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "b" / "ci").iterdir()
    again = load_run(run)
    before = {r["id"]: r["loss"] for r in load_run(earlier).items("lora")}
    mine = {r["id"]: r["loss"] for r in again.items("mine")}
    # the same adapter, unmerged on the shared base vs merged for eval: same numbers
    assert max(abs(mine[k] - before[k]) for k in mine) < 1e-4
    gate = runner.invoke(app, ["gate", str(run), "--baseline", str(REPO / "results" /
                                                                   "baselines" / "ci")])
    assert gate.exit_code == 0, gate.output


def test_plan_lists_existing_adapters_without_loading_weights(suite_dir, made, monkeypatch):
    import torch

    def no_weights(*a, **k):
        raise AssertionError("plan must not load weights")

    monkeypatch.setattr(torch, "load", no_weights)
    monkeypatch.setattr(modeling, "load_model", no_weights)
    res = runner.invoke(app, ["plan", str(eval_only(suite_dir)),
                              "--adapter", f"qv={made['lora_qv']}",
                              "--adapter", f"ia3={made['ia3']}"])
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    qv = sum(t.numel() for t in load_file(made["lora_qv"] / "adapter_model.safetensors").values())
    lines = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln.strip()}
    assert lines["qv"][1:4] == ["LORA", "4", f"{qv:,}"]
    assert lines["ia3"][1] == "IA3"


def test_report_says_where_existing_arms_came_from(suite_dir, made):
    res = runner.invoke(app, ["run", str(eval_only(suite_dir)), "--out", str(suite_dir / "o"),
                              "--adapter", f"qv={made['lora_qv']}"])
    assert res.exit_code == 0, res.output
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    origin = load_run(run).record["arms"]["qv"]["origin"]
    for report in ("report.md", "report.html"):
        text = (run / report).read_text()
        assert "Existing adapters" in text and origin["sha256"] in text, report
        assert str(made["lora_qv"]) in text and "LORA" in text


def test_eval_only_skips_the_suite_training(suite_dir, made):
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out", str(suite_dir / "o"),
                              "--eval-only", "--adapter", f"qv={made['lora_qv']}"])
    assert res.exit_code == 0, res.output
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    rec = load_run(run).record
    assert list(rec["arms"]) == ["baseline", "qv"] and rec["training"] == {}
    assert read_jsonl(run / results.TRAIN_LOG_FILE) == []


def test_qlora_adapter_is_evaluated_on_the_4bit_base(qlora_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from .conftest import ASSETS, tiny_suite_text

    torch.manual_seed(4)
    adapter = tmp_path / "qlora"
    get_peft_model(AutoModelForCausalLM.from_pretrained(qlora_model_dir), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
        task_type="CAUSAL_LM")).save_pretrained(adapter)
    text = tiny_suite_text(qlora_model_dir)
    text = text[: text.index("[train]")] + text[text.index("[eval]"):]
    text = text.replace("[data]", '[model.quantization]\nbits = 4\ncompute_dtype = "float32"\n\n'
                        "[data]", 1).replace("[model]", '[model]\ndtype = "float32"', 1)
    (tmp_path / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    (tmp_path / "q.toml").write_text(text)
    res = runner.invoke(app, ["run", str(tmp_path / "q.toml"), "--out", str(tmp_path / "o"),
                              "--adapter", f"q={adapter}", "--set", "eval.max_new_tokens=2"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "o" / "tiny").iterdir()
    ours = {r["id"]: r["loss"] for r in load_run(run).items("q")}
    suite = suitefile.load_suite(tmp_path / "q.toml")
    splits = data.load_splits(suite)
    tok = AutoTokenizer.from_pretrained(qlora_model_dir)
    items, _ = encoding.encode_all(splits.eval, tok, suite.data)
    base = AutoModelForCausalLM.from_pretrained(
        qlora_model_dir, device_map={"": "cpu"}, dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.float32))
    model = PeftModel.from_pretrained(base, adapter).eval()
    assert any("4bit" in type(m).__name__ for m in model.modules())
    with torch.no_grad():
        theirs = {ex.id: float(model(input_ids=torch.tensor([e.input_ids]),
                                     labels=torch.tensor([e.labels])).loss)
                  for ex, e in zip(splits.eval, items)}
    assert max(abs(ours[k] - theirs[k]) for k in ours) < 1e-3


def test_adapter_that_added_tokens_uses_its_tokenizer_and_leaves_the_base(suite_dir,
                                                                          tiny_model_dir):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(5)
    adapter = suite_dir / "grown"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<bulletin>", "</bulletin>"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.resize_token_embeddings(len(tok))
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                    modules_to_save=["embed_tokens", "lm_head"],
                                    init_lora_weights=False, task_type="CAUSAL_LM")
                   ).save_pretrained(adapter)
    tok.save_pretrained(adapter)
    text = (suite_dir / "tiny.toml").read_text().replace(
        'response_template = "{{ output }}"', 'response_template = "<bulletin>{{ output }}"')
    (suite_dir / "tiny.toml").write_text(text)
    suite = eval_only(suite_dir)
    res = runner.invoke(app, ["run", str(suite), "--out", str(suite_dir / "o"),
                              "--adapter", f"grown={adapter}"])
    assert res.exit_code == 0, res.output
    (run,) = (suite_dir / "o" / "tiny").iterdir()
    loaded = load_run(run)
    s = suitefile.load_suite(suite)
    splits = data.load_splits(s)
    items, _ = encoding.encode_all(splits.eval, tok, s.data)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fresh.resize_token_embeddings(len(tok))
    model = PeftModel.from_pretrained(fresh, adapter).eval()
    with torch.no_grad():
        theirs = {ex.id: float(model(input_ids=torch.tensor([e.input_ids]),
                                     labels=torch.tensor([e.labels])).loss)
                  for ex, e in zip(splits.eval, items)}
    ours = {r["id"]: r["loss"] for r in loaded.items("grown")}
    assert max(abs(ours[k] - theirs[k]) for k in ours) < 1e-4
    # the added token is one token for the adapter's arm, several bytes for the base's
    n_base = {r["id"]: r["n_tokens"] for r in loaded.items("baseline")}
    n_grown = {r["id"]: r["n_tokens"] for r in loaded.items("grown")}
    assert all(n_grown[k] < n_base[k] for k in n_base)


def test_hub_adapter_offline_is_unchecked_in_validate_and_refused_by_run(suite_dir):
    suite = eval_only(suite_dir)
    res = runner.invoke(app, ["validate", str(suite), "--adapter", "hub=someone/no-such-adapter"])
    assert res.exit_code == 0, res.output
    assert "not checked (offline)" in res.output and "someone/no-such-adapter" in res.output
    ran = runner.invoke(app, ["run", str(suite), "--out", str(suite_dir / "o"),
                              "--adapter", "hub=someone/no-such-adapter"])
    assert ran.exit_code == 2 and "adapters.hub" in ran.output
    assert not (suite_dir / "o").exists()
