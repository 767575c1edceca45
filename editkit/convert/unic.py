"""Convert an official UNIC-Adapter checkpoint (`sd3_medium_adapter.pth`) to editkit.

The official file is an adapter-only state dict in diffusers naming (`*_control` modules,
spec §10), loaded by the official code as `base.state_dict() | adapter` into the control
transformer, strictly. editkit's `UNICSD3Transformer2DModel` keeps those names, so the
conversion checks every key and shape against the model, routes nothing else, and writes
safetensors:

    python -m editkit.convert.unic sd3_medium_adapter.pth --base PATH/TO/SD3/transformer -o unic-transformer/
    python -m editkit.convert.unic sd3_medium_adapter.pth -o unic_adapter.safetensors      # adapter only

The pickle is read with `torch.load(weights_only=True)` (editkit.convert.load_state_dict).
The SD3.5 and FLUX adapters have other layouts (`attn2_control`, FLUX blocks) and are refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel

from editkit.modeling.unic_adapter import UNICSD3Transformer2DModel, is_adapter_key

from . import load_state_dict, save_state_dict

# The sin-cos table of `pos_embed_control` is a fixed buffer; files may or may not store it (spec §13).
OPTIONAL_KEYS = ("pos_embed_control.pos_embed",)


def check_adapter_keys(state: dict[str, torch.Tensor]) -> None:
    """Refuse anything that is not an SD3 UNIC adapter key, naming the offenders."""
    if not state:
        raise ValueError("the checkpoint holds no tensors.")
    sd35 = [k for k in state if ".attn2_control." in k]
    if sd35:
        raise ValueError(f"this is an SD3.5 adapter ({sd35[0]} ...); only the SD3-Medium adapter layout is supported.")
    flux = [k for k in state if k.startswith(("single_transformer_blocks.", "x_embedder"))]
    if flux:
        raise ValueError(f"this looks like the FLUX adapter ({flux[0]} ...); only the SD3-Medium adapter layout is supported.")
    other = sorted(k for k in state if not is_adapter_key(k) or k.endswith("control_gate"))
    if other:
        raise ValueError(f"{len(other)} key(s) are not UNIC adapter keys, e.g. {other[:5]}; expected only `*_control` modules (spec §10).")


def adapter_config(state: dict[str, torch.Tensor]) -> dict:
    """What the adapter file itself says about the transformer: layers, width, latent channels, patch, text widths."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    proj = state["pos_embed_control.proj.weight"]
    return {
        "num_layers": max(blocks) + 1 if blocks else 0,
        "inner_dim": int(proj.shape[0]),
        "in_channels": int(proj.shape[1]),
        "patch_size": int(proj.shape[2]),
        "joint_attention_dim": int(state["context_embedder_control.weight"].shape[1]),
        "pooled_projection_dim": int(state["time_text_embed_control.text_embedder.linear_1.weight"].shape[1]),
    }


def build_model(base: SD3Transformer2DModel, state: dict[str, torch.Tensor], control_scale: float = 1.0) -> UNICSD3Transformer2DModel:
    """Base weights + adapter, loaded strictly (as the official code does)."""
    check_adapter_keys(state)
    found = adapter_config(state)
    want = {
        "num_layers": base.config.num_layers,
        "inner_dim": base.config.num_attention_heads * base.config.attention_head_dim,
        "in_channels": base.config.in_channels,
        "patch_size": base.config.patch_size,
        "joint_attention_dim": base.config.joint_attention_dim,
        "pooled_projection_dim": base.config.pooled_projection_dim,
    }
    bad = {k: (found[k], want[k]) for k in want if found[k] != want[k]}
    if bad:
        raise ValueError(f"adapter and base transformer disagree (adapter, base): {bad}.")
    # official_sampling: the converted model samples as the official pipeline does by default (docs/fidelity.md)
    model = UNICSD3Transformer2DModel.from_sd3(base, init_from_base=False, control_scale=control_scale,
                                               official_sampling=True)
    expected = model.adapter_state_dict()
    missing = sorted(set(expected) - set(state) - set(OPTIONAL_KEYS))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}).")
    shapes = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if shapes:
        k = shapes[0]
        raise ValueError(f"{len(shapes)} adapter tensor(s) have the wrong shape, e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}.")
    full = {**base.state_dict(), **{k: v.to(expected[k].dtype) for k, v in state.items()}}
    for k in OPTIONAL_KEYS:
        full.setdefault(k, model.state_dict()[k])
    model.load_state_dict(full, strict=True)
    return model


def convert(adapter_path: str | Path, output: str | Path, base: str | Path | SD3Transformer2DModel | None = None,
            dtype: torch.dtype | None = None, control_scale: float = 1.0) -> Path:
    """Adapter .pth/.safetensors -> a `UNICSD3Transformer2DModel` folder (with `base`), or adapter-only safetensors."""
    state = load_state_dict(adapter_path)
    check_adapter_keys(state)
    output = Path(output)
    if base is None:
        if output.suffix != ".safetensors":
            raise ValueError(f"without `base`, `output` must be a .safetensors file for the adapter weights, got {str(output)!r}.")
        return save_state_dict({k: v.to(dtype) if dtype else v for k, v in state.items()}, output)
    if not isinstance(base, SD3Transformer2DModel):
        base_path = Path(base)
        sub = "transformer" if (base_path / "transformer" / "config.json").is_file() else None
        base = SD3Transformer2DModel.from_pretrained(str(base_path), subfolder=sub)
    model = build_model(base, state, control_scale)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(output), safe_serialization=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert an official UNIC-Adapter (SD3) checkpoint to editkit safetensors.")
    parser.add_argument("adapter", help="sd3_medium_adapter.pth (or .safetensors)")
    parser.add_argument("-o", "--output", required=True, help="output folder (with --base) or .safetensors file")
    parser.add_argument("--base", default=None, help="SD3 pipeline folder or its transformer folder")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    args = parser.parse_args(argv)
    out = convert(args.adapter, args.output, args.base, getattr(torch, args.dtype) if args.dtype else None)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
