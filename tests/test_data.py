"""Loading, field mapping, sandboxed templates, seeded disjoint selection, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import DataError
from harness.suite import config, data, suitefile

from .conftest import ASSETS

TINYLLAMA_ALPACA_PROMPT = """### Instruction:
{{ instruction }}

{% if input %}### Input:
{{ input }}

{% endif %}### Response:
"""


def suite(tmp_path: Path, extra: str = "", **data_keys) -> config.Suite:
    keys = {"path": "instruct.jsonl", "prompt_template": TINYLLAMA_ALPACA_PROMPT,
            "response_template": "{{ output }}", "eval_size": 10, **data_keys}
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items() if v is not None)
    text = f'name = "d"\n[model]\nname_or_path = "org/m"\n[data]\n{body}\n{extra}'
    (tmp_path / "s.toml").write_text(text)
    if not (tmp_path / "instruct.jsonl").exists():
        (tmp_path / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    return suitefile.load_suite(tmp_path / "s.toml")


def test_tinyllama_alpaca_template_drops_empty_input(tmp_path):
    splits = data.load_splits(suite(tmp_path))
    every = splits.eval + splits.train
    with_input = [e for e in every if "### Input:" in e.prompt]
    without = [e for e in every if "### Input:" not in e.prompt]
    assert with_input and without  # the asset has both kinds (every third input is empty)
    assert all(e.prompt.startswith("### Instruction:\n") for e in every)
    assert all(e.prompt.endswith("### Response:\n") for e in every)
    assert "\n\n### Response:" in without[0].prompt and "### Input:\n\n" not in without[0].prompt


def test_selection_is_seeded_disjoint_and_eval_stable(tmp_path):
    a = data.load_splits(suite(tmp_path, validation_size=5, train_size=20))
    b = data.load_splits(suite(tmp_path, validation_size=5, train_size=40))
    ids = lambda xs: [x.id for x in xs]  # noqa: E731
    assert ids(a.eval) == ids(b.eval) and a.eval_fingerprint == b.eval_fingerprint
    assert not set(ids(a.eval)) & set(ids(a.train))
    assert not set(ids(a.eval)) & set(ids(a.validation))
    assert len(a.train) == 20 and len(b.train) == 40 and len(a.validation) == 5
    c = data.load_splits(suite(tmp_path, seed=1))
    assert ids(c.eval) != ids(a.eval) and c.eval_fingerprint != a.eval_fingerprint


def test_csv_and_parquet_load_like_jsonl(tmp_path):
    import datasets

    rows = [json.loads(x) for x in (ASSETS / "instruct.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(tmp_path / "d.csv")
    ds.to_parquet(tmp_path / "d.parquet")
    base = data.load_splits(suite(tmp_path))
    for name in ("d.csv", "d.parquet"):
        other = data.load_splits(suite(tmp_path, path=name))
        assert other.eval_fingerprint == base.eval_fingerprint, name


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data.path: data file not found"):
        data.load_splits(suite(tmp_path, path="nope.jsonl"))


def test_mapping_to_missing_column_lists_columns(tmp_path):
    s = suite(tmp_path, extra='fields = { instruction = "instr" }')
    with pytest.raises(DataError) as e:
        data.load_splits(s)
    assert "data.fields.instruction: column 'instr' not found" in str(e.value)
    assert "instruction, input, output" in str(e.value).replace("id, ", "")


def test_undefined_template_variable(tmp_path):
    with pytest.raises(DataError, match="data.response_template: cannot render item .*'answer'"):
        data.load_splits(suite(tmp_path, response_template="{{ answer }}"))


def test_template_syntax_error(tmp_path):
    with pytest.raises(DataError, match="data.prompt_template: template error"):
        data.load_splits(suite(tmp_path, prompt_template="{% if x %}unclosed"))


def test_template_is_sandboxed(tmp_path):
    evil = "{{ instruction.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(DataError):
        data.load_splits(suite(tmp_path, prompt_template=evil))


def test_empty_eval_set(tmp_path):
    (tmp_path / "one.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    s = suite(tmp_path, path="one.jsonl", eval_size=1)
    assert len(data.load_splits(s).eval) == 1
    (tmp_path / "empty.csv").write_text("instruction,input,output\n")
    with pytest.raises(DataError):
        data.load_splits(suite(tmp_path, path="empty.csv"))


def test_dedupe_drops_repeats_and_eval_overlap(tmp_path):
    rows = [{"id": f"r{i}", "instruction": "x", "input": "", "output": str(i % 5)}
            for i in range(40)]
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = suite(tmp_path, path="dup.jsonl", eval_size=2, dedupe=True)
    splits = data.load_splits(s)
    seen = {(e.prompt, e.response) for e in splits.eval}
    assert not seen & {(e.prompt, e.response) for e in splits.train}
    assert len(splits.train) == 5 - len(seen) and splits.dropped["duplicates"] > 0


def test_sharegpt_conversations(tmp_path):
    conv = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
            {"from": "gpt", "value": "Hello."}]
    rows = [{"id": f"c{i}", "conversations": conv} for i in range(6)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = suite(tmp_path, path="c.jsonl", prompt_template="{{ prompt }}",
              response_template="{{ response }}", conversations_field="conversations",
              eval_size=2)
    ex = data.load_splits(s).eval[0]
    assert ex.messages == (("system", "Be brief."), ("user", "Hi?"))
    assert ex.prompt == "Hi?" and ex.response == "Hello."


def test_two_files_for_train_and_eval(tmp_path):
    text = (ASSETS / "instruct.jsonl").read_text().splitlines()
    (tmp_path / "tr.jsonl").write_text("\n".join(text[:60]) + "\n")
    (tmp_path / "ev.jsonl").write_text("\n".join(text[60:]) + "\n")
    s = suite(tmp_path, path=None, train_path="tr.jsonl", eval_path="ev.jsonl", eval_size=None)
    splits = data.load_splits(s)
    assert len(splits.eval) == 36 and len(splits.train) == 60


def test_train_size_counts_examples_after_dedupe(tmp_path):
    rows = [{"id": f"r{i}", "instruction": "x", "input": "", "output": str(i % 30)}
            for i in range(90)]
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = suite(tmp_path, path="dup.jsonl", eval_size=2, dedupe=True, train_size=20)
    splits = data.load_splits(s)
    assert len(splits.train) == 20  # 28 distinct non-eval answers, cut to 20 after dedupe
    assert len({e.response for e in splits.train}) == 20
