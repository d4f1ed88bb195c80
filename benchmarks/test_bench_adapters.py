"""N existing adapters on one base: harness vs N separate lm-eval `peft=` evaluations.

lm-evaluation-harness loads one adapter per model (`HFLM(pretrained=..., peft=...)`), so
judging N adapters is N loads of the base plus N passes. harness loads the base once and
switches adapters through peft (`load_adapter` / `set_adapter`). Both sides: SmolLM2-135M-
Instruct, the default suite's eval items, teacher-forced log-likelihood of the references,
batch 8, CPU; each side's time includes its model loading. Rounds alternate A-B-B-A.
Per-item log-likelihoods must agree between the two sides for every adapter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

N_ADAPTERS = 3

pytestmark = pytest.mark.benchmark(group="existing-adapters", warmup=False)


def _make_adapters(base_dir: str, root: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for i, targets in enumerate((["q_proj", "v_proj"], ["k_proj", "o_proj"],
                                 ["up_proj", "down_proj"])[:N_ADAPTERS]):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                               LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
        with torch.no_grad():  # LoRA's B starts at zero: make each adapter change the model
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        model.save_pretrained(root / f"a{i}")
        out.append(root / f"a{i}")
    return out


def test_adapters_on_one_base_vs_lm_eval_per_adapter(benchmark: Any, smollm2_dir: str,
                                                     eval_items: list, tokenizer: Any,
                                                     suite: Any, timer: Any, alternate: Any,
                                                     record: Any, sizes: dict[str, int],
                                                     tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="pip install -e '.[bench]' (lm-eval>=0.4.8)")
    from lm_eval.models.huggingface import HFLM

    from harness.run import adapterload, modeling, scoring

    paths = _make_adapters(smollm2_dir, tmp_path)
    batch, pad = sizes["batch"], tokenizer.pad_token_id
    requests = [((tokenizer.decode(e.prompt_ids), tokenizer.decode(e.input_ids[e.prompt_len:])),
                 list(e.prompt_ids), list(e.input_ids[e.prompt_len:])) for e in eval_items]
    ours_nll: dict[str, list[float]] = {}
    theirs_ll: dict[str, list[float]] = {}

    def ours(_: int) -> None:
        start = time.perf_counter()
        model = modeling.load_model(suite.model, smollm2_dir, "cpu")
        for p in paths:
            model = adapterload.switch_adapter(model, str(p), p.name, None, "LORA")
            losses, _ = scoring.teacher_forced(model, eval_items, batch, pad)
            ours_nll[p.name] = [x.nll_sum for x in losses]
        timer.add("harness", time.perf_counter() - start)

    def theirs(_: int) -> None:
        start = time.perf_counter()
        for p in paths:
            lm = HFLM(pretrained=smollm2_dir, peft=str(p), batch_size=batch, device="cpu")
            out = lm._loglikelihood_tokens(requests, disable_tqdm=True)
            theirs_ll[p.name] = [lp for lp, _greedy in out]
        timer.add("lm_eval", time.perf_counter() - start)

    alternate(ours, theirs, sizes["rounds"])
    worst = max(abs(-t - o) / abs(t) for p in paths
                for o, t in zip(ours_nll[p.name], theirs_ll[p.name]))
    record(adapters=N_ADAPTERS, items=len(eval_items), batch=batch,
           harness_s=round(timer.mean("harness"), 1), lm_eval_s=round(timer.mean("lm_eval"), 1),
           ratio=round(timer.ratio("lm_eval", "harness"), 3),
           max_rel_diff_loglik=worst)
