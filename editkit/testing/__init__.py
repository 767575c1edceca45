"""Tiny, seeded components built offline, for tests, benchmarks and docs.

Nothing here touches a model hub: the tokenizer is built from a byte-level
vocabulary written to disk, and every model is randomly initialised from a
small config under a fixed seed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256, 257, ..."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over 256 byte symbols (+ their word-final forms), no merges: 514 tokens."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + 256 for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    try:
        # transformers 5.x: in-memory vocab (its file-path arguments silently give a 2-token vocabulary)
        tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, pad_token="<|endoftext|>")
    except TypeError:
        tok = None
    if tok is None or len(tok) != len(vocab):
        with tempfile.TemporaryDirectory() as tmp:  # transformers 4.x: file paths
            (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
            (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
            tok = CLIPTokenizer(
                vocab_file=str(Path(tmp) / "vocab.json"),
                merges_file=str(Path(tmp) / "merges.txt"),
                model_max_length=model_max_length,
                pad_token="<|endoftext|>",
            )
    if len(tok) != len(vocab):
        raise RuntimeError(f"tiny CLIP tokenizer has {len(tok)} tokens, expected {len(vocab)}: this transformers version builds it differently")
    return tok


def tiny_clip_text_encoder(
    vocab_size: int = 514, hidden_size: int = 32, num_hidden_layers: int = 5, max_length: int = 77, seed: int = 0
) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37 if hidden_size == 32 else hidden_size * 4,
        num_attention_heads=4,
        num_hidden_layers=num_hidden_layers,
        max_position_embeddings=max_length,
        layer_norm_eps=1e-5,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(
    block_out_channels: tuple[int, ...] = (32, 64), mid_attention: bool = True, norm_num_groups: int | None = None, seed: int = 0
) -> AutoencoderKL:
    """SD-style KL autoencoder; scale factor 2 ** (len(block_out_channels) - 1).

    Use groups of several channels (`norm_num_groups` < channels) for models that
    must reproduce flat colours: a one-channel GroupNorm erases a uniform map."""
    torch.manual_seed(seed)
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_num_groups or min(32, block_out_channels[0]),
        sample_size=32,
        mid_block_add_attention=mid_attention,
    ).eval()


def tiny_unet(
    in_channels: int = 8,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    layers_per_block: int = 2,
    norm_num_groups: int | None = None,
    seed: int = 0,
) -> UNet2DConditionModel:
    """An InstructPix2Pix-style UNet (8 input channels: noisy latent + image latent)."""
    torch.manual_seed(seed)
    n = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=norm_num_groups or min(32, block_out_channels[0]),
    ).eval()


SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}  # SD's training schedule


def sd_euler_ancestral(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> EulerAncestralDiscreteScheduler:
    """Euler-ancestral with SD betas and linspace spacing: the k-diffusion sampler of IP2P/InstructCV.
    With `zero_terminal_snr` the betas are rescaled (pure noise at the last step) and the timesteps trail,
    as Lin et al. (2024) prescribe."""
    return EulerAncestralDiscreteScheduler(
        **SD_BETAS, timestep_spacing="trailing" if zero_terminal_snr else "linspace",
        prediction_type=prediction_type, rescale_betas_zero_snr=zero_terminal_snr,
    )


def tiny_instructcv_components(seed: int = 0) -> dict:
    """Everything `InstructCVPipeline` (and diffusers' IP2P pipeline) needs, tiny and seeded."""
    return {
        "unet": tiny_unet(seed=seed),
        "vae": tiny_vae(seed=seed + 1),
        "text_encoder": tiny_clip_text_encoder(seed=seed + 2),
        "tokenizer": tiny_clip_tokenizer(),
        "scheduler": sd_euler_ancestral(),
    }
