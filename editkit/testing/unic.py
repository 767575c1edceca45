"""Tiny, seeded, offline UNIC-Adapter components: SD3's three text encoders, a VAE, the adapter.

The text stack mirrors SD3's layout at toy width: CLIP-L and CLIP-G (both with
a text projection; their penultimate states are concatenated and zero-padded
to T5's width), and a T5 encoder. All three use the byte-level CLIP tokenizer
of `editkit.testing`, which needs no download.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from editkit.modeling.unic_adapter import UNICSD3Transformer2DModel

from . import tiny_clip_tokenizer, tiny_vae
from .sd3 import sd3_flow_scheduler, tiny_sd3_transformer


def tiny_clip_with_projection(hidden_size: int = 16, num_hidden_layers: int = 2, projection_dim: int = 16,
                              max_length: int = 77, seed: int = 0) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=514, hidden_size=hidden_size, intermediate_size=hidden_size * 4 if hidden_size != 32 else 37,
        num_attention_heads=4, num_hidden_layers=num_hidden_layers, projection_dim=projection_dim,
        max_position_embeddings=max_length, layer_norm_eps=1e-5, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    )
    return CLIPTextModelWithProjection(config).eval()


def tiny_t5_encoder(d_model: int = 32, num_layers: int = 2, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=514, d_model=d_model, d_kv=8, d_ff=d_model * 2, num_layers=num_layers, num_heads=4,
                      pad_token_id=513, eos_token_id=513, decoder_start_token_id=513)
    return T5EncoderModel(config).eval()


def tiny_sd3_text_stack(clip_hidden: int = 16, clip_layers: int = 2, projection_dim: int = 16, t5_dim: int = 32,
                        t5_layers: int = 2, max_length: int = 77, t5_max_length: int | None = None, seed: int = 0) -> dict:
    """The six text components of an SD3 pipeline. Joint attention width = t5_dim (must be >= 2 * clip_hidden);
    pooled width = 2 * projection_dim; CLIP tokens `max_length`, T5 tokens `t5_max_length` (default: the same)."""
    if 2 * clip_hidden > t5_dim:
        raise ValueError(f"SD3 zero-pads the two CLIP widths to T5's: need 2 * clip_hidden <= t5_dim, got {clip_hidden}, {t5_dim}.")
    return {
        "text_encoder": tiny_clip_with_projection(clip_hidden, clip_layers, projection_dim, max_length, seed=seed),
        "text_encoder_2": tiny_clip_with_projection(clip_hidden, clip_layers, projection_dim, max_length, seed=seed + 1),
        "text_encoder_3": tiny_t5_encoder(t5_dim, t5_layers, seed=seed + 2),
        "tokenizer": tiny_clip_tokenizer(model_max_length=max_length),
        "tokenizer_2": tiny_clip_tokenizer(model_max_length=max_length),
        "tokenizer_3": tiny_clip_tokenizer(model_max_length=t5_max_length or max_length),
    }


def tiny_unic_transformer(in_channels: int = 4, num_layers: int = 2, heads: int = 2, head_dim: int = 16,
                          joint_attention_dim: int = 32, pooled_projection_dim: int = 32, sample_size: int = 32,
                          use_control_gate: bool = False, init_from_base: bool = False, seed: int = 0) -> UNICSD3Transformer2DModel:
    """A tiny seeded SD3 base (`tiny_sd3_transformer`) wrapped with a seeded random (or base-copied) adapter."""
    base = tiny_sd3_transformer(in_channels=in_channels, num_layers=num_layers, heads=heads, head_dim=head_dim,
                                joint_attention_dim=joint_attention_dim, pooled_projection_dim=pooled_projection_dim,
                                sample_size=sample_size, pos_embed_max_size=sample_size, seed=seed)
    torch.manual_seed(seed + 100)
    return UNICSD3Transformer2DModel.from_sd3(base, init_from_base=init_from_base, use_control_gate=use_control_gate).eval()


def tiny_unic_components(seed: int = 0, shift_factor: float = 0.0609) -> dict:
    """Everything `UNICAdapterPipeline` needs (and, with `transformer.base_transformer()`, diffusers'
    `StableDiffusion3Pipeline`), tiny and seeded. The VAE gets an SD3-style shift factor."""
    text = tiny_sd3_text_stack(seed=seed + 2)
    vae = tiny_vae(seed=seed + 1)
    vae.register_to_config(shift_factor=shift_factor)
    return {
        "transformer": tiny_unic_transformer(seed=seed),
        "vae": vae,
        "scheduler": sd3_flow_scheduler(),
        **text,
    }
