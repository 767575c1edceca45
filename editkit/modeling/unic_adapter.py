"""UNIC-Adapter on SD3's MM-DiT: a parallel control stream with RoPE-aligned cross-attention.

Every `JointTransformerBlock` of a (frozen) `SD3Transformer2DModel` gets a twin
stream over [condition-image tokens ; instruction tokens]:

- its own AdaLN-Zero norms (`norm1_control`, `norm1_context_control`) driven by
  its own timestep + pooled-instruction embedding (`time_text_embed_control`);
- its own joint attention (`attn_control`) with 2D RoPE on queries and keys
  (image ids = (row, col) on the target's patch grid, text ids = (0, 0));
- the base block's frozen feed-forwards `ff` / `ff_context`.

The base image tokens read the control stream through a new query projection
(`to_q_control`, applied to the base's normalised image tokens) and a
cross-attention over the control stream's keys/values, with the same RoPE table
on both sides: target patch (r, c) and condition patch (r, c) share a position,
so the attention is pixel aligned. The cross output is added, times
`control_scale`, to the base attention output *before* `to_out` and `gate_msa`.
With `control_scale=0` the model is exactly the base SD3 transformer.

Module names follow the official checkpoint (`*_control`), so an official
adapter state dict loads with the base weights strictly (see editkit.convert.unic).
The optional `control_gate` (zero-initialised, per block and channel) is an
editkit addition for training from scratch; the official model has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from diffusers import ModelMixin, SD3Transformer2DModel  # ModelMixin: diffusers finds the loader of a
# custom component by looking its base classes up in the component's module (pipeline from_pretrained)
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.embeddings import (
    CombinedTimestepTextProjEmbeddings,
    PatchEmbed,
    apply_rotary_emb,
    get_1d_rotary_pos_embed,
)
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from diffusers.utils import BaseOutput

from editkit.attention import AttentionBackendMixin, attend

__all__ = ["ModelMixin", "UNICJointTransformerBlock", "UNICSD3Transformer2DModel", "UNICTransformerOutput", "is_adapter_key", "position_ids", "rope_2d"]

ADAPTER_PREFIXES = ("pos_embed_control.", "time_text_embed_control.", "context_embedder_control.")
ADAPTER_BLOCK_PARTS = ("norm1_control.", "norm1_context_control.", "attn_control.", "to_q_control.", "control_gate")


def is_adapter_key(key: str) -> bool:
    """True for the parameters UNIC adds to SD3 (the official `*_control` keys, plus editkit's gate)."""
    if key.startswith(ADAPTER_PREFIXES):
        return True
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "transformer_blocks" and ".".join(parts[2:]).startswith(ADAPTER_BLOCK_PARTS)


def rope_2d(ids: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (S, head_dim), for integer (row, col) ids (S, 2); half of head_dim per axis.

    The FLUX layout (interleaved pairs), which for head_dim 64 is the official 32 + 32 split.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2D RoPE splits each head into two axes of rotary pairs: head_dim must be a multiple of 4, got {head_dim}.")
    freqs_dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    cos, sin = zip(*[
        get_1d_rotary_pos_embed(head_dim // 2, ids[:, axis].to(freqs_dtype), theta=theta, use_real=True,
                                repeat_interleave_real=True, freqs_dtype=freqs_dtype)
        for axis in range(2)
    ])
    return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)


def position_ids(grid_h: int, grid_w: int, text_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[(r, c) for each patch, row-major as `PatchEmbed` flattens ; (0, 0) for each text token]."""
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    image = torch.stack([rows, cols], dim=-1)
    return torch.cat([image, torch.zeros(text_len, 2, dtype=image.dtype, device=device)])


def _heads(attn: Attention, t: torch.Tensor) -> torch.Tensor:
    return t.view(t.shape[0], -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def joint_qkv(attn: Attention, x: torch.Tensor, ctx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head Q, K, V of [image ; context] after the qk norms (the operations of SD3's joint processor)."""
    q, k, v = _heads(attn, attn.to_q(x)), _heads(attn, attn.to_k(x)), _heads(attn, attn.to_v(x))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if ctx is not None:
        cq, ck, cv = _heads(attn, attn.add_q_proj(ctx)), _heads(attn, attn.add_k_proj(ctx)), _heads(attn, attn.add_v_proj(ctx))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
    return q, k, v


def joint_attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_image: int,
                 backend: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention output split into image part (before `to_out`) and context part (after `to_add_out`)."""
    out = _merge(attend(q, k, v, backend=backend)).to(q.dtype)
    image, context = out[:, :num_image], out[:, num_image:]
    if context.shape[1] == 0:
        return image, None
    if not attn.context_pre_only:
        context = attn.to_add_out(context)
    return image, context


def _project_out(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](x))


def _per_sample(scale: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(scale, torch.Tensor):
        return scale.to(device=like.device, dtype=like.dtype).reshape(-1, 1, 1)
    return float(scale)


class UNICJointTransformerBlock(AttentionBackendMixin, JointTransformerBlock):
    """An SD3 joint block plus UNIC's control stream and RoPE cross-attention injection.
    Without a condition it is the stock block (its processors follow the attention switch); the
    control path computes attention with `attend`, honouring `attention_backend`."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, context_pre_only: bool = False,
                 qk_norm: str | None = None, use_control_gate: bool = False):
        super().__init__(dim, num_attention_heads, attention_head_dim, context_pre_only=context_pre_only, qk_norm=qk_norm)
        self.norm1_control = AdaLayerNormZero(dim)
        if context_pre_only:
            self.norm1_context_control = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6, bias=True, norm_type="layer_norm")
        else:
            self.norm1_context_control = AdaLayerNormZero(dim)
        self.attn_control = Attention(
            query_dim=dim, cross_attention_dim=None, added_kv_proj_dim=dim, dim_head=attention_head_dim,
            heads=num_attention_heads, out_dim=dim, context_pre_only=context_pre_only, bias=True,
            processor=JointAttnProcessor2_0(), qk_norm=qk_norm, eps=1e-6,
        )
        self.to_q_control = nn.Linear(dim, dim)
        self.control_gate = nn.Parameter(torch.zeros(dim)) if use_control_gate else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        joint_attention_kwargs: dict[str, Any] | None = None,
        control_hidden_states: torch.Tensor | None = None,
        control_encoder_hidden_states: torch.Tensor | None = None,
        control_temb: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        control_scale: float | torch.Tensor = 1.0,
        output_attentions: bool = False,
    ):
        """Without a control input: SD3's (encoder_hidden_states, hidden_states). With one:
        (encoder_hidden_states, hidden_states, control_hidden_states, control_encoder_hidden_states,
        cross-attention probabilities or None)."""
        if control_hidden_states is None:  # no condition: the plain SD3 block
            return super().forward(hidden_states, encoder_hidden_states, temb, joint_attention_kwargs)

        n = hidden_states.shape[1]
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        if self.context_pre_only:
            norm_ctx = self.norm1_context(encoder_hidden_states, temb)
        else:
            norm_ctx, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states, emb=temb)
        q, k, v = joint_qkv(self.attn, norm_x, norm_ctx)
        attn_x, attn_ctx = joint_attend(self.attn, q, k, v, n, self.attention_backend)

        # -- control stream: joint attention over [condition ; instruction] with 2D RoPE
        m = control_hidden_states.shape[1]
        cnorm_x, cgate_msa, cshift_mlp, cscale_mlp, cgate_mlp = self.norm1_control(control_hidden_states, emb=control_temb)
        if self.context_pre_only:
            cnorm_ctx = self.norm1_context_control(control_encoder_hidden_states, control_temb)
        else:
            cnorm_ctx, cc_gate_msa, cc_shift_mlp, cc_scale_mlp, cc_gate_mlp = self.norm1_context_control(
                control_encoder_hidden_states, emb=control_temb
            )
        cq, ck, cv = joint_qkv(self.attn_control, cnorm_x, cnorm_ctx)
        ck = apply_rotary_emb(ck, rope)  # keys after the key norms, then RoPE (shared with the cross-attention)

        # -- injection: base image queries (target (r, c)) over the control keys/values
        xq = apply_rotary_emb(_heads(self.attn, self.to_q_control(norm_x)), (rope[0][:n], rope[1][:n]))
        cross = _merge(attend(xq, ck, cv, backend=self.attention_backend)).to(xq.dtype)
        probs = None
        if output_attentions:
            probs = torch.softmax((xq.float() @ ck.float().transpose(-1, -2)) / xq.shape[-1] ** 0.5, dim=-1)
        if self.control_gate is not None:
            cross = cross * self.control_gate
        attn_x = attn_x + _per_sample(control_scale, cross) * cross

        # -- base stream, as in SD3 (the injection sits before to_out and gate_msa)
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * _project_out(self.attn, attn_x)
        normed = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden_states = hidden_states + gate_mlp.unsqueeze(1) * self.ff(normed)
        if self.context_pre_only:
            encoder_hidden_states = None
        else:
            encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * attn_ctx
            normed = self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
            encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self.ff_context(normed)

        if self.context_pre_only:
            # the last block's control outputs feed nothing: only its keys/values were needed
            return encoder_hidden_states, hidden_states, None, None, probs

        # -- control stream update with the base's frozen feed-forwards
        cq = apply_rotary_emb(cq, rope)
        cattn_x, cattn_ctx = joint_attend(self.attn_control, cq, ck, cv, m, self.attention_backend)
        control_hidden_states = control_hidden_states + cgate_msa.unsqueeze(1) * _project_out(self.attn_control, cattn_x)
        normed = self.norm2(control_hidden_states) * (1 + cscale_mlp[:, None]) + cshift_mlp[:, None]
        control_hidden_states = control_hidden_states + cgate_mlp.unsqueeze(1) * self.ff(normed)
        ctx_c = control_encoder_hidden_states + cc_gate_msa.unsqueeze(1) * cattn_ctx
        normed = self.norm2_context(ctx_c) * (1 + cc_scale_mlp[:, None]) + cc_shift_mlp[:, None]
        ctx_c = ctx_c + cc_gate_mlp.unsqueeze(1) * self.ff_context(normed)
        return encoder_hidden_states, hidden_states, control_hidden_states, ctx_c, probs


@dataclass
class UNICTransformerOutput(BaseOutput):
    """`sample`: the velocity; `control_attentions`: per block, the injected cross-attention
    probabilities (B, heads, image tokens, condition + instruction tokens) when requested."""

    sample: torch.Tensor
    control_attentions: tuple[torch.Tensor, ...] | None = None


class UNICSD3Transformer2DModel(SD3Transformer2DModel):
    """`SD3Transformer2DModel` + UNIC-Adapter. The base keys are SD3's; the adapter keys the official `*_control` ones.

    Extra config: `control_scale` (default strength of the injection, 1.0 as
    released), `use_control_gate` (zero-initialised gate so a fresh adapter is
    the identity; editkit's training option), `rope_theta` (10000), `official_sampling` (a converted official
    checkpoint: `UNICAdapterPipeline` then defaults to the official T5 length 77 and a posterior-sampled condition).
    """

    _no_split_modules = ["UNICJointTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        control_scale: float = 1.0,
        use_control_gate: bool = False,
        rope_theta: float = 10000.0,
        official_sampling: bool = False,  # set by editkit.convert.unic: UNICAdapterPipeline samples the official way
    ):
        if dual_attention_layers:
            raise ValueError(
                "`dual_attention_layers` (SD3.5) is not supported by this UNIC-Adapter: its `attn2_control` path is "
                "not implemented; use an SD3(-Medium) transformer."
            )
        if attention_head_dim % 4 != 0:
            raise ValueError(f"UNIC's 2D RoPE needs `attention_head_dim` divisible by 4, got {attention_head_dim}.")
        super().__init__(
            sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, num_layers=num_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim, caption_projection_dim=caption_projection_dim,
            pooled_projection_dim=pooled_projection_dim, out_channels=out_channels,
            pos_embed_max_size=pos_embed_max_size, dual_attention_layers=(), qk_norm=qk_norm,
        )
        dim = self.inner_dim
        self.transformer_blocks = nn.ModuleList(
            [
                UNICJointTransformerBlock(dim, num_attention_heads, attention_head_dim, context_pre_only=i == num_layers - 1,
                                          qk_norm=qk_norm, use_control_gate=use_control_gate)
                for i in range(num_layers)
            ]
        )
        self.pos_embed_control = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size, in_channels=in_channels,
                                            embed_dim=dim, pos_embed_max_size=pos_embed_max_size)
        self.time_text_embed_control = CombinedTimestepTextProjEmbeddings(embedding_dim=dim, pooled_projection_dim=pooled_projection_dim)
        self.context_embedder_control = nn.Linear(joint_attention_dim, caption_projection_dim)

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_sd3(cls, base: SD3Transformer2DModel, init_from_base: bool = True, **config: Any) -> "UNICSD3Transformer2DModel":
        """Wrap a diffusers SD3 transformer: copy its weights; the adapter starts as a copy of the base
        modules it twins (`to_q_control` from `attn.to_q`) when `init_from_base`, else randomly."""
        if not isinstance(base, SD3Transformer2DModel):
            raise TypeError(f"`base` must be an SD3Transformer2DModel, got {type(base).__name__}.")
        keys = ("sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
                "pos_embed_max_size", "dual_attention_layers", "qk_norm")
        model = cls(**{k: base.config[k] for k in keys}, **config)
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(not is_adapter_key(k) for k in missing):
            raise ValueError(f"base weights do not fit: unexpected {unexpected[:5]}, missing {[k for k in missing if not is_adapter_key(k)][:5]}")
        if init_from_base:
            model.init_adapter_from_base()
        return model.to(dtype=base.dtype, device=base.device)

    @torch.no_grad()
    def init_adapter_from_base(self) -> None:
        """The toolkit's init (spec §8): each `*_control` module starts as its base twin."""
        self.pos_embed_control.load_state_dict(self.pos_embed.state_dict())
        self.time_text_embed_control.load_state_dict(self.time_text_embed.state_dict())
        self.context_embedder_control.load_state_dict(self.context_embedder.state_dict())
        for block in self.transformer_blocks:
            block.norm1_control.load_state_dict(block.norm1.state_dict())
            block.norm1_context_control.load_state_dict(block.norm1_context.state_dict())
            block.attn_control.load_state_dict(block.attn.state_dict())
            block.to_q_control.load_state_dict(block.attn.to_q.state_dict())

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if is_adapter_key(k)}

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for k, p in self.named_parameters() if is_adapter_key(k)]

    def base_transformer(self) -> SD3Transformer2DModel:
        """A plain diffusers SD3 transformer with this model's base weights (for diffusers pipelines)."""
        config = {k: v for k, v in self.config.items() if not k.startswith("_") and k not in ("control_scale", "use_control_gate", "rope_theta", "official_sampling")}
        base = SD3Transformer2DModel(**config)
        base.load_state_dict({k: v for k, v in self.state_dict().items() if not is_adapter_key(k)})
        return base.to(dtype=self.dtype, device=self.device)

    # -- forward ---------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        pooled_projections: torch.Tensor = None,
        timestep: torch.Tensor = None,
        control_latents: torch.Tensor | None = None,
        instruction_embeds: torch.Tensor | None = None,
        pooled_instruction_embeds: torch.Tensor | None = None,
        control_scale: float | torch.Tensor | None = None,
        block_controlnet_hidden_states: list | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        skip_layers: list[int] | None = None,
        output_control_attentions: bool = False,
    ):
        """SD3's forward plus the control inputs.

        control_latents: (B, C, H, W) VAE latents of the condition image at the
            target's size (same shape as `hidden_states`); None runs plain SD3.
        instruction_embeds / pooled_instruction_embeds: the instruction through
            the SD3 text stack, (B, L, joint_attention_dim) and (B, pooled dim).
        control_scale: float or per-sample (B,) tensor; None = config.control_scale.
        """
        if control_latents is None:
            if instruction_embeds is not None or pooled_instruction_embeds is not None:
                raise ValueError("`instruction_embeds` were given without `control_latents`; pass both (or neither for plain SD3).")
            out = super().forward(hidden_states, encoder_hidden_states, pooled_projections, timestep,
                                  block_controlnet_hidden_states, joint_attention_kwargs, return_dict=False, skip_layers=skip_layers)[0]
            return UNICTransformerOutput(sample=out) if return_dict else (out,)
        if instruction_embeds is None or pooled_instruction_embeds is None:
            raise ValueError("`control_latents` need `instruction_embeds` and `pooled_instruction_embeds` (the instruction through the SD3 text stack).")
        if tuple(control_latents.shape) != tuple(hidden_states.shape):
            raise ValueError(
                f"`control_latents` has shape {tuple(control_latents.shape)} but the noisy latents have {tuple(hidden_states.shape)}; "
                "resize the condition image to the output size before encoding it."
            )
        if instruction_embeds.shape[0] != hidden_states.shape[0] or pooled_instruction_embeds.shape[0] != hidden_states.shape[0]:
            raise ValueError("`instruction_embeds` and `pooled_instruction_embeds` need the latents' batch size.")
        if joint_attention_kwargs:
            raise ValueError("`joint_attention_kwargs` are not supported with a control input (UNIC's blocks run their own attention).")
        if block_controlnet_hidden_states is not None:
            raise ValueError("`block_controlnet_hidden_states` cannot be combined with a UNIC control input.")
        scale = self.config.control_scale if control_scale is None else control_scale
        if isinstance(scale, torch.Tensor) and scale.numel() not in (1, hidden_states.shape[0]):
            raise ValueError(f"`control_scale` must be a float or a ({hidden_states.shape[0]},) tensor, got shape {tuple(scale.shape)}.")

        height, width = hidden_states.shape[-2:]
        p = self.config.patch_size
        x = self.pos_embed(hidden_states).contiguous()
        temb = self.time_text_embed(timestep, pooled_projections)
        ctx = self.context_embedder(encoder_hidden_states)
        cx = self.pos_embed_control(control_latents).contiguous()
        ctemb = self.time_text_embed_control(timestep, pooled_instruction_embeds)
        cctx = self.context_embedder_control(instruction_embeds)
        ids = position_ids(height // p, width // p, cctx.shape[1], device=x.device)
        cos, sin = rope_2d(ids, self.config.attention_head_dim, self.config.rope_theta)
        rope = (cos.to(x.device), sin.to(x.device))

        attentions = []
        for index, block in enumerate(self.transformer_blocks):
            if skip_layers is not None and index in skip_layers:
                continue
            args = (x, ctx, temb, None, cx, cctx, ctemb, rope, scale, output_control_attentions)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                ctx, x, cx, cctx, probs = self._gradient_checkpointing_func(block, *args)
            else:
                ctx, x, cx, cctx, probs = block(*args)
            if probs is not None:
                attentions.append(probs)

        x = self.proj_out(self.norm_out(x, temb))
        h, w = height // p, width // p
        x = x.reshape(x.shape[0], h, w, p, p, self.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], self.out_channels, h * p, w * p)
        if not return_dict:
            return (out,)
        return UNICTransformerOutput(sample=out, control_attentions=tuple(attentions) if output_control_attentions else None)
