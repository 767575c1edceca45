"""Training plugins, one per method."""

from .base import MethodTraining


def get_method(name: str) -> type[MethodTraining]:
    from .instructcv import InstructCVTraining
    from .vae import VAETraining

    methods = {m.name: m for m in (InstructCVTraining, VAETraining)}
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; trainable methods: {sorted(methods)}")
    return methods[name]
