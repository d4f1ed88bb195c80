"""Examples for a suite: load rows, map fields, render templates, select seeded splits.

No torch. Rows come through `datasets` (local json/jsonl/csv/parquet or a hub dataset).
Selection is one seeded permutation cut into disjoint slices, eval first, so the eval items of
a suite never change when train_size changes, and never overlap training data:

    single pool:  perm = [ eval | validation | train ...... ]
    two pools:    eval pool  = [ eval | validation ]     train pool = [ train ...... ]

A size the data cannot fill is an error, not silently fewer items; "all" asks for every row.
Every bad row is listed at once (up to MAX_LISTED), each with its file and physical line
(JSONL, CSV) or its row number: a row the suite uses with a value a template would render as
"None" (missing data must not be scored) or a malformed conversation, and any row whose `id`
repeats an earlier one of the pool eval items come from (arms are paired item by item on ids).
Only the rows used are rendered: a suite may take 2,000 of a hub dataset's 204,000.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from harness.config import DataSpec, Suite
from harness.errors import DataError, DatasetUnavailable, one_line

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# ShareGPT speaker names -> chat-template roles (FineTome-100k uses "from"/"value").
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}


@dataclass(frozen=True)
class Example:
    """One prompt/response pair. ``messages`` holds earlier chat turns for conversation data."""

    id: str
    prompt: str
    response: str
    messages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DataSplits:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    eval: tuple[Example, ...]
    eval_fingerprint: str
    train_fingerprint: str
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "eval_fingerprint": self.eval_fingerprint,
            "train_fingerprint": self.train_fingerprint,
            "n_train": len(self.train),
            "n_validation": len(self.validation),
            "n_eval": len(self.eval),
            "dropped": dict(self.dropped),
        }


def load_splits(suite: Suite) -> DataSplits:
    """Rows -> rendered, de-duplicated, seeded, disjoint train / validation / eval examples.

    Every DataError names the suite, the key and, for one row, its data file and line."""
    try:
        return _load_splits(suite)
    except DataError as e:  # keeps the subclass: plan tells DatasetUnavailable apart
        raise type(e)(_each_line(f"suite {suite.name!r}: ", str(e))) from e


def _each_line(prefix: str, text: str) -> str:
    """``prefix`` before every line: each bad row is its own line of the error."""
    return "\n".join(prefix + line for line in text.splitlines())


@dataclass(frozen=True)
class EvalSet:
    """An extra eval set ([eval.sets.<name>]): its items and their fingerprint."""

    name: str
    examples: tuple[Example, ...]
    fingerprint: str
    source: str  # the file or hub dataset it was read from

    def summary(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "n_items": len(self.examples),
                "source": self.source}


def load_eval_sets(suite: Suite) -> list[EvalSet]:
    return [load_eval_set(suite, name) for name in suite.eval.sets]


def load_eval_set(suite: Suite, name: str) -> EvalSet:
    """The rows of [eval.sets.NAME], read by the same code as [data] (one pool, all eval)."""
    spec = suite.eval.sets[name]
    reader = suite.model_copy(update={"data": spec.as_data(), "train": None})
    try:
        splits = _load_splits(reader)
    except DataError as e:  # the keys are eval.sets.NAME.*, not data.*
        text = _SET_KEY.sub(f"eval.sets.{name}.", str(e)).replace(".train_split", ".split")
        raise type(e)(_each_line(f"suite {suite.name!r}: ", text)) from e
    source = spec.dataset or str(suite.resolve(spec.path or ""))
    return EvalSet(name, splits.eval, splits.eval_fingerprint, source)


_SET_KEY = re.compile(r"\bdata\.")


def requested_size(size: int | str | None) -> int | None:
    """A data.*_size as a count, or None for "all" and unset (which means every row)."""
    return size if isinstance(size, int) else None


def _load_splits(suite: Suite) -> DataSplits:
    spec, training = suite.data, suite.train is not None
    train_pool, eval_pool = _load_pools(suite)
    for pool in (train_pool, eval_pool):
        if pool is not None:
            _check_fields(spec, pool)
    held = eval_pool or train_pool  # where eval and validation items come from
    # With cleaning on, train_size counts examples after it (the TinyLlama QLoRA coding
    # report's 1,080 are clean ones):
    # take the whole pool here and cut after dedupe (below) or drop_longer (when encoding).
    sel = _select(spec, train_pool, held, training, cut_train=not (spec.dedupe or spec.drop_longer))
    eval_ex, val_ex, train_ex = _render_selected(spec, train_pool, held, sel)
    dropped: dict[str, int] = {}
    if spec.dedupe:
        train_ex, dropped["duplicates"] = dedupe(train_ex, against=eval_ex + val_ex)
        if training:
            _check_train_count(spec, len(train_ex), f"{sel.left}, and {len(train_ex)} after "
                               f"data.dedupe drops {dropped['duplicates']} duplicates")
    limit = requested_size(spec.train_size)
    if limit and not spec.drop_longer:
        train_ex = train_ex[:limit]
    return DataSplits(
        train=tuple(train_ex), validation=tuple(val_ex), eval=tuple(eval_ex),
        eval_fingerprint=fingerprint(eval_ex), train_fingerprint=fingerprint(train_ex),
        dropped=dropped,
    )


def train_after_drop_longer(suite: Suite, kept: list, n_before: int) -> list:
    """The first data.train_size of ``kept``, the encoded train items (of ``n_before``) that
    fit data.max_length; DataError when fewer fit. drop_longer needs the tokenizer, so the
    pipeline makes this last size check, after encoding."""
    spec = suite.data
    if suite.train is not None:
        left = (f"only {len(kept)} of the {n_before} train items fit in data.max_length = "
                f"{spec.max_length} tokens (data.drop_longer drops the rest)")
        try:
            _check_train_count(spec, len(kept), left)
        except DataError as e:
            raise DataError(f"suite {suite.name!r}: {e}") from None
    limit = requested_size(spec.train_size)
    return kept[:limit] if limit else kept


def _check_train_count(spec: DataSpec, n: int, left: str) -> None:
    """``left`` says what remains for training and why, e.g. after what was held out."""
    limit = requested_size(spec.train_size)
    if limit and n < limit:
        raise DataError(f"data.train_size = {limit} but {left}")
    if not n:
        raise DataError(f"no training items: {left}")


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 over ids, prompts and responses in order: equal iff the same items were used."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.prompt, ex.response, ex.messages]).encode())
    return h.hexdigest()[:16]


def dedupe(examples: list[Example], against: Sequence[Example] = ()) -> tuple[list[Example], int]:
    """Drop exact repeats (same prompt and response), and anything also in ``against``."""
    seen = {(e.messages, e.prompt, e.response) for e in against}
    kept = []
    for ex in examples:
        key = (ex.messages, ex.prompt, ex.response)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


# ---------------------------------------------------------------- loading


Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class _Pool:
    """The rows of one source and where each came from, so an error can point at its line."""

    rows: Rows
    key: str  # the suite key naming the source: data.path, data.train_path, ...
    label: str  # the resolved file, or "dataset NAME split SPLIT"
    lines: tuple[int, ...] | None = None  # physical line of each row (JSONL, CSV), else row N

    def at(self, i: int) -> str:
        return f"{self.label}:{self.lines[i]}" if self.lines else f"{self.label} row {i + 1}"


def _load_pools(suite: Suite) -> tuple[_Pool, _Pool | None]:
    spec = suite.data
    if spec.dataset:
        return _load_hub(spec)
    if spec.path:
        return _read_file(spec, _existing(suite, spec.path, "data.path"), "data.path"), None
    train = _existing(suite, spec.train_path, "data.train_path")  # type: ignore[arg-type]
    ev = _existing(suite, spec.eval_path, "data.eval_path") if spec.eval_path else None
    return (_read_file(spec, train, "data.train_path"),
            _read_file(spec, ev, "data.eval_path") if ev else None)


def _existing(suite: Suite, p: str, key: str) -> Path:
    path = suite.resolve(p)
    if not path.is_file():
        raise DataError(f"{key}: data file not found: {path}")
    return path


def _read_file(spec: DataSpec, path: Path, key: str) -> _Pool:
    fmt = spec.format or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{key}: {path}: unknown data format; set data.format to json, csv or "
                        "parquet")
    fmt = "json" if fmt == "jsonl" else fmt
    text = None if fmt == "parquet" else _utf8(path, key)
    rows = _load_file(path, fmt, key, text)
    lines = _locate(fmt, text, rows) if text is not None else None
    return _Pool(rows, key, str(path), lines)


def _utf8(path: Path, key: str) -> str:
    """The file as text; datasets' own decode error names neither the line nor, for CSV,
    anything but a traceback."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(f"{key}: {path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                        f"byte {col} of the line); save the file as UTF-8") from None


def _load_file(path: Path, fmt: str, key: str, text: str | None) -> Rows:
    import datasets

    datasets.disable_progress_bars()
    # An empty CSV cell is empty text, as "" in JSONL; pandas' default would make it (and the
    # answers "NA", "null", "None") a missing value. Short rows are marked missing below.
    kwargs = {"keep_default_na": False} if fmt == "csv" else {}
    try:
        with _quiet("datasets"):
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad file
        bad = _bad_json(text) if fmt == "json" and text is not None else None
        if bad:
            raise DataError(f"{key}: {path}:{bad[0]}: {bad[1]}") from e
        raise DataError(f"{key}: {path}: cannot read as {fmt}: {one_line(_root(e))}") from e
    return ds.to_list()


@contextmanager
def _quiet(logger: str):
    """datasets logs its own error for a bad file (two lines, or a logging traceback when the
    stream has gone); ours is the one clear line."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _bad_json(text: str) -> tuple[int, str] | None:
    """(line, problem) of the first line that is not a JSON object: datasets' error names
    neither the file's line nor the problem."""
    if text.lstrip().startswith("["):  # one JSON array, not JSON lines
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return e.lineno, f"invalid JSON: {e.msg} (column {e.colno})"
        return None
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return n, f"invalid JSON: {e.msg} (column {e.colno})"
        if not isinstance(obj, dict):
            return n, f"expected a JSON object, got {type(obj).__name__}"
    return None


def _locate(fmt: str, text: str, rows: Rows) -> tuple[int, ...] | None:
    """The physical line of each row, and for CSV the cells short rows lack marked missing.
    None (errors then say "row N") for a JSON array, or if our count of records disagrees
    with the loader's."""
    if fmt == "json" and not text.lstrip().startswith("["):
        # pyarrow skips blank and whitespace-only lines between records
        lines = tuple(n for n, ln in enumerate(text.split("\n"), 1) if ln.strip())
    elif fmt == "csv":
        records = _csv_records(text)[1:]  # the header is line 1
        if len(records) != len(rows):
            return None
        _mark_short_rows(rows, [width for _, width in records])
        lines = tuple(line for line, _ in records)
    else:
        return None
    return lines if len(lines) == len(rows) else None


def _csv_records(text: str) -> list[tuple[int, int]]:
    """(first line, number of cells) of each CSV record; a quoted cell may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out, start = [], 1
    for cells in reader:
        if cells:  # pandas skips blank lines
            out.append((start, len(cells)))
        start = reader.line_num + 1
    return out


def _mark_short_rows(rows: Rows, widths: list[int]) -> None:
    """pandas fills the cells a short row lacks with empty text; they are missing (None)."""
    columns = list(rows[0]) if rows else []
    for row, width in zip(rows, widths):
        for col in columns[width:]:
            row[col] = None


def _load_hub(spec: DataSpec) -> tuple[_Pool, _Pool | None]:
    import datasets

    try:
        train = datasets.load_dataset(spec.dataset, spec.config_name, split=spec.train_split)
        ev = (datasets.load_dataset(spec.dataset, spec.config_name, split=spec.eval_split)
              if spec.eval_split and spec.eval_split != spec.train_split else None)
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailable(
            f"data.dataset {spec.dataset!r}: cannot load: {one_line(e)}") from e
    label = f"dataset {spec.dataset} split "
    return (_Pool(train.to_list(), "data.dataset", label + spec.train_split),
            _Pool(ev.to_list(), "data.dataset", label + str(spec.eval_split))
            if ev is not None else None)


def _root(e: BaseException) -> BaseException:
    """The innermost cause: datasets wraps the parser's error in a generic one."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


def _check_fields(spec: DataSpec, pool: _Pool) -> None:
    if not pool.rows:
        raise DataError(f"{pool.key}: {pool.label}: no rows")
    columns = list(pool.rows[0])
    wanted = dict(spec.fields)
    if spec.conversations_field:
        wanted["conversations_field"] = spec.conversations_field
    for var, col in wanted.items():
        if col not in columns:
            key = var if var == "conversations_field" else f"fields.{var}"
            raise DataError(f"data.{key}: column {col!r} not found in {pool.label}; "
                            "columns are: " + ", ".join(columns))


# ---------------------------------------------------------------- selection


@dataclass(frozen=True)
class _Selection:
    """Row indices per split (train into the train pool, the others into the held pool)."""

    train: list[int]
    validation: list[int]
    eval: list[int]
    left: str  # what remained for training, for size errors


def _select(spec: DataSpec, train_pool: _Pool, held: _Pool, training: bool,
            cut_train: bool = True) -> _Selection:
    """See the module docstring for the layout. Sizes larger than the data are errors, not
    silently fewer items; validation and train sizes only matter when the suite trains."""
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(len(held.rows)).tolist()
    n_eval = _eval_count(spec, held, two_pools=held is not train_pool)
    ev, rest = perm[:n_eval], perm[n_eval:]
    n_val = spec.validation_size
    if training and n_val > len(rest):
        raise DataError(f"data.validation_size = {n_val} but {len(rest)} rows of {held.label} "
                        f"remain after the {n_eval} eval items are held out")
    val, rest = rest[:n_val], rest[n_val:]
    if held is train_pool:
        left = (f"{len(rest)} rows of {held.label} remain after the {n_eval} eval and "
                f"{len(val)} validation items are held out")
    else:
        rest = rng.permutation(len(train_pool.rows)).tolist()
        left = f"{train_pool.label} has {len(rest)} rows"
    if training:
        _check_train_count(spec, len(rest), left)
    limit = requested_size(spec.train_size)
    train = rest[:limit] if limit and cut_train else rest
    return _Selection(train, val, ev, left)


def _eval_count(spec: DataSpec, pool: _Pool, two_pools: bool) -> int:
    n = len(pool.rows)
    if spec.eval_size == "all" or (spec.eval_size is None and two_pools):
        return n
    if spec.eval_size is None:
        return max(1, n // 10)  # one file: hold out 10 %
    if spec.eval_size > n:
        raise DataError(f"data.eval_size = {spec.eval_size} but {pool.label} has {n} rows")
    return spec.eval_size


# ---------------------------------------------------------------- every row, every problem


MAX_LISTED = 10  # bad rows listed one per line; the rest are counted on one more line


class _BadRow(DataError):
    """A problem of one row's data (not of a template): collected, so all are listed."""


def _render_selected(spec: DataSpec, train_pool: _Pool, held: _Pool, sel: _Selection,
                     ) -> tuple[list[Example], list[Example], list[Example]]:
    """The eval, validation and train examples, or one DataError listing, in file order, every
    bad row among them and every id the held pool repeats. A template that raises is the
    template's problem, not a row's: raised at its first row."""
    render = _renderer(spec)
    problems: list[tuple[str, int, str]] = []  # (pool key, row, message): the sort order
    picks = [(held, sel.eval), (held, sel.validation), (train_pool, sel.train)]
    out = [_render_rows(render, pool, rows, problems) for pool, rows in picks]
    problems += [(held.key, i, msg) for i, msg in _repeated_ids(held)]
    if problems:
        raise DataError(_listing([msg for *_, msg in sorted(problems)]))
    return out[0], out[1], out[2]


def _render_rows(render: Any, pool: _Pool, rows: list[int],
                 problems: list[tuple[str, int, str]]) -> list[Example]:
    examples = []
    for i in rows:
        try:
            examples.append(render(pool, i))
        except _BadRow as e:
            problems.append((pool.key, i, str(e)))
    return examples


def _repeated_ids(pool: _Pool) -> list[tuple[int, str]]:
    """(row, message) of each row whose id an earlier row of ``pool`` has: the pairing of
    arms, per id, would mix two items."""
    first: dict[str, int] = {}
    out = []
    for i, row in enumerate(pool.rows):
        ex_id = _id(row, i)
        j = first.setdefault(ex_id, i)
        if j != i:
            where = f"line {pool.lines[j]}" if pool.lines else f"row {j + 1}"
            out.append((i, f"{pool.key}: {pool.at(i)}: id {ex_id!r} repeats the id of {where}; "
                           "eval items are paired across arms by id, so ids must be unique"))
    return out


def _listing(messages: list[str]) -> str:
    shown = messages[:MAX_LISTED]
    more = len(messages) - len(shown)
    return "\n".join(shown + ([f"and {more} more bad rows"] if more else []))


# ---------------------------------------------------------------- templates


class _Missing(Exception):
    """A template output a None: a row without the column, or with null in it."""


def _no_none(value: Any) -> Any:
    # Without this, a missing value is rendered as the text "None" and scored.
    if value is None:
        raise _Missing
    return value


_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False, finalize=_no_none
)


@dataclass(frozen=True)
class _Template:
    key: str  # prompt_template / response_template
    template: Any
    names: frozenset[str]  # the variables it reads


def _compile(key: str, text: str) -> _Template:
    try:
        names = meta.find_undeclared_variables(_ENV.parse(text))
        return _Template(key, _ENV.from_string(text), frozenset(names))
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise DataError(f"data.{key}: template error (line {line}): {e}") from e


def _renderer(spec: DataSpec):
    """(pool, row index) -> Example, with the suite's fields mapping and sandboxed Jinja."""
    prompt_t = _compile("prompt_template", spec.prompt_template)
    response_t = _compile("response_template", spec.response_template)

    def render(pool: _Pool, i: int) -> Example:
        row = pool.rows[i]
        ctx = {**row, **{var: row.get(col) for var, col in spec.fields.items()}}
        ex_id = _id(row, i)
        messages: tuple[tuple[str, str], ...] = ()
        if spec.conversations_field:
            where = f"{pool.key}: {pool.at(i)}: item {ex_id}"
            messages, last = _split_conversation(row.get(spec.conversations_field), where)
            ctx.setdefault("response", last)
            ctx.setdefault("prompt", messages[-1][1] if messages else "")
        prompt = _render(prompt_t, ctx, spec, pool, i)
        response = _render(response_t, ctx, spec, pool, i)
        return Example(id=ex_id, prompt=prompt, response=response, messages=messages)

    return render


def _id(row: dict[str, Any], index: int) -> str:
    # A row without an id of its own (None when other rows have one) is named by position.
    value = row.get("id")
    return f"row-{index}" if value is None else str(value)


def _render(t: _Template, ctx: dict[str, Any], spec: DataSpec, pool: _Pool, i: int) -> str:
    try:
        return t.template.render(**ctx)
    except _Missing:
        cols = ", ".join(repr(spec.fields.get(v, v)) for v in _culprits(t, ctx))
        what = f"column {cols}" if cols else "a variable"
        raise _BadRow(f"{pool.key}: {pool.at(i)}: item {_id(pool.rows[i], i)} has no value "
                      f"for {what} (absent or null), which data.{t.key} renders") from None
    except Exception as e:  # noqa: BLE001 - a template is user code; whatever it raises
        problem = one_line(e) if isinstance(e, TemplateError) else f"{type(e).__name__}: {e}"
        raise DataError(f"data.{t.key}: cannot render item {_id(pool.rows[i], i)} "
                        f"({pool.at(i)}): {problem}") from e


def _culprits(t: _Template, ctx: dict[str, Any]) -> list[str]:
    """The None variables whose value is rendered, not just tested (``{% if input %}``): each
    alone still fails with the others set to "" (as falsy as None, so the same branches)."""
    nones = sorted(v for v in t.names if v in ctx and ctx[v] is None)
    found = []
    for v in nones:
        trial = {**ctx, **{o: "" for o in nones if o != v}}
        try:
            t.template.render(**trial)
        except _Missing:
            found.append(v)
        except Exception:  # noqa: BLE001 - another failure: not this variable's
            pass
    return found or nones


def _split_conversation(turns: Any, where: str):
    """ShareGPT/OpenAI turns -> (earlier turns as (role, text), last assistant reply)."""
    if not isinstance(turns, list) or not turns:
        raise _BadRow(f"{where}: conversation is not a non-empty list")
    pairs = []
    for t in turns:
        turn = t if isinstance(t, dict) else {}
        role = _ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        text = turn.get("content", turn.get("value"))
        if role is None or text is None:
            raise _BadRow(f"{where}: turn without role/content: {t}")
        pairs.append((role, str(text)))
    if pairs[-1][0] != "assistant":
        raise _BadRow(f"{where}: conversation does not end with an assistant turn")
    return tuple(pairs[:-1]), pairs[-1][1]
