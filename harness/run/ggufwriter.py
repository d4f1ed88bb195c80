"""A transformers causal LM as a GGUF file, written with the ``gguf`` package (llama.cpp's own
Python writer): llama.cpp's tensor names (``gguf.get_tensor_name_map``), the q / k
projections permuted as llama.cpp's converter permutes them (transformers' GGUF loader undoes
it), the model's shape, the byte-level BPE tokenizer (vocabulary, merges, special ids) and the
chat template in the metadata, and the 2-D weights in the format's type: F16, or Q8_0 / Q4_0
blocks of 32 values quantized by ``gguf.quants`` (a row whose length is not a multiple of 32
stays F16, as llama.cpp falls back). Norms and other 1-D tensors stay F32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import InputError

# model_type -> what the writer maps: llama.cpp's LLAMA architecture (Llama, SmolLM, TinyLlama;
# its q / k permutation). Others would need their own tensor maps: refused at validate.
ARCHITECTURES = ("llama",)
FORMATS = ("gguf-f16", "gguf-q8_0", "gguf-q4_0")
BLOCK = 32  # values per Q8_0 / Q4_0 block


def write(model: Any, tok: Any, path: Path, fmt: str) -> dict[str, Any]:
    """Write ``model`` (float weights) and ``tok`` to ``path``; returns what the record keeps
    (quantization type, tensors left in F16 for their row length)."""
    import gguf

    cfg = model.config
    if cfg.model_type not in ARCHITECTURES:
        raise InputError(f"{fmt}: the GGUF writer maps {', '.join(ARCHITECTURES)} models, not "
                         f"{cfg.model_type}")
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _shape(writer, cfg)
    _tokenizer(writer, tok, fmt)
    fallback = _tensors(writer, model, gguf.get_tensor_name_map(arch, cfg.num_hidden_layers),
                        _qtype(fmt))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"gguf_type": fmt.removeprefix("gguf-").upper(), "f16_fallback_tensors": fallback}


def _qtype(fmt: str) -> Any:
    from gguf import GGMLQuantizationType as T

    return {"gguf-f16": T.F16, "gguf-q8_0": T.Q8_0, "gguf-q4_0": T.Q4_0}[fmt]


def _shape(writer: Any, cfg: Any) -> None:
    heads = cfg.num_attention_heads
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_vocab_size(cfg.vocab_size)


def _rope_theta(cfg: Any) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _tokenizer(writer: Any, tok: Any, fmt: str) -> None:
    """A byte-level BPE tokenizer as llama.cpp's "gpt2" model: tokens in id order, their
    types (special ones CONTROL), merges and special ids; the chat template."""
    import gguf

    spec = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(f"{fmt}: the GGUF writer writes byte-level BPE tokenizers (GPT-2, "
                         f"Llama 3, SmolLM), not {model.get('type') or type(tok).__name__}")
    vocab = tok.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    special = set(tok.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                             for m in model.get("merges") or []])
    for add, token_id in ((writer.add_bos_token_id, tok.bos_token_id),
                          (writer.add_eos_token_id, tok.eos_token_id),
                          (writer.add_pad_token_id, tok.pad_token_id),
                          (writer.add_unk_token_id, tok.unk_token_id)):
        if token_id is not None:
            add(token_id)
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def _tensors(writer: Any, model: Any, names: Any, qtype: Any) -> int:
    """Every weight under its llama.cpp name; returns how many stayed F16 for their rows."""
    import gguf
    import numpy as np

    cfg, fallback = model.config, 0
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":  # llama.cpp reads a missing output as tied
            continue
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise InputError(f"GGUF: no llama.cpp name for tensor {name}")
        if data.ndim != 2:
            writer.add_tensor(new, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16 or data.shape[-1] % BLOCK:
            fallback += qtype != gguf.GGMLQuantizationType.F16
            writer.add_tensor(new, data.astype(np.float16))
        else:
            packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(new, packed, raw_shape=packed.shape, raw_dtype=qtype)
    return fallback


def _permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's order of the rotary halves (its converter's ``permute``)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
