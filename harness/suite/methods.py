"""The peft methods a [train] table can name, the knobs each takes, their defaults, and which
of them peft can lay over a quantized base. Pure data and checks: the peft configs are built
in harness.run.peftconfig."""

from __future__ import annotations

from typing import Any, Literal, get_args

Method = Literal["lora", "dora", "rslora", "pissa", "olora", "loftq", "ia3", "loha", "lokr",
                 "vera", "adalora"]
METHODS: tuple[str, ...] = get_args(Method)

_LORA = ("r", "alpha", "dropout", "target_modules", "bias")
_LYCORIS = ("r", "alpha", "target_modules", "rank_dropout", "module_dropout")
# The keys of [train] that shape the adapter, per method; every other key is the Trainer's.
KNOBS: dict[str, tuple[str, ...]] = {
    "lora": _LORA, "dora": _LORA, "rslora": _LORA, "olora": _LORA, "loftq": _LORA,
    "pissa": (*_LORA, "pissa_niter"),
    "adalora": (*_LORA, "init_r"),
    "ia3": ("target_modules", "feedforward_modules"),
    "loha": _LYCORIS, "lokr": _LYCORIS,
    "vera": ("r", "dropout", "target_modules", "bias"),
}
ALL_KNOBS = frozenset(k for knobs in KNOBS.values() for k in knobs)

# A knob the suite leaves out. None: peft's own default (ia3's target and feed-forward layers
# come from peft's per-architecture table; pissa_niter None is the exact SVD).
_DEFAULTS: dict[str, Any] = {
    "r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
    "bias": "none", "rank_dropout": 0.0, "module_dropout": 0.0, "init_r": 12,
}
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # VeRA shares one frozen random pair across layers and trains only scaling vectors, so
    # its rank is large: peft's default 256 (the paper's GPT-2 and LLaMA runs use 256-1024).
    "vera": {"r": 256},
    "ia3": {"target_modules": None},
}

# peft lays these over a bitsandbytes 4-bit base. PiSSA's init runs an SVD of the base weight
# and refuses a quantized one (peft's QPiSSA quantizes the residual instead: another base);
# LoHa, LoKr and VeRA have no bitsandbytes layers in peft.
FOUR_BIT = ("lora", "dora", "rslora", "olora", "loftq", "ia3", "adalora")
# ... and these over an 8-bit base. LoftQ's init is defined for 4-bit (nf4) weights only.
EIGHT_BIT = ("lora", "dora", "rslora", "olora", "ia3", "adalora")


def takes(method: str, key: str) -> bool:
    """Whether ``key`` of [train] means anything to ``method`` (the Trainer's keys always do)."""
    return key not in ALL_KNOBS or key in KNOBS.get(method, ())


def effective(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every knob of ``method``: the value the suite gave, else the method's default. Defaults
    are filled here, not stored in the suite, so a sweep cell that switches the method does
    not inherit the first method's defaults (LoRA's r 8 for VeRA)."""
    defaults = {**_DEFAULTS, **_METHOD_DEFAULTS.get(method, {})}
    return {k: given[k] if given.get(k) is not None else defaults.get(k) for k in KNOBS[method]}


def quantization_problem(method: str, bits: int | None) -> str | None:
    """Why ``method`` cannot train over a ``bits``-bit base (None: it can)."""
    if bits is None:
        if method == "loftq":
            return ("train.method = 'loftq' initialises the adapter against a 4-bit base: set "
                    "[model.quantization] bits = 4")
        return None
    allowed = FOUR_BIT if bits == 4 else EIGHT_BIT
    if method in allowed:
        return None
    why = {"pissa": "its SVD init needs the full-precision weight",
           "loftq": "its init is defined for 4-bit weights"}.get(
        method, "peft has no bitsandbytes layers for it")
    return (f"train.method = {method!r} cannot train over a {bits}-bit base ({why}); "
            f"over {bits}-bit: {', '.join(allowed)}")
