"""Reading a suite's rows: local files (JSONL, JSON, CSV, Parquet) and hub datasets, each row
with the physical line it came from (JSONL, CSV) so an error can point at it. No torch.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import DataError, DatasetUnavailable, one_line, quieted
from harness.suite.config import DataSpec, resolve

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Pool:
    """The rows of one source and where each came from, so an error can point at its line."""

    rows: Rows
    key: str  # the suite key naming the source: data.path, eval.sets.NAME.path, ...
    label: str  # the resolved file, or "dataset NAME split SPLIT"
    lines: tuple[int, ...] | None = None  # physical line of each row (JSONL, CSV), else row N

    def at(self, i: int) -> str:
        return f"{self.label}:{self.lines[i]}" if self.lines else f"{self.label} row {i + 1}"


def load_pools(spec: DataSpec, base_dir: Path, table: str) -> tuple[Pool, Pool | None]:
    """The train pool and, with a separate eval file or split, the eval pool of ``spec``,
    paths relative to ``base_dir``; ``table`` (``data``, ``eval.sets.NAME``) names its keys."""
    if spec.dataset:
        return _load_hub(spec, table)
    if spec.path:
        key = f"{table}.path"
        return _read_file(spec, _existing(base_dir, spec.path, key), key, table), None
    train = _existing(base_dir, spec.train_path, f"{table}.train_path")  # type: ignore[arg-type]
    ev = _existing(base_dir, spec.eval_path, f"{table}.eval_path") if spec.eval_path else None
    return (_read_file(spec, train, f"{table}.train_path", table),
            _read_file(spec, ev, f"{table}.eval_path", table) if ev else None)


def _existing(base_dir: Path, p: str, key: str) -> Path:
    path = resolve(base_dir, p)
    if not path.is_file():
        raise DataError(f"{key}: data file not found: {path}")
    return path


def _read_file(spec: DataSpec, path: Path, key: str, table: str) -> Pool:
    fmt = spec.format or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{key}: {path}: unknown data format; set {table}.format to json, csv "
                        "or parquet")
    fmt = "json" if fmt == "jsonl" else fmt
    text = None if fmt == "parquet" else _utf8(path, key)
    rows = _load_file(path, fmt, key, text)
    lines = _locate(fmt, text, rows) if text is not None else None
    return Pool(rows, key, str(path), lines)


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
        # datasets logs its own error for a bad file (two lines, or a logging traceback when
        # the stream has gone); ours is the one clear line
        with quieted("datasets"):
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad file
        bad = _bad_json(text) if fmt == "json" and text is not None else None
        if bad:
            raise DataError(f"{key}: {path}:{bad[0]}: {bad[1]}") from e
        raise DataError(f"{key}: {path}: cannot read as {fmt}: {one_line(_root(e))}") from e
    return ds.to_list()


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


def _load_hub(spec: DataSpec, table: str) -> tuple[Pool, Pool | None]:
    import datasets

    try:
        train = datasets.load_dataset(spec.dataset, spec.config_name, split=spec.train_split)
        ev = (datasets.load_dataset(spec.dataset, spec.config_name, split=spec.eval_split)
              if spec.eval_split and spec.eval_split != spec.train_split else None)
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailable(
            f"{table}.dataset {spec.dataset!r}: cannot load: {one_line(e)}") from e
    label = f"dataset {spec.dataset} split "
    key = f"{table}.dataset"
    return (Pool(train.to_list(), key, label + spec.train_split),
            Pool(ev.to_list(), key, label + str(spec.eval_split))
            if ev is not None else None)


def _root(e: BaseException) -> BaseException:
    """The innermost cause: datasets wraps the parser's error in a generic one."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


def check_fields(spec: DataSpec, pool: Pool, table: str) -> None:
    if not pool.rows:
        raise DataError(f"{pool.key}: {pool.label}: no rows")
    columns = list(pool.rows[0])
    wanted = dict(spec.fields)
    if spec.conversations_field:
        wanted["conversations_field"] = spec.conversations_field
    for var, col in wanted.items():
        if col not in columns:
            key = var if var == "conversations_field" else f"fields.{var}"
            raise DataError(f"{table}.{key}: column {col!r} not found in {pool.label}; "
                            "columns are: " + ", ".join(columns))
