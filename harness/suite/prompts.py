"""Prompt templates: a row -> an `Example` (prompt, response, earlier chat turns), rendered by
sandboxed Jinja with the suite's fields mapping. A value a template would render as "None" is
the row's problem (`BadRow`), not text to score. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from harness.errors import DataError, one_line
from harness.suite.config import DataSpec, EvalSetSpec
from harness.suite.datafiles import Pool

# ShareGPT speaker names -> chat-template roles (FineTome-100k uses "from"/"value").
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}


@dataclass(frozen=True)
class Example:
    """One prompt/response pair. ``messages`` holds earlier chat turns for conversation data.

    A multiple-choice item: ``prompt`` is its whole context (few-shot examples, then its own
    prompt), ``choices`` the choices as the row gives them, ``continuations`` each rendered by
    the choice template (the text scored after the context), ``gold`` the answer's index and
    ``response`` its continuation."""

    id: str
    prompt: str
    response: str
    messages: tuple[tuple[str, str], ...] = ()
    choices: tuple[str, ...] = ()
    continuations: tuple[str, ...] = ()
    gold: int | None = None


class BadRow(DataError):
    """A problem of one row's data (not of a template): collected, so all are listed."""



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
    key: str  # the suite key: data.prompt_template, eval.sets.NAME.response_template, ...
    template: Any
    names: frozenset[str]  # the variables it reads


def _compile(key: str, text: str) -> _Template:
    try:
        names = meta.find_undeclared_variables(_ENV.parse(text))
        return _Template(key, _ENV.from_string(text), frozenset(names))
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise DataError(f"{key}: template error (line {line}): {e}") from e


def renderer(spec: DataSpec, table: str):
    """(pool, row index) -> Example, with the suite's fields mapping and sandboxed Jinja;
    errors name ``table``'s keys (``data``, ``eval.sets.NAME``)."""
    prompt_t = _compile(f"{table}.prompt_template", spec.prompt_template)
    response_t = _compile(f"{table}.response_template", spec.response_template)

    def render(pool: Pool, i: int) -> Example:
        row = pool.rows[i]
        ctx = {**row, **{var: row.get(col) for var, col in spec.fields.items()}}
        ex_id = row_id(row, i)
        messages: tuple[tuple[str, str], ...] = ()
        if spec.conversations_field:
            where = f"{pool.key}: {pool.at(i)}: item {ex_id}"
            messages, last = _split_conversation(row.get(spec.conversations_field), where)
            ctx.setdefault("response", last)
            ctx.setdefault("prompt", messages[-1][1] if messages else "")
        prompt = _render(prompt_t, ctx, spec.fields, pool, i)
        response = _render(response_t, ctx, spec.fields, pool, i)
        return Example(id=ex_id, prompt=prompt, response=response, messages=messages)

    return render


def row_id(row: dict[str, Any], index: int) -> str:
    # A row without an id of its own (None when other rows have one) is named by position.
    value = row.get("id")
    return f"row-{index}" if value is None else str(value)


def _render(t: _Template, ctx: dict[str, Any], fields: dict[str, str], pool: Pool, i: int
            ) -> str:
    try:
        return t.template.render(**ctx)
    except _Missing:
        cols = ", ".join(repr(fields.get(v, v)) for v in _culprits(t, ctx))
        what = f"column {cols}" if cols else "a variable"
        raise BadRow(f"{pool.key}: {pool.at(i)}: item {row_id(pool.rows[i], i)} has no value "
                      f"for {what} (absent or null), which {t.key} renders") from None
    except Exception as e:  # noqa: BLE001 - a template is user code; whatever it raises
        problem = one_line(e) if isinstance(e, TemplateError) else f"{type(e).__name__}: {e}"
        raise DataError(f"{t.key}: cannot render item {row_id(pool.rows[i], i)} "
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
        raise BadRow(f"{where}: conversation is not a non-empty list")
    pairs = []
    for t in turns:
        turn = t if isinstance(t, dict) else {}
        role = _ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        text = turn.get("content", turn.get("value"))
        if role is None or text is None:
            raise BadRow(f"{where}: turn without role/content: {t}")
        pairs.append((role, str(text)))
    if pairs[-1][0] != "assistant":
        raise BadRow(f"{where}: conversation does not end with an assistant turn")
    return tuple(pairs[:-1]), pairs[-1][1]


# ---------------------------------------------------------------- multiple choice


def choice_renderer(spec: EvalSetSpec, table: str):
    """(pool, row index) -> Example of a multiple-choice row: its prompt (no few-shot
    examples yet), choices, their continuations and the answer's index. BadRow names the
    row's file and line: choices not a list of texts, fewer than 2, an answer out of range
    or not among them."""
    prompt_t = _compile(f"{table}.prompt_template", spec.prompt_template)
    choice_t = _compile(f"{table}.choice_template", spec.choice_text)
    fields = spec.choice_fields

    def render(pool: Pool, i: int) -> Example:
        row = pool.rows[i]
        ctx = {**row, **{var: row.get(col) for var, col in fields.items()}}
        where = f"{pool.key}: {pool.at(i)}: item {row_id(row, i)}"
        choices = _choices(ctx["choices"], fields["choices"], where)
        gold = _gold(ctx["answer"], choices, fields["answer"], where)
        prompt = _render(prompt_t, ctx, fields, pool, i)
        conts = tuple(_render(choice_t, {**ctx, "choice": c}, fields, pool, i) for c in choices)
        return Example(id=row_id(row, i), prompt=prompt, response=conts[gold], choices=choices,
                       continuations=conts, gold=gold)

    return render


def _choices(value: Any, column: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        got = "no value" if value is None else f"a {type(value).__name__}"
        raise BadRow(f"{where}: column {column!r} must be a list of choices, got {got}")
    if len(value) < 2:
        raise BadRow(f"{where}: column {column!r} has {len(value)} choice(s); a "
                     "multiple-choice item needs at least 2")
    bad = [k for k, c in enumerate(value) if isinstance(c, bool) or not isinstance(c, str | int
                                                                                 | float)]
    if bad:
        raise BadRow(f"{where}: choice {bad[0]} of column {column!r} is not text: "
                     f"{value[bad[0]]!r}")
    texts = tuple(str(c) for c in value)
    if "" in texts:  # nothing to score, and acc_norm would divide by its length, 0
        raise BadRow(f"{where}: choice {texts.index('')} of column {column!r} is empty")
    return texts


def _gold(value: Any, choices: tuple[str, ...], column: str, where: str) -> int:
    """``answer``: a 0-based index into the choices, or the text of one of them."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(choices):
            return value
        raise BadRow(f"{where}: answer {value} (column {column!r}) is out of range: "
                     f"{len(choices)} choices, indexed 0..{len(choices) - 1}")
    if isinstance(value, str):
        if value in choices:
            return choices.index(value)
        raise BadRow(f"{where}: answer {value!r} (column {column!r}) is not one of the "
                     f"choices {list(choices)}")
    got = "no value" if value is None else f"{value!r}"
    raise BadRow(f"{where}: answer (column {column!r}) must be a choice's 0-based index or "
                 f"its text, got {got}")
