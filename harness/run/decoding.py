"""Greedy decoding of one batch without `model.generate`'s general machinery, for the one
case every eval set uses: greedy, one beam, stop at EOS or after ``max_new`` tokens.

What it does that `generate` does not:
- the prompt prefix all items share (a chat template's system prompt: 26 of the default
  suite's ~74 prompt tokens) comes from a KV cache computed once (``scoring.Prefix``), so the
  prefill runs only each row's own suffix;
- a row that produced EOS leaves the batch (its KV rows are dropped), so the later steps of a
  batch whose answers differ in length run on the rows still writing;
- nothing per step but the forward, an argmax and one host transfer of the [B] new tokens;
- each layer's keys and values go into a buffer sized for the whole answer (``reserve``)
  instead of being copied into a new tensor one token longer at every step.
The text is the same greedy text (tested against `generate` token for token); sampling and
beam search stay with `generate`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


def supported(model: Any, gen_cfg: Any) -> bool:
    """Greedy, one beam, no stop strings, a decoder-only model. (Whether its forward takes
    the loop's arguments is found by the warm-up; a cache that cannot drop rows keeps them.)"""
    return (not gen_cfg.do_sample and (gen_cfg.num_beams or 1) == 1
            and not getattr(gen_cfg, "stop_strings", None)
            and getattr(model.config, "is_encoder_decoder", False) is False)


def greedy(model: Any, prompts: Sequence[Sequence[int]], max_new: int, eos: set[int],
           pad_id: int, prefix: Any = None) -> list[list[int]]:
    """The new tokens of each prompt, up to and including its EOS (at most ``max_new``).
    ``prefix``: a ``scoring.Prefix`` every prompt starts with, or None."""
    import torch

    device = next(model.parameters()).device
    skip = prefix.length if prefix is not None else 0
    ids, mask, pos = _left_padded([p[skip:] for p in prompts], skip, pad_id)
    # no prefix: the model makes the cache its architecture needs (sliding-window layers)
    cache = prefix.private_cache(len(prompts)) if prefix is not None else None
    out: list[list[int]] = [[] for _ in prompts]
    alive = list(range(len(prompts)))
    step = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                 position_ids=pos.to(device), past_key_values=cache, use_cache=True,
                 logits_to_keep=1)
    pos, mask = pos[:, -1:] + 1, mask.to(device)
    reserve(step.past_key_values, max_new)
    for _ in range(max_new):
        nxt = step.logits[:, -1].argmax(-1)  # [B']
        tokens = nxt.tolist()  # the loop's one host transfer per step
        for row, tok in zip(alive, tokens):
            out[row].append(tok)
        keep = [k for k, tok in enumerate(tokens) if tok not in eos]
        if not keep or len(out[alive[0]]) == max_new:
            break
        if len(keep) < len(alive) and hasattr(step.past_key_values, "batch_select_indices"):
            index = torch.tensor(keep, device=device)
            step.past_key_values.batch_select_indices(index)
            nxt, mask, pos = nxt[index], mask[index], pos[index.cpu()]
            alive = [alive[k] for k in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        step = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos.to(device),
                     past_key_values=step.past_key_values, use_cache=True)
        pos = pos + 1
    return out


def reserve(cache: Any, tokens: int) -> None:
    """Room for ``tokens`` more positions in each plain (``DynamicLayer``) layer of ``cache``:
    later tokens are written into the buffer and the layer's keys and values are views of
    its filled part. At batch 32 of the default suite, growing the cache by ``cat`` copied
    ~5 MB per layer and step (200 us) where the write costs 7 us; SDPA reads the views as
    fast as contiguous tensors. Other layer types (sliding windows, quantized) are left."""
    from transformers.cache_utils import DynamicLayer

    layers: list[Any] = list(getattr(cache, "layers", []))
    for layer in layers:
        plain = type(layer) is DynamicLayer  # subclasses (sliding windows) manage their own
        if plain and layer.is_initialized and layer.keys.dim() == 4:
            layer.__class__ = _reserved_class()
            layer.grow(tokens)


@functools.cache
def _reserved_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class Reserved(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are the filled part of larger buffers."""

        keys: Any
        values: Any

        def grow(self, tokens: int) -> None:
            n = self.keys.shape[-2]
            self._k = self._widened(self.keys, n + tokens)
            self._v = self._widened(self.values, n + tokens)
            self._views(n)

        @staticmethod
        def _widened(t: Any, capacity: int) -> Any:
            buf = t.new_empty((*t.shape[:2], capacity, t.shape[-1]))
            buf[:, :, :t.shape[-2]] = t
            return buf

        def _views(self, filled: int) -> None:
            self.keys, self.values = self._k[:, :, :filled], self._v[:, :, :filled]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any):
            n, m = self.keys.shape[-2], key_states.shape[-2]  # filled, new
            if n + m > self._k.shape[-2]:  # more than reserved: as much again
                self.grow(self._k.shape[-2] + m)
            self._k[:, :, n:n + m] = key_states
            self._v[:, :, n:n + m] = value_states
            self._views(n + m)
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            n = self.keys.shape[-2]
            self._k, self._v = self._k[indices, ...], self._v[indices, ...]
            self._views(n)

        def reset(self) -> None:  # back to a plain layer that grows by cat
            plain: Any = self
            plain.__class__ = DynamicLayer
            plain.reset()

    return Reserved


def _left_padded(suffixes: Sequence[Sequence[int]], skip: int, pad_id: int):
    """(ids [B, W], attention mask [B, skip + W], position ids [B, W]) of left-padded
    suffixes after a ``skip``-token prefix every row shares: the pads sit between prefix and
    suffix, masked, and each row's positions run on from the prefix without gaps."""
    import torch

    width = max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(suffixes), skip + width), dtype=torch.long)
    mask[:, :skip] = 1
    for row, s in enumerate(suffixes):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, skip + width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
    return ids, mask, pos
