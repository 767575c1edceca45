"""High-frequency guidance sampling (HGS, PromptFix) as a step corrector for any latent pipeline.

At each sampling step inside the chosen window, HGS moves the latents the
guided model is evaluated at down the gradient of

    L = exp(-lambda * t) * sum_b  mean_{pixels outside the mask} 1/2 [ (HP(x_b) - HP(I_b))^2 + (S(x_b) - S(I_b))^2 ]

where x_b is the VAE decoding of the model's x0 estimate for sample b, I_b the
source image, HP an ideal FFT high-pass (|frequency| > cutoff bins) of the grey
image and S its Sobel magnitude, each normalised by the sample's own maximum.
The x0 estimate uses the formula of the scheduler in use (sigma-space Euler
family: x0 = z - sigma*eps; alpha-space DDPM/DDIM family:
x0 = (z - sqrt(1-abar)*eps) / sqrt(abar); v-prediction and flow matching
likewise), not the official code's z/sigma. Samples never interact (per-sample
maps, normalisation and loss), pixels inside the mask are not compared and
latents inside the mask are not moved, and the loss and the update are computed
in float32 whatever the model dtype.

The scheduler then steps from the *unmodified* latents with the guided x0
re-expressed relative to them (`after_model`), so HGS corrects the x0
prediction without teleporting the trajectory (spec §5.2-5.3).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .correctors import StepCorrector, StepState

logger = logging.getLogger(__name__)

GREY = (0.299, 0.587, 0.114)


# -- noise levels and the x0 formula per scheduler -------------------------------------


@dataclass(frozen=True)
class NoiseLevel:
    """How a scheduler's sample relates to x0 and the noise at one step.

    kind "vp": the model sees c_in * z = a * x0 + s * eps (sigma-space schedulers
    have c_in = 1/sqrt(1+sigma^2), a = c_in, s = sigma*c_in; alpha-space ones
    c_in = 1, a = sqrt(abar), s = sqrt(1-abar)). kind "flow": z = (1-sigma) x0 + sigma eps
    and the model predicts eps - x0. `t` is the training-time index for the time weight.
    """

    kind: str
    c_in: float
    a: float
    s: float
    sigma: float
    t: float


def _step_index(scheduler, timestep) -> int:
    idx = getattr(scheduler, "step_index", None)
    if idx is not None:
        return int(idx)
    if hasattr(scheduler, "index_for_timestep"):
        return int(scheduler.index_for_timestep(timestep))
    return int((scheduler.timesteps == timestep).nonzero()[0])


def noise_level(scheduler, timestep: torch.Tensor | float) -> NoiseLevel:
    t = float(timestep)
    name = type(scheduler).__name__
    if "FlowMatch" in name:
        sigma = float(scheduler.sigmas[_step_index(scheduler, timestep)])
        return NoiseLevel("flow", 1.0, 1.0 - sigma, sigma, sigma, t)
    if hasattr(scheduler, "sigmas") and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
        sigma = float(scheduler.sigmas[_step_index(scheduler, timestep)])
        c = 1.0 / math.sqrt(sigma**2 + 1.0)
        return NoiseLevel("vp", c, c, sigma * c, sigma, t)
    if hasattr(scheduler, "alphas_cumprod"):
        abar = float(scheduler.alphas_cumprod[int(round(t))])
        return NoiseLevel("vp", 1.0, math.sqrt(abar), math.sqrt(1.0 - abar), math.sqrt((1 - abar) / abar), t)
    raise TypeError(f"HGS does not know the noise convention of {name}; use an Euler/DDIM/DDPM/DPM-Solver or flow-matching scheduler.")


def prediction_type(scheduler) -> str:
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"HGS supports epsilon, v_prediction and sample predictions, not {kind!r}.")
    return kind


def x0_from_prediction(pred: torch.Tensor, z: torch.Tensor, level: NoiseLevel, kind: str) -> torch.Tensor:
    """The model's x0 estimate from its raw prediction at the (unscaled) sample z."""
    if kind == "flow":
        return z - level.sigma * pred
    if kind == "sample":
        return pred
    zv = level.c_in * z
    if kind == "epsilon":
        return (zv - level.s * pred) / level.a
    return level.a * zv - level.s * pred  # v_prediction


def prediction_from_x0(x0: torch.Tensor, z: torch.Tensor, level: NoiseLevel, kind: str) -> torch.Tensor:
    """The raw prediction that gives `x0` at sample z (inverse of `x0_from_prediction`)."""
    if kind == "flow":
        return (z - x0) / level.sigma
    if kind == "sample":
        return x0
    zv = level.c_in * z
    eps = (zv - level.a * x0) / level.s
    return eps if kind == "epsilon" else level.a * eps - level.s * x0


# -- high-frequency maps ----------------------------------------------------------------


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    w = images.new_tensor(GREY).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _per_sample_max_norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)


def high_pass(images: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Ideal circular FFT high-pass of the grey image: keep bins farther than `cutoff` from DC.

    Returns (B, 1, H, W) magnitudes, each sample divided by its own maximum."""
    g = grey(images.float())
    h, w = g.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(g), dim=(-2, -1))
    yy = torch.arange(h, device=g.device, dtype=torch.float32) - h // 2
    xx = torch.arange(w, device=g.device, dtype=torch.float32) - w // 2
    keep = (yy[:, None] ** 2 + xx[None, :] ** 2).sqrt() > cutoff
    out = torch.fft.ifft2(torch.fft.ifftshift(spec * keep, dim=(-2, -1))).abs()
    return _per_sample_max_norm(out)


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """3x3 Sobel gradient magnitude of the grey image, (B, 1, H, W), per-sample max-normalised."""
    g = grey(images.float())
    kx = g.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(g, kx, padding=1)
    gy = F.conv2d(g, kx.transpose(-1, -2), padding=1)
    return _per_sample_max_norm((gx**2 + gy**2 + 1e-8).sqrt())


def hf_loss(images: torch.Tensor, source: torch.Tensor, cutoff: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample HGS loss (B,) between `images` and `source`, both (B, 3, H, W) in [0, 1].

    `keep` (B or 1, 1, H, W) weights the pixels compared (1 = compare)."""
    per_pixel = 0.5 * ((high_pass(images, cutoff) - high_pass(source, cutoff)) ** 2 + (sobel_magnitude(images) - sobel_magnitude(source)) ** 2)
    if keep is None:
        return per_pixel.mean(dim=(1, 2, 3))
    keep = keep.to(per_pixel).expand_as(per_pixel)
    return (per_pixel * keep).sum(dim=(1, 2, 3)) / keep.sum(dim=(1, 2, 3)).clamp_min(1.0)


# -- the corrector ------------------------------------------------------------------------

# What `PromptFixPipeline` runs by default (benchmarks/hgs_cost.py, docs/hgs.md): one gradient step of
# size 2000 in the last half of the sampling steps kept ~95 % of the edge-error gain of one step per
# sampling step at ~1.5x instead of ~1.6x (2 x 1000: 2.4x) the cost of HGS off; the official 5 x 1.0
# moved nothing measurable at 5.3x the cost (the loss is a pixel mean, so a step of 1 barely moves the
# latents). Measured at 64 px on an under-trained tiny model: re-check on a trained one.
RECOMMENDED = {"iterations": 1, "step_size": 2000.0, "step_range": (0.5, 1.0)}


@dataclass
class HighFrequencyGuidance(StepCorrector):
    """PromptFix's HGS on the latents (the code mechanism, bugs fixed).

    Args:
        iterations: gradient steps per sampling step (official 5).
        step_size: latent step per iteration (official 1.0, no normalisation).
        cutoff: high-pass radius in frequency bins at `cutoff_size` pixels (official 30 at ~640 px).
        cutoff_size: the short image side `cutoff` refers to; the radius scales with the
            decoded image's short side. None: `cutoff` is in bins at any size.
        lam: time weight exp(-lam * t), t the training timestep index (official 0.001).
        step_range: the fraction [start, end) of sampling steps where HGS runs.
    """

    iterations: int = 5
    step_size: float = 1.0
    cutoff: float = 30.0
    cutoff_size: int | None = 640
    lam: float = 1e-3
    step_range: tuple[float, float] = (0.0, 1.0)
    losses: list[list[float]] = field(default_factory=list, repr=False)  # per active step: loss before each iteration

    @classmethod
    def recommended(cls, **overrides) -> "HighFrequencyGuidance":
        """The benchmarked default (`RECOMMENDED`), optionally overridden."""
        return cls(**{**RECOMMENDED, **overrides})

    def __post_init__(self) -> None:
        if int(self.iterations) < 0:
            raise ValueError(f"`iterations` must be >= 0, got {self.iterations}.")
        if not math.isfinite(self.step_size) or self.step_size < 0:
            raise ValueError(f"`step_size` must be a finite number >= 0, got {self.step_size}.")
        if self.cutoff < 0:
            raise ValueError(f"`cutoff` must be >= 0 frequency bins, got {self.cutoff}.")
        if self.cutoff_size is not None and self.cutoff_size <= 0:
            raise ValueError(f"`cutoff_size` must be a positive side length or None, got {self.cutoff_size}.")
        lo, hi = self.step_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"`step_range` must be (start, end) with 0 <= start <= end <= 1, got {self.step_range}.")

    def active(self, step: int, num_steps: int) -> bool:
        lo, hi = self.step_range
        frac = step / max(num_steps, 1)
        return self.iterations > 0 and self.step_size > 0 and lo <= frac < hi

    def radius(self, height: int, width: int) -> float:
        return self.cutoff if self.cutoff_size is None else self.cutoff * min(height, width) / self.cutoff_size

    def before_model(self, state: StepState) -> torch.Tensor:
        if state.source is None or not self.active(state.step, state.num_steps):
            return state.latents
        level = noise_level(state.scheduler, state.timestep)
        kind = prediction_type(state.scheduler)
        weight = math.exp(-self.lam * level.t)
        z = state.latents.detach()
        source = (state.source.float() / 2 + 0.5).clamp(0, 1)
        if source.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"HGS: source batch {source.shape[0]} does not match the latent batch {z.shape[0]}.")
        keep, free = None, None
        if state.mask is not None:
            m = state.mask.float().to(z.device)
            keep = 1.0 - F.interpolate(m, size=source.shape[-2:], mode="nearest")
            # a latent is free if any pixel it covers may change
            free = F.adaptive_max_pool2d(m, z.shape[-2:]) if m.shape[-2:] != z.shape[-2:] else m
        radius = self.radius(*source.shape[-2:])
        history = []
        for _ in range(int(self.iterations)):
            with torch.enable_grad():
                zk = z.clone().requires_grad_(True)
                pred = state.predict_noise(zk)
                x0 = x0_from_prediction(pred.float(), zk.float(), level, kind)
                decoded = state.decode(x0.to(z.dtype)).float().clamp(-1, 1) / 2 + 0.5
                if decoded.shape[-2:] != source.shape[-2:]:
                    raise ValueError(f"HGS: decoded size {tuple(decoded.shape[-2:])} differs from the source's {tuple(source.shape[-2:])}.")
                per_sample = hf_loss(decoded, source.expand(decoded.shape[0], -1, -1, -1), radius, keep)
                loss = weight * per_sample.sum()  # a sum: each sample's gradient is its own
                (grad,) = torch.autograd.grad(loss, zk)
            history.append([float(v) for v in per_sample.detach()])
            grad = grad.float()
            if not torch.isfinite(grad).all():
                logger.warning("HGS: non-finite gradient at step %d (%s model); skipping the update.", state.step, z.dtype)
                break
            if free is not None:
                grad = grad * (1.0 - free)
            z = (z.float() - self.step_size * grad).to(z.dtype)
        self.losses.append([sum(h) for h in history])
        return z

    def after_model(self, state: StepState, model_latents: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
        if model_latents is state.latents:
            return noise_pred
        level = noise_level(state.scheduler, state.timestep)
        kind = prediction_type(state.scheduler)
        x0 = x0_from_prediction(noise_pred.float(), model_latents.float(), level, kind)
        return prediction_from_x0(x0, state.latents.float(), level, kind).to(noise_pred.dtype)
