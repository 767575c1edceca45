"""Convert Dream Engine's released shards to editkit's layout (safetensors).

The release (leonardPKU/DreamEngine-ObjectFusion) stores the whole composite,
LMM + DiT + adapters, as pickled fp32 shards `diffusion_pytorch_model-0000k-of-00005.bin`.
Key layout (official names -> editkit):

    lmm.visual.*                          -> lmm: visual.*
    lmm.model.{layers,embed_tokens,norm}.* -> lmm: language_model.*   (transformers 4.4x tree)
    lmm.model.visual.* / lmm.model.language_model.*  -> the same      (newer tree)
    lmm.lm_head.*                         -> dropped (unused)
    dit.*                                 -> transformer: * (diffusers SD3 names), except the stock
                                             context_embedder / time_text_embed.text_embedder (unused)
    input_embeds_align_mlp.{0,2}.*        -> transformer: context_embedder.linear_{1,2}.*
    condition_embeds_align_mlp.{0,2}.*    -> transformer: time_text_embed.text_embedder.linear_{1,2}.*
    pooled_proj.*                         -> dropped (unused by the DirectMap model)
    norm_lmm_out.weight                   -> dropped when all ones (its initial value: the release was trained
                                             without `--do_lmm_post_norm`); a trained one is refused, since
                                             editkit's pipeline does not apply that norm

The shard index `diffusion_pytorch_model.bin.index.json` (what `train.py` saves next to the shards) is read
when it is there: every shard it names must be given and every key it lists must be found in its shard.
Command line: `python -m editkit.convert.dream CHECKPOINT_DIR_OR_SHARDS... OUTPUT_DIR [--lora-alpha A]`.

PEFT LoRA weights (`X.base_layer.weight`, `X.lora_A.<name>.weight`,
`X.lora_B.<name>.weight`) are merged: W = W0 + (alpha / r) B A. Dream Engine's
demo attaches LoRA with alpha = r, its training used alpha = 2r; `lora_alpha`
None means alpha = r (the demo, i.e. parity with the released outputs).

The shards carry no config. The converter reads the DreamTransformer2DModel
config off the weights' shapes (layers, heads, widths, patch, positions, qk norm,
dual-attention layers; `sample_size` is not in the weights: `--sample-size`,
128 as SD3.5-Large; nor is the head width of a DiT without qk norm) and writes it to `transformer/config.json` with
`official_sampling: true`, so `DreamEnginePipeline` pads and builds its nulls as
the official `cfg_predict` does (docs/fidelity.md), and writes the official
sampler (`FlowMatchEulerDiscreteScheduler`, shift 3) to `scheduler/`. The LMM's
config, tokenizer and image processor are Qwen2-VL-2B-Instruct's, the VAE
SD3.5-Large's.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from . import load_state_dict, save_state_dict

ADAPTERS = {
    "input_embeds_align_mlp.": "context_embedder.",
    "condition_embeds_align_mlp.": "time_text_embed.text_embedder.",
}
MLP_LAYERS = {"0": "linear_1", "2": "linear_2"}
DROPPED_PREFIXES = ("norm_lmm_out.", "pooled_proj.", "lmm.lm_head.")
INDEX_NAME = "diffusion_pytorch_model.bin.index.json"
UNUSED_DIT = ("dit.context_embedder.", "dit.time_text_embed.text_embedder.")
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def merge_lora(state: dict[str, torch.Tensor], lora_alpha: float | None = None) -> dict[str, torch.Tensor]:
    """Fold PEFT LoRA pairs into their base weights; keys lose the `.base_layer` part."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _LORA.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = value
        elif ".lora_" in key:  # lora_embedding_*, magnitude vectors, ...: not a plain LoRA pair
            raise ValueError(f"unsupported LoRA tensor {key!r}; only lora_A / lora_B pairs on linear layers can be merged.")
        else:
            out[key.replace(".base_layer.", ".")] = value
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA of {module!r} has only lora_{next(iter(ab))}; its pair is missing.")
        weight_key = module + ".weight"
        if weight_key not in out:
            raise ValueError(f"LoRA of {module!r} has no base weight ({module}.base_layer.weight).")
        a, b = ab["A"].float(), ab["B"].float()
        rank = a.shape[0]
        scale = (float(lora_alpha) if lora_alpha is not None else rank) / rank
        base = out[weight_key]
        out[weight_key] = (base.float() + scale * (b @ a)).to(base.dtype)
    return out


def _rename_lmm(key: str) -> str | None:
    k = key[len("lmm."):]
    if k.startswith("lm_head."):
        return None
    if k.startswith("model.visual."):
        return k[len("model."):]
    if k.startswith("model.language_model."):
        return k[len("model."):]
    if k.startswith("visual."):
        return k
    if k.startswith("model."):
        return "language_model." + k[len("model."):]
    raise ValueError(f"unexpected LMM key {key!r}")


def convert_state_dict(state: dict[str, torch.Tensor], lora_alpha: float | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Official composite state dict -> {"transformer": DreamTransformer2DModel keys, "lmm": Qwen2VLModel keys}."""
    norm = state.get("norm_lmm_out.weight")
    if norm is not None and not torch.all(norm == 1):
        raise ValueError(
            "this checkpoint was trained with `--do_lmm_post_norm` (norm_lmm_out.weight is not its initial all-ones): "
            "editkit's DreamEnginePipeline feeds the LMM states to the adapters without that RMSNorm, so it cannot "
            "reproduce this checkpoint; convert a release trained without the flag."
        )
    state = merge_lora(state, lora_alpha)
    transformer: dict[str, torch.Tensor] = {}
    lmm: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES) or key.startswith(UNUSED_DIT):
            continue
        if key.startswith("lmm."):
            new = _rename_lmm(key)
            if new is not None:
                lmm[new] = value
        elif key.startswith("dit."):
            transformer[key[len("dit."):]] = value
        elif key.startswith(tuple(ADAPTERS)):
            prefix = next(p for p in ADAPTERS if key.startswith(p))
            layer, _, param = key[len(prefix):].partition(".")
            if layer not in MLP_LAYERS:
                raise ValueError(f"unexpected adapter key {key!r}; the adapters are Linear(0) -> SiLU -> Linear(2).")
            transformer[f"{ADAPTERS[prefix]}{MLP_LAYERS[layer]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) fit no part of Dream Engine, e.g. {unknown[:5]}")
    for part, name in ((transformer, "transformer"), (lmm, "lmm")):
        if not part:
            raise ValueError(f"the checkpoint holds no {name} weights; is it a Dream Engine release?")
    return {"transformer": transformer, "lmm": lmm}


def resolve_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """The shard files to read: the given files, or a folder's `*.bin` shards (all those its index names)."""
    paths = [Path(shards)] if isinstance(shards, (str, Path)) else [Path(p) for p in shards]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        index = folder / INDEX_NAME
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            paths = [folder / n for n in names]
        else:
            paths = sorted(folder.glob("*.bin"))
    if not paths:
        raise ValueError("`shards` is empty; pass the released diffusion_pytorch_model-*.bin files or their folder.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"shard file(s) not found: {missing}")
    index = paths[0].parent / INDEX_NAME
    if index.is_file():  # every shard the index names must be read, or part of the model would be left out
        named = set(json.loads(index.read_text())["weight_map"].values())
        left_out = sorted(named - {p.name for p in paths})
        if left_out:
            raise ValueError(f"{index} names shard(s) {left_out} that were not given; pass every shard or the folder.")
    return paths


def check_index(path: Path, part: dict[str, torch.Tensor]) -> None:
    """Compare one shard with what the index beside it says it holds."""
    index = path.parent / INDEX_NAME
    if not index.is_file():
        return
    listed = {k for k, shard in json.loads(index.read_text())["weight_map"].items() if shard == path.name}
    absent = sorted(listed - set(part))
    if absent:
        raise ValueError(f"shard {path.name} lacks {len(absent)} key(s) that {INDEX_NAME} puts there, e.g. {absent[:3]}")


def config_from_state_dict(state: dict[str, torch.Tensor], sample_size: int = 128, attention_head_dim: int | None = None) -> dict:
    """DreamTransformer2DModel's config from its converted weights (editkit names), `official_sampling` on.

    The head width is read off the qk norm (SD3.5); a DiT without one (SD3-Medium style) leaves no trace of
    it in the shapes, so `attention_head_dim` must be given then (None: 64, SD3's)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"the transformer weights lack {key!r}; is this a Dream Engine release?")
        return tuple(state[key].shape)

    inner, in_channels, patch, _ = shape("pos_embed.proj.weight")
    positions = shape("pos_embed.pos_embed")[1]
    side = round(positions ** 0.5)
    if side * side != positions:
        raise ValueError(f"pos_embed.pos_embed has {positions} positions, not a square grid.")
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ValueError(f"transformer blocks are not numbered 0..N-1: {blocks[:8]}")
    norm_q = "transformer_blocks.0.attn.norm_q.weight"
    qk_norm = None if norm_q not in state else ("layer_norm" if norm_q.replace("weight", "bias") in state else "rms_norm")
    head_dim = shape(norm_q)[0] if qk_norm else int(attention_head_dim or 64)
    if qk_norm and attention_head_dim and int(attention_head_dim) != head_dim:
        raise ValueError(f"`attention_head_dim`={attention_head_dim} but the qk norm weights are {head_dim} wide.")
    if inner % head_dim:
        raise ValueError(f"the DiT is {inner} wide, not a multiple of `attention_head_dim`={head_dim}; pass the right one.")
    adapter_hidden, lmm_width = shape("context_embedder.linear_1.weight")
    return {
        "_class_name": "DreamTransformer2DModel",
        "sample_size": int(sample_size), "patch_size": patch, "in_channels": in_channels, "num_layers": len(blocks),
        "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim, "joint_attention_dim": lmm_width,
        "caption_projection_dim": shape("context_embedder.linear_2.weight")[0], "pooled_projection_dim": lmm_width,
        "out_channels": shape("proj_out.weight")[0] // (patch * patch), "pos_embed_max_size": side,
        "dual_attention_layers": [i for i in blocks if f"transformer_blocks.{i}.attn2.to_q.weight" in state],
        "qk_norm": qk_norm, "adapter_hidden_dim": adapter_hidden, "official_sampling": True,
    }


OFFICIAL_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def convert_checkpoint(shards: Sequence[str | Path], output_dir: str | Path, lora_alpha: float | None = None,
                       dtype: torch.dtype | None = None, sample_size: int = 128,
                       attention_head_dim: int | None = None) -> dict[str, Path]:
    """Read the shards safely (`weights_only=True`), convert, write
    `transformer/diffusion_pytorch_model.safetensors` with its `config.json`, `lmm/model.safetensors` and
    `scheduler/scheduler_config.json`."""
    shards = resolve_shards(shards)
    state: dict[str, torch.Tensor] = {}
    for path in shards:
        part = load_state_dict(path)
        clash = set(part) & set(state)
        if clash:
            raise ValueError(f"shard {path} repeats {len(clash)} key(s) of an earlier shard, e.g. {sorted(clash)[:3]}")
        state.update(part)
        check_index(path, part)
    parts = convert_state_dict(state, lora_alpha)
    out = Path(output_dir)
    config = config_from_state_dict(parts["transformer"], sample_size, attention_head_dim)
    for folder, name, content in (("transformer", "config.json", config), ("scheduler", "scheduler_config.json", OFFICIAL_SCHEDULER)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / name).write_text(json.dumps(content, indent=2) + "\n")
    cast = (lambda sd: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}) if dtype else (lambda sd: sd)
    return {
        "transformer": save_state_dict(cast(parts["transformer"]), out / "transformer" / "diffusion_pytorch_model.safetensors"),
        "lmm": save_state_dict(cast(parts["lmm"]), out / "lmm" / "model.safetensors"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="+", help="the release folder (its index is read) or its .bin shards")
    parser.add_argument("output_dir", help="where to write transformer/ and lmm/ (safetensors)")
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: r, as the demo attaches it)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    parser.add_argument("--sample-size", type=int, default=128, help="the DiT's sample size in latents (128: SD3.5-Large)")
    parser.add_argument("--attention-head-dim", type=int, default=None,
                        help="head width, needed only for a DiT without a qk norm (default: read off the qk norm, else 64)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    written = convert_checkpoint(args.checkpoint if len(args.checkpoint) > 1 else args.checkpoint[0], args.output_dir,
                                 args.lora_alpha, dtype, args.sample_size, args.attention_head_dim)
    for part, path in written.items():
        print(f"{part}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
