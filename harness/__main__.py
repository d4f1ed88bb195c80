"""``python -m harness``: the CLI, also as torchrun's module (``torchrun -m harness run``)."""

from harness.cli import main

main()
