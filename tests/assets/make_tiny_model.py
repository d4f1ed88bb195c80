"""Write tests/assets/tiny-llama/: the tiny Llama + BPE tokenizer of tests/conftest.py, saved.

The CI gate suite (suites/ci.toml) runs on it, so a committed copy keeps that suite offline
and deterministic. Rerun after changing conftest's builders:
`python tests/assets/make_tiny_model.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.conftest import build_model, build_tokenizer  # noqa: E402


def main() -> None:
    out = HERE / "tiny-llama"
    tok = build_tokenizer()
    build_model(tok).save_pretrained(out)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main()
