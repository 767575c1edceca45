"""Tiny, seeded PromptFix components (offline) for tests and benchmarks."""

from __future__ import annotations

import torch

from editkit.modeling.promptfix_unet import PromptFixUNet2DConditionModel
from editkit.modeling.promptfix_vae import PromptFixAutoencoderKL

from . import tiny_instructcv_components


def tiny_promptfix_components(seed: int = 0, skip_lora: bool = False) -> dict:
    """`tiny_instructcv_components` with a PromptFix UNet (auxiliary attention, width of the text states).

    `skip_lora=True` swaps in the skip-LoRA VAE with small random (non-zero) LoRA weights."""
    comps = tiny_instructcv_components(seed=seed)
    torch.manual_seed(seed + 3)
    unet = comps["unet"]
    comps["unet"] = PromptFixUNet2DConditionModel.from_unet(unet, unet.config.cross_attention_dim).eval()
    if skip_lora:
        vae = comps["vae"]
        pf_vae = PromptFixAutoencoderKL.from_config({**vae.config, "skip_lora_rank": 4})
        pf_vae.load_state_dict(vae.state_dict(), strict=False)
        g = torch.Generator().manual_seed(seed + 4)
        with torch.no_grad():
            for name, p in pf_vae.named_parameters():
                if ".lora." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        comps["vae"] = pf_vae.eval()
    return comps
