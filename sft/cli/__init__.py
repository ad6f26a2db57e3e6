"""The `dlm-sft` command line: `main` parses and dispatches (sft/cli/main.py); one module per
command group; `launch` re-runs `train` under `accelerate launch`."""

from sft.cli.main import main

__all__ = ["main"]
