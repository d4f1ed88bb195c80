"""On a CUDA GPU: QLoRA really loads 4-bit weights, and the QLoRA / LoRA report recipes run end to
end with CUDA peak memory. Skipped without CUDA (CI has none); run with `pytest -m gpu`.

The model is a small Llama built from config (hidden 256, 4 layers, ~3.3M parameters) so that
every projection is large enough for bitsandbytes' 4-bit blocks (64 values) and the run takes
seconds, with the reports' own precision (fp16 weights, nf4, fp16 mixed precision) unchanged.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from harness.run import modeling  # noqa: E402
from harness.rundir.record import load_run  # noqa: E402
from harness.suite import config, suitefile  # noqa: E402

from .conftest import ASSETS, build_tokenizer  # noqa: E402
from .test_suites import run_report_suite  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="QLoRA needs bitsandbytes: pip install -e '.[quant]'")


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("small-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _suite(model_dir: Path, quantization: str, tmp: Path) -> config.Suite:
    text = f'''name = "gpu"
[model]
name_or_path = "{model_dir}"
dtype = "float16"
{quantization}
[data]
path = "{ASSETS / 'instruct.jsonl'}"
fields = {{ instruction = "instruction", output = "output" }}
prompt_template = "{{{{ instruction }}}}\\n"
response_template = "{{{{ output }}}}"
eval_size = 4
'''
    (tmp / "gpu.toml").write_text(text)
    return suitefile.load_suite(tmp / "gpu.toml")


@needs_bnb
def test_qlora_loads_nf4_weights_on_the_gpu(small_model_dir, tmp_path):
    import bitsandbytes as bnb

    plain = modeling.load_model(_suite(small_model_dir, "", tmp_path).model, str(small_model_dir),
                                "cuda")
    q = _suite(small_model_dir, '[model.quantization]\nbits = 4\nquant_type = "nf4"\n'
                                'double_quant = true\ncompute_dtype = "float16"', tmp_path)
    quant = modeling.load_model(q.model, str(small_model_dir), "cuda")
    linear4 = [m for m in quant.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 4 * 7  # every attention and MLP projection; the LM head stays fp16
    assert linear4[0].weight.quant_state.quant_type == "nf4"
    assert next(quant.parameters()).device.type == "cuda"
    # 4-bit projections: the projection part of the footprint shrinks ~4x (fp16 -> nf4).
    assert quant.get_memory_footprint() < 0.6 * plain.get_memory_footprint()


@needs_bnb
def test_tinyllama_qlora_code_recipe_runs_on_cuda(small_model_dir, tmp_path):
    """The TinyLlama coding report's QLoRA unchanged but for size: fp16 weights, nf4, fp16
    mixed precision on the GPU."""
    path = run_report_suite("tinyllama_qlora_code", small_model_dir, tmp_path,
                    "model.dtype=float16", "model.quantization.compute_dtype=float16",
                    "train.max_steps=2")
    rec = load_run(path).record
    assert rec["status"] == "success", rec["error"]
    assert rec["env"]["device"] == "cuda"
    assert rec["env"]["memory_kind"] == "cuda_max_memory_allocated"
    for arm in ("baseline", "lora"):
        m = rec["arms"][arm]["metrics"]
        assert m["peak_memory_bytes"] > 0 and m["loss"] > 0


def test_llama2_alpaca_lora_recipe_runs_on_cuda(small_model_dir, tmp_path):
    """The LLaMA2 LoRA report's setup: fp16 mixed precision and paged_adamw_32bit
    (bitsandbytes) on the GPU."""
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("paged_adamw_32bit needs bitsandbytes")
    path = run_report_suite("llama2_alpaca_lora", small_model_dir, tmp_path)
    rec = load_run(path).record
    assert rec["status"] == "success", rec["error"]
    assert rec["env"]["device"] == "cuda"
    log = load_run(path).train_log()
    assert any("loss" in r for r in log) and any("eval_loss" in r for r in log)
