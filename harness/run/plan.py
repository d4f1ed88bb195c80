"""`harness plan`: what a suite will cost, from the model's config alone (no weights loaded).

Parameter counts come from the real module tree (`shapes`: the model built on the meta
device), not from a formula per architecture:

- LoRA adds ``r * (in + out)`` parameters per wrapped layer (A: r x in, B: out x r), on the
  modules peft would wrap (``shapes.lora_targets``).
- Optimizer steps follow transformers 5's Trainer: ``ceil(ceil(n / batch) / accumulation)``
  per epoch (the last partial accumulation still steps), ``ceil(epochs * per_epoch)`` in all
  unless ``max_steps`` is set; warmup is ``warmup_steps`` or ``ceil(ratio * total)``.
- Memory is a rough single-GPU estimate: weights as loaded + LoRA weights, gradients and
  optimizer states + activations of one forward (a padded micro-batch at ``max_length``, or
  a pack of train.batch_tokens) + ~1 GiB CUDA context.

A hub model whose config is not in the local cache, offline, still gets its plan: data,
arms, eval sets and optimizer steps need no config; parameters, LoRA sizes and memory are
printed as not planned, with the reason.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import ConfigError, DatasetUnavailable, ModelUnavailable, one_line
from harness.run import adapters, modeling, peftconfig, train
from harness.run.shapes import ModelShape, lora_targets, model_shape
from harness.run.train import Schedule
from harness.suite import arms, data, sweep
from harness.suite.config import ModelSpec, Suite, TrainSpec

GIB = 1024**3
CONTEXT_BYTES = GIB  # CUDA context + cuBLAS workspace + allocator slack: typically 0.5-1 GiB
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2}  # auto: 16-bit on a GPU
# Adam keeps two fp32 moments per trainable parameter (8 B); bitsandbytes' 8-bit Adam two
# uint8 states (2 B, plus block scales we ignore); plain SGD (no momentum) and Adafactor's
# factored second moment are ~0.
_OPTIMIZER_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "paged_adamw_32bit": 8,
                    "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0, "adafactor": 0}
# Usable memory (GiB, as torch reports it) of common GPUs, smallest first.
GPU_CLASSES = (
    (14.7, "16 GB class (T4, V100-16GB)"),
    (22.0, "24 GB class (L4, A10G, RTX 3090/4090)"),
    (39.4, "40 GB class (A100-40GB)"),
    (44.4, "48 GB class (L40S, RTX A6000)"),
    (79.1, "80 GB class (A100-80GB, H100)"),
    (139.8, "141 GB class (H200)"),
)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class DataCounts:
    train: int | None
    validation: int | None
    eval: int | None
    known: bool  # False: the dataset could not be loaded; sizes are the suite's
    note: str = ""


@dataclass(frozen=True)
class Memory:
    """Bytes. ``activations`` is None when the config lacks the sizes to estimate it."""

    weights: int  # as trained (QLoRA: peft upcasts the unquantized rest to fp32)
    adapter_state: int  # LoRA weights + gradients (fp32) + optimizer states
    activations: int | None
    tokens: int  # of the one forward the activations assume (plan.forward_tokens)
    context: int = CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.adapter_state + (self.activations or 0) + self.context


@dataclass(frozen=True)
class CellPlan:
    """One adapter arm: its LoRA size, optimizer schedule and training memory. The sizes and
    memory are None when the model's config is not available (Plan.missing says why)."""

    name: str
    train: TrainSpec
    lora_layers: int | None
    lora_params: int | None  # sum of r * (in + out) over the wrapped layers
    bias_params: int | None  # base biases made trainable by train.bias
    unmatched_targets: tuple[str, ...]
    schedule: Schedule
    memory: Memory | None
    precision: str  # train.precision as this machine runs it ("auto" resolved)

    @property
    def trainable(self) -> int | None:
        if self.lora_params is None or self.bias_params is None:
            return None
        return self.lora_params + self.bias_params

    def trainable_share(self, total_params: int) -> float:
        """As peft's print_trainable_parameters: trainable / (base + LoRA parameters)."""
        return (self.trainable or 0) / (total_params + (self.lora_params or 0))


@dataclass(frozen=True)
class Plan:
    suite: str
    model: str
    shape: ModelShape | None  # None: the config is not available here (see ``missing``)
    model_spec: ModelSpec
    data: DataCounts
    weight_bytes: int | None  # as loaded for evaluation
    cells: tuple[CellPlan, ...]
    existing: tuple[tuple[str, str, str, int | None, int | None], ...] = ()
    # (arm, path or hub id, peft type, rank, parameters) of each existing adapter
    arms: tuple[str, ...] = ()  # every arm the run evaluates, in its order
    sets: tuple[tuple[str, int | None], ...] = ()  # (eval set, items; None: unknown)
    missing: tuple[str, ...] = ()  # what could not be read here, and why


# ---------------------------------------------------------------- make_plan


def make_plan(suite: Suite) -> Plan:
    """Counts, schedule and memory for every adapter arm; raises InputError subclasses. A hub
    model or adapter that cannot be fetched here is not an error: what it would tell is
    listed in ``missing``, with the reason, and the rest is planned."""
    cells_in = sweep.expand(suite)  # bad sweep cells fail before anything slow
    missing: list[str] = []
    shape = _shape(suite, missing)
    counts = data_counts(suite)
    cells = tuple(cell_plan(name, cell, shape, counts.train) for name, cell in cells_in)
    existing = tuple(_existing(suite, shape, missing))
    return Plan(suite=suite.name, model=suite.model.label, shape=shape, model_spec=suite.model,
                data=counts,
                weight_bytes=None if shape is None else weight_bytes(shape, suite.model,
                                                                     training=False),
                cells=cells, existing=existing, missing=tuple(missing),
                arms=_arm_names(suite, cells, existing), sets=tuple(eval_set_counts(suite)))


def _shape(suite: Suite, missing: list[str]) -> ModelShape | None:
    try:
        return model_shape(suite.model, modeling.resolve_source(suite))
    except ModelUnavailable as e:
        missing.append(f"architecture, parameters, LoRA sizes and memory: {e}")
        return None


def _existing(suite: Suite, shape: ModelShape | None, missing: list[str]):
    for spec in suite.adapters:
        try:
            a = adapters.inspect(suite, spec, shape)
        except adapters.AdapterUnavailable as e:
            missing.append(f"adapter type, rank and parameters: {e}")
            yield spec.name, spec.path, "unknown", None, None
            continue
        params = adapters.stored_params(adapters.adapter_folder(a.source, a.revision))
        yield a.name, a.source, a.peft_type, a.rank, params


def _arm_names(suite: Suite, cells: Sequence[CellPlan], existing: Sequence[tuple]
               ) -> tuple[str, ...]:
    zero_shot = [arms.BASELINE] + [arms.variant(n) for n in suite.eval.baseline_templates]
    return tuple(zero_shot + [c.name for c in cells] + [e[0] for e in existing])


def eval_set_counts(suite: Suite):
    """(name, items) of each [eval.sets.*]; a hub set that cannot be loaded here: its
    eval_size, or None for "all"."""
    for name, spec in suite.eval.sets.items():
        try:
            yield name, len(data.load_eval_set(name, spec, suite.base_dir,
                                               suite=suite.name).examples)
        except DatasetUnavailable:
            yield name, data.requested_size(spec.eval_size)


def cell_plan(name: str, cell: Suite, shape: ModelShape | None, n_train: int | None
              ) -> CellPlan:
    spec = cell.train
    assert spec is not None
    if shape is None:  # no config here: the schedule only
        return CellPlan(name=name, train=spec, lora_layers=None, lora_params=None,
                        bias_params=None, unmatched_targets=(),
                        schedule=train.schedule(spec, n_train), memory=None,
                        precision=_precision(cell))
    schedule = train.schedule(spec, n_train)
    targets = spec.knob("target_modules")
    matched, unmatched = lora_targets(shape, targets) if targets is not None else ([], ())
    trainable, added = _meta_counts(shape, spec, schedule.total_steps)
    return CellPlan(
        name=name, train=spec, lora_layers=len(matched) or None, lora_params=added,
        bias_params=max(trainable - added, 0), unmatched_targets=unmatched,
        schedule=schedule, memory=train_memory(shape, cell, trainable),
        precision=_precision(cell),
    )


def _meta_counts(shape: ModelShape, spec: TrainSpec, steps: int | None) -> tuple[int, int]:
    try:
        return peftconfig.meta_counts(shape.meta, spec, steps)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"train.method = {spec.method!r}: peft cannot apply it to "
                          f"{shape.architecture}: {one_line(e)}") from e


# ---------------------------------------------------------------- data and schedule


def data_counts(suite: Suite) -> DataCounts:
    """Examples per split from the data itself; for a hub dataset that cannot be loaded
    (offline), the suite's sizes, marked unknown. Local data errors are real errors."""
    spec = suite.data
    try:
        s = data.load_splits(suite)
    except DatasetUnavailable:
        return DataCounts(data.requested_size(spec.train_size), spec.validation_size,
                          data.requested_size(spec.eval_size), known=False,
                          note=f"dataset {spec.dataset} cannot be loaded here")
    notes = [f"{n:,} {why} dropped" for why, n in s.dropped.items() if n]
    if spec.drop_longer:  # needs the tokenizer: counted by `harness run`, not here
        notes.append(f"train items over {spec.max_length:,} tokens not yet dropped")
    return DataCounts(len(s.train), len(s.validation), len(s.eval), known=True,
                      note="; ".join(notes))


# ---------------------------------------------------------------- memory


def weight_bytes(shape: ModelShape, spec: ModelSpec, *, training: bool) -> int:
    """Bytes of the base weights on the GPU. 4-bit nf4/fp4: 0.5 B per quantized weight plus
    one fp32 absmax per 64-weight block (+0.0625 B), or with double quant an 8-bit absmax per
    block and one fp32 per 256 blocks (+0.0159 B). 8-bit: 1 B plus a fp32 scale per row.
    The LM head, embeddings, norms and biases stay 16-bit; peft's k-bit preparation upcasts
    them to fp32 for training."""
    rest_bytes = _DTYPE_BYTES[spec.dtype]
    q = spec.quantization
    if q is None:
        return shape.total_params * rest_bytes
    if q.bits == 4:
        quantized = shape.quantizable_params * bytes_per_4bit_weight(q.double_quant)
    else:
        quantized = shape.quantizable_params + 4 * shape.quantizable_rows
    rest = shape.total_params - shape.quantizable_params
    return int(quantized + rest * (4 if training else rest_bytes))


def bytes_per_4bit_weight(double_quant: bool) -> float:
    absmax = 1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64
    return 0.5 + absmax  # 0.5159 with double quant, 0.5625 without


def train_memory(shape: ModelShape, cell: Suite, trainable: int) -> Memory:
    spec = cell.train
    assert spec is not None
    # LoRA weights and their gradients are fp32 (peft upcasts adapters), plus optimizer states.
    state = trainable * (4 + 4 + _OPTIMIZER_BYTES.get(spec.optimizer, 8))
    tokens = forward_tokens(spec, cell.data.max_length)
    return Memory(weights=weight_bytes(shape, cell.model, training=True), adapter_state=state,
                  activations=activation_bytes(shape, cell, tokens), tokens=tokens)


def forward_tokens(spec: TrainSpec, max_length: int) -> int:
    """Tokens of one forward at most: a padded micro-batch (batch_size x max_length), or a
    pack (a step's examples up to train.batch_tokens; an example longer than that alone)."""
    padded = spec.batch_size * max_length
    if not spec.packing or spec.batch_tokens is None:  # the default budget is one micro-batch
        return padded
    return min(padded * spec.gradient_accumulation_steps, max(spec.batch_tokens, max_length))


def activation_bytes(shape: ModelShape, cell: Suite, tokens: int) -> int | None:
    """Saved activations of one micro-batch, SDPA/flash attention (no seq^2 term).

    Per block and token ~ 9h + 2i elements (3i with a gated MLP): LN outputs, q/k/v, attention
    output, residuals, MLP in / activation (Korthikanti et al. 2022 count 34h bytes = 17h
    16-bit elements for i = 4h; phi-2: 9 * 2560 + 2 * 10240 = 43,520 = 17h). Gradient
    checkpointing keeps only each block's input (h) plus one block's worth. The logits add
    vocab per token three times: as computed, as fp32 for the loss, and their gradient.
    """
    h, n, i, v = (shape.hidden_size, shape.num_layers, shape.intermediate_size,
                  shape.vocab_size)
    if not (h and n and i and v):
        return None
    spec = cell.train
    assert spec is not None
    elem = _activation_dtype_bytes(cell)
    block = (9 * h + (3 if shape.gated_mlp else 2) * i) * elem
    stored = n * h * elem + block if spec.gradient_checkpointing else n * block
    logits = v * (elem + 4 + 4)
    return tokens * (stored + logits)


def _activation_dtype_bytes(cell: Suite) -> int:
    spec = cell.train
    assert spec is not None
    if _precision(cell) in ("fp16", "bf16"):
        return 2
    if cell.model.quantization:  # fp32 training of a k-bit model: norms upcast -> fp32 states
        return 4
    return _DTYPE_BYTES[cell.model.dtype]


def gpu_class(total_bytes: int) -> str:
    gib = total_bytes / GIB
    for capacity, label in GPU_CLASSES:
        if gib <= capacity:
            return label
    return "more than one 141 GB GPU: shard it (FSDP) or cut batch / max_length"


# ---------------------------------------------------------------- rendering


def render_plan(plan: Plan) -> str:
    """Plain text, lines kept under 80 columns where possible (terminals and CI logs)."""
    lines = _missing(plan) + _header(plan)
    if not plan.cells:
        lines.append("no [train] table: eval only (zero-shot baseline"
                     + (" and existing adapters)" if plan.existing else ")"))
    elif len(plan.cells) == 1:
        lines += _single(plan, plan.cells[0])
    else:
        lines += _sweep(plan)
    if plan.existing:
        lines += ["", "existing adapters (evaluated on the same base and items)"]
        lines += _table([("arm", "type", "r", "params", "from")] + [
            (n, kind, _n(r), _n(p), src) for n, src, kind, r, p in plan.existing])
    return "\n".join(lines)


def _missing(plan: Plan) -> list[str]:
    """First, so a reader sees at once why some numbers below say "not planned"."""
    if not plan.missing:
        return []
    lines = [x for why in plan.missing for x in _wrap(f"not planned: {why}", indent=13)]
    return lines + ["             (the rest is planned from the suite and its data)", ""]


def _header(plan: Plan) -> list[str]:
    return [
        f"suite       {plan.suite}",
        f"model       {plan.model}",
        *_shape_lines(plan),
        *_data_lines(plan.data),
        *_weight_lines(plan),
        *_wrap(f"arms        {', '.join(plan.arms)}", indent=12),
        *_sets_lines(plan),
        "",
    ]


def _shape_lines(plan: Plan) -> list[str]:
    s = plan.shape
    if s is None:
        return ["parameters  not planned (no model config here)"]
    return [
        f"arch        {s.model_type} / {s.architecture}",
        f"config      {s.config_source}",
        f"parameters  {s.total_params:,} ({_human(s.total_params)})",
    ]


def _weight_lines(plan: Plan) -> list[str]:
    if plan.weight_bytes is None:
        return []
    return [f"weights     {_gib(plan.weight_bytes)} to load", f"            {_quant_words(plan)}"]


def _sets_lines(plan: Plan) -> list[str]:
    """Every arm is scored on the suite's own eval items and on each extra set."""
    if not plan.sets:
        return []
    sets = ", ".join(f"{name} ({_n(n)} items)" for name, n in plan.sets)
    return _wrap(f"eval sets   {sets}: every arm, besides the suite's own", indent=12)


def _data_lines(d: DataCounts) -> list[str]:
    sizes = f"train {_n(d.train)} / validation {_n(d.validation)} / eval {_n(d.eval)}"
    if not d.known:
        return [f"data        unknown: {d.note}", f"            the suite asks for {sizes}"]
    return [f"data        {sizes}", *([f"            {d.note}"] if d.note else [])]


def _quant_words(plan: Plan) -> str:
    spec, s = plan.model_spec, plan.shape
    assert s is not None
    rest = _DTYPE_BYTES[spec.dtype]
    q = spec.quantization
    if q is None:
        return f"{s.total_params:,} x {rest} B ({spec.dtype})"
    per = bytes_per_4bit_weight(q.double_quant) if q.bits == 4 else 1
    kind = f" {q.quant_type}{' + double quant' if q.double_quant else ''}" if q.bits == 4 else ""
    return (f"{q.bits}-bit{kind}: {_human(s.quantizable_params)} x {per:.4g} B, "
            f"{_human(s.total_params - s.quantizable_params)} unquantized x {rest} B")


def _precision(cell: Suite) -> str:
    """train.precision as this machine would run it ("auto" resolved for the cell's device)."""
    assert cell.train is not None
    return modeling.train_precision(cell.train.precision, modeling.pick_device(cell.model))


def _precision_label(c: CellPlan) -> str:
    return c.train.precision if c.train.precision == c.precision else (
        f"{c.train.precision}: {c.precision} on this machine")


def _single(plan: Plan, c: CellPlan) -> list[str]:
    t, sc = c.train, c.schedule
    return [
        f"arm {c.name}",
        f"  method        {_method(t)}",
        *_wrap(f"  targets       {_layers(c)}{_targets(t)}", indent=16),
        f"  trainable     {_trainable(c, plan)}",
        *_unmatched(c),
        f"  batch         {sc.batch_size} x {sc.accumulation} accumulation = "
        f"{sc.effective_batch} per optimizer step",
        f"  steps/epoch   {_n(sc.steps_per_epoch)}{_per_epoch_why(sc)}",
        f"  total steps   {_n(sc.total_steps)}{_total_why(t, sc)}",
        f"  warmup        {_n(sc.warmup_steps)} steps{_warmup_why(t)}",
        f"  optimizer     {t.optimizer}, lr {_lr(t.learning_rate)} {t.scheduler}, "
        f"{_precision_label(c)}",
        *_speedups(t),
        *_train_memory(c.memory),
    ]


def _speedups(t: TrainSpec) -> list[str]:
    """The opt-in kernels (train.compile, train.liger), when any is on."""
    on = [name for name, flag in (("torch.compile", t.compile), ("Liger kernels", t.liger))
          if flag]
    return [f"  kernels       {' + '.join(on)}"] if on else []


def _layers(c: CellPlan) -> str:
    return "" if c.lora_layers is None else f"{c.lora_layers} layers: "


def _trainable(c: CellPlan, plan: Plan) -> str:
    if c.trainable is None or plan.shape is None:
        return "not planned (no model config here)"
    return f"{c.trainable:,} = {_pct(c, plan)} of {_with_lora(c, plan):,}"


def _train_memory(m: Memory | None) -> list[str]:
    if m is None:
        return ["  train memory  not planned (no model config here)"]
    return [f"  train memory  ~{_gib(m.total)} -> {gpu_class(m.total)}", *_memory_lines(m)]


def _sweep(plan: Plan) -> list[str]:
    """One row per cell with the columns that differ; the rest once, above the table."""
    columns = list(zip(*[_row(plan, c) for c in plan.cells]))
    heads = ("method", "r", "lr", "batch", "steps/ep", "steps", "warmup", "trainable", "train mem")
    same = [f"{h} {col[0]}" for h, col in zip(heads, columns) if len(set(col)) == 1]
    table = [("arm", *(h for h, col in zip(heads, columns) if len(set(col)) > 1))]
    table += [(c.name, *(v for v, col in zip(row, columns) if len(set(col)) > 1))
              for c, row in zip(plan.cells, zip(*columns))]
    return [
        f"{len(plan.cells)} sweep cells on {_n(plan.cells[0].schedule.n_train)} train examples"
        "; steps are optimizer steps",
        *_wrap("all cells: " + ", ".join(same), indent=11), "", *_table(table), "",
        *_largest(plan.cells),
        *[x for c in plan.cells for x in _unmatched(c, prefix=f"{c.name}: ")],
    ]


def _largest(cells: Sequence[CellPlan]) -> list[str]:
    sized = [(c.name, c.memory) for c in cells if c.memory is not None]
    if not sized:
        return ["train memory: not planned (no model config here)"]
    name, m = max(sized, key=lambda x: x[1].total)
    return [f"largest: {name} ~{_gib(m.total)}", f"  -> {gpu_class(m.total)}",
            *_memory_lines(m)]


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return ["  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])])
            .rstrip() for r in rows]


def _row(plan: Plan, c: CellPlan) -> tuple[str, ...]:
    sc = c.schedule
    sized = c.trainable is not None and plan.shape is not None
    return (c.train.method, str(c.train.knob("r") or "-"), _lr(c.train.learning_rate),
            f"{sc.batch_size}x{sc.accumulation}",
            _n(sc.steps_per_epoch), _n(sc.total_steps), _n(sc.warmup_steps),
            f"{_human(c.trainable or 0)} {_pct(c, plan)}" if sized else "?",
            "?" if c.memory is None else f"{c.memory.total / GIB:.1f} GiB")


def _memory_lines(m: Memory) -> list[str]:
    act = ("? (config lacks sizes)" if m.activations is None
           else f"{_gib(m.activations)} ({m.tokens:,} tokens, upper bound)")
    return [f"    = weights {_gib(m.weights)} + LoRA weights/grads/optimizer "
            f"{_gib(m.adapter_state)}", f"      + activations {act}",
            f"      + CUDA context ~{_gib(m.context)}; estimate, not a measurement"]


def _unmatched(c: CellPlan, prefix: str = "  ") -> list[str]:
    return [f"{prefix}warning: target {t!r} matches no module (peft ignores it)"
            for t in c.unmatched_targets]


def _method(t: TrainSpec) -> str:
    """"lora: r 8, alpha 16, dropout 0.05, bias none": the knobs besides the targets."""
    knobs = [f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float)
             else f"{k.replace('_', ' ')} {v}" for k, v in t.knobs.items()
             if k not in ("target_modules", "feedforward_modules") and v is not None]
    return f"{t.method}: {', '.join(knobs)}" if knobs else t.method


def _targets(t: TrainSpec) -> str:
    targets = t.knob("target_modules")
    if targets is None:
        return "peft's default for the architecture"
    return targets if isinstance(targets, str) else " ".join(targets)


def _wrap(line: str, indent: int) -> list[str]:
    return textwrap.wrap(line, width=79, subsequent_indent=" " * indent,
                         break_long_words=False) or [line]


def _with_lora(c: CellPlan, plan: Plan) -> int:
    assert plan.shape is not None
    return plan.shape.total_params + (c.lora_params or 0)


def _pct(c: CellPlan, plan: Plan) -> str:
    assert plan.shape is not None
    return f"{100 * c.trainable_share(plan.shape.total_params):.3g}%"


def _per_epoch_why(sc: Schedule) -> str:
    if sc.steps_per_epoch is None:
        return " (number of train examples unknown)"
    return (f" = ceil(ceil({sc.n_train:,} / {sc.batch_size}) / {sc.accumulation})")


def _total_why(t: TrainSpec, sc: Schedule) -> str:
    if t.max_steps:
        return " (train.max_steps)"
    return f" = ceil({t.epochs:g} epochs x {_n(sc.steps_per_epoch)})"


def _warmup_why(t: TrainSpec) -> str:
    if t.warmup_steps:
        return " (train.warmup_steps)"
    return f" = ceil({t.warmup_ratio:g} x total)" if t.warmup_ratio else ""


def _lr(x: float) -> str:
    mantissa, exp = f"{x:e}".split("e")  # 0.0002 -> "2e-4", as the seeds write it
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def _n(x: int | None) -> str:
    return "unknown" if x is None else f"{x:,}"


def _gib(b: int) -> str:
    return f"{b / GIB:.2f} GiB"


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
