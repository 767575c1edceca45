"""Official PixWizard weights (`consolidated[_ema].00-of-01.pth`) to `PixWizardTransformer2DModel`.

    python -m editkit.convert.pixwizard consolidated_ema.00-of-01.pth out/transformer

The official state dict has no prefix (pixwizard.md §10). Its names map one to one onto
editkit's (`OFFICIAL_TO_EDITKIT`); the config is read off the tensor shapes (the patch
size and the token-sampler K are not stored in the weights: pass them if they differ
from the released 2 and 256). `model_args.pth` is a pickled Namespace that safe loading
refuses; it is not needed. The result is written as a diffusers model folder (safetensors).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel

from . import load_state_dict

# top-level official prefix -> editkit prefix
TOP_LEVEL = {
    "x_embedder": "patch_embedder.proj",
    "t_embedder.mlp.0": "timestep_embedder.linear_1",
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "task_embedder.0": "task_embedder.0",
    "task_embedder.1": "task_embedder.1",
    "global_semantic_embedder.0": "global_semantic_embedder.0",
    "global_semantic_embedder.1": "global_semantic_embedder.1",
    "final_layer.linear": "norm_out.linear_2",
    "final_layer.adaLN_modulation.1": "norm_out.linear_1",
    "pad_token": "pad_token",
}

# per-block official prefix (after `layers.N.`) -> editkit prefix
BLOCK = {
    "attention.wq": "attn1.to_q",
    "attention.wk": "attn1.to_k",
    "attention.wv": "attn1.to_v",
    "attention.wo": "attn2.to_out.0",
    "attention.wk_y": "attn2.to_k",
    "attention.wv_y": "attn2.to_v",
    "attention.wk_ii": "to_k_image",
    "attention.wv_ii": "to_v_image",
    "attention.q_norm": "attn1.norm_q",
    "attention.k_norm": "attn1.norm_k",
    "attention.ky_norm": "attn2.norm_k",
    "attention.kii_norm": "norm_k_image",
    "attention.gate": "gate",
    "attention.gate_for_ii": "gate_image",
    "feed_forward.w1": "feed_forward.linear_1",
    "feed_forward.w2": "feed_forward.linear_2",
    "feed_forward.w3": "feed_forward.linear_3",
    "attention_norm1": "norm1.norm",
    "attention_norm2": "norm2",
    "ffn_norm1": "ffn_norm1",
    "ffn_norm2": "ffn_norm2",
    "attention_y_norm": "norm1_context",
    "attention_input_norm": "norm_image",
    "adaLN_modulation.1": "norm1.linear",
    "y_pool_proj": "task_proj",
    "input_image_proj": "image_proj",
    "in_conv.0": "token_sampler.in_conv.0",
    "in_conv.1": "token_sampler.in_conv.1",
    "out_conv.0": "token_sampler.out_conv.0",
    "out_conv.2": "token_sampler.out_conv.2",
    "out_conv.4": "token_sampler.out_conv.4",
}

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def _rename(key: str, table: dict[str, str]) -> str | None:
    """Longest matching prefix wins (`attention.wk_y` before `attention.wk`)."""
    for prefix in sorted(table, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            return table[prefix] + key[len(prefix):]
    return None


def official_to_editkit(key: str) -> str:
    m = _LAYER.match(key)
    if m:
        new = _rename(m.group(2), BLOCK)
        if new is not None:
            return f"layers.{m.group(1)}.{new}"
    else:
        new = _rename(key, TOP_LEVEL)
        if new is not None:
            return new
    raise KeyError(f"unexpected key {key!r} in a PixWizard checkpoint (not in the official layout)")


def editkit_to_official(key: str) -> str:
    inverse_top = {v: k for k, v in TOP_LEVEL.items()}
    inverse_block = {v: k for k, v in BLOCK.items()}
    m = _LAYER.match(key)
    new = _rename(m.group(2), inverse_block) if m else _rename(key, inverse_top)
    if new is None:
        raise KeyError(f"editkit key {key!r} has no official counterpart")
    return f"layers.{m.group(1)}.{new}" if m else new


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> editkit names (tensors unchanged)."""
    for prefix in ("module.", "model."):  # tolerate a wrapper prefix (open question 3 in the spec)
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {official_to_editkit(k): v for k, v in state.items()}


def to_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """editkit names -> official names (for exporting back, and for tests)."""
    return {editkit_to_official(k): v for k, v in state.items()}


def config_from_state_dict(state: dict[str, torch.Tensor], patch_size: int = 2, sample_tokens: int = 256,
                           sample_size: int = 96) -> dict:
    """`PixWizardTransformer2DModel` config from an official state dict's shapes."""
    try:
        hidden, patch_in = state["x_embedder.weight"].shape
        heads = state["layers.0.attention.gate"].shape[0]
        kv_dim = state["layers.0.attention.wk.weight"].shape[0]
        ffn = state["layers.0.feed_forward.w1.weight"].shape[0]
        out_dim = state["final_layer.linear.weight"].shape[0]
        cross_dim = state["layers.0.attention.wk_y.weight"].shape[1]
        pooled_dim = state["task_embedder.1.weight"].shape[1]
        image_dim = state["layers.0.input_image_proj.weight"].shape[1]
    except KeyError as err:
        raise ValueError(f"not an official PixWizard state dict: missing {err}") from None
    num_layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
    per_patch = patch_size * patch_size
    if patch_in % (2 * per_patch):
        raise ValueError(f"x_embedder takes {patch_in} features, not 2 x C x {per_patch}: is patch_size {patch_size} right?")
    channels = patch_in // (2 * per_patch)
    head_dim = hidden // heads
    base = int(4 * 2 * hidden / 3)
    multiple_of = next((m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if m * ((base + m - 1) // m) == ffn), None)
    config = {
        "sample_size": sample_size, "patch_size": patch_size, "in_channels": channels, "condition_channels": channels,
        "hidden_size": hidden, "num_layers": num_layers, "num_attention_heads": heads, "num_kv_heads": kv_dim // head_dim,
        "multiple_of": multiple_of or 1, "ffn_dim_multiplier": None if multiple_of else ffn / base,
        "learn_sigma": out_dim == per_patch * channels * 2, "qk_norm": "layers.0.attention.q_norm.weight" in state,
        "cross_attention_dim": cross_dim, "pooled_text_dim": pooled_dim, "image_embed_dim": image_dim,
        "sample_tokens": sample_tokens,
        # an official checkpoint samples the official way by default (docs/fidelity.md)
        "official_sampling": True, "token_selection": "gumbel",
    }
    return config


def convert_checkpoint(checkpoint: str | Path, output_dir: str | Path | None = None, patch_size: int = 2,
                       sample_tokens: int = 256, sample_size: int = 96) -> PixWizardTransformer2DModel:
    """Load an official `.pth` safely, build the model, load strictly, and save it (safetensors) when asked."""
    official = load_state_dict(checkpoint)
    config = config_from_state_dict(official, patch_size, sample_tokens, sample_size)
    model = PixWizardTransformer2DModel(**config)
    missing, unexpected = model.load_state_dict(convert_state_dict(official), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.eval()
    if output_dir is not None:
        model.save_pretrained(str(output_dir), safe_serialization=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="consolidated_ema.00-of-01.pth (or consolidated.00-of-01.pth)")
    parser.add_argument("output_dir", help="where to write the diffusers transformer folder")
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--sample-tokens", type=int, default=256)
    parser.add_argument("--sample-size", type=int, default=96, help="latent side of the bucket centre (768 px / 8)")
    args = parser.parse_args(argv)
    convert_checkpoint(args.checkpoint, args.output_dir, args.patch_size, args.sample_tokens, args.sample_size)
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
