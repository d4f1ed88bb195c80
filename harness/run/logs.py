"""Third-party chatter goes to the run's log file, not the user's terminal.

transformers, peft, accelerate, bitsandbytes and torch warn through `warnings` and `logging`
(past_key_values deprecations, gradient checkpointing, bitsandbytes' missing `kernels`
package): useful when debugging a run, noise between progress bars. While a run executes,
both go to ``<run dir>/harness.log`` with a timestamp; harness's own messages still reach the
terminal through its progress display.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

LOG_FILE = "harness.log"
# torch._dynamo and torch._inductor (train.compile) log through stderr handlers of their own,
# not through "torch": dynamo's recompile-limit warning alone is 6 lines per frame.
LIBRARIES = ("transformers", "peft", "accelerate", "bitsandbytes", "torch", "torch._dynamo",
             "torch._inductor", "datasets", "huggingface_hub", "py.warnings", "mlflow",
             "alembic", "wandb")
# Handlers of their own that write to the terminal, set aside while a run executes.
_OWN_STDERR = ("torch", "torch._dynamo", "torch._inductor")


@contextlib.contextmanager
def library_output_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = [_redirect(logging.getLogger(name), handler) for name in LIBRARIES]
    hf = _hf_default_handler(off=True)
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False  # full disk
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # each distinct warning once, as Python shows it
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            logging.raiseExceptions = raise_exceptions
            _hf_default_handler(off=not hf)
            for logger, (propagate, level, own) in zip(
                    (logging.getLogger(n) for n in LIBRARIES), saved):
                logger.removeHandler(handler)
                for h in own:
                    logger.addHandler(h)
                logger.propagate, logger.level = propagate, level
            handler.close()


def _redirect(logger: logging.Logger, handler: logging.Handler
              ) -> tuple[bool, int, list[logging.Handler]]:
    own = list(logger.handlers) if logger.name in _OWN_STDERR else []
    for h in own:
        logger.removeHandler(h)
    state = (logger.propagate, logger.level, own)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    return state


def _hf_default_handler(off: bool) -> bool:
    """transformers writes to stderr through a handler of its own; returns whether it was on."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return False
    root = logging.getLogger("transformers")
    was_on = any(h is getattr(hf_logging, "_default_handler", None) for h in root.handlers)
    if off:
        hf_logging.disable_default_handler()
    else:
        hf_logging.enable_default_handler()
    return was_on
