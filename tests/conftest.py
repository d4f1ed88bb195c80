"""Shared fixtures: a tiny Llama built from config and a tokenizer built in-process.

Both are saved to a temp dir and loaded back through the real `from_pretrained` path, so the
tests exercise the same loading code a user's hub model goes through, offline, in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    """Byte-level BPE (vocab 400) trained on the test assets; no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [line for line in (ASSETS / "instruct.jsonl").read_text().splitlines()]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # Llama-style: BOS prepended when add_special_tokens=True.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Each test gets its own baseline/model cache, except slow tests of the real model, which
    share the user's (its GGUF conversion is 30 s)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("cache")))


def save_tiny_model(path: Path, hidden: int = 32) -> Path:
    tok = build_tokenizer()
    build_model(tok, hidden=hidden).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + tokenizer (2 layers, hidden 32, vocab 400; ~60k parameters)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def qlora_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama at hidden 64: bitsandbytes' CPU 4-bit kernel (used on CPUs with
    AVX512-BF16) repacks weights in 64-value blocks per row and fails on 32-wide rows."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-64"), hidden=64)


@pytest.fixture()
def suite_dir(tmp_path, tiny_model_dir) -> Path:
    """A folder with a tiny suite (instruction/input/response like the TinyLlama LoRA
    report) and its data."""
    shutil.copy(ASSETS / "instruct.jsonl", tmp_path / "instruct.jsonl")
    (tmp_path / "tiny.toml").write_text(tiny_suite_text(tiny_model_dir), encoding="utf-8")
    return tmp_path


def tiny_suite_text(model_dir: Path) -> str:
    return f'''name = "tiny"

[model]
name_or_path = {json.dumps(str(model_dir))}

[data]
path = "instruct.jsonl"
fields = {{ instruction = "instruction", input = "input", output = "output" }}
prompt_template = """### Instruction:
{{{{ instruction }}}}

{{% if input %}}### Input:
{{{{ input }}}}

{{% endif %}}### Response:
"""
response_template = "{{{{ output }}}}"
eval_size = 12
validation_size = 8
train_size = 64
max_length = 160

[train]
r = 8
alpha = 16
dropout = 0.0
# lm_head too: the random tiny model's output layer is what most limits it.
target_modules = ["q_proj", "v_proj", "lm_head"]
learning_rate = 0.02
max_steps = 24
batch_size = 8
logging_steps = 4
eval_strategy = "steps"
eval_steps = 12
seed = 0

[eval]
max_new_tokens = 8
batch_size = 4

[stats]
n_resamples = 1000
'''


def cli_run(suite: Path, out: Path, *sets: str) -> Path:
    """``harness run SUITE --out OUT [--set ...]`` through the CLI; the one run it wrote."""
    from typer.testing import CliRunner

    from harness.cli import app

    args = ["run", str(suite), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    name = next(p for p in out.iterdir() if p.is_dir())
    return next(p for p in name.iterdir() if not p.name.startswith("."))


METHOD_GRID = '''
[sweep]
grid = { "train.method" = ["lora", "dora", "ia3"], "train.r" = [4, 8] }
'''


@pytest.fixture(scope="session")
def method_sweep(tmp_path_factory, tiny_model_dir) -> Path:
    """A real 3-method x 2-rank sweep of the tiny suite through the CLI: lora and dora at r 4
    and 8, and ia3 once (it takes no r), 4 steps each, 8 eval items. Its own cache: a session
    fixture runs before each test's own (``_isolated_cache``)."""
    root = tmp_path_factory.mktemp("method-sweep")
    shutil.copy(ASSETS / "instruct.jsonl", root / "instruct.jsonl")
    (root / "tiny.toml").write_text(tiny_suite_text(tiny_model_dir) + METHOD_GRID, "utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        return cli_run(root / "tiny.toml", root / "results", "train.max_steps=4",
                       "data.eval_size=8")
