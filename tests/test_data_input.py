"""Bad data and data sizes through the CLI: exit 2, one line naming the suite, the key, the
data file and its line; nothing written. Rows the template does not render may lack values.

The tiny suite holds out 12 eval + 8 validation items of 96 rows; `data.train_size=76` makes
every row rendered (eval, validation, then train), so the one broken row is always reached.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import DataError
from harness.suite import data, suitefile

from .test_bad_input import check_refused, edit

runner = CliRunner()
EVERY_ROW = ["--set", "data.train_size=76"]


def rows_of(suite_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (suite_dir / "instruct.jsonl").read_text().splitlines()]


def write_jsonl(path: Path, rows: list, blank_after: int | None = None) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")  # blank lines are legal in JSONL; they shift line numbers
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def as_csv_rows(rows: list[dict]) -> list[list[str]]:
    cols = list(rows[0])
    return [cols] + [[r[c] for c in cols] for r in rows]


def validate(suite: Path, *extra: str):
    return runner.invoke(app, ["validate", str(suite), *extra])


def eval_only(suite_dir: Path) -> None:
    p = suite_dir / "tiny.toml"
    text = p.read_text()
    p.write_text(text[: text.index("[train]")])


# ---------------------------------------------------------------- 1. missing values


def test_jsonl_row_without_rendered_key(suite_dir):
    rows = rows_of(suite_dir)
    del rows[8]["output"]  # t008; a blank line after row 2 puts it on physical line 10
    write_jsonl(suite_dir / "instruct.jsonl", rows, blank_after=2)
    check_refused(suite_dir, "suite 'tiny'", "data.path", "instruct.jsonl:10", "t008",
                  "column 'output'", "data.response_template", extra=EVERY_ROW)


def test_null_value_is_missing_too(suite_dir):
    rows = rows_of(suite_dir)
    rows[5]["instruction"] = None
    write_jsonl(suite_dir / "instruct.jsonl", rows)
    check_refused(suite_dir, "instruct.jsonl:6", "column 'instruction'",
                  "data.prompt_template", extra=EVERY_ROW)


def test_names_only_the_column_rendered_not_the_one_tested(suite_dir):
    rows = rows_of(suite_dir)
    del rows[0]["input"], rows[0]["output"]  # input is optional ({% if input %}), output not
    write_jsonl(suite_dir / "instruct.jsonl", rows)
    res = validate(suite_dir / "tiny.toml", *EVERY_ROW)
    assert res.exit_code == 2 and "instruct.jsonl:1:" in res.output, res.output
    assert "column 'output'" in res.output and "'input'" not in res.output

def test_optional_column_guarded_by_if_may_be_absent(suite_dir):
    rows = rows_of(suite_dir)
    for r in rows:  # Alpaca style: no "input" key at all where there is no input
        if not r["input"]:
            del r["input"]
    write_jsonl(suite_dir / "instruct.jsonl", rows)
    res = validate(suite_dir / "tiny.toml", *EVERY_ROW)
    assert res.exit_code == 0, res.output
    splits = data.load_splits(suitefile.load_suite(suite_dir / "tiny.toml", EVERY_ROW[1:]))
    every = splits.eval + splits.validation + splits.train
    assert len(every) == 96 and not any("None" in e.prompt for e in every)
    assert sum("### Input:" in e.prompt for e in every) == 64


def test_short_csv_row(suite_dir):
    table = as_csv_rows(rows_of(suite_dir))
    table[2][1] = "two\nlines"  # a quoted cell spanning lines: row 3 of the file is line 4
    table[10] = table[10][:3]  # t009 lacks its output cell; physical line 12
    write_csv(suite_dir / "d.csv", table)
    edit(suite_dir, 'path = "instruct.jsonl"', 'path = "d.csv"')
    check_refused(suite_dir, "data.path", "d.csv:12", "t009", "column 'output'",
                  extra=EVERY_ROW)


def test_csv_empty_cell_is_empty_text_not_missing(suite_dir):
    table = as_csv_rows(rows_of(suite_dir))
    table[1][3] = "NA"  # a literal answer, not a missing value
    write_csv(suite_dir / "d.csv", table)
    edit(suite_dir, 'path = "instruct.jsonl"', 'path = "d.csv"')
    edit(suite_dir, "{% if input %}", "")
    edit(suite_dir, "{% endif %}", "")
    assert validate(suite_dir / "tiny.toml", *EVERY_ROW).exit_code == 0
    s = suitefile.load_suite(suite_dir / "tiny.toml", EVERY_ROW[1:])
    splits = data.load_splits(s)
    every = {e.id: e for e in splits.eval + splits.validation + splits.train}
    assert every["t000"].response == "NA"
    assert "### Input:\n\n" in every["t000"].prompt  # empty cell: empty text, never "None"


# ---------------------------------------------------------------- 2. sizes


def test_eval_size_larger_than_the_data(suite_dir):
    eval_only(suite_dir)
    check_refused(suite_dir, "suite 'tiny'", "data.eval_size = 500 but", "instruct.jsonl",
                  "has 96 rows", extra=["--set", "data.eval_size=500"])


def test_train_size_larger_than_what_is_left(suite_dir):
    check_refused(suite_dir, "data.train_size = 500 but", "76 rows", "instruct.jsonl",
                  "12 eval and 8 validation", extra=["--set", "data.train_size=500"])


def test_validation_size_larger_than_what_is_left(suite_dir):
    check_refused(suite_dir, "data.validation_size = 90 but", "84 rows", "12 eval",
                  extra=["--set", "data.validation_size=90"])


def test_eval_taking_everything_leaves_no_training_items(suite_dir):
    check_refused(suite_dir, "no training items", "0 rows", "96 eval",
                  extra=["--set", "data.eval_size=all", "--set", "data.validation_size=0",
                         "--set", "data.train_size=all"])


def test_train_size_counted_after_dedupe(suite_dir):
    rows = rows_of(suite_dir)
    copies = [{**r, "id": f"copy{i}"} for i, r in enumerate(rows[:30])]
    write_jsonl(suite_dir / "instruct.jsonl", rows + copies)  # 126 rows, 96 distinct
    check_refused(suite_dir, "data.train_size = 100 but", "106 rows", "data.dedupe drops",
                  extra=["--set", "data.dedupe=true", "--set", "data.train_size=100"])


def test_all_means_every_row(suite_dir):
    res = validate(suite_dir / "tiny.toml", "--set", "data.train_size=all")
    assert res.exit_code == 0 and "76 train" in res.output, res.output
    eval_only(suite_dir)
    res = validate(suite_dir / "tiny.toml", "--set", "data.eval_size=all")
    assert res.exit_code == 0 and "96 eval" in res.output, res.output


def test_unset_sizes_keep_their_defaults(suite_dir):
    edit(suite_dir, "eval_size = 12\n", "")
    edit(suite_dir, "train_size = 64\n", "")
    splits = data.load_splits(suitefile.load_suite(suite_dir / "tiny.toml"))
    assert (len(splits.eval), len(splits.validation), len(splits.train)) == (9, 8, 79)


def test_two_files_name_the_short_one(suite_dir):
    lines = (suite_dir / "instruct.jsonl").read_text().splitlines()
    (suite_dir / "tr.jsonl").write_text("\n".join(lines[:60]) + "\n")
    (suite_dir / "ev.jsonl").write_text("\n".join(lines[60:]) + "\n")
    edit(suite_dir, 'path = "instruct.jsonl"', 'train_path = "tr.jsonl"\neval_path = "ev.jsonl"')
    check_refused(suite_dir, "data.eval_size = 40 but", "ev.jsonl has 36 rows",
                  extra=["--set", "data.eval_size=40"])
    check_refused(suite_dir, "data.train_size = 64 but", "tr.jsonl has 60 rows")


# ---------------------------------------------------------------- 3. templates that raise


@pytest.mark.parametrize(("template", "problem"), [
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ range(10**9) | list }}", "OverflowError"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
])
def test_template_that_raises(suite_dir, template, problem):
    check_refused(suite_dir, "suite 'tiny'", "data.response_template", "cannot render item",
                  "instruct.jsonl:", problem, extra=["--set", f"data.response_template={template}"])


def test_prompt_template_that_raises(suite_dir):
    check_refused(suite_dir, "data.prompt_template", "cannot render item", "ZeroDivisionError",
                  extra=["--set", "data.prompt_template={{ instruction }}{{ 1 // 0 }}"])


# ---------------------------------------------------------------- 4. encodings


def test_non_utf8_jsonl(suite_dir):
    lines = (suite_dir / "instruct.jsonl").read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b'"id"', b'"\xefd"', 1)  # latin-1 i-diaeresis
    (suite_dir / "instruct.jsonl").write_bytes(b"\n".join(lines))
    check_refused(suite_dir, "suite 'tiny'", "data.path", "instruct.jsonl:7", "not valid UTF-8",
                  "0xef")


def test_non_utf8_csv(suite_dir):
    write_csv(suite_dir / "d.csv", as_csv_rows(rows_of(suite_dir)))
    raw = (suite_dir / "d.csv").read_bytes().split(b"\n")
    assert b"\xc2\xb0" in raw[4]
    raw[4] = raw[4].replace(b"\xc2\xb0", b"\xb0", 1)  # the degree sign in latin-1
    (suite_dir / "d.csv").write_bytes(b"\n".join(raw))
    edit(suite_dir, 'path = "instruct.jsonl"', 'path = "d.csv"')
    check_refused(suite_dir, "data.path", "d.csv:5", "not valid UTF-8")


# ---------------------------------------------------------------- 5. malformed JSON


def test_malformed_jsonl_line(suite_dir):
    lines = (suite_dir / "instruct.jsonl").read_text().splitlines()
    lines[8] = lines[8].rstrip("}") + ",}"  # trailing comma
    write_jsonl(suite_dir / "instruct.jsonl", lines, blank_after=0)
    check_refused(suite_dir, "suite 'tiny'", "data.path", "instruct.jsonl:10", "invalid JSON")


def test_jsonl_line_that_is_not_an_object(suite_dir):
    lines = (suite_dir / "instruct.jsonl").read_text().splitlines()
    lines[3] = '["a", "list"]'
    write_jsonl(suite_dir / "instruct.jsonl", lines)
    check_refused(suite_dir, "instruct.jsonl:4", "expected a JSON object")


def test_json_array_names_row_and_line(suite_dir):
    rows = rows_of(suite_dir)
    del rows[4]["output"]
    (suite_dir / "d.json").write_text(json.dumps(rows, indent=1))
    edit(suite_dir, 'path = "instruct.jsonl"', 'path = "d.json"')
    check_refused(suite_dir, "d.json row 5", "column 'output'", extra=EVERY_ROW)
    text = json.dumps(rows, indent=1).replace('"t007",', '"t007" ', 1)
    (suite_dir / "d.json").write_text(text)
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text)
    line = e.value.lineno  # the line Python's own parser points at
    check_refused(suite_dir, f"d.json:{line}", "invalid JSON")


# ---------------------------------------------------------------- for the pipeline


def test_train_after_drop_longer_says_how_many_fit(suite_dir):
    s = suitefile.load_suite(suite_dir / "tiny.toml", ["data.drop_longer=true"])
    assert len(data.load_splits(s).train) == 76  # uncut: train_size counts items that fit
    assert data.train_after_drop_longer(s, list(range(70)), 76) == list(range(64))
    with pytest.raises(DataError, match=r"^suite 'tiny': data.train_size = 64 but only 50 of "
                       r"the 76 train items fit in data.max_length = 160 tokens"):
        data.train_after_drop_longer(s, list(range(50)), 76)
    every = suitefile.load_suite(suite_dir / "tiny.toml",
                              ["data.drop_longer=true", "data.train_size=all"])
    assert data.train_after_drop_longer(every, list(range(50)), 76) == list(range(50))
    with pytest.raises(DataError, match="no training items"):
        data.train_after_drop_longer(every, [], 76)


def test_requested_size():
    assert [data.requested_size(v) for v in (5, "all", None)] == [5, None, None]


def test_conversation_row_without_turns_names_its_line(tmp_path):
    conv = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    rows = [{"id": f"c{i}", "conversations": conv} for i in range(6)]
    rows[3] = {"id": "c3", "conversations": ["not a turn"]}
    write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "s.toml").write_text(
        'name = "c"\n[model]\nname_or_path = "org/m"\n[data]\npath = "c.jsonl"\n'
        'prompt_template = "{{ prompt }}"\nresponse_template = "{{ response }}"\n'
        'conversations_field = "conversations"\neval_size = "all"\n')
    with pytest.raises(DataError, match=r"suite 'c': data.path: .*c.jsonl:4: item c3: turn"):
        data.load_splits(suitefile.load_suite(tmp_path / "s.toml"))


def test_eval_only_suite_ignores_validation_and_train_sizes(suite_dir):
    eval_only(suite_dir)  # nothing trains, so sizes of unused splits are not errors
    res = validate(suite_dir / "tiny.toml", "--set", "data.validation_size=500",
                   "--set", "data.train_size=500")
    assert res.exit_code == 0 and "12 eval" in res.output, res.output
