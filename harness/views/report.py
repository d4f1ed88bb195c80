"""Render a stored run into ``report.html`` and ``report.md``, as README describes.

Reads the record and its JSONL files only, never torch, so ``harness report`` runs in a plain CI
job on records made on a GPU box. Python turns the record into display-ready strings (numbers
through ``harness.views.formatting``, the "is higher better?" logic here and in the ``report_*``
modules: the headline, the side tables, the charts, the example browser); the Jinja templates
in ``templates/`` (rendered by ``harness.views.templating``) only lay them out. The HTML is one
self-contained file: inline CSS, inline SVG plots, a few lines of inline JS, and a
Content-Security-Policy that forbids every fetch.

Model outputs and dataset text are untrusted: HTML autoescaping covers the HTML report, and the
``md`` filter neutralises ``|``, newlines and ``<`` in Markdown table cells.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from markupsafe import Markup

from harness.rundir.record import LoadedRun, Status, noop_warning
from harness.rundir.results import REPORT_FILES, atomic_write_text
from harness.views import formatting as F
from harness.views import templating
from harness.views.formatting import DASH
from harness.views.report_benchmarks import benchmark_tables
from harness.views.report_data import ReportData, as_dict, ci_label, memory_kind, read_data
from harness.views.report_deployment import deployment_tables
from harness.views.report_examples import example_browser
from harness.views.report_frontier import frontier_plots, frontier_table
from harness.views.report_headline import (
    contenders,
    forgetting_change_label,
    forgetting_rows,
    forgetting_sets,
    headline_cards,
    headline_tables,
    leaderboard,
    seed_rows,
)
from harness.views.report_plots import charts
from harness.views.report_tables import (
    arm_table,
    config_rows,
    existing_table,
    length_table,
    training_table,
)

HTML_TEMPLATE, MD_TEMPLATE, JS_FILE = "report.html.j2", "report.md.j2", "_report.js"
# The CI is per metric, so the p beside it ("p") is the metric's own; the Holm-adjusted p,
# which decides significance, has its own label.
P_HOLM_LABEL = "p (Holm)"


# ------------------------------------------------------------------ public API


def write_reports(run: LoadedRun) -> list[Path]:
    """Write report.html and report.md into the run directory; return their paths."""
    html, md = render_html(run), render_markdown(run)
    return [atomic_write_text(run.path / name, text)
            for name, text in zip(REPORT_FILES, (html, md), strict=True)]


def render_html(run: LoadedRun) -> str:
    data = read_data(run)
    script = templating.read(JS_FILE)
    # The CSP admits exactly this script by its hash: injected markup could not run code even
    # if escaping ever failed, and nothing can be fetched from anywhere.
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return templating.render(
        HTML_TEMPLATE, **_context(run, data), plots=charts(data), examples=example_browser(data),
        frontier_plots=frontier_plots(data), script=Markup(script), script_hash=digest)


def render_markdown(run: LoadedRun) -> str:
    return templating.render(MD_TEMPLATE, **_context(run, read_data(run)))


# ------------------------------------------------------------------ context shared by both


def _noops(rec: dict[str, Any]) -> list[str]:
    """Adapter arms the run found to do nothing: the report leads with them."""
    arms = as_dict(rec.get("arms"))
    return [noop_warning(n, str(as_dict(a)["noop"])) for n, a in arms.items()
            if as_dict(a).get("noop")]


def _context(run: LoadedRun, d: ReportData) -> dict[str, Any]:
    rec, headline, forgetting = d.record, headline_tables(d), forgetting_rows(d)
    entries = contenders(d, headline)
    return {
        "suite": run.suite, "run_id": run.run_id, "status": str(rec.get("status", "unknown")),
        "error": _error(rec), "noops": _noops(rec),
        "warnings": [w for w in d.warnings if w not in _noops(rec)],
        "summary": _summary(rec, d),
        "versions": _versions(as_dict(rec.get("env"))), "headline": headline,
        "cards": headline_cards(entries, forgetting_sets(d)),
        "leaderboard": leaderboard(d, entries), "benchmarks": benchmark_tables(d),
        "deployment": deployment_tables(d), "frontier": frontier_table(d),
        "p_label": P_HOLM_LABEL, "ci_label": ci_label(d.alpha),
        "alpha": d.alpha, "arm_table": arm_table(d), "training": training_table(d),
        "existing": existing_table(d), "forgetting": forgetting,
        "forgetting_change": forgetting_change_label(forgetting), "seeds": seed_rows(d),
        "lengths": length_table(as_dict(as_dict(rec.get("data")).get("lengths"))),
        "config": config_rows(as_dict(rec.get("config"))),
        "config_json": json.dumps(rec.get("config"), indent=2, ensure_ascii=False, default=str),
        "stats": _stats_line(as_dict(rec.get("stats"))),
        "harness_version": str(as_dict(rec.get("env")).get("harness_version", "")),
    }


def _error(rec: dict[str, Any]) -> dict[str, str] | None:
    err = rec.get("error")
    if not err and rec.get("status") != Status.FAILED:
        return None
    err = as_dict(err) or {"message": str(err or "the run failed without an error message")}
    return {k: str(err.get(k) or "") for k in ("type", "message", "stage")}


def _summary(rec: dict[str, Any], d: ReportData) -> list[tuple[str, str]]:
    env, data = as_dict(rec.get("env")), as_dict(rec.get("data"))
    return [("Model", _model(rec, d)), ("Device", str(env.get("device", DASH))),
            ("Peak memory measured as", memory_kind(env) or DASH),
            ("Train examples", F.count(data.get("n_train"))),
            ("Eval examples", F.count(data.get("n_eval"))),
            ("Eval fingerprint", str(data.get("eval_fingerprint", DASH))),
            ("Git commit", _git(as_dict(env.get("git")))),
            ("Started", str(rec.get("started_at") or DASH)),
            ("Finished", str(rec.get("finished_at") or DASH)),
            ("Wall time", F.seconds(rec.get("wall_time_s")))]


def _model(rec: dict[str, Any], d: ReportData) -> str:
    name = as_dict(as_dict(rec.get("config")).get("model")).get("name_or_path")
    models = [str(as_dict(a).get("model")) for a in d.arm_records.values()
              if as_dict(a).get("model")]
    return str(name or (models[0] if models else DASH))


def _git(git: dict[str, Any]) -> str:
    if not git.get("commit"):
        return DASH
    return f"{str(git['commit'])[:12]}" + (" (dirty: uncommitted changes)" if git.get("dirty")
                                            else "")


def _versions(env: dict[str, Any]) -> list[tuple[str, str]]:
    skip = {"device", "memory_kind", "memory_description", "git"}
    return [(k, str(v)) for k, v in env.items()
            if k not in skip and isinstance(v, str | int | float)]


def _stats_line(stats: dict[str, Any]) -> str:
    if not stats:
        return ""
    method = str(stats.get("method", "paired statistics")).replace("_", " ")
    parts = [method] + [f"{k.replace('_', ' ')} {v}" for k, v in stats.items()
                        if k != "method" and isinstance(v, str | int | float)]
    return ", ".join(parts)


def render_into(path: Path, record: dict[str, Any]) -> None:
    """Reports are a view of the record: a template bug must not lose a finished run (it
    becomes a warning); a write that fails (OSError) fails the run like any other file."""
    try:
        write_reports(LoadedRun(path=path, record=record))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001
        record.setdefault("warnings", []).append(f"report not rendered: {e}")
