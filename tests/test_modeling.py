"""Model loading and LoRA attachment: QLoRA's frozen weights keep their dtype unless fp16 compute
needs peft's fp32 upcast; only the adapter trains. bitsandbytes' 4-bit layers run on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.run import adapterload, modeling
from harness.suite import suitefile

from .conftest import ASSETS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="QLoRA needs bitsandbytes: pip install -e '.[quant]'")


def _qlora_suite(tmp: Path, model_dir: Path, compute: str, checkpointing: bool = False):
    (tmp / "q.toml").write_text(f'''name = "q"
[model]
name_or_path = "{model_dir}"
dtype = "{compute}"
[model.quantization]
bits = 4
compute_dtype = "{compute}"
[data]
path = "{ASSETS / 'instruct.jsonl'}"
prompt_template = "{{{{ instruction }}}}"
response_template = "{{{{ output }}}}"
[train]
target_modules = ["q_proj", "v_proj"]
gradient_checkpointing = {str(checkpointing).lower()}
''')
    return suitefile.load_suite(tmp / "q.toml")


def _attach(tmp_path: Path, model_dir: Path, compute: str, checkpointing: bool = False):
    suite = _qlora_suite(tmp_path, model_dir, compute, checkpointing)
    base = modeling.load_model(suite.model, str(model_dir), "cpu")
    return adapterload.attach_adapter(base, suite.train, suite.model.quantization)


def _dtypes(model, part: str) -> set:
    import torch

    return {p.dtype for n, p in model.named_parameters() if part in n} - {torch.uint8}


def test_bf16_qlora_keeps_frozen_weights_in_bf16(qlora_model_dir, tmp_path):
    import torch

    model = _attach(tmp_path, qlora_model_dir, "bfloat16")
    assert _dtypes(model, "norm") == {torch.bfloat16}
    assert _dtypes(model, "embed_tokens") == {torch.bfloat16}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_fp16_qlora_gets_peft_fp32_upcast(qlora_model_dir, tmp_path):
    import torch

    model = _attach(tmp_path, qlora_model_dir, "float16")
    assert _dtypes(model, "norm") == {torch.float32}  # fp16 activations stay in range
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_qlora_gradient_checkpointing_reaches_the_base_model(qlora_model_dir, tmp_path):
    model = _attach(tmp_path, qlora_model_dir, "bfloat16", checkpointing=True)
    assert model.base_model.model.is_gradient_checkpointing
    import torch

    model.train()
    out = model(input_ids=torch.tensor([[1, 5, 6, 7]]), labels=torch.tensor([[1, 5, 6, 7]]))
    out.loss.backward()  # input grads enabled: the checkpointed graph reaches the adapter
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)
