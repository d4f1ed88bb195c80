"""lm-evaluation-harness tasks as eval sets, through the CLI on the tiny model, against
lm-eval's own ``simple_evaluate`` with its ``HFLM`` on the same model: local task YAMLs of each
output type (multiple_choice 0- and 3-shot, generate_until, loglikelihood,
loglikelihood_rolling) give the same per-document results; the same questions as a native
multiple-choice set give the same accuracy; a task's accuracy is paired with McNemar's test;
bad input is one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binomtest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import cli_run, tiny_suite_text

pytest.importorskip("lm_eval")

runner = CliRunner()

CHOICES = ["blue", "green", "red wine", "a yellow-ish colour", "été", "grey"]
QUESTIONS = [{"question": f"Item {i}: which colour is the sky on day {i}?",
              "choices": CHOICES[: 2 + i % 5], "answer": i % (2 + i % 5)} for i in range(12)]
TEXTS = [{"text": "The quick brown fox jumps over the lazy dog. " * (1 + i % 3) + f"Line {i}."}
         for i in range(4)]
SUMS = [{"q": f"{a}+{b}", "a": str(a + b)} for a, b in [(2, 2), (3, 3), (1, 1), (5, 1), (4, 4)]]

MC_YAML = """task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: mc.jsonl
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
GEN_YAML = """task: toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: "{{a}}"
generation_kwargs:
  until: ["\\n\\n", "Q:"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
ROLL_YAML = """task: toy_roll
dataset_path: json
dataset_kwargs:
  data_files:
    test: text.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
LL_YAML = """task: toy_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: sums.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: " {{a}}"
metric_list:
  - metric: perplexity
  - metric: acc
"""


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


def _greedy_answers(model_dir: Path) -> list[dict[str, str]]:
    """The sums, with the answers of docs 0, 2 and 4 replaced by the tiny model's own greedy
    continuation (plain transformers, cut at the first newline as the task's ``until`` cuts):
    exact match is then 1 on those and 0 on the others, for both tools, if they generate the
    same text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = []
    for i, r in enumerate(SUMS):
        if i % 2 == 0:
            ids = tok(f"Q: {r['q']}\nA:", return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=6, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            r = {**r, "a": text.split("\n\n")[0].split("Q:")[0]}
        rows.append(r)
    return rows


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, tiny_model_dir) -> Path:
    d = tmp_path_factory.mktemp("lm-eval-tasks")
    _jsonl(d / "mc.jsonl", QUESTIONS)
    _jsonl(d / "gen.jsonl", _greedy_answers(tiny_model_dir))
    _jsonl(d / "text.jsonl", TEXTS)
    _jsonl(d / "sums.jsonl", SUMS)
    for name, text in [("mc", MC_YAML), ("gen", GEN_YAML), ("roll", ROLL_YAML), ("ll", LL_YAML)]:
        (d / f"toy_{name}.yaml").write_text(text, encoding="utf-8")
    return d


def _lm_eval(model_dir: Path, yaml: Path, num_fewshot: int | None, limit: int | None = None,
             max_length: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """lm-eval's own results and per-document samples (HFLM, batch 4, CPU, float32); run
    from the YAML's folder, where its relative data_files resolve."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(model_dir), batch_size=4, device="cpu", dtype="float32",
              **({"max_length": max_length} if max_length else {}))
    with contextlib.chdir(yaml.parent):
        out = simple_evaluate(model=lm, tasks=[str(yaml)], num_fewshot=num_fewshot,
                              limit=limit, log_samples=True, bootstrap_iters=0)
    name = yaml.stem
    return out["results"][name], sorted(out["samples"][name], key=lambda s: s["doc_id"])


def _suite(tmp_path: Path, model_dir: Path, sets: str) -> Path:
    """A zero-shot suite (no training) with the tiny model's own data and ``sets``."""
    text = tiny_suite_text(model_dir)
    text = text[: text.index("[train]")] + text[text.index("[eval]"):] + sets
    (tmp_path / "instruct.jsonl").write_text(
        (Path(__file__).parent / "assets" / "instruct.jsonl").read_text(encoding="utf-8"),
        encoding="utf-8")
    (tmp_path / "s.toml").write_text(text, encoding="utf-8")
    return tmp_path / "s.toml"


def _rows(run: Path, eval_set: str, arm: str = "baseline") -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "predictions.jsonl").open(encoding="utf-8")]
    return sorted((r for r in rows if r["set"] == eval_set and r["arm"] == arm),
                  key=lambda r: int(r["id"]))


def _metrics(run: Path, arm: str = "baseline") -> dict[str, Any]:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))["arms"][arm]["metrics"]


@pytest.mark.parametrize("shots", [0, 3])
def test_a_multiple_choice_task_equals_lm_eval_per_document(tmp_path, tiny_model_dir, tasks,
                                                            shots):
    suite = _suite(tmp_path, tiny_model_dir, f'''
[eval.sets.mc]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"
num_fewshot = {shots}
limit = 10
''')
    run = cli_run(suite, tmp_path / "out")
    results, samples = _lm_eval(tiny_model_dir, tasks / "toy_mc.yaml", shots, limit=10)
    rows = _rows(run, "mc")
    assert [int(r["id"]) for r in rows] == [s["doc_id"] for s in samples] == list(range(10))
    for r, s in zip(rows, samples):
        assert (r["acc"], r["acc_norm"]) == (s["acc"], s["acc_norm"]), r["id"]
        theirs = [float(resp[0][0]) for resp in s["resps"]]
        assert r["loglikelihoods"] == pytest.approx(theirs, rel=1e-4)
        assert r["prompt"] == s["arguments"][0][0]  # the same few-shot context
    m = _metrics(run)
    assert m["mc/acc"] == pytest.approx(results["acc,none"], abs=1e-12)
    assert m["mc/acc_norm"] == pytest.approx(results["acc_norm,none"], abs=1e-12)


def test_the_same_questions_as_a_native_set_give_the_same_accuracy(tmp_path, tiny_model_dir,
                                                                   tasks):
    (tmp_path / "mc.jsonl").write_text((tasks / "mc.jsonl").read_text(encoding="utf-8"),
                                       encoding="utf-8")
    suite = _suite(tmp_path, tiny_model_dir, f'''
[eval.sets.task]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"

[eval.sets.native]
path = "mc.jsonl"
task = "multiple_choice"
prompt_template = "Question: {{{{ question }}}}\\nAnswer:"
''')
    run = cli_run(suite, tmp_path / "out")
    task_rows = {r["prompt"]: r for r in _rows(run, "task")}
    native = [r for r in json.loads("[" + ",".join(
        (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) + "]")
        if r["set"] == "native"]
    assert len(native) == len(task_rows) == len(QUESTIONS)
    for r in native:
        assert task_rows[r["prompt"]]["loglikelihoods"] == pytest.approx(r["loglikelihoods"],
                                                                           rel=1e-5)
        assert (task_rows[r["prompt"]]["acc"], task_rows[r["prompt"]]["acc_norm"]) == (
            r["acc"], r["acc_norm"])
    m = _metrics(run)
    assert (m["task/acc"], m["task/acc_norm"]) == (m["native/acc"], m["native/acc_norm"])


def test_a_generate_until_task_equals_lm_eval_per_document(tmp_path, tiny_model_dir, tasks):
    suite = _suite(tmp_path, tiny_model_dir, f'''
[eval.sets.sums]
lm_eval_task = "{tasks / 'toy_gen.yaml'}"
''')
    run = cli_run(suite, tmp_path / "out")
    results, samples = _lm_eval(tiny_model_dir, tasks / "toy_gen.yaml", 0)
    rows = _rows(run, "sums")
    assert [r["prediction"] for r in rows] == [s["filtered_resps"][0] for s in samples]
    assert [r["exact_match"] for r in rows] == [s["exact_match"] for s in samples]
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert _metrics(run)["sums/exact_match"] == pytest.approx(results["exact_match,none"])


def test_loglikelihood_and_rolling_tasks_equal_lm_eval(tmp_path, tiny_model_dir, tasks):
    suite = _suite(tmp_path, tiny_model_dir, f'''
[eval.sets.text]
lm_eval_task = "{tasks / 'toy_roll.yaml'}"
max_length = 16

[eval.sets.sums]
lm_eval_task = "{tasks / 'toy_ll.yaml'}"
''')
    run = cli_run(suite, tmp_path / "out")
    m = _metrics(run)
    roll, roll_samples = _lm_eval(tiny_model_dir, tasks / "toy_roll.yaml", None,
                                  max_length=16)
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert m[f"text/{key}"] == pytest.approx(roll[f"{key},none"], rel=1e-5)
    ll, ll_samples = _lm_eval(tiny_model_dir, tasks / "toy_ll.yaml", 0)
    assert m["sums/doc_perplexity"] == pytest.approx(ll["perplexity,none"], rel=1e-5)
    assert m["sums/acc"] == ll["acc,none"]
    rows = _rows(run, "sums")
    assert [r["doc_ll"] for r in rows] == pytest.approx([s["perplexity"] for s in ll_samples],
                                                        rel=1e-5)
    rows = _rows(run, "text")
    assert [r["n_words"] for r in rows] == [s["word_perplexity"][1] for s in roll_samples]
    # 16-token windows: every text here spans several, so the rolling windows are exercised.
    assert all(r["n_bytes"] > 16 for r in rows)


def test_a_task_accuracy_is_paired_with_mcnemar(suite_dir, tasks):
    (suite_dir / "tiny.toml").write_text(
        (suite_dir / "tiny.toml").read_text(encoding="utf-8") + f'''
[eval.sets.mc]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"
''', encoding="utf-8")
    run = cli_run(suite_dir / "tiny.toml", suite_dir / "out")
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    row = next(c for c in record["comparisons"] if c["metric"] == "mc/acc")
    base, lora = _rows(run, "mc"), _rows(run, "mc", "lora")
    b = sum(x["acc"] > y["acc"] for x, y in zip(base, lora))
    c = sum(x["acc"] < y["acc"] for x, y in zip(base, lora))
    assert row["test"] == "mcnemar-exact"
    expected = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert row["p_value"] == pytest.approx(expected, rel=1e-12)
    info = record["data"]["eval_sets"]["mc"]
    assert info["output_type"] == "multiple_choice" and info["fewshot_seed"] == 1234
    assert info["task_metrics"] == {"acc": "acc", "acc_norm": "acc_norm"}
    gate = runner.invoke(app, ["gate", str(run), "--rule", "mc/acc:-100%:vs-zero-shot"])
    assert gate.exit_code == 0, gate.output
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "Benchmarks" in report and "mc" in report


# ---------------------------------------------------------------- bad input


def _one_line_exit_2(res: Any, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = next(ln for ln in res.output.splitlines() if all(n in ln for n in needles))
    assert line


def test_a_task_without_lm_eval_installed_says_what_to_install(tmp_path, tiny_model_dir,
                                                               tasks, monkeypatch):
    suite = _suite(tmp_path, tiny_model_dir, f'''
[eval.sets.mc]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"
''')
    for mod in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "out")])
    _one_line_exit_2(res, "pip install 'harness[lm-eval]'")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("run.json"))


@pytest.mark.parametrize("spec, needles", [
    ('lm_eval_task = "no_such_task_anywhere"', ("eval.sets.x.lm_eval_task", "no such task")),
    ('lm_eval_task = "missing.yaml"', ("eval.sets.x.lm_eval_task", "no task YAML")),
    ('lm_eval_task = "{mc}"\npath = "mc.jsonl"', ("path", "takes its data")),
    ('lm_eval_task = "{mc}"\nmetrics = ["acc"]', ("metrics", "task's own metrics")),
    ('lm_eval_task = "{mc}"\nfilter = "strict-match"', ("eval.sets.x.filter", "none")),
    ('path = "mc.jsonl"\nresponse_template = "x"\nlimit = 3', ("limit", "lm_eval_task")),
])
def test_bad_task_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, tasks, spec, needles):
    suite = _suite(tmp_path, tiny_model_dir,
                   "\n[eval.sets.x]\n" + spec.format(mc=tasks / "toy_mc.yaml") + "\n")
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "out")])
    _one_line_exit_2(res, *needles)
    assert not any((tmp_path / "out").rglob("predictions.jsonl"))


def test_a_hub_task_offline_is_unchecked_in_validate(tmp_path, tiny_model_dir, monkeypatch):
    """arc_easy's data set is on the hub: offline, validate lists it and still passes."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = _suite(tmp_path, tiny_model_dir, '\n[eval.sets.arc]\nlm_eval_task = "arc_easy"\n')
    res = runner.invoke(app, ["validate", str(suite)])
    assert res.exit_code == 0, res.output
    assert any("arc_easy" in ln and "not checked (offline)" in ln
               for ln in res.output.splitlines()), res.output


def test_a_metric_harness_cannot_pair_is_named(tmp_path, tiny_model_dir, tasks):
    """A median-aggregated metric is not one harness recomputes from per-document sums: with
    no metric left, the set is refused, naming it."""
    (tasks / "toy_median.yaml").write_text(
        MC_YAML.replace("task: toy_mc", "task: toy_median").replace(
            "  - metric: acc\n  - metric: acc_norm\n",
            "  - metric: acc\n    aggregation: median\n"), encoding="utf-8")
    suite = _suite(tmp_path, tiny_model_dir,
                   f'\n[eval.sets.x]\nlm_eval_task = "{tasks / "toy_median.yaml"}"\n')
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "out")])
    _one_line_exit_2(res, "acc (aggregation median)", "can be paired")


def test_a_brier_score_equals_lm_eval(tmp_path, tiny_model_dir, tasks):
    """lm-eval's brier_score needs the same number of choices in every document."""
    _jsonl(tasks / "four.jsonl", [{"question": f"Item {i}: pick one.",
                                   "choices": CHOICES[i % 3: i % 3 + 4], "answer": i % 4}
                                  for i in range(8)])
    yaml = tasks / "toy_brier.yaml"
    yaml.write_text(MC_YAML.replace("task: toy_mc", "task: toy_brier").replace(
        "mc.jsonl", "four.jsonl").replace("fewshot_split: test\n", "").replace(
        "  - metric: acc\n  - metric: acc_norm\n", "  - metric: brier_score\n"),
        encoding="utf-8")
    suite = _suite(tmp_path, tiny_model_dir, f'\n[eval.sets.b]\nlm_eval_task = "{yaml}"\n')
    run = cli_run(suite, tmp_path / "out")
    results, _ = _lm_eval(tiny_model_dir, yaml, 0)
    assert _metrics(run)["b/brier_score"] == pytest.approx(results["brier_score,none"],
                                                           rel=1e-6)


WORDS = ["apple", "river", "stone", "cloud", "violet", "thunder", "maple", "ember", "quartz",
         "harbor", "lantern", "meadow", "falcon", "copper", "willow", "saffron", "glacier"]
# Two choices of varied words per question, so the tiny model's picks vary (a constant pick
# makes MCC 0 whatever the labels).
BINARY = [{"question": f"Which word fits line {i}?",
           "choices": [WORDS[i], WORDS[(5 * i + 3) % len(WORDS)]],
           "answer": int(i % 3 == 0)} for i in range(16)]


def test_binary_f1_and_mcc_equal_lm_eval(tmp_path, tiny_model_dir, tasks):
    """GLUE-style corpus scores (lm-eval's f1 and matthews_corrcoef aggregations over
    (answer, prediction) pairs) from harness's summed confusion counts."""
    _jsonl(tasks / "binary.jsonl", BINARY)
    yaml = tasks / "toy_binary.yaml"
    yaml.write_text(MC_YAML.replace("task: toy_mc", "task: toy_binary").replace(
        "mc.jsonl", "binary.jsonl").replace("fewshot_split: test\n", "").replace(
        "  - metric: acc\n  - metric: acc_norm\n",
        "  - metric: f1\n  - metric: mcc\n  - metric: acc\n"), encoding="utf-8")
    suite = _suite(tmp_path, tiny_model_dir, f'\n[eval.sets.b]\nlm_eval_task = "{yaml}"\n')
    run = cli_run(suite, tmp_path / "out")
    results, samples = _lm_eval(tiny_model_dir, yaml, 0)
    m = _metrics(run)
    assert m["b/f1"] == pytest.approx(results["f1,none"], rel=1e-12, abs=1e-15)
    assert m["b/mcc"] == pytest.approx(results["mcc,none"], rel=1e-12, abs=1e-15)
    assert m["b/acc"] == results["acc,none"]
    preds = [s["f1"][1] for s in samples]
    assert [r["f1_tp"] + r["f1_fp"] for r in _rows(run, "b")] == [float(p) for p in preds]
    assert 0 < sum(preds) < len(preds) and m["b/mcc"] != 0  # not a degenerate confusion


def test_a_task_set_goes_through_seeds_the_cache_and_shards(suite_dir, tasks):
    """train.seeds gives a recipe row for the task's accuracy; a second run reuses the cached
    zero-shot arm with the same rows; two shards of the seeds merge into the one run's
    numbers."""
    suite = suite_dir / "tiny.toml"
    suite.write_text(suite.read_text(encoding="utf-8") + f'''
[eval.sets.mc]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"
num_fewshot = 2
''', encoding="utf-8")
    fast = ["--set", "train.max_steps=4", "--set", "eval.max_new_tokens=2", "--set",
            "data.eval_size=4", "--set", "stats.n_resamples=200", "--set",
            "train.seeds=[0, 1]"]
    first = cli_run(suite, suite_dir / "a", *[s for s in fast if s != "--set"])
    record = json.loads((first / "run.json").read_text(encoding="utf-8"))
    assert {r["metric"] for r in record["seed_comparisons"]} >= {"mc/acc", "mc/acc_norm"}
    again = cli_run(suite, suite_dir / "b", *[s for s in fast if s != "--set"])
    again_record = json.loads((again / "run.json").read_text(encoding="utf-8"))
    assert again_record["arms"]["baseline"].get("cached") is True
    assert _rows(again, "mc") == _rows(first, "mc")
    shards = []
    for i in range(2):
        res = runner.invoke(app, ["run", str(suite), "--out", str(suite_dir / f"s{i}"),
                                  "--shard", f"{i}/2", *fast])
        assert res.exit_code == 0, res.output
        shards.append(next(p for p in (suite_dir / f"s{i}" / "tiny").iterdir()
                           if not p.name.startswith(".")))
    res = runner.invoke(app, ["merge", *map(str, shards), "--out", str(suite_dir / "m")])
    assert res.exit_code == 0, res.output
    merged = json.loads(next((suite_dir / "m").rglob("run.json")).read_text(encoding="utf-8"))
    for arm in ("lora@s0", "lora@s1"):
        assert merged["arms"][arm]["metrics"]["mc/acc"] == record["arms"][arm]["metrics"]["mc/acc"]
    ours = {(c["candidate"], c["metric"]): c["p_value"] for c in record["comparisons"]}
    theirs = {(c["candidate"], c["metric"]): c["p_value"] for c in merged["comparisons"]}
    assert theirs[("lora@s1", "mc/acc")] == ours[("lora@s1", "mc/acc")]


CUSTOM_UTILS = """
def process(doc, results):
    lls = [ll for ll, _ in results]
    gold = lls[doc["answer"]]
    # the share of the other choices the answer beats: a score in [0, 1], not right / wrong
    beaten = sum(ll < gold for i, ll in enumerate(lls) if i != doc["answer"])
    return {"beaten": beaten / (len(lls) - 1), "acc": beaten / (len(lls) - 1)}
"""


def _custom_task(tasks: Path, metrics: str) -> Path:
    (tasks / "custom_utils.py").write_text(CUSTOM_UTILS, encoding="utf-8")
    text = MC_YAML.replace("task: toy_mc", "task: toy_custom").replace(
        "  - metric: acc\n  - metric: acc_norm\n", metrics)
    path = tasks / "toy_custom.yaml"
    path.write_text(text + "process_results: !function custom_utils.process\n",
                    encoding="utf-8")
    return path


def test_a_tasks_own_mean_metric_is_paired_as_lm_eval_scores_it(tmp_path, tiny_model_dir,
                                                                 tasks):
    """A custom process_results with its own metric name: the per-document values and the
    mean equal lm-eval's; the comparison row is the sign-flip test of a mean."""
    yaml = _custom_task(tasks, "  - metric: beaten\n    aggregation: mean\n"
                               "    higher_is_better: true\n")
    suite = _suite(tmp_path, tiny_model_dir, f'\n[eval.sets.c]\nlm_eval_task = "{yaml}"\n')
    run = cli_run(suite, tmp_path / "out")
    results, samples = _lm_eval(tiny_model_dir, yaml, 0)
    assert [r["beaten"] for r in _rows(run, "c")] == [s["beaten"] for s in samples]
    assert len({s["beaten"] for s in samples}) > 2  # fractions, not only 0 and 1
    assert _metrics(run)["c/beaten"] == pytest.approx(results["beaten,none"], rel=1e-12)


def test_a_fractional_accuracy_is_refused_not_paired_as_right_or_wrong(tmp_path,
                                                                       tiny_model_dir, tasks):
    yaml = _custom_task(tasks, "  - metric: acc\n")
    suite = _suite(tmp_path, tiny_model_dir, f'\n[eval.sets.c]\nlm_eval_task = "{yaml}"\n')
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0
    assert "harness pairs acc as right (1) or wrong (0)" in res.output
    assert "eval.sets.c" in res.output


def test_bleu_chrf_and_ter_of_a_generate_task_equal_lm_eval(tmp_path, tiny_model_dir, tasks):
    """Corpus BLEU, chrF and TER (lm-eval's sacrebleu aggregations) from summed per-document
    sacrebleu statistics; three of the five answers are the model's own text, so chrF and TER
    are neither 0 nor 100 (BLEU is 0 for both: the texts have no 4-grams)."""
    yaml = tasks / "toy_text.yaml"
    yaml.write_text(GEN_YAML.replace("task: toy_gen", "task: toy_text").replace(
        "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n",
        "  - metric: bleu\n  - metric: chrf\n  - metric: ter\n"), encoding="utf-8")
    suite = _suite(tmp_path, tiny_model_dir, f'\n[eval.sets.t]\nlm_eval_task = "{yaml}"\n')
    run = cli_run(suite, tmp_path / "out")
    results, samples = _lm_eval(tiny_model_dir, yaml, 0)
    m = _metrics(run)
    for key in ("bleu", "chrf", "ter"):
        assert m[f"t/{key}"] == pytest.approx(results[f"{key},none"], rel=1e-9), key
    assert 0 < m["t/chrf"] < 100 and 0 < m["t/ter"] < 100
    rows = _rows(run, "t")
    assert [r["prediction"] for r in rows] == [s["filtered_resps"][0] for s in samples]
    assert "text_pairs" not in rows[0]


def test_under_torchrun_a_task_equals_a_one_process_run(tmp_path, tiny_model_dir, tasks):
    """Two ranks (gloo) answer strided shares of the documents; rank 0 writes the rows, which
    equal a one-process run's."""
    import os
    import shutil
    import subprocess

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")
    suite = _suite(tmp_path, tiny_model_dir, f'''
[eval.sets.mc]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"
num_fewshot = 2

[eval.sets.sums]
lm_eval_task = "{tasks / 'toy_gen.yaml'}"
''')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    outs = []
    for name, cmd in [("two", [torchrun, "--nproc-per-node", "2", "-m", "harness"]),
                      ("one", [sys.executable, "-m", "harness"])]:
        res = subprocess.run([*cmd, "run", str(suite), "--out", str(tmp_path / name)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        (run,) = list((tmp_path / name / "tiny").iterdir())
        outs.append(run)
    for eval_set in ("mc", "sums"):
        two, one = _rows(outs[0], eval_set), _rows(outs[1], eval_set)
        assert [r["id"] for r in two] == [r["id"] for r in one]
        assert [r["prediction"] for r in two] == [r["prediction"] for r in one]
        for a, b in zip(two, one):
            if eval_set == "mc":
                assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], rel=1e-5)
    m2, m1 = _metrics(outs[0]), _metrics(outs[1])
    assert (m2["mc/acc"], m2["sums/exact_match"]) == (m1["mc/acc"], m1["sums/exact_match"])


GROUP_YAML = """group: toy_group
task:
  - toy_mc
  - toy_mc_small
aggregate_metric_list:
  - metric: acc
    weight_by_size: {weighted}
  - metric: acc_norm
    weight_by_size: {weighted}
"""


def _group(tasks: Path, weighted: bool) -> Path:
    _jsonl(tasks / "mc_small.jsonl", QUESTIONS[:5])
    (tasks / "toy_mc_small.yaml").write_text(
        MC_YAML.replace("task: toy_mc", "task: toy_mc_small").replace("mc.jsonl",
                                                                      "mc_small.jsonl"),
        encoding="utf-8")
    name = "toy_group" if weighted else "toy_group_unweighted"
    path = tasks / f"{name}.yaml"
    path.write_text(GROUP_YAML.replace("toy_group", name).format(weighted=weighted),
                    encoding="utf-8")
    return path


def test_a_group_pools_its_tasks_documents_as_lm_eval_weights_them(tmp_path, tiny_model_dir,
                                                                    tasks):
    """A group (MMLU's shape: its tasks averaged weighted by size) is one set of all its
    documents, ids <task>/<doc>: its accuracy is lm-eval's group score."""
    yaml = _group(tasks, weighted=True)
    suite = _suite(tmp_path, tiny_model_dir,
                   f'\n[eval.sets.g]\nlm_eval_task = "{yaml}"\nnum_fewshot = 1\n')
    run = cli_run(suite, tmp_path / "out")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", dtype="float32")
    with contextlib.chdir(tasks):
        out = simple_evaluate(model=lm, tasks=["toy_group"], num_fewshot=1, log_samples=True,
                              bootstrap_iters=0,
                              task_manager=TaskManager(include_path=str(tasks),
                                                       include_defaults=False))
    m = _metrics(run)
    assert m["g/acc"] == pytest.approx(out["results"]["toy_group"]["acc,none"], rel=1e-12)
    assert m["g/acc_norm"] == pytest.approx(out["results"]["toy_group"]["acc_norm,none"],
                                            rel=1e-12)
    rows = [json.loads(line) for line in (run / "predictions.jsonl").open(encoding="utf-8")]
    ours = {r["id"]: r["acc"] for r in rows if r["set"] == "g"}
    theirs = {f"{task}/{s['doc_id']}": s["acc"]
              for task in ("toy_mc", "toy_mc_small") for s in out["samples"][task]}
    assert ours == theirs and len(ours) == len(QUESTIONS) + 5


def test_a_group_not_weighted_by_size_is_refused(tmp_path, tiny_model_dir, tasks):
    yaml = _group(tasks, weighted=False)
    suite = _suite(tmp_path, tiny_model_dir, f'\n[eval.sets.g]\nlm_eval_task = "{yaml}"\n')
    res = runner.invoke(app, ["run", str(suite), "--out", str(tmp_path / "out")])
    _one_line_exit_2(res, "eval.sets.g.lm_eval_task", "weighted by size")


def test_an_interrupted_run_with_a_task_resumes(suite_dir, tasks, monkeypatch):
    """SIGTERM during the adapter's evaluation, then `harness resume`: the zero-shot arm's
    task rows are kept as journaled, the adapter is scored on the task, and the task's
    accuracy is paired."""
    from harness.run import pipeline

    suite = suite_dir / "tiny.toml"
    suite.write_text(suite.read_text(encoding="utf-8") + f'''
[eval.sets.mc]
lm_eval_task = "{tasks / 'toy_mc.yaml'}"
num_fewshot = 2
''', encoding="utf-8")
    real = pipeline._eval_arm

    def interrupted(*a, **k):
        if a[1] == "lora":
            raise KeyboardInterrupt("SIGTERM")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "_eval_arm", interrupted)
    res = runner.invoke(app, ["run", str(suite), "--out", str(suite_dir / "out"), "--set",
                              "train.max_steps=4"])
    assert res.exit_code == 1, res.output
    (failed,) = list((suite_dir / "out" / "tiny").iterdir())
    before = _rows(failed, "mc")
    monkeypatch.setattr(pipeline, "_eval_arm", real)
    res = runner.invoke(app, ["resume", str(failed)])
    assert res.exit_code == 0, res.output
    record = json.loads((failed / "run.json").read_text(encoding="utf-8"))
    assert record["status"] == "success"
    assert _rows(failed, "mc") == before and len(_rows(failed, "mc", "lora")) == len(QUESTIONS)
    assert any(c["metric"] == "mc/acc" and c["test"] == "mcnemar-exact"
               for c in record["comparisons"])


def test_a_skipped_metric_and_an_unapplied_num_fewshot_are_warnings(tmp_path, tiny_model_dir,
                                                                    tasks):
    """A task that fixes 0 few-shot examples keeps 0 (as lm-eval does) and the run says so;
    a metric with an aggregation harness cannot pair is named, the others are scored."""
    yaml = tasks / "toy_fixed.yaml"
    yaml.write_text(MC_YAML.replace("task: toy_mc", "task: toy_fixed").replace(
        "  - metric: acc_norm\n", "  - metric: acc_norm\n    aggregation: median\n")
        + "num_fewshot: 0\n", encoding="utf-8")
    suite = _suite(tmp_path, tiny_model_dir,
                   f'\n[eval.sets.f]\nlm_eval_task = "{yaml}"\nnum_fewshot = 2\n')
    run = cli_run(suite, tmp_path / "out")
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    said = record["warnings"]
    assert any("eval.sets.f: lm-eval metric(s) not scored" in w and
               "acc_norm (aggregation median)" in w for w in said), said
    assert any("eval.sets.f.num_fewshot = 2 is not applied: toy_fixed" in w for w in said)
    assert "f/acc" in record["arms"]["baseline"]["metrics"]
    assert "f/acc_norm" not in record["arms"]["baseline"]["metrics"]
    assert all(r["prompt"].startswith("Question:") for r in _rows(run, "f"))  # no examples
    assert record["data"]["eval_sets"]["f"]["num_fewshot"] == 0
