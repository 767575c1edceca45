"""The PixWizard transformer: a Lumina-Next DiT with structure- and semantic-aware guidance.

Built from diffusers' Lumina-Next pieces (`LuminaNextDiTBlock`, `LuminaPatchEmbed`,
`LuminaLayerNormContinuous`, the Lumina 2D RoPE) and extended as PixWizard does:

- **structure-aware guidance**: the source image's VAE latent is concatenated on
  channels after the noisy latent; the patch embedding is widened for it;
- **semantic-aware guidance**: CLIP image tokens enter every block through a
  task-aware token sampler (keeps `sample_tokens` of them) and a zero-gated
  cross-attention whose queries carry the block's 2D RoPE; their mean enters
  the adaLN conditioning through `global_semantic_embedder`;
- **task embedding**: the pooled (projected) CLIP text embedding, through
  `task_embedder`, joins the adaLN conditioning and steers the token sampler.

One query projection (`attn1.to_q` / `attn1.norm_q`) serves the self-attention,
the text cross-attention and the image cross-attention, as in PixWizard; the
three outputs are summed before the shared output projection `attn2.to_out.0`.

Differences from the official code (pixwizard.md §11): the token sampler is
deterministic top-K at inference (`token_selection="topk"`; `"gumbel"` keeps
the official random draw, seeded), KV heads are repeated explicitly (runs in
fp32 on CPU), RoPE is computed for the actual grid, and forward is stateless.
All samples of a batch share one latent size (aspect buckets), so no padding
is needed; `pad_token` is kept for checkpoint compatibility.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import (
    LuminaPatchEmbed,
    TimestepEmbedding,
    Timesteps,
    apply_rotary_emb,
    get_2d_rotary_pos_embed_lumina,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import LuminaLayerNormContinuous, RMSNorm
from diffusers.models import CacheMixin
from diffusers.models.transformers.lumina_nextdit2d import LuminaNextDiT2DModel, LuminaNextDiTBlock

from editkit.attention import AttentionBackendMixin, attend

from .cache_blocks import register_cache_block

TOKEN_SELECTIONS = ("topk", "gumbel")


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
               scale: float | None, backend: str = "sdpa") -> torch.Tensor:
    """(B, S, H, D) queries against (B, L, KV, D) keys/values; KV heads repeated for grouped-query attention.
    `backend`: the `editkit.attention` kernel (the block's `attention_backend`)."""
    heads, kv_heads = query.shape[2], key.shape[2]
    if heads != kv_heads:
        key = key.repeat_interleave(heads // kv_heads, dim=2)
        value = value.repeat_interleave(heads // kv_heads, dim=2)
    attn_mask = None if mask is None else mask.bool()[:, None, None, :]
    out = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask, scale=scale, backend=backend)
    return out.transpose(1, 2)


def official_gumbel_noise(num_layers: int, has_image: torch.Tensor, n_tokens: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel draws (num_layers, B, N) made as the official MultiHot_Gumbel_Softmax makes them, in its order:
    -log(Exp(1)), one row per layer and per sample that has image tokens (image-free samples draw nothing), so
    a generator seeded like the official run's global seed gives the official selection."""
    device = generator.device if generator is not None else "cpu"
    noise = torch.zeros(num_layers, has_image.numel(), n_tokens, device=device)
    rows = has_image.nonzero().flatten().tolist()
    for layer in range(num_layers):
        for row in rows:
            noise[layer, row] = -torch.empty(n_tokens, device=device).exponential_(generator=generator).log()
    return noise


class TaskAwareTokenSampler(nn.Module):
    """Scores CLIP image tokens given the task and keeps the `k` best (PixWizard §3.2).

    Scoring: LayerNorm -> Linear -> GELU; the second half of the channels is
    mean-pooled over tokens (global context) and concatenated back; an MLP
    dim -> dim/2 -> dim/4 -> 1 gives one logit per token. Selection keeps the
    top-k tokens in their original order. With `noise` (Gumbel draws) the
    official stochastic selection is reproduced; with grad enabled, the kept
    rows are multiplied by straight-through weights (1 in the forward pass,
    softmax((logits + noise) / tau) gradients) so the scorer learns.
    """

    def __init__(self, dim: int, temperature: float = 5.0):
        super().__init__()
        self.temperature = temperature
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 1)
        )

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(tokens)
        half = x.shape[-1] // 2
        local, pooled = x[..., :half], x[..., half:].mean(dim=1, keepdim=True)
        x = torch.cat([local, pooled.expand(-1, x.shape[1], -1)], dim=-1)
        return self.out_conv(x).squeeze(-1)

    def forward(self, tokens: torch.Tensor, scored: torch.Tensor, k: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Select `k` rows of `tokens` (B, N, D) by the scores of `scored` (B, N, D)."""
        n = tokens.shape[1]
        if k >= n:
            return tokens
        logits = self.logits(scored)
        if noise is not None:
            logits = logits + noise.to(logits.dtype)
        index = logits.topk(k, dim=1).indices.sort(dim=1).values
        picked = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
        if torch.is_grad_enabled():
            soft = (logits / self.temperature).softmax(dim=1).gather(1, index)
            picked = picked * (soft - soft.detach() + 1.0)[..., None]  # exactly 1 forward, soft gradient
        return picked


class PixWizardBlock(AttentionBackendMixin, LuminaNextDiTBlock):
    """A Lumina-Next block plus PixWizard's image cross-attention and token sampler.

    Reused from `LuminaNextDiTBlock`: `attn1` (self-attention; its `to_q`/`norm_q`
    are the block's one query projection), `attn2` (Gemma cross-attention keys,
    values and the shared output projection), `gate`, `norm1` (adaLN),
    `norm2`, `ffn_norm1/2`, `norm1_context`, `feed_forward`.
    """

    def __init__(self, dim: int, num_attention_heads: int, num_kv_heads: int | None, multiple_of: int,
                 ffn_dim_multiplier: float | None, norm_eps: float, qk_norm: bool, cross_attention_dim: int,
                 conditioning_dim: int, image_embed_dim: int, token_temperature: float, task_proj_bias: bool = False):
        super().__init__(dim, num_attention_heads, num_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm,
                         cross_attention_dim)
        # The query is shared by all three attentions: attn2 needs no query of its own.
        self.attn2.to_q = None
        self.attn2.norm_q = None
        self.heads = num_attention_heads
        self.kv_heads = num_kv_heads or num_attention_heads
        kv_dim = self.kv_heads * self.head_dim
        self.task_proj = nn.Linear(conditioning_dim, dim, bias=task_proj_bias)  # official y_pool_proj: no bias
        self.image_proj = nn.Linear(image_embed_dim, dim, bias=False)  # official input_image_proj
        self.token_sampler = TaskAwareTokenSampler(dim, token_temperature)  # official in_conv / out_conv
        self.norm_image = RMSNorm(dim, eps=norm_eps)  # official attention_input_norm
        self.to_k_image = nn.Linear(dim, kv_dim, bias=False)  # official wk_ii
        self.to_v_image = nn.Linear(dim, kv_dim, bias=False)  # official wv_ii
        self.norm_k_image = nn.LayerNorm(kv_dim, eps=1e-5) if qk_norm else nn.Identity()  # official kii_norm
        self.gate_image = nn.Parameter(torch.zeros(num_attention_heads))  # official gate_for_ii

    def select_image_tokens(self, image_embeds: torch.Tensor, task_emb: torch.Tensor, k: int,
                            noise: torch.Tensor | None) -> torch.Tensor:
        """Project CLIP tokens, keep `k` of them; samples without an image (all-zero tokens) get k zero tokens."""
        tokens = self.image_proj(image_embeds)
        picked = self.token_sampler(tokens, tokens + self.task_proj(task_emb)[:, None], k, noise)
        has_image = image_embeds.flatten(1).abs().amax(dim=1) > 0
        return torch.where(has_image[:, None, None], picked, torch.zeros_like(picked))

    def forward(self, hidden_states: torch.Tensor, rotary_emb: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_mask: torch.Tensor, temb: torch.Tensor, image_tokens: torch.Tensor,
                base_sequence_length: int | None = None) -> torch.Tensor:
        b, s, _ = hidden_states.shape
        residual = hidden_states
        norm_hidden, gate_msa, scale_mlp, gate_mlp = self.norm1(hidden_states, temb)

        a1, a2 = self.attn1, self.attn2
        query = a1.to_q(norm_hidden)
        if a1.norm_q is not None:
            query = a1.norm_q(query)
        query = apply_rotary_emb(query.view(b, s, self.heads, self.head_dim), rotary_emb, use_real=False)

        # self-attention: RoPE on keys too, proportional attention scale
        key = a1.to_k(norm_hidden)
        if a1.norm_k is not None:
            key = a1.norm_k(key)
        key = apply_rotary_emb(key.view(b, s, self.kv_heads, self.head_dim), rotary_emb, use_real=False)
        value = a1.to_v(norm_hidden).view(b, s, self.kv_heads, self.head_dim)
        scale = a1.scale
        if base_sequence_length is not None and base_sequence_length > 1:
            scale = math.sqrt(math.log(s, base_sequence_length)) * a1.scale
        out = _attention(query, key.to(query.dtype), value, None, scale, self.attention_backend)

        # text cross-attention: keys without RoPE, Gemma padding mask, tanh-gated per head
        context = self.norm1_context(encoder_hidden_states)
        t = context.shape[1]
        key = a2.to_k(context)
        if a2.norm_k is not None:
            key = a2.norm_k(key)
        value = a2.to_v(context)
        text_out = _attention(query, key.view(b, t, self.kv_heads, self.head_dim),
                              value.view(b, t, self.kv_heads, self.head_dim), encoder_mask, None, self.attention_backend)
        out = out + text_out * self.gate.tanh().view(1, 1, -1, 1)

        # image cross-attention over the sampled CLIP tokens: no mask, tanh-gated per head
        img = self.norm_image(image_tokens)
        n = img.shape[1]
        key = self.norm_k_image(self.to_k_image(img)).view(b, n, self.kv_heads, self.head_dim)
        value = self.to_v_image(img).view(b, n, self.kv_heads, self.head_dim)
        image_out = _attention(query, key, value, None, None, self.attention_backend)
        out = out + image_out * self.gate_image.tanh().view(1, 1, -1, 1)

        hidden_states = a2.to_out[0](out.flatten(-2))
        hidden_states = residual + gate_msa.unsqueeze(1).tanh() * self.norm2(hidden_states)
        mlp_output = self.feed_forward(self.ffn_norm1(hidden_states) * (1 + scale_mlp.unsqueeze(1)))
        return hidden_states + gate_mlp.unsqueeze(1).tanh() * self.ffn_norm2(mlp_output)


class PixWizardTransformer2DModel(CacheMixin, ModelMixin, ConfigMixin):
    """PixWizard's DiT. Inputs: the noisy latent, the source image latent, Gemma (LLM) states with
    their mask, the pooled CLIP text embedding and the CLIP image tokens; output: the velocity
    (data - noise), `2 * in_channels` channels with `learn_sigma` (keep the first half).

    `task_proj_bias`: the official `y_pool_proj` has no bias (editkit's first tiny model was trained with one).
    `official_sampling`: set by the converter on official checkpoints; `PixWizardPipeline` then samples the
    official way by default (guidance on latent channels 0-2, the condition encoded with a posterior sample).

    `timestep` is in [0, 1] with 0 = noise (Lumina-Next's convention).
    diffusers' block caches work on it: `transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))` (the
    hidden stream keeps its shape through the blocks; the pipeline sets a cache context per batch size).
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedder", "norm", "ffn_norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 96,
        patch_size: int = 2,
        in_channels: int = 4,
        condition_channels: int = 4,
        hidden_size: int = 2304,
        num_layers: int = 24,
        num_attention_heads: int = 32,
        num_kv_heads: int | None = 8,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        learn_sigma: bool = True,
        qk_norm: bool = True,
        cross_attention_dim: int = 2048,
        pooled_text_dim: int = 768,
        image_embed_dim: int = 1024,
        sample_tokens: int = 256,
        token_temperature: float = 5.0,
        token_selection: str = "topk",
        task_proj_bias: bool = False,
        official_sampling: bool = False,
    ):
        super().__init__()
        if hidden_size % num_attention_heads or (hidden_size // num_attention_heads) % 4:
            raise ValueError(f"`hidden_size` {hidden_size} must split into `num_attention_heads` {num_attention_heads} heads of a size divisible by 4 (2D RoPE).")
        if num_kv_heads is not None and num_attention_heads % num_kv_heads:
            raise ValueError(f"`num_attention_heads` {num_attention_heads} must be a multiple of `num_kv_heads` {num_kv_heads}.")
        if token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"`token_selection` must be one of {TOKEN_SELECTIONS}, got {token_selection!r}.")
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.head_dim = hidden_size // num_attention_heads
        cond_dim = min(hidden_size, 1024)
        self.gradient_checkpointing = False

        self.patch_embedder = LuminaPatchEmbed(patch_size, in_channels + condition_channels, hidden_size, bias=True)
        self.pad_token = nn.Parameter(torch.zeros(hidden_size))
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=cond_dim)
        self.task_embedder = nn.Sequential(nn.LayerNorm(pooled_text_dim), nn.Linear(pooled_text_dim, cond_dim))
        self.global_semantic_embedder = nn.Sequential(nn.LayerNorm(image_embed_dim), nn.Linear(image_embed_dim, cond_dim))
        self.layers = nn.ModuleList(
            [
                PixWizardBlock(hidden_size, num_attention_heads, num_kv_heads, multiple_of, ffn_dim_multiplier, norm_eps,
                               qk_norm, cross_attention_dim, cond_dim, image_embed_dim, token_temperature,
                               task_proj_bias)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = LuminaLayerNormContinuous(
            embedding_dim=hidden_size, conditioning_embedding_dim=cond_dim, elementwise_affine=False, eps=1e-6,
            bias=True, out_dim=patch_size * patch_size * self.out_channels,
        )
        self.zero_init_()

    @torch.no_grad()
    def zero_init_(self) -> None:
        """PixWizard's zero-initialised parts: a fresh model starts as an identity-residual DiT with closed gates."""
        for layer in self.layers:
            nn.init.zeros_(layer.norm1.linear.weight)
            nn.init.zeros_(layer.norm1.linear.bias)
            nn.init.zeros_(layer.gate)
            nn.init.zeros_(layer.gate_image)
        for lin in (self.task_embedder[1], self.global_semantic_embedder[1], self.norm_out.linear_1, self.norm_out.linear_2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- inputs -------------------------------------------------------------------

    def rotary_embedding(self, height_tokens: int, width_tokens: int, device: torch.device) -> torch.Tensor:
        """Lumina 2D RoPE for the actual token grid, (1, H*W, head_dim / 2) complex."""
        freqs = get_2d_rotary_pos_embed_lumina(self.head_dim, height_tokens, width_tokens)
        return freqs.flatten(0, 1).unsqueeze(0).to(device)

    def conditioning_embedding(self, timestep: torch.Tensor, pooled_text_embeds: torch.Tensor,
                               image_embeds: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """adaLN input c = t_emb + task_emb + global CLIP-image emb; also returns task_emb for the samplers."""
        t_emb = self.timestep_embedder(self.time_proj(timestep).to(dtype))
        task_emb = self.task_embedder(pooled_text_embeds.to(dtype))
        global_emb = self.global_semantic_embedder(image_embeds.to(dtype).mean(dim=1))
        return t_emb + task_emb + global_emb, task_emb

    def _check_inputs(self, hidden_states, image_latents, encoder_hidden_states, encoder_attention_mask,
                      pooled_text_embeds, image_embeds) -> None:
        c = self.config
        if hidden_states.ndim != 4 or hidden_states.shape[1] != c.in_channels:
            raise ValueError(f"`hidden_states` must be (B, {c.in_channels}, H, W), got {tuple(hidden_states.shape)}.")
        b, _, h, w = hidden_states.shape
        if h % c.patch_size or w % c.patch_size:
            raise ValueError(f"latent size {h}x{w} must be a multiple of the patch size {c.patch_size}.")
        if image_latents.shape != (b, c.condition_channels, h, w):
            raise ValueError(f"`image_latents` must be {(b, c.condition_channels, h, w)} (same size as the noisy latent), got {tuple(image_latents.shape)}.")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b or encoder_hidden_states.shape[2] != c.cross_attention_dim:
            raise ValueError(f"`encoder_hidden_states` must be (B={b}, L, {c.cross_attention_dim}), got {tuple(encoder_hidden_states.shape)}.")
        if encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(f"`encoder_attention_mask` must be {tuple(encoder_hidden_states.shape[:2])}, got {tuple(encoder_attention_mask.shape)}.")
        if pooled_text_embeds.shape != (b, c.pooled_text_dim):
            raise ValueError(f"`pooled_text_embeds` must be {(b, c.pooled_text_dim)}, got {tuple(pooled_text_embeds.shape)}.")
        if image_embeds.ndim != 3 or image_embeds.shape[0] != b or image_embeds.shape[2] != c.image_embed_dim:
            raise ValueError(f"`image_embeds` must be (B={b}, N, {c.image_embed_dim}) CLIP tokens, got {tuple(image_embeds.shape)}.")

    # -- forward ------------------------------------------------------------------

    def enable_cache(self, config) -> None:
        register_cache_block(PixWizardBlock, hidden_index=0, encoder_index=None)  # one tensor out: the hidden stream
        super().enable_cache(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_text_embeds: torch.Tensor,
        image_latents: torch.Tensor,
        image_embeds: torch.Tensor,
        base_sequence_length: int | None = None,
        token_selection: str | None = None,
        token_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """
        Args:
            hidden_states: noisy latent (B, C, H, W).
            timestep: (B,) or scalar in [0, 1], 0 = pure noise.
            encoder_hidden_states, encoder_attention_mask: LLM states (B, L, D) and their mask (B, L).
            pooled_text_embeds: projected CLIP text embedding (B, pooled_text_dim).
            image_latents: source VAE latent (B, C, H, W), concatenated after `hidden_states`.
            image_embeds: CLIP vision tokens without CLS (B, N, image_embed_dim); all zeros = no image.
            base_sequence_length: token count of the training resolution; turns on proportional attention.
            token_selection: "topk" (deterministic) or "gumbel"; default: the config's.
            token_noise: Gumbel draws (num_layers, B, N) to use instead of drawing them ("gumbel" only).
            generator: seeds the Gumbel draws when `token_noise` is not given.
        """
        self._check_inputs(hidden_states, image_latents, encoder_hidden_states, encoder_attention_mask,
                           pooled_text_embeds, image_embeds)
        selection = token_selection or self.config.token_selection
        if selection not in TOKEN_SELECTIONS:
            raise ValueError(f"`token_selection` must be one of {TOKEN_SELECTIONS}, got {selection!r}.")
        b, _, h, w = hidden_states.shape
        n_tokens = image_embeds.shape[1]
        if selection == "gumbel" and token_noise is None:
            has_image = image_embeds.flatten(1).abs().amax(dim=1) > 0
            token_noise = official_gumbel_noise(len(self.layers), has_image, n_tokens, generator)
        if token_noise is not None:
            if selection != "gumbel":
                raise ValueError("`token_noise` is only used with token_selection='gumbel'.")
            if token_noise.shape != (len(self.layers), b, n_tokens):
                raise ValueError(f"`token_noise` must be {(len(self.layers), b, n_tokens)}, got {tuple(token_noise.shape)}.")
            token_noise = token_noise.to(hidden_states.device)

        dtype = self.patch_embedder.proj.weight.dtype
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([float(timestep)], device=hidden_states.device)
        timestep = timestep.to(hidden_states.device).float().reshape(-1)
        if timestep.numel() not in (1, b):
            raise ValueError(f"`timestep` must be a scalar or have one entry per sample ({b}), got {timestep.numel()}.")
        timestep = timestep.expand(b)
        temb, task_emb = self.conditioning_embedding(timestep, pooled_text_embeds, image_embeds, dtype)

        p = self.config.patch_size
        x = torch.cat([hidden_states, image_latents], dim=1).to(dtype)
        rope = self.rotary_embedding(h // p, w // p, x.device)
        x, _, _, _ = self.patch_embedder(x, rope)
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        encoder_attention_mask = encoder_attention_mask.bool()
        image_embeds = image_embeds.to(dtype)
        k = min(int(self.config.sample_tokens), n_tokens)

        for i, layer in enumerate(self.layers):
            noise = None if token_noise is None else token_noise[i]
            tokens = layer.select_image_tokens(image_embeds, task_emb, k, noise)
            args = (x, rope, encoder_hidden_states, encoder_attention_mask, temb, tokens, base_sequence_length)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(layer, *args)
            else:
                x = layer(*args)

        x = self.norm_out(x, temb)
        out = x.view(b, h // p, w // p, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4).reshape(b, self.out_channels, h, w)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    # -- initialisation from Lumina-Next ------------------------------------------------

    @classmethod
    def from_lumina_next(cls, lumina: LuminaNextDiT2DModel, condition_channels: int | None = None,
                         pooled_text_dim: int = 768, image_embed_dim: int = 1024, sample_tokens: int = 256,
                         **config: Any) -> "PixWizardTransformer2DModel":
        """Initialise from a Lumina-Next-T2I transformer, as PixWizard's training does.

        Shared weights are copied (the block query from `attn1`); the patch embedding
        is widened with zero columns for the source latent (or copied whole when the
        Lumina model was already widened); PixWizard's new modules keep their fresh
        init, with their gates and embedders at zero. Lumina's caption embedder has no
        counterpart and is dropped.
        """
        lc = lumina.config
        proj = lumina.patch_embedder.proj
        per_channel = lc.patch_size * lc.patch_size
        widened_channels = proj.in_features // per_channel - lc.in_channels
        if condition_channels is None:
            condition_channels = widened_channels if widened_channels > 0 else lc.in_channels
        model = cls(
            sample_size=lc.sample_size, patch_size=lc.patch_size, in_channels=lc.in_channels,
            condition_channels=condition_channels, hidden_size=lc.hidden_size, num_layers=lc.num_layers,
            num_attention_heads=lc.num_attention_heads, num_kv_heads=lc.num_kv_heads, multiple_of=lc.multiple_of,
            ffn_dim_multiplier=lc.ffn_dim_multiplier, norm_eps=lc.norm_eps, learn_sigma=lc.learn_sigma,
            qk_norm=lc.qk_norm, cross_attention_dim=lc.cross_attention_dim, pooled_text_dim=pooled_text_dim,
            image_embed_dim=image_embed_dim, sample_tokens=sample_tokens, **config,
        )
        source = lumina.state_dict()
        state = model.state_dict()
        for key, value in source.items():
            if key.startswith("time_caption_embed.caption_embedder") or ".attn2.to_q." in key or ".attn2.norm_q." in key:
                continue
            target = key.replace("time_caption_embed.", "")
            if target not in state:
                raise KeyError(f"Lumina-Next weight {key!r} has no PixWizard counterpart {target!r}")
            if target == "patch_embedder.proj.weight":
                widened = torch.zeros_like(state[target])
                widened[:, : value.shape[1]] = value
                value = widened
            if state[target].shape != value.shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {target} {tuple(state[target].shape)}")
            state[target] = value
        model.load_state_dict(state)
        return model if model.dtype == lumina.dtype else model.to(lumina.dtype)
