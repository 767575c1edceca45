"""Rectified-flow (flow-matching) conventions shared by the DiT methods.

PixWizard, UNIC-Adapter and Dream Engine sample with diffusers'
`FlowMatchEulerDiscreteScheduler`: `x_sigma = (1 - sigma) * x0 + sigma * noise`,
the backbone receives `t = sigma * 1000` and predicts the velocity
`noise - x0`. Training draws sigma per sample from its own generator so a
sample's noise does not depend on batch layout.
"""

from __future__ import annotations

import torch


def sample_sigmas(generators: list[torch.Generator], scheme: str = "logit_normal", shift: float = 1.0,
                  logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """One sigma in (0, 1) per generator: `logit_normal` (SD3's default) or `uniform`, then the scheduler's shift."""
    if scheme == "logit_normal":
        u = torch.stack([torch.sigmoid(torch.randn((), generator=g) * logit_std + logit_mean) for g in generators])
    elif scheme == "uniform":
        u = torch.stack([torch.rand((), generator=g) for g in generators])
    else:
        raise ValueError(f"`scheme` must be 'logit_normal' or 'uniform', got {scheme!r}")
    return shift_sigmas(u, shift)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The static timestep shift of `FlowMatchEulerDiscreteScheduler`: s*σ / (1 + (s-1)*σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = sigmas.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor | float) -> torch.Tensor:
    s = sigmas if isinstance(sigmas, float) else sigmas.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    return x_t - s * velocity


def timesteps(sigmas: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    """What the transformer receives for each sigma."""
    return sigmas * num_train_timesteps
