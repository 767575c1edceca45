"""Autoencoder training (the shipped tiny models' VAE): reconstruction + a small KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from editkit.images import pil_to_tensor
from editkit.testing import tiny_vae

from .base import MethodTraining

KL_WEIGHT = 1e-6


class VAETraining(MethodTraining):
    name = "vae"
    has_pipeline = False
    distributed = False  # encode/decode bypass the DDP wrapper's forward

    def __init__(self, cfg):
        super().__init__(cfg)
        t = cfg.model.tiny
        self.vae = tiny_vae(tuple(t.vae_channels), bool(t.vae_mid_attention), t.norm_groups, seed=cfg.seed + 1).train()

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae}

    def fingerprint_parts(self) -> dict:
        return {"method": self.name, "vae": dict(self.vae.config)}

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        # the autoencoder is what trains: the "encoding" is the pixels themselves (one row per sample, so a cache can hold them)
        return {"source": source, "target": target}

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        vae = getattr(models["vae"], "module", models["vae"])
        x = torch.cat([batch["latents"]["source"], batch["latents"]["target"]])
        dist = vae.encode(x).latent_dist
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators + generators]).to(x.device)
        z = dist.mean + dist.std * eps
        recon = vae.decode(z).sample
        kl = dist.kl().mean() / x[0].numel()
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + KL_WEIGHT * kl


    def export(self, path, models: dict[str, torch.nn.Module]) -> None:
        from editkit.data.shapes import generate

        vae = getattr(models["vae"], "module", models["vae"])
        samples = list(generate(self.cfg.data.tasks, 256, int(self.cfg.data.size), "val", self.cfg.seed))
        calibrate_scaling(vae, pil_to_tensor([s.target for s in samples] + [s.source for s in samples]))
        vae.save_pretrained(path, safe_serialization=True)


@torch.no_grad()
def calibrate_scaling(vae, pixels: torch.Tensor, chunk: int = 64) -> float:
    """Set `scaling_factor` so scaled latents have unit std (how SD's 0.18215 was chosen).

    Without it a small VAE's latents can be far from unit variance, which shifts
    the diffusion noise schedule and starves the UNet of signal.
    """
    was_training = vae.training
    vae.eval()
    means = torch.cat([vae.encode(pixels[i : i + chunk].to(vae.device, vae.dtype)).latent_dist.mean.float() for i in range(0, len(pixels), chunk)])
    vae.train(was_training)
    factor = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=factor)
    return factor
