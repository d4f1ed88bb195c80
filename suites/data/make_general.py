"""Build general.jsonl: held-out general text for the default suite's forgetting check.

Source: module docstrings of the CPython standard library that ships with every Python,
written by its authors (PSF License Version 2, https://docs.python.org/3/license.html). Real
prose about many subjects (text, time, networking, mathematics, files), none of it weather
bulletins, so a rise in its perplexity after fine-tuning measures what the adapter cost the
base model outside its task. Paragraphs of 25-120 words, deduplicated, in sorted module order;
the file records the Python version and module each paragraph came from.

Run: python suites/data/make_general.py  (writes suites/data/general.jsonl)
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import platform
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

SKIP = ("test", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "antigravity", "this")


def paragraphs(doc: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", doc):
        text = " ".join(block.split())
        words = text.split()
        # prose only: no doctest, no option tables, no signatures
        if not 25 <= len(words) <= 120 or ">>>" in text or text.count("  ") or "::" in text:
            continue
        if sum(ch.isalpha() or ch.isspace() for ch in text) < 0.9 * len(text):
            continue
        out.append(text)
    return out


def module_docstrings(skip: tuple[str, ...] = SKIP) -> Iterator[tuple[str, str]]:
    """(name, docstring) of each top-level standard-library module, in sorted name order."""
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(
        sys.base_prefix) and "site-packages" not in m.module_finder.path)
    for name in names:
        if name.startswith("_") or name.startswith(skip):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield name, importlib.import_module(name).__doc__ or ""
            except Exception:  # noqa: BLE001 - platform-only modules
                continue


def main() -> None:
    seen, rows = set(), []
    for name, doc in module_docstrings():
        for text in paragraphs(doc):
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "source": f"python {platform.python_version()} "
                                                      f"stdlib: {name}"})
    out = Path(__file__).with_name("general.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    print(f"{len(rows)} paragraphs -> {out}")


if __name__ == "__main__":
    main()
