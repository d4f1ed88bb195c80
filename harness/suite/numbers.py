"""The suite's shared value types: strict flags, folder names, and every count's range. No
torch, transformers or hub imports (see harness.suite.config)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

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


class Strict(BaseModel):
    # allow_inf_nan=False: TOML reads `inf` and `nan` as floats, and `learning_rate = inf`
    # passed every `gt=0` check and trained a NaN adapter. Every float key of every table
    # is refused non-finite here, once ("Input should be a finite number").
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
