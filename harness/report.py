"""Render a stored run into ``report.html`` and ``report.md``, as README describes.

Reads the record and its JSONL files only, never torch, so ``harness report`` runs in a plain CI
job on records made on a GPU box. Python turns the record into display-ready strings (numbers
through ``harness.formatting``, the "is higher better?" logic here); the Jinja templates in
``templates/`` (rendered by ``harness.templating``) only lay them out. The HTML is one
self-contained file: inline CSS, inline SVG plots, a few lines of inline JS, and a
Content-Security-Policy that forbids every fetch.

Model outputs and dataset text are untrusted: HTML autoescaping covers the HTML report, and the
``md`` filter neutralises ``|``, newlines and ``<`` in Markdown table cells.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from harness import arms as A
from harness import formatting as F
from harness import measured, plots, templating
from harness import metrics as M
from harness.config import DEFAULT_ALPHA
from harness.errors import RecordError
from harness.formatting import DASH
from harness.metrics import ROUGE_KEYS, SYSTEM_KEYS, lower_is_better
from harness.results import LoadedRun, atomic_write_text

REPORT_FILES = ("report.html", "report.md")  # what write_reports writes, in this order
HTML_TEMPLATE, MD_TEMPLATE, JS_FILE = "report.html.j2", "report.md.j2", "_report.js"
MAX_EXAMPLES = 200  # the browser stays fast; the largest gains and regressions are kept

LABELS = {
    "loss": "Loss", "perplexity": "Perplexity", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum", "eval_tokens_per_s": "Eval tokens/s",
    "gen_tokens_per_s": "Gen tokens/s", "peak_memory_bytes": "Peak memory",
    "exact_match": "Exact match", "chrf": "chrF", "bleu": "BLEU", "bertscore": "BERTScore F1",
}
CARD_METRICS = ("rougeL", "rouge1", "perplexity", "loss")
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
    data = _read(run)
    script = templating.read(JS_FILE)
    # The CSP admits exactly this script by its hash: injected markup could not run code even
    # if escaping ever failed, and nothing can be fetched from anywhere.
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return templating.render(
        HTML_TEMPLATE, **_context(run, data), plots=_plots(data), examples=_examples(data),
        script=Markup(script), script_hash=digest)


def render_markdown(run: LoadedRun) -> str:
    return templating.render(MD_TEMPLATE, **_context(run, _read(run)))


# ------------------------------------------------------------------ reading the run


@dataclass
class _Data:
    """Everything the report reads, gathered once; unreadable files become warnings."""

    record: dict[str, Any]
    arms: list[str]
    items: dict[str, list[dict[str, Any]]]
    train_log: list[dict[str, Any]]
    alpha: float
    warnings: list[str] = field(default_factory=list)

    @property
    def arm_records(self) -> dict[str, Any]:
        return _dict(self.record.get("arms"))


def _read(run: LoadedRun) -> _Data:
    warnings: list[str] = []
    preds = _tolerant(lambda: run.predictions, warnings)
    log = _tolerant(run.train_log, warnings)
    record = run.record
    arms = _arm_names(list(_dict(record.get("arms"))), preds, log)
    items = {a: [p for p in preds if p.get("arm") == a] for a in arms}
    alpha = F.number(_dict(record.get("stats")).get("alpha")) or DEFAULT_ALPHA
    warnings += [str(w) for w in record.get("warnings") or [] if w]  # the pipeline's own
    return _Data(record, arms, items, log, alpha, warnings)


def _tolerant(read: Callable[[], list[dict[str, Any]]], warnings: list[str]) -> list[dict]:
    """A failed run may leave a half-written JSONL line: report the rest, say what was lost."""
    try:
        return [r for r in read() if isinstance(r, dict)]
    except RecordError as e:
        warnings.append(str(e))
        return []


def _arm_names(record_arms: list[str], preds: list[dict], log: list[dict]) -> list[str]:
    """Record order, then arms only seen in predictions or the train log; baseline first."""
    seen = record_arms + [r.get("arm") for r in preds] + [r.get("arm") for r in log]
    return A.baseline_first(dict.fromkeys(a for a in seen if isinstance(a, str)))


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


# ------------------------------------------------------------------ metric names


def label(metric: str) -> str:
    eval_set, name = M.split(metric)
    text = LABELS.get(name, name)
    return f"{text} ({eval_set})" if eval_set else text


# ------------------------------------------------------------------ context shared by both


def _context(run: LoadedRun, d: _Data) -> dict[str, Any]:
    rec, headline = d.record, _headline(d)
    entries = _entries(d, headline)
    return {
        "suite": run.suite, "run_id": run.run_id, "status": str(rec.get("status", "unknown")),
        "error": _error(rec), "warnings": d.warnings, "summary": _summary(rec, d),
        "versions": _versions(_dict(rec.get("env"))), "headline": headline,
        "cards": _cards(entries, _forgetting_sets(d)), "leaderboard": _leaderboard(d, entries),
        "p_label": P_HOLM_LABEL, "ci_label": _ci_label(d.alpha),
        "alpha": d.alpha, "arm_table": _arm_table(d), "training": _training(d),
        "existing": _existing(d), "forgetting": _forgetting(d), "seeds": _seeds(d),
        "lengths": _lengths(_dict(_dict(rec.get("data")).get("lengths"))),
        "config": _config_rows(_dict(rec.get("config"))),
        "config_json": json.dumps(rec.get("config"), indent=2, ensure_ascii=False, default=str),
        "stats": _stats_line(_dict(rec.get("stats"))),
        "harness_version": str(_dict(rec.get("env")).get("harness_version", "")),
    }


def _error(rec: dict[str, Any]) -> dict[str, str] | None:
    err = rec.get("error")
    if not err and rec.get("status") != "failed":
        return None
    err = _dict(err) or {"message": str(err or "the run failed without an error message")}
    return {k: str(err.get(k) or "") for k in ("type", "message", "stage")}


def _summary(rec: dict[str, Any], d: _Data) -> list[tuple[str, str]]:
    env, data = _dict(rec.get("env")), _dict(rec.get("data"))
    return [("Model", _model(rec, d)), ("Device", str(env.get("device", DASH))),
            ("Peak memory measured as", _memory_kind(env) or DASH),
            ("Train examples", F.count(data.get("n_train"))),
            ("Eval examples", F.count(data.get("n_eval"))),
            ("Eval fingerprint", str(data.get("eval_fingerprint", DASH))),
            ("Git commit", _git(_dict(env.get("git")))),
            ("Started", str(rec.get("started_at") or DASH)),
            ("Finished", str(rec.get("finished_at") or DASH)),
            ("Wall time", F.seconds(rec.get("wall_time_s")))]


def _model(rec: dict[str, Any], d: _Data) -> str:
    name = _dict(_dict(rec.get("config")).get("model")).get("name_or_path")
    models = [str(_dict(a).get("model")) for a in d.arm_records.values() if _dict(a).get("model")]
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


def _ci_label(alpha: float) -> str:
    return f"{F.ci_level(alpha)} CI"


# ------------------------------------------------------------------ headline


def _headline(d: _Data) -> list[dict[str, Any]]:
    """One table per (candidate, baseline) pair, metrics in the canonical order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in _comparable_rows(d.record):
        if c.get("metric"):
            key = (str(c.get("candidate", "?")), str(c.get("baseline", A.BASELINE)))
            groups.setdefault(key, []).append(c)
    return [{"candidate": cand, "baseline": base,
             "baseline_label": A.label(base),
             "rows": [_headline_row(c, d.alpha) for c in _by_metric(cs)]}
            for (cand, base), cs in groups.items()]


def _by_metric(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = [c for c in rows if M.is_known(str(c["metric"]))]
    return (sorted(known, key=lambda c: M.sort_key(str(c["metric"])))
            + [c for c in rows if not M.is_known(str(c["metric"]))])


def _forgetting(d: _Data) -> list[dict[str, Any]]:
    """What fine-tuning cost on each set marked ``forgetting``: its perplexity (else loss)
    per adapter arm against the zero-shot baseline, with the paired CI."""
    sets = _dict(_dict(d.record.get("data")).get("eval_sets"))
    out = []
    for name, spec in sets.items():
        if not _dict(spec).get("forgetting"):
            continue
        rows = {(c.get("candidate"), c.get("metric")): c
                for c in d.record.get("comparisons") or []
                if isinstance(c, dict) and c.get("baseline") == A.BASELINE}
        for arm in A.adapters(d.arm_records):
            c = (rows.get((arm, M.keyed(name, "perplexity")))
                 or rows.get((arm, M.keyed(name, "loss"))))
            if c is not None:
                out.append({"set": name, "arm": arm, "n_items": _dict(spec).get("n_items"),
                            **_headline_row(c, d.alpha), "metric": label(M.base(c["metric"]))})
    return out


def _seeds(d: _Data) -> list[dict[str, Any]]:
    """Recipes trained with several seeds against the baseline (seedstats rows)."""
    rows = [c for c in d.record.get("seed_comparisons") or [] if isinstance(c, dict)]
    return [{"recipe": c.get("recipe"), "n_seeds": c.get("n_seeds"),
             "seed_sd": F.metric(str(c["metric"]), c.get("seed_sd")),
             **_headline_row({**c, "p_value": None}, d.alpha),
             "sig": bool(c.get("significant")),
             "tone": F.tone(str(c["metric"]), c.get("abs_diff"), bool(c.get("significant")))}
            for c in _by_metric(rows)]


def _headline_row(c: dict[str, Any], alpha: float) -> dict[str, Any]:
    m = str(c["metric"])
    diff, sig = F.number(c.get("abs_diff")), _significant(c, alpha)
    return {
        "metric": label(m), "key": m, "lower": lower_is_better(m),
        "baseline": F.metric(m, c.get("baseline_value")),
        "candidate": F.metric(m, c.get("candidate_value")),
        "candidate_value": F.number(c.get("candidate_value")),
        "abs": F.metric(m, diff, signed=True), "rel": F.percent(c.get("rel_gain")),
        "ci": F.interval(c.get("ci_low"), c.get("ci_high"), lambda v: F.metric(m, v, True)),
        "rel_ci": F.interval(c.get("rel_ci_low"), c.get("rel_ci_high"), F.percent, missing=""),
        "p": F.p_value(c.get("p_value_holm"), alpha), "p_raw": F.p_value(c.get("p_value"), alpha),
        "sig": sig, "tone": F.tone(m, diff, sig),
    }


def _p(c: dict[str, Any]) -> float | None:
    holm = F.number(c.get("p_value_holm"))
    return holm if holm is not None else F.number(c.get("p_value"))


def _significant(c: dict[str, Any], alpha: float) -> bool | None:
    """The record's verdict, else p (Holm when present) <= alpha; None for point-only rows
    (throughput, memory), which stats marks ``significant: false`` without any test."""
    p = _p(c)
    if p is None:
        return None
    return bool(c["significant"]) if isinstance(c.get("significant"), bool) else p <= alpha


def _item_tone(metric: str, diff: float | None) -> str:
    """One item's change in the example browser: no test exists for a single item, so its
    colour says only better / worse in the metric's direction (the browser's legend says so)."""
    return F.tone(metric, diff, True)


@dataclass(frozen=True)
class _Entry:
    """One contender for the headline: an arm against zero-shot, or a recipe trained with
    several seeds, whose rows are then the across-seeds mean and interval (seedstats), never
    one seed alone: a seed's own paired test measures that adapter, not the recipe."""

    name: str
    label: str
    rows: dict[str, dict[str, Any]]  # metric key -> display row (_headline_row)
    seeds: int = 0


def _entries(d: _Data, headline: list[dict[str, Any]]) -> list[_Entry]:
    """Arms compared with the zero-shot baseline, in arm order; a recipe's seed arms give way
    to one entry for the recipe where the record has its across-seeds rows."""
    recipes: dict[str, list[dict[str, Any]]] = {}
    for r in _seeds(d):
        recipes.setdefault(str(r["recipe"]), []).append(r)
    out: dict[str, _Entry] = {}
    for g in headline:
        if g["baseline"] != A.BASELINE:
            continue
        recipe, seed = A.recipe_of(g["candidate"])
        if seed is not None and recipe in recipes:
            rows = recipes[recipe]
            out.setdefault(recipe, _Entry(recipe, f"{recipe} · {rows[0]['n_seeds']} seeds",
                                          {r["key"]: r for r in rows}, int(rows[0]["n_seeds"])))
        else:
            out[g["candidate"]] = _Entry(g["candidate"], g["candidate"],
                                         {r["key"]: r for r in g["rows"]})
    return list(out.values())


def _best_entry(entries: list[_Entry], metric: str) -> _Entry | None:
    """The entry with the best point value of ``metric`` in its own direction (first on a
    tie); None when no entry has it."""
    have = [e for e in entries if F.number(e.rows.get(metric, {}).get("candidate_value"))
            is not None]
    if not have:
        return None
    sign = -1.0 if lower_is_better(metric) else 1.0
    return max(have, key=lambda e: sign * e.rows[metric]["candidate_value"])


def _main_metrics(entries: list[_Entry]) -> list[str]:
    return [k for k in CARD_METRICS if any(k in e.rows for e in entries)]


def _forgetting_sets(d: _Data) -> list[str]:
    sets = _dict(_dict(d.record.get("data")).get("eval_sets"))
    return [name for name, spec in sets.items() if _dict(spec).get("forgetting")]


def _forgetting_metric(entries: list[_Entry], eval_set: str) -> str | None:
    """A forgetting set's headline number: its perplexity, else its loss."""
    keys = (M.keyed(eval_set, "perplexity"), M.keyed(eval_set, "loss"))
    return next((k for k in keys if any(k in e.rows for e in entries)), None)


def _cards(entries: list[_Entry], forgetting: list[str]) -> list[dict[str, Any]]:
    """Each main metric of the arm (or seeded recipe) best at it, then what the leading arm
    (best at the first main metric) cost on each forgetting set: red when significantly
    worse."""
    main = _main_metrics(entries)
    cards = []
    for key in main:
        best = _best_entry(entries, key)
        cards += [_card(best, key)] if best else []
    lead = (_best_entry(entries, main[0]) if main else None) or next(iter(entries), None)
    if lead is None:
        return cards
    for eval_set in forgetting:
        metric = _forgetting_metric([lead], eval_set)
        cards += [_forgetting_card(lead, metric, eval_set)] if metric else []
        cards += _worst_forgetting(entries, lead, eval_set)
    return cards


def _worst_forgetting(entries: list[_Entry], lead: _Entry, eval_set: str
                      ) -> list[dict[str, Any]]:
    """Another arm's forgetting card, when it is the worst of all and significantly worse: a
    sweep's best cell may forget little while another cell forgot much."""
    metric = _forgetting_metric(entries, eval_set)
    have = [e for e in entries if metric in e.rows
            and F.number(e.rows[metric].get("candidate_value")) is not None] if metric else []
    if not metric or not have:
        return []
    worse = 1.0 if lower_is_better(metric) else -1.0
    worst = max(have, key=lambda e: worse * e.rows[metric]["candidate_value"])
    card = _forgetting_card(worst, metric, eval_set)
    return [card] if worst is not lead and card["alert"] else []


def _card(e: _Entry, key: str) -> dict[str, Any]:
    row = e.rows[key]
    return {**row, "arm": e.label, "seeds": e.seeds, "forgetting": False, "alert": False,
            "verdict": _verdict(row)}


def _verdict(row: dict[str, Any]) -> str:
    """In words, for the cards: better / worse in the metric's own direction, and whether it
    is significant (across seeds for a seeded recipe)."""
    if row["sig"] is None or not row["tone"]:
        return ""
    way = "better" if row["tone"] == "good" else "worse"
    return f"significantly {way}" if row["sig"] else f"{way}, not significant"


def _forgetting_card(e: _Entry, key: str, eval_set: str) -> dict[str, Any]:
    card = _card(e, key)
    return {**card, "forgetting": True, "set": eval_set,
            "alert": card["tone"] == "bad" and card["sig"] is True}


def _leaderboard(d: _Data, entries: list[_Entry]) -> dict[str, Any] | None:
    """Several arms (a sweep, several adapters or recipes): arms x main metrics and each
    forgetting set, each cell its value, change and CI; ranked by the first main metric."""
    if len(entries) < 2:
        return None
    forgetting = [_forgetting_metric(entries, s) for s in _forgetting_sets(d)]
    keys = _main_metrics(entries) + [k for k in forgetting if k]
    ranked = sorted(entries, key=lambda e: _rank(e, keys[0])) if keys else entries
    best = {k: _best_entry(entries, k) for k in keys}
    return {"columns": [_col(k) for k in keys],
            "rows": [{"arm": e.name, "label": e.label,
                      "cells": [_board_cell(e.rows.get(k), best[k] is e) for k in keys]}
                     for e in ranked]}


def _rank(e: _Entry, key: str) -> float:
    v = F.number(e.rows.get(key, {}).get("candidate_value"))
    if v is None:
        return math.inf
    return v if lower_is_better(key) else -v


def _board_cell(row: dict[str, Any] | None, best: bool) -> dict[str, Any]:
    if row is None:
        return {"value": DASH, "abs": "", "ci": "", "tone": "", "sig": None, "best": False}
    return {"value": row["candidate"], "abs": row["abs"],
            "ci": "" if row["ci"] == DASH else row["ci"], "tone": row["tone"],
            "sig": row["sig"], "best": best}


# ------------------------------------------------------------------ tables


def _arm_table(d: _Data) -> dict[str, Any]:
    """Every arm's metrics side by side (arms as rows: sweeps have many), best in bold."""
    metrics_by_arm = {a: _dict(_dict(d.arm_records.get(a)).get("metrics")) for a in d.arms}
    keys = _ordered({k for m in metrics_by_arm.values() for k in m})
    marks = {a: measured.mark_of(d.record, a) for a in d.arms}
    best = {k: _best([F.number(m.get(k)) for a, m in metrics_by_arm.items()
                      if not (marks[a] and k in SYSTEM_KEYS)], k) for k in keys}
    rows = [{"arm": a, "status": str(_dict(d.arm_records.get(a)).get("status", "not run")),
             "cells": [_arm_cell(k, m.get(k), best[k], marks[a]) for k in keys]}
            for a, m in metrics_by_arm.items()]
    show_status = any(r["status"] != "success" for r in rows)
    return {"columns": [_col(k) for k in keys], "rows": rows, "show_status": show_status}


def _arm_cell(key: str, v: Any, best: float | None, mark: str | None) -> dict[str, Any]:
    """Speed and memory not comparable with the baseline's (a cached baseline, an arm another
    process measured: measured.mark) are marked and never best."""
    if mark and key in SYSTEM_KEYS and v is not None:
        return {"text": f"{F.metric(key, v)} ({mark})", "best": False}
    return {"text": F.metric(key, v), "best": F.number(v) is not None and F.number(v) == best}


def _comparable_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's comparisons, less speed and memory between arms that are not comparable
    (records written before the pipeline left those out, or resumed by such a version)."""
    return [c for c in record.get("comparisons") or [] if isinstance(c, dict)
            and measured.keep(str(c.get("metric")),
                              measured.of(record, str(c.get("baseline", A.BASELINE))),
                              measured.of(record, str(c.get("candidate"))))]


def _col(key: str) -> dict[str, Any]:
    return {"key": key, "label": label(key), "lower": lower_is_better(key)}


def _ordered(keys: Iterable[str]) -> list[str]:
    known = sorted((k for k in keys if M.is_known(k)), key=M.sort_key)
    return known + sorted(set(keys) - set(known))


def _best(values: list[float | None], metric: str) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or min(vals) == max(vals):
        return None  # nothing to single out
    return min(vals) if lower_is_better(metric) else max(vals)


TRAIN_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("global_steps", "Steps", F.count),
    ("epochs", "Epochs", lambda v: F.cell("epochs", v)),
    ("effective_batch_size", "Effective batch", F.count),
    ("trainable_params", "Trainable params", F.count),
    ("total_params", "Total params", F.count),
    ("trainable_share", "Trainable %", lambda v: F.percent(v, signed=False).replace("%", " %")),
    ("adapter_bytes", "Adapter size", F.byte_size),
    ("train_runtime_s", "Train time", F.seconds),
    ("train_tokens_per_s", "Train tokens/s", lambda v: F.metric("eval_tokens_per_s", v)),
    ("padding_efficiency", "Padding efficiency", lambda v: F.percent(v, signed=False)),
    ("train_tokens", "Train tokens", F.count),
    ("final_train_loss", "Final train loss (last logged)", lambda v: F.metric("loss", v)),
    ("mean_train_loss", "Mean train loss (all steps)", lambda v: F.metric("loss", v)),
    ("best_eval_loss", "Best eval loss", lambda v: F.metric("loss", v)),
)
# Redundant with padding_efficiency or internal: not shown.
TRAIN_HIDDEN = frozenset({"computed_tokens", "config"})
LENGTH_LABELS = {
    "n": "Examples", "mean": "Mean tokens", "median": "Median tokens", "max": "Max tokens",
    "mean_response": "Mean response tokens", "share_truncated": "Truncated",
    "dropped_too_long": "Dropped (too long)",
}


def _cell_of(key: str) -> Callable[[Any], str]:
    return lambda v: F.cell(key, v)


def _training(d: _Data) -> dict[str, Any] | None:
    """One column per adapter arm. Rows: the train-config knobs that differ between arms (a
    sweep's cells) first, then what training measured, known rows in order and formatted;
    rows that are null in every arm are skipped."""
    raw = {a: _dict(v) for a, v in _dict(d.record.get("training")).items()}
    if not raw:
        return None
    varying = _varying(raw)
    per_arm = {a: _with_share(v) for a, v in raw.items()}
    present = {k for v in per_arm.values() for k, x in v.items()
               if _scalar(x) and x is not None} - TRAIN_HIDDEN
    known = {k for k, _, _ in TRAIN_ROWS}
    rows: list[tuple[str, dict[str, Any], Callable[[Any], str]]] = [
        ("config." + k, {a: varying[a].get(k) for a in raw}, F.raw)
            for k in sorted({k for v in varying.values() for k in v})]
    rows += [(name, {a: v.get(k) for a, v in per_arm.items()}, f)
             for k, name, f in TRAIN_ROWS if k in present]
    rows += [(k.replace("_", " "), {a: v.get(k) for a, v in per_arm.items()}, _cell_of(k))
             for k in sorted(present - known)]
    return {"arms": list(raw), "rows": [{"label": name, "cells": [f(vals[a]) for a in raw]}
                                        for name, vals, f in rows]}


EXISTING_ROWS = (("path", "From"), ("revision", "Revision"), ("commit", "Commit"),
                 ("peft_type", "PEFT type"), ("r", "Rank"), ("target_modules", "Targets"),
                 ("params", "Parameters"), ("base_model", "Trained on"),
                 ("sha256", "Weights sha256"))


def _existing(d: _Data) -> dict[str, Any] | None:
    """Where each existing adapter came from (the arms harness did not train)."""
    origins = {a: _dict(_dict(d.arm_records.get(a)).get("origin")) for a in d.arms}
    origins = {a: o for a, o in origins.items() if o}
    if not origins:
        return None
    rows = [{"label": label, "cells": [F.count(o.get(k)) if k == "params" else F.raw(o.get(k))
                                       for o in origins.values()]}
            for k, label in EXISTING_ROWS if any(o.get(k) is not None for o in origins.values())]
    return {"arms": list(origins), "rows": rows}


def _varying(training: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm, the train-config entries (dotted keys) whose values differ across arms."""
    flat = {a: dict(F.flatten(_dict(t.get("config")))) for a, t in training.items()}
    keys = {k for f in flat.values() for k in f}
    varying = {k for k in keys if len({json.dumps(f.get(k), default=str)
                                       for f in flat.values()}) > 1}
    return {a: {k: f.get(k) for k in varying} for a, f in flat.items()} if len(flat) > 1 else {}


def _with_share(t: dict[str, Any]) -> dict[str, Any]:
    n, total = F.number(t.get("trainable_params")), F.number(t.get("total_params"))
    return {**t, "trainable_share": n / total} if n is not None and total else t


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _lengths(lengths: dict[str, Any]) -> dict[str, Any] | None:
    """Length statistics per split (``{split: {stat: x}}``) or per split and field
    (``{split: {field: {stat: x}}}``); shares are shown as percentages."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for split, v in lengths.items():
        v = _dict(v)
        nested = {f: s for f, s in v.items() if isinstance(s, dict)}
        rows += [(f"{split} · {f}", s) for f, s in nested.items()]
        flat = {k: x for k, x in v.items() if _scalar(x)}
        rows += [(split, flat)] if flat else []
    keys = list(dict.fromkeys(k for _, s in rows for k, x in s.items() if _scalar(x)))
    if not rows or not keys:
        return None
    return {"columns": [LENGTH_LABELS.get(k, k.replace("_", " ")) for k in keys],
            "rows": [{"split": name, "cells": [F.cell(k, s.get(k)) for k in keys]}
                     for name, s in rows]}


def _config_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The model and training sub-configs flattened to dotted keys."""
    sections = [("Model", config.get("model")), ("Training / adapter", config.get("train"))]
    return [{"title": t, "rows": [(k, F.raw(v)) for k, v in F.flatten(_dict(s))]}
            for t, s in sections if _dict(s)]


# ------------------------------------------------------------------ plots (HTML only)


def _plots(d: _Data) -> list[dict[str, Any]]:
    colors = plots.arm_colors(d.arms)
    charts = [_loss_plot(d, colors), _rouge_plot(d, colors), _gain_plot(d, colors),
              _system_plot(d, colors), _memory_plot(d, colors)]
    return [c for c in charts if c and c["svg"] is not None]


def _loss_plot(d: _Data, colors: dict[str, str]) -> dict[str, Any]:
    series = []
    for arm in d.arms:
        rows = [r for r in d.train_log
                if r.get("arm") == arm and F.number(r.get("step")) is not None]
        for key, suffix, dashed in (("loss", "train", False), ("eval_loss", "eval", True)):
            pts = [(float(r["step"]), float(r[key])) for r in rows
                   if F.number(r.get(key)) is not None]
            if pts:
                series.append(plots.Series(f"{arm} {suffix}", pts, colors[arm], dashed, dashed))
    svg = plots.line_chart(series, title="Training and eval loss", x_label="optimizer step",
                           y_label="loss (nats / token)", width=960)
    return {"title": "Loss curves", "svg": svg, "wide": True,
            "caption": "Solid: training loss; dashed with dots: eval loss, per adapter arm."}


def _rouge_plot(d: _Data, colors: dict[str, str]) -> dict[str, Any]:
    keys = [k for k in ROUGE_KEYS if any(k in _arm_metrics(d, a) for a in d.arms)]
    z = statistics.NormalDist().inv_cdf(1 - d.alpha / 2)
    bars = [plots.Bars(a, colors[a], [F.number(_arm_metrics(d, a).get(k)) for k in keys],
                       [_mean_ci(d.items[a], k, F.number(_arm_metrics(d, a).get(k)), z)
                        for k in keys]) for a in d.arms]
    svg = plots.bar_chart([label(k) for k in keys], bars, title="ROUGE by arm",
                          y_label="F-measure", value_fmt=lambda v: f"{v:.3f}") if keys else None
    return {"title": "ROUGE by arm", "svg": svg, "wide": False,
            "caption": f"Whiskers: {_ci_label(d.alpha)} of the mean over items "
                       "(normal approximation)."}


def _arm_metrics(d: _Data, arm: str) -> dict[str, Any]:
    return _dict(_dict(d.arm_records.get(arm)).get("metrics"))


def _mean_ci(items: list[dict[str, Any]], key: str, centre: float | None,
             z: float) -> tuple[float, float] | None:
    vals = [v for v in (F.number(r.get(key)) for r in items) if v is not None]
    if centre is None or len(vals) < 2:
        return None
    half = z * statistics.stdev(vals) / math.sqrt(len(vals))
    return centre - half, centre + half


def _gain_plot(d: _Data, colors: dict[str, str]) -> dict[str, Any]:
    """Relative improvement with its CI, signed so that right is always better."""
    rows = []
    for g in _headline(d):
        for c in _by_metric([c for c in d.record.get("comparisons") or []
                             if isinstance(c, dict) and c.get("candidate") == g["candidate"]
                             and c.get("baseline", A.BASELINE) == g["baseline"]]):
            row = _gain_interval(c, g["candidate"], colors, d.alpha)
            rows += [row] if row else []
    svg = plots.interval_chart(rows, title="Relative improvement over baseline",
                               x_label="relative improvement over baseline, %  (right = better)",
                               value_fmt=lambda v: F.percent(v / 100))
    return {"title": "Relative improvement", "svg": svg, "wide": False,
            "caption": f"Bars: {_ci_label(d.alpha)}; dot green / red: significantly better / "
                       f"worse at α = {d.alpha:g} (Holm), hollow: not significant. "
                       "Lower-is-better metrics are sign-flipped; a metric whose baseline is 0 "
                       "has no relative gain and is left out. A value far beyond the others is "
                       "drawn as an arrow at the edge with its number, so the rest stay readable."}


def _gain_interval(c: dict[str, Any], arm: str, colors: dict[str, str],
                   alpha: float) -> plots.Interval | None:
    m, rel, base = str(c["metric"]), F.number(c.get("rel_gain")), F.number(c.get("baseline_value"))
    if rel is None or not M.is_per_item(m):  # throughput and memory have their own charts
        return None
    lo, hi = F.number(c.get("rel_ci_low")), F.number(c.get("rel_ci_high"))
    if (lo is None or hi is None) and base and F.number(c.get("ci_low")) is not None:
        lo, hi = F.number(c.get("ci_low")) / base, F.number(c.get("ci_high")) / base  # type: ignore
    sign = -100.0 if lower_is_better(m) else 100.0
    ends = sorted((sign * lo, sign * hi)) if lo is not None and hi is not None else (None, None)
    name = f"{arm} · {label(m)}"
    sig = _significant(c, alpha)
    return plots.Interval(name, sign * rel, ends[0], ends[1], colors.get(arm, plots.PALETTE[0]),
                          strong=bool(sig), tone=F.tone(m, c.get("abs_diff"), sig))


def _system_plot(d: _Data, colors: dict[str, str]) -> dict[str, Any]:
    keys = ("eval_tokens_per_s", "gen_tokens_per_s")
    bars = [_system_bars(d, a, colors, [F.number(_arm_metrics(d, a).get(k)) for k in keys])
            for a in d.arms]
    svg = plots.bar_chart([label(k) for k in keys], bars, title="Throughput by arm",
                          y_label="tokens / s", value_fmt=lambda v: f"{v:,.1f}")
    return {"title": "Throughput", "svg": svg, "wide": False,
            "caption": "Teacher-forced eval and greedy generation; model loading excluded."
                       + _marked_caption(d)}


def _system_bars(d: _Data, arm: str, colors: dict[str, str], values: list[float | None]
                 ) -> plots.Bars:
    """An arm's speed or memory bars; hollow and labelled when not comparable with the
    baseline's (measured.mark_of)."""
    mark = measured.mark_of(d.record, arm)
    name = f"{arm} ({mark})" if mark else arm
    return plots.Bars(name, colors[arm], values, marked=bool(mark))


def _marked_caption(d: _Data) -> str:
    if not any(measured.mark_of(d.record, a) for a in d.arms):
        return ""
    return (" Hollow, dashed bars: measured by another process (cached, or before a resume):"
            " not comparable with the others.")


def _memory_kind(env: dict[str, Any]) -> str:
    """What peak_memory_bytes counts: the record's own description (older records: its kind)."""
    return str(env.get("memory_description") or env.get("memory_kind") or "").replace("_", " ")


def _memory_plot(d: _Data, colors: dict[str, str]) -> dict[str, Any]:
    gib = [F.number(_arm_metrics(d, a).get("peak_memory_bytes")) for a in d.arms]
    bars = [_system_bars(d, a, colors, [None if v is None else v / 2**30])
            for a, v in zip(d.arms, gib, strict=True)]
    kind = _memory_kind(_dict(d.record.get("env")))
    svg = plots.bar_chart(["Peak memory"], bars, title="Peak memory by arm", y_label="GiB",
                          value_fmt=lambda v: f"{v:.2f}")
    return {"title": "Peak memory", "svg": svg, "wide": False,
            "caption": (f"Measured as {kind}." if kind else "") + _marked_caption(d)}


# ------------------------------------------------------------------ per-example browser


MAIN_SET = "main"  # how the browser names the suite's own eval set beside the extra ones


def _examples(d: _Data) -> dict[str, Any] | None:
    """Items joined across arms by (eval set, id): two sets may share ids. Within each set the
    largest gains of the first adapter come first (ROUGE-L, else the drop in loss)."""
    if not any(d.items.values()):
        return None
    adapters = A.others(d.arms)  # every arm with a gain over baseline, variants too
    by_arm = {a: {_item_key(r): r for r in d.items[a]} for a in d.arms}
    keys = list(dict.fromkeys(_item_key(r) for a in d.arms for r in d.items[a]))
    rows = [_example(k, d.arms, adapters, by_arm) for k in keys]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    limits = _per_set_limits({s: sum(r["set"] == s for r in rows) for s in sets}, MAX_EXAMPLES)
    shown = [r for s in sets for r in _capped([r for r in rows if r["set"] == s], limits[s])]
    return {"arms": d.arms, "adapters": adapters, "rows": shown, "total": len(rows),
            "sets": [{"value": s, "label": s or MAIN_SET} for s in sets] if len(sets) > 1
            else [], "generated": any(r["generated"] for r in rows)}


def _item_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row.get("set") or ""), str(row.get("id"))


def _per_set_limits(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Share the browser's rows between the sets: the smallest first, each taking at most an
    equal share of what is left, so a 40-item set shows whole beside a 10,000-item one."""
    limits, left = {}, total
    for i, (name, n) in enumerate(sorted(sizes.items(), key=lambda kv: kv[1])):
        limits[name] = min(n, left // (len(sizes) - i))
        left -= limits[name]
    return limits


def _capped(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """One set's rows by gain (largest first), keeping both extremes; unknown gains last."""
    known = sorted((r for r in rows if r["order"] is not None), key=lambda r: r["order"],
                   reverse=True)
    unknown = [r for r in rows if r["order"] is None]  # no baseline or no adapter row
    return _keep_extremes(known, limit) + unknown[:max(0, limit - len(known))]


def _example(key: tuple[str, str], arms: list[str], adapters: list[str],
             by_arm: dict[str, dict[tuple[str, str], dict[str, Any]]]) -> dict[str, Any]:
    rows = {a: by_arm[a].get(key) for a in arms}
    first = next(r for r in rows.values() if r)
    base = rows.get(A.BASELINE) or {}
    outputs = [_output(a, rows[a], base) for a in arms]
    mine = [o for o in outputs if o["arm"] in adapters]
    gains, losses = [o["d_rouge"] for o in mine], [o["d_loss"] for o in mine]
    return {"id": key[1], "set": key[0], "set_label": key[0] or MAIN_SET,
            "prompt": str(first.get("prompt") or ""), "reference": str(first.get("reference", "")),
            "outputs": outputs, "gains": gains, "loss_changes": losses,
            "generated": any(o["generated"] for o in outputs),
            "order": _order(gains[0] if gains else None, losses[0] if losses else None)}


def _order(gain: float | None, loss_change: float | None) -> float | None:
    """The first adapter's per-item ROUGE-L gain, else its drop in loss: the default order."""
    if gain is not None:
        return gain
    return None if loss_change is None else -loss_change


def _output(arm: str, row: dict[str, Any] | None, base: dict[str, Any]) -> dict[str, Any]:
    row = row or {}
    rl, loss = F.number(row.get("rougeL")), F.number(row.get("loss"))
    b_rl, b_loss = F.number(base.get("rougeL")), F.number(base.get("loss"))
    own = arm == A.BASELINE  # no gain over itself
    d_rouge = None if own or rl is None or b_rl is None else rl - b_rl
    d_loss = None if own or loss is None or b_loss is None else loss - b_loss
    # A set scored by loss only has no generation: its prediction is null, not a text.
    generated = row.get("prediction") is not None
    return {"arm": arm, "present": bool(row), "generated": generated,
            "text": str(row["prediction"]) if generated else "",
            "rouge": F.metric("rougeL", rl) if rl is not None else None,
            "loss": F.metric("loss", loss),
            "d_rouge": d_rouge, "d_rouge_text": F.metric("rougeL", d_rouge, True),
            "d_loss": d_loss, "d_loss_text": F.metric("loss", d_loss, True),
            "tone": _item_tone("rougeL", d_rouge), "loss_tone": _item_tone("loss", d_loss)}


def _keep_extremes(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """``rows`` sorted by gain: keep the largest gains and the largest regressions."""
    if len(rows) <= limit:
        return rows
    head = limit // 2
    return rows[:head] + rows[len(rows) - (limit - head):]


def render_into(path: Path, record: dict[str, Any]) -> None:
    """Reports are a view of the record: a template bug must not lose a finished run (it
    becomes a warning); a write that fails (OSError) fails the run like any other file."""
    try:
        write_reports(LoadedRun(path=path, record=record))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001
        record.setdefault("warnings", []).append(f"report not rendered: {e}")
