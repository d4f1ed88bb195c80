"""The one Jinja environment for everything harness renders from ``templates/``: the run
report (HTML and Markdown), the compare table's HTML and the adapter model card."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jinja2

from harness.errors import HarnessError
from harness.views.formatting import md_cell

TEMPLATES_ENV = "HARNESS_TEMPLATES"  # override for non-editable installs
_MARKER = "report.html.j2"  # a folder holding this is a templates folder


def templates_dir() -> Path:
    """$HARNESS_TEMPLATES, else the checkout's templates/ (editable install), else the copy a
    regular install puts in <prefix>/share/harness/templates (pyproject data-files)."""
    override = os.environ.get(TEMPLATES_ENV)
    candidates = [Path(override)] if override else [
        Path(__file__).resolve().parents[2] / "templates",
        Path(sys.prefix) / "share" / "harness" / "templates",
    ]
    path = next((p for p in candidates if (p / _MARKER).is_file()), candidates[0])
    if not (path / _MARKER).is_file():
        raise HarnessError(
            f"report templates not found in {path}; install harness from a checkout "
            f"(pip install -e .) or point {TEMPLATES_ENV} at the repository's templates/ folder"
        )
    return path


_ENV: dict[Path, jinja2.Environment] = {}


def environment() -> jinja2.Environment:
    path = templates_dir()
    if path not in _ENV:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(path),
            undefined=jinja2.StrictUndefined,
            # HTML (and anything unknown) is escaped; Markdown is not, it uses the md filter.
            autoescape=jinja2.select_autoescape(disabled_extensions=("md.j2", "md"),
                                                default=True, default_for_string=True),
            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        )
        env.filters["md"] = md_cell
        _ENV[path] = env
    return _ENV[path]


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)


def read(name: str) -> str:
    """A static file beside the templates (the report's inline JS and CSS)."""
    return (templates_dir() / name).read_text(encoding="utf-8")
