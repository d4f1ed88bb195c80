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
from harness.suite.config import DataSpec
from harness.suite.datafiles import Pool

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
        prompt = _render(prompt_t, ctx, spec, pool, i)
        response = _render(response_t, ctx, spec, pool, i)
        return Example(id=ex_id, prompt=prompt, response=response, messages=messages)

    return render


def row_id(row: dict[str, Any], index: int) -> str:
    # A row without an id of its own (None when other rows have one) is named by position.
    value = row.get("id")
    return f"row-{index}" if value is None else str(value)


def _render(t: _Template, ctx: dict[str, Any], spec: DataSpec, pool: Pool, i: int) -> str:
    try:
        return t.template.render(**ctx)
    except _Missing:
        cols = ", ".join(repr(spec.fields.get(v, v)) for v in _culprits(t, ctx))
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
