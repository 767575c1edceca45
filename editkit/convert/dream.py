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

The shards carry no usable config: build the DreamTransformer2DModel config
from SD3.5-Large's (with `joint_attention_dim` = `pooled_projection_dim` =
1536, `adapter_hidden_dim` = 4096) and the LMM from Qwen2-VL-2B-Instruct's.
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


def convert_checkpoint(shards: Sequence[str | Path], output_dir: str | Path, lora_alpha: float | None = None,
                       dtype: torch.dtype | None = None) -> dict[str, Path]:
    """Read the shards safely (`weights_only=True`), convert, write
    `transformer/diffusion_pytorch_model.safetensors` and `lmm/model.safetensors`."""
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
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    written = convert_checkpoint(args.checkpoint if len(args.checkpoint) > 1 else args.checkpoint[0], args.output_dir,
                                 args.lora_alpha, dtype)
    for part, path in written.items():
        print(f"{part}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
