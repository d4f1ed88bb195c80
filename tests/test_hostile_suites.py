"""Hostile suites and data files through the CLI: absurd numbers, repeated ids, several bad
rows, `--set` keys under unknown tables. Each is refused by `validate` (and `plan` / `run`
before anything is written) with exit 2 and lines naming the key, the file and its line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.suite import config, numbers

from .test_bad_input import check_refused, edit

runner = CliRunner()
# The tiny suite holds out 12 eval + 8 validation items of 96 rows: 76 train items use them all.
EVERY_ROW = ("--set", "data.train_size=76")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


# ---------------------------------------------------------------- absurd numbers


# Each would overflow or run for ever downstream: 1e300 epochs printed a 301-digit step count
# in `plan` and trained until killed; 10**12 resamples allocate 8 TB of indexes.
ABSURD = [
    ("train.epochs", "1e300"),
    ("train.max_steps", str(10**12)),
    ("train.batch_size", str(10**9)),
    ("train.gradient_accumulation_steps", str(10**9)),
    ("eval.max_new_tokens", str(10**9)),
    ("eval.batch_size", str(10**9)),
    ("eval.num_beams", str(10**6)),
    ("stats.n_resamples", str(10**12)),
    ("data.max_length", str(10**12)),
    ("train.seed", str(2**64)),  # torch.manual_seed overflows at 2**64
    ("data.seed", "-1"),  # NumPy refuses negative seeds with a traceback
]


@pytest.mark.parametrize(("key", "value"), ABSURD)
def test_absurd_number_refused_naming_the_set(suite_dir, key, value):
    res = invoke("validate", suite_dir / "tiny.toml", "--set", f"{key}={value}")
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"error: --set {key}={value}: {key}: "), res.output
    assert "Traceback" not in res.output


def test_absurd_epochs_in_the_file_refused_by_plan_and_run(suite_dir):
    edit(suite_dir, "max_steps = 24", "epochs = 1e300")
    line = (suite_dir / "tiny.toml").read_text().splitlines().index("epochs = 1e300") + 1
    check_refused(suite_dir, f"tiny.toml:{line}: train.epochs: ", "less than or equal to")
    res = invoke("plan", suite_dir / "tiny.toml")
    assert res.exit_code == 2, res.output
    assert f"tiny.toml:{line}: train.epochs" in res.output and len(error_lines(res.output)) == 1


def test_infinite_epochs_refused_everywhere(suite_dir):
    """TOML `inf`, `--set ...=inf` and a literal that overflows to inf (1e400)."""
    edit(suite_dir, "max_steps = 24", "epochs = inf")
    check_refused(suite_dir, "train.epochs: Input should be a finite number")
    edit(suite_dir, "epochs = inf", "max_steps = 24")
    for value in ("inf", "1e400", "nan"):
        res = invoke("plan", suite_dir / "tiny.toml", "--set", f"train.epochs={value}")
        assert res.exit_code == 2 and f"--set train.epochs={value}: train.epochs" in res.output


def test_largest_allowed_values_still_validate(suite_dir):
    """The bounds are far beyond any real suite: the shipped limits themselves pass."""
    sets = [f"train.max_steps={numbers.MAX_STEPS}", f"eval.max_new_tokens={numbers.MAX_TOKENS}",
            f"data.max_length={numbers.MAX_TOKENS}", f"stats.n_resamples={config.MAX_RESAMPLES}",
            f"train.seed={numbers.MAX_SEED}", f"train.batch_size={numbers.MAX_BATCH}"]
    res = invoke("validate", suite_dir / "tiny.toml", *[a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output


def _numbers(schema: dict, node: dict, path: str):
    """(dotted key, JSON-schema node) of every integer or number a suite may hold."""
    if "$ref" in node:
        yield from _numbers(schema, schema["$defs"][node["$ref"].split("/")[-1]], path)
    for alt in node.get("anyOf", []):
        yield from _numbers(schema, alt, path)
    if node.get("type") in ("integer", "number") and "enum" not in node:  # not Literal[4, 8]
        yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _numbers(schema, sub, f"{path}.{name}".lstrip("."))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _numbers(schema, node[key], f"{path}[]")


# Scales only need to be finite: a huge one diverges the adapter, a failed arm, no hang
# (test_non_finite trains at learning_rate 1e30 for that).
SCALES = {"train.alpha", "train.learning_rate", "train.weight_decay", "train.max_grad_norm",
          "eval.temperature"}


def test_every_count_of_a_suite_has_an_upper_bound():
    """The one mechanism covers every numeric key: a new key without a bound fails here."""
    schema = config.Suite.model_json_schema()
    found = list(_numbers(schema, schema, ""))
    keys = {k for k, _ in found}
    assert {"train.epochs", "eval.sets[].max_length", "train.seeds[]", "data.seed"} <= keys
    unbounded = {k for k, n in found if "maximum" not in n and "exclusiveMaximum" not in n}
    assert unbounded == SCALES


def test_sweep_grid_value_is_bounded_too(suite_dir):
    """Refused naming the cell and key, not a file `<suite name>.toml` that does not exist."""
    p = suite_dir / "grid.toml"
    text = (suite_dir / "tiny.toml").read_text()
    p.write_text(text + '\n[sweep]\ngrid = { "train.max_steps" = [2, 1e15] }\n')
    res = invoke("validate", p)
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert line.endswith("sweep cell 'max_steps1000000000000000.0': train.max_steps: Input "
                         f"should be less than or equal to {numbers.MAX_STEPS} "
                         "(got 1000000000000000.0)"), line
    assert "tiny.toml" not in res.output


def _inline_table(grid: dict[str, list[int]]) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {v}" for k, v in grid.items()) + " }"


def test_sweep_of_too_many_arms_refused_before_it_is_expanded(suite_dir):
    """A grid's cells are counted, not listed: 10 keys of 10 values would be 10**10 suites."""
    p = suite_dir / "tiny.toml"
    grid = {"train.r": list(range(1, 51)), "train.alpha": list(range(1, 11))}  # 500 cells
    p.write_text(p.read_text() + f"\n[sweep]\ngrid = {_inline_table(grid)}\n")
    res = invoke("validate", p, "--set", "train.seeds=[1, 2, 3]")
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert "sweep: 1,500 trained arms (cells x train.seeds), at most 1,000" in line, line
    res = invoke("validate", p, "--set", "train.seeds=[1, 2]")
    assert res.exit_code == 0, res.output  # 1,000: the limit itself
    assert "1000 adapter arm(s)" in res.output


def test_gate_rule_limit_that_overflows_to_inf_refused(suite_dir):
    """400 digits parse as float inf: a rule that could never fail passed validate."""
    rule = "loss:+" + "9" * 400
    p = suite_dir / "tiny.toml"
    p.write_text(p.read_text() + f'\n[gate]\nrules = ["{rule}"]\n')
    res = invoke("validate", p)
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert "gate.rules" in line and "not a finite number" in line, line


# ---------------------------------------------------------------- bad rows, all at once


def rows_of(suite_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (suite_dir / "instruct.jsonl").read_text().splitlines()]


def write_rows(suite_dir: Path, rows: list[dict]) -> Path:
    path = suite_dir / "instruct.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_repeated_id_fails_validate_naming_both_lines(suite_dir):
    rows = rows_of(suite_dir)
    rows[9]["id"] = rows[2]["id"]  # line 10 repeats line 3's id
    path = write_rows(suite_dir, rows)
    res = invoke("validate", suite_dir / "tiny.toml")
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert f"{path}:10" in line and "line 3" in line and repr(rows[2]["id"]) in line, line


def test_repeated_id_stops_run_before_anything_is_written(suite_dir):
    rows = rows_of(suite_dir)
    rows[50]["id"] = rows[0]["id"]
    write_rows(suite_dir, rows)
    out = suite_dir / "results"
    res = invoke("run", suite_dir / "tiny.toml", "--out", out)
    assert res.exit_code == 2, res.output
    assert ":51" in res.output and "line 1" in res.output
    assert not out.exists() or not any(out.rglob("*"))


def test_every_bad_row_listed_with_its_line(suite_dir):
    rows = rows_of(suite_dir)
    for i in (4, 39, 90):  # lines 5, 40 and 91
        del rows[i]["output"]
    rows[60]["id"] = rows[20]["id"]  # and line 61 repeats line 21's id
    path = write_rows(suite_dir, rows)
    res = invoke("validate", suite_dir / "tiny.toml", *EVERY_ROW)
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 4, res.output
    for n, line in zip((5, 40, 61, 91), lines):  # in file order
        assert f"{path}:{n}:" in line, (n, res.output)
    assert "line 21" in lines[2] and sum("'output'" in ln for ln in lines) == 3


def test_bad_rows_listed_up_to_a_cap(suite_dir):
    rows = rows_of(suite_dir)
    for row in rows[:25]:
        row["output"] = None
    write_rows(suite_dir, rows)
    res = invoke("validate", suite_dir / "tiny.toml", *EVERY_ROW)
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 11, res.output
    assert [f"instruct.jsonl:{n}:" in ln for n, ln in zip(range(1, 11), lines)] == [True] * 10
    assert "and 15 more bad rows" in lines[-1]


def test_repeated_id_in_an_extra_eval_set(suite_dir, tmp_path):
    rows = rows_of(suite_dir)[:6]
    rows[4]["id"] = rows[1]["id"]
    (suite_dir / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = suite_dir / "tiny.toml"
    p.write_text(p.read_text() + '\n[eval.sets.general]\npath = "general.jsonl"\n'
                 'response_template = "{{ output }}"\n')
    res = invoke("validate", p)
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert "eval.sets.general.path" in line and "general.jsonl:5" in line and "line 2" in line


# ---------------------------------------------------------------- --set blame at any depth


@pytest.mark.parametrize("item", ["train.foo.bar=1", "train.foo.bar.baz=1", "foo.bar=1",
                                  "eval.sets.x.y.z=1"])
def test_set_under_unknown_key_is_blamed_on_the_set(suite_dir, item):
    res = invoke("validate", suite_dir / "tiny.toml", "--set", item)
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert lines and all(ln.startswith(f"error: --set {item}: ") for ln in lines), res.output
    assert "tiny.toml:" not in res.output


def test_unknown_key_written_in_the_file_keeps_its_line(suite_dir):
    edit(suite_dir, "[eval]", "[train.foo]\nbar = 2\n\n[eval]")
    res = invoke("validate", suite_dir / "tiny.toml", "--set", "train.foo.baz=1")
    assert res.exit_code == 2, res.output
    line = (suite_dir / "tiny.toml").read_text().splitlines().index("[train.foo]") + 1
    assert f"tiny.toml:{line}: train.foo: unknown key" in res.output, res.output
