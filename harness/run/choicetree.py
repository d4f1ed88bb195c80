"""Every choice of an item scored in one row after its context: tree-masked continuations.

After the context pass, each item's choices need their tokens after the first (the context's
last logits score the first). Repeating the context's KV cache for every choice copies it
(4 choices: 4 rows of the whole context, in every layer, then a concatenation per layer); here
the choices follow each other in the item's own row, each at the positions it would have
alone, and a 4D mask lets a choice's token see the context and its own earlier tokens only.

Only where the mask is honoured as given: SDPA through transformers' attention interface, no
sliding window (a custom 4D mask replaces the window), no soft-capping (``eligible``); and
``scoring`` checks the numbers once per model against the repeated cache before trusting them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Two correct float32 computations of a choice's log-likelihood differ by summation order only
# (~1e-5 nats on SmolLM2-135M); a choice that saw another choice's tokens moves by far more.
AGREE_NATS = {4: 1e-3, 2: 5e-2}  # by the model's float width in bytes (bf16/fp16: 2)


def eligible(model: Any) -> bool:
    """Whether ``model``'s attention applies a custom 4D mask exactly as given."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if not getattr(model, "_supports_attention_backend", False):
        return False  # its own attention code: it may rebuild the mask from a 2D one
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False  # FlashAttention takes no 4D mask; eager adds masks as floats
    if getattr(config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return not getattr(config, "sliding_window", None)


def rest_logprobs(model: Any, cache: Any, context_mask: Any, lens: Any,
                  conts: Sequence[Sequence[Sequence[int]]], pad_id: int) -> list[Any]:
    """Per choice (items in order, choices in order), the log-probability rows of its tokens
    after the first: row j predicts c[j + 1] given the context and c[:j + 1] ([len(c) - 1, V]),
    from ``cache`` (the items' contexts, left-padded to ``context_mask``'s width; one row per
    item). The cache grows by the tree tokens."""
    import torch

    device = context_mask.device
    rows = [_segments(c) for c in conts]
    width = max(len(tokens) for tokens, _ in rows)
    ids = torch.tensor([[*t, *[pad_id] * (width - len(t))] for t, _ in rows], device=device)
    seg = torch.tensor([[*s, *[-1] * (width - len(s))] for _, s in rows], device=device)
    offset = torch.tensor([[*_offsets(s), *[0] * (width - len(s))] for _, s in rows],
                          device=device)
    logp = model(input_ids=ids, attention_mask=_mask(context_mask, seg),
                 position_ids=lens[:, None] + offset, past_key_values=cache, use_cache=True
                 ).logits.float().log_softmax(-1)
    out: list[Any] = []
    for b, item in enumerate(conts):
        at = 0
        for c in item:
            out.append(logp[b, at:at + len(c) - 1])
            at += len(c) - 1
    return out


def _segments(choices: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """The row's tokens (each choice's c[:-1], one after another) and each token's choice."""
    tokens: list[int] = []
    seg: list[int] = []
    for k, c in enumerate(choices):
        tokens += c[:-1]
        seg += [k] * (len(c) - 1)
    return tokens, seg


def _offsets(seg: Sequence[int]) -> list[int]:
    """Position of each token within its choice: 0, 1, ... restarting per choice."""
    out: list[int] = []
    for i, k in enumerate(seg):
        out.append(out[-1] + 1 if i and seg[i - 1] == k else 0)
    return out


def _mask(context_mask: Any, seg: Any) -> Any:
    """[items, 1, tree, context + tree], True where a query attends: the item's real context
    tokens, and the tokens of its own choice up to itself (a pad query sees the context and
    itself: no softmax row is empty)."""
    import torch

    n = seg.shape[1]
    causal = torch.ones((n, n), dtype=torch.bool, device=seg.device).tril()
    same = (seg[:, :, None] == seg[:, None, :]) & causal & (seg[:, :, None] >= 0)
    pad_self = (seg < 0)[:, :, None] & torch.eye(n, dtype=torch.bool, device=seg.device)
    context = context_mask.bool()[:, None, :].expand(-1, n, -1)
    return torch.cat([context, same | pad_self], dim=-1)[:, None]
