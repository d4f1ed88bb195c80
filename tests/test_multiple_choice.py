"""Multiple-choice eval sets ([eval.sets.NAME] task = "multiple_choice") through the CLI on the
tiny model: each choice's log-likelihood against a plain transformers forward pass, acc /
acc_norm picks against numpy, few-shot examples never taken from eval items, every bad row
named with its set, file and line, and the set's `<set>/acc` through compare and gate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.rundir.record import load_run

from .conftest import ASSETS, cli_run, tiny_suite_text

runner = CliRunner()

CHOICES = ["blue", "green", "red wine", "a yellow-ish colour", "été"]
# Ten items: answers given as an index or as the choice's text, choices of unequal length
# (acc_norm divides by it), a non-ASCII choice.
ROWS = [{"id": f"q{i}", "question": f"Item {i}: which colour is the sky on day {i}?",
         "choices": CHOICES[: 2 + i % 4], "answer": (i % (2 + i % 4)) if i % 2
         else CHOICES[i % (2 + i % 4)]} for i in range(10)]


def mc_set(name: str, eval_size: int, num_fewshot: int, extra: str = "") -> str:
    """A multiple-choice set over mc.jsonl, every key written out (``extra``: more keys)."""
    return f'''
[eval.sets.{name}]
path = "mc.jsonl"
task = "multiple_choice"
fields = {{ question = "question", choices = "choices", answer = "answer" }}
prompt_template = "{{{{ question }}}}\\nAnswer:"
choice_template = " {{{{ choice }}}}"
metrics = ["acc", "acc_norm"]
eval_size = {eval_size}
num_fewshot = {num_fewshot}
{extra}'''


MC_SET = mc_set("mc", 6, 3)


def write(tmp_path: Path, model_dir: Path, extra: str = MC_SET, rows=ROWS,
          train: bool = True) -> Path:
    shutil.copy(ASSETS / "instruct.jsonl", tmp_path / "instruct.jsonl")
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                       encoding="utf-8")
    text = tiny_suite_text(model_dir)
    if not train:  # an eval-only suite: the zero-shot arm alone
        text = re.sub(r"\n\[train\]\n.*?\n\[eval\]", "\n[eval]", text, flags=re.S)
    path = tmp_path / "tiny.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory, tiny_model_dir) -> Path:
    d = tmp_path_factory.mktemp("mc")
    return cli_run(write(d, tiny_model_dir), d / "results")


def _rows(run_dir: Path, arm: str, eval_set: str | None = "mc") -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["arm"] == arm and r["set"] == eval_set]


def _plain_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """lm-eval's split (trailing spaces of the context to the continuation; the continuation
    is what the whole text's encoding has after the context's), then one full forward pass of
    context + continuation and the sum of the continuation tokens' log-probabilities."""
    import torch

    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tok(context)["input_ids"]
    cont = tok(context + continuation)["input_ids"][len(ctx):]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_each_choice_loglikelihood_equals_a_plain_forward_pass(mc_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _rows(mc_run, "baseline")
    assert len(rows) == 6
    for r in rows:
        want = [_plain_loglikelihood(model, tok, r["prompt"], " " + c) for c in r["choices"]]
        assert r["loglikelihoods"] == pytest.approx(want, abs=1e-4), r["id"]


def test_picks_and_accuracy_equal_numpy(mc_run):
    rec = load_run(mc_run).record
    by_id = {r["id"]: r for r in ROWS}
    for arm in ("baseline", "lora"):
        rows = _rows(mc_run, arm)
        for r in rows:
            ll = np.array(r["loglikelihoods"])
            src = by_id[r["id"]]
            gold = (src["answer"] if isinstance(src["answer"], int)
                    else src["choices"].index(src["answer"]))
            lengths = np.array([len(c) for c in src["choices"]], dtype=float)
            assert r["choices"] == src["choices"] and r["gold"] == gold
            assert r["pick"] == int(np.argmax(ll))
            assert r["pick_norm"] == int(np.argmax(ll / lengths))
            assert r["acc"] == float(r["pick"] == gold)
            assert r["acc_norm"] == float(r["pick_norm"] == gold)
            assert r["prediction"] == src["choices"][r["pick"]]
        metrics = rec["arms"][arm]["metrics"]
        assert metrics["mc/acc"] == pytest.approx(np.mean([r["acc"] for r in rows]))
        assert metrics["mc/acc_norm"] == pytest.approx(np.mean([r["acc_norm"] for r in rows]))
        assert "mc/loss" not in metrics


def test_fewshot_examples_never_come_from_eval_items(mc_run):
    rows = _rows(mc_run, "baseline")
    eval_ids = {r["id"] for r in rows}
    questions = {r["id"]: r["question"] for r in ROWS}
    for r in rows:
        shots = r["prompt"].split("\n\n")
        assert len(shots) == 4 and shots[-1] == questions[r["id"]] + "\nAnswer:"
        used = [i for i, q in questions.items() if q in r["prompt"] and i != r["id"]]
        assert len(used) == 3 and not set(used) & eval_ids, (r["id"], used)
        for i in used:  # each solved with its own answer's text
            src = next(x for x in ROWS if x["id"] == i)
            gold = src["answer"] if isinstance(src["answer"], str) else src["choices"][
                src["answer"]]
            assert f"{questions[i]}\nAnswer: {gold}" in shots


def test_acc_goes_through_compare_gate_and_the_report(mc_run):
    rec = load_run(mc_run).record
    rows = [c for c in rec["comparisons"] if c["metric"] in ("mc/acc", "mc/acc_norm")]
    assert {c["metric"] for c in rows} == {"mc/acc", "mc/acc_norm"}
    assert all(c["ci_low"] is not None and c["p_value"] is not None for c in rows)
    gate = runner.invoke(app, ["gate", str(mc_run), "--baseline", str(mc_run),
                               "--rule", "mc/acc:-1%"])
    assert gate.exit_code == 0 and "mc/acc:-1%" in gate.output, gate.output
    cmp = runner.invoke(app, ["compare", str(mc_run), "--format", "json"])
    assert cmp.exit_code == 0 and "mc/acc_norm" in cmp.output
    assert "| Accuracy (mc) |" in (mc_run / "report.md").read_text(encoding="utf-8")


def test_a_generate_set_is_scored_the_same_beside_a_multiple_choice_set(tmp_path,
                                                                          tiny_model_dir):
    general = '''
[eval.sets.general]
path = "instruct.jsonl"
fields = { instruction = "instruction", output = "output" }
prompt_template = "{{ instruction }}\\n"
response_template = "{{ output }}"
eval_size = 5
'''
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone = cli_run(write(tmp_path / "a", tiny_model_dir, general, train=False), tmp_path / "ra")
    both = cli_run(write(tmp_path / "b", tiny_model_dir, general + MC_SET, train=False),
                   tmp_path / "rb")
    strip = {"eval_tokens_per_s", "gen_tokens_per_s", "peak_memory_bytes"}
    m_alone = {k: v for k, v in load_run(alone).record["arms"]["baseline"]["metrics"].items()
               if k not in strip}
    m_both = {k: v for k, v in load_run(both).record["arms"]["baseline"]["metrics"].items()
              if k not in strip and not k.startswith("mc/")}
    assert m_alone == m_both and "general/loss" in m_alone
    assert _rows(alone, "baseline", "general") == _rows(both, "baseline", "general")
    assert "task" not in json.dumps(_rows(both, "baseline", "general"))


# ---------------------------------------------------------------- bad input, exit 2


def _validate(tmp_path: Path, model_dir: Path, rows=ROWS, extra: str = MC_SET):
    res = runner.invoke(app, ["validate", str(write(tmp_path, model_dir, extra, rows))])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return res.output


@pytest.mark.parametrize(("change", "problem"), [
    ({"choices": "blue, green"}, "must be a list of choices, got a str"),
    ({"choices": ["blue"]}, "has 1 choice(s); a multiple-choice item needs at least 2"),
    ({"answer": 4}, "answer 4 (column 'answer') is out of range: 2 choices, indexed 0..1"),
    ({"answer": "purple"}, "answer 'purple' (column 'answer') is not one of the choices"),
    ({"answer": None}, "must be a choice's 0-based index or its text, got no value"),
    ({"choices": ["blue", ""]}, "choice 1 of column 'choices' is empty"),
])
def test_each_bad_row_names_the_set_file_and_line(tmp_path, tiny_model_dir, change, problem):
    rows = [dict(r) for r in ROWS]
    rows[4] = {**rows[4], **change}
    out = _validate(tmp_path, tiny_model_dir, rows)
    where = f"eval.sets.mc.path: {tmp_path / 'mc.jsonl'}:5: item q4: "
    line = next(ln for ln in out.splitlines() if where in ln)
    assert problem in line, out


def test_every_bad_row_is_listed(tmp_path, tiny_model_dir):
    rows = [{**r, "answer": 9} for r in ROWS]
    out = _validate(tmp_path, tiny_model_dir, rows)
    # eval items and the rows few-shot examples are drawn from: all ten, in file order
    lines = [int(m) for m in re.findall(r"mc\.jsonl:(\d+): item", out)]
    assert lines == sorted(lines) and len(lines) == 10


def test_fewshot_without_other_rows_is_refused(tmp_path, tiny_model_dir):
    out = _validate(tmp_path, tiny_model_dir, extra=MC_SET.replace("eval_size = 6",
                                                                   'eval_size = "all"'))
    assert "eval.sets.mc.num_fewshot = 3" in out and "has 0 rows besides its 10 eval items" in out


@pytest.mark.parametrize(("extra", "key"), [
    (MC_SET.replace('metrics = ["acc", "acc_norm"]', 'metrics = ["acc", "rouge"]'),
     "eval.sets.mc: metrics: ['rouge'] cannot score a multiple_choice set"),
    (MC_SET + 'response_template = "{{ answer }}"\n', "eval.sets.mc: response_template:"),
    (MC_SET.replace('prompt_template = "{{ question }}\\nAnswer:"', ""),
     "eval.sets.mc: prompt_template:"),
    (MC_SET.replace('task = "multiple_choice"', "").replace(
        'metrics = ["acc", "acc_norm"]', 'response_template = "x"'),
     "eval.sets.mc: choice_template: only a task = \"multiple_choice\" set reads it"),
    ('\n[eval.sets.g]\npath = "mc.jsonl"\nresponse_template = "x"\nmetrics = ["acc"]\n',
     "eval.sets.g.metrics: 'acc': scored on a multiple-choice set only"),
    (MC_SET.replace("num_fewshot = 3", "num_fewshot = -1"), "eval.sets.mc.num_fewshot"),
])
def test_settings_that_make_no_sense_for_the_task_name_the_key(tmp_path, tiny_model_dir,
                                                                extra, key):
    assert key in _validate(tmp_path, tiny_model_dir, extra=extra)


def test_choice_metrics_are_refused_on_the_suites_own_set(tmp_path, tiny_model_dir):
    suite = write(tmp_path, tiny_model_dir, "")
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "r"),
                              "--set", 'eval.metrics=["loss", "acc"]'])
    assert res.exit_code == 2 and "eval.metrics" in res.output, res.output
    assert not (tmp_path / "r" / "tiny").exists()


# ---------------------------------------------------------------- the shared context


def _encoded(tok, n_items: int = 3, lead: str = ""):
    """Items of unequal context length; ``lead``: text every context starts with."""
    from harness.run.encoding import encode_choices
    from harness.suite.config import DataSpec
    from harness.suite.prompts import Example

    spec = DataSpec(path="x", prompt_template="", response_template="")
    items = [Example(id=f"q{i}",
                     prompt=f"{lead}Item {i}: which{' very' * i} colour is the sky?\nAnswer:",
                     response=" blue", choices=tuple(CHOICES),
                     continuations=tuple(" " + c for c in CHOICES), gold=0)
             for i in range(n_items)]
    return [encode_choices(ex, tok, spec) for ex in items]


def _one_pass_per_choice(model, e) -> list[float]:
    """Each choice's log-likelihood from one full forward pass of context + choice."""
    import torch

    want = []
    for c in e.continuations:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([[*e.context_ids, *c]])).logits[0]
                                     .double(), -1)
        want.append(sum(float(logp[len(e.context_ids) - 1 + j, t]) for j, t in enumerate(c)))
    return want


def _forward_shapes(model) -> tuple[list[tuple[int, ...]], object]:
    calls: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    return calls, hook


@pytest.mark.parametrize("batch_size", [1, 2])
def test_the_context_runs_once_per_item_and_its_choices_share_one_row(tiny_model_dir,
                                                                      batch_size):
    """Per batch of items: their contexts (one row each, left-padded), then every choice's
    tokens after its first in one tree-masked row per item (no context token among them). The
    model's first batch also runs one row per choice from the repeated cache, the check the
    tree is trusted on. Numbers equal one full forward pass per choice, whatever the padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.run.scoring import choice_loglikelihoods

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = _encoded(tok)
    calls, hook = _forward_shapes(model)
    lls = choice_loglikelihoods(model, items, tok.pad_token_id, batch_size)
    hook.remove()
    longest = max(len(c) for c in items[0].continuations)
    tree = sum(len(c) - 1 for c in items[0].continuations)
    by_length = sorted(items, key=lambda e: -len(e.context_ids))
    batches = [by_length[i: i + batch_size] for i in range(0, len(items), batch_size)]
    assert len({len(e.context_ids) for e in items}) == len(items)  # padding is exercised
    want = [s for b in batches for s in ((len(b), len(b[0].context_ids)), (len(b), tree))]
    want.insert(2, (len(batches[0]) * len(CHOICES), longest - 1))  # the first batch's check
    assert calls == want
    for e, got in zip(items, lls):
        assert got == pytest.approx(_one_pass_per_choice(model, e), abs=1e-4)


def test_a_model_that_lets_choices_see_each_other_is_scored_one_row_per_choice(tiny_model_dir):
    """A model whose attention ignores the tree mask (here: it lets every token see the whole
    row) disagrees with the repeated cache on the first batch; from then on every batch runs
    one row per choice, and the numbers are the true ones."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.run.scoring import choice_loglikelihoods

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = _encoded(tok)

    def see_all(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            kwargs["attention_mask"] = torch.ones_like(mask)
        return args, kwargs

    spoil = model.register_forward_pre_hook(see_all, with_kwargs=True)
    calls, hook = _forward_shapes(model)
    lls = choice_loglikelihoods(model, items, tok.pad_token_id, 1)
    hook.remove()
    spoil.remove()
    rows = [s[0] for s in calls]
    assert rows == [1, 1, len(CHOICES), 1, len(CHOICES), 1, len(CHOICES)]
    for e, got in zip(items, lls):
        assert got == pytest.approx(_one_pass_per_choice(model, e), abs=1e-4)


def test_a_sliding_window_model_never_gets_a_tree_mask(tiny_model_dir):
    """A custom 4D mask would replace a sliding window: such a model scores one row per choice
    from the start, and so does attention that is not SDPA."""
    from transformers import AutoModelForCausalLM

    from harness.run import choicetree

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert choicetree.eligible(model)
    model.config.sliding_window = 8
    assert not choicetree.eligible(model)
    model.config.sliding_window = None
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert not choicetree.eligible(model)
    model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    model.set_attn_implementation("eager")
    assert not choicetree.eligible(model)


def test_a_model_without_a_repeatable_cache_gives_the_same_numbers(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.run.scoring import choice_loglikelihoods

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = _encoded(tok, 2)
    cached = choice_loglikelihoods(model, items, tok.pad_token_id, 2)

    def no_cache(module, args, kwargs, output):
        output.past_key_values = None  # as a remote-code model with a legacy cache
        return output

    hook = model.register_forward_hook(no_cache, with_kwargs=True)
    whole = choice_loglikelihoods(model, items, tok.pad_token_id, 2)
    hook.remove()
    assert np.array(whole).shape == (2, len(CHOICES))
    np.testing.assert_allclose(whole, cached, rtol=0, atol=1e-4)


def test_a_cached_zero_shot_arm_keeps_its_choices_and_a_changed_set_is_not_reused(
        tmp_path, tiny_model_dir):
    """The zero-shot evaluation cache: the same set again reuses the rows; another choice
    template is another evaluation."""
    suite = write(tmp_path, tiny_model_dir, train=False)
    first, second = (load_run(cli_run(suite, tmp_path / f"r{i}")) for i in range(2))
    assert second.record["arms"]["baseline"].get("cached") is True
    assert _rows(second.path, "baseline") == _rows(first.path, "baseline")
    suite.write_text(suite.read_text().replace('" {{ choice }}"', '" ({{ choice }})"'))
    third = load_run(cli_run(suite, tmp_path / "r3"))
    assert "cached" not in third.record["arms"]["baseline"]
    assert all(r["prediction"] in CHOICES for r in _rows(third.path, "baseline"))


def test_a_prefix_every_context_shares_runs_once(tiny_model_dir):
    """Few-shot examples that are the same for every item (lm-eval's MMLU) run once: each
    batch feeds only what follows them, left-padded after them, and every choice's
    log-likelihood equals one full forward pass of its context and choice."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.run.scoring import choice_loglikelihoods

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    shots = "".join(f"Q: what colour is thing {k}?\nA: blue\n\n" for k in range(4))
    items = _encoded(tok, lead=shots)
    shared = min(len(e.context_ids) for e in items) - 1
    common = next(n for n in range(shared) if len({e.context_ids[n] for e in items}) > 1)
    calls, hook = _forward_shapes(model)
    lls = choice_loglikelihoods(model, items, tok.pad_token_id, 2)
    hook.remove()
    longest = max(len(e.context_ids) for e in items)
    assert calls[0] == (1, common)  # the prefix, once
    assert calls[1] == (2, longest - common)  # a batch: what follows it, padded
    for e, got in zip(items, lls):
        assert got == pytest.approx(_one_pass_per_choice(model, e), abs=1e-4)
