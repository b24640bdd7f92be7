"""``python -m sde_sam``: the ``sde-sam`` command without the console script (same subcommands and flags)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sde_sam"))
