"""`harness validate` and `harness plan`: what a suite asks for, checked or planned without
loading weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from harness.cli.console import error, fail, show, warning
from harness.cli.options import AdapterOpt, SetOpt
from harness.errors import HarnessError


def validate_command(
    suites: Annotated[list[Path], typer.Argument(metavar="SUITE...", help="Suite TOML files.")],
    set_: SetOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Check suites (schema, data files, field mapping, templates, model source, gate rules)
    without loading weights; every problem of a suite is listed, one line each.

    Example:

    ```
    harness validate suites/*.toml --set data.eval_size=8
    ```
    """
    from harness.suite import suitefile

    failed, loaded = 0, []
    for path in suites:
        try:
            loaded.append((path, suitefile.load_suite(path, set_ or [], adapter or [])))
        except HarnessError as e:
            error(str(e))
            failed = max(failed, e.exit_code)
    offline_without_network(*(s for _, s in loaded))
    for path, s in loaded:
        failed = max(failed, _validate_one(path, s))
    raise typer.Exit(failed)


def _validate_one(path: Path, suite: Any) -> int:
    from harness.run import preflight

    try:
        info = preflight.check(suite, offline_ok=True)
    except HarnessError as e:
        error("\n".join(ln if str(path) in ln else f"{path}: {ln}" for ln in str(e).splitlines()))
        return e.exit_code
    for w in info.warnings:
        warning(f"{path}: {w}")
    for u in info.unchecked:
        warning(f"{path}: not checked (offline): {u}")
    show(f"{path}: ok ({info})" + (" except what needs the network" if info.unchecked else ""))
    return 0


def offline_without_network(*suites: Any) -> None:
    """With no route to the hub, huggingface_hub and datasets retry for minutes before they
    fail (35-48 s for one hub adapter); offline mode makes them read the local cache and give
    up at once. Asked once per command, only of suites that use the hub (`validate`, `plan`,
    `run`), and set before either library is imported (they read the variable at import)."""
    from harness.suite import config

    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or not any(map(config.uses_hub, suites)):
        return
    from harness.run.modeling import hub_reachable

    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        warning("the Hugging Face Hub cannot be reached: working offline, from the local "
                "cache only")


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def plan_command(
    suite: Annotated[Path, typer.Argument(metavar="SUITE", help="Suite TOML file.")],
    set_: SetOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Print arms, eval sets, steps, batch sizes, parameter counts and weight memory without
    loading weights. Offline with a hub model whose config is not cached, everything else is
    planned and the parameters and memory are marked as not planned (exit 0).

    Example:

    ```
    harness plan suites/llama32_finetome_sweep.toml
    ```
    """
    from harness.run import plan
    from harness.suite import suitefile

    try:
        s = suitefile.load_suite(suite, set_ or [], adapter or [])
        offline_without_network(s)
        show(plan.render_plan(plan.make_plan(s)))
    except HarnessError as e:
        fail(e)
