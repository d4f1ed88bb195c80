"""Examples -> token ids with the prompt masked out of the labels. No torch import.

Prompt and response are tokenized separately and concatenated, so the response tokens the model
is scored and trained on are exactly the ones it must generate after the prompt. Trailing
spaces of a plain-text prompt move to the response (as lm-evaluation-harness does with
context/continuation) so "Summary: " + "The cat" is tokenized as "Summary:" + " The cat".

Truncation keeps the response whole where possible and cuts the prompt on `truncation_side`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.suite.config import DataSpec
from harness.suite.prompts import Example

IGNORE_INDEX = -100  # label value the loss skips (torch CrossEntropyLoss default)


@dataclass(frozen=True)
class Encoded:
    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_len: int
    full_len: int  # before truncation
    truncated: bool

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.input_ids[: self.prompt_len]

    @property
    def n_response_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


def prompt_text(ex: Example, tokenizer: Any, spec: DataSpec) -> str:
    """The exact text the model sees before its answer (chat template applied when asked)."""
    if not (spec.chat_template or ex.messages):
        return ex.prompt
    msgs = [{"role": r, "content": t} for r, t in ex.messages]
    if not ex.messages:
        if spec.system_prompt:
            msgs.append({"role": "system", "content": spec.system_prompt})
        msgs.append({"role": "user", "content": ex.prompt})
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def encode(ex: Example, tokenizer: Any, spec: DataSpec) -> Encoded:
    text = prompt_text(ex, tokenizer, spec)
    response = ex.response
    chat = spec.chat_template or bool(ex.messages)
    if not chat:
        stripped = text.rstrip(" ")
        response, text = text[len(stripped):] + response, stripped
    # Chat templates write BOS themselves; plain prompts get the tokenizer's specials (BOS).
    p = tokenizer(text, add_special_tokens=not chat)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full = len(p) + len(r)
    p, r = _truncate(p, r, spec.max_length, spec.truncation_side)
    return Encoded(
        id=ex.id, input_ids=tuple(p + r), labels=tuple([IGNORE_INDEX] * len(p) + r),
        prompt_len=len(p), full_len=full, truncated=full > spec.max_length,
    )


@dataclass(frozen=True)
class EncodedChoices:
    """A multiple-choice item: its context's tokens (run once) and each choice's continuation
    tokens (scored after it)."""

    id: str
    context_ids: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    truncated: bool


def encode_choices(ex: Example, tokenizer: Any, spec: DataSpec) -> EncodedChoices:
    """Context and continuations split as lm-evaluation-harness's ``_encode_pair`` does: the
    context's trailing spaces move to the continuation, ``context + continuation`` is encoded
    whole and the continuation is what follows the context's own encoding, so a token that
    spans the boundary is scored as the model would read the whole text. A context that would
    not leave room for the longest choice in ``max_length`` loses its start (the earliest
    few-shot examples), never the choices."""
    text = prompt_text(ex, tokenizer, spec)
    chat = spec.chat_template or bool(ex.messages)
    context, spaces = _split_spaces(text)
    ctx = tokenizer(context, add_special_tokens=not chat)["input_ids"]
    conts = []
    for cont in ex.continuations:
        whole = tokenizer(context + spaces + cont, add_special_tokens=not chat)["input_ids"]
        conts.append(tuple(whole[len(ctx):]))
    if not ctx:  # an empty context and no BOS: condition on EOS, as lm-eval does
        ctx = [tokenizer.eos_token_id]
    room = max(spec.max_length - max(len(c) for c in conts), 1)
    return EncodedChoices(ex.id, tuple(ctx[-room:]), tuple(conts), len(ctx) > room)


def _split_spaces(text: str) -> tuple[str, str]:
    stripped = text.rstrip()
    return stripped, text[len(stripped):]


def _truncate(p: list[int], r: list[int], max_len: int, side: str) -> tuple[list[int], list[int]]:
    if len(p) + len(r) <= max_len:
        return p, r
    r = r[: max_len - 1]  # keep at least one prompt token to condition on
    budget = max_len - len(r)
    p = p[-budget:] if side == "left" else p[:budget]
    return p, r


def encode_all(
    examples: Sequence[Example], tokenizer: Any, spec: DataSpec, *, drop_longer: bool = False
) -> tuple[list[Encoded], dict[str, Any]]:
    """Encode a split; with ``drop_longer`` examples over max_length are dropped, not cut."""
    enc = [encode(ex, tokenizer, spec) for ex in examples]
    stats = length_stats(enc)
    if drop_longer:
        enc = [e for e in enc if not e.truncated]
        stats["dropped_too_long"] = stats["n"] - len(enc)
    return enc, stats


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of ``seqs`` share: a chat template's system prompt and a
    fixed instruction are computed once for all of them (eval batches, packed training)."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def first_target(labels: Sequence[int]) -> int:
    """Index of the first scored label (``len(labels)`` when none is): the prompt's length."""
    return next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))


def length_stats(enc: Sequence[Encoded]) -> dict[str, Any]:
    """Token lengths before truncation, as the phi-2 XSum report gave them (mean, median,
    truncated)."""
    if not enc:
        return {"n": 0}
    full = [e.full_len for e in enc]
    return {
        "n": len(enc),
        "mean": round(statistics.fmean(full), 1),
        "median": statistics.median(full),
        "max": max(full),
        "mean_response": round(statistics.fmean(e.n_response_tokens for e in enc), 1),
        "share_truncated": round(sum(e.truncated for e in enc) / len(enc), 4),
    }
