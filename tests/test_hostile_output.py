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

from harness.views import formatting as F

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
    """`harness run` / `merge` print the summary through cli.summary.print_tables: on a terminal an
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


# ---------------------------------------------------------------- 80 columns


_PRINT_TABLES = ("import json, sys; from harness.cli import summary; "
                 "summary.print_tables(json.load(open(sys.argv[1], encoding='utf-8')))")
SWEEP = {"baseline": (0.30, 2.5), "lora_r8": (0.40, 2.0), "lora_r16": (0.45, 1.9),
         "lora_r32": (0.50, 1.8)}


def _with_comparisons(run: Path) -> Path:
    """The record with every adapter arm compared with zero-shot, as a run stores it."""
    from harness.stats import paired as stats

    rec = json.loads((run / "run.json").read_text(encoding="utf-8"))
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    by_arm: dict[str, list] = {}
    for p in preds:
        by_arm.setdefault(p["arm"], []).append(p)
    metrics = {a: rec["arms"][a]["metrics"] for a in by_arm}
    rec["comparisons"] = [
        c for arm in by_arm if arm != "baseline"
        for c in stats.compare_arms(by_arm["baseline"], by_arm[arm], metrics["baseline"],
                                    metrics[arm], baseline="baseline", candidate=arm,
                                    n_resamples=200)]
    path = run / "with_comparisons.json"
    path.write_text(json.dumps(rec), encoding="utf-8")
    return path


@pytest.mark.parametrize("columns", [80, 120])
def test_summary_at_80_columns_shows_every_cell_and_each_ci_on_one_line(tmp_path: Path,
                                                                        columns: int):
    path = _with_comparisons(make_run(tmp_path, arms=SWEEP))
    rec = json.loads(path.read_text(encoding="utf-8"))
    assert len(rec["comparisons"]) >= 3 * 6
    shown = _styles_stripped(_in_terminal(_PRINT_TABLES, str(path), columns=columns))
    lines = shown.replace("\r\n", "\n").split("\n")
    assert max(len(line) for line in lines) <= columns
    assert "…" not in shown, shown
    for c in rec["comparisons"]:
        if c.get("ci_low") is None:
            continue
        ci = F.interval(c["ci_low"], c["ci_high"], lambda v, m=c["metric"]: F.metric(m, v, True))
        delta = F.metric(c["metric"], c["abs_diff"], signed=True)
        # at 120 columns the change and its CI share a line; at 80 the CI may sit under it
        together = [line for line in lines if f"{delta} {ci}" in line]
        assert together or columns == 80 and any(ci in line for line in lines), (ci, shown)
    for arm in SWEEP:
        if arm != "baseline":
            assert f": {arm} vs Zero-shot" in shown


def test_seed_table_at_80_columns_shows_every_cell_and_each_ci_on_one_line(tmp_path: Path):
    rows = [{"recipe": r, "n_seeds": 3, "metric": m, "baseline_value": b, "candidate_value": c,
             "abs_diff": c - b, "ci_low": (c - b) * 1.3, "ci_high": (c - b) * 0.7,
             "seed_sd": 0.0123, "significant": True}
            for r in ("lora", "lora_r16_lr0.0002")
            for m, b, c in (("loss", 2.5, 1.9), ("perplexity", 12.18, 6.69),
                            ("rougeL", 0.28, 0.43), ("general/perplexity", 15.2, 14.9))]
    record = {"suite": "toy", "run_id": "r1", "arms": {}, "seed_comparisons": rows}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    shown = _styles_stripped(_in_terminal(_PRINT_TABLES, str(path), columns=80))
    lines = shown.replace("\r\n", "\n").split("\n")
    assert "…" not in shown and max(len(line) for line in lines) <= 80, shown
    for c in rows:
        m = c["metric"]
        ci = F.interval(c["ci_low"], c["ci_high"], lambda v, m=m: F.metric(m, v, True))
        assert any(ci in line for line in lines), (ci, shown)
        assert any(F.metric(m, c["abs_diff"], signed=True) in line for line in lines)


def test_progress_line_keeps_step_and_eta_at_80_columns():
    from rich.console import Console

    from harness.run import progress

    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    with progress.console_progress(console) as prog:
        advance = prog.task("train lora_r16_lr0.0002", 240)
        advance(30)
        advance(0, info="loss 1.234, eval loss 1.456, learning rate 0.0002")
    last = buf.getvalue().replace("\r\n", "\n").split("\r")[-1]
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last)
    assert "30/240" in last, repr(last)
    assert re.search(r"ETA (\d+:\d\d:\d\d|-:--:--)", last), repr(last)
    assert "train lora_r16_lr0.0002" in last and "loss 1.234" in last, repr(last)


@pytest.mark.parametrize("width", [80, 120])
def test_progress_description_is_not_markup(width: int):
    from rich.console import Console

    from harness.run import progress

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    with progress.console_progress(console) as prog:
        advance = prog.task(f"train {HOSTILE_ARM}", 10)
        advance(1, info=f"note {CLEAR}[/red]")
    text = buf.getvalue()
    assert "[/red][bold]" in text and _raw_controls(text) == [], repr(text)
