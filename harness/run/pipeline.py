"""The only orchestrator. A run reads top to bottom:

    preflight (no weights; bad input raises before anything is written)
    -> run dir -> env -> data -> tokenizer -> base model -> zero-shot eval
    -> per adapter arm: fresh base -> LoRA -> train -> save -> eval -> model card -> stats
    -> run.json + predictions.jsonl (+ train_log.jsonl written live) -> reports -> finalize

A crash at any stage still writes a `failed` record with the error and everything measured
before it; a failing sweep cell is recorded as a failed arm and the other cells go on. Each
measured arm is journaled into the staging folder (harness/rundir/journal.py), so a killed run
goes on with `harness resume`, skipping the arms in ``run.done``.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import metrics as M
from harness.errors import (
    InputError,
    RunInterrupted,
)
from harness.run import (
    adapterload,
    cache,
    distributed,
    encoding,
    evaluation,
    exports,
    logs,
    memory,
    modeling,
    noop,
    pairing,
    preflight,
    resume,
    train,
)
from harness.run import env as environment
from harness.run.evaluation import ArmEval
from harness.run.preflight import Preflight
from harness.run.progress import NullProgress, Progress
from harness.rundir import record, results
from harness.rundir.journal import MODEL_KEY, Journal
from harness.rundir.record import Status
from harness.stats import measured
from harness.stats import paired as stats
from harness.suite import arms, config, data
from harness.suite.config import Suite
from harness.tracking import dispatch
from harness.views import modelcard, report, templating

if TYPE_CHECKING:
    from harness.suite.sweep import Shard


@dataclass
class _Run:
    """Mutable state of one run while it is being written."""

    suite: Suite
    dir: results.RunDir
    progress: Progress
    journal: Journal  # progress saved as it goes, for `harness resume`
    stage: str = "setup"
    started: float = field(default_factory=time.time)
    record: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    model_content: str | None = None  # modeling.model_identity(): the baseline cache's key
    # How every arm is scored and what the zero-shot cache key holds: the suite's [eval], then
    # its max_new_tokens fitted to the model's context (_fit_generation).
    eval_spec: config.EvalSpec = field(init=False)
    sets: list[data.EvalSet] = field(default_factory=list)  # [eval.sets.*], every arm scores
    done: set[str] = field(default_factory=set)  # arms a resumed run measured before
    base_name: str = ""  # the base model as the suite names it (ModelSource.label)

    def __post_init__(self) -> None:
        self.eval_spec = self.suite.eval


def run_suite(suite: Suite, out_dir: Path, progress: Progress | None = None,
              shard: Shard | None = None, *, source: Path | None = None,
              resumed: resume.Resumed | None = None) -> record.RunOutcome:
    """``shard`` (``--shard I/N``): only that shard's adapter arms; see harness/merge.py.
    ``source``: the suite file (`harness resume` refuses it once edited). ``resumed``
    (resume.load): a killed run to continue in its own folder, its measured arms kept."""
    try:
        results.check_writable(Path(out_dir) / suite.name)  # before anything is computed
        checked = preflight.sharded(preflight.check(suite), shard)
        run = _start(suite, out_dir, checked, progress or NullProgress(), source, resumed)
    except BaseException:
        if resumed is not None:  # refused before it started: another try may take it
            resumed.release()
        raise
    leftovers = results.dead_partials(Path(out_dir) / suite.name)
    if shard is not None:
        run.record["shard"] = shard.as_record([name for name, _ in checked.arms])
    for text in checked.warnings:
        run.progress.warn(text)
    for folder in leftovers:
        _warn(run, f"{folder}: left by a run that was killed before it could write its record; "
                   f"continue it with `harness resume {folder}`, or delete it")
    run.journal.save(run.record)  # from here on a killed run can be resumed
    try:
        with logs.library_output_to(run.dir.path / logs.LOG_FILE):
            _execute(run, checked)
        run.record["status"] = record.overall_status(run.record)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - any crash becomes a record
        run.record["status"] = Status.FAILED
        run.record["error"] = _error(e, run.stage)
        for arm in run.record["arms"].values():
            if arm.get("status") == Status.RUNNING:
                _arm_failed(arm, e, run.stage)
        if isinstance(e, KeyboardInterrupt):  # tracked once `harness resume` finishes it
            path = _save(run, track=False).path
            raise RunInterrupted(f"interrupted by {str(e) or 'SIGINT'}: the run was recorded as "
                                 f"failed in {path}; continue it with `harness resume "
                                 f"{path}`") from e
    return _save(run)


def _start(suite: Suite, out_dir: Path, checked: Preflight, progress: Progress,
           source: Path | None, resumed: resume.Resumed | None) -> _Run:
    """A new run in a new staging folder, or the resumed one back in its own with the
    record, predictions and arms it had measured."""
    if resumed is not None:
        journal, staged = resumed.journal, resumed.claim(checked.loaded_splits, checked.sets)
        return _Run(suite, staged, progress, journal, sets=checked.sets, started=journal.started,
                    record=resumed.record, predictions=resumed.predictions,
                    done=set(journal.done))
    staged = results.create_run_dir(out_dir, suite.name)
    run = _Run(suite, staged, progress, Journal.begin(staged, suite, source),
               sets=checked.sets)
    run.record = _skeleton(run, checked)
    run.dir.write_text(results.TRAIN_LOG_FILE, "")  # exists (empty) for eval-only runs too
    return run


def _execute(run: _Run, checked: Preflight) -> None:
    suite, p = run.suite, run.progress
    run.stage = "load"
    src = checked.source
    run.base_name = src.label  # what adapters and model cards say they were trained on
    fresh = src.converted is not None and not src.converted.exists()
    p.stage(f"loading {src.label}" + (" (converting GGUF once, ~40 s)" if fresh else ""))
    path = modeling.ensure_converted(src)
    device = modeling.pick_device(suite.model)
    if device == "cpu":  # every eval phase allocates alike, after a training or not
        memory.steady_allocator()
    run.record["env"] = environment.describe(device, suite.base_dir)
    identity = modeling.model_identity(suite.model, src, suite.base_dir)
    run.record[MODEL_KEY] = identity.as_record()  # `harness resume` compares it
    if suite.eval.cache_baseline:
        run.model_content = identity.content
        if run.model_content is None:
            _warn(run, f"zero-shot cache off: cannot tell which commit {src.label} resolves to")
    tok = modeling.load_tokenizer(suite.model, path)
    enc_eval, enc_val, enc_train = _encode(run, checked.loaded_splits, tok)
    run.eval_spec = _fit_generation(run, modeling.context_length(suite.model, path), enc_eval)
    base = modeling.LazyModel(lambda: modeling.load_model(suite.model, path, device))
    run.stage = f"eval:{arms.BASELINE}"
    if arms.BASELINE not in run.done:  # run.done: arms a resumed run had measured already
        _zero_shot(run, arms.BASELINE, suite, base, tok, enc_eval, checked.loaded_splits,
                   device, checked)
        _done(run, arms.BASELINE)
    for name, variant, vsplits in checked.variants:
        if name in run.done:
            continue
        run.stage = f"eval:{name}"
        enc, _ = encoding.encode_all(vsplits.eval, tok, variant.data)
        _zero_shot(run, name, variant, base, tok, enc, vsplits, device, checked)
        _compare(run, name)
        _done(run, name)
    _existing_arms(run, checked, base, tok, enc_eval, (path, device))
    del base
    for name, cell in checked.arms:
        if name not in run.done:
            _train_arm(run, name, cell, path, tok, device, (enc_train, enc_val, enc_eval),
                       checked.loaded_splits)
    _export_arms(run, checked, path, tok, enc_eval, device)
    _compare_seeds(run)


def _fit_generation(run: _Run, context: int | None, items) -> config.EvalSpec:
    """max_new_tokens beyond the model's context would generate until memory or patience ran
    out (1e9 was accepted): cap it at what fits after the longest eval prompt, and say so."""
    spec = run.suite.eval
    longest = max((e.prompt_len for e in items), default=0)
    if not spec.generate or context is None or longest + spec.max_new_tokens <= context:
        return spec
    cap = max(1, context - longest)
    _warn(run, f"eval.max_new_tokens = {spec.max_new_tokens:,} does not fit the model's context "
               f"of {context:,} tokens after the longest eval prompt ({longest:,} tokens): "
               f"generating at most {cap:,} new tokens")
    run.record["eval_limits"] = {"max_new_tokens": cap, "context_length": context}
    return spec.model_copy(update={"max_new_tokens": cap})


def _zero_shot(run: _Run, name: str, suite: Suite, base: modeling.LazyModel, tok: Any, enc, splits,
               device: str, checked: Preflight) -> None:
    with_sets = name == arms.BASELINE  # a template variant of [data] only: the sets are
    # the base model's own zero-shot rows already
    fields = _cache_fields(run, name, suite, checked, device, with_sets)
    ids = [ex.id for ex in splits.eval] + [
        ex.id for s in (run.sets if with_sets else []) for ex in s.examples]
    hit = cache.load(fields, ids) if fields is not None else None
    if hit is not None:
        arm, rows = hit
        run.progress.stage(f"{name}: reusing the cached zero-shot evaluation")
        # source: entries cached before zero-shot arms recorded one have none
        run.record["arms"][name] = {**arm, "source": arms.ZERO_SHOT, "cached": True,
                                    measured.KEY: {**(arm.get(measured.KEY) or {}),
                                                   "cached": True}}
        run.predictions += rows
        return
    result = _eval_arm(run, name, base.get(), tok, enc, splits.eval, device, with_sets)
    arm = _record_arm(run, name, result, source=arms.ZERO_SHOT)
    if fields is not None and arm["status"] == Status.SUCCESS:  # a NaN baseline is not reused
        if distributed.is_main():  # one writer: every rank computed the same rows
            _store(run, fields, arm, list(result.rows))


def _store(run: _Run, fields: dict[str, Any], arm: dict[str, Any], rows: list[Any]) -> None:
    """A cache that cannot be written (read-only, ``HARNESS_CACHE`` a file, a full disk)
    only loses the reuse: the run goes on and says so."""
    try:
        cache.store(fields, arm, rows)
    except OSError as e:
        _warn(run, f"zero-shot cache not written ({cache.describe_failure(e)}); the run goes "
                   "on without caching")


def _cache_fields(run: _Run, name: str, suite: Suite, checked: Preflight,
                  device: str, with_sets: bool) -> dict[str, Any] | None:
    """The baseline cache key, or None when caching is off or the weights' identity is not
    knowable (a hub model whose commit cannot be resolved): then nothing is reused."""
    if not suite.eval.cache_baseline or run.model_content is None:
        return None
    return cache.baseline_key_fields(suite, run.eval_spec, checked.source, device,
                                     checked.loaded_splits.eval_fingerprint, variant=name,
                                     content=run.model_content,
                                     sets=run.sets if with_sets else [])


def _encode(run: _Run, splits: data.DataSplits, tok: Any):
    spec = run.suite.data
    enc_eval, s_eval = encoding.encode_all(splits.eval, tok, spec)
    enc_val, s_val = encoding.encode_all(splits.validation, tok, spec, drop_longer=spec.drop_longer)
    enc_train, s_train = encoding.encode_all(splits.train, tok, spec, drop_longer=spec.drop_longer)
    if spec.drop_longer:  # train_size counts examples that fit
        enc_train = data.train_after_drop_longer(run.suite, enc_train, len(splits.train))
    run.record["data"]["lengths"] = {"train": s_train, "validation": s_val, "eval": s_eval}
    run.record["data"]["n_train"] = len(enc_train)
    return enc_eval, enc_val, enc_train


# ---------------------------------------------------------------- arms


def _train_arm(run: _Run, name: str, cell: Suite, path: str, tok: Any, device: str,
               enc: tuple, splits: data.DataSplits) -> None:
    enc_train, enc_val, enc_eval = enc
    assert cell.train is not None
    run.record["arms"][name] = {"model": run.suite.model.label, "adapter": None,
                                "source": arms.TRAINED, "metrics": {}, "status": Status.RUNNING}
    try:
        # The checkpoints outlive training until the arm is measured: a run killed during
        # this arm's eval resumes from the last one (0 steps left) instead of retraining.
        with run.dir.scratch(name) as checkpoints:
            run.stage = f"train:{name}"
            steps = train.schedule(cell.train, len(enc_train)).total_steps
            model = adapterload.attach_adapter(
                modeling.load_model(cell.model, path, device), cell.train,
                cell.model.quantization, total_steps=steps, base_folder=Path(path))
            trainable, total = modeling.count_params(model)
            with memory.PeakMemory(device, model) as peak:
                result = _fit(run, name, cell.train, model, tok, (enc_train, enc_val), device,
                              checkpoints, steps)
            adapterload.name_base(result.model, run.base_name)
            adapter, size = run.dir.save_adapter(name, result.model)
            run.record["training"][name] = {
                **result.summary, "trainable_params": trainable, "total_params": total,
                "adapter_bytes": size, "peak_train_memory_bytes": peak.bytes,
                "config": {**config.dump(cell)["train"], **cell.train.knobs}}
            run.stage = f"eval:{name}"
            model, merged = _for_eval(result.model, cell)
            evaluated = _eval_arm(run, name, model, tok, enc_eval, splits.eval, device)
            _write_model_card(run, name, cell, M.finite(evaluated.metrics)[0])
            _record_arm(run, name, evaluated, adapter=adapter, source=arms.TRAINED,
                        merged_for_eval=merged)
            _flag_noop(run, name, run.dir.path / adapter)
            _compare(run, name)
            _done(run, name)
    except Exception as e:  # noqa: BLE001 - a failing sweep cell must not stop the others
        if run.suite.sweep is None or isinstance(e, InputError):
            raise
        _arm_failed(run.record["arms"][name], e, run.stage)


def _existing_arms(run: _Run, checked: Preflight, base: modeling.LazyModel, tok: Any,
                   enc_eval, where: tuple[str, str]) -> None:
    """Every existing adapter on the one zero-shot base: the first wraps it (peft), the others
    are loaded beside it and switched to, so the base's weights load once for all of them
    (harness/adapterload.py). An adapter whose file also held base weights that differ
    from the suite's model is scored with them (as peft loads it alone) and leaves a freshly
    loaded base to the arms after it: no arm's numbers depend on the arms before it."""
    path, device = where
    shared = adapterload.SharedBase(base, run.suite.model.label, lambda text: _warn(run, text))
    for ad in checked.existing:
        if ad.name in run.done:
            continue
        run.stage = f"eval:{ad.name}"
        try:
            model, own_tok, folder = adapterload.load(ad, shared, run.suite.model, path, device)
            items = (encoding.encode_all(checked.loaded_splits.eval, own_tok, run.suite.data)[0]
                     if own_tok is not None else enc_eval)
            evaluated = _eval_arm(run, ad.name, model, own_tok or tok, items,
                                  checked.loaded_splits.eval, device)
            _record_arm(run, ad.name, evaluated, adapter=ad.source, source=arms.EXISTING,
                        origin=adapterload.origin(ad, model, folder))
            _flag_noop(run, ad.name, folder)
            _compare(run, ad.name)
            _done(run, ad.name)
        except Exception as e:  # noqa: BLE001 - one broken adapter must not stop the others
            arm = run.record["arms"].setdefault(ad.name, {
                "model": run.suite.model.label, "adapter": ad.source, "source": arms.EXISTING,
                "metrics": {}})
            _arm_failed(arm, e, run.stage)


def _export_arms(run: _Run, checked: Preflight, path: str, tok: Any, enc_eval, device: str
                 ) -> None:
    """[[exports]]: each adapter arm's export built, evaluated as arm <from>+<format> and
    paired against its source (how much of the gain it keeps). A source arm that did not
    succeed here (it failed, or another shard trains it) has nothing to export: a warning."""
    for spec in run.suite.exports:
        name, source = spec.arm, run.record["arms"].get(spec.from_) or {}
        if name in run.done:
            continue
        if source.get("status") != Status.SUCCESS:
            _warn(run, f"export {name}: arm {spec.from_} was not evaluated here; not exported")
            continue
        run.stage = f"export:{name}"
        folder = exports.source_folder(source, run.dir.path)
        assert folder is not None, "a successful adapter arm has its folder"
        # Under torchrun every rank builds its own copy to evaluate; rank 0 alone keeps it.
        keep = (run.dir.path / results.EXPORTS_DIR / name
                if spec.keep and distributed.rank() == 0 else None)
        built = exports.build(spec.format, run.suite.model, path, folder, tok, device, keep)
        run.stage = f"eval:{name}"
        evaluated = _eval_arm(run, name, built.model, tok, enc_eval,
                              checked.loaded_splits.eval, device)
        _record_arm(run, name, evaluated, adapter=None, source=arms.EXPORT,
                    export={**built.info, "from": spec.from_})
        _compare(run, name)
        run.record.setdefault("export_comparisons", []).append(
            pairing.export_comparison(run.record, run.predictions, name, spec.from_,
                                      _settings(run.suite)))
        _done(run, name)


def _flag_noop(run: _Run, name: str, folder: Path | None) -> None:
    """An adapter whose weights make no update, or whose per-item losses are the zero-shot
    arm's: a loud warning, and ``noop`` on the arm, which gate fails unless --allow-noop."""
    rows = [r for r in run.predictions if r["arm"] in (name, arms.BASELINE)]
    reason = noop.zero_update(folder) or noop.same_losses(
        [r for r in rows if r["arm"] == arms.BASELINE], [r for r in rows if r["arm"] == name])
    if reason:
        run.record["arms"][name]["noop"] = reason
        _warn(run, record.noop_warning(name, reason))


def _for_eval(model: Any, cell: Suite) -> tuple[Any, bool]:
    """The adapter is saved already, so it can be merged in place for a faster eval; 4/8-bit
    weights cannot take the merge without re-quantizing, so those stay unmerged."""
    if cell.eval.merge_adapter and not cell.model.quantization:
        return model.merge_and_unload(), True
    return model, False


def _done(run: _Run, name: str) -> None:
    """The arm is measured: journal it with its rows, so `harness resume` keeps it."""
    run.journal.arm_done(name, run.record, [r for r in run.predictions if r["arm"] == name])


def _arm_failed(arm: dict[str, Any], e: BaseException, stage: str) -> None:
    arm["status"] = Status.FAILED
    arm["error"] = _error(e, stage)


def _fit(run: _Run, name: str, spec: config.TrainSpec, model: Any, tok: Any, enc: tuple,
         device: str, checkpoints: Path, steps: int | None) -> train.TrainResult:
    """Train ``steps`` optimizer steps (the schedule's) with the checkpoints in
    ``checkpoints``, a scratch folder of the run (the adapter is saved from the returned
    model), and TensorBoard's events in the run. A checkpoint already there was left by a
    killed run of this arm: training continues from it."""
    enc_train, enc_val = enc
    run.progress.stage(f"training {name}: {len(enc_train)} examples, {steps} optimizer steps")
    advance = run.progress.task(f"train {name}", steps)
    cut = train.newest_checkpoint(checkpoints)
    if cut is not None:
        run.progress.stage(f"{name}: continuing from the checkpoint at step {cut.step}")
        advance(cut.step)
    def fit() -> train.TrainResult:
        return train.train_adapter(
            model, tok, spec, arm=name, train_items=enc_train, val_items=enc_val,
            output_dir=checkpoints, device=device,
            tensorboard_dir=run.dir.path / results.TENSORBOARD_DIR / name,
            log_row=lambda row: _log_step(run, row, advance),
            on_step=lambda: advance(1),
            checkpoint_steps=train.checkpoint_steps(spec, steps),
            resume_from=cut.path if cut is not None else None,
        )

    # on a CPU, training's heap must not become the next eval's (memory.in_training_arena)
    return memory.in_training_arena(fit) if device == "cpu" else fit()


def _write_model_card(run: _Run, name: str, cell: Suite, metrics: dict[str, Any]) -> None:
    """adapters/<arm>/README.md: the hub's card format, a view of the arm's numbers beside
    the zero-shot ones, rendered like the reports."""
    base = run.record["arms"][arms.BASELINE]["metrics"]
    # the zero-shot speed and memory, marked when another process measured them
    mark = measured.mark(measured.of(run.record, arms.BASELINE),
                         measured.block(run.record.get("env") or {}))
    rows = [(k, base[k], v, mark if measured.is_system(k) else None) for k, v in metrics.items()
            if isinstance(v, (int, float)) and isinstance(base.get(k), (int, float))]
    assert cell.train is not None
    front = modelcard.front_matter(run.record, arm=name, base_model=run.base_name,
                                   method=cell.train.method, metrics=metrics)
    text = templating.render("model_card.md.j2", front_matter=front,
                             suite=cell.name, arm=name, train=cell.train, rows=rows)
    run.dir.write_text(f"{results.ADAPTERS_DIR}/{name}/{results.MODEL_CARD_FILE}", text)


def _log_step(run: _Run, row: dict[str, Any], advance) -> None:
    run.dir.append_jsonl(results.TRAIN_LOG_FILE, row)
    shown = [f"{k.replace('_', ' ')} {row[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate")
             if isinstance(row.get(k), (int, float))]
    if shown:
        advance(0, info=", ".join(shown))


def _record_arm(run: _Run, name: str, result: ArmEval, **entry: Any) -> dict[str, Any]:
    run.predictions += result.rows
    metrics, bad = M.finite(result.metrics)
    arm = {"model": run.suite.model.label, "adapter": None, "source": None, **entry,
           "status": Status.SUCCESS, "metrics": metrics,
           measured.KEY: measured.block(run.record.get("env") or {})}
    if bad:
        _non_finite(run, name, arm, bad)
    run.record["arms"][name] = arm
    return arm


def _non_finite(run: _Run, name: str, arm: dict[str, Any], bad: dict[str, str]) -> None:
    """A NaN / inf quality metric (NaN adapter weights, a diverged training run) fails the
    arm: it measured nothing, and a gate must not pass it. A non-finite speed or memory (a
    timer that read 0 s) only warns. Either way the arm's ``non_finite`` names them."""
    arm["non_finite"] = bad
    said = ", ".join(f"{k} = {v}" for k, v in bad.items())
    if all(M.base(k) in M.SYSTEM_KEYS for k in bad):
        _warn(run, f"arm {name}: {said} is not finite; recorded as null")
        return
    arm["status"] = Status.FAILED
    arm["error"] = {"type": "NonFiniteMetric", "stage": run.stage, "traceback": None,
                    "message": f"arm {name}: {said}: not finite (NaN adapter weights or a "
                               "diverged training run?); recorded as null"}


def _eval_arm(run: _Run, name: str, model: Any, tok: Any, items, examples, device: str,
              with_sets: bool = True) -> ArmEval:
    """The suite's own items (encoded with this arm's tokenizer) and every extra set."""
    spec = run.eval_spec
    own = evaluation.Target(None, examples, items, tuple(spec.metrics))
    extra = _set_targets(run, tok) if with_sets else []
    return evaluation.evaluate(model, tok, [own, *extra], spec, arm=name, device=device,
                               task=run.progress.task)


def _set_targets(run: _Run, tok: Any) -> list[evaluation.Target]:
    """[eval.sets.*], encoded with ``tok`` (an existing adapter may bring its own)."""
    return [evaluation.set_target(s, tok) for s in run.sets]


def _compare(run: _Run, name: str) -> None:
    if run.record["arms"][name].get("status") == Status.FAILED:  # a NaN loss: nothing to pair
        return
    run.record["comparisons"] += pairing.arm_comparisons(run.record, run.predictions, name,
                                                 _settings(run.suite))


def _settings(suite: Suite) -> config.StatsSettings:
    return suite.stats


def _compare_seeds(run: _Run) -> None:
    run.record["seed_comparisons"] += pairing.seed_comparisons(run.record, run.predictions,
                                                       _settings(run.suite))


# ---------------------------------------------------------------- record


def _skeleton(run: _Run, checked: Preflight) -> dict[str, Any]:
    s = run.suite
    return dict(record.skeleton(
        suite=s.name, run_id=run.dir.final.name, config=config.dump(s),
        data={**checked.loaded_splits.summary(), **_sets_summary(checked.sets)},
        stats=stats.stats_record(s.stats.n_resamples, s.stats.seed, s.stats.alpha),
        warnings=checked.warnings, started_at=record.iso_time(run.started)))


def _sets_summary(sets: list[data.EvalSet]) -> dict[str, Any]:
    if not sets:
        return {}
    return {"eval_sets": {s.name: {**s.summary(), "metrics": list(s.metrics),
                                   "forgetting": s.spec.forgetting}
                          for s in sets}}


def _warn(run: _Run, text: str) -> None:
    if text not in run.record["warnings"]:  # a resumed run says the same things again
        run.record["warnings"].append(text)
    run.progress.warn(text)


def _error(e: BaseException, stage: str) -> dict[str, Any]:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return {"type": type(e).__name__, "message": str(e) or type(e).__name__, "stage": stage,
            "traceback": "".join(tb[-8:])}


def _save(run: _Run, track: bool = True) -> record.RunOutcome:
    now = time.time()
    rec = run.record
    rec["finished_at"] = record.iso_time(now)
    rec["wall_time_s"] = round(now - run.started, 2)
    if rec["status"] == Status.FAILED and rec["error"] is None:
        failed = [a for a in rec["arms"].values() if a.get("error")]
        rec["error"] = failed[0]["error"] if failed else None
    try:
        record.save(run.dir, rec, run.predictions, report.render_into)
        if track:
            _track(run)
    except OSError as e:
        record.save_failed_write(run.dir, rec, e, _error(e, "write"))
    if rec["status"] == Status.SUCCESS:
        run.journal.close()  # a failed run keeps its working files: `harness resume` reads them
    return record.RunOutcome(path=run.dir.finalize(), record=rec)


def _track(run: _Run) -> None:
    """The written run, sent to the trackers [tracking] names; one that fails is a warning,
    kept by writing the record again through its one writer."""
    spec = run.suite.tracking
    if not spec.configured or not distributed.is_main():
        return
    with logs.library_output_to(run.dir.path / logs.LOG_FILE):  # MLflow's database set-up
        failed = dispatch.log_run(run.dir.path, run.record, spec.resolved(run.suite.resolve),
                                  note=run.progress.stage)
    for text in failed:
        _warn(run, text)
    if failed:
        record.save(run.dir, run.record, run.predictions, report.render_into)
