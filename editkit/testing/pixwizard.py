"""Tiny, seeded PixWizard components built offline: DiT, Gemma-style LLM text encoder with a
byte-level tokenizer, CLIP text (with projection) and CLIP vision models, flow scheduler."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModel,
    GemmaConfig,
    GemmaModel,
    PreTrainedTokenizerFast,
)

from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel

from . import bytes_to_unicode, tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_vae

LLM_SPECIALS = ("<pad>", "<eos>", "<bos>")  # ids 256, 257, 258


def tiny_llm_tokenizer(model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """A byte-level fast tokenizer (one token per UTF-8 byte, no merges) standing in for Gemma's.

    Like Gemma's it prepends `<bos>`; `<pad>` and `<eos>` are separate tokens. 259 tokens."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    for j, special in enumerate(LLM_SPECIALS):
        vocab[special] = 256 + j
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 258)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        model_max_length=model_max_length, padding_side="right",
    )


def tiny_llm_text_encoder(hidden_size: int = 32, num_hidden_layers: int = 2, vocab_size: int = 259,
                          max_position_embeddings: int = 512, seed: int = 0) -> GemmaModel:
    """A Gemma decoder at toy width (the pipelines read its penultimate hidden state)."""
    torch.manual_seed(seed)
    config = GemmaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=1,
        head_dim=hidden_size // 4, max_position_embeddings=max_position_embeddings,
        pad_token_id=256, eos_token_id=257, bos_token_id=258,
    )
    return GemmaModel(config).eval()


def tiny_clip_text_with_projection(hidden_size: int = 32, projection_dim: int = 32, num_hidden_layers: int = 2,
                                   max_length: int = 77, seed: int = 0) -> CLIPTextModelWithProjection:
    """CLIP text model whose `text_embeds` (projected EOS token) give PixWizard's task embedding."""
    base = tiny_clip_text_encoder(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, max_length=max_length, seed=seed)
    config = CLIPTextConfig(**{**base.config.to_dict(), "projection_dim": projection_dim})
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval()


def tiny_clip_vision(hidden_size: int = 32, image_size: int = 32, patch_size: int = 4, num_hidden_layers: int = 2,
                     seed: int = 0) -> CLIPVisionModel:
    """CLIP ViT at toy width; (image_size / patch_size)^2 tokens (64 by default)."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size, projection_dim=hidden_size,
    )
    return CLIPVisionModel(config).eval()


def tiny_pixwizard_transformer(hidden_size: int = 32, num_layers: int = 2, num_attention_heads: int = 4,
                               num_kv_heads: int = 2, cross_attention_dim: int = 32, pooled_text_dim: int = 32,
                               image_embed_dim: int = 32, sample_tokens: int = 8, sample_size: int = 16,
                               learn_sigma: bool = True, randomize: bool = False, seed: int = 0) -> PixWizardTransformer2DModel:
    """A seeded tiny PixWizard DiT. `randomize` also fills the zero-initialised parts (gates, adaLN,
    output layer, task/global embedders) with small random values, so tests see every path."""
    torch.manual_seed(seed)
    model = PixWizardTransformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, condition_channels=4, hidden_size=hidden_size,
        num_layers=num_layers, num_attention_heads=num_attention_heads, num_kv_heads=num_kv_heads, multiple_of=16,
        cross_attention_dim=cross_attention_dim, pooled_text_dim=pooled_text_dim, image_embed_dim=image_embed_dim,
        sample_tokens=sample_tokens, learn_sigma=learn_sigma,
    )
    if randomize:
        randomize_zero_init_(model, seed)
    return model.eval()


@torch.no_grad()
def randomize_zero_init_(model: PixWizardTransformer2DModel, seed: int = 0, std: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed + 1000)
    params = []
    for layer in model.layers:
        params += [layer.norm1.linear.weight, layer.norm1.linear.bias, layer.gate, layer.gate_image]
    for lin in (model.task_embedder[1], model.global_semantic_embedder[1], model.norm_out.linear_1, model.norm_out.linear_2):
        params += [lin.weight, lin.bias]
    for p in params:
        p.copy_(torch.randn(p.shape, generator=gen) * std)


def pixwizard_flow_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def tiny_pixwizard_components(seed: int = 0, randomize: bool = True) -> dict:
    """Everything `PixWizardPipeline` needs, tiny and seeded (vae: scale factor 2)."""
    return {
        "transformer": tiny_pixwizard_transformer(randomize=randomize, seed=seed),
        "vae": tiny_vae(block_out_channels=(16, 32), mid_attention=False, norm_num_groups=4, seed=seed + 1),
        "text_encoder": tiny_llm_text_encoder(seed=seed + 2),
        "tokenizer": tiny_llm_tokenizer(),
        "clip_text_encoder": tiny_clip_text_with_projection(seed=seed + 3),
        "clip_tokenizer": tiny_clip_tokenizer(),
        "image_encoder": tiny_clip_vision(seed=seed + 4),
        "scheduler": pixwizard_flow_scheduler(),
    }
