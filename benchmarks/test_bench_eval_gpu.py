"""Teacher-forced eval loss on a GPU: harness.run.scoring vs lm-evaluation-harness's HF backend.

The CPU benchmark (test_bench_eval.py) on the GPU: the same comparison, the same items (the
default suite's weather data with a system prompt, through a chat template), the same weights
object, bf16. No network: models are built from real configs (SmolLM2-135M, TinyLlama-1.1B)
with random weights, and the tokenizer is the test suite's small byte-level BPE, so every item
is a real token sequence with a shared prompt prefix. Random weights do not change the work of
a forward pass. Batch 32 on both sides (what a GPU user passes to lm-eval; batch 8 leaves an
H100 idle). Skipped without CUDA or lm-eval.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.benchmark(group="eval-loss-gpu", warmup=False),
]

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.5
BATCH = 32
ITEMS = 256
SHAPES = {  # from the models' config.json
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           tie_word_embeddings=False),
}


def _tokenizer():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.conftest import build_tokenizer

    return build_tokenizer()


def random_model_dir(name: str, folder: Path, dtype: Any, vocab: str = "shape"
                     ) -> tuple[str, Path]:
    """SHAPES[name] with random weights in ``dtype``, saved with the test tokenizer.
    ``vocab``: "shape" keeps the real vocabulary size, "tokenizer" cuts the LM head to the
    tokenizer's rows (every generated id then decodes to text)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    shape = {**SHAPES[name], **({"vocab_size": len(tok)} if vocab == "tokenizer" else {})}
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return name, folder


def default_suite_items(path: Path, n: int, *overrides: str) -> tuple[Any, Any, list, list]:
    """(suite, tokenizer, eval examples, encoded eval items) of the default suite's first
    ``n`` eval items over the random-weight model in ``path``, as `harness run` encodes them."""
    from harness.run import encoding, modeling
    from harness.suite import data, suitefile

    suite = suitefile.load_suite(REPO / "suites" / "default.toml", [
        f"model.name_or_path={path}", f"data.eval_size={n}", "data.max_length=512",
        "data.validation_size=0", "data.train_size=1", *overrides])
    tok = modeling.load_tokenizer(suite.model, str(path))
    examples = data.load_splits(suite).eval
    items, _ = encoding.encode_all(examples, tok, suite.data)
    return suite, tok, examples, items


@pytest.fixture(scope="module", params=list(SHAPES))
def model_dir(request, tmp_path_factory) -> tuple[str, Path]:
    return random_model_dir(request.param, tmp_path_factory.mktemp(request.param),
                            torch.bfloat16)


def test_teacher_forced_vs_lm_eval_on_gpu(benchmark: Any, model_dir: tuple[str, Path],
                                          timer: Any, alternate: Any, record: Any) -> None:
    pytest.importorskip("lm_eval", reason="pip install -e '.[bench]' (lm-eval>=0.4.8)")
    from lm_eval.models.huggingface import HFLM

    name, path = model_dir
    _, tok, _, items = default_suite_items(path, ITEMS)
    lm = HFLM(pretrained=str(path), batch_size=BATCH, device="cuda", dtype="bfloat16")
    from conftest import eval_vs_lm_eval

    out = eval_vs_lm_eval(lm.model.eval(), lm, items, tok, BATCH, 3, timer, alternate)
    record(model=name, gpu=torch.cuda.get_device_name(), **out, target=TARGET,
           meets_target=out["ratio"] >= TARGET)
    assert out["max_rel_diff_loglik"] < 2e-2, "log-likelihoods disagree with lm-eval (bf16)"
