"""Make lm-eval's own CLI know `--model dlm`, with nothing imported until it is used.

lm-eval (0.4.x) has no plugin entry points: its model registry is filled when `lm_eval.models` is
imported. Installing dlm-sft puts `dlm_sft_lm_eval.pth` into site-packages; Python runs its one
line at start-up, which calls `install()`. That adds a meta-path finder answering for the single
module `lm_eval.models`: right after lm-eval's module has run, `dlm` is registered as a lazy
placeholder for `sft.evaluation.lm_eval_model:DiffusionLM`, so torch and dlm-sft load only when a
user asks for `--model dlm`. Without lm-eval installed the finder is never consulted; if this
module cannot be imported (an `sft` on the path without this wing), the .pth line does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MODEL_NAME = "dlm"
TARGET = "sft.evaluation.lm_eval_model:DiffusionLM"
WATCHED = "lm_eval.models"


def register() -> None:
    """Add the `dlm` placeholder to lm-eval's model registry (once)."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)


class _RegisterAfterLoading(importlib.abc.Loader):
    """Runs lm-eval's own loader, then `register()`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        register()


class _LmEvalModelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoading(spec.loader)
        return spec


def install() -> None:
    """Register now if lm-eval's models are loaded already, else when they load."""
    if WATCHED in sys.modules:
        register()
    elif not any(isinstance(finder, _LmEvalModelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalModelsFinder())
