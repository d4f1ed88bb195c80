"""Examples for a suite: load rows, map fields, render templates, select seeded splits.

No torch. Rows come through `datasets` (local json/jsonl/csv/parquet or a hub dataset).
Selection is one seeded permutation cut into disjoint slices, eval first, so the eval items of
a suite never change when train_size changes, and never overlap training data:

    single pool:  perm = [ eval | validation | train ...... ]
    two pools:    eval pool  = [ eval | validation ]     train pool = [ train ...... ]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from harness.config import DataSpec, Suite
from harness.errors import DataError, DatasetUnavailable

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
    """Rows -> rendered, de-duplicated, seeded, disjoint train / validation / eval examples."""
    spec = suite.data
    train_pool, eval_pool, source = _load_pools(suite)
    _check_fields(spec, train_pool, source)
    render = _renderer(spec, source)
    # With cleaning on, train_size counts examples after it (seed 002's 1,080 are clean ones):
    # take the whole pool here and cut after dedupe (below) or drop_longer (when encoding).
    cut_later = spec.dedupe or spec.drop_longer
    train_rows, val_rows, eval_rows = _select(spec, train_pool, eval_pool, cut_train=not cut_later)
    eval_ex = [render(r, i) for i, r in eval_rows]
    val_ex = [render(r, i) for i, r in val_rows]
    train_ex = [render(r, i) for i, r in train_rows]
    dropped: dict[str, int] = {}
    if spec.dedupe:
        train_ex, dropped["duplicates"] = dedupe(train_ex, against=eval_ex + val_ex)
    if spec.train_size and not spec.drop_longer:
        train_ex = train_ex[: spec.train_size]
    if not eval_ex:
        raise DataError(f"{source}: the eval set is empty (check data.eval_size and the data)")
    if suite.train is not None and not train_ex:
        raise DataError(f"{source}: the train set is empty (check data.train_size)")
    return DataSplits(
        train=tuple(train_ex), validation=tuple(val_ex), eval=tuple(eval_ex),
        eval_fingerprint=fingerprint(eval_ex), train_fingerprint=fingerprint(train_ex),
        dropped=dropped,
    )


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


def _load_pools(suite: Suite) -> tuple[Rows, Rows | None, str]:
    spec = suite.data
    if spec.dataset:
        return _load_hub(spec)
    if spec.path:
        path = _existing(suite, spec.path, "data.path")
        return _read_file(path, spec), None, str(path)
    train = _existing(suite, spec.train_path, "data.train_path")  # type: ignore[arg-type]
    ev = _existing(suite, spec.eval_path, "data.eval_path") if spec.eval_path else None
    return _read_file(train, spec), (_read_file(ev, spec) if ev else None), str(train)


def _existing(suite: Suite, p: str, key: str) -> Path:
    path = suite.resolve(p)
    if not path.is_file():
        raise DataError(f"{key}: data file not found: {path}")
    return path


def _read_file(path: Path, spec: DataSpec) -> Rows:
    fmt = spec.format or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown data format; set data.format to json, csv or parquet")
    fmt = "json" if fmt == "jsonl" else fmt
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad file
        raise DataError(f"{path}: cannot read as {fmt}: {_one_line(e)}") from e
    return ds.to_list()


def _load_hub(spec: DataSpec) -> tuple[Rows, Rows | None, str]:
    import datasets

    source = f"dataset {spec.dataset}"
    try:
        train = datasets.load_dataset(spec.dataset, spec.config_name, split=spec.train_split)
        ev = (datasets.load_dataset(spec.dataset, spec.config_name, split=spec.eval_split)
              if spec.eval_split and spec.eval_split != spec.train_split else None)
    except Exception as e:  # noqa: BLE001
        raise DatasetUnavailable(
            f"data.dataset {spec.dataset!r}: cannot load: {_one_line(e)}") from e
    return train.to_list(), (ev.to_list() if ev is not None else None), source


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_fields(spec: DataSpec, rows: Rows, source: str) -> None:
    if not rows:
        raise DataError(f"{source}: no rows")
    columns = list(rows[0])
    wanted = dict(spec.fields)
    if spec.conversations_field:
        wanted["conversations_field"] = spec.conversations_field
    for var, col in wanted.items():
        if col not in columns:
            key = var if var == "conversations_field" else f"fields.{var}"
            raise DataError(
                f"{source}: data.{key}: column {col!r} not found; columns are: "
                + ", ".join(columns)
            )


# ---------------------------------------------------------------- selection


def _select(spec: DataSpec, train_pool: Rows, eval_pool: Rows | None, cut_train: bool = True):
    """Indexed rows for (train, validation, eval); see the module docstring for the layout."""
    rng = np.random.default_rng(spec.seed)
    if eval_pool is None:
        perm = rng.permutation(len(train_pool)).tolist()
        n_eval = spec.eval_size or max(1, len(train_pool) // 10)  # default: hold out 10 %
        ev, rest = perm[:n_eval], perm[n_eval:]
        val, rest = rest[: spec.validation_size], rest[spec.validation_size:]
        tr = rest[: spec.train_size] if spec.train_size and cut_train else rest
        pick = [(i, train_pool[i]) for i in tr], [(i, train_pool[i]) for i in val]
        return pick[0], pick[1], [(i, train_pool[i]) for i in ev]
    eperm = rng.permutation(len(eval_pool)).tolist()
    n_eval = spec.eval_size or len(eval_pool)
    ev, val = eperm[:n_eval], eperm[n_eval: n_eval + spec.validation_size]
    tperm = rng.permutation(len(train_pool)).tolist()
    tr = tperm[: spec.train_size] if spec.train_size and cut_train else tperm
    return ([(i, train_pool[i]) for i in tr], [(i, eval_pool[i]) for i in val],
            [(i, eval_pool[i]) for i in ev])


# ---------------------------------------------------------------- templates


_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
)


def _compile(key: str, text: str, source: str):
    try:
        return _ENV.from_string(text)
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise DataError(f"{source}: data.{key}: template error (line {line}): {e}") from e


def _renderer(spec: DataSpec, source: str):
    """row -> Example, with the suite's fields mapping and sandboxed Jinja templates."""
    prompt_t = _compile("prompt_template", spec.prompt_template, source)
    response_t = _compile("response_template", spec.response_template, source)

    def render(row: dict[str, Any], index: int) -> Example:
        ctx = {**row, **{var: row[col] for var, col in spec.fields.items()}}
        ex_id = str(row.get("id", f"row-{index}"))
        messages: tuple[tuple[str, str], ...] = ()
        if spec.conversations_field:
            messages, last = _split_conversation(row[spec.conversations_field], ex_id, source)
            ctx.setdefault("response", last)
            ctx.setdefault("prompt", messages[-1][1] if messages else "")
        prompt = _render(prompt_t, ctx, "prompt_template", ex_id, source)
        response = _render(response_t, ctx, "response_template", ex_id, source)
        return Example(id=ex_id, prompt=prompt, response=response, messages=messages)

    return render


def _render(template, ctx: dict[str, Any], key: str, ex_id: str, source: str) -> str:
    try:
        return template.render(**ctx)
    except (UndefinedError, TemplateError, TypeError, ValueError) as e:
        raise DataError(f"{source}: data.{key}: cannot render item {ex_id}: {e}") from e


def _split_conversation(turns: Any, ex_id: str, source: str):
    """ShareGPT/OpenAI turns -> (earlier turns as (role, text), last assistant reply)."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{source}: item {ex_id}: conversation is not a non-empty list")
    pairs = []
    for t in turns:
        role = _ROLES.get(str(t.get("role", t.get("from", ""))).lower())
        text = t.get("content", t.get("value"))
        if role is None or text is None:
            raise DataError(f"{source}: item {ex_id}: turn without role/content: {t}")
        pairs.append((role, str(text)))
    if pairs[-1][0] != "assistant":
        raise DataError(f"{source}: item {ex_id}: conversation does not end with an assistant turn")
    return tuple(pairs[:-1]), pairs[-1][1]
