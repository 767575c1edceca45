"""Tiny, offline Dream Engine pieces: a byte-level Qwen2 tokenizer, a PIL Qwen2-VL image
processor, the image-only processor, a seeded Qwen2-VL, and the adapted SD3 transformer."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLModel

from editkit.modeling.dream_adapter import DreamTransformer2DModel
from editkit.modeling.dream_encoder import Qwen2VLImageProcessorOnly

from . import bytes_to_unicode

QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)


def tiny_qwen2_tokenizer() -> Qwen2TokenizerFast:
    """256 byte symbols, no merges, then Qwen2's 8 specials (ids 256-263): 264 tokens."""
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = Qwen2TokenizerFast(tokenizer_object=backend, unk_token=None, bos_token=None,
                             eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    tok.padding_side = "right"
    return tok


def tiny_qwen2_vl_image_processor(pixels: int = 112):
    """PIL image processor (no torchvision); every image becomes `pixels` x `pixels`:
    (pixels / 28)^2 image tokens (16 at 112)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    except ImportError:  # transformers 4.x
        from transformers import Qwen2VLImageProcessor as cls
    area = pixels * pixels
    return cls(min_pixels=area, max_pixels=area, patch_size=14, merge_size=2, temporal_patch_size=2)


def tiny_qwen2_vl_processor(pixels: int = 112) -> Qwen2VLImageProcessorOnly:
    return Qwen2VLImageProcessorOnly(image_processor=tiny_qwen2_vl_image_processor(pixels), tokenizer=tiny_qwen2_tokenizer())


def tiny_qwen2_vl(hidden_size: int = 32, num_layers: int = 2, vision_depth: int = 2, vision_dim: int = 32,
                  tokenizer=None, seed: int = 0) -> Qwen2VLModel:
    """A seeded Qwen2-VL (no LM head): heads of width 8 (hidden / 8 heads), so M-RoPE sections [2, 1, 1] sum to 8 / 2.
    The vision merger outputs `hidden_size` (the LLM width), as Qwen2-VL requires."""
    tokenizer = tokenizer or tiny_qwen2_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    heads = max(1, hidden_size // 8)
    config = Qwen2VLConfig(
        text_config={
            "hidden_size": hidden_size, "intermediate_size": hidden_size * 2 + 5, "num_hidden_layers": num_layers,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2), "vocab_size": 320,
            "max_position_embeddings": 1024, "rope_theta": 10000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth, "embed_dim": vision_dim, "hidden_size": hidden_size, "hidden_act": "quick_gelu",
            "mlp_ratio": 4, "num_heads": 4, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2VLModel(config).eval()


def tiny_dream_transformer(lmm_hidden_size: int = 32, in_channels: int = 4, num_layers: int = 2, heads: int = 4,
                           head_dim: int = 8, adapter_hidden_dim: int = 64, sample_size: int = 32,
                           pos_embed_max_size: int = 32, seed: int = 0) -> DreamTransformer2DModel:
    torch.manual_seed(seed)
    return DreamTransformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=in_channels, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=lmm_hidden_size,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=lmm_hidden_size, out_channels=in_channels,
        pos_embed_max_size=pos_embed_max_size, qk_norm=None, adapter_hidden_dim=adapter_hidden_dim,
    ).eval()


def tiny_dream_components(seed: int = 0) -> dict:
    """Keyword arguments for a tiny, seeded `DreamEnginePipeline` (the tests' and benchmarks' model)."""
    from . import tiny_vae
    from .sd3 import sd3_flow_scheduler

    proc = tiny_qwen2_vl_processor()
    vae = tiny_vae(seed=seed + 1)
    vae.register_to_config(shift_factor=0.0)  # StableDiffusion3Pipeline decodes with the shift
    return {
        "vae": vae, "lmm": tiny_qwen2_vl(tokenizer=proc.tokenizer), "tokenizer": proc.tokenizer,
        "image_processor": proc.image_processor, "transformer": tiny_dream_transformer(seed=seed + 2),
        "scheduler": sd3_flow_scheduler(),
    }
