"""Greedy generation on a GPU: harness.run.scoring.generate vs lm-evaluation-harness's
`generate_until`, both at batch 32, on one weights object.

The CPU benchmark (test_bench_generate.py) on the GPU, with the models of
test_bench_eval_gpu.py: real shapes (SmolLM2-135M, TinyLlama-1.1B) with random weights, the
test suite's byte-level BPE tokenizer, the default suite's weather prompts through its chat
template (a shared prompt prefix). The LM head has the tokenizer's 400 rows instead of the
real vocabulary, so that every token a random model picks decodes to text (the tokenizer would
silently drop ids it does not know, and texts would agree for nothing); the transformer body,
where the time goes, keeps its real shape. float32 by default: with random weights the top
two logits are often close, and bf16's 8 bits of mantissa would let two correct computation
orders (a cached prefix vs a full prompt) pick different tokens; in fp32 any difference in
text is a bug. Asserted: identical text for every item, and identical prompt tokens on both
sides. Ratio: lm-eval's wall time over harness's, the two alternating batch by batch.
Skipped without CUDA or lm-eval. Knobs: HARNESS_BENCH_GPU_GEN_ITEMS [64],
HARNESS_BENCH_GPU_GEN_ROUNDS [2], HARNESS_BENCH_GPU_GEN_DTYPE [float32].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from test_bench_eval_gpu import SHAPES, default_suite_items, random_model_dir  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.benchmark(group="generate-gpu", warmup=False),
]

TARGET = 1.5
BATCH = 32  # both sides: lm-eval's batch as a GPU user passes it, harness's default
ITEMS = int(os.environ.get("HARNESS_BENCH_GPU_GEN_ITEMS", 64))
ROUNDS = int(os.environ.get("HARNESS_BENCH_GPU_GEN_ROUNDS", 2))
DTYPE = os.environ.get("HARNESS_BENCH_GPU_GEN_DTYPE", "float32")
DEVICE = "cuda"


@pytest.fixture(scope="module", params=list(SHAPES))
def gen_model_dir(request, tmp_path_factory) -> tuple[str, Path]:
    return random_model_dir(request.param, tmp_path_factory.mktemp(f"{request.param}-gen"),
                            getattr(torch, DTYPE), vocab="tokenizer")


def test_generate_vs_lm_eval_on_gpu(benchmark: Any, gen_model_dir: tuple[str, Path],
                                    timer: Any, alternate: Any, record: Any) -> None:
    pytest.importorskip("lm_eval", reason="pip install -e '.[bench]' (lm-eval>=0.4.8)")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.run import encoding, scoring

    name, path = gen_model_dir
    suite, tok, examples, items = default_suite_items(
        path, ITEMS, f"eval.generate_batch_size={BATCH}")
    # add_bos_token=False: a chat-templated prompt gets no BOS from harness either (this
    # tokenizer would add one); the assert below checks that both feed the same tokens
    lm = HFLM(pretrained=str(path), batch_size=BATCH, device=DEVICE, dtype=DTYPE,
              add_bos_token=False)
    model, spec = lm.model.eval(), suite.eval
    gen_kwargs = {"until": [tok.eos_token], "max_gen_toks": spec.max_new_tokens,
                  "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(encoding.prompt_text(ex, tok, suite.data), gen_kwargs))
                for i, ex in enumerate(examples)]
    fed = [lm.tok_batch_encode([r.arguments[0]])[0][0].tolist() for r in requests]
    assert fed == [list(e.prompt_ids) for e in items], "the two sides' prompt tokens differ"

    scoring.generate(model, tok, items[:2], spec)  # warm-up: first-call allocation, kernels
    lm.generate_until(requests[:2], disable_tqdm=True)
    chunks = scoring.length_sorted_batches([e.prompt_len for e in items], BATCH)
    texts: dict[str, dict[int, str]] = {"harness": {}, "lm_eval": {}}
    n_tokens: dict[int, int] = {}

    def ours(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        gens = timer.run("harness", lambda: scoring.generate(
            model, tok, [items[j] for j in chunk], spec))
        texts["harness"].update(zip(chunk, gens.texts))
        n_tokens.update(zip(chunk, gens.n_tokens))

    def theirs(i: int) -> None:
        chunk = chunks[i % len(chunks)]
        out = timer.run("lm_eval", lambda: lm.generate_until([requests[j] for j in chunk],
                                                             disable_tqdm=True))
        texts["lm_eval"].update(zip(chunk, (t.strip() for t in out)))

    alternate(ours, theirs, ROUNDS * len(chunks))

    n, tokens = len(items), sum(n_tokens.values())
    same = sum(texts["harness"][j] == texts["lm_eval"][j] for j in range(n))
    ratio = timer.ratio("lm_eval", "harness")
    record(model=name, gpu=torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
           dtype=DTYPE, items=n, batch=BATCH,
           passes=ROUNDS, max_new_tokens=spec.max_new_tokens, generated_tokens=tokens,
           harness_tokens_per_s=round(tokens / (timer.mean("harness") * len(chunks)), 1),
           lm_eval_tokens_per_s=round(tokens / (timer.mean("lm_eval") * len(chunks)), 1),
           ratio=round(ratio, 3), batch_ratio_min_max=timer.pair_ratios("lm_eval", "harness"),
           identical_texts=f"{same}/{n}", target=TARGET, meets_target=ratio >= TARGET)
    assert same == n, "greedy texts differ from lm-eval's"
