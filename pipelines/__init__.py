"""One diffusers pipeline per method, installed as `editkit.pipelines`.

Pipelines import lazily (`from editkit.pipelines import PixWizardPipeline`
loads only that module), so the CLI and the app do not pay for the
transformers models of methods they do not use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module in this package
_EXPORTS = {
    "InstructCVPipeline": "instructcv",
    "TaskResult": "instructcv",
    "PromptFixPipeline": "promptfix",
    "PixWizardPipeline": "pixwizard",
    "UNICAdapterPipeline": "unic",
    "DreamEnginePipeline": "dream",
}

# method name (CLI, eval, training recipes) -> pipeline class name
METHOD_PIPELINES = {
    "instructcv": "InstructCVPipeline",
    "promptfix": "PromptFixPipeline",
    "pixwizard": "PixWizardPipeline",
    "unic": "UNICAdapterPipeline",
    "dream": "DreamEnginePipeline",
}

__all__ = [*_EXPORTS, "METHOD_PIPELINES", "pipeline_class"]


def pipeline_class(method: str) -> type:
    """The pipeline class of a method name such as 'pixwizard'."""
    if method not in METHOD_PIPELINES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHOD_PIPELINES)}")
    return __getattr__(METHOD_PIPELINES[method])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'editkit.pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
