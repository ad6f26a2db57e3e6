"""dlm-sft: supervised fine-tuning for masked diffusion language models.

`from sft import DiffusionSFTTrainer, DiffusionSFTConfig` is the Python API (as TRL's `SFTTrainer` and
`SFTConfig`); they are imported on first use, so `import sft` (and the CLI's `--help`) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DiffusionSFTTrainer": "sft.training.trainer",
    "DiffusionSFTConfig": "sft.config",
    "TrainingInterrupted": "sft.training.stopping",
    "UserError": "sft.errors",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sft' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
