"""Preflight: everything a run, `harness plan` and `harness validate` can check before a
weight loads (the model source and config, the data, the sweep's arm names, LoRA targets
against the meta-device model, existing adapters); bad input raises an InputError subclass
before anything is written."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.errors import DatasetUnavailable, InputError, ModelUnavailable
from harness.run import adapters, ggufwriter, modeling, shapes
from harness.suite import arms, data, suitefile, sweep
from harness.suite.config import Suite
from harness.tracking import dispatch as tracking

if TYPE_CHECKING:
    from harness.suite.sweep import Shard


@dataclass(frozen=True)
class Preflight:
    source: modeling.ModelSource
    splits: data.DataSplits | None  # None: a hub dataset that could not be reached (validate)
    arms: list[tuple[str, Suite]]
    variants: list[tuple[str, Suite, data.DataSplits]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # suspicious but runnable
    unchecked: list[str] = field(default_factory=list)  # what needs a network it has not got
    existing: list[adapters.ExistingAdapter] = field(default_factory=list)
    sets: list[data.EvalSet] = field(default_factory=list)  # [eval.sets.*]

    @property
    def loaded_splits(self) -> data.DataSplits:
        """The splits a run uses (only validate, with offline_ok, goes on without them)."""
        assert self.splits is not None, "preflight without offline_ok loads the data"
        return self.splits

    def __str__(self) -> str:
        s = self.splits
        items = (f"{len(s.train)} train / {len(s.validation)} validation / {len(s.eval)} eval "
                 "items" if s else "data not checked")
        extra = f", {len(self.existing)} existing adapter(s)" if self.existing else ""
        return f"model {self.source.label}; {items}; {len(self.arms)} adapter arm(s){extra}"


def check(suite: Suite, offline_ok: bool = False) -> Preflight:
    """Everything that can be checked without loading weights; raises InputError subclasses.
    ``offline_ok`` (validate): a hub dataset or model config that cannot be reached is listed
    in ``unchecked`` instead of failing, and everything else is still checked."""
    absent = tracking.missing(suite.tracking)
    if absent:  # before any data is read: the run could not say where its numbers went
        raise InputError("\n".join(absent))
    source = modeling.resolve_source(suite)
    unchecked: list[str] = []
    splits = _unless_unreachable(lambda: data.load_splits(suite), offline_ok, unchecked)
    cells = sweep.expand(suite)
    _check_arm_names(suite, cells)
    _check_kernels(cells)
    shape = None
    if cells or suite.adapters:
        shape = _unless_unreachable(lambda: shapes.model_shape(suite.model, source), offline_ok,
                                    unchecked)
    if shape is not None:
        _check_targets(shape, cells)
        _check_gguf(suite, shape)
    existing = [a for a in (_unless_unreachable(lambda s=spec: adapters.inspect(suite, s, shape),
                                                offline_ok, unchecked)
                            for spec in suite.adapters) if a is not None]
    variants = _variants(suite, splits) if splits else []
    sets = _unless_unreachable(lambda: data.load_eval_sets(suite), offline_ok, unchecked) or []
    warnings = (_suite_warnings(suite) + _precision_warnings(cells)
                + [w for a in existing for w in a.warnings]
                + [w for s in sets if s.task is not None for w in s.task.warnings])
    return Preflight(source, splits, cells, variants, warnings, unchecked, existing, sets)


def sharded(checked: Preflight, shard: Shard | None) -> Preflight:
    """Shard I/N of a sweep trains the adapter arms I, I+N, I+2N, ... of ``sweep.expand`` and
    evaluates the existing adapters in shard 0 only; every shard evaluates the zero-shot arms
    (the cache makes that free where shards share it), so each one is a complete run."""
    if shard is None:
        return checked
    return dataclasses.replace(
        checked, arms=[arm for i, arm in enumerate(checked.arms) if shard.takes(i)],
        existing=checked.existing if shard.index == 0 else [])


def _check_arm_names(suite: Suite, cells: list[tuple[str, Suite]]) -> None:
    clash = sorted({a.name for a in suite.adapters} & {name for name, _ in cells})
    if clash:
        raise InputError(f"adapters: {clash} also name trained arms; give the existing "
                         "adapters other names")
    _check_exports(suite, [name for name, _ in cells] + [a.name for a in suite.adapters])


def _check_exports(suite: Suite, adapter_arms: list[str]) -> None:
    """Each export names an adapter arm of this run, once per format."""
    for i, e in enumerate(suite.exports):
        if e.from_ not in adapter_arms:
            raise InputError(f"exports[{i}].from = {e.from_!r}: no such adapter arm; this run "
                             f"has {', '.join(adapter_arms) or 'none'}")
    arms_made = [e.arm for e in suite.exports]
    twice = sorted({a for a in arms_made if arms_made.count(a) > 1})
    if twice:
        raise InputError(f"exports: {twice} asked for more than once")


def _check_gguf(suite: Suite, shape: shapes.ModelShape) -> None:
    """A GGUF export of a model the writer cannot map is refused before anything runs."""
    gguf = [e for e in suite.exports if e.format in ggufwriter.FORMATS]
    if gguf and shape.model_type not in ggufwriter.ARCHITECTURES:
        raise InputError(f"exports: {gguf[0].format} of a {shape.model_type} model: the GGUF "
                         f"writer maps {', '.join(ggufwriter.ARCHITECTURES)} models; "
                         "merged, merged-nf4 and merged-int8 work for any")


LIGER_INSTALL = "pip install 'harness[gpu]'"


def _check_kernels(cells: list[tuple[str, Suite]]) -> None:
    """train.liger needs Liger's package and a CUDA device (its kernels are Triton): refused
    before the baseline is evaluated, not at the Trainer's start minutes later."""
    for _, cell in cells:
        if cell.train is None or not cell.train.liger:
            continue
        why = []
        if not tracking.importable("liger_kernel"):
            why.append(f"the liger-kernel package is not installed ({LIGER_INSTALL})")
        device = modeling.pick_device(cell.model)
        if device != "cuda":
            where = "model.device = 'cpu'" if cell.model.device == "cpu" else "no CUDA GPU here"
            why.append(f"its Triton kernels run on a CUDA GPU only ({where})")
        if why:
            raise InputError(f"train.liger: {'; '.join(why)}; or set train.liger = false")


def _unless_unreachable(check, offline_ok: bool, unchecked: list[str]):
    try:
        return check()
    except (DatasetUnavailable, ModelUnavailable, adapters.AdapterUnavailable) as e:
        if not offline_ok:
            raise
        unchecked.append(str(e))
        return None


def _check_targets(shape: shapes.ModelShape, cells: list[tuple[str, Suite]]) -> None:
    """Target modules against the model's real layer names (meta device, no weights), so a
    typo fails before the baseline is evaluated, not after (ia3's default: peft's table)."""
    for _, cell in cells:
        assert cell.train is not None
        targets = cell.train.knob("target_modules")
        if targets is not None:
            picked, _ = shapes.lora_targets(shape, targets)
            if cell.train.liger and shape.output_layer in {x.name for x in picked}:
                raise InputError(
                    f"train.liger: its fused cross-entropy multiplies by the LM head's base "
                    f"weight and would leave out an adapter on {shape.output_layer}; drop it "
                    "from train.target_modules or set train.liger = false")


def _variants(suite: Suite, splits: data.DataSplits) -> list[tuple[str, Suite, data.DataSplits]]:
    """The suite once per extra baseline template, on the same eval items."""
    out = []
    for name, template in suite.eval.baseline_templates.items():
        variant = suitefile.with_overrides(suite, {"data.prompt_template": template})
        vsplits = data.load_splits(variant)
        assert [e.id for e in vsplits.eval] == [e.id for e in splits.eval]  # same seed, same rows
        out.append((arms.variant(name), variant, vsplits))
    return out


def _precision_warnings(cells: list[tuple[str, Suite]]) -> list[str]:
    """bf16 asked for where the device has no bf16 instructions: it runs, many times slower
    than fp32 (see modeling.native_bf16), so say so before the training starts."""
    slow = any(cell.train is not None and cell.train.precision == "bf16"
               and not modeling.native_bf16(modeling.pick_device(cell.model))
               for _, cell in cells)
    return ["train.precision = 'bf16' on a device without bf16 instructions: its products take "
            "a slow fallback (about 60x fp32's time on a CPU with AVX2 only); set "
            "train.precision = 'auto' (bf16 only where it is native) or 'fp32'"] if slow else []


def _suite_warnings(suite: Suite) -> list[str]:
    t, d = suite.train, suite.data
    out = []
    if t and t.eval_strategy != "no" and d.validation_size == 0:
        out.append(f"train.eval_strategy = {t.eval_strategy!r} but data.validation_size = 0: "
                   "training will log no eval loss (set data.validation_size to hold some out)")
    return out
