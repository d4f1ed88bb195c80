"""An arm's answers to an lm-evaluation-harness task's requests (harness.suite.lmtasks):
what lm-eval's ``HFLM`` computes, on harness's loaded model.

Tokenization, truncation to the model's context, rolling windows, stop sequences and the
clean-up of generated text are lm-eval's (its own helpers where it has them), so answers are
equal to HFLM's; the forward passes are harness's. A multiple-choice document runs its context
once and scores every choice from its KV cache (scoring.choice_loglikelihoods), where HFLM
runs context + choice once per choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from harness.run import scoring
from harness.run.encoding import EncodedChoices
from harness.suite.lmtasks import Doc

Advance = Callable[[int], None]
DEFAULT_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks: a task that does not say generates this many


def _noop(_: int) -> None:
    return None


class Tokens:
    """lm-eval HFLM's tokenization of requests, with the model's context length."""

    def __init__(self, tok: Any, model: Any, max_length: int | None) -> None:
        from lm_eval.models.utils import resolve_max_length

        self.tok = tok
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.bos_text = tok.decode(self.prefix_id)
        self.max_length = max_length or resolve_max_length(model.config, tok, default=2048)

    def encode(self, text: str) -> list[int]:
        """HFLM.tok_encode: the tokenizer's special tokens, unless the text has its BOS."""
        kw = {"add_special_tokens": False} if text.startswith(self.bos_text) else {}
        return list(self.tok.encode(text, **kw))

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """HFLM's context / continuation split (``_encode_pair``; an empty context is the
        prefix token): trailing spaces move to the continuation, the whole text is encoded
        and the continuation is what follows the context's own encoding."""
        if not context:
            return [self.prefix_id], self.encode(continuation)
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx):]


def answer(model: Any, tok: Any, docs: Sequence[Doc], output_type: str, *, batch_size: int,
           gen_batch_size: int, max_length: int | None, seed: int,
           advance: Advance = _noop) -> list[list[Any]]:
    """``out[i][j]``: the answer to request j of document i, in lm-eval's response shape:
    (log-likelihood, is_greedy) for loglikelihood, a float for loglikelihood_rolling, the text
    for generate_until."""
    tokens = Tokens(tok, model, max_length)
    out: list[list[Any]] = [[None] * len(d.requests) for d in docs]
    where = {kind: [(i, j) for i, d in enumerate(docs) for j, r in enumerate(d.requests)
                    if r.kind == kind]
             for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until")}
    args = [[r.args for r in d.requests] for d in docs]
    if where["loglikelihood"]:
        fn = _choices if output_type == "multiple_choice" else _loglikelihoods
        _fill(out, where["loglikelihood"],
              fn(model, tokens, [args[i][j] for i, j in where["loglikelihood"]], batch_size))
    if where["loglikelihood_rolling"]:
        _fill(out, where["loglikelihood_rolling"],
              _rolling(model, tokens, [args[i][j][0] for i, j in where["loglikelihood_rolling"]],
                       batch_size))
    if where["generate_until"]:
        _fill(out, where["generate_until"],
              _generations(model, tokens, [args[i][j] for i, j in where["generate_until"]],
                           gen_batch_size, seed))
    advance(len(docs))
    return out


def _fill(out: list[list[Any]], at: Sequence[tuple[int, int]], values: Sequence[Any]) -> None:
    for (i, j), v in zip(at, values):
        out[i][j] = v


# ---------------------------------------------------------------- log-likelihoods


def _choices(model: Any, tokens: Tokens, pairs: Sequence[tuple[str, str]], batch_size: int
             ) -> list[tuple[float, bool]]:
    """Multiple choice: the requests that share a context become one item whose context runs
    once. ``is_greedy`` is False: lm-eval's multiple_choice scoring reads only the
    log-likelihoods."""
    groups: dict[str, list[int]] = {}
    for k, (context, _) in enumerate(pairs):
        groups.setdefault(context, []).append(k)
    items = []
    for n, (context, members) in enumerate(groups.items()):
        split = [tokens.pair(context, pairs[k][1]) for k in members]
        conts = tuple(tuple(c) for _, c in split)
        # HFLM keeps the last max_length + 1 tokens of context + continuation as input.
        room = max(tokens.max_length + 1 - max(len(c) for c in conts), 1)
        items.append(EncodedChoices(str(n), tuple(split[0][0][-room:]), conts,
                                    len(split[0][0]) > room))
    lls = scoring.choice_loglikelihoods(model, items, _pad(tokens.tok), batch_size)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for members, item_lls in zip(groups.values(), lls):
        for k, ll in zip(members, item_lls):
            out[k] = (ll, False)
    return out


def _loglikelihoods(model: Any, tokens: Tokens, pairs: Sequence[tuple[str, str]],
                    batch_size: int) -> list[tuple[float, bool]]:
    return scored_tokens(model, [tokens.pair(c, x) for c, x in pairs], tokens.max_length,
                         _pad(tokens.tok), batch_size)


def _rolling(model: Any, tokens: Tokens, texts: Sequence[str], batch_size: int) -> list[float]:
    """HFLM.loglikelihood_rolling: the text cut into disjoint windows of the model's context
    (the first conditioned on the prefix token), each window's tokens scored, summed."""
    from lm_eval import utils

    windows: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for n, text in enumerate(texts):
        for w in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=tokens.encode(text), prefix_token=tokens.prefix_id,
                max_seq_len=tokens.max_length, context_len=1)):
            windows.append((list(w[0]), list(w[1])))
            owner.append(n)
    scored = scored_tokens(model, windows, tokens.max_length, _pad(tokens.tok), batch_size)
    out = [0.0] * len(texts)
    for n, (ll, _) in zip(owner, scored):
        out[n] += ll
    return out


def scored_tokens(model: Any, pairs: Sequence[tuple[list[int], list[int]]], max_length: int,
                  pad_id: int, batch_size: int) -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation, whether greedy decoding would produce it) per
    (context, continuation) token pair, as HFLM's ``_loglikelihood_tokens``: the input is the
    last max_length + 1 tokens of context + continuation, less the last; length-sorted,
    right-padded batches."""
    import torch

    inputs = [(list(c) + list(x))[-(max_length + 1):][:-1] for c, x in pairs]
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in scoring.length_sorted_batches([len(i) for i in inputs], batch_size):
            width = max(len(inputs[k]) for k in batch)
            ids = torch.tensor([inputs[k] + [pad_id] * (width - len(inputs[k])) for k in batch],
                               device=device)
            mask = torch.tensor([[1] * len(inputs[k]) + [0] * (width - len(inputs[k]))
                                 for k in batch], device=device)
            logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
            for row, k in enumerate(batch):
                cont = list(pairs[k][1])
                end = len(inputs[k])
                part = logp[row, end - len(cont):end]
                target = torch.tensor(cont, device=device)
                out[k] = (float(part.gather(-1, target[:, None]).sum()),
                          bool((part.argmax(-1) == target).all()))
    return out


def _pad(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


# ---------------------------------------------------------------- generation


def _generations(model: Any, tokens: Tokens, requests: Sequence[tuple[str, dict[str, Any]]],
                 batch_size: int, seed: int) -> list[str]:
    """HFLM.generate_until: requests grouped by their generation settings; the context keeps
    its last max_length - max_gen_toks tokens; generation stops at the task's ``until``
    strings or EOS, and lm-eval's own clean-up cuts the text at the first stop sequence."""
    groups: dict[str, list[int]] = {}
    for k, (_, kwargs) in enumerate(requests):
        groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(k)
    out = [""] * len(requests)
    for members in groups.values():
        texts = _generate_group(model, tokens, [requests[k][0] for k in members],
                                dict(requests[members[0]][1]), batch_size, seed)
        for k, text in zip(members, texts):
            out[k] = text
    return out


def _generate_group(model: Any, tokens: Tokens, contexts: Sequence[str],
                    gen_kwargs: dict[str, Any], batch_size: int, seed: int) -> list[str]:
    import torch
    from lm_eval.models.utils import (
        handle_stop_sequences,
        normalize_gen_kwargs,
        postprocess_generated_text,
    )

    tok = tokens.tok
    kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
    until = handle_stop_sequences(kwargs.pop("until", None),
                                  eos=tok.decode(tok.eos_token_id, skip_special_tokens=False))
    max_gen = int(kwargs.pop("max_gen_toks"))
    keep = tokens.max_length - max_gen
    prompts = [list(tok(c)["input_ids"])[-keep:] for c in contexts]
    cfg = _generation_config(model, tok, max_gen, until, kwargs)
    texts = [""] * len(contexts)
    torch.manual_seed(seed)
    with torch.inference_mode():
        for batch in scoring.length_sorted_batches([len(p) for p in prompts], batch_size):
            new = scoring.generate_tokens(model, [prompts[k] for k in batch], cfg, tokenizer=tok)
            for k, row in zip(batch, new.tolist()):
                texts[k] = postprocess_generated_text(
                    generation=tok.decode(row, skip_special_tokens=True), stop=until,
                    think_end_token=None)
    return texts


def _generation_config(model: Any, tok: Any, max_gen: int, until: list[str],
                       kwargs: dict[str, Any]) -> Any:
    """Greedy unless the task samples (lm-eval: temperature 0 means greedy); the task's
    ``until`` strings stop a row as soon as it has written one."""
    from transformers import GenerationConfig

    eos = {tok.eos_token_id, *scoring.as_list(getattr(model.generation_config, "eos_token_id",
                                                       None))}
    sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 1.0)) > 0
    extra = {k: kwargs[k] for k in ("temperature", "top_p", "top_k") if sample and k in kwargs}
    return GenerationConfig(max_new_tokens=max_gen, do_sample=sample, num_beams=1,
                            pad_token_id=_pad(tok), eos_token_id=sorted(e for e in eos
                                                                         if e is not None),
                            stop_strings=[u for u in until if u] or None, **extra)
