"""How harness writes numbers and text for people: one implementation per job, used by
compare, report, gate, progress, plan and the model card."""

from __future__ import annotations

from typing import Any

DASH = "—"


def md_cell(value: Any) -> str:
    """One GitHub-Markdown table cell: no row breaks, no column breaks, no raw HTML."""
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").split())
