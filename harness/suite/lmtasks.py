"""lm-evaluation-harness tasks as eval sets ([eval.sets.NAME] lm_eval_task = ...).

lm-eval's own task object gives the documents, prompts, few-shot examples (its sampler, seeded
as ``simple_evaluate`` seeds it), the requests, the filters and each document's metrics
(``process_results``), so the numbers are lm-eval's definition; harness only answers the
requests, with each arm (harness.run.taskrequests). No torch: lm-eval's task modules import
none. lm-eval is an optional dependency, imported here only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import metrics as M
from harness.errors import DataError, DatasetUnavailable, InputError, one_line
from harness.suite.config import EvalSetSpec, resolve
from harness.suite.prompts import Example

INSTALL = "pip install 'harness[lm-eval]'"
# A scored row's (references, prediction) for the task's bleu / chrf / ter: the run turns
# them into sacrebleu's per-document statistics (harness.run.textmetrics) and drops the field.
TEXT_PAIRS = "text_pairs"
OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")


class LmEvalMissing(InputError):
    """A suite names an lm-eval task but lm-eval is not installed."""


@dataclass(frozen=True)
class Request:
    """One request of a document, as lm-eval's Instance gives it: ``kind`` is its
    request_type; ``args`` (context, continuation) for loglikelihood, (text,) for
    loglikelihood_rolling, (context, generation kwargs) for generate_until."""

    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Doc:
    id: str
    requests: tuple[Request, ...]


def _lm_eval() -> Any:
    try:
        import lm_eval.tasks
    except ImportError as e:
        raise LmEvalMissing(f"lm-evaluation-harness is not installed ({one_line(e)}); "
                            f"install it with: {INSTALL}") from None
    return lm_eval


@dataclass(frozen=True)
class _Part:
    """One lm-eval task of a set (a group's subtask, or the set's one task): its documents as
    ``doc_iterator`` gives them and each one's Instances in request order."""

    task: Any
    raw: list[tuple[int, Any]]
    instances: dict[int, list[Any]]
    filter_key: str
    prefix: str  # "" for a single task; "<task>/" before a group's doc ids


class LmTask:
    """One lm-eval task, or a group whose subtasks' documents are pooled, built and its
    requests made, for one eval set."""

    def __init__(self, set_name: str, spec: EvalSetSpec, tasks: Sequence[Any], table: str,
                 group: Any = None) -> None:
        self.set_name, self.spec, self.group = set_name, spec, group
        types = sorted({t.OUTPUT_TYPE for t in tasks})
        if len(types) != 1 or types[0] not in OUTPUT_TYPES:
            raise InputError(f"{table}.lm_eval_task: output type(s) {', '.join(types)}; "
                             f"harness answers one of {', '.join(OUTPUT_TYPES)} per set")
        self.output_type: str = types[0]
        self.metrics, self.skipped = _task_metrics(tasks[0], table)
        for t in tasks[1:]:
            if _task_metrics(t, table)[0] != self.metrics:
                raise InputError(f"{table}.lm_eval_task: the group's tasks score different "
                                 f"metrics ({tasks[0].task_name}, {t.task_name}); give each "
                                 "task its own set")
        if group is not None:
            _check_pooled(group, self.metrics, table)
        self._parts = [_Part(t, list(t.doc_iterator(rank=0, limit=spec.limit, world_size=1)),
                             _by_doc(t.instances), _filter_key(t, spec.filter, table),
                             f"{t.task_name}/" if group is not None else "")
                       for t in tasks]
        self.docs = tuple(Doc(f"{p.prefix}{i}", tuple(Request(x.request_type, tuple(x.args))
                                                      for x in p.instances[i]))
                          for p in self._parts for i, _ in p.raw)

    @property
    def keys(self) -> tuple[str, ...]:
        """The harness metric keys this set scores (bare: evaluation prefixes the set)."""
        return tuple(self.metrics)

    @property
    def warnings(self) -> list[str]:
        """What the run should say about the set: metrics it does not pair, a num_fewshot the
        task's config overrides (lm-eval keeps a task's fixed 0, as harness does)."""
        table = f"eval.sets.{self.set_name}"
        out = [f"{table}: lm-eval metric(s) not scored, their aggregation is not one harness "
               f"pairs: {', '.join(self.skipped)}"] if self.skipped else []
        fixed = sorted({p.task.task_name for p in self._parts
                        if self.spec.num_fewshot and p.task.get_config("num_fewshot") == 0})
        if fixed:
            out.append(f"{table}.num_fewshot = {self.spec.num_fewshot} is not applied: "
                       f"{', '.join(fixed)} fix(es) 0 few-shot examples in the task config")
        return out

    def _each(self) -> list[tuple[_Part, int, Any]]:
        return [(p, i, doc) for p in self._parts for i, doc in p.raw]

    def examples(self) -> tuple[Example, ...]:
        """One Example per document: its first request's context, its target, and for a
        multiple-choice task the choices, their continuations and the answer's index."""
        return tuple(self._example(d, p.task, doc)
                     for d, (p, _, doc) in zip(self.docs, self._each()))

    def _example(self, d: Doc, task: Any, doc: Any) -> Example:
        target = task.doc_to_target(doc)
        if self.output_type != "multiple_choice":
            return Example(d.id, str(d.requests[0].args[0]), _text(target))
        choices = tuple(str(c) for c in task.doc_to_choice(doc))
        gold = target if isinstance(target, int) and 0 <= target < len(choices) else None
        return Example(d.id, str(d.requests[0].args[0]),
                       choices[gold] if gold is not None else _text(target), choices=choices,
                       continuations=tuple(str(r.args[1]) for r in d.requests), gold=gold)

    def fingerprint(self) -> str:
        """sha256 over every document's id, requests and target: equal iff the same requests
        (prompts, few-shot examples, choices, generation settings) were made."""
        h = hashlib.sha256()
        for d, (p, _, doc) in zip(self.docs, self._each()):
            item = [d.id, [[r.kind, list(r.args)] for r in d.requests],
                    _text(p.task.doc_to_target(doc))]
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def score(self, responses: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Each document's metric columns (and what the example browser shows) from one arm's
        responses, ``responses[k][j]`` answering request j of document k (``docs`` order):
        lm-eval's filters and ``process_results`` turn them into its per-document metrics."""
        for (p, i, _), answers in zip(self._each(), responses):
            for inst, answer in zip(p.instances[i], answers):
                inst.resps, inst.filtered_resps = [answer] * inst.repeats, {}
        for p in self._parts:
            p.task.apply_filters()
        return [self._doc_row(p, i, doc) for p, i, doc in self._each()]

    def _doc_row(self, p: _Part, i: int, doc: Any) -> dict[str, Any]:
        answers = [inst.filtered_resps[p.filter_key] for inst in p.instances[i]]
        values = p.task.process_results(doc, answers)
        where = f"eval.sets.{self.set_name} ({self.spec.lm_eval_task}), document {p.prefix}{i}"
        row: dict[str, Any] = {}
        try:
            for key, name in self.metrics.items():
                row.update(_columns(key, values[name]))
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        texts = [values[n] for k, n in self.metrics.items() if k in M.TEXT_PAIR_KEYS]
        if texts:
            row[TEXT_PAIRS] = _text_pair(texts[0], where)
        if self.output_type == "multiple_choice":
            row.update(_choice_view(p.task.doc_to_choice(doc), answers))
        elif self.output_type == "generate_until":
            row["prediction"] = _text(answers[0])
        return row

    def summary(self) -> dict[str, Any]:
        """What the record keeps of the task: enough to rebuild the same requests."""
        import lm_eval

        first = self._parts[0]
        return {"lm_eval_task": self.spec.lm_eval_task, "lm_eval_version": lm_eval.__version__,
                "task_name": self.group.name if self.group else first.task.config.task,
                "tasks": [p.task.task_name for p in self._parts] if self.group else None,
                "output_type": self.output_type,
                "num_fewshot": first.task.config.num_fewshot,
                "fewshot_seed": self.spec.fewshot_seed,
                "limit": self.spec.limit, "filter": first.filter_key,
                "task_metrics": dict(self.metrics),
                "skipped_metrics": list(self.skipped)}


def _check_pooled(group: Any, metrics: dict[str, str], table: str) -> None:
    """A group's set pools its subtasks' documents, so each metric is the mean over all of
    them: lm-eval's group score only when every group level weights its members by size."""
    for g in [group, *group.get_all_groups()]:
        configs = {c.metric: c for c in (g.aggregate_metric_list or [])}
        for name in metrics.values():
            c = configs.get(name)
            if c is None or not c.weight_by_size or c.aggregation not in ("mean", None):
                raise InputError(
                    f"{table}.lm_eval_task: group {g.name} does not average {name} weighted "
                    "by size, so its score is not the mean over its documents; give its "
                    "tasks as separate sets")


def _text(x: Any) -> str:
    return x if isinstance(x, str) else json.dumps(x, default=str)


def _text_pair(value: Any, where: str) -> tuple[list[str], str]:
    """lm-eval's (references, prediction) of a bleu / chrf / ter document, as its
    ``_sacreformat`` reads it: one reference or a list of them, the prediction a string or a
    list of one."""
    try:
        refs, pred = value
        refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
        pred = pred if isinstance(pred, str) else _only(pred)
    except (TypeError, ValueError):
        raise DataError(f"{where}: lm-eval gave {value!r} where (references, prediction) was "
                        "expected") from None
    return refs, pred


def _only(items: Any) -> str:
    (one,) = items
    return str(one)


def _choice_view(choices: Sequence[Any], answers: Sequence[Any]) -> dict[str, Any]:
    """The picks the browser shows, as lm-eval's multiple_choice scoring makes them: the
    highest log-likelihood, and the highest per character of the choice (acc_norm)."""
    lls = np.array([float(a[0]) for a in answers])
    lens = np.array([float(len(str(c))) for c in choices])
    pick, pick_norm = int(np.argmax(lls)), int(np.argmax(lls / lens))
    return {"choices": [str(c) for c in choices], "loglikelihoods": lls.tolist(),
            "pick": pick, "pick_norm": pick_norm, "prediction": str(choices[pick])}


def _columns(key: str, value: Any) -> dict[str, float]:
    """A document's value of metric ``key`` as its predictions.jsonl columns: a number in the
    key's one column, a (log-likelihood, words or bytes) pair in its two."""
    keyed = M.keyed("task", key)  # any set: the key's own entry, a task's mean included
    if key in M.CONFUSION_KEYS:
        return _confusion(key, value)
    if key == "brier_score":
        return {key: _brier(value)}
    if key in M.TEXT_PAIR_KEYS:
        return {}  # scored from the document's TEXT_PAIRS by the run (sacrebleu's statistics)
    cols = M.columns(keyed)
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if len(parts) != len(cols):
        raise DataError(f"lm-eval metric for {key} gave {value!r}, expected {len(cols)} "
                        "value(s)")
    out = {c: float(v) for c, v in zip(cols, parts)}
    if M.is_binary(keyed) and out[cols[0]] not in (0.0, 1.0):
        # A custom process_results (truthfulqa_mc2's acc is a probability mass) is not right
        # or wrong: McNemar would count it wrong, so it is refused, never paired as such.
        raise DataError(f"lm-eval metric {key} gave {value!r} for a document; harness pairs "
                        f"{key} as right (1) or wrong (0)")
    return out


def _brier(value: Any) -> float:
    """lm-eval's (answer index, choice probabilities) as the document's squared error, whose
    mean over documents is its brier_score aggregation."""
    try:
        gold, probs = value
        p = np.asarray(probs, dtype=np.float64)
        return float(np.sum((p - np.eye(len(p))[int(gold)]) ** 2))
    except (TypeError, ValueError, IndexError):
        raise DataError(f"lm-eval metric brier_score gave {value!r}, expected (answer index, "
                        "choice probabilities)") from None


def _confusion(key: str, value: Any) -> dict[str, float]:
    """An (answer, prediction) pair as 0 / 1 confusion counts; labels other than 0 and 1 (a
    multi-class task) are refused: the binary score would not be lm-eval's."""
    try:
        gold, pred = (int(v) for v in value)
        ok = {gold, pred} <= {0, 1} and [gold, pred] == [float(v) for v in value]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"lm-eval metric {key} gave {value!r} for a document; harness pairs "
                        f"{key} over binary (0 / 1) answers and predictions")
    cells = {"tp": gold and pred, "fp": pred and not gold, "fn": gold and not pred,
             "tn": not gold and not pred}
    return {c: float(bool(cells[c.rsplit("_", 1)[1]])) for c in M.columns(key)}


def _by_doc(instances: Sequence[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for inst in instances:
        out.setdefault(inst.doc_id, []).append(inst)
    return {k: sorted(v, key=lambda x: x.idx) for k, v in out.items()}


def _filter_key(task: Any, wanted: str | None, table: str) -> str:
    names = [f.name for f in getattr(task, "_filters", [])] or ["none"]
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise InputError(f"{table}.filter = {wanted!r}: the task's filters are "
                         f"{', '.join(names)}")
    return wanted


def _task_metrics(task: Any, table: str) -> tuple[dict[str, str], list[str]]:
    """harness key -> lm-eval metric name for each metric of the task harness can pair
    (metrics.LM_EVAL), and a line for each it cannot (its aggregation is not one harness
    recomputes from per-document sums)."""
    import lm_eval.api.metrics  # noqa: F401  (registers the aggregations by name)
    from lm_eval.api.registry import AGGREGATION_REGISTRY

    agg_names = {id(fn): name for name, fn in AGGREGATION_REGISTRY.items()}
    higher = task.higher_is_better()
    keys: dict[str, str] = {}
    skipped: list[str] = []
    for name, fn in task.aggregation().items():
        agg = agg_names.get(id(fn), getattr(fn, "__name__", str(fn)))
        key = M.LM_EVAL.get((name, agg)) or _task_mean_key(name, agg)
        if key is None or M.lower_is_better(key) == bool(higher.get(name, True)):
            skipped.append(f"{name} (aggregation {agg})")
        else:
            keys[key] = name
    if not keys:
        raise InputError(f"{table}.lm_eval_task: none of the task's metrics can be paired: "
                         f"{', '.join(skipped)}; harness pairs "
                         f"{', '.join(sorted({f'{n} ({a})' for n, a in M.LM_EVAL}))}")
    return keys, skipped


def _task_mean_key(name: str, agg: str) -> str | None:
    """A mean-aggregated metric the table does not name (``contains``, squad's ``f1``...) is
    keyed by its own name: the mean of its per-document column (metrics.task_mean)."""
    if agg == "mean" and name not in M.BY_KEY and M.TASK_METRIC_NAME.fullmatch(name):
        return name
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval logs every default it fills in (several lines per metric) at INFO/WARNING,
    and draws progress bars on stderr for a build that takes milliseconds."""
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def load_task(name: str, spec: EvalSetSpec, base_dir: Path) -> LmTask:
    """Build the set's task (or group), its few-shot settings as ``simple_evaluate`` applies
    them, and its requests for the first ``limit`` documents (of each task). A task YAML's
    relative ``data_files`` resolve against the YAML's folder, where its group's tasks are
    found too. Bad input raises InputError; a hub data set that cannot be reached raises
    DatasetUnavailable (validate lists it as unchecked)."""
    table = f"eval.sets.{name}"
    lm_eval_tasks()
    source = spec.lm_eval_task or ""
    path = resolve(base_dir, source)
    local = source.endswith((".yaml", ".yml")) or path.is_file()
    if local and not path.is_file():
        raise InputError(f"{table}.lm_eval_task: no task YAML at {path}")
    with _quiet():
        manager = (lm_eval_tasks().TaskManager(include_path=str(path.parent),
                                               include_defaults=False)
                   if local else _catalogue())
        loaded = _loaded(manager, _yaml_name(path, table) if local else source,
                         path.parent if local else None, table)
        tasks = list(loaded["tasks"].values())
        for task in tasks:
            _set_fewshot(task, spec)
            task.build_all_requests(limit=spec.limit, rank=0, world_size=1)
    kids = {k for members in (loaded.get("group_map") or {}).values() for k in members}
    top = [g for g in loaded["groups"].values() if g.name not in kids]
    return LmTask(name, spec, tasks, table, group=top[0] if top else None)


@functools.cache
def _catalogue() -> Any:
    """lm-eval's own task index: indexing its ~230 task folders takes ~6 s on 2 cores, once
    per process however many sets name a task. (A local YAML's folder is indexed afresh:
    it is small, and its files may change between runs of one process.)"""
    return lm_eval_tasks().TaskManager()


def lm_eval_tasks() -> Any:
    """``lm_eval.tasks``, or LmEvalMissing saying what to install."""
    return _lm_eval().tasks


def _yaml_name(path: Path, table: str) -> str:
    """The task or group name a YAML declares (lm-eval loads a group by name, not path)."""
    import yaml

    class _Tags(yaml.SafeLoader):  # !function and the like: only the name is read here
        pass

    _Tags.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Tags)  # noqa: S506
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{table}.lm_eval_task {path}: {one_line(e)}") from None
    found = (config.get("group") or config.get("task")) if isinstance(config, dict) else None
    if not isinstance(found, str):
        raise InputError(f"{table}.lm_eval_task {path}: no task or group name in the YAML")
    return found


def _loaded(manager: Any, source: str, folder: Path | None, table: str) -> dict[str, Any]:
    try:
        with contextlib.chdir(folder) if folder else contextlib.nullcontext():
            return dict(manager.load([source]))
    except ConnectionError as e:
        raise DatasetUnavailable(f"{table}.lm_eval_task {source!r}: cannot load its data "
                                 f"set: {one_line(e)}") from e
    except KeyError:
        raise InputError(f"{table}.lm_eval_task = {source!r}: lm-eval knows no such task "
                         "(a task name, or the path of a task YAML file)") from None
    except Exception as e:  # noqa: BLE001 - a task YAML / data file problem, in its words
        raise DataError(f"{table}.lm_eval_task {source!r}: {one_line(e)}") from e


def _set_fewshot(task: Any, spec: EvalSetSpec) -> None:
    """num_fewshot as simple_evaluate applies it: a task whose config fixes 0 keeps 0; unset,
    the task's own default, else 0. Then the sampler's seed."""
    default = task.get_config("num_fewshot")
    if spec.num_fewshot is not None and default != 0:
        task.set_config(key="num_fewshot", value=spec.num_fewshot)
    elif default is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=spec.fewshot_seed)
