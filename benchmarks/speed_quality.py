"""Speed and quality side by side: reference, editkit default and editkit fast, per method, on the shipped tiny
models over the shapes benchmark.

    python benchmarks/speed_quality.py --split test --n 50 [--methods instructcv,promptfix] [--pairs 6]
    python benchmarks/speed_quality.py --split val --n 20 --sweep   # candidate fast settings, to choose on val

Systems (quality: `editkit eval`'s headline metric per task; time: wall seconds per image, measured in
interleaved pairs against the reference, median ratio and range):
    reference  diffusers' StableDiffusionInstructPix2PixPipeline on the same components for InstructCV;
               editkit's own default for the others (benchmarks/pipeline_vs_reference.py shows editkit's
               default at parity with diffusers' SD3 pipeline and IP2P pipeline)
    default    editkit, the method's evaluation default (20 steps, guidance on every step)
    fast       editkit.speed.FAST_PRESETS[method] (fewer steps, a guidance interval, a multistep solver)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

from editkit.data.shapes import make_sample  # noqa: E402
from editkit.evaluation import ADAPTERS, evaluate  # noqa: E402
from editkit.loading import default_model, load_pipeline  # noqa: E402
from editkit.speed import FAST_PRESETS, SpeedPreset, fast_pipeline  # noqa: E402

TASKS = {
    "instructcv": "segment,detect,depth,classify,recolor,remove,add,move,resize,change_background",
    "promptfix": "dehaze,denoise,deblur,desnow,dewatermark,inpaint",
    "pixwizard": "segment,depth,recolor,remove",
    "unic": "canny_to_image,depth_to_image,subject_driven",
    "dream": "combine,put_on_background",
}
DEFAULT_STEPS = 20
EXTRA = {"promptfix": {"hgs_mode": "off"}}  # HGS is its own cost study (docs/hgs.md)
UNET_METHODS = ("instructcv", "promptfix")  # DDPM-family UNets: the only ones DPM-Solver++ or DeepCache serves
SWEEP = [SpeedPreset(20), SpeedPreset(10), SpeedPreset(10, (0.0, 0.5)), SpeedPreset(10, (0.25, 0.75)),
         SpeedPreset(10, None, "dpmpp_2m"), SpeedPreset(10, (0.0, 0.5), "dpmpp_2m"), SpeedPreset(6, (0.0, 0.5), "dpmpp_2m"),
         SpeedPreset(10, (0.0, 0.5), None, 2), SpeedPreset(10, (0.0, 0.5), None, 3), SpeedPreset(10, (0.0, 0.5), "dpmpp_2m", 2),
         SpeedPreset(10, (0.0, 0.5), "unipc"), SpeedPreset(8, (0.0, 0.5), "unipc"), SpeedPreset(12, (0.0, 0.5), "unipc")]


def serves(preset: SpeedPreset, method: str) -> bool:
    """UniPC serves every pipeline (flow sigmas for the DiTs); DPM-Solver++ and DeepCache only the UNets."""
    return method in UNET_METHODS or (preset.solver in (None, "unipc") and preset.deep_cache is None)


def ip2p_reference(pipe):
    """diffusers' own InstructPix2Pix pipeline on InstructCV's components, called like editkit's adapter."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    ref = StableDiffusionInstructPix2PixPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                                 unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    g, ig = pipe.config.guidance_scale, pipe.config.image_guidance_scale

    def run(instructions, sources, samples, seed0=0, steps=DEFAULT_STEPS):
        gens = [torch.Generator().manual_seed(seed0 + s.index) for s in samples]
        return ref(list(instructions), image=list(sources), num_inference_steps=steps, guidance_scale=g,
                   image_guidance_scale=ig, generator=gens, output_type="pil").images

    return run


def headline(results: dict) -> dict[str, dict[str, float]]:
    """task -> the model's headline metric (miou, ap50, rmse, accuracy, edit_success, psnr), and PSNR to the target
    where the task has it (edit_success is 0 for most samples of the tiny DiTs, so PSNR is what separates settings)."""
    out = {}
    for task, row in results["tasks"].items():
        model = row["scores"]["model"]
        out[task] = {m: model[m] for m in dict.fromkeys([row["headline"], "psnr"]) if m in model}
    return out


def quality(system, method: str, tasks: str, n: int, split: str, preset: SpeedPreset | None) -> dict[str, float]:
    extra = dict(EXTRA.get(method, {}))
    if callable(system) and not hasattr(system, "components"):
        return headline(evaluate(system, "custom", tasks, n=n, split=split, progress=False))
    pipe, kwargs = (system, {"num_inference_steps": DEFAULT_STEPS}) if preset is None else fast_pipeline(system, method, preset)
    steps = kwargs.pop("num_inference_steps")
    return headline(evaluate(pipe, method, tasks, n=n, split=split, steps=steps, progress=False, call_args={**extra, **kwargs}))


def one_image(system, method: str, preset: SpeedPreset | None):
    sample = make_sample(TASKS[method].split(",")[0], "test", 0, 64)
    if callable(system) and not hasattr(system, "components"):
        return lambda: system([sample.instruction], [sample.source], [sample])
    pipe, kwargs = (system, {"num_inference_steps": DEFAULT_STEPS}) if preset is None else fast_pipeline(system, method, preset)
    steps = kwargs.pop("num_inference_steps")
    adapter = ADAPTERS[method]
    return lambda: adapter(pipe, [sample], seeds=[0], steps=steps, guidance=None, image_guidance=None,
                           **{**EXTRA.get(method, {}), **kwargs})


def base_parser(doc: str, methods: list[str], split: str, n: int) -> argparse.ArgumentParser:
    """The options every speed/quality benchmark shares: methods, split, samples per task, timing pairs, out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(methods))
    parser.add_argument("--split", default=split, choices=("val", "test"))
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--out", default=None)
    return parser


def shipped(method: str):
    """The method's shipped tiny model, fp32 on CPU, quiet."""
    pipe = load_pipeline(method, str(default_model(method)), "cpu", "fp32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__, list(TASKS), "test", 50)
    parser.add_argument("--sweep", action="store_true", help="score the candidate fast settings (choose on val)")
    parser.add_argument("--sweep-only", default=None, help="with --sweep: comma-separated indices into SWEEP")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report: dict = {"split": args.split, "n_per_task": args.n, "methods": {}, "machine": C.machine()}
    for method in args.methods.split(","):
        pipe = shipped(method)
        entry: dict = {"tasks": TASKS[method]}
        if args.sweep:
            entry["sweep"] = []
            chosen = SWEEP if args.sweep_only is None else [SWEEP[int(i)] for i in args.sweep_only.split(",")]
            for preset in (p for p in chosen if serves(p, method)):
                q = quality(pipe, method, TASKS[method], args.n, args.split, preset)
                entry["sweep"].append({"preset": preset.__dict__, "quality": q})
                print(method, preset, q, flush=True)
        else:
            ref = ip2p_reference(pipe) if method == "instructcv" else pipe
            systems = {"reference": (ref, None), "default": (pipe, None), "fast": (pipe, FAST_PRESETS[method])}
            entry["fast_preset"] = FAST_PRESETS[method].__dict__
            entry["quality"] = {name: quality(s, method, TASKS[method], args.n, args.split, p)
                                for name, (s, p) in systems.items() if name != "reference" or ref is not pipe}
            if ref is pipe:  # the reference is editkit's own default: the same images, scored once
                entry["quality"]["reference"] = entry["quality"]["default"]
            ref_run = one_image(ref, method, None)
            entry["time"] = {name: C.interleaved_pairs(one_image(s, method, p), ref_run, args.pairs)
                             for name, (s, p) in systems.items() if name != "reference"}
            for name in ("default", "fast"):
                t = entry["time"][name]
                print(f"{method} {name}: time vs reference {t['time_ratio_median']:.2f} "
                      f"({t['time_ratio_min']:.2f}-{t['time_ratio_max']:.2f}), speed-up {1 / t['time_ratio_median']:.2f}x", flush=True)
            for name, q in entry["quality"].items():
                print(f"{method} {name}: " + ", ".join(f"{t} {m} {v:.3f}" for t, ms in q.items() for m, v in ms.items()), flush=True)
        report["methods"][method] = entry
        C.write_json(args.out or f"speed_quality_{args.split}{'_sweep' if args.sweep else ''}.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
