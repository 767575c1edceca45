"""What high-frequency guidance sampling (HGS) buys and what it costs, on the shapes restore family.

    python benchmarks/hgs_cost.py --model outputs/promptfix_shapes/final [--n 40 --steps 20 --out benchmarks/results/hgs_cost.json]

For each HGS setting the same PromptFix model edits the same test samples with
the same seeds; reported per setting:

- psnr: PSNR (dB) of the output against the ground truth;
- edge_err: mean |Sobel(out) - Sobel(gt)| of the grey images, outside the repaired
  region (the flaw mask for watermark/snow/hole, the edited region for object removal;
  the whole image for global degradations);
- hf_err: mean |HP(out) - HP(gt)| (FFT high-pass, unnormalised) outside that region;
- s_per_image: wall time per image (batches of --batch, one thread);
- the changes against HGS off (negative error change = better).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from editkit.data.shapes import generate
from editkit.hgs import HighFrequencyGuidance, grey
from editkit.images import pil_to_tensor
from editkit.pipelines.promptfix import PromptFixPipeline

# name -> HighFrequencyGuidance kwargs ("<iterations>x<step size>", optional step window)
SETTINGS: dict[str, dict | None] = {
    "off": None,
    "official 5x1": {"iterations": 5, "step_size": 1.0},
    "5x300": {"iterations": 5, "step_size": 300.0},
    "5x1000": {"iterations": 5, "step_size": 1000.0},
    "2x1000": {"iterations": 2, "step_size": 1000.0},
    "1x2000": {"iterations": 1, "step_size": 2000.0},
    "2x1000 first half": {"iterations": 2, "step_size": 1000.0, "step_range": (0.0, 0.5)},
    "2x1000 last half": {"iterations": 2, "step_size": 1000.0, "step_range": (0.5, 1.0)},
    "1x2000 last half": {"iterations": 1, "step_size": 2000.0, "step_range": (0.5, 1.0)},
    "1x4000": {"iterations": 1, "step_size": 4000.0},
}


def sobel_raw(x: torch.Tensor) -> torch.Tensor:
    g = grey(x)
    k = g.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    return (F.conv2d(g, k, padding=1) ** 2 + F.conv2d(g, k.transpose(-1, -2), padding=1) ** 2).sqrt()


def high_pass_raw(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    g = grey(x)
    h, w = g.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(g), dim=(-2, -1))
    yy = torch.arange(h, dtype=torch.float32) - h // 2
    xx = torch.arange(w, dtype=torch.float32) - w // 2
    keep = (yy[:, None] ** 2 + xx[None, :] ** 2).sqrt() > cutoff
    return torch.fft.ifft2(torch.fft.ifftshift(spec * keep, dim=(-2, -1))).abs()


def region_mask(sample) -> np.ndarray:
    """1 where the task repairs something local (not scored for edges), else 0."""
    size = sample.target.size[::-1]
    m = sample.arrays.get("flaw_mask")
    if m is None and sample.mask is not None:
        m = np.asarray(sample.mask) > 127
    return np.zeros(size, bool) if m is None else np.asarray(m, bool)


def scores(out: torch.Tensor, gt: torch.Tensor, repaired: torch.Tensor, cutoff: float) -> dict[str, np.ndarray]:
    """Per-image metrics; all tensors (B, C, H, W) in [0, 1]; `repaired` (B, 1, H, W) bool."""
    mse = ((out - gt) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    keep = (~repaired).float()
    area = keep.sum(dim=(1, 2, 3)).clamp_min(1.0)
    edge = ((sobel_raw(out) - sobel_raw(gt)).abs() * keep).sum(dim=(1, 2, 3)) / area
    hf = ((high_pass_raw(out, cutoff) - high_pass_raw(gt, cutoff)).abs() * keep).sum(dim=(1, 2, 3)) / area
    return {"psnr": (10 * torch.log10(1.0 / mse)).numpy(), "edge_err": edge.numpy(), "hf_err": hf.numpy()}


def run(model: str, n: int, steps: int, batch: int, seed: int, settings: dict[str, dict | None]) -> dict:
    torch.set_num_threads(1)
    pipe = PromptFixPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    samples = [s for s in generate("restore", n, 64, "test", seed)]
    gt = pil_to_tensor([s.target for s in samples]) / 2 + 0.5
    repaired = torch.from_numpy(np.stack([region_mask(s) for s in samples]))[:, None]
    cutoff = HighFrequencyGuidance().radius(64, 64)
    results = {}
    for name, kw in settings.items():
        outs, t0 = [], time.perf_counter()
        for i in range(0, n, batch):
            chunk = samples[i : i + batch]
            hgs = HighFrequencyGuidance(**kw) if kw else None
            outs.append(pipe(
                prompt=[s.instruction for s in chunk], image=[s.source for s in chunk],
                auxiliary_prompt=[s.auxiliary_prompt for s in chunk], num_inference_steps=steps,
                hgs_mode="latent" if kw else "off", hgs=hgs, output_type="pt",
                generator=[torch.Generator().manual_seed(seed + i + k) for k in range(len(chunk))],
            ).images)
        elapsed = (time.perf_counter() - t0) / n
        out = torch.cat(outs).float()
        sc = scores(out, gt, repaired, cutoff)
        per_task: dict[str, dict[str, float]] = {}
        for t in sorted({s.task for s in samples}):
            idx = [k for k, s in enumerate(samples) if s.task == t]
            per_task[t] = {m: float(v[idx].mean()) for m, v in sc.items()}
        results[name] = {"settings": kw, "s_per_image": elapsed, **{m: float(v.mean()) for m, v in sc.items()}, "per_task": per_task}
        print(f"{name:32s} psnr {results[name]['psnr']:.3f}  edge {results[name]['edge_err']:.5f}  hf {results[name]['hf_err']:.5f}  {elapsed:.3f} s/img", flush=True)
    # the identity baseline (return the input): what restoration has to beat
    src = pil_to_tensor([s.source for s in samples]) / 2 + 0.5
    ident = scores(src, gt, repaired, cutoff)
    results["identity (input returned)"] = {"settings": None, "s_per_image": 0.0, **{m: float(v.mean()) for m, v in ident.items()}}
    return results


def table(results: dict) -> str:
    base = results["off"]
    lines = ["| setting | PSNR (dB) | edge err | HF err | s / image | PSNR gain | edge err change | cost vs off |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        cost = r["s_per_image"] / base["s_per_image"] if base["s_per_image"] else math.nan
        lines.append(
            f"| {name} | {r['psnr']:.2f} | {r['edge_err']:.4f} | {r['hf_err']:.4f} | {r['s_per_image']:.3f} | "
            f"{r['psnr'] - base['psnr']:+.3f} | {100 * (r['edge_err'] / base['edge_err'] - 1):+.1f} % | {cost:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a PromptFix pipeline folder (e.g. the trained tiny shapes model)")
    parser.add_argument("--n", type=int, default=40, help="test samples (round-robin over the restore tasks)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="all", help="comma-separated setting names, or 'all'")
    parser.add_argument("--out", default="benchmarks/results/hgs_cost.json")
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.batch < 1:
        raise SystemExit("--n, --steps and --batch must be >= 1")
    names = list(SETTINGS) if args.settings == "all" else [k.strip() for k in args.settings.split(",")]
    unknown = [k for k in names if k not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown --settings {unknown}; known: {list(SETTINGS)}")
    chosen = {k: SETTINGS[k] for k in names}
    if "off" not in chosen:
        chosen = {"off": None, **chosen}
    results = run(args.model, args.n, args.steps, args.batch, args.seed, chosen)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "n": args.n, "steps": args.steps, "results": results}, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
