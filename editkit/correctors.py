"""Step correctors: sampling-time methods that attach to any latent pipeline.

A corrector sees each denoising step twice:

1. `before_model(state)` returns the latents the guided backbone call is
   evaluated at (e.g. PromptFix's high-frequency guidance moves them down a
   loss gradient);
2. `after_model(state, model_latents, noise_pred)` may adjust the guided
   prediction before the scheduler steps from the *unmodified* latents.

`StepState` gives a corrector everything it may need: the latents, the
timestep, the scheduler, a differentiable conditional model call, a VAE
decoder, the conditioning, and the source image and mask in pixel space.
Correctors run in the order given; pipelines call them inside their loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .conditioning import Conditioning


@dataclass
class StepState:
    step: int
    num_steps: int
    timestep: torch.Tensor
    latents: torch.Tensor
    scheduler: object
    conditioning: Conditioning
    # latents -> conditional noise prediction (no guidance; gradients allowed)
    predict_noise: Callable[[torch.Tensor], torch.Tensor]
    # latents (unscaled by the pipeline) -> pixels in [-1, 1]
    decode: Callable[[torch.Tensor], torch.Tensor]
    source: torch.Tensor | None = None  # (B, 3, H, W) in [-1, 1], working size
    mask: torch.Tensor | None = None  # (B, 1, H, W) in {0, 1}, 1 = may change


class StepCorrector:
    """Base class: both hooks default to leaving the step unchanged."""

    def before_model(self, state: StepState) -> torch.Tensor:
        return state.latents

    def after_model(self, state: StepState, model_latents: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
        return noise_pred


def apply_before(correctors: Sequence[StepCorrector], state: StepState) -> torch.Tensor:
    latents = state.latents
    for c in correctors:
        latents = c.before_model(replace(state, latents=latents))
    return latents


def apply_after(correctors: Sequence[StepCorrector], state: StepState, model_latents: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
    for c in correctors:
        noise_pred = c.after_model(state, model_latents, noise_pred)
    return noise_pred
