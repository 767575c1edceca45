"""editkit pipelines vs their diffusers reference: same components, scheduler, steps and seed.

    python benchmarks/pipeline_vs_reference.py                     # tiny and mid, 5 pairs each
    python benchmarks/pipeline_vs_reference.py --scales tiny --pairs 7 --threads 1

Each pair runs editkit's pipeline and the reference in one process, alternating
which goes first (AB, BA, ...), after one warm-up call of each. Reported per pair
of (method, scale): median time per image of each, the median of the per-pair
time ratios editkit / reference, and the same for the peak resident memory each
call added (kernel high-water mark, see benchmarks/_common.py). Ratios below 1
mean editkit is faster / leaner. Also checks the two outputs agree.

Scales (random-initialised; `_common.ip2p_components`):
- tiny: `editkit.testing.tiny_instructcv_components` (1.4 M-parameter UNet), 64x64, 10 steps;
- mid: a UNet with SD1.5's block widths (320, 640, 1280, 1280) and attention
  layout, one layer per block (579 M parameters), at 256x256, 1 step by default
  (one step takes ~13 s on one shared CPU core).

SD3 family, against diffusers' StableDiffusion3Pipeline with the same components:
- UNIC-Adapter at control scale 0 and image guidance 1 (tiny scale; `unic_pair`);
- Dream Engine vs the SD3 pipeline fed the same Qwen2-VL prompt states (tiny scale; `dream_pair`).
Writes benchmarks/results/pipeline_vs_reference.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULTS = {"tiny": {"size": 64, "steps": 10}, "mid": {"size": 256, "steps": 1}}


@dataclass
class PairSetup:
    """What one (method, scale) comparison needs: two zero-argument callables returning
    (N, H, W, 3) float arrays, and a description."""

    run_editkit: Callable[[], Any]
    run_reference: Callable[[], Any]
    info: dict[str, Any]


def instructcv_pair(scale: str, size: int, steps: int) -> PairSetup:
    import torch

    comps = C.ip2p_components(scale, seed=0)
    ours, ref = C.editkit_ip2p(comps), C.reference_ip2p(comps)
    image = C.test_image(size)
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, image_guidance_scale=1.5, output_type="np")

    def run_ours():
        return ours("turn it into a painting", image=image, max_side=None, generator=torch.Generator().manual_seed(0), **kw).images

    def run_ref():
        return ref("turn it into a painting", image=image, generator=torch.Generator().manual_seed(0), **kw).images

    params = sum(p.numel() for p in comps["unet"].parameters())
    return PairSetup(run_ours, run_ref, {"reference": "diffusers StableDiffusionInstructPix2PixPipeline", "unet_params": params,
                                         "scheduler": type(comps["scheduler"]).__name__, "guidance": "7.5 / image 1.5 (3 branches)"})


def unic_pair(scale: str, size: int, steps: int) -> PairSetup:
    """UNIC-Adapter at control scale 0 vs diffusers' StableDiffusion3Pipeline on the adapter's base weights.

    With image guidance 1 UNIC's rule keeps two branches (null prompt, prompt), i.e. SD3's CFG, and a zero
    control scale removes the adapter's contribution: the same image, so the ratio is the adapter's cost."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    if scale != "tiny":
        raise NotImplementedError("UNIC pair: only the tiny scale is wired (a mid-size SD3 stack is not built here)")
    mod = C.load_pipelines_module("unic")
    testing = C.try_import("editkit.testing.unic")
    comps = testing.tiny_unic_components(seed=0)
    ours = mod.UNICAdapterPipeline(**comps)
    ref = StableDiffusion3Pipeline(**{**comps, "transformer": comps["transformer"].base_transformer()})
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    image = C.test_image(size)
    g = 4.0

    def run_ours():
        return ours("a red square", image=image, control_scale=0.0, guidance_scale=g, image_guidance_scale=1.0, height=size, width=size,
                    num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np").images

    def run_ref():
        return ref("a red square", negative_prompt="", guidance_scale=g, height=size, width=size, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(0), output_type="np").images

    params = sum(p.numel() for p in comps["transformer"].parameters())
    return PairSetup(run_ours, run_ref, {"reference": "diffusers StableDiffusion3Pipeline (UNIC base weights)", "transformer_params": params,
                                         "scheduler": type(comps["scheduler"]).__name__, "guidance": f"{g} (2 branches), control scale 0"})


def dream_pair(scale: str, size: int, steps: int) -> PairSetup:
    """Dream Engine vs diffusers' StableDiffusion3Pipeline on the same transformer weights.

    The reference gets the same prompt states: Qwen2-VL encoding (editkit's encoder) and the two adapter
    MLPs run inside its timed call, then a stock SD3 transformer (identity embedders, the Dream weights)
    samples with diffusers' own loop. Both sides encode once per call, so the ratio is the sampling loop's."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from torch import nn

    if scale != "tiny":
        raise NotImplementedError("Dream Engine pair: only the tiny scale is wired (no mid-size Qwen2-VL here)")
    mod = C.load_pipelines_module("dream")
    testing = C.try_import("editkit.testing.dream")
    comps = testing.tiny_dream_components(seed=0)
    ours = mod.DreamEnginePipeline(**comps)
    tr = comps["transformer"]
    stock = SD3Transformer2DModel(**tr.sd3_config()).eval()
    stock.context_embedder, stock.time_text_embed.text_embedder = nn.Identity(), nn.Identity()
    stock.load_state_dict({k: v for k, v in tr.state_dict().items() if not k.startswith(("context_embedder.", "time_text_embed.text_embedder."))})
    ref = StableDiffusion3Pipeline(transformer=stock, scheduler=comps["scheduler"], vae=comps["vae"], text_encoder=None, tokenizer=None,
                                   text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    prompt, g = "a red square next to a blue circle", 3.5

    def run_ours():
        return ours(prompt, guidance_scale=g, height=size, width=size, num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    def run_ref():
        with torch.no_grad():
            _, cond, null = mod.sample_prompts(prompt, None, [], [], None)
            c = ours.encode_conditioning([cond], [null])
            e, pooled = c["encoder_hidden_states"], c["pooled_projections"]
            return ref(prompt_embeds=tr.context_embedder(e.value), negative_prompt_embeds=tr.context_embedder(e.null),
                       pooled_prompt_embeds=tr.time_text_embed.text_embedder(pooled.value),
                       negative_pooled_prompt_embeds=tr.time_text_embed.text_embedder(pooled.null), guidance_scale=g,
                       height=size, width=size, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                       output_type="np").images

    params = sum(p.numel() for p in tr.parameters())
    return PairSetup(run_ours, run_ref, {"reference": "diffusers StableDiffusion3Pipeline (Dream weights, same prompt states)",
                                         "transformer_params": params, "scheduler": type(comps["scheduler"]).__name__,
                                         "guidance": f"{g} (2 branches)"})


def pairs_registry() -> dict[str, tuple[Callable[[str, int, int], PairSetup] | None, str]]:
    """method -> (builder or None, why it is skipped)."""
    reg: dict[str, tuple[Any, str]] = {"instructcv": (instructcv_pair, "")}
    if C.load_pipelines_module("unic") is not None and C.try_import("editkit.testing.unic") is not None:
        reg["unic"] = (unic_pair, "")
    if C.load_pipelines_module("dream") is not None and C.try_import("editkit.testing.dream") is not None:
        reg["dream"] = (dream_pair, "")
    for method in ("unic", "dream"):
        reg.setdefault(method, (None, "skipped (not built)"))
    return reg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--methods", nargs="+", default=["instructcv", "unic", "dream"])
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs per comparison (>= 5 for the report)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    parser.add_argument("--steps", type=int, default=None, help="override the per-scale default steps")
    parser.add_argument("--size", type=int, default=None, help="override the per-scale default image side")
    parser.add_argument("--out", default="pipeline_vs_reference.json")
    args = parser.parse_args(argv)
    C.pin_malloc()
    C.set_threads(args.threads)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()

    registry = pairs_registry()
    results: list[dict[str, Any]] = []
    for method in args.methods:
        build, why = registry.get(method, (None, "skipped (unknown method)"))
        for scale in args.scales:
            size = args.size or DEFAULTS[scale]["size"]
            steps = args.steps or DEFAULTS[scale]["steps"]
            row: dict[str, Any] = {"method": method, "scale": scale, "size": size, "steps": steps}
            if build is None:
                print(f"{method:10s} {scale:5s} {why}", flush=True)
                results.append({**row, "status": why})
                continue
            t0 = time.perf_counter()
            try:
                setup = build(scale, size, steps)
            except NotImplementedError as e:
                print(f"{method:10s} {scale:5s} skipped ({e})", flush=True)
                results.append({**row, "status": f"skipped ({e})"})
                continue
            a, b = setup.run_editkit(), setup.run_reference()
            row.update(setup.info, max_abs_diff=float(abs(a - b).max()), build_s=round(time.perf_counter() - t0, 1))
            stats = C.interleaved_pairs(setup.run_editkit, setup.run_reference, args.pairs, warmup=1)
            row.update(stats, status="ok")
            results.append(row)
            print(f"{method:10s} {scale:5s} time ratio {stats['time_ratio_median']:.3f} "
                  f"[{stats['time_ratio_min']:.3f}, {stats['time_ratio_max']:.3f}]  mem ratio {stats['mem_ratio_median']:.3f}", flush=True)
            del setup

    cols = ["method", "scale", "size", "steps", "a_s_median", "b_s_median", "time_ratio_median", "time_ratio_min",
            "time_ratio_max", "a_delta_mb_median", "b_delta_mb_median", "mem_ratio_median", "max_abs_diff", "status"]
    print()
    print("a = editkit, b = diffusers reference; *_delta_mb = peak RSS added by the call")
    print(C.table(results, cols))
    path = C.write_json(args.out, {"machine": C.machine(), "settings": vars(args), "results": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
