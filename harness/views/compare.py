"""Relative-gain tables over arms and runs. Reads records only (record.load_run); no torch.

Which comparisons are made:

- **Within a run**: every other arm (adapters, and extra zero-shot prompt-template arms
  ``baseline@<name>``) against that run's zero-shot ``baseline`` arm. Statistics are
  recomputed from ``predictions.jsonl`` with ``stats.compare_arms`` (paired by item id), with
  the first run's recorded seed and resample count (one setting per table, stated in the
  legend; ``--alpha`` sets the level), so a table never depends on comparisons a run may or
  may not have stored. Only a run without per-item rows shows its stored comparisons
  (labelled ``stored``), else point numbers only (``no per-item data``).
- **Across runs** (more than one run given): the first run given is the reference. Every
  adapter arm (one with an adapter path) of every other run is compared with the reference's
  adapter arm of the same name, else with the reference's first adapter arm (the Llama-3.2-1B
  "improvement over exp1"); zero-shot arms are compared with their namesakes only when the
  base models differ (two base models on one suite). Paired by item id when the eval
  fingerprints match; otherwise point numbers only, labelled ``unpaired (different eval
  sets)``, with no CI or p-value.
- Throughput and memory are compared only between arms measured by the same process
  (harness/measured.py): never across runs, nor with a cached baseline or an arm a killed run
  measured before `harness resume`; those rows are left out with a note saying why.
- Failed runs and failed arms are skipped with a note; a run given twice is used once.
- Each row also carries its candidate's training: method, r, trainable_params,
  train_runtime_s, peak_train_memory_bytes (as run.json holds them; empty for an arm harness did
  not train or a record older than the measurement) and whether the arm is Pareto-optimal on
  each cost within its own run (harness.views.frontier: gain on ``frontier_metric``; a seed
  arm carries its recipe's flags). The CSV and JSON carry them; md and html do not.

All comparisons land in one table, rows grouped by metric (so one metric across many arms
FineTome sweep report's table reads this way), then in the order the runs and arms were given.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import metrics as M
from harness.errors import InputError
from harness.rundir import results
from harness.rundir.record import LoadedRun, Status
from harness.stats import measured
from harness.stats import paired as stats
from harness.suite import arms as A
from harness.suite import config
from harness.views import formatting as F
from harness.views import frontier

FORMATS = ("md", "csv", "json", "html")  # also the choices of `harness compare --format`
PAIRED, UNPAIRED, NO_ITEMS, STORED = (
    "paired", "unpaired (different eval sets)", "no per-item data", "stored")
CSV_FIELDS = (
    "metric", "candidate_run", "candidate_arm", "baseline_run", "baseline_arm",
    "baseline_value", "candidate_value", "abs_diff", "rel_gain", "ci_low", "ci_high",
    "rel_ci_low", "rel_ci_high", "p_value", "p_value_holm", "significant", "better",
    "lower_is_better", "pairing", "n_items", "test", *frontier.ARM_COLUMNS,
)


@dataclass(frozen=True)
class Side:
    """One arm of one run, as it appears in the table."""

    run: LoadedRun
    arm: str
    label: str  # "lora" for a single run, "train.r=16:lora" or "<suite>:lora" for several


@dataclass(frozen=True)
class Pairing:
    base: Side
    cand: Side


@dataclass
class CompareTable:
    """Everything a renderer needs: raw rows (numbers), notes and the settings used."""

    rows: list[dict[str, Any]]
    notes: list[str]
    runs: list[dict[str, Any]]
    alpha: float
    settings: config.StatsSettings


def compare_runs(runs: list[LoadedRun], *, fmt: str = "md",
                 alpha: float = config.DEFAULT_ALPHA) -> str:
    """Render every adapter arm against its baseline (and the first run) as one table."""
    render = _renderer(fmt)
    return render(build_table(runs, alpha=alpha))


def _renderer(fmt: str) -> Callable[[CompareTable], str]:
    renderers = {"md": render_markdown, "csv": render_csv, "json": render_json,
                 "html": render_html}
    if fmt not in renderers:
        raise InputError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return renderers[fmt]


# ---------------------------------------------------------------- building the table


def build_table(runs: Sequence[LoadedRun], *, alpha: float = config.DEFAULT_ALPHA
                ) -> CompareTable:
    if not runs:
        raise InputError("compare needs at least one run")
    notes: list[str] = []
    usable = _usable_runs(runs, notes)
    settings = config.StatsSettings.from_record(
        usable[0].record.get("stats") if usable else None, alpha=alpha)
    labels = _run_labels(usable)
    arms = {id(r): _usable_arms(r, notes) for r in usable}
    within = _within_pairings(usable, arms, labels, notes)
    cross = _cross_pairings(usable, arms, labels, notes)
    # grouped by metric, then in the order the pairings were made (runs, then arms, as given)
    fronts = {id(r): frontier.frontier(r.record) for r in usable}
    computed = [(i, [{**row, **_arm_columns(p.cand, fronts)} for row in _compare(p, settings)])
                for i, p in enumerate(within + cross)]
    keyed = [((M.sort_key(r["metric"]), i), r) for i, rs in computed for r in rs]
    rows = [r for _, r in sorted(keyed, key=lambda kr: kr[0])]
    notes += system_notes(within + cross)
    notes += seed_notes(usable, [r for i, rs in computed[len(within):] for r in rs])
    if not rows:
        notes.append("nothing to compare: no run has an adapter arm beside a baseline arm")
    return CompareTable(rows, notes, [_run_summary(r, labels) for r in usable], alpha, settings)


def _arm_columns(side: Side, fronts: dict[int, frontier.Frontier | None]) -> dict[str, Any]:
    """The candidate's method, rank, training costs and Pareto flags (within its own run)."""
    return frontier.arm_columns(side.run.record, fronts[id(side.run)], side.arm)


# A difference between two seeds of one recipe has SD sqrt(2) x the seed SD; beyond 1.96 of
# those it is unlikely (5%) to be seed noise alone.
SEED_NOISE_Z = 1.96


def seed_notes(runs: Sequence[LoadedRun], cross_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Runs that differ only in their training seed: whether their differences exceed the
    seed noise some run measured (``train.seeds``), or that nothing here can tell."""
    flat = [dict(F.flatten(r.record.get("config") or {})) for r in runs]
    keys = set().union(*flat) if flat else set()
    differ = {k for k in keys if len({_short(f.get(k, _UNSET)) for f in flat}) > 1}
    if len(runs) < 2 or not differ or not differ <= {"train.seed", "train.seeds"}:
        return []
    sd = {str(c["metric"]): float(c["seed_sd"]) for r in runs
          for c in r.record.get("seed_comparisons") or []
          if isinstance(c, dict) and isinstance(c.get("seed_sd"), int | float)}
    if not sd:
        return ["these runs differ only in train.seed, so their differences are training "
                "noise plus item noise; with one seed per run nothing here measures the seed "
                "noise, so this table cannot tell whether a difference exceeds it (train the "
                "recipe with train.seeds = [0, 1, 2] to measure it)"]
    out = []
    for r in cross_rows:
        m, diff = str(r["metric"]), r.get("abs_diff")
        if m in sd and isinstance(diff, int | float):
            bound = SEED_NOISE_Z * math.sqrt(2) * sd[m]
            verdict = "within" if abs(diff) <= bound else "beyond"
            out.append(f"{r['candidate']} vs {r['baseline']}, {m}: {F.metric(m, diff, True)} is "
                       f"{verdict} seed noise (|diff| vs {SEED_NOISE_Z} x sqrt(2) x seed SD "
                       f"{F.metric(m, sd[m])} = {F.metric(m, bound)}, measured over seeds)")
    return out


def _usable_runs(runs: Sequence[LoadedRun], notes: list[str]) -> list[LoadedRun]:
    seen: set[Path] = set()
    usable = []
    for run in runs:
        where = run.path.resolve()
        if where in seen:
            notes.append(f"run {F.run_label(run)} given more than once; used once")
            continue
        seen.add(where)
        if run.record.get("status") != Status.SUCCESS:
            notes.append(f"skipped run {F.run_label(run)}: {F.failure(run.record)}")
            continue
        usable.append(run)
    return usable


def _usable_arms(run: LoadedRun, notes: list[str]) -> list[str]:
    names = []
    for name, arm in (run.record.get("arms") or {}).items():
        status = arm.get("status", Status.SUCCESS)
        if status != Status.SUCCESS or not isinstance(arm.get("metrics"), dict):
            notes.append(f"skipped arm {name} of run {F.run_label(run)}: status {status!r}")
            continue
        names.append(name)
    return names


def _run_labels(runs: Sequence[LoadedRun]) -> dict[int, str]:
    """Short row labels: '' for a lone run, the suite when each run has its own, else what
    differs between the runs' configs (``train.r=8`` vs ``train.r=16``), else the run id.

    "#1" / "#2" said nothing a reader could use without the "Runs:" list under the table.
    """
    if len(runs) == 1:
        return {id(runs[0]): ""}
    if len({r.suite for r in runs}) == len(runs):
        return {id(r): r.suite for r in runs}
    for labels in (_config_labels(runs), [r.run_id for r in runs]):
        if labels and len(set(labels)) == len(labels):
            return {id(r): label for r, label in zip(runs, labels, strict=True)}
    return {id(r): f"#{i}" for i, r in enumerate(runs, 1)}  # one run copied to two places


# A label shows at most 3 differing keys, each value cut to 24 characters: a row label
# ("train.r=16,train.learning_rate=0.0001:lora") must not crowd the numbers off the screen.
MAX_LABEL_KEYS, MAX_LABEL_VALUE = 3, 24
_UNSET = "unset"


def _config_labels(runs: Sequence[LoadedRun]) -> list[str]:
    """``key=value`` of every config key whose value differs between the runs; [] if none."""
    flat = [dict(F.flatten(r.record.get("config") or {})) for r in runs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f)
            if len({_short(f.get(k, _UNSET)) for f in flat}) > 1]
    if not keys:
        return []
    more = f",+{len(keys) - MAX_LABEL_KEYS} more" if len(keys) > MAX_LABEL_KEYS else ""
    return [",".join(f"{k}={_short(f.get(k, _UNSET))}" for k in keys[:MAX_LABEL_KEYS]) + more
            for f in flat]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= MAX_LABEL_VALUE else text[:MAX_LABEL_VALUE - 1] + "…"


def _side(run: LoadedRun, arm: str, labels: dict[int, str]) -> Side:
    prefix = labels[id(run)]
    return Side(run, arm, f"{prefix}:{arm}" if prefix else arm)


def _is_adapter(run: LoadedRun, arm: str) -> bool:
    return A.is_adapter(arm, (run.record.get("arms") or {}).get(arm))


def _within_pairings(runs: Sequence[LoadedRun], arms: dict[int, list[str]],
                     labels: dict[int, str], notes: list[str]) -> list[Pairing]:
    """Every other arm of a run (adapters, extra zero-shot templates) against its baseline."""
    out = []
    for run in runs:
        names = arms[id(run)]
        if A.BASELINE not in names and A.others(names):
            notes.append(f"run {F.run_label(run)} has no usable {A.BASELINE} arm")
            continue
        base = _side(run, A.BASELINE, labels)
        out += [Pairing(base, _side(run, a, labels)) for a in A.others(names)]
    return out


def _cross_pairings(runs: Sequence[LoadedRun], arms: dict[int, list[str]],
                    labels: dict[int, str], notes: list[str]) -> list[Pairing]:
    """Every later run's arms against an arm of the first run (see ``_cross_target``)."""
    if len(runs) < 2:
        return []
    ref = runs[0]
    out = []
    for run in runs[1:]:
        for arm in arms[id(run)]:
            target = _cross_target(ref, arms[id(ref)], run, arm)
            if target is None and _is_adapter(run, arm):
                notes.append(f"{_side(run, arm, labels).label}: the reference run has no "
                             "adapter arm to compare with")
            if target is not None:
                out.append(Pairing(_side(ref, target, labels), _side(run, arm, labels)))
    return out


def _cross_target(ref: LoadedRun, ref_arms: list[str], run: LoadedRun, arm: str) -> str | None:
    """Adapter arms: the reference's namesake adapter, else its first adapter arm. Zero-shot
    arms: the namesake, only when the base models differ (else the row would read 0)."""
    if _is_adapter(run, arm):
        adapters = [a for a in ref_arms if _is_adapter(ref, a)]
        return arm if arm in adapters else next(iter(adapters), None)
    if arm in ref_arms and _model(ref, arm) != _model(run, arm):
        return arm
    return None


def _model(run: LoadedRun, arm: str) -> Any:
    return run.record["arms"][arm].get("model")


def _compare(p: Pairing, settings: config.StatsSettings) -> list[dict[str, Any]]:
    """Rows for one pairing, statistics recomputed from the per-item predictions."""
    same_run = p.base.run is p.cand.run
    paired = same_run or stats.same_eval_set(p.base.run.record, p.cand.run.record)
    # extra sets pair only where both runs scored the same items
    sets = None if same_run else stats.shared_extra_sets(p.base.run.record, p.cand.run.record)
    base_items = _on_sets(p.base.run.items(p.base.arm), sets) if paired else []
    cand_items = _on_sets(p.cand.run.items(p.cand.arm), sets) if paired else []
    pairing = PAIRED if base_items and cand_items else (NO_ITEMS if paired else UNPAIRED)
    if pairing == NO_ITEMS:
        base_items = cand_items = []
    rows = stats.compare_arms(
        base_items, cand_items, _metrics(p.base), _metrics(p.cand),
        baseline=p.base.label, candidate=p.cand.label,
        n_resamples=settings.n_resamples, seed=settings.seed, alpha=settings.alpha,
    )
    if pairing == NO_ITEMS and same_run:
        rows, pairing = _stored(p, rows)
    where = _measured(p.base), _measured(p.cand)
    return [_decorate(r, p, pairing) for r in rows if measured.keep(r["metric"], *where)]


def _measured(side: Side) -> dict[str, Any]:
    return measured.of(side.run.record, side.arm)


def system_notes(pairings: Sequence[Pairing]) -> list[str]:
    """Pairings whose speed and memory were left out (measured.comparable), once per pair of
    runs (across runs every arm was measured by another process)."""
    out: dict[tuple[str, str, str], str] = {}
    for p in pairings:
        why = measured.reason(_measured(p.base), _measured(p.cand))
        shared = [m for m in _metrics(p.base) if measured.is_system(m)
                  and stats.is_number(_metrics(p.base).get(m))
                  and stats.is_number(_metrics(p.cand).get(m))]
        if why and shared:
            key = (p.base.run.run_id, p.cand.run.run_id, why)
            who = (f"{p.cand.label} vs {p.base.label}" if p.base.run is p.cand.run
                   else f"run {F.run_label(p.cand.run)} vs run {F.run_label(p.base.run)}")
            out.setdefault(key, f"{who}: throughput and memory not compared, {why}")
    return list(out.values())


def _on_sets(rows: list[dict[str, Any]], sets: set[str] | None) -> list[dict[str, Any]]:
    """The suite's own rows and those of the extra sets named (all of them for None)."""
    return rows if sets is None else [r for r in rows if r.get("set") in sets | {None}]


def _metrics(side: Side) -> dict[str, Any]:
    return side.run.record["arms"][side.arm]["metrics"]


def _stored(p: Pairing, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Point rows enriched with the run's stored comparison statistics, where there are any."""
    stored = {c.get("metric"): c for c in p.cand.run.record.get("comparisons") or []
              if c.get("baseline") == p.base.arm and c.get("candidate") == p.cand.arm}
    if not stored:
        return rows, NO_ITEMS
    for r in rows:
        keep = {k: v for k, v in stored.get(r["metric"], {}).items()
                if k in ("ci_low", "ci_high", "p_value", "p_value_holm", "rel_ci_low",
                         "rel_ci_high", "significant", "n_items", "test", "p_value_mid")}
        r.update(keep)
        r["paired"] = r.get("ci_low") is not None
    return rows, STORED


def _decorate(row: dict[str, Any], p: Pairing, pairing: str) -> dict[str, Any]:
    return {
        **row,
        "candidate_run": p.cand.run.run_id, "candidate_arm": p.cand.arm,
        "baseline_run": p.base.run.run_id, "baseline_arm": p.base.arm,
        "better": _verdict(row), "pairing": pairing,
    }


def _verdict(row: dict[str, Any]) -> str:
    """'better' | 'worse' | 'same', in the metric's own direction."""
    d = row["abs_diff"]
    if d == 0:
        return "same"
    return "better" if (d < 0) == bool(row["lower_is_better"]) else "worse"


def _run_summary(run: LoadedRun, labels: dict[int, str]) -> dict[str, Any]:
    return {
        "label": labels[id(run)], "suite": run.suite, "run_id": run.run_id,
        "path": str(run.path), "eval_fingerprint": stats.eval_fingerprint(run.record),
        "device": (run.record.get("env") or {}).get("device"),
    }


# ---------------------------------------------------------------- cell formatting


def _rel(row: dict[str, Any]) -> str:
    """As the Llama-3.2-1B FineTome report wrote it: ↓17.3% for 1.1774 -> 0.9736, then whether
    that is better or worse."""
    rel = row["rel_gain"]
    if rel is None:
        return F.DASH
    arrow = "↑" if rel > 0 else "↓" if rel < 0 else "="
    return f"{arrow}{F.percent(abs(rel), signed=False)} {row['better']}"


def _ci(row: dict[str, Any]) -> str:
    return F.interval(row.get("ci_low"), row.get("ci_high"),
                      lambda v: F.metric(row["metric"], v, signed=True))


def _p_raw(row: dict[str, Any], alpha: float) -> str:
    """The metric's own p (no multiplicity adjustment), as the CI beside it is."""
    return F.p_value(row.get("p_value"), alpha)


def _p_holm(row: dict[str, Any], alpha: float) -> str:
    """Holm-adjusted across the metrics of the comparison; ``*`` = significant at alpha."""
    return F.p_value(row.get("p_value_holm"), alpha) + (" *" if row.get("significant") else "")


def _pairing(row: dict[str, Any]) -> str:
    if row["pairing"] == PAIRED and not M.is_per_item(row["metric"]):
        return "point only"
    n = row.get("n_items")
    cell = f"{row['pairing']}, n={n}" if row["pairing"] == PAIRED and n else row["pairing"]
    # p is not the permutation p the other rows carry: say so where it is read
    return f"{cell}, McNemar" if row.get("test") == stats.MCNEMAR else cell


# (header, cell from (row, alpha), alignment)
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any], float], str], str], ...] = (
    ("Metric", lambda r, a: r["metric"], "l"),
    ("Candidate", lambda r, a: r["candidate"], "l"),
    ("Baseline", lambda r, a: r["baseline"], "l"),
    ("Baseline value", lambda r, a: F.metric(r["metric"], r["baseline_value"]), "r"),
    ("Candidate value", lambda r, a: F.metric(r["metric"], r["candidate_value"]), "r"),
    ("Abs. gain", lambda r, a: F.metric(r["metric"], r["abs_diff"], signed=True), "r"),
    ("Rel. gain", lambda r, a: _rel(r), "r"),
    ("CI (abs.)", lambda r, a: _ci(r), "l"),
    ("p", _p_raw, "r"),
    ("p (Holm)", _p_holm, "r"),
    ("Pairing", lambda r, a: _pairing(r), "l"),
)


def formatted_rows(table: CompareTable) -> list[list[str]]:
    return [[show(r, table.settings.alpha) for _, show, _ in COLUMNS] for r in table.rows]


def tones(table: CompareTable) -> list[str]:
    """Each row's colour: better / worse only when significant (formatting.tone)."""
    return [F.tone(r["metric"], r["abs_diff"], r.get("significant")) for r in table.rows]


def legend(table: CompareTable) -> list[str]:
    s = table.settings
    return [
        f"`*` significant at alpha = {s.alpha:g} after Holm correction across the metrics of "
        "each comparison.",
        f"CI: {F.ci_level(s.alpha)} paired percentile bootstrap over eval items ({s.n_resamples:,} "
        f"resamples, seed {s.seed}), per metric, unadjusted for multiplicity; p: two-sided "
        f"paired permutation test of that metric alone{_mcnemar_note(table)}, unadjusted like "
        "the CI beside it; p (Holm): the same p adjusted across the metrics of the comparison, "
        "which decides `*`.",
        "Rel. gain = (candidate - baseline) / baseline; ↓/↑ is the direction of the change, "
        f"better/worse reads it in the metric's direction{_lower_is_better(table)}.",
    ]


def _mcnemar_note(table: CompareTable) -> str:
    """Said only where the table has a right/wrong metric (acc...), whose p is McNemar's."""
    if not any(r.get("test") == stats.MCNEMAR for r in table.rows):
        return ""
    return (" (Pairing \"McNemar\": the exact McNemar test, a two-sided binomial test on the "
            "items only one arm got right)")


def _lower_is_better(table: CompareTable) -> str:
    """The table's own lower-is-better metrics, not every one harness knows."""
    lower = sorted({M.base(r["metric"]) for r in table.rows if M.lower_is_better(r["metric"])})
    return f" (lower is better for {', '.join(lower)})" if lower else ""


# ---------------------------------------------------------------- renderers


def render_markdown(table: CompareTable) -> str:
    """GitHub Markdown (it lands in $GITHUB_STEP_SUMMARY): every cell and line from a record
    goes through ``md_cell``, so an arm name or error message cannot inject HTML or break a
    row (and ``<0.001`` stays text)."""
    align = ["---:" if a == "r" else "---" for _, _, a in COLUMNS]
    lines = [f"## harness compare ({len(table.runs)} run{'s' * (len(table.runs) != 1)})", ""]
    lines += [_md_row([h for h, _, _ in COLUMNS]), "| " + " | ".join(align) + " |"]
    lines += [_md_row(row) for row in formatted_rows(table)]
    lines += [""] + legend(table)
    lines += ["", "Runs:"] + [_md_run(r) for r in table.runs]
    if table.notes:
        lines += ["", "Notes:"] + [f"- {F.md_cell(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(F.md_cell(c) for c in cells) + " |"


def _md_run(r: dict[str, Any]) -> str:
    label = f"**{F.md_cell(r['label'])}**: " if r["label"] else ""
    return "- " + label + F.md_cell(f"{F.run_label(r)}, eval set {r['eval_fingerprint']}, "
                                    f"device {r['device']}, {r['path']}")


def render_csv(table: CompareTable) -> str:
    """One row per comparison, every cell through ``csv_cell``: an arm named ``=HYPERLINK(...)``
    reads as text in a spreadsheet, not as a formula; numbers stay numbers."""
    buf = io.StringIO()
    # Text quoted (OWASP's advice; also the only way the csv module quotes a CR, which a
    # reader would take for the end of the row), numbers bare.
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n",
                            quoting=csv.QUOTE_NONNUMERIC)
    buf.write(",".join(CSV_FIELDS) + "\n")  # names that need no quotes
    for r in table.rows:
        row = results.finite(r)  # a NaN from an older record: empty, as a missing value
        writer.writerow({k: "" if row.get(k) is None else F.csv_cell(row.get(k))
                         for k in CSV_FIELDS})
    return buf.getvalue()


def render_json(table: CompareTable) -> str:
    """Strict JSON (results.dumps): a NaN an older record stored reads null; a control
    character in a name as its JSON escape, so the text is safe to print and parses back to
    the same name."""
    doc = {
        "alpha": table.alpha, "stats": stats.stats_record(**table.settings.model_dump()),
        "runs": table.runs,
        "comparisons": table.rows, "notes": table.notes,
    }
    return F.printable(results.dumps(doc), json=True)


def render_html(table: CompareTable) -> str:
    from harness.views import templating

    return templating.render(
        "compare.html.j2",
        headers=[(h, a) for h, _, a in COLUMNS], rows=formatted_rows(table),
        tones=tones(table),
        legend=[line.replace("`", "") for line in legend(table)], runs=table.runs,
        notes=table.notes,
    )
