"""The names a run gives its arms, in one place.

An arm is one model evaluated on the suite's items: the base model zero-shot (``baseline``),
zero-shot with another prompt template (``baseline@<template>``, a *variant*), and adapter arms,
trained by the suite (``lora`` or a sweep cell's name) or existing (``[adapters.<name>]``).
``source`` in run.json says which: ``zero-shot``, ``trained`` or ``existing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

BASELINE = "baseline"
VARIANT_SEP = "@"  # baseline@<template name>
DEFAULT_ADAPTER = "lora"  # the arm of a suite with [train] and no [sweep]
RESERVED = frozenset({BASELINE})

ZERO_SHOT = "zero-shot"
TRAINED = "trained"
EXISTING = "existing"
EXPORT = "export"  # an adapter arm exported ([[exports]]): arm <from>+<format>
SOURCES = (ZERO_SHOT, TRAINED, EXISTING, EXPORT)

BASELINE_LABEL = "Zero-shot"  # how reports name the base model's own arm


def variant(template: str) -> str:
    """The zero-shot arm of the base model with another prompt template."""
    return f"{BASELINE}{VARIANT_SEP}{template}"


def is_zero_shot(name: str) -> bool:
    """``baseline`` and its prompt-template variants, by name."""
    return name == BASELINE or name.startswith(BASELINE + VARIANT_SEP)


def is_adapter(name: str, arm: Mapping[str, Any] | None = None) -> bool:
    """Adapter arms: all but the zero-shot ones. Judged by name as well as by the adapter
    path, because an adapter arm whose training failed has no adapter path and must still be
    seen (and fail a gate)."""
    return not is_zero_shot(name) or bool((arm or {}).get("adapter"))


def adapters(arms: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """The adapter arms of a record's ``arms`` (a mapping name -> arm, or plain names), in order."""
    if isinstance(arms, Mapping):
        return [n for n, a in arms.items() if is_adapter(n, a if isinstance(a, Mapping) else None)]
    return [n for n in arms if is_adapter(n)]


def others(names: Iterable[str]) -> list[str]:
    """Every arm but ``baseline`` (variants included), in order."""
    return [n for n in names if n != BASELINE]


def baseline_first(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: n != BASELINE)


def label(name: str) -> str:
    """A column heading for an arm: the base model's own arm reads "Zero-shot"."""
    return BASELINE_LABEL if name == BASELINE else name


SEED_SEP = "@s"  # lora@s0: the recipe `lora` trained with train.seed = 0


def seeded(recipe: str, seed: int) -> str:
    return f"{recipe}{SEED_SEP}{seed}"


def recipe_of(name: str) -> tuple[str, int | None]:
    """``lora@s1`` -> ("lora", 1); an arm trained once -> (name, None)."""
    head, sep, tail = name.rpartition(SEED_SEP)
    if sep and head and tail.lstrip("-").isdigit():
        return head, int(tail)
    return name, None
