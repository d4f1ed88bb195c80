"""What harness prints and writes for people, fed names from hostile files: no terminal escape
sequence reaches the terminal, no rich markup is interpreted, no CSV cell is a spreadsheet
formula, and the terminal tables stay readable at 80 columns."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from harness import formatting as F

from .factories import make_run

REPO = Path(__file__).parent.parent
# A window-title change (OSC, ended by BEL), a screen clear (CSI), a C1 CSI and rich markup.
TITLE, CLEAR, C1 = "\x1b]0;pwned\x07", "\x1b[2J", "\x9b31m"
HOSTILE_ARM = f"x{TITLE}{CLEAR}{C1}[/red][bold]"
FORMULAS = ['=HYPERLINK("http://x","y")', "+1+2", "-2+3+cmd|' /C calc'!A0", "@SUM(1,2)",
            "\tlead", "\rlead"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("NO_COLOR", None)
    return {**env, **extra}


def _harness(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          env=_env(), timeout=120)


def _in_terminal(code: str, *args: str, columns: int = 80) -> str:
    """Run ``python -c code args`` with stdout and stderr on a pseudo-terminal of ``columns``
    columns, as a user's shell would; everything it drew, decoded."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL,
                            env=_env(COLUMNS=str(columns), LINES="50", TERM="xterm-256color"))
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode("utf-8", errors="replace")


def _raw_controls(text: str) -> list[str]:
    """The hostile sequences (or their C1 introducer) that reached the output raw."""
    return [s for s in (TITLE[:-1], CLEAR, "\x9b", "\x07") if s in text]


def _styles_stripped(text: str) -> str:
    """Terminal output less rich's own SGR colour codes and cursor show/hide."""
    return re.sub(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]", "", text)


# ---------------------------------------------------------------- escapes and markup


def test_printable_escapes_every_control_character_but_newline_and_tab():
    text = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u202e\u2066é→"
    shown = F.printable(text)
    bad = [c for c in shown if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0
           or c in "\u202e\u2066"]
    assert bad == []
    assert "\\x1b" in shown and "\\x9b" in shown and "\\u202e" in shown
    assert shown.endswith("é→") and "\n" in shown and "\t" in shown


def test_compare_and_gate_print_no_escape_sequence_from_an_arm_name(tmp_path: Path):
    run = make_run(tmp_path, arms={"baseline": (0.3, 2.5), HOSTILE_ARM: (0.45, 1.8)})
    for args in (["compare", str(run)], ["compare", str(run), "--format", "csv"],
                 ["compare", str(run), "--format", "json"],
                 ["gate", str(run), "--rule", "rougeL:-1%:vs-zero-shot"]):
        res = _harness(*args)
        shown = (res.stdout + res.stderr).decode()
        assert res.returncode == 0, shown
        assert _raw_controls(shown) == [], (args, shown[:400])
        assert "x\\x1b]0;pwned" in shown or "x\\u001b]0;pwned" in shown, (args, shown[:400])


def test_compare_json_escapes_control_characters_and_reads_back_the_same_name(tmp_path: Path):
    run = make_run(tmp_path, arms={"baseline": (0.3, 2.5), HOSTILE_ARM: (0.45, 1.8)})
    res = _harness("compare", str(run), "--format", "json")
    assert res.returncode == 0 and _raw_controls(res.stdout.decode()) == []
    doc = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert {c["candidate_arm"] for c in doc["comparisons"]} == {HOSTILE_ARM}


def test_compare_markdown_file_holds_no_escape_sequence(tmp_path: Path):
    run = make_run(tmp_path, arms={"baseline": (0.3, 2.5), HOSTILE_ARM: (0.45, 1.8)})
    out = tmp_path / "table.md"
    assert _harness("compare", str(run), "--output", str(out)).returncode == 0
    assert _raw_controls(out.read_text(encoding="utf-8")) == []


def test_validate_prints_no_escape_sequence_from_a_data_column(suite_dir: Path):
    rows = [json.loads(line) for line in
            (suite_dir / "instruct.jsonl").read_text(encoding="utf-8").splitlines()]
    (suite_dir / "instruct.jsonl").write_text(
        "".join(json.dumps({**r, f"col{TITLE}{CLEAR}{C1}": 1}) + "\n" for r in rows),
        encoding="utf-8")
    text = (suite_dir / "tiny.toml").read_text(encoding="utf-8")
    (suite_dir / "tiny.toml").write_text(text.replace('output = "output"', 'output = "answer"'),
                                         encoding="utf-8")
    res = _harness("validate", str(suite_dir / "tiny.toml"))
    shown = (res.stdout + res.stderr).decode()
    assert res.returncode == 2 and "answer" in shown, shown
    assert _raw_controls(shown) == [], shown
    assert "col\\x1b]0;pwned" in shown


def test_terminal_summary_neither_escapes_nor_reads_markup_from_an_arm_name(tmp_path: Path):
    """`harness run` / `merge` print the summary through cli._print_tables: on a terminal an
    arm named ``[/red]...`` must not be rich markup (a MarkupError traceback) nor style the
    table, and its escape sequences must not reach the terminal."""
    run = make_run(tmp_path, arms={"baseline": (0.3, 2.5), HOSTILE_ARM: (0.45, 1.8)})
    shown = _in_terminal(_PRINT_TABLES, str(run / "run.json"), columns=120)
    assert _raw_controls(_styles_stripped(shown)) == [], shown
    assert "[/red][bold]" in shown


# ---------------------------------------------------------------- CSV formulas


def test_compare_csv_neutralises_formula_cells_but_keeps_numbers(tmp_path: Path):
    arms = {"baseline": (0.3, 2.5), **{name: (0.45, 1.8) for name in FORMULAS}}
    run = make_run(tmp_path, arms=arms)
    out = tmp_path / "table.csv"
    res = _harness("compare", str(run), "--format", "csv", "--output", str(out))
    assert res.returncode == 0, res.stderr.decode()
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    shown_arms = {r["candidate_arm"] for r in rows}
    assert shown_arms == {"'" + name for name in FORMULAS}
    # a spreadsheet reads a cell as a formula when it starts with one of these
    danger = [(k, v) for r in rows for k, v in r.items() if v[:1] in ("=", "+", "@", "\t", "\r")
              or (v[:1] == "-" and not _is_number(v))]
    assert danger == []
    # numbers stay numbers: negative differences (lower loss) are not quoted
    loss = [r for r in rows if r["metric"] == "loss"]
    assert loss and all(float(r["abs_diff"]) < 0 and float(r["ci_low"]) < 0 for r in loss)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_csv_cell_quotes_text_that_starts_a_formula_only():
    assert [F.csv_cell(v) for v in ("=1+2", "+x", "-x", "@x", "\tx", "\rx", "a=b", "")] == [
        "'=1+2", "'+x", "'-x", "'@x", "'\tx", "'\rx", "a=b", ""]
    assert [F.csv_cell(v) for v in (-0.12, "-0.12", "-1e-05", 3, True, None)] == [
        -0.12, "-0.12", "-1e-05", 3, True, None]


_PRINT_TABLES = ("import json, sys; from harness import cli; "
                 "cli._print_tables(json.load(open(sys.argv[1], encoding='utf-8')))")

@pytest.mark.parametrize("width", [80, 120])
def test_progress_description_is_not_markup(width: int):
    from rich.console import Console

    from harness import progress

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    with progress.console_progress(console) as prog:
        advance = prog.task(f"train {HOSTILE_ARM}", 10)
        advance(1, info=f"note {CLEAR}[/red]")
    text = buf.getvalue()
    assert "[/red][bold]" in text and _raw_controls(text) == [], repr(text)
