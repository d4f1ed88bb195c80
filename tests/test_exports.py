"""Exports as arms, through the CLI on the tiny model: `--export lora=merged` (or
`[[exports]]`) evaluates the adapter merged into the base as arm `lora+merged`, paired against
`lora`: per-item losses equal the (unmerged) adapter's, greedy text identical, the whole gain
kept; the kept folder loads in plain transformers with the recorded losses and sha256; an
existing adapter exports too; bad input is one line and exit 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import CHAT_TEMPLATE, cli_run
from .test_noop import _adapter, _with_adapters

runner = CliRunner()
FAST = ["train.max_steps=6", "eval.merge_adapter=false", "stats.n_resamples=200"]


def _rows(run: Path, arm: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "predictions.jsonl").open(encoding="utf-8")]
    return {r["id"]: r for r in rows if r["arm"] == arm and r["set"] is None}


def _record(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))


def _plain_losses(folder: Path, run: Path, gguf_file: str | None = None) -> dict[str, float]:
    """Mean NLL of each eval item's reference tokens: the kept folder loaded with
    AutoModelForCausalLM alone (a GGUF file through transformers' GGUF loader, tokenized with
    the run's own tokenizer), the items' prompt + reference as the run tokenized them
    (harness's encoding, as tests of adapters do), one plain forward each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.run import encoding
    from harness.suite import data, suitefile

    suite = suitefile.load_suite(run.parent.parent.parent / "tiny.toml")
    tok = AutoTokenizer.from_pretrained(suite.model.name_or_path if gguf_file else folder)
    items, _ = encoding.encode_all(data.load_splits(suite).eval, tok, suite.data)
    extra = {"gguf_file": gguf_file, "dtype": torch.float32} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(folder, **extra).eval()
    out = {}
    with torch.inference_mode():
        for e in items:
            ids = torch.tensor([e.input_ids])
            logits = model(ids).logits[0, :-1].float()
            labels = torch.tensor(e.labels[1:])
            keep = labels != -100
            out[e.id] = float(torch.nn.functional.cross_entropy(logits[keep], labels[keep]))
    return out


def test_a_merged_export_is_the_adapter_and_keeps_its_gain(suite_dir):
    suite = suite_dir / "tiny.toml"
    suite.write_text(suite.read_text(encoding="utf-8")
                     + '\n[[exports]]\nfrom = "lora"\nformat = "merged"\nkeep = true\n',
                     encoding="utf-8")
    run = cli_run(suite, suite_dir / "out", *FAST)
    record = _record(run)
    arm = record["arms"]["lora+merged"]
    assert arm["source"] == "export" and arm["status"] == "success"
    lora, merged = _rows(run, "lora"), _rows(run, "lora+merged")
    for i, r in lora.items():
        assert merged[i]["loss"] == pytest.approx(r["loss"], rel=1e-5)
        assert merged[i]["prediction"] == r["prediction"]
    (pair,) = record["export_comparisons"]
    assert pair["agreement"] == {"same": len(lora), "n_items": len(lora), "share": 1.0}
    loss = next(r for r in pair["retained"] if r["metric"] == "loss")
    assert loss["retained"] == pytest.approx(1.0, abs=1e-4)
    assert loss["ci_low"] == pytest.approx(1.0, abs=1e-3) and loss["n_resamples"] == 200
    kept = run / "exports" / "lora+merged"
    export = arm["export"]
    digest = hashlib.sha256(b"".join(p.read_bytes()
                                     for p in sorted(kept.glob("*.safetensors"))))
    assert export["sha256"] == digest.hexdigest()
    assert export["bytes"] == sum(p.stat().st_size for p in kept.glob("*.safetensors"))
    assert export["from"] == "lora" and export["runtime"] == "transformers"
    plain = _plain_losses(kept, run)
    assert {i: merged[i]["loss"] for i in plain} == pytest.approx(plain, rel=1e-5)
    comparisons = [c for c in record["comparisons"] if c["candidate"] == "lora+merged"]
    assert any(c["metric"] == "loss" for c in comparisons)  # against the zero-shot arm too
    report = (run / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Deployment"):report.index("## Zero-shot vs adapter")]
    assert "### lora+merged (merged of lora, transformers)" in section
    assert f"same greedy text on {len(lora)} of {len(lora)} items" in section
    # the base as loaded: the tiny Llama's float32 parameters and buffers, counted apart
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(record["config"]["model"]["name_or_path"])
    assert export["base_bytes"] == sum(t.numel() * t.element_size()
                                       for t in [*base.parameters(), *base.buffers()])
    loss_line = next(line for line in section.splitlines() if line.startswith("| Loss |"))
    assert "| 100.0% |" in loss_line
    assert 'id="deployment"' in (run / "report.html").read_text(encoding="utf-8")


def test_an_existing_adapter_exports_from_the_command_line(suite_dir, tiny_model_dir):
    made = {"ext": _adapter(tiny_model_dir, suite_dir / "ext", "random")}
    run = cli_run(_with_adapters(suite_dir, made), suite_dir / "out", "stats.n_resamples=200")
    assert "ext+merged" not in _record(run)["arms"]
    res = runner.invoke(app, ["run", str(suite_dir / "adapters.toml"), "--out",
                              str(suite_dir / "out2"), "--export", "ext=merged"])
    assert res.exit_code == 0, res.output
    (run2,) = list((suite_dir / "out2" / "tiny").iterdir())
    ext, merged = _rows(run2, "ext"), _rows(run2, "ext+merged")
    assert {i: r["loss"] for i, r in merged.items()} == pytest.approx(
        {i: r["loss"] for i, r in ext.items()}, rel=1e-5)
    assert _record(run2)["arms"]["ext+merged"]["export"]["path"] is None  # not kept
    assert not (run2 / "exports").exists()


@pytest.mark.parametrize("export, needles", [
    ("nosuch=merged", ("exports[0].from = 'nosuch'", "lora")),
    ("lora=gguf-q9", ("format",)),
    ("lora", ("--export 'lora'", "ARM=FORMAT")),
])
def test_a_bad_export_is_one_line_and_exit_2(suite_dir, export, needles):
    res = runner.invoke(app, ["run", str(suite_dir / "tiny.toml"), "--out",
                              str(suite_dir / "out"), "--export", export])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert any(all(n in line for n in needles) for line in res.output.splitlines()), res.output
    assert not (suite_dir / "out").exists() or not any((suite_dir / "out").rglob("run.json"))


def test_harness_export_writes_a_folder_that_gives_the_recorded_losses(suite_dir):
    """`harness export RUN lora --format merged --out DIR`: the folder loads in plain
    transformers and gives the per-item losses the run recorded for `lora` (evaluated
    unmerged); its card names the base, the adapter's sha256 and the run."""
    run = cli_run(suite_dir / "tiny.toml", suite_dir / "out", *FAST)
    out = suite_dir / "deploy"
    res = runner.invoke(app, ["export", str(run), "lora", "--format", "merged", "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    plain = _plain_losses(out, run)
    lora = _rows(run, "lora")
    assert plain == pytest.approx({i: lora[i]["loss"] for i in plain}, rel=1e-5)
    card = (out / "README.md").read_text(encoding="utf-8")
    adapter_sha = hashlib.sha256(
        (run / "adapters" / "lora" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert adapter_sha in card and _record(run)["run_id"] in card
    assert f"base_model: {_record(run)['config']['model']['name_or_path']}" in card


@pytest.mark.parametrize("args, needles", [
    (["baseline"], ("arm 'baseline'", "lora")),
    (["nosuch"], ("arm 'nosuch'", "lora")),
    (["lora", "--format", "gguf-q9_9"], ("--format 'gguf-q9_9'", "merged")),
    (["lora", "--out", "FULL"], ("not empty",)),
])
def test_a_bad_harness_export_is_one_line_and_exit_2(suite_dir, args, needles):
    run = cli_run(suite_dir / "tiny.toml", suite_dir / "out", "train.max_steps=2")
    full = suite_dir / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine", encoding="utf-8")
    args = [str(full) if a == "FULL" else a for a in args]
    out = [] if "--out" in args else ["--out", str(suite_dir / "new")]
    res = runner.invoke(app, ["export", str(run), *args, *out])
    assert res.exit_code == 2, res.output
    assert any(all(n in line for n in needles) for line in res.output.splitlines()), res.output
    assert not (suite_dir / "new").exists()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_quantized_exports_are_measured_and_load_as_recorded(qlora_model_dir, tmp_path):
    """merged-nf4 and merged-int8: the merged weights loaded back through bitsandbytes. Each
    is an arm whose retained share of the adapter's loss gain is measured with its CI; the
    kept nf4 folder loads in plain transformers (quantized, from its own config) with the
    losses the run recorded."""
    pytest.importorskip("bitsandbytes")
    from .conftest import ASSETS, tiny_suite_text

    (tmp_path / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    suite = tmp_path / "tiny.toml"
    suite.write_text(tiny_suite_text(qlora_model_dir) + '''
[[exports]]
from = "lora"
format = "merged-nf4"
keep = true

[[exports]]
from = "lora"
format = "merged-int8"
''', encoding="utf-8")
    run = cli_run(suite, tmp_path / "out", *FAST)
    record = _record(run)
    lora = _rows(run, "lora")
    for fmt in ("merged-nf4", "merged-int8"):
        arm = record["arms"][f"lora+{fmt}"]
        assert arm["export"]["runtime"] == "transformers+bitsandbytes"
        rows = _rows(run, f"lora+{fmt}")
        shift = max(abs(rows[i]["loss"] - r["loss"]) / r["loss"] for i, r in lora.items())
        assert 0 < shift < 0.05  # quantized: close to the adapter, not equal
        pair = next(p for p in record["export_comparisons"] if p["export"] == f"lora+{fmt}")
        loss = next(r for r in pair["retained"] if r["metric"] == "loss")
        assert loss["ci_low"] <= loss["retained"] <= loss["ci_high"]
    kept = run / "exports" / "lora+merged-nf4"
    assert json.loads((kept / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    plain = _plain_losses(kept, run)
    nf4 = _rows(run, "lora+merged-nf4")
    assert plain == pytest.approx({i: nf4[i]["loss"] for i in plain}, rel=1e-4)


def _gguf_text(path: Path, key: str) -> str:
    """A string field of a GGUF file, read with the gguf package's own reader."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def test_gguf_exports_are_read_back_by_transformers(suite_dir):
    """gguf-f16 is the merged weights to fp16 rounding; q8_0 and q4_0 lose a measured share
    of the gain; the kept q8_0 file's metadata reads back with gguf's reader, and transformers'
    GGUF loader gives the losses the run recorded for it."""
    suite = suite_dir / "tiny.toml"
    suite.write_text(suite.read_text(encoding="utf-8")
                     + '\n[[exports]]\nfrom = "lora"\nformat = "gguf-q8_0"\nkeep = true\n',
                     encoding="utf-8")
    res = runner.invoke(app, ["run", str(suite), "--out", str(suite_dir / "out"),
                              *[x for s in FAST for x in ("--set", s)],
                              "--export", "lora=merged", "--export", "lora=gguf-f16",
                              "--export", "lora=gguf-q4_0"])
    assert res.exit_code == 0, res.output
    (run,) = list((suite_dir / "out" / "tiny").iterdir())
    record = _record(run)
    merged, f16 = _rows(run, "lora+merged"), _rows(run, "lora+gguf-f16")
    assert {i: r["loss"] for i, r in f16.items()} == pytest.approx(
        {i: r["loss"] for i, r in merged.items()}, rel=1e-3)
    kept = {}
    for fmt in ("gguf-f16", "gguf-q8_0", "gguf-q4_0"):
        info = record["arms"][f"lora+{fmt}"]["export"]
        assert info["runtime"].startswith("transformers-gguf")
        pair = next(p for p in record["export_comparisons"] if p["export"] == f"lora+{fmt}")
        kept[fmt] = next(r for r in pair["retained"] if r["metric"] == "loss")["retained"]
    assert kept["gguf-q4_0"] != pytest.approx(1.0, abs=1e-6)  # q4_0 moves the numbers
    path = run / "exports" / "lora+gguf-q8_0" / "model.gguf"
    assert _gguf_text(path, "general.architecture") == "llama"
    assert _gguf_text(path, "tokenizer.ggml.model") == "gpt2"
    assert _gguf_text(path, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert record["arms"]["lora+gguf-q8_0"]["export"]["sha256"] == hashlib.sha256(
        path.read_bytes()).hexdigest()
    plain = _plain_losses(path.parent, run, gguf_file="model.gguf")
    q8 = _rows(run, "lora+gguf-q8_0")
    assert plain == pytest.approx({i: q8[i]["loss"] for i in plain}, rel=1e-5)


def test_a_gguf_export_of_an_architecture_the_writer_cannot_map_is_refused(tmp_path):
    """A GPT-2 model: `validate` is exit 2 naming the formats that would work."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from .conftest import ASSETS, build_tokenizer, tiny_suite_text

    tok = build_tokenizer()
    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2,
                               n_positions=256)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (tmp_path / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    text = tiny_suite_text(model_dir).replace('["q_proj", "v_proj", "lm_head"]', '["c_attn"]')
    (tmp_path / "s.toml").write_text(
        text + '\n[[exports]]\nfrom = "lora"\nformat = "gguf-q8_0"\n', encoding="utf-8")
    res = runner.invoke(app, ["validate", str(tmp_path / "s.toml")])
    assert res.exit_code == 2, res.output
    assert "gguf-q8_0 of a gpt2 model" in res.output and "merged-nf4" in res.output


def test_harness_export_writes_a_gguf_file_transformers_reads(suite_dir):
    run = cli_run(suite_dir / "tiny.toml", suite_dir / "out", *FAST)
    out = suite_dir / "deploy"
    res = runner.invoke(app, ["export", str(run), "lora", "--format", "gguf-q8_0", "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.gguf"]
    assert 'gguf_file="model.gguf"' in (out / "README.md").read_text(encoding="utf-8")
    assert _gguf_text(out / "model.gguf", "general.architecture") == "llama"
    plain = _plain_losses(out, run, gguf_file="model.gguf")
    lora = _rows(run, "lora")
    assert plain == pytest.approx({i: lora[i]["loss"] for i in plain}, rel=1e-2)  # q8_0
