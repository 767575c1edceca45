"""Encoders shared by the pipelines and the trainer.

Pipelines and training plugins call the same functions, so a condition is
encoded identically at training and sampling time.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def tokenize_clip(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Pad/truncate to the tokenizer's max length (77 for CLIP), warning on truncation."""
    max_len = tokenizer.model_max_length
    tokens = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > max_len:
        logger.warning("prompt truncated to %d CLIP tokens", max_len)
    return tokens


def encode_clip_text(tokenizer, text_encoder, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
    """CLIP last hidden states (B, 77, D) for `prompts`, in the encoder's dtype.

    Gradients flow when called outside `torch.no_grad` (training the text encoder)."""
    model = getattr(text_encoder, "module", text_encoder)  # unwrap DDP for config/dtype, call the wrapper
    device = device if device is not None else model.device
    tokens = tokenize_clip(tokenizer, prompts)
    mask = None
    if getattr(model.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    states = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    return states.to(dtype=model.dtype, device=device)


def _posterior(vae, pixels: torch.Tensor):
    # under model CPU offload the VAE sits on the CPU until encode() moves it: keep the caller's device then
    device = pixels.device if hasattr(vae, "_hf_hook") else vae.device
    return vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist


def vae_encode_mode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior mode of `pixels` in [-1, 1], **unscaled** (the IP2P conditioning convention)."""
    return _posterior(vae, pixels).mode()


def vae_encode_scaled(vae, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Diffusion-space latents `(z - shift) * scaling` of pixels in [-1, 1] (the DiT methods' convention):
    z is the posterior mode, or a sample drawn with `generator`."""
    dist = _posterior(vae, pixels)
    z = dist.sample(generator) if sample else dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode *scaled* diffusion latents to pixels in [-1, 1]."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = latents / vae.config.scaling_factor + shift
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
