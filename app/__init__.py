"""The editkit Gradio demo (installed as `editkit.app`).

    editkit app [--model PATH_OR_ID | --model METHOD=PATH_OR_ID ...] [--port 7860]
    python -m editkit.app ...

- `editkit.app.methods`: the registry of method specs (what each method takes,
  its defaults and task presets);
- `editkit.app.engine`: the model cache and `Engine.run` (no Gradio needed);
- `editkit.app.ui`: `build_app(engine)` builds the Gradio Blocks, `launch(...)` serves it.

Names are imported lazily so that `editkit --help` does not import torch or Gradio.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AppConfig": "engine",
    "EditResult": "engine",
    "Engine": "engine",
    "ModelCache": "engine",
    "UserError": "engine",
    "METHODS": "methods",
    "MethodSpec": "methods",
    "Preset": "methods",
    "get_method": "methods",
    "register": "methods",
    "build_app": "ui",
    "launch": "ui",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
