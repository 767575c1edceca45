"""What every method's training plugin provides to `train/train.py`."""

from __future__ import annotations

import torch

from editkit.images import pil_to_tensor


class MethodTraining:
    """A method plugs into the shared trainer by defining these.

    - `trainable()` / `frozen()`: modules by name (trainable ones are optimised,
      prepared by accelerate and checkpointed);
    - `encode_images(source, target)`: the frozen encodings latent caching stores;
    - `loss(models, batch, generators)`: one generator per sample, so a sample's
      noise, timestep and dropout do not depend on batch layout or process count;
    - `collate(items)`, `pipeline(models)`: batching, and the method's pipeline
      for validation and export.
    """

    name = "base"
    has_pipeline = True  # validation images and export through `pipeline()`
    distributed = True  # the loss calls the prepared (DDP-wrapped) modules' forward

    def __init__(self, cfg):
        self.cfg = cfg

    def trainable(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def fingerprint_parts(self) -> dict:
        raise NotImplementedError

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        """Pixels in [-1, 1] exactly as the pipelines preprocess them, plus indices and instructions."""
        return {
            "index": torch.tensor([it["index"] for it in items]),
            "source": pil_to_tensor([it["source"] for it in items]),
            "target": pil_to_tensor([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items],
        }

    def pipeline(self, models: dict[str, torch.nn.Module]):
        raise NotImplementedError

    def export(self, path, models: dict[str, torch.nn.Module]) -> None:
        """Write a folder the method's pipeline loads with `from_pretrained`."""
        self.pipeline(models).save_pretrained(path, safe_serialization=True)


def randn_per_sample(generators: list[torch.Generator], shape, device) -> torch.Tensor:
    """One standard-normal draw of `shape` per sample, each from that sample's own generator,
    so a sample's noise does not depend on batch layout or process count."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def scaled_target_latents(lat: dict[str, torch.Tensor], eps: torch.Tensor, vae) -> torch.Tensor:
    """A draw from the cached target posterior in diffusion space: `(mean + std * eps - shift) * scaling`."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (lat["target_mean"] + lat["target_std"] * eps - shift) * vae.config.scaling_factor


def sd_noise_schedules(train_cfg) -> tuple:
    """The UNet methods' training noise schedule (SD's scaled-linear betas) and the sampler exported with it.

    `train.prediction_type` (epsilon | v_prediction) goes to both. `train.zero_terminal_snr` rescales the
    betas so the last step is pure noise (Lin et al. 2024: SD's schedule keeps ~7 % of the signal at
    t = 999, so a model never learns to set colours from pure noise); it needs v-prediction, and the
    sampler then uses trailing timesteps, as that paper prescribes."""
    from diffusers import DDPMScheduler

    from editkit.testing import SD_BETAS, sd_euler_ancestral

    zero_snr = bool(train_cfg.get("zero_terminal_snr", False))
    prediction = train_cfg.get("prediction_type") or "epsilon"
    if zero_snr and prediction != "v_prediction":
        raise ValueError("train.zero_terminal_snr=true needs train.prediction_type=v_prediction "
                         f"(epsilon is undefined at zero SNR); got prediction_type={prediction!r}.")
    noise = DDPMScheduler(**SD_BETAS, num_train_timesteps=1000, prediction_type=prediction, rescale_betas_zero_snr=zero_snr)
    sampler = sd_euler_ancestral(prediction, zero_snr)
    return noise, sampler
