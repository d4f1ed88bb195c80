"""Examples for a suite: select seeded splits of the rows `harness.suite.datafiles` reads, rendered
by `harness.suite.prompts`' templates.

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

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from harness.errors import DataError
from harness.suite import lmtasks
from harness.suite.config import DataSpec, EvalSetSpec, Suite, resolve
from harness.suite.datafiles import Pool, check_fields, load_pools
from harness.suite.lmtasks import LmTask
from harness.suite.prompts import BadRow, Example, choice_renderer, renderer, row_id

T = TypeVar("T")


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
    """The suite's [data]: `read_splits`, every DataError naming the suite too."""
    training = suite.train is not None
    return _naming(suite.name, lambda: read_splits(suite.data, suite.base_dir, training=training))


def _naming(suite: str, read: Callable[[], T]) -> T:
    """``read()``, each line of its DataError prefixed with the suite's name (each bad row is
    its own line). Keeps the subclass: plan tells DatasetUnavailable apart."""
    try:
        return read()
    except DataError as e:
        raise type(e)("\n".join(f"suite {suite!r}: {line}" for line in str(e).splitlines())
                      ) from e


@dataclass(frozen=True)
class EvalSet:
    """An extra eval set ([eval.sets.<name>]): its spec, items and their fingerprint."""

    name: str
    spec: EvalSetSpec
    examples: tuple[Example, ...]
    fingerprint: str
    source: str  # the file or hub dataset it was read from (an lm-eval set: its task)
    task: LmTask | None = None  # an lm_eval_task set: the built task and its requests

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric keys (bare) it scores: the suite's choices, or the task's own."""
        return self.task.keys if self.task else tuple(self.spec.metrics)

    def summary(self) -> dict[str, Any]:
        out = {"fingerprint": self.fingerprint, "n_items": len(self.examples),
               "source": self.source}
        return {**out, **self.task.summary()} if self.task else out


def load_eval_sets(suite: Suite) -> list[EvalSet]:
    return [load_eval_set(name, spec, suite.base_dir, suite=suite.name)
            for name, spec in suite.eval.sets.items()]


def load_eval_set(name: str, spec: EvalSetSpec, base_dir: Path, *, suite: str) -> EvalSet:
    """The rows of [eval.sets.NAME], read by the same code as [data] (one pool, all eval);
    errors name the suite and the set's keys."""
    table = f"eval.sets.{name}"
    if spec.lm_eval:
        task = _naming(suite, lambda: lmtasks.load_task(name, spec, base_dir))
        return EvalSet(name, spec, task.examples(), task.fingerprint(),
                       f"lm-eval task {spec.lm_eval_task}", task)
    if spec.multiple_choice:
        examples = _naming(suite, lambda: read_choice_items(spec, base_dir, table))
        fp = fingerprint(examples)
    else:
        splits = _naming(suite, lambda: read_splits(spec.as_data(), base_dir, training=False,
                                                    table=table))
        examples, fp = list(splits.eval), splits.eval_fingerprint
    source = spec.dataset or str(resolve(base_dir, spec.path or ""))
    return EvalSet(name, spec, tuple(examples), fp, source)


def requested_size(size: int | str | None) -> int | None:
    """A data.*_size as a count, or None for "all" and unset (which means every row)."""
    return size if isinstance(size, int) else None


def read_splits(spec: DataSpec, base_dir: Path, *, training: bool, table: str = "data"
                ) -> DataSplits:
    """Rows -> rendered, de-duplicated, seeded, disjoint train / validation / eval examples;
    paths relative to ``base_dir``, train and validation sizes checked when ``training``.

    Every DataError names the key (of ``table``: ``data``, ``eval.sets.NAME``) and, for one
    row, its data file and line."""
    train_pool, eval_pool = load_pools(spec, base_dir, table)
    for pool in (train_pool, eval_pool):
        if pool is not None:
            check_fields(spec, pool, table)
    held = eval_pool or train_pool  # where eval and validation items come from
    # With cleaning on, train_size counts examples after it (the TinyLlama QLoRA coding
    # report's 1,080 are clean ones):
    # take the whole pool here and cut after dedupe (below) or drop_longer (when encoding).
    sel = _select(spec, train_pool, held, training, table,
                  cut_train=not (spec.dedupe or spec.drop_longer))
    eval_ex, val_ex, train_ex = _render_selected(spec, train_pool, held, sel, table)
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
    """sha256 over ids, prompts and responses in order (and a multiple-choice item's
    continuations and answer): equal iff the same items were used."""
    h = hashlib.sha256()
    for ex in examples:
        item: list[Any] = [ex.id, ex.prompt, ex.response, ex.messages]
        if ex.continuations:
            item += [ex.continuations, ex.gold]
        h.update(json.dumps(item).encode())
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



# ---------------------------------------------------------------- multiple choice


FEWSHOT_DELIMITER = "\n\n"  # between solved examples and before the item's prompt (lm-eval's)


def read_choice_items(spec: EvalSetSpec, base_dir: Path, table: str) -> list[Example]:
    """A multiple-choice set's eval items, each with ``num_fewshot`` solved examples before
    its prompt. Eval items are selected as any set's (seeded, ``eval_size``); the examples are
    drawn (seed ``spec.seed``, distinct within an item) from the other rows only, so no item
    ever sees an eval item's answer. Every bad row among those used is listed at once."""
    data = spec.as_data().model_copy(update={"fields": _choice_columns(spec)})
    pool, _ = load_pools(data, base_dir, table)
    check_fields(data, pool, table)
    sel = _select(data, pool, pool, False, table)
    k = spec.num_fewshot or 0
    if k > len(sel.train):
        raise DataError(f"{table}.num_fewshot = {k} but {pool.label} has {len(sel.train)} rows "
                        f"besides its {len(sel.eval)} eval items; few-shot examples never come "
                        f"from eval items (lower {table}.eval_size or num_fewshot)")
    render = choice_renderer(spec, table)
    problems: list[tuple[str, int, str]] = []
    items = _render_rows(render, pool, sel.eval, problems)
    shots = _render_rows(render, pool, sel.train, problems) if k else []
    problems += [(pool.key, i, msg) for i, msg in _repeated_ids(pool)]
    if problems:
        raise DataError(_listing([msg for *_, msg in sorted(problems)]))
    return _with_fewshot(items, shots, k, spec.seed)


def _choice_columns(spec: EvalSetSpec) -> dict[str, str]:
    """The columns a row must have: choices and answer always, question when mapped by
    ``fields`` (by default a template may read whatever columns it likes)."""
    return {v: c for v, c in spec.choice_fields.items() if v != "question" or v in spec.fields}


def _with_fewshot(items: list[Example], shots: list[Example], k: int, seed: int
                  ) -> list[Example]:
    if not k:
        return items
    rng = np.random.default_rng(seed)
    out = []
    for ex in items:
        solved = [shots[j] for j in rng.choice(len(shots), size=k, replace=False)]
        context = "".join(s.prompt + s.response + FEWSHOT_DELIMITER for s in solved)
        out.append(replace(ex, prompt=context + ex.prompt))
    return out


# ---------------------------------------------------------------- selection


@dataclass(frozen=True)
class _Selection:
    """Row indices per split (train into the train pool, the others into the held pool)."""

    train: list[int]
    validation: list[int]
    eval: list[int]
    left: str  # what remained for training, for size errors


def _select(spec: DataSpec, train_pool: Pool, held: Pool, training: bool, table: str,
            cut_train: bool = True) -> _Selection:
    """See the module docstring for the layout. Sizes larger than the data are errors, not
    silently fewer items; validation and train sizes only matter when the suite trains."""
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(len(held.rows)).tolist()
    n_eval = _eval_count(spec, held, table, two_pools=held is not train_pool)
    ev, rest = perm[:n_eval], perm[n_eval:]
    n_val = spec.validation_size
    if training and n_val > len(rest):
        raise DataError(f"{table}.validation_size = {n_val} but {len(rest)} rows of "
                        f"{held.label} remain after the {n_eval} eval items are held out")
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


def _eval_count(spec: DataSpec, pool: Pool, table: str, two_pools: bool) -> int:
    n = len(pool.rows)
    if spec.eval_size == "all" or (spec.eval_size is None and two_pools):
        return n
    if spec.eval_size is None:
        return max(1, n // 10)  # one file: hold out 10 %
    if spec.eval_size > n:
        raise DataError(f"{table}.eval_size = {spec.eval_size} but {pool.label} has {n} rows")
    return spec.eval_size


# ---------------------------------------------------------------- every row, every problem


MAX_LISTED = 10  # bad rows listed one per line; the rest are counted on one more line


def _render_selected(spec: DataSpec, train_pool: Pool, held: Pool, sel: _Selection, table: str,
                     ) -> tuple[list[Example], list[Example], list[Example]]:
    """The eval, validation and train examples, or one DataError listing, in file order, every
    bad row among them and every id the held pool repeats. A template that raises is the
    template's problem, not a row's: raised at its first row."""
    render = renderer(spec, table)
    problems: list[tuple[str, int, str]] = []  # (pool key, row, message): the sort order
    picks = [(held, sel.eval), (held, sel.validation), (train_pool, sel.train)]
    out = [_render_rows(render, pool, rows, problems) for pool, rows in picks]
    problems += [(held.key, i, msg) for i, msg in _repeated_ids(held)]
    if problems:
        raise DataError(_listing([msg for *_, msg in sorted(problems)]))
    return out[0], out[1], out[2]


def _render_rows(render: Any, pool: Pool, rows: list[int],
                 problems: list[tuple[str, int, str]]) -> list[Example]:
    examples = []
    for i in rows:
        try:
            examples.append(render(pool, i))
        except BadRow as e:
            problems.append((pool.key, i, str(e)))
    return examples


def _repeated_ids(pool: Pool) -> list[tuple[int, str]]:
    """(row, message) of each row whose id an earlier row of ``pool`` has: the pairing of
    arms, per id, would mix two items."""
    first: dict[str, int] = {}
    out = []
    for i, row in enumerate(pool.rows):
        ex_id = row_id(row, i)
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
