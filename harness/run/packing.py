"""Padding-free packed training: an optimizer step's examples as rows of concatenated tokens.

The Trainer's sampler and micro-batches stay what they are unpacked (batch_size examples
each, gradient_accumulation_steps of them per optimizer step), so a step sees the same
examples. The step's examples are then regrouped, in sampler order, into packs of at most
``batch_tokens`` tokens; each pack is one row (transformers' DataCollatorWithFlattening:
positions restart per example, each example's first label is -100). Attention stays within
an example: packed rows run SDPA per example (``ATTENTION``), so a pack of 8 examples of ~100
tokens attends over 8 x 100^2 pairs, not 800^2. The LM head runs only at the positions that
are scored (``logits_to_keep``), and the loss is the Trainer's: summed over tokens and divided
by the step's scored tokens (``num_items_in_batch``), so per-step losses equal unpacked ones.

The prompt tokens a pack's examples all start with (a chat template's system prompt and the
instruction: 26 of the default suite's ~102 tokens per item) run once per pack: the row is
that prefix, then each example's rest, whose positions go on from the prefix and whose
attention sees the prefix and itself (``PREFIX``). Same logits, same loss, same gradients
(the prefix's gradient is the sum over the examples that read it); what changes is that LoRA
dropout draws one mask for the shared tokens instead of one per example. Only unscored
tokens are shared, so every scored target keeps its own example's context.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

from harness.run import encoding

ATTENTION = "harness_packed_sdpa"  # the attention implementation name packed rows run under
PREFIX = "harness_shared_prefix"  # a packed row's kwarg: its first segment is a shared prefix


def plan(examples: Sequence[dict], budget: int) -> list[list[dict]]:
    """Greedy, in order: a pack grows until the next example would pass ``budget`` tokens.
    An example longer than the budget is a pack of its own (nothing is cut)."""
    packs: list[list[dict]] = []
    size = 0
    for ex in examples:
        n = len(ex["input_ids"])
        if not packs or size + n > budget:
            packs.append([])
            size = 0
        packs[-1].append(ex)
        size += n
    return packs


def shared_prefix(examples: Sequence[dict]) -> int:
    """The leading tokens all ``examples`` share, stopping before the first scored target of
    any of them (each example's first own token is predicted from the shared prefix, so it
    must be no target; eval's ``scoring.shared_prefix`` stops at the same place). 0 for
    fewer than 2 examples: nothing to share."""
    if len(examples) < 2:
        return 0
    shared = encoding.common_prefix_len([e["input_ids"] for e in examples])
    return max(0, min(shared, *(encoding.first_target(e["labels"]) - 1 for e in examples)))


def collate(examples: Sequence[dict], share: bool = False) -> dict[str, Any]:
    """One packed row. ``shift_labels`` are the scored targets only and ``logits_to_keep``
    their positions: the LM head and the loss skip the prompt (3 in 4 tokens here).
    ``share``: the examples' shared prefix (``shared_prefix``) runs once, as the row's first
    segment, and the rest of each example continues its positions."""
    from transformers import DataCollatorWithFlattening

    n = shared_prefix(examples) if share else 0
    parts = ([{"input_ids": examples[0]["input_ids"][:n], "labels": [-100] * n}] if n else [])
    parts += [{"input_ids": e["input_ids"][n:], "labels": e["labels"][n:]} for e in examples]
    row = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(parts, return_tensors="pt")
    if n:
        row["position_ids"][0, n:] += n  # each example's own tokens go on from the prefix
        row[PREFIX] = n
    targets = row.pop("labels")[0, 1:]  # position i predicts token i + 1
    keep = (targets != -100).nonzero().squeeze(1)
    scored = targets[keep].unsqueeze(0)
    # labels only switch the model's loss on; shift_labels are what it scores
    return {**row, "labels": scored, "shift_labels": scored, "logits_to_keep": keep}


def shared_tokens(pack: dict[str, Any]) -> int:
    """Tokens of the pack's examples that its shared prefix stood in for: (examples - 1) x
    prefix (the first example's copy is the one computed)."""
    n = int(pack.get(PREFIX, 0))
    examples = len(pack["cu_seq_lens_q"]) - 2  # bounds of prefix + examples, minus 1
    return n * (examples - 1) if n else 0


def step_entries(micro_batches: Sequence[Sequence[dict]], budget: int,
                 keep_micro_batches: bool, share: bool = False) -> list[dict[str, Any]]:
    """The Trainer's ``len(micro_batches)`` entries for one optimizer step, each a list of
    packs. Every pack but the last goes into the first entry, the last pack alone into the
    last entry: a process group syncs gradients at the last entry's one backward (the ones
    before run under no_sync). ``keep_micro_batches`` (several processes: DDP, FSDP and
    DeepSpeed count one backward per micro-batch): each micro-batch is one pack, unbudgeted.
    ``share``: see ``collate``."""
    if keep_micro_batches:
        return [{"packs": [collate(mb, share)]} for mb in micro_batches]
    packs = [collate(p, share)
             for p in plan([e for mb in micro_batches for e in mb], budget)]
    entries: list[dict[str, Any]] = [{"packs": []} for _ in micro_batches]
    entries[0]["packs"] = packs[:-1]
    entries[-1]["packs"].append(packs[-1])
    return entries


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
              **kwargs: Any) -> tuple[Any, None]:
    """SDPA per example of a packed row (``cu_seq_lens_q`` bounds them), causal within each;
    after a shared prefix (``PREFIX``) each example also sees all of the prefix. Anything
    else (eval's padded batches) is plain SDPA with its mask.

    Per layer of the default suite's step (9 segments) this runs forward and backward in 13 ms
    where slicing the row and transformers' SDPA wrapper took 19: ``split``'s backward is one
    cat (a slice's writes its gradient into a zeroed copy of the whole row, 9 per tensor),
    grouped-query heads go to SDPA as they are (``enable_gqa``) instead of as repeated copies,
    and the prefix masks are built once per shape."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    extra = sorted(k for k in ("softcap", "position_bias") if kwargs.get(k) is not None)
    if extra:  # SDPA cannot express them; running without would be another model's attention
        raise ValueError(f"packed training's attention cannot apply {', '.join(extra)}: "
                         "set train.packing = false")
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # bf16 autocast on a CPU: its bf16 SDPA backward took 1.46 ms a call against fp32's
        # 0.52 (the default suite's steps, 2 cores), so attention runs in fp32 there
        with torch.autocast("cpu", enabled=False):
            return attention(module, query.float(), key.float(), value.float(),
                             attention_mask, **kwargs)
    n = int(kwargs.get(PREFIX, 0))
    cuts = bounds.tolist()
    sizes = [e - s for s, e in zip(cuts, cuts[1:])]
    qs, ks, vs = (t.split(sizes, dim=2) for t in (query, key, value))
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention,
                             dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"),
                             enable_gqa=query.shape[1] != key.shape[1])
    outs = []
    for i, (q, k, v) in enumerate(zip(qs, ks, vs)):
        if i == 0 or not n:  # the prefix itself, or an example with nothing shared
            outs.append(sdpa(q, k, v, is_causal=True))
            continue
        outs.append(sdpa(q, torch.cat([ks[0], k], dim=2), torch.cat([vs[0], v], dim=2),
                         attn_mask=_after_prefix(n, sizes[i], query.device)))
    return torch.cat(outs, dim=2).transpose(1, 2), None  # (1, tokens, heads, head_dim)


@functools.lru_cache(maxsize=256)
def _after_prefix(n: int, length: int, device: Any) -> Any:
    """[1, 1, length, n + length] bool: every query sees the ``n`` prefix keys and its own
    example causally (SDPA's is_causal would align the triangle to the top-left corner).
    Cached: every layer of every step asks for the same few shapes; SDPA only reads it."""
    import torch

    mask = torch.ones((length, n + length), dtype=torch.bool, device=device)
    mask[:, n:] = torch.ones((length, length), dtype=torch.bool, device=device).tril()
    return mask[None, None]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # eval's padded batches keep masks


def unpackable(model: Any) -> str | None:
    """Why ``model`` cannot train packed (None: it can). Packed rows need an attention that
    keeps examples apart: SDPA (ours, per example) or FlashAttention (varlen, natively)."""
    base = _base(model)
    impl = getattr(base.config, "_attn_implementation", None)
    if base.config.is_encoder_decoder:
        return "an encoder-decoder model"
    if not getattr(base, "_supports_attention_backend", False):
        return f"{type(base).__name__} does not pass sequence bounds to its attention"
    if impl != "sdpa" and not str(impl).startswith("flash_attention"):
        return f"attention {impl!r} (packing needs sdpa or flash_attention_*)"
    if impl == "sdpa" and getattr(base.config, "attn_logit_softcapping", None):
        return "attention logit soft-capping (SDPA, which packed rows run, cannot apply it)"
    return None


def shares_prefix(model: Any) -> bool:
    """Whether packed rows can run a shared prefix once: only under ``ATTENTION`` (SDPA).
    FlashAttention's varlen kernel knows only disjoint sequences."""
    return _base(model).config._attn_implementation in ("sdpa", ATTENTION)


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Train under ``ATTENTION`` when the model runs SDPA; FlashAttention is left as it is."""
    base = _base(model)
    before = base.config._attn_implementation
    if before != "sdpa":
        yield
        return
    _register()
    base.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        base.set_attn_implementation(before)


def _base(model: Any) -> Any:
    """The transformers model under peft's wrappers."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
