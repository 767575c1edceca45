"""Tiny SD3-family pieces (MM-DiT, flow scheduler, 4-channel VAE) for UNIC-Adapter and Dream Engine tests."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel


def tiny_sd3_transformer(in_channels: int = 4, num_layers: int = 2, heads: int = 4, head_dim: int = 8,
                         joint_attention_dim: int = 32, pooled_projection_dim: int = 32, patch_size: int = 2,
                         sample_size: int = 32, pos_embed_max_size: int = 32, seed: int = 0) -> SD3Transformer2DModel:
    """A seeded, randomly initialised MM-DiT with SD3's layout at toy width (caption projection = inner dim)."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=joint_attention_dim,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=pooled_projection_dim,
        out_channels=in_channels, pos_embed_max_size=pos_embed_max_size,
    ).eval()


def sd3_flow_scheduler(shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
