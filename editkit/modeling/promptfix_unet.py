"""PromptFix's UNet: an SD UNet whose transformer blocks read a second text (the auxiliary prompt).

Every transformer block of the UNet gets a new LayerNorm `norm_extra` and a
cross-attention `attn_extra` (same shape as `attn2`, default initialisation),
applied between the instruction cross-attention and the feed-forward:

    x = x + attn1(norm1(x))
    x = x + attn2(norm2(x), instruction)
    x = x + attn_extra(norm_extra(x), auxiliary)      (new)
    x = x + ff(norm3(x))

The auxiliary states travel as `auxiliary_hidden_states=` (or inside
`cross_attention_kwargs`); without them the extra layer is skipped. With
`auxiliary_cross_attention_dim=None` no layer is added at all and the model is
a plain `UNet2DConditionModel` (InstructPix2Pix). Parameter names keep the
LDM/diffusers block names, so `...transformer_blocks.0.attn_extra.to_q.weight`
is saved and loaded with the rest of the UNet.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
# diffusers' pipeline loader finds a custom component's load method by looking `ModelMixin` up in
# the component's module, so it must be importable from here.
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn

AUX_KEY = "auxiliary_hidden_states"


class PromptFixTransformerBlock(nn.Module):
    """A `BasicTransformerBlock` (layer-norm variant) plus the auxiliary cross-attention.

    Built from an existing block, whose modules it keeps under their names.
    """

    def __init__(self, block: BasicTransformerBlock, auxiliary_dim: int):
        super().__init__()
        if block.norm_type != "layer_norm" or block.only_cross_attention or block.attn2 is None or block.pos_embed is not None:
            raise ValueError(
                "PromptFix blocks extend SD-style transformer blocks (layer norm, self- then cross-attention); "
                f"got norm_type={block.norm_type!r}, only_cross_attention={block.only_cross_attention}."
            )
        self.norm1, self.attn1 = block.norm1, block.attn1
        self.norm2, self.attn2 = block.norm2, block.attn2
        self.norm3, self.ff = block.norm3, block.ff
        dim = block.norm2.normalized_shape[0]
        heads = block.attn2.heads
        self.norm_extra = nn.LayerNorm(dim, eps=block.norm2.eps, elementwise_affine=block.norm2.elementwise_affine)
        self.attn_extra = Attention(
            query_dim=dim,
            cross_attention_dim=auxiliary_dim,
            heads=heads,
            dim_head=block.attn2.inner_dim // heads,
            bias=False,
            out_bias=True,
            upcast_attention=block.attn2.upcast_attention,
        )
        self._chunk_size, self._chunk_dim = None, 0

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        self._chunk_size, self._chunk_dim = chunk_size, dim

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: torch.Tensor | None = None,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        kwargs = dict(cross_attention_kwargs or {})
        aux = kwargs.pop(AUX_KEY, None)
        aux_mask = kwargs.pop("auxiliary_attention_mask", None)
        kwargs.pop("gligen", None)
        kwargs.pop("scale", None)

        x = self.attn1(self.norm1(hidden_states), encoder_hidden_states=None, attention_mask=attention_mask, **kwargs) + hidden_states
        x = self.attn2(self.norm2(x), encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs) + x
        if aux is not None:
            if aux.shape[0] != x.shape[0]:
                raise ValueError(f"auxiliary states have batch {aux.shape[0]}, the UNet batch is {x.shape[0]}.")
            x = self.attn_extra(self.norm_extra(x), encoder_hidden_states=aux.to(x.dtype), attention_mask=aux_mask) + x
        h = self.norm3(x)
        if self._chunk_size is None:
            ff = self.ff(h)
        else:
            ff = torch.cat([self.ff(c) for c in h.chunk(h.shape[self._chunk_dim] // self._chunk_size, dim=self._chunk_dim)], dim=self._chunk_dim)
        return ff + x


def add_auxiliary_attention(unet: UNet2DConditionModel, auxiliary_dim: int) -> int:
    """Swap every transformer block of `unet` for a `PromptFixTransformerBlock`; returns the count."""
    count = 0
    for module in list(unet.modules()):
        blocks = getattr(module, "transformer_blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            continue
        for i, block in enumerate(blocks):
            if isinstance(block, BasicTransformerBlock):
                blocks[i] = PromptFixTransformerBlock(block, auxiliary_dim)
                count += 1
    return count


class PromptFixUNet2DConditionModel(UNet2DConditionModel):
    """`UNet2DConditionModel` + one auxiliary cross-attention per transformer block.

    `auxiliary_cross_attention_dim` (config) is the width of the auxiliary
    states (768 for CLIP-L); None gives the plain UNet.
    """

    def __init__(self, *args, auxiliary_cross_attention_dim: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(auxiliary_cross_attention_dim=auxiliary_cross_attention_dim)
        if auxiliary_cross_attention_dim:
            add_auxiliary_attention(self, int(auxiliary_cross_attention_dim))

    @property
    def has_auxiliary(self) -> bool:
        return bool(self.config.auxiliary_cross_attention_dim)

    def forward(self, sample, timestep, encoder_hidden_states, *args, auxiliary_hidden_states: torch.Tensor | None = None, **kwargs):
        if auxiliary_hidden_states is not None:
            if not self.has_auxiliary:
                raise ValueError("this UNet has no auxiliary cross-attention (auxiliary_cross_attention_dim is None).")
            kwargs["cross_attention_kwargs"] = {**(kwargs.get("cross_attention_kwargs") or {}), AUX_KEY: auxiliary_hidden_states}
        return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, auxiliary_cross_attention_dim: int | None) -> "PromptFixUNet2DConditionModel":
        """A PromptFix UNet holding `unet`'s weights (the extra layers freshly initialised)."""
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        config["auxiliary_cross_attention_dim"] = auxiliary_cross_attention_dim
        model = cls.from_config(config)
        missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
        if unexpected or any("_extra" not in k for k in missing):
            raise ValueError(f"weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
        model.to(device=unet.device)
        return model if unet.dtype == model.dtype else model.to(dtype=unet.dtype)


# `ConfigMixin` reads a model's config keys from its `__init__` signature: expose the parent's
# parameters plus the new one, so `from_config` / `from_pretrained` pass every key through.
_parent = inspect.signature(UNet2DConditionModel.__init__)
PromptFixUNet2DConditionModel.__init__.__signature__ = _parent.replace(
    parameters=[
        *_parent.parameters.values(),
        inspect.Parameter("auxiliary_cross_attention_dim", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
)
del _parent
