"""One arm's evaluation on every eval set: teacher-forced loss, generation and the text
metrics, as per-item rows and the arm's metrics. Computes and returns; the pipeline writes.

The suite's own set ([data]) gives the bare metric names and the arm's throughput; each extra
set ([eval.sets.<name>]) gives ``<name>/<metric>`` and rows with ``set = <name>``. Every
quality metric is computed from summed per-item columns (metrics.from_rows, through
from_sums, the function the bootstrap resamples), so an arm's number and its CI's centre
cannot disagree, and merge and resume check a stored number against its rows the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness import metrics as M
from harness.errors import DataError
from harness.run import (
    distributed,
    encoding,
    linearpack,
    memory,
    scoring,
    taskrequests,
    textmetrics,
)
from harness.run.encoding import Encoded
from harness.suite import lmtasks
from harness.suite.config import EvalSpec
from harness.suite.lmtasks import LmTask
from harness.suite.prompts import Example

Task = Callable[[str, int], Callable[[int], None]]  # progress.task(label, total) -> advance


@dataclass(frozen=True)
class Target:
    """One eval set as an arm is scored on it: its examples, encoded with the arm's
    tokenizer, and the metrics the suite asks of it (config names)."""

    name: str | None  # None: the suite's own set
    examples: Sequence[Example]
    items: Sequence[Any]  # Encoded; EncodedChoices for a multiple-choice set
    metrics: tuple[str, ...]
    multiple_choice: bool = False
    lm_task: LmTask | None = None  # an lm-eval task: its documents' requests, its scoring
    max_length: int | None = None  # an lm-eval task's context; None: the model's own

    @property
    def generate(self) -> bool:
        return bool(M.GENERATION_CHOICES & set(self.metrics))


def set_target(eval_set: Any, tok: Any) -> Target:
    """An extra set (a data.EvalSet) as the arm scores it: its examples encoded with ``tok``
    (an existing adapter may bring its own tokenizer), a multiple-choice set's as a context
    and its choices' continuations."""
    spec = eval_set.spec
    if eval_set.task is not None:  # lm-eval: each arm's requests tokenized as it answers them
        return Target(eval_set.name, eval_set.examples, (), eval_set.metrics,
                      lm_task=eval_set.task, max_length=spec.max_length)
    if spec.multiple_choice:
        items: list[Any] = [encoding.encode_choices(ex, tok, spec.as_data())
                            for ex in eval_set.examples]
    else:
        items, _ = encoding.encode_all(eval_set.examples, tok, spec.as_data())
    return Target(eval_set.name, eval_set.examples, items, tuple(spec.metrics),
                  multiple_choice=spec.multiple_choice)


@dataclass(frozen=True)
class ArmEval:
    """One arm's evaluation: its per-item rows and metrics, written into the record once."""

    rows: tuple[dict[str, Any], ...]
    metrics: dict[str, Any]


def evaluate(model: Any, tok: Any, targets: Sequence[Target], spec: EvalSpec, *, arm: str,
             device: str, task: Task) -> ArmEval:
    """Score ``model`` on every target; peak memory spans the whole evaluation of the arm
    (on the CPU the linear layers' prepacked weights too: ``linearpack``)."""
    model.eval()
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    textmetrics.preload([m for t in targets for m in t.metrics])  # not the arm's memory
    with memory.PeakMemory(device, model) as peak, linearpack.prepacked(model):
        for t in targets:
            t_rows, t_metrics = _score(model, tok, t, spec, arm, task)
            rows += t_rows
            metrics.update(t_metrics)
    metrics["peak_memory_bytes"] = max(distributed.all_values(peak.bytes))  # busiest rank
    return ArmEval(tuple(rows), metrics)


def _score(model: Any, tok: Any, t: Target, spec: EvalSpec, arm: str, task: Task
           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    where = f" on {t.name}" if t.name else ""
    if t.lm_task is not None:
        return _score_task(model, tok, t, spec, task(f"lm-eval {arm}{where}",
                                                     len(t.lm_task.docs)), arm)
    if t.multiple_choice:
        return _score_choices(model, tok, t, spec.batch_size, task, f"choices {arm}{where}",
                              arm)
    share = distributed.my_share(len(t.items))  # all items in one process
    mine = [t.items[i] for i in share]
    losses, eval_tps = scoring.teacher_forced(model, mine, spec.batch_size, tok.pad_token_id,
                                              task(f"eval loss {arm}{where}", len(mine)))
    losses, eval_tps = _gathered(losses, eval_tps, mine, len(t.items))
    gens = None
    if t.generate:
        gens = _gathered_generations(
            scoring.generate(model, tok, mine, spec, task(f"generate {arm}{where}", len(mine))),
            len(t.items))
    rows = _rows(arm, t, losses, gens, spec)
    metrics = _metrics(t, rows, generated=gens is not None)
    if t.name is None:  # throughput of the suite's own set: what the arm costs to serve
        metrics["eval_tokens_per_s"] = round(eval_tps, 2)
        metrics["gen_tokens_per_s"] = round(gens.tokens_per_s, 2) if gens else None
    return rows, metrics


def _score_choices(model: Any, tok: Any, t: Target, batch_size: int, task: Task, label: str,
                   arm: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Items per batch: eval.batch_size (each brings all its choices)."""
    mine = [t.items[i] for i in distributed.my_share(len(t.items))]  # all in one process
    lls = scoring.choice_loglikelihoods(model, mine, tok.pad_token_id, batch_size,
                                        task(label, len(mine)))
    rows = [choice_row(arm, t.name, ex, ll)
            for ex, ll in zip(t.examples, distributed.gather(lls, len(t.items)))]
    return rows, {M.keyed(t.name, k): M.from_rows(k, rows) for k in t.metrics}


def _score_task(model: Any, tok: Any, t: Target, spec: EvalSpec, advance: Callable[[int], None],
                arm: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An lm-eval task: this arm answers its requests, lm-eval's task scores each document.
    Documents per batch: eval.batch_size (a multiple-choice one brings all its choices),
    eval.generate_batch_size for generation."""
    assert t.lm_task is not None
    docs = t.lm_task.docs
    mine = [docs[i] for i in distributed.my_share(len(docs))]  # all in one process
    answers = taskrequests.answer(model, tok, mine, t.lm_task.output_type,
                                  batch_size=spec.batch_size,
                                  gen_batch_size=spec.gen_batch_size,
                                  max_length=t.max_length, seed=spec.seed, advance=advance)
    scored = _with_text_columns(t.lm_task.score(distributed.gather(answers, len(docs))),
                                t.metrics, t.name)
    rows = [{"arm": arm, "set": t.name, "id": ex.id, "prompt": ex.prompt,
             "reference": ex.response, "prediction": None, "loss": None, "nll_sum": None,
             "n_tokens": None, "gen_tokens": None,
             **({"gold": ex.gold} if ex.choices else {}), **doc}
            for ex, doc in zip(t.examples, scored)]
    keys = [M.keyed(t.name, k) for k in t.metrics]  # a task's own metric is known keyed
    return rows, {k: M.from_rows(k, rows) for k in keys}


def _with_text_columns(scored: list[dict[str, Any]], keys: Sequence[str], name: str | None
                       ) -> list[dict[str, Any]]:
    """An lm-eval task's bleu / chrf / ter: each document's (references, prediction) as
    sacrebleu's statistics columns, whose sums give lm-eval's corpus score."""
    pairs = [doc.pop(lmtasks.TEXT_PAIRS, None) for doc in scored]
    wanted = [k for k in keys if k in M.TEXT_PAIR_KEYS]
    if not wanted:
        return scored
    if len({len(p[0]) for p in pairs}) != 1:
        raise DataError(f"eval.sets.{name}: documents have different numbers of references; "
                        "sacrebleu's corpus scores need the same number for each")
    streams = list(zip(*(p[0] for p in pairs)))
    for key in wanted:
        for doc, cols in zip(scored, textmetrics.corpus_columns(key, [p[1] for p in pairs],
                                                                  streams)):
            doc.update(cols)
    return scored


def choice_row(arm: str, eval_set: str | None, ex: Example, lls: Sequence[float]
               ) -> dict[str, Any]:
    """A multiple-choice item's prediction row: every choice's log-likelihood, the pick by
    acc (the highest) and by acc_norm (the highest per character of the choice, as
    lm-evaluation-harness divides by ``len(choice)``), the answer's index, and acc /
    acc_norm 1.0 (right) or 0.0. Ties go to the lowest index (numpy's argmax)."""
    ll = np.asarray(lls, dtype=np.float64)
    pick = int(np.argmax(ll))
    pick_norm = int(np.argmax(ll / np.array([float(len(c)) for c in ex.choices])))
    return {
        "arm": arm, "set": eval_set, "id": ex.id, "prompt": ex.prompt,
        "reference": ex.choices[ex.gold or 0], "prediction": ex.choices[pick], "loss": None,
        "nll_sum": None, "n_tokens": None, "gen_tokens": None,
        "choices": list(ex.choices), "loglikelihoods": [float(x) for x in ll],
        "gold": ex.gold, "pick": pick, "pick_norm": pick_norm,
        "acc": float(pick == ex.gold), "acc_norm": float(pick_norm == ex.gold),
    }


def _gathered(losses: list[Any], tps: float, mine: Sequence[Encoded], n: int
              ) -> tuple[list[Any], float]:
    """Every rank's losses in item order; tokens/s = all tokens / the slowest rank's time."""
    if not distributed.active():
        return losses, tps
    fed = sum(len(e.input_ids) for e in mine)
    return distributed.gather(losses, n), distributed.combined_rate(fed, tps)


def _gathered_generations(gens: scoring.Generations, n: int) -> scoring.Generations:
    if not distributed.active():
        return gens
    return scoring.Generations(distributed.gather(gens.texts, n),
                               distributed.gather(gens.n_tokens, n),
                               distributed.combined_rate(sum(gens.n_tokens), gens.tokens_per_s))


def _rows(arm: str, t: Target, losses: Sequence[Any], gens: Any, spec: EvalSpec
          ) -> list[dict[str, Any]]:
    refs = [ex.response for ex in t.examples]
    if gens is not None:
        scores = textmetrics.score(t.metrics, gens.texts, refs, stemmer=spec.rouge_stemmer,
                                   bertscore_model=spec.bertscore_model,
                                   bertscore_layers=spec.bertscore_layers)
    elif t.name is None:  # the suite's own rows keep their ROUGE columns, empty
        scores = [dict.fromkeys(M.ROUGE_KEYS) for _ in t.examples]
    else:
        scores = [{} for _ in t.examples]
    return [{
        "arm": arm, "set": t.name, "id": ex.id, "prompt": ex.prompt, "reference": ex.response,
        "prediction": gens.texts[i] if gens else None, "loss": losses[i].loss,
        "nll_sum": losses[i].nll_sum, "n_tokens": losses[i].n_tokens,
        "gen_tokens": gens.n_tokens[i] if gens else None, **scores[i],
    } for i, ex in enumerate(t.examples)]


def _metrics(t: Target, rows: Sequence[dict[str, Any]], generated: bool) -> dict[str, Any]:
    """The metrics the set asked for, each from its rows: perplexity only when named, though
    it costs nothing beyond the loss (every row keeps its ``nll_sum`` / ``n_tokens``)."""
    names = [k for k in M.CORPUS_KEYS if k in t.metrics]
    names += textmetrics.keys(t.metrics) if generated else []
    out: dict[str, Any] = {M.keyed(t.name, k): M.from_rows(k, rows) for k in names}
    if t.name is None and not generated:
        out.update(dict.fromkeys(M.ROUGE_KEYS))
    return out
