"""Convert the official PromptFix single-file checkpoint (CompVis/LDM layout) to a diffusers folder.

    python -m editkit.convert.promptfix promptfix.ckpt out/promptfix --tokenizer PATH_TO_CLIP_TOKENIZER

The checkpoint is read with `editkit.convert.load_state_dict` (safetensors, or a
pickle with `weights_only=True`); everything written is safetensors.

Key layout (spec §10): `model.diffusion_model.*` is the UNet (8 input
channels; `attn_extra` / `norm_extra` under each transformer block keep their
names), `first_stage_model.*` the VAE (decoder LoRA keys
`decoder.up.{i}.block.{j}.lora.*` go to `decoder.up_blocks.{n-1-i}.resnets.{j}.lora.*`),
`cond_stage_model.transformer.*` the CLIP text model. The LDM <-> diffusers
prefix tables are derived from the target configs, so a tiny config converts as
exactly as the SD1.5 one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import load_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# SD1.5 geometry (spec §2) with PromptFix's 8 input channels and auxiliary width.
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
CLIP_L_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
               "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def unet_prefixes(config: dict) -> list[tuple[str, str, dict]]:
    """(LDM prefix, diffusers prefix, suffix renames) for every module of a UNet with this config."""
    n, layers = len(config["block_out_channels"]), int(config["layers_per_block"])
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    table = [("time_embed.0", "time_embedding.linear_1", {}), ("time_embed.2", "time_embedding.linear_2", {}),
             ("input_blocks.0.0", "conv_in", {}), ("out.0", "conv_norm_out", {}), ("out.2", "conv_out", {})]
    idx = 1
    for b in range(n):
        for l in range(layers):
            table.append((f"input_blocks.{idx}.0", f"down_blocks.{b}.resnets.{l}", UNET_RESNET))
            if down_attn[b]:
                table.append((f"input_blocks.{idx}.1", f"down_blocks.{b}.attentions.{l}", {}))
            idx += 1
        if b < n - 1:
            table.append((f"input_blocks.{idx}.0.op", f"down_blocks.{b}.downsamplers.0.conv", {}))
            idx += 1
    table += [("middle_block.0", "mid_block.resnets.0", UNET_RESNET), ("middle_block.1", "mid_block.attentions.0", {}),
              ("middle_block.2", "mid_block.resnets.1", UNET_RESNET)]
    idx = 0
    for b in range(n):
        for l in range(layers + 1):
            table.append((f"output_blocks.{idx}.0", f"up_blocks.{b}.resnets.{l}", UNET_RESNET))
            k = 1
            if up_attn[b]:
                table.append((f"output_blocks.{idx}.1", f"up_blocks.{b}.attentions.{l}", {}))
                k = 2
            if l == layers and b < n - 1:
                table.append((f"output_blocks.{idx}.{k}.conv", f"up_blocks.{b}.upsamplers.0.conv", {}))
            idx += 1
    return table


def vae_prefixes(config: dict) -> list[tuple[str, str, dict]]:
    n, layers = len(config["block_out_channels"]), int(config["layers_per_block"])
    table = [("quant_conv", "quant_conv", {}), ("post_quant_conv", "post_quant_conv", {})]
    for part in ("encoder", "decoder"):
        table += [(f"{part}.conv_in", f"{part}.conv_in", {}), (f"{part}.conv_out", f"{part}.conv_out", {}),
                  (f"{part}.norm_out", f"{part}.conv_norm_out", {}),
                  (f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", VAE_RESNET),
                  (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", VAE_ATTENTION),
                  (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", VAE_RESNET)]
    for i in range(n):
        for j in range(layers):
            table.append((f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", VAE_RESNET))
        if i < n - 1:
            table.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", {}))
        for j in range(layers + 1):  # LDM up.{i}: i = n-1 is the deepest and runs first
            table.append((f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{n - 1 - i}.resnets.{j}", VAE_RESNET))
        if i > 0:
            table.append((f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{n - 1 - i}.upsamplers.0.conv", {}))
    return table


def _rename(key: str, table: list[tuple[str, str, dict]], reverse: bool = False) -> str | None:
    for ldm, diff, suffixes in table:
        src, dst = (diff, ldm) if reverse else (ldm, diff)
        if key == src or key.startswith(src + "."):
            rest = key[len(src) + 1 :]
            pairs = {v: k for k, v in suffixes.items()} if reverse else suffixes
            for a, b in pairs.items():
                if rest == a or rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            return f"{dst}.{rest}" if rest else dst
    return None


def _convert(state: dict[str, torch.Tensor], prefix: str, table, reverse: bool = False) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        if not key.startswith(prefix) and not reverse:
            continue
        inner = key[len(prefix) :] if not reverse else key
        new = _rename(inner, table, reverse)
        if new is None:
            unknown.append(key)
            continue
        out[(prefix + new) if reverse else new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint key(s) have no place in the target model, e.g. {unknown[:4]}; is the config right?")
    return out


def _vae_attention_shapes(state: dict[str, torch.Tensor], to_diffusers: bool) -> dict[str, torch.Tensor]:
    """LDM's VAE attention uses 1x1 convs; diffusers uses linears."""
    out = {}
    for k, v in state.items():
        if ".mid_block.attentions." in k or ".mid.attn_1." in k:
            if k.endswith("weight") and v.dim() == (4 if to_diffusers else 2) and "norm" not in k:
                v = v[:, :, 0, 0] if to_diffusers else v[:, :, None, None]
        out[k] = v
    return out


def convert_unet_state_dict(checkpoint: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    return _convert(checkpoint, UNET_PREFIX, unet_prefixes(config))


def convert_vae_state_dict(checkpoint: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    return _vae_attention_shapes(_convert(checkpoint, VAE_PREFIX, vae_prefixes(config)), to_diffusers=True)


def convert_clip_state_dict(checkpoint: dict[str, torch.Tensor], with_text_model_prefix: bool = True) -> dict[str, torch.Tensor]:
    """CLIP keys without the LDM prefix; `text_model.` kept or dropped to match the installed transformers."""
    out = {}
    for k, v in checkpoint.items():
        if k.startswith(CLIP_PREFIX):
            inner = k[len(CLIP_PREFIX) :].removeprefix("text_model.")
            if inner != "embeddings.position_ids":  # a buffer, rebuilt by the model
                out[("text_model." if with_text_model_prefix else "") + inner] = v
    return out


def to_ldm_state_dict(unet=None, vae=None, text_encoder=None) -> dict[str, torch.Tensor]:
    """The inverse mapping (diffusers/editkit modules -> one official-layout state dict), for tests and export."""
    out: dict[str, torch.Tensor] = {}
    if unet is not None:
        out.update(_convert(unet.state_dict(), UNET_PREFIX, unet_prefixes(dict(unet.config)), reverse=True))
    if vae is not None:
        sd = _vae_attention_shapes(vae.state_dict(), to_diffusers=False)
        out.update(_convert(sd, VAE_PREFIX, vae_prefixes(dict(vae.config)), reverse=True))
    if text_encoder is not None:
        out.update({CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()})
    return out


def _nonzero_lora(vae_state: dict[str, torch.Tensor]) -> bool:
    return any(".lora.lora_up." in k and bool(v.abs().sum() > 0) for k, v in vae_state.items())


def _load_json(value: dict | str | Path | None, default: dict) -> dict:
    if value is None:
        return dict(default)
    if isinstance(value, dict):
        return dict(value)
    return {k: v for k, v in json.loads(Path(value).read_text()).items() if not k.startswith("_")}


def convert_promptfix(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    tokenizer=None,
    unet_config: dict | str | Path | None = None,
    vae_config: dict | str | Path | None = None,
    text_config: dict | str | Path | None = None,
    resize_side: int | None = 640,
):
    """Convert an official checkpoint to a `PromptFixPipeline` folder and return the pipeline.

    `tokenizer`: a CLIPTokenizer or a folder with one (the checkpoint holds no
    tokenizer; CLIP-L's for the released model). Configs default to SD1.5 /
    CLIP-L; pass them (dicts or config.json paths) for other geometries.
    The auxiliary width is read from the `attn_extra` weights; the skip-LoRA VAE
    is used only when the checkpoint holds non-zero LoRA weights (spec §13.1).
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editkit.modeling.promptfix_unet import PromptFixUNet2DConditionModel
    from editkit.modeling.promptfix_vae import PromptFixAutoencoderKL
    from editkit.pipelines.promptfix import PromptFixPipeline
    from editkit.testing import sd_euler_ancestral

    if tokenizer is None:
        raise ValueError("`tokenizer` is required: a CLIPTokenizer or a folder holding one (openai/clip-vit-large-patch14 for the released model).")
    state = load_state_dict(checkpoint)
    if not any(k.startswith(UNET_PREFIX) for k in state):
        raise ValueError(f"checkpoint {checkpoint} has no '{UNET_PREFIX}*' keys; is it a PromptFix/LDM checkpoint?")

    ucfg = _load_json(unet_config, SD15_UNET_CONFIG)
    unet_sd = convert_unet_state_dict(state, ucfg)
    ucfg["in_channels"] = int(unet_sd["conv_in.weight"].shape[1])
    aux_keys = [k for k in unet_sd if k.endswith("attn_extra.to_k.weight")]
    ucfg["auxiliary_cross_attention_dim"] = int(unet_sd[aux_keys[0]].shape[1]) if aux_keys else None
    unet = PromptFixUNet2DConditionModel.from_config(ucfg)
    unet.load_state_dict(unet_sd, strict=True)

    vcfg = _load_json(vae_config, SD15_VAE_CONFIG)
    vae_sd = convert_vae_state_dict(state, vcfg)
    if _nonzero_lora(vae_sd):
        vae = PromptFixAutoencoderKL.from_config({**vcfg, "skip_lora_rank": int(next(v.shape[0] for k, v in vae_sd.items() if "lora_down" in k))})
    else:  # absent or all-zero LoRA: the stock VAE is exactly equivalent
        vae_sd = {k: v for k, v in vae_sd.items() if ".lora." not in k}
        vae = AutoencoderKL.from_config(vcfg)
    vae.load_state_dict(vae_sd, strict=True)

    text_encoder = CLIPTextModel(CLIPTextConfig(**_load_json(text_config, CLIP_L_TEXT_CONFIG)))
    prefixed = any(k.startswith("text_model.") for k in text_encoder.state_dict())
    missing, unexpected = text_encoder.load_state_dict(convert_clip_state_dict(state, prefixed), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ValueError(f"text encoder weights do not fit the config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    tok = tokenizer if not isinstance(tokenizer, (str, Path)) else CLIPTokenizer.from_pretrained(tokenizer)

    pipe = PromptFixPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tok, unet=unet.eval(),
                             scheduler=sd_euler_ancestral(), resize_side=resize_side,
                             hgs_mode="off")  # the released script never runs HGS (spec §11 #1): sample as it does
    pipe.save_pretrained(output_dir, safe_serialization=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert an official PromptFix checkpoint to a diffusers folder.")
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("--tokenizer", required=True, help="folder with the CLIP-L tokenizer")
    parser.add_argument("--unet-config"), parser.add_argument("--vae-config"), parser.add_argument("--text-config")
    args = parser.parse_args(argv)
    convert_promptfix(args.checkpoint, args.output_dir, tokenizer=args.tokenizer, unet_config=args.unet_config,
                      vae_config=args.vae_config, text_config=args.text_config)
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
