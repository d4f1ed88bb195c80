"""Build modules_mc.jsonl: a four-choice benchmark for the default suite's forgetting check,
"which standard-library module does this docstring describe?".

Source: the first paragraph of each module docstring of the CPython standard library that ships
with every Python, written by its authors (PSF License Version 2,
https://docs.python.org/3/license.html). A paragraph that names its own module is left out, so
the answer is never spelled out in the question; the three wrong choices are other modules of the
same list, drawn with a fixed seed, and the right one sits at a seeded position. Each row
records the Python version and the module it came from.

Run: python suites/data/make_modules_mc.py  (writes suites/data/modules_mc.jsonl)
"""

from __future__ import annotations

import json
import platform
import random
import re
from pathlib import Path

from make_general import SKIP as GENERAL_SKIP
from make_general import module_docstrings

SKIP = (*GENERAL_SKIP, "xx")  # xxlimited*: CPython's test extension modules
SEED = 0
N_CHOICES = 4
MIN_WORDS, MAX_WORDS = 6, 60  # a sentence that says what the module is, not a whole manual


def first_paragraph(name: str, doc: str) -> str | None:
    text = " ".join(re.split(r"\n\s*\n", doc.strip())[0].split())
    if re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE):
        return None
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or ">>>" in text or "::" in text:
        return None
    return text


def docstrings() -> list[tuple[str, str]]:
    found, seen = [], set()
    for name, doc in module_docstrings(SKIP):
        text = first_paragraph(name, doc)
        if text and text not in seen:
            seen.add(text)
            found.append((name, text))
    return found


def main() -> None:
    rng = random.Random(SEED)
    found = docstrings()
    names = [n for n, _ in found]
    rows = []
    for name, text in found:
        wrong = rng.sample([n for n in names if n != name], N_CHOICES - 1)
        answer = rng.randrange(N_CHOICES)
        choices = wrong[:answer] + [name] + wrong[answer:]
        rows.append({"question": text, "choices": choices, "answer": answer,
                     "source": f"python {platform.python_version()} stdlib: {name}"})
    out = Path(__file__).with_name("modules_mc.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    print(f"{len(rows)} questions -> {out}")


if __name__ == "__main__":
    main()
