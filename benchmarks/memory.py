"""Peak memory of a 2048x2048 edit on CPU, with and without VAE tiling.

    python benchmarks/memory.py                    # all three runs below, ~3 minutes on one core
    python benchmarks/memory.py --runs tiled default --threads 1

Runs (each in its own process, so one run's freed memory cannot hide the next
one's peak; peak = the kernel's resident-set high-water mark, VmHWM):

- `tiled`: the full 2048x2048 working size end to end (VAE encode, one UNet
  step, VAE decode) with an SD-like scale-factor-8 VAE (latents 256x256) and
  the tiny InstructCV UNet, VAE tiling on (512 px tiles, 25 % overlap);
- `untiled`: the same without tiling;
- `default`: the shipped tiny InstructCV model with its defaults (the working
  size is capped at max_side=512 and the output resized back to 2048x2048).

Target: under 4 GB peak for the tiled full-resolution edit. Writes
benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SIZE = 2048
TILE = 512


def one_run(kind: str, steps: int) -> dict:
    import torch

    from editkit.testing import sd_euler_ancestral, tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_unet, tiny_vae

    idle_mb = C.rss_mb()
    if kind == "default":
        mod = C.load_pipelines_module("instructcv")
        pipe = mod.InstructCVPipeline.from_pretrained(C.REPO / "editkit" / "models" / "instructcv-tiny")
        call = {}
    else:
        comps = {
            "unet": tiny_unet(seed=0),
            "vae": tiny_vae(block_out_channels=(32, 64, 64, 64), mid_attention=False, norm_num_groups=16, seed=1),  # scale factor 8
            "text_encoder": tiny_clip_text_encoder(seed=2),
            "tokenizer": tiny_clip_tokenizer(),
            "scheduler": sd_euler_ancestral(),
        }
        pipe = C.editkit_ip2p(comps)
        call = {"max_side": None}  # work at the full 2048x2048
        if kind == "tiled":
            pipe.vae.enable_tiling()
            # tile sizes are attributes (default: the config's sample_size, 32 px here: thousands of tiles)
            pipe.vae.tile_sample_min_size = TILE
            pipe.vae.tile_latent_min_size = TILE // pipe.vae_scale_factor
    pipe.set_progress_bar_config(disable=True)
    image = C.test_image(SIZE)
    loaded_mb = C.rss_mb()
    with C.PeakRSS() as mem:
        t0 = time.perf_counter()
        out = pipe("turn it into a painting", image=image, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                   output_type="np", **call).images
        seconds = time.perf_counter() - t0
    return {
        "run": kind,
        "output": list(out.shape[1:3]),
        "latents": [SIZE // pipe.vae_scale_factor] * 2 if kind != "default" else [512 // pipe.vae_scale_factor] * 2,
        "steps": steps,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(mem.peak_mb, 1),
        "added_by_call_mb": round(mem.delta_mb, 1),
        "rss_idle_mb": round(idle_mb or 0, 1),
        "rss_with_model_mb": round(loaded_mb or 0, 1),
        "peak_method": mem.method,
        "finite": bool(torch.isfinite(torch.from_numpy(out)).all()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=["tiled", "default", "untiled"], choices=["tiled", "untiled", "default"])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit-gb", type=float, default=4.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="memory.json")
    args = parser.parse_args(argv)
    C.pin_malloc()
    C.set_threads(args.threads)
    if args.child:
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()
        print(json.dumps(one_run(args.child, args.steps)))
        return 0

    results = []
    for kind in args.runs:
        cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            results.append({"run": kind, "error": proc.stderr[-800:]})
            print(f"{kind}: failed\n{proc.stderr[-800:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{kind:8s} peak RSS {row['peak_rss_mb']:.0f} MB ({row['added_by_call_mb']:.0f} MB added by the call) in {row['seconds']} s", flush=True)
    tiled = next((r for r in results if r.get("run") == "tiled" and "peak_rss_mb" in r), None)
    verdict = None
    if tiled:
        verdict = tiled["peak_rss_mb"] <= args.limit_gb * 1024
        print(f"\n2048x2048 tiled edit: peak {tiled['peak_rss_mb'] / 1024:.2f} GB -> {'within' if verdict else 'OVER'} the {args.limit_gb} GB target")
    print()
    print(C.table(results, ["run", "output", "latents", "steps", "seconds", "peak_rss_mb", "added_by_call_mb", "rss_with_model_mb", "finite"]))
    path = C.write_json(args.out, {"machine": C.machine(), "settings": {k: v for k, v in vars(args).items() if k != "child"},
                                   "tile_px": TILE, "within_limit": verdict, "results": results})
    print(f"\nwrote {path}")
    return 0 if verdict in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
