"""Reading a suite file: TOML text, ``--set`` and ``--adapter`` overrides, validation, and the
file line (or ``--set``) every error names.

The schema it validates against is `harness.suite.config`; this module adds what a file on disk
needs: syntax errors, overrides from the command line, and locating a bad key in the text.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.errors import ConfigError
from harness.suite.config import SUITE_FILE, Suite
from harness.suite.tracking import local_uri

# ---------------------------------------------------------------- loading


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               adapters: list[str] | tuple[str, ...] = (),
               exports: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read, override (``--set a.b=v``), add ``--adapter NAME=PATH`` arms and ``--export
    ARM=FORMAT`` exports, and validate a suite file.

    Every problem is reported at once, one line each: bad ``--set`` arguments, then schema
    errors, each naming the ``--set`` that caused it or else the file and line.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from e
    problems: list[str] = []
    origins = _apply_overrides(raw, overrides, problems)
    for add, items in ((add_adapter, adapters), (add_export, exports)):
        for item in items:
            try:
                add(raw, item)
            except ConfigError as e:
                problems.append(str(e))
    try:
        suite = validate_suite(raw, path=path, text=text, origins=origins)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return suite


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str],
                     problems: list[str]) -> dict[str, str]:
    """Apply each ``--set`` to ``raw``; its problems are appended to ``problems``. Returns
    dotted key -> the ``--set`` that wrote it (the last one of a key: its value is the one
    validated) or created it (a table: the first)."""
    origins: dict[str, str] = {}
    for item in overrides:
        try:
            *tables, key = apply_override(raw, item)
        except ConfigError as e:
            problems.append(str(e))
            continue
        origins[key] = item
        for table in tables:
            origins.setdefault(table, item)
    return origins


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the suite file: {e.strerror}") from e
    try:
        return data.decode("utf-8-sig")  # TOML is UTF-8; tolerate the BOM some editors write
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                          "save the suite file as UTF-8") from None


# Setting one source replaces the other, so `--set model.name_or_path=./tiny` swaps a packaged
# GGUF suite onto a local model (and `--set data.path=x.jsonl` a hub dataset onto a local file)
# without also having to unset the old source.
_SOURCE_SWITCH = {
    "model": {"name_or_path": ("package", "gguf_file"), "package": ("name_or_path",)},
    "data": {
        "path": ("dataset", "config_name", "train_path", "eval_path"),
        "train_path": ("dataset", "config_name", "path"),
        "dataset": ("path", "train_path", "eval_path"),
    },
}


def validate_suite(raw: dict[str, Any], *, path: Path, text: str = "",
                   origins: dict[str, str] | None = None, in_file: bool = True) -> Suite:
    """``raw`` as a Suite, or a ConfigError with one line per problem. ``text`` (the file) gives
    line numbers; ``origins`` maps dotted keys to the ``--set`` arguments that set them.
    ``in_file=False``: a suite rebuilt in memory (a sweep cell), whose errors name the key
    alone, not a file that did not write it."""
    try:
        return Suite.model_validate({**raw, "base_dir": path.parent}, context=SUITE_FILE)
    except ValidationError as e:
        lines = [_error_line(issue, path if in_file else None, text, origins or {})
                 for issue in _issues(e)]
        raise ConfigError("\n".join(lines)) from e


def apply_override(raw: dict[str, Any], item: str) -> list[str]:
    """``a.b.c=value``: value parsed as a TOML literal, else kept as a plain string. Returns
    the dotted keys it wrote: each table it created on the way (``a``, ``a.b`` when the file
    has neither), then the key itself, so an error about any of them names this ``--set``."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    node, created = raw, []
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents, 1):
        if part not in node:
            created.append(".".join(parents[:depth]))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a table")
        node = child
    for other in _SOURCE_SWITCH.get(".".join(parents), {}).get(leaf, ()):
        node.pop(other, None)
    node[leaf] = _from_cwd(key, parse_value(value.strip()))
    return [*created, key]


def add_adapter(raw: dict[str, Any], item: str) -> None:
    """``NAME=PATH`` from the command line: an existing adapter arm (a path relative to the
    current folder, as the shell means it, or a hub id)."""
    name, sep, where = item.partition("=")
    if not sep or not name.strip() or not where.strip():
        raise ConfigError(f"--adapter {item!r}: expected NAME=PATH (a folder or a hub id)")
    where = where.strip()
    local = Path(where).expanduser()
    if local.exists() or where.startswith((".", "/", "~")):
        where = str(local.resolve())
    raw.setdefault("adapters", []).append({"name": name.strip(), "path": where})


def add_export(raw: dict[str, Any], item: str) -> None:
    """``ARM=FORMAT`` from the command line: one more ``[[exports]]`` entry."""
    arm, sep, fmt = item.partition("=")
    if not sep or not arm.strip() or not fmt.strip():
        raise ConfigError(f"--export {item!r}: expected ARM=FORMAT (e.g. lora=merged)")
    raw.setdefault("exports", []).append({"from": arm.strip(), "format": fmt.strip()})


# A path typed on the command line means what the shell means: relative to the current folder,
# not to the suite file's (which is how paths written inside the suite resolve).
_DATA_PATH_KEYS = {"data.path", "data.train_path", "data.eval_path"}


def _from_cwd(key: str, value: Any) -> Any:
    if not isinstance(value, str) or Path(value).expanduser().is_absolute():
        return value
    if key in _DATA_PATH_KEYS or (key == "model.name_or_path" and Path(value).exists()):
        return str(Path(value).resolve())  # a model name that is no local folder: a hub id
    if key == "tracking.wandb.dir":
        return str(Path(value).expanduser().resolve())
    if key == "tracking.mlflow.tracking_uri":  # a server's URI is kept as it is
        return local_uri(value, lambda p: Path(p).expanduser().resolve())
    return value


def parse_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def with_overrides(suite: Suite, overrides: dict[str, Any]) -> Suite:
    """A copy of ``suite`` with dotted-key overrides applied and re-validated (sweep cells)."""
    raw = suite.model_dump(mode="json", exclude_none=True)
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_suite(raw, path=suite.base_dir / f"{suite.name}.toml", in_file=False)


# ---------------------------------------------------------------- error messages


@dataclass(frozen=True)
class _Issue:
    """One problem of one key: a pydantic error, or the merged errors of a union's members."""

    loc: tuple[str, ...]
    kind: str
    msg: str
    value: Any


# Pydantic puts a union member's tag into the location ('list[str]', "literal['all-linear']",
# 'function-after[...]'): cut there, so `target_modules = 5` is one problem, not two.
_TAG = re.compile(
    r"(?:list|dict|set|tuple|literal|union|tagged-union|nullable|function-[a-z-]+|"
    r"constrained-[a-z-]+|model|json-or-python|lax-or-strict|is-instance|chain)\[.*\]"
    r"|int|str|float|bool|none|bytes|constrained-[a-z-]+|lax-or-strict|json-or-python"
)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[tuple[str, ...], bool]:
    """(the key's dotted parts, whether the error came from inside a union member)."""
    out: list[str] = []
    for part in loc:
        if part == "[key]":  # a bad dict key: the error is about the key itself
            continue
        if isinstance(part, str) and out and _TAG.fullmatch(part):
            return tuple(out), True
        out.append(str(part))
    return tuple(out), False


def _issues(e: ValidationError) -> list[_Issue]:
    groups: dict[Any, list[tuple[tuple[str, ...], Any]]] = {}
    for i, err in enumerate(e.errors()):
        loc, in_union = _clean_loc(err["loc"])
        groups.setdefault(("union", loc) if in_union else ("one", i), []).append((loc, err))
    return [_merge(items) for items in groups.values()]


def _merge(items: list[tuple[tuple[str, ...], dict[str, Any]]]) -> _Issue:
    loc, first = items[0]
    if len(items) == 1:
        return _Issue(loc, first["type"], first["msg"], first.get("input"))
    prefix = "Input should be "  # "a valid integer, unable to parse ..." -> "a valid integer"
    msgs = list(dict.fromkeys(err["msg"].removeprefix(prefix).split(", ")[0] for _, err in items))
    whole = min((err for _, err in items), key=lambda err: len(err["loc"]))  # the key's value
    return _Issue(loc, "union", prefix + " or ".join(msgs), whole.get("input"))


def _error_line(issue: _Issue, path: Path | None, text: str, origins: dict[str, str]) -> str:
    where = _where(issue, path, text, origins)
    return f"{where}: {_describe(issue)}" if where else _describe(issue)


def _where(issue: _Issue, path: Path | None, text: str, origins: dict[str, str]) -> str:
    item = _override_for(issue, origins)
    if item is not None:
        return f"--set {item}"
    if path is None:
        return ""
    line = _line_of(text, list(issue.loc))
    return f"{path}:{line}" if line else f"{path}"


def _override_for(issue: _Issue, origins: dict[str, str]) -> str | None:
    """The --set behind an error: the key itself, or a table it replaced or created (an
    unknown key at any depth under one); for a check across the keys of a table, a --set of
    a key inside it that the message names. The longest matching key wins."""
    dotted = ".".join(issue.loc)
    if not dotted:
        return None
    hits = [k for k in origins if k == dotted or dotted.startswith(k + ".")
            or (k.startswith(dotted + ".") and k.rsplit(".", 1)[-1] in issue.msg)]
    return origins[max(hits, key=len)] if hits else None


def _describe(issue: _Issue) -> str:
    dotted = ".".join(_toml_key(p) for p in issue.loc) or "(suite)"
    if issue.kind == "extra_forbidden":
        return f"{dotted}: unknown key{_suggest(list(issue.loc))}"
    if issue.kind == "missing":
        return f"{dotted}: required key is missing"
    if issue.kind == "bool_type":
        return f"{dotted}: expected true or false (got {issue.value!r})"
    msg = issue.msg.removeprefix("Value error, ")
    got = f" (got {issue.value!r})" if issue.kind != "value_error" and issue.loc else ""
    return f"{dotted}: {msg}{got}"


def _toml_key(part: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted (`baseline_templates."a b"`)."""
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)


def _suggest(loc: list[str]) -> str:
    model: Any = Suite
    for part in loc[:-1]:
        if part.isdigit():  # an item of a list of tables: same model
            continue
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field else None
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _submodel(annotation: Any) -> Any:
    """The pydantic model inside an annotation: TrainSpec of Optional[TrainSpec], SweepCell of
    list[SweepCell]; None when there is none."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- finding a key's line


def _line_of(text: str, loc: list[str]) -> int | None:
    """Best-effort line of a dotted key in the TOML text: the key's own line, else the line of
    the nearest enclosing key or table that is written in the file."""
    if not text or not loc:
        return None
    lines = _mask_strings(text.splitlines())
    parts = list(loc)
    while parts and parts[-1].isdigit():  # an item of an inline array: the array's line
        parts.pop()
    for k in range(len(parts) - 1, -1, -1):
        if not parts[k].isdigit():
            line = _find_key(lines, parts[:k], parts[k])
            if line:
                return line
    return None


def _mask_strings(lines: list[str]) -> list[str]:
    """Lines inside a multi-line string blanked: a prompt template's "[INST]" line is text,
    not a table header."""
    out, inside = [], None
    for ln in lines:
        if inside is not None:
            out.append("")
            inside = None if inside in ln else inside
            continue
        out.append(ln)
        for quote in ('"""', "'''"):
            if ln.count(quote) % 2:
                inside = quote
                break
    return out


def _find_key(lines: list[str], table: list[str], key: str) -> int | None:
    """1-based line of ``key = ...`` inside ``[table]`` (the n-th ``[[table]]`` when the last
    part of ``table`` is an index), else of a ``[table.key]`` header."""
    region = _table_region(lines, table)
    if region is not None:
        pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""")
        start, end = region
        hit = next((i for i in range(start, end) if pattern.match(lines[i])), None)
        if hit is not None:
            return hit + 1
    sub = _table_region(lines, [*table, key])
    return sub[0] if sub else None  # the header is the line before the region


def _table_region(lines: list[str], table: list[str]) -> tuple[int, int] | None:
    """[first, end) line indexes of a table's body; the root table for []."""
    headers = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")]
    if not table:
        return 0, headers[0] if headers else len(lines)
    names = ".".join(p for p in table if not p.isdigit())
    nth = int(table[-1]) if table[-1].isdigit() else 0
    hdr = re.compile(rf"^\s*\[\[?\s*{re.escape(names)}\s*\]\]?\s*(#.*)?$")
    found = [i for i in headers if hdr.match(lines[i])]
    if len(found) <= nth:
        return None
    start = found[nth] + 1
    return start, next((i for i in headers if i >= start), len(lines))
