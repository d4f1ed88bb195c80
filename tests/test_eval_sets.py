"""Extra eval sets ([eval.sets.<name>]) through the CLI on the tiny model: every arm scored on
each set, `<set>/<metric>` keys in arms and comparisons, rows tagged with their set, numbers
checked against plain transformers and sacrebleu, and `harness gate` on the second set."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF
from typer.testing import CliRunner

from harness.cli import app
from harness.run import encoding, textmetrics
from harness.rundir.record import load_run
from harness.suite.suitefile import load_suite

from .conftest import ASSETS, cli_run, tiny_suite_text

runner = CliRunner()

GENERAL = [
    "The library reads the file in chunks and hands each chunk to the parser.",
    "A queue keeps the tasks in the order they arrived until a worker is free.",
    "Rivers carry sand to the sea, where it settles into long and shallow banks.",
    "The committee met on Monday and agreed to publish the report in spring.",
    "Most birds in the valley leave before the first frost and return in April.",
    "Each record holds a name, a date and the amount that was paid.",
]
SETS = '''
[eval.sets.general]
path = "general.jsonl"
fields = { text = "text" }
response_template = "{{ text }}"
forgetting = true

[eval.sets.qa]
path = "instruct.jsonl"
fields = { instruction = "instruction", output = "output" }
prompt_template = "{{ instruction }}\\n"
response_template = "{{ output }}"
eval_size = 6
seed = 3
metrics = ["loss", "exact_match", "bleu", "chrf"]
'''


def write(tmp_path: Path, model_dir: Path, extra: str = SETS) -> Path:
    shutil.copy(ASSETS / "instruct.jsonl", tmp_path / "instruct.jsonl")
    (tmp_path / "general.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in GENERAL), encoding="utf-8")
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_suite_text(model_dir) + extra, encoding="utf-8")
    return path


run = cli_run


@pytest.fixture(scope="module")
def two_set_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sets")
    suite = write(d, tiny_model_dir)
    return suite, run(suite, d / "results")


def test_every_arm_is_scored_on_each_set(two_set_run):
    _, path = two_set_run
    rec = load_run(path).record
    for arm in ("baseline", "lora"):
        m = rec["arms"][arm]["metrics"]
        for key in ("loss", "general/loss", "general/perplexity", "qa/loss", "qa/exact_match",
                    "qa/bleu", "qa/chrf"):
            assert isinstance(m[key], float), (arm, key)
        assert "general/rougeL" not in m  # not asked of that set
    sets = rec["data"]["eval_sets"]
    assert sets["general"]["n_items"] == len(GENERAL) and sets["qa"]["n_items"] == 6
    assert sets["general"]["forgetting"] is True and sets["qa"]["forgetting"] is False
    rows = load_run(path).predictions
    assert {r["set"] for r in rows} == {None, "general", "qa"}
    assert sum(r["set"] == "general" for r in rows) == 2 * len(GENERAL)


def test_set_numbers_equal_plain_transformers_and_sacrebleu(two_set_run, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    suite, path = two_set_run
    loaded = load_run(path)
    spec = load_suite(suite).eval.sets["general"].as_data()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [r for r in loaded.items("baseline") if r["set"] == "general"]
    nll = tokens = 0.0
    for r in rows:
        from harness.suite.prompts import Example

        enc = encoding.encode(Example(r["id"], r["prompt"], r["reference"]), tok, spec)
        ids = torch.tensor([enc.input_ids])
        labels = torch.tensor([enc.labels])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        lp = torch.log_softmax(logits.double(), -1)
        target = labels[0, 1:]
        keep = target != -100
        item = -lp[keep].gather(1, target[keep][:, None]).sum().item()
        assert r["nll_sum"] == pytest.approx(item, rel=1e-4)
        nll, tokens = nll + item, tokens + int(keep.sum())
    m = loaded.record["arms"]["baseline"]["metrics"]
    assert m["general/loss"] == pytest.approx(nll / tokens, rel=1e-4)
    assert m["general/perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    for arm in ("baseline", "lora"):
        qa = [r for r in loaded.items(arm) if r["set"] == "qa"]
        preds, refs = [r["prediction"] for r in qa], [r["reference"] for r in qa]
        arm_m = loaded.record["arms"][arm]["metrics"]
        assert arm_m["qa/bleu"] == pytest.approx(BLEU().corpus_score(preds, [refs]).score,
                                                 abs=1e-9)
        assert arm_m["qa/chrf"] == pytest.approx(CHRF().corpus_score(preds, [refs]).score,
                                                 abs=1e-9)
        em = sum(textmetrics.normalize(p) == textmetrics.normalize(r) for p, r in zip(preds, refs))
        assert arm_m["qa/exact_match"] == pytest.approx(em / len(qa))


def test_comparisons_are_paired_within_each_set(two_set_run):
    _, path = two_set_run
    rows = {r["metric"]: r for r in load_run(path).record["comparisons"]}
    assert rows["general/loss"]["paired"] and rows["general/loss"]["n_items"] == len(GENERAL)
    assert rows["qa/bleu"]["n_items"] == 6 and rows["qa/bleu"]["test"] == "label-swap"
    assert rows["qa/exact_match"]["test"] == "sign-flip"
    assert rows["loss"]["n_items"] == 12  # the suite's own set is unchanged


def test_report_shows_each_set_and_the_forgetting_headline(two_set_run):
    _, path = two_set_run
    md = (path / "report.md").read_text(encoding="utf-8")
    assert "Perplexity (general)" in md and "BLEU (qa)" in md
    assert "Forgetting check" in md and f"general ({len(GENERAL)} items)" in md


def test_gate_on_the_second_set(two_set_run, tmp_path):
    suite, first = two_set_run
    other = run(suite, tmp_path / "results", "train.max_steps=2")
    same = runner.invoke(app, ["gate", str(first), "--baseline", str(first),
                               "--rule", "general/loss:+0.1"])
    assert same.exit_code == 0, same.output
    assert "general/loss" in same.output
    codes = {runner.invoke(app, ["gate", str(a), "--baseline", str(b), "--rule",
                                 "general/loss:+0"]).exit_code
             for a, b in ((first, other), (other, first))}
    assert codes == {0, 1}  # whichever run forgot more on the general set fails


def test_gate_refuses_a_set_scored_on_other_items(two_set_run, tmp_path):
    suite, first = two_set_run
    other = run(suite, tmp_path / "results", "eval.sets.qa.seed=9", "train.max_steps=1")
    res = runner.invoke(app, ["gate", str(other), "--baseline", str(first),
                              "--rule", "qa/bleu:-1"])
    assert res.exit_code == 2
    assert "qa" in res.output and "other items" in res.output


def test_a_bad_set_names_its_key(tmp_path, tiny_model_dir):
    suite = write(tmp_path, tiny_model_dir, SETS.replace('fields = { text = "text" }',
                                                         'fields = { text = "body" }'))
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "eval.sets.general" in res.output and "body" in res.output
    assert not (tmp_path / "r" / "tiny").exists()


def test_a_bad_row_of_a_set_names_its_file_as_written(tmp_path, tiny_model_dir):
    """A set read from `data.jsonl`: its error names that file and the set's own key, and
    nothing in the message is rewritten (a file or template text with `data.` in it stays)."""
    suite = write(tmp_path, tiny_model_dir, SETS.replace('path = "general.jsonl"',
                                                         'path = "data.jsonl"'))
    bad = tmp_path / "data.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"other": 1}) + "\n",
                   encoding="utf-8")
    res = runner.invoke(app, ["validate", str(suite)])
    assert res.exit_code == 2, res.output
    line = next(ln for ln in res.output.splitlines() if "has no value" in ln)
    assert line == (f"error: {suite}: suite 'tiny': eval.sets.general.path: {bad}:2: item "
                    "row-1 has no value for column 'text' (absent or null), which "
                    "eval.sets.general.response_template renders"), line


def test_set_names_must_be_folder_names(tmp_path, tiny_model_dir):
    suite = write(tmp_path, tiny_model_dir, SETS.replace("[eval.sets.qa]", '[eval.sets."a/b"]'))
    res = runner.invoke(app, ["validate", str(suite)])
    assert res.exit_code == 2 and "a/b" in res.output


def test_stored_numbers_of_every_set_are_checked_against_their_rows(two_set_run):
    """What merge and resume check: each set's metrics (BLEU and chrF from summed n-gram
    counts included) come back from that set's rows; one edited by 0.5 BLEU does not."""
    from harness import metrics as M

    loaded = load_run(two_set_run[1])
    for arm in ("baseline", "lora"):
        stored = loaded.record["arms"][arm]["metrics"]
        assert M.check_rows(arm, stored, loaded.items(arm)) is None, arm
    stored = {**loaded.record["arms"]["lora"]["metrics"]}
    stored["qa/bleu"] += 0.5
    d = M.check_rows("lora", stored, loaded.items("lora"))
    assert d is not None and (d.metric, d.n_rows) == ("qa/bleu", 6)
    assert d.stored - d.recomputed == pytest.approx(0.5)
