"""Training plugins, one per method."""

from .base import MethodTraining


def get_method(name: str) -> type[MethodTraining]:
    from .dream import DreamTraining
    from .instructcv import InstructCVTraining
    from .pixwizard import PixWizardTraining
    from .promptfix import PromptFixTraining
    from .unic import UNICTraining
    from .vae import VAETraining

    methods = {m.name: m for m in (DreamTraining, InstructCVTraining, PixWizardTraining, PromptFixTraining, UNICTraining, VAETraining)}
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; trainable methods: {sorted(methods)}")
    return methods[name]
