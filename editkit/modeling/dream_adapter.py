"""Dream Engine's adapter: two MLPs from the multimodal LLM into a stock SD3 MM-DiT.

Dream Engine feeds SD3 with Qwen2-VL's last-layer states instead of the
CLIP/T5 stack:

- adapter 1 maps every LMM state (N x D_lmm) to the joint-attention width;
  it takes the place of SD3's `context_embedder`;
- adapter 2 maps the mean of the states over all N positions to the
  time-embedding width; it takes the place of SD3's pooled-text projection
  (`time_text_embed.text_embedder`), whose output SD3 adds to the timestep
  embedding.

Both adapters are Linear -> SiLU -> Linear. Because SD3's combined
timestep/text embedding is `timestep_emb + text_embedder(pooled)`, swapping
these two modules on a stock `SD3Transformer2DModel` gives the official
"direct map" model exactly; no diffusers fork is needed.

`DreamTransformer2DModel` is that stock transformer with the two modules
swapped at construction, so it saves and loads with `from_pretrained`. Its
`joint_attention_dim` and `pooled_projection_dim` are the LMM width: the
config describes the real inputs (LMM states and their mean).
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, SD3Transformer2DModel  # ModelMixin here lets diffusers load this module's class from model_index.json
from diffusers.configuration_utils import register_to_config
from diffusers.models import CacheMixin
from diffusers.models.attention import JointTransformerBlock
from torch import nn

from .cache_blocks import register_cache_block

# Official module names (DirectMap model) -> where they sit in a diffusers SD3 transformer.
CONTEXT_ADAPTER = "context_embedder"
POOLED_ADAPTER = "time_text_embed.text_embedder"


class AlignMLP(nn.Module):
    """Linear(in -> hidden) -> SiLU -> Linear(hidden -> out), named like diffusers' text projection."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_features)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


def attach_adapters(transformer: SD3Transformer2DModel, context_mlp: nn.Module, pooled_mlp: nn.Module) -> SD3Transformer2DModel:
    """Map the two adapters onto a stock SD3 transformer, in place.

    After this, call the transformer with `encoder_hidden_states` = LMM states
    (B, N, D_lmm) and `pooled_projections` = their mean over N (B, D_lmm).
    """
    if not isinstance(transformer, SD3Transformer2DModel):
        raise TypeError(f"`transformer` must be an SD3Transformer2DModel, got {type(transformer).__name__}.")
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    out_ctx = _out_features(context_mlp, "context_mlp")
    out_pool = _out_features(pooled_mlp, "pooled_mlp")
    if out_ctx != transformer.config.caption_projection_dim:
        raise ValueError(f"`context_mlp` outputs {out_ctx} features; the transformer's joint attention needs {transformer.config.caption_projection_dim}.")
    if out_pool != inner:
        raise ValueError(f"`pooled_mlp` outputs {out_pool} features; the transformer's time embedding has {inner}.")
    transformer.context_embedder = context_mlp
    transformer.time_text_embed.text_embedder = pooled_mlp
    return transformer


def _out_features(module: nn.Module, name: str) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"`{name}` has no Linear layer; expected an MLP.")
    return linears[-1].out_features


def pool_states(states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Adapter 2's input: the mean over every position (padding included, as the official model does).

    `lengths` (B,): average row i over its first `lengths[i]` positions only, i.e. over the padding a
    prompt gets alone (to the longer of it and its null), not over what a longer batch neighbour adds."""
    if lengths is None:
        return states.mean(dim=1)
    keep = torch.arange(states.shape[1], device=states.device)[None, :] < lengths.to(states.device)[:, None]
    return (states * keep[..., None]).sum(dim=1) / lengths.to(states.device, states.dtype)[:, None]


class FinalJointTransformerBlock(JointTransformerBlock):
    """SD3's last joint block (`context_pre_only`), returning its text input unchanged instead of None.

    SD3 discards the text stream after the last block, so the model's output is the same; diffusers' block
    caches (`FirstBlockCacheConfig`, `MagCacheConfig`) need a tensor there to form the text residual, which
    is what stopped them on every SD3-family model."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, *args, **kwargs):
        _, hidden_states = super().forward(hidden_states, encoder_hidden_states, *args, **kwargs)
        return encoder_hidden_states, hidden_states


class DreamTransformer2DModel(CacheMixin, SD3Transformer2DModel):
    """A stock SD3 MM-DiT whose text embedders are Dream Engine's two adapters.

    `joint_attention_dim` = `pooled_projection_dim` = the LMM width (1536 for
    Qwen2-VL-2B); `adapter_hidden_dim` is the MLPs' hidden width (4096
    officially). The forward is SD3's own: pass the LMM states as
    `encoder_hidden_states` and `pool_states(states)` as `pooled_projections`.
    `official_sampling` (set by editkit.convert.dream on a converted release): `DreamEnginePipeline` then pads
    and builds its nulls as Dream Engine's `cfg_predict` does by default.
    diffusers' cache hooks work on it: `transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))`
    (the pipeline sets a cache context per batch shape; docs/performance.md).
    """

    _no_split_modules = ["JointTransformerBlock", "FinalJointTransformerBlock"]  # device_map="auto" keeps each block whole

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 38,
        attention_head_dim: int = 64,
        num_attention_heads: int = 38,
        joint_attention_dim: int = 1536,
        caption_projection_dim: int = 2432,
        pooled_projection_dim: int = 1536,
        out_channels: int = 16,
        pos_embed_max_size: int = 192,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = "rms_norm",
        adapter_hidden_dim: int = 4096,
        official_sampling: bool = False,
    ):
        if pooled_projection_dim != joint_attention_dim:
            raise ValueError(
                f"`pooled_projection_dim` ({pooled_projection_dim}) must equal `joint_attention_dim` ({joint_attention_dim}): "
                "both are the LMM width (adapter 2 reads the mean of the LMM states)."
            )
        super().__init__(
            sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, num_layers=num_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim, caption_projection_dim=caption_projection_dim,
            pooled_projection_dim=pooled_projection_dim, out_channels=out_channels, pos_embed_max_size=pos_embed_max_size,
            dual_attention_layers=dual_attention_layers, qk_norm=qk_norm,
        )
        inner = num_attention_heads * attention_head_dim
        last = self.transformer_blocks[-1]  # same parameters, a text stream the cache hooks can subtract from
        self.transformer_blocks[-1] = FinalJointTransformerBlock(inner, num_attention_heads, attention_head_dim, context_pre_only=True,
                                                                 qk_norm=qk_norm, use_dual_attention=last.use_dual_attention)
        attach_adapters(
            self,
            AlignMLP(joint_attention_dim, adapter_hidden_dim, caption_projection_dim),
            AlignMLP(joint_attention_dim, adapter_hidden_dim, inner),
        )

    def enable_cache(self, config) -> None:
        register_cache_block(FinalJointTransformerBlock, hidden_index=1, encoder_index=0)  # as diffusers' JointTransformerBlock
        super().enable_cache(config)

    def sd3_config(self) -> dict:
        """This config without the Dream Engine keys: what builds the stock SD3 transformer it extends."""
        return {k: v for k, v in self.config.items() if not k.startswith("_") and k not in ("adapter_hidden_dim", "official_sampling")}

    @property
    def lmm_hidden_size(self) -> int:
        return self.config.joint_attention_dim

    def adapter_modules(self) -> dict[str, nn.Module]:
        """The two adapters by their place in the transformer (what stage 1 trains)."""
        return {CONTEXT_ADAPTER: self.context_embedder, POOLED_ADAPTER: self.time_text_embed.text_embedder}

    @classmethod
    def from_sd3(cls, transformer: SD3Transformer2DModel, lmm_hidden_size: int, adapter_hidden_dim: int = 4096) -> "DreamTransformer2DModel":
        """Start from a pretrained SD3 transformer: every weight is kept but the two text embedders (new adapters)."""
        if not isinstance(transformer, SD3Transformer2DModel):
            raise TypeError(f"`transformer` must be an SD3Transformer2DModel, got {type(transformer).__name__}.")
        c = transformer.config
        model = cls(
            sample_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels, num_layers=c.num_layers,
            attention_head_dim=c.attention_head_dim, num_attention_heads=c.num_attention_heads,
            joint_attention_dim=lmm_hidden_size, caption_projection_dim=c.caption_projection_dim,
            pooled_projection_dim=lmm_hidden_size, out_channels=c.out_channels, pos_embed_max_size=c.pos_embed_max_size,
            dual_attention_layers=tuple(c.dual_attention_layers), qk_norm=c.qk_norm, adapter_hidden_dim=adapter_hidden_dim,
        )
        keep = {k: v for k, v in transformer.state_dict().items() if not k.startswith((CONTEXT_ADAPTER + ".", POOLED_ADAPTER + "."))}
        missing, unexpected = model.load_state_dict(keep, strict=False)
        bad = [k for k in missing if not k.startswith((CONTEXT_ADAPTER + ".", POOLED_ADAPTER + "."))]
        if bad or unexpected:
            raise ValueError(f"SD3 weights do not fit: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")
        return model.to(transformer.dtype)
