"""Evaluation of one arm: teacher-forced loss, greedy generation, ROUGE, throughput (its
peak memory: harness/memory.py).

Identical for the zero-shot base model and every adapter; the items come in eval order and
results go back in eval order.

Teacher-forced pass: items are sorted by length and batched (padding only up to the
batch's longest item), and the LM head is applied only from the first scored position of the
batch onwards (`logits_to_keep`), so prompt positions never get full-vocabulary logits; the
prompt prefix every item shares (a system prompt) runs once and batches start from its KV cache.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.run import choicetree, decoding, encoding
from harness.run.encoding import IGNORE_INDEX, Encoded, EncodedChoices
from harness.run.modeling import count_params
from harness.suite.config import EvalSpec

Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


@dataclass(frozen=True)
class ItemLoss:
    nll_sum: float
    n_tokens: int

    @property
    def loss(self) -> float:
        return self.nll_sum / self.n_tokens if self.n_tokens else float("nan")


@dataclass(frozen=True)
class Generations:
    texts: list[str]
    n_tokens: list[int]  # generated tokens per item, up to and including EOS
    tokens_per_s: float


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest first (an OOM shows up on the first batch, not the last)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def split_on_oom(fn: Callable[[list[Any]], list[Any]], batch: list[Any]) -> list[Any]:
    """``fn(batch)``; on CUDA out-of-memory, the two halves one after the other (recursively),
    so a too-large eval batch size backs off instead of failing the run."""
    import torch

    try:
        return fn(batch)
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch) // 2
        return split_on_oom(fn, batch[:half]) + split_on_oom(fn, batch[half:])


# ---------------------------------------------------------------- teacher-forced loss


def teacher_forced(
    model: Any, items: Sequence[Encoded], batch_size: int, pad_id: int, advance: Advance = _noop
) -> tuple[list[ItemLoss], float]:
    """Per-item summed NLL over reference tokens, and tokens/s of the pass (padding excluded)."""
    import torch

    out: list[ItemLoss | None] = [None] * len(items)
    fed = 0
    with torch.inference_mode():
        if items:  # warm-up, untimed: see _warm_up_generation
            _batch_nll(model, [min(items, key=lambda e: len(e.input_ids))], pad_id)
        start = time.perf_counter()
        prefix = shared_prefix(model, items)
        for batch in length_sorted_batches([len(e.input_ids) for e in items], batch_size):
            nll = split_on_oom(
                lambda b: _batch_nll(model, [items[i] for i in b], pad_id, prefix), batch)
            for i, loss in zip(batch, nll):
                out[i] = loss
            fed += sum(len(items[i].input_ids) for i in batch)
            advance(len(batch))
    wall = time.perf_counter() - start
    return [x for x in out if x is not None], fed / wall if wall > 0 else 0.0


# Below this many shared tokens the extra forward pass costs about what it saves.
MIN_SHARED_PREFIX = 8
# On a GPU a small model's pass is bound by kernel launches, not FLOPs, and the cache's extra
# ops cost more than the prefix saves: on an H100, 43 shared of 165 tokens made a 135M model's
# eval 26% slower and a 1.1B model's 3% faster. On a CPU the 135M model gained 26%.
MIN_PARAMS_FOR_PREFIX_ON_GPU = 1_000_000_000


class Prefix:
    """Tokens every eval item starts with, run through the model once, and their KV cache.

    The cache is widened to the first batch's rows once and cut back to the prefix after each
    batch (`crop` slices, it does not copy), so a full batch costs no cache copy; a narrower
    one (the last, or an out-of-memory half) repeats the one-row cache for its rows."""

    def __init__(self, length: int, cache: Any) -> None:
        self.length, self._one, self._wide, self._rows = length, cache, None, 0

    def cache_for(self, rows: int) -> Any:
        if self._wide is not None and rows == self._rows:
            _crop_to(self._wide, self.length)
            return self._wide
        cache = self.private_cache(rows)
        if self._wide is None or rows > self._rows:
            self._wide, self._rows = cache, rows
        return cache

    def private_cache(self, rows: int) -> Any:
        """The prefix's cache repeated for ``rows``, the caller's own: greedy decoding drops
        the rows that finished, which would spoil the shared wide copy."""
        cache = copy.deepcopy(self._one)
        cache.batch_repeat_interleave(rows)
        return cache

    def forget_wide(self) -> None:
        """After a failed forward some layers may hold the batch's keys and others not, so one
        crop no longer restores the prefix: the next batch starts from the one-row cache."""
        self._wide, self._rows = None, 0


def shared_prefix(model: Any, items: Sequence[Encoded]) -> Prefix | None:
    """Run the prompt prefix all items share (a chat template's system prompt, a fixed
    instruction) once; every batch then starts from its KV cache instead of recomputing it.
    The default suite's items share 26 of ~102 tokens. The prefix stops before the first
    scored position, whose logits must come from the batch. None when there is too little to
    share or the model keeps no usable cache."""
    if len(items) < 2:
        return None
    return _run_prefix(model, [e.input_ids for e in items], min(e.prompt_len for e in items) - 1)


def _run_prefix(model: Any, seqs: Sequence[Sequence[int]], stop: int) -> Prefix | None:
    """The tokens every sequence starts with, at most ``stop`` of them, run once."""
    import torch

    n = min(encoding.common_prefix_len(seqs), stop)
    if n < MIN_SHARED_PREFIX:
        return None
    device = next(model.parameters()).device
    if device.type == "cuda" and count_params(model)[1] < MIN_PARAMS_FOR_PREFIX_ON_GPU:
        return None
    ids = torch.tensor([list(seqs[0][:n])], device=device)
    try:
        with torch.inference_mode():  # a graph-free cache: batches copy it
            cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
    except (TypeError, ValueError):  # remote-code models without these arguments
        return None
    if cache is None or not all(hasattr(cache, f) for f in ("batch_repeat_interleave", "crop")):
        return None  # legacy tuple caches (old remote code): recompute the prefix per batch
    return Prefix(n, cache)


def _batch_nll(
    model: Any, batch: Sequence[Encoded], pad_id: int, prefix: Prefix | None = None
) -> list[ItemLoss]:
    import torch

    device = next(model.parameters()).device
    width = max(len(e.input_ids) for e in batch)
    # Right padding and no attention mask (as lm-eval): a causal model's real tokens never
    # attend to the pads after them, so their logits are exact, positions stay 0..n-1, and
    # the attention runs its causal fast path. Tensors are built in one go and moved once: on
    # a GPU a small model's pass is bound by per-op overhead, not by FLOPs.
    ids = torch.tensor([[*e.input_ids, *[pad_id] * (width - len(e.input_ids))] for e in batch])
    labels = torch.tensor(
        [[*e.labels, *[IGNORE_INDEX] * (width - len(e.labels))] for e in batch])
    # Logits at position t predict token t+1; the first scored token sits at min(prompt_len).
    first = max(min(e.prompt_len for e in batch) - 1, 0)
    target = labels[:, first + 1:]
    counts = (target != IGNORE_INDEX).sum(1).tolist()
    skip, extra = 0, {"use_cache": False}  # no KV cache to build (960 concatenations a pass)
    if prefix is not None:  # the batch starts after the shared prefix, from its cache
        skip = prefix.length
        extra = {"past_key_values": prefix.cache_for(len(batch)), "use_cache": True}
    keep = torch.arange(first - skip, width - 1 - skip, device=device)
    try:
        logits = _logits(model, ids[:, skip:].to(device), keep, extra)  # [B, width-1-first, V]
    except torch.OutOfMemoryError:
        if prefix is not None:
            prefix.forget_wide()
        raise
    # Rows of [N, V]: over [B, V, T] (class dim not last) CUDA's spatial softmax took 30% of
    # a small model's pass on an H100. All kept rows, unscored ones giving 0: gathering the
    # scored rows first copied them (0.4 s of the default suite's 12 s general set on 2 CPU
    # cores) to spare the few right-pad rows.
    target = target.to(device)
    nll = token_nll(logits.flatten(0, 1).float(), target.flatten()).view(target.shape)
    return [ItemLoss(x, int(c)) for x, c in zip(nll.sum(1).tolist(), counts)]


def token_nll(logits: Any, target: Any) -> Any:
    """-log softmax(logits)[target] per row, 0 where the target is IGNORE_INDEX, computed in
    ``logits`` (overwritten): cross-entropy's log-softmax would be a second [N, V] tensor, 300 MB
    per batch of the default suite's general set (8 x 191 rows x 49,152), which the CPU's
    allocator maps and the kernel zeroes anew for every batch; this way is 1.7x faster at
    that shape and agrees with it to 7.6e-6 nats."""
    import torch

    picked = logits.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    top = logits.amax(1)
    lse = logits.sub_(top[:, None]).exp_().sum(1).log_().add_(top)
    return torch.where(target != IGNORE_INDEX, lse - picked, lse.new_zeros(()))


def _logits(model: Any, ids: Any, keep: Any, extra: dict[str, Any]) -> Any:
    try:
        return model(input_ids=ids, logits_to_keep=keep, **extra).logits
    except TypeError:  # remote-code models without logits_to_keep: full logits, then slice
        return model(input_ids=ids, **extra).logits[:, keep]


# ---------------------------------------------------------------- multiple choice


def choice_loglikelihoods(model: Any, items: Sequence[EncodedChoices], pad_id: int,
                          batch_size: int = 1, advance: Advance = _noop) -> list[list[float]]:
    """Per item, each choice's log-likelihood given the context: the sum of log p over the
    continuation's tokens. Items go in length-sorted batches of ``batch_size``: the batch's
    contexts run once (left-padded), then every choice of every item in one pass from their
    KV cache, an item's choices tree-masked in its own row (``choicetree``) or one row per
    choice (8 items of 4 choices: 2 forward passes, where one pass per choice would run each
    context 4 times)."""
    import torch

    out: list[list[float]] = [[] for _ in items]
    with torch.inference_mode():
        prefix = _context_prefix(model, items)
        for batch in length_sorted_batches([len(e.context_ids) for e in items], batch_size):
            lls = split_on_oom(lambda b: _batch_loglikelihoods(model, [items[i] for i in b],
                                                               pad_id, prefix), batch)
            for i, ll in zip(batch, lls):
                out[i] = ll
            advance(len(batch))
    return out


def _context_prefix(model: Any, items: Sequence[EncodedChoices]) -> Prefix | None:
    """The context tokens every item starts with (an instruction; few-shot examples that are
    the same for every item, as lm-eval's MMLU draws them), run once. It stops before each
    context's last token, whose logits score the choices' first tokens. The default suite's
    `modules` set draws its examples per item: its 60 contexts share 11 of ~124 tokens."""
    if len(items) < 2:
        return None
    return _run_prefix(model, [e.context_ids for e in items],
                       min(len(e.context_ids) for e in items) - 1)


def _batch_loglikelihoods(model: Any, batch: Sequence[EncodedChoices], pad_id: int,
                          prefix: Prefix | None = None) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    skip = prefix.length if prefix is not None else 0
    lens = torch.tensor([len(e.context_ids) for e in batch], device=device)
    width = int(lens.max()) - skip
    # Left padding: every context ends at column width - 1, whose logits predict each
    # continuation's first token; the mask keeps real tokens off the pads, positions start at
    # 0 on each row's first real token. After a shared prefix the pads sit between it and the
    # rest of each context, masked the same way.
    ids = torch.tensor([[*[pad_id] * (skip + width - len(e.context_ids)),
                         *e.context_ids[skip:]] for e in batch], device=device)
    col = torch.arange(skip + width, device=device)[None, :]
    mask = ((col < skip) | (col >= (2 * skip + width - lens)[:, None])).long()
    extra: dict[str, Any] = {}
    if prefix is not None:  # a private copy: the choices' pass below changes it
        extra["past_key_values"] = prefix.private_cache(len(batch))
    try:
        res = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1,
                    position_ids=_positions(mask)[:, skip:], **extra)
    except TypeError:  # remote-code models without these arguments
        return [_whole_loglikelihoods(model, e, pad_id) for e in batch]
    cache = res.past_key_values
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return [_whole_loglikelihoods(model, e, pad_id) for e in batch]  # legacy caches
    first = res.logits[:, -1].float().log_softmax(-1)  # [items, V]
    owner = [b for b, e in enumerate(batch) for _ in e.continuations]  # choice row -> item
    conts = [c for e in batch for c in e.continuations]
    lls = [float(first[b, c[0]]) for b, c in zip(owner, conts)]
    if max(len(c) for c in conts) > 1:  # tokens after the first: from the context's cache
        rest = _rest_loglikelihoods(model, batch, cache, mask, lens, owner, pad_id)
        lls = [ll + r for ll, r in zip(lls, rest)]
    it = iter(lls)
    return [[next(it) for _ in e.continuations] for e in batch]


# Per model: whether its tree-masked pass gave the repeated-cache numbers on its first batch.
_TREE_AGREES: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _rest_loglikelihoods(model: Any, batch: Sequence[EncodedChoices], cache: Any, mask: Any,
                         lens: Any, owner: list[int], pad_id: int) -> list[float]:
    """Each choice's log-likelihood after its first token. One row per item with its choices
    tree-masked (choicetree) where the model honours the mask: checked on its first batch
    against the repeated cache, which is kept for good where they disagree."""
    conts = [e.continuations for e in batch]
    if not choicetree.eligible(model) or _TREE_AGREES.get(model) is False:
        return _repeated_rest(model, cache, mask, lens, owner, conts, pad_id)
    import torch

    width = mask.shape[1]
    try:
        rows = choicetree.rest_logprobs(model, cache, mask, lens, conts, pad_id)
        tree = [_gathered_sum(r, c[1:]) for r, c in zip(rows, [c for i in conts for c in i])]
    except torch.OutOfMemoryError:
        raise
    except (TypeError, ValueError, RuntimeError, IndexError):  # a model that refuses 4D masks
        _TREE_AGREES[model] = False
        _crop_to(cache, width)
        return _repeated_rest(model, cache, mask, lens, owner, conts, pad_id)
    if model not in _TREE_AGREES:
        _crop_to(cache, width)  # back to the contexts alone
        repeated = _repeated_rest(model, cache, mask, lens, owner, conts, pad_id)
        tol = choicetree.AGREE_NATS.get(model.dtype.itemsize, 5e-2)
        _TREE_AGREES[model] = all(abs(a - b) <= tol for a, b in zip(tree, repeated))
        return repeated
    return tree


def _crop_to(cache: Any, width: int) -> None:
    """Cut ``cache`` back to its first ``width`` tokens (slices, no copy)."""
    extra = cache.get_seq_length() - width
    if extra > 0:
        cache.crop(-extra)  # a negative count removes tokens in transformers 4-5


def _repeated_rest(model: Any, cache: Any, mask: Any, lens: Any, owner: list[int],
                   conts: Sequence[Sequence[Sequence[int]]], pad_id: int) -> list[float]:
    """The same as choicetree's pass, one row per choice: the context's cache repeated for
    each, its tokens right-padded (causal attention never reaches the pads)."""
    import torch

    flat = [c for item in conts for c in item]
    more = max(len(c) for c in flat) - 1  # inputs after the context: each c[:-1]
    rows = torch.tensor(owner, device=mask.device)
    cache.batch_select_indices(rows)  # [choices, heads, width, d]: each its item's
    cids = torch.tensor([[*c[:-1], *[pad_id] * (more - len(c) + 1)] for c in flat],
                        device=mask.device)
    full = torch.cat([mask[rows], torch.ones_like(cids)], dim=1)
    pos = lens[rows, None] + torch.arange(more, device=mask.device)[None, :]
    logp = model(input_ids=cids, attention_mask=full, position_ids=pos,
                 past_key_values=cache, use_cache=True
                 ).logits.float().log_softmax(-1)  # [choices, more, V]
    return [_gathered_sum(logp[k], c[1:]) for k, c in enumerate(flat)]


def _positions(mask: Any) -> Any:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _gathered_sum(logp: Any, targets: Sequence[int]) -> float:
    """sum_j logp[j, targets[j]]: the log-likelihood of ``targets`` from rows of logits."""
    import torch

    if not targets:
        return 0.0
    idx = torch.tensor(targets, device=logp.device)
    return float(logp[torch.arange(len(targets), device=logp.device), idx].sum())


def _whole_loglikelihoods(model: Any, item: EncodedChoices, pad_id: int) -> list[float]:
    """Context + each continuation as one right-padded batch (for models whose cache cannot
    be repeated across rows)."""
    import torch

    device = next(model.parameters()).device
    seqs = [[*item.context_ids, *c] for c in item.continuations]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[*s, *[pad_id] * (width - len(s))] for s in seqs], device=device)
    logp = model(input_ids=ids).logits.float().log_softmax(-1)  # [n_choices, width, V]
    start = len(item.context_ids) - 1  # the position predicting the first continuation token
    return [_gathered_sum(logp[k, start:], c) for k, c in enumerate(item.continuations)]


# ---------------------------------------------------------------- generation


def generate(
    model: Any, tokenizer: Any, items: Sequence[Encoded], spec: EvalSpec, advance: Advance = _noop
) -> Generations:
    """Batched, left-padded generation with ``max_new_tokens``; greedy unless the suite samples.
    Greedy runs harness's own loop (harness.run.decoding: shared prefix cached, finished rows
    leave the batch); sampling and beams run `model.generate`."""
    import torch

    texts: list[str] = [""] * len(items)
    counts = [0] * len(items)
    gen_cfg = generation_config(model, tokenizer, spec)
    eos = set(as_list(gen_cfg.eos_token_id))
    with torch.inference_mode():
        run = _generator(model, items, gen_cfg, eos)
        torch.manual_seed(spec.seed)
        start = time.perf_counter()
        for batch in length_sorted_batches([e.prompt_len for e in items], spec.gen_batch_size):
            prompts = [items[i].prompt_ids for i in batch]
            for i, row in zip(batch, split_on_oom(run, prompts)):
                n = _count_until_eos(row, eos)
                counts[i] = n
                texts[i] = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            advance(len(batch))
    wall = time.perf_counter() - start
    return Generations(texts, counts, sum(counts) / wall if wall > 0 else 0.0)


def _generator(model: Any, items: Sequence[Encoded], gen_cfg: Any, eos: set[int]
               ) -> Callable[[list[Any]], list[Any]]:
    """prompts -> new token rows, warmed up (untimed): harness's greedy loop where it applies
    and the model takes its arguments (remote code may not), else `model.generate`."""
    def slow(prompts: list[Any], max_new: int = gen_cfg.max_new_tokens) -> list[Any]:
        cfg = gen_cfg
        if max_new != gen_cfg.max_new_tokens:  # the warm-up's two tokens
            cfg = copy.deepcopy(gen_cfg)
            cfg.max_new_tokens = max_new
        return generate_tokens(model, prompts, cfg).tolist()

    if items and decoding.supported(model, gen_cfg):
        prefix = shared_prefix(model, items)

        def fast(prompts: list[Any], max_new: int = gen_cfg.max_new_tokens) -> list[Any]:
            return decoding.greedy(model, prompts, max_new, eos, gen_cfg.pad_token_id, prefix)
        try:
            _warm_up_generation(fast, items)
            return fast
        except (TypeError, AttributeError, ValueError):
            pass
    _warm_up_generation(slow, items)
    return slow


def _warm_up_generation(run: Callable[..., list[Any]], items: Sequence[Encoded]) -> None:
    """Two tokens for the shortest prompt, untimed. The first calls of a process pay CUDA
    context and kernel selection (on an H100 the zero-shot arm, always first, measured 1,630
    eval tokens/s against the adapter's 8,970 without warm-up), which would bias every
    throughput comparison against the baseline."""
    if items:
        run([min(items, key=lambda e: e.prompt_len).prompt_ids], 2)


def generation_config(model: Any, tokenizer: Any, spec: EvalSpec):
    """Explicit settings: the model's own generation_config (sampling defaults of instruct
    models) never leaks in, so greedy means greedy."""
    from transformers import GenerationConfig

    eos = set(as_list(getattr(model.generation_config, "eos_token_id", None)))
    eos.add(tokenizer.eos_token_id)
    kw: dict[str, Any] = {}
    if spec.do_sample:
        kw = {"temperature": spec.temperature, "top_p": spec.top_p}
    return GenerationConfig(
        max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample, num_beams=spec.num_beams,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(e for e in eos if e is not None),
        **kw,
    )


def generate_tokens(model: Any, prompts: Sequence[Sequence[int]], gen_cfg: Any,
                    tokenizer: Any = None) -> Any:
    """The new tokens [B, new] of one left-padded batch; ``tokenizer`` lets ``gen_cfg``'s
    stop_strings be matched."""
    import torch

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), gen_cfg.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding: every row's next token is at `width`
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    extra = {"tokenizer": tokenizer} if tokenizer is not None else {}
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                         generation_config=gen_cfg, **extra)
    return out[:, width:]  # [B, new]


def _count_until_eos(row: Sequence[int], eos: set[int]) -> int:
    for i, tok in enumerate(row):
        if tok in eos:
            return i + 1
    return len(row)


def as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
