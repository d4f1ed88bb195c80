"""Evaluation maths against independent computations on a tiny model."""

from __future__ import annotations

import pytest
import torch

from harness.run import encoding, memory, scoring, textmetrics
from harness.run.encoding import encode
from harness.suite.config import DataSpec, EvalSpec
from harness.suite.prompts import Example

from .conftest import build_model, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok, seed=3).eval()


@pytest.fixture(scope="module")
def items(tok):
    spec = DataSpec(path="x", prompt_template="p", response_template="r", max_length=64)
    texts = [("Report: " + "rain " * (i % 7), "Oslo " * (1 + i % 4)) for i in range(11)]
    return [encode(Example(str(i), p, r), tok, spec) for i, (p, r) in enumerate(texts)]


def reference_nll(model, e) -> tuple[float, int]:
    """Unbatched, full logits, loss from the model's own labels path."""
    ids = torch.tensor([e.input_ids])
    labels = torch.tensor([e.labels])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    n = sum(1 for x in e.labels[1:] if x != -100)
    return out.loss.item() * n, n


def test_teacher_forced_matches_unbatched_full_logits(model, tok, items):
    scores, tps = scoring.teacher_forced(model, items, batch_size=4, pad_id=tok.pad_token_id)
    assert tps > 0
    for e, s in zip(items, scores):
        nll, n = reference_nll(model, e)
        assert s.n_tokens == n == e.n_response_tokens
        assert s.nll_sum == pytest.approx(nll, rel=1e-4, abs=1e-4)


def test_batch_size_does_not_change_scores(model, tok, items):
    one, _ = scoring.teacher_forced(model, items, batch_size=1, pad_id=tok.pad_token_id)
    many, _ = scoring.teacher_forced(model, items, batch_size=8, pad_id=tok.pad_token_id)
    assert [round(a.nll_sum, 3) for a in one] == [round(b.nll_sum, 3) for b in many]


SYSTEM = "System: you answer with one weather word for the city.\n"


@pytest.fixture(scope="module")
def prefixed_items(tok):
    """Items sharing a system prompt, as a chat template makes them."""
    spec = DataSpec(path="x", prompt_template="p", response_template="r", max_length=96)
    texts = [(SYSTEM + "Report: " + "rain " * (i % 5), "Oslo " * (1 + i % 3)) for i in range(9)]
    return [encode(Example(str(i), p, r), tok, spec) for i, (p, r) in enumerate(texts)]


def test_shared_prefix_runs_once_and_scores_stay_exact(model, tok, prefixed_items):
    prefix = scoring.shared_prefix(model, prefixed_items)
    assert prefix is not None
    assert scoring.MIN_SHARED_PREFIX <= prefix.length < min(e.prompt_len for e in prefixed_items)
    common = encoding.common_prefix_len([e.input_ids for e in prefixed_items])
    assert prefix.length == min(common, min(e.prompt_len for e in prefixed_items) - 1)
    scores, _ = scoring.teacher_forced(model, prefixed_items, 4, tok.pad_token_id)
    for e, s in zip(prefixed_items, scores):
        nll, n = reference_nll(model, e)  # the whole sequence, no cache
        assert s.n_tokens == n
        assert s.nll_sum == pytest.approx(nll, rel=1e-4, abs=1e-4)


def test_shared_prefix_through_a_peft_adapter(tok, prefixed_items):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build_model(tok, seed=5), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    assert scoring.shared_prefix(peft_model, prefixed_items) is not None
    scores, _ = scoring.teacher_forced(peft_model, prefixed_items, 3, tok.pad_token_id)
    for e, s in zip(prefixed_items, scores):
        assert s.nll_sum == pytest.approx(reference_nll(peft_model, e)[0], rel=1e-4, abs=1e-4)


def test_shared_prefix_survives_out_of_memory_halving(model, tok, prefixed_items):
    """A batch that runs out of memory after the cache grew is halved; the halves and later
    full batches still start from exactly the prefix."""

    class OOMOnWideBatches(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.failed = inner, 0

        def forward(self, input_ids, past_key_values=None, **kw):
            if input_ids.shape[0] > 2 and past_key_values is not None and self.failed < 1:
                self.failed += 1
                # A pass that dies after its first layer: only layer 0 holds the batch's keys.
                cfg = self.inner.config
                b, t = input_ids.shape
                kv = torch.zeros(b, cfg.num_key_value_heads, t,
                                 cfg.hidden_size // cfg.num_attention_heads)
                past_key_values.update(kv, kv, layer_idx=0)
                raise torch.OutOfMemoryError("CUDA out of memory")
            return self.inner(input_ids=input_ids, past_key_values=past_key_values, **kw)

    flaky = OOMOnWideBatches(model)
    scores, _ = scoring.teacher_forced(flaky, prefixed_items, 4, tok.pad_token_id)
    assert flaky.failed == 1
    for e, s in zip(prefixed_items, scores):
        assert s.nll_sum == pytest.approx(reference_nll(model, e)[0], rel=1e-4, abs=1e-4)


def test_no_shared_prefix_when_items_share_little(model, items):
    assert scoring.shared_prefix(model, items) is None  # "<s>Report:" is under the minimum
    assert scoring.shared_prefix(model, items[:1]) is None


def test_common_prefix_len():
    assert encoding.common_prefix_len([[1, 2, 3, 4], [1, 2, 3], [1, 2, 9, 4]]) == 2
    assert encoding.common_prefix_len([[5, 1], [6, 1]]) == 0


def test_generation_batch_defaults_to_at_least_32():
    assert EvalSpec(batch_size=4).gen_batch_size == 32
    assert EvalSpec(batch_size=64).gen_batch_size == 64
    assert EvalSpec(batch_size=4, generate_batch_size=2).gen_batch_size == 2


def test_results_come_back_in_eval_order(model, tok, items):
    scores, _ = scoring.teacher_forced(model, items, batch_size=3, pad_id=tok.pad_token_id)
    assert [s.n_tokens for s in scores] == [e.n_response_tokens for e in items]


def test_batched_left_padded_generation_equals_one_by_one(model, tok, items):
    spec = EvalSpec(max_new_tokens=6, generate_batch_size=4)
    batched = scoring.generate(model, tok, items, spec)
    single = scoring.generate(model, tok, items, EvalSpec(max_new_tokens=6,
                                                          generate_batch_size=1))
    assert batched.texts == single.texts
    assert batched.n_tokens == single.n_tokens
    assert all(1 <= n <= 6 for n in batched.n_tokens)


def test_generation_is_greedy_by_default(model, tok, items):
    spec = EvalSpec(max_new_tokens=5, batch_size=1)
    e = items[0]
    ours = scoring.generate(model, tok, [e], spec).texts[0]
    ids = torch.tensor([e.prompt_ids])
    with torch.no_grad():
        for _ in range(5):  # hand-rolled argmax decoding
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if nxt.item() == tok.eos_token_id:
                break
    hand = tok.decode(ids[0, len(e.prompt_ids):], skip_special_tokens=True).strip()
    assert ours == hand


def test_count_until_eos_includes_eos():
    assert scoring._count_until_eos([5, 6, 2, 0, 0], {2}) == 3
    assert scoring._count_until_eos([5, 6, 7], {2}) == 3


def test_rouge_uses_stemming_and_f_measure():
    rows = textmetrics.rouge(["the cats were running"], ["the cat was running"], stemmer=True)
    plain = textmetrics.rouge(["the cats were running"], ["the cat was running"], stemmer=False)
    assert rows[0]["rouge1"] == pytest.approx(0.75)  # the, cat, run match after stemming
    assert plain[0]["rouge1"] == pytest.approx(0.5)
    assert set(rows[0]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_length_sorted_batches_cover_everything_once():
    batches = scoring.length_sorted_batches([3, 9, 1, 7, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_peak_memory_cpu_is_the_phase_own_growth_plus_the_weights():
    import time

    import numpy as np

    held = np.ones(128 * 2**20 // 8)  # resident before the phase: not the phase's
    with memory.PeakMemory("cpu") as busy:
        block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
        time.sleep(0.1)
        del block
    with memory.PeakMemory("cpu") as idle:
        time.sleep(0.05)
    assert 200 * 2**20 <= busy.bytes < 300 * 2**20  # the sampler saw the allocation only
    assert 0 <= idle.bytes < 32 * 2**20  # a later phase inherits neither it nor `held`
    del held
    model = torch.nn.Linear(256, 1024)  # 1024 x 256 + 1024 float32 = 1,052,672 bytes
    with memory.PeakMemory("cpu", model) as weights:
        time.sleep(0.02)
    assert 1_052_672 <= weights.bytes < 1_052_672 + 32 * 2**20


def test_cpu_training_runs_in_a_thread_of_its_own_and_hands_back_its_result_or_error():
    """The trained arm's eval must not reuse training's malloc arena (memory.in_training_arena):
    the work runs outside the calling thread, its value and its exception come back as they
    were, and the eval threshold is in force again afterwards."""
    import threading

    seen = {}

    def work():
        seen["thread"] = threading.current_thread()
        return 42

    assert memory.in_training_arena(work) == 42
    assert seen["thread"] is not threading.current_thread()

    def fails():
        raise ValueError("diverged")

    with pytest.raises(ValueError, match="diverged"):
        memory.in_training_arena(fails)


def test_a_signal_during_threaded_training_stops_the_training_thread_too():
    """SIGINT reaches the main thread, which waits on the training thread: the training must
    unwind too (a thread left running aborts the interpreter at exit: "terminate called
    without an active exception", exit -6)."""
    import subprocess
    import sys

    code = (
        "import os, signal, threading, time\n"
        "from harness.run import memory\n"
        "def work():\n"
        "    try:\n"
        "        while True: time.sleep(0.001)\n"
        "    except KeyboardInterrupt:\n"
        "        print('training unwound', flush=True); raise\n"
        "threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
        "try:\n"
        "    memory.in_training_arena(work)\n"
        "except KeyboardInterrupt:\n"
        "    print('main interrupted', [t.name for t in threading.enumerate()], flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["training unwound", "main interrupted ['MainThread']"]


def test_token_nll_equals_torch_cross_entropy():
    """The in-place negative log-likelihood gives torch's cross-entropy per row (ignored rows
    0), on logits far from zero and on a bfloat16 model's logits made float."""
    import torch
    import torch.nn.functional as F

    from harness.run.encoding import IGNORE_INDEX
    from harness.run.scoring import token_nll

    g = torch.Generator().manual_seed(0)
    for scale, dtype in [(1.0, torch.float32), (30.0, torch.float32), (3.0, torch.bfloat16)]:
        logits = (torch.randn(64, 1000, generator=g) * scale + 50).to(dtype)
        target = torch.randint(0, 1000, (64,), generator=g)
        target[::5] = IGNORE_INDEX
        want = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX,
                               reduction="none")
        got = token_nll(logits.float(), target)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=2e-5)
        assert (got[::5] == 0).all()
