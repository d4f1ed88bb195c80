"""Which keys each kind of eval set reads ([eval.sets.NAME] ``task``): a generate set, a
multiple-choice set, an lm-evaluation-harness task. A key another kind reads is refused, not
silently ignored. The schema (``config.EvalSetSpec``) calls ``check`` after validating each set.
"""

from __future__ import annotations

from typing import Any

from harness import metrics as M

# simple_evaluate's default few-shot seed (lm_eval.evaluator, fewshot_random_seed): with it,
# a task's few-shot contexts are the ones lm-eval itself builds.
LM_EVAL_FEWSHOT_SEED = 1234
# The keys an lm_eval_task set reads (max_length: the model's context, as lm-eval's HFLM
# uses, unless set); and those only it reads.
LM_EVAL_SET_KEYS = frozenset({"task", "lm_eval_task", "num_fewshot", "limit", "fewshot_seed",
                              "filter", "max_length", "forgetting", "metrics"})
LM_EVAL_KEYS = ("lm_eval_task", "limit", "fewshot_seed", "filter")
SET_MAX_LENGTH = 512  # tokens per item of a set read from a file

# The variables a multiple-choice row gives its templates, each from the column of its own
# name unless ``fields`` maps it to another.
CHOICE_FIELDS = ("question", "choices", "answer")


def generate_set_metrics(metrics: list[str]) -> list[str]:
    """A generate set's (the suite's own [eval] or a set's) metrics: acc / acc_norm pick one
    of several choices by log-likelihood, so they need a multiple-choice set."""
    picked = [m for m in metrics if m in M.MULTIPLE_CHOICE_CHOICES]
    if picked:
        raise ValueError(f"{', '.join(map(repr, picked))}: scored on a multiple-choice set only "
                         '(an [eval.sets.<name>] with task = "multiple_choice")')
    return metrics


def check(spec: Any) -> None:
    """``spec``: a validated config.EvalSetSpec. Raises ValueError naming the key."""
    if spec.lm_eval:
        _check_lm_eval_keys(spec)
        return
    if (spec.path is None) == (spec.dataset is None):
        raise ValueError("set exactly one of path or dataset")
    if spec.max_length is None:
        raise ValueError("max_length: a number of tokens (only an lm_eval_task set leaves "
                         "it to the model)")
    for key in LM_EVAL_KEYS:
        if key in changed(spec):
            raise ValueError(f"{key}: only an lm_eval_task set reads it (this set has "
                             f"task = {spec.task!r})")
    if spec.multiple_choice:
        _check_choice_keys(spec)
    else:
        _check_generate_keys(spec)


def changed(spec: Any) -> set[str]:
    """The keys whose value is not the default: a suite re-read from its dump (sweep cells,
    the record) lists every key, so being given is not being set."""
    fields = type(spec).model_fields
    return {k for k in spec.model_fields_set
            if getattr(spec, k) != fields[k].get_default(call_default_factory=True)}


def _check_choice_keys(spec: Any) -> None:
    if spec.response_template is not None:
        raise ValueError("response_template: a multiple_choice set scores each choice "
                         "(choice_template), not a response; remove it")
    if not spec.prompt_template:
        raise ValueError("prompt_template: a multiple_choice set needs the prompt its "
                         "choices continue")
    wrong = [m for m in spec.metrics if m not in M.MULTIPLE_CHOICE_CHOICES]
    if wrong:
        raise ValueError(f"metrics: {wrong} cannot score a multiple_choice set; it scores "
                         f"{list(M.MULTIPLE_CHOICE_CHOICES)}")


def _check_lm_eval_keys(spec: Any) -> None:
    """The task defines its data, prompts and metrics: keys that would say otherwise are
    refused rather than silently ignored."""
    if spec.lm_eval_task is None:
        raise ValueError('task = "lm_eval" needs lm_eval_task (a task name or YAML file)')
    if spec.metrics:
        raise ValueError("metrics: an lm_eval_task set scores the task's own metrics")
    theirs = sorted(k for k in changed(spec) if k not in LM_EVAL_SET_KEYS)
    if theirs:
        raise ValueError(f"{theirs[0]}: an lm_eval_task set takes its data, prompts and "
                         f"metrics from the task; it reads only "
                         f"{', '.join(sorted(LM_EVAL_SET_KEYS - {'task', 'metrics'}))}")


def _check_generate_keys(spec: Any) -> None:
    if spec.response_template is None:
        raise ValueError("response_template: required key is missing")
    for key in ("choice_template", "num_fewshot"):
        if getattr(spec, key) is not None:
            raise ValueError(f"{key}: only a task = \"multiple_choice\" set reads it")
