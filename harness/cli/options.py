"""How the commands declare and show their parameters: the options several commands share,
and help without typer's type noise."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

ExportOpt = Annotated[
    Optional[list[str]],
    typer.Option("--export", metavar="ARM=FORMAT",
                 help="Also evaluate the adapter arm ARM exported as FORMAT (merged, "
                      "merged-nf4, merged-int8, gguf-f16, gguf-q8_0, gguf-q4_0) as arm "
                      "ARM+FORMAT, paired against ARM. "
                      "Repeatable; adds to the suite's [[exports]]."),
]
AdapterOpt = Annotated[
    Optional[list[str]],
    typer.Option("--adapter", metavar="NAME=DIR",
                 help="Also evaluate an existing PEFT adapter (a folder or a hub id) as arm "
                      "NAME on the same base and items. Repeatable."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE",
                 help="Override a suite key, e.g. `train.max_steps=5` (the value is read as "
                      "TOML, else as a plain string). Repeatable."),
]


def _plain_params(params: list[Any]) -> list[Any]:
    """Typer prints a type beside every parameter (`<list[str]>`, `<path>`, `<bool>` on
    --help) and braces around required arguments in the usage line. Show only the metavars
    we chose. Instance attributes, so a typer without these hooks just ignores them."""
    for p in params:
        if p.param_type_name == "argument":
            p.display_type_rich = lambda ctx: None
            p._usage_display_name = lambda p=p: _usage_name(p)
        else:
            p.display_type_rich = lambda ctx, p=p: p.metavar
    return params


def _usage_name(p: Any) -> str:
    name = p.metavar or p.name.upper()
    return name if p.nargs == 1 or name.endswith("...") else name + "..."


class PlainCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


class PlainGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))
