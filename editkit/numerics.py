"""Half-precision overflow checks shared by every sampling loop.

fp16 backbones and VAEs can overflow to inf/NaN; diffusers then silently
returns a black image. editkit pipelines call these checks instead, so the
user hears what went wrong, where, and how to fix it.
"""

from __future__ import annotations

import torch


class NonFiniteError(FloatingPointError):
    """Sampling produced NaN or inf values."""


def check_finite(tensor: torch.Tensor, what: str, step: int | None = None) -> torch.Tensor:
    """Raise `NonFiniteError` naming `what` (and the step) when `tensor` holds NaN/inf; return it unchanged otherwise."""
    if bool(torch.isfinite(tensor).all()):
        return tensor
    where = f" at step {step}" if step is not None else ""
    bad = int((~torch.isfinite(tensor)).sum())
    hint = (
        " The model runs in float16, whose range (about ±65504) was exceeded: load it with "
        "torch_dtype=torch.bfloat16, or keep the VAE in float32 (pipe.vae.to(torch.float32))."
        if tensor.dtype == torch.float16
        else " Check the inputs (NaN/inf pixels or embeddings) and the guidance scales."
    )
    raise NonFiniteError(f"{what}{where} contains {bad} NaN/inf values of {tensor.numel()}.{hint}")
