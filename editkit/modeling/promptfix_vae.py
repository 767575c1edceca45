"""PromptFix's VAE: a KL autoencoder whose decoder ResBlocks get a LoRA branch fed by encoder skips.

Every decoder ResBlock computes conv1(h) + LoRA(h + skip), h being the output
of norm1 + SiLU; LoRA = conv(k=3, C_in -> r, no bias) -> dropout 0.1 ->
conv 1x1 (r -> C_out, no bias, zero-initialised), scale 1. The skips are the
encoder's activations in order (conv_in, then per level each ResBlock output and
the downsample output); the decoder consumes them deepest-first, one per
ResBlock, and a skip whose shape differs from h is not added (the LoRA sees h
alone). Decoding without skips (`decode`, or `decode_with_skips(z, None)`) runs
no LoRA at all: the official decoder adds its LoRA only when it is given skips.

Each LoRA keeps the skip it will read and its conv hook is a bound method, so a
`copy.deepcopy` of the model (EMA copies, dtype casts of a copy) hooks the copy's
own LoRA modules.

With `skip_lora_rank=None` this is exactly `AutoencoderKL`. The LoRA weights
live at `decoder.up_blocks.{i}.resnets.{j}.lora.{lora_down,lora_up}.weight`.
"""

from __future__ import annotations

import inspect

import torch
# diffusers' pipeline loader finds a custom component's load method by looking `ModelMixin` up in
# the component's module, so it must be importable from here.
from diffusers import ModelMixin, AutoencoderKL  # noqa: F401
from torch import nn


class SkipLoRA(nn.Module):
    def __init__(self, conv: nn.Conv2d, rank: int, dropout: float = 0.1, scale: float = 1.0):
        super().__init__()
        self.lora_down = nn.Conv2d(conv.in_channels, rank, 3, stride=conv.stride, padding=conv.padding, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.lora_up = nn.Conv2d(rank, conv.out_channels, 1, bias=False)
        nn.init.zeros_(self.lora_up.weight)
        self.scale = scale
        self.skip: torch.Tensor | None = None  # set for one decode by `PromptFixAutoencoderKL.decode_with_skips`
        self.active = False

    def forward(self, h: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = h + skip.to(h.dtype) if skip is not None and skip.shape == h.shape else h
        return self.lora_up(self.dropout(self.lora_down(x))) * self.scale

    def conv_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the ResBlock's conv1: adds the LoRA branch while a skip decode is running."""
        return output + self(inputs[0], self.skip) if self.active else output


class PromptFixAutoencoderKL(AutoencoderKL):
    """`AutoencoderKL` with PromptFix's skip-connection LoRA in the decoder (`skip_lora_rank`, official 4)."""

    def __init__(self, *args, skip_lora_rank: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(skip_lora_rank=skip_lora_rank)
        self._decoder_resnets = [r for block in self.decoder.up_blocks for r in block.resnets]
        if skip_lora_rank:
            for resnet in self._decoder_resnets:
                resnet.lora = SkipLoRA(resnet.conv1, int(skip_lora_rank))
                resnet.conv1.register_forward_hook(resnet.lora.conv_hook)

    @property
    def has_skip_lora(self) -> bool:
        """True when LoRA weights are present and not all zero (otherwise skips change nothing)."""
        if not self.config.skip_lora_rank:
            return False
        return any(bool(r.lora.lora_up.weight.detach().abs().sum() > 0) for r in self._decoder_resnets)

    def encoder_skips(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The encoder activations the decoder's LoRA branches read, in encoder order."""
        enc = self.encoder
        grabbed: list[torch.Tensor] = []
        modules = [enc.conv_in]
        for block in enc.down_blocks:
            modules += list(block.resnets) + list(block.downsamplers or [])
        handles = [m.register_forward_hook(lambda _m, _i, out: grabbed.append(out)) for m in modules]
        try:
            enc(pixels.to(self.dtype))
        finally:
            for h in handles:
                h.remove()
        return grabbed

    def decode_with_skips(self, latents: torch.Tensor, skips: list[torch.Tensor] | None) -> torch.Tensor:
        """Decode *unscaled* latents, feeding the encoder skips (deepest first) to the LoRA branches."""
        if skips is not None and len(skips) != len(self._decoder_resnets):
            raise ValueError(f"got {len(skips)} encoder skips for {len(self._decoder_resnets)} decoder ResBlocks.")
        loras = [r.lora for r in self._decoder_resnets] if (skips is not None and self.config.skip_lora_rank) else []
        for lora, skip in zip(loras, reversed(skips or [])):
            lora.skip, lora.active = skip, True
        try:
            return self.decode(latents, return_dict=False)[0]
        finally:
            for lora in loras:
                lora.skip, lora.active = None, False


_parent = inspect.signature(AutoencoderKL.__init__)
PromptFixAutoencoderKL.__init__.__signature__ = _parent.replace(
    parameters=[*_parent.parameters.values(), inspect.Parameter("skip_lora_rank", inspect.Parameter.KEYWORD_ONLY, default=None)]
)
del _parent
