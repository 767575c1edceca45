"""One GPU check, sized for a short lease: full-size random-initialised backbones.

    python benchmarks/gpu_check.py --out gpu_check.json [--budget 150]
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke.json      # tiny sizes on CPU

Needs torch, diffusers, transformers (accelerate for the offload section); no
editkit install: the script puts this checkout on sys.path and loads
pipelines/instructcv.py by path when `editkit.pipelines` does not import.

Sections, in order, each under its own time cap (a share of --budget) so the
whole run ends inside the budget and the JSON (rewritten after every section)
is always there:

1. `unet`: an SD1.5-geometry UNet with 8 input channels (InstructPix2Pix) at
   512x512 (64x64 latents), batch 3 = the three IP2P guidance branches of one
   image; fp16 and bf16 with SDPA, then xformers if it imports.
2. `sd3`: an SD3-medium-size MM-DiT (24 layers, width 1536) at 1024x1024
   (128x128 latents, 333 text tokens), batch 2 = CFG; with editkit's UNIC adapter
   (its control stream running) when `editkit.modeling.unic_adapter` imports, else
   the plain transformer; the JSON's `backbone` says which.
3. `ip2p`: editkit's InstructCVPipeline vs diffusers'
   StableDiffusionInstructPix2PixPipeline, same full-size fp16 components, 512x512,
   a few steps, interleaved pairs: time and peak-memory ratios.
4. `fast`: the same full-size InstructCV pipeline at its 20-step default against the
   `--fast` preset (editkit.speed) and the preset with DeepCache (interval 2),
   interleaved pairs: time ratios to the default and max abs difference.
5. `offload`: the same edit with model CPU offload: peak GPU memory.
6. `compile`: torch.compile (mode "default") of the UNet, then the MM-DiT, each
   skipped or cut off at its cap; compile time and steps/s after it.
7. `accelerate`: one training step of the trainer through `accelerate launch`
   with the repo's FSDP and DeepSpeed ZeRO-2 configs (configs/accelerate/, one
   process) on the tiny InstructCV recipe: whether each config loads and steps,
   and the tail of its log. `--cpu-smoke` runs the DDP config on CPU instead
   (FSDP and ZeRO need CUDA; DeepSpeed needs `pip install deepspeed`).

A "step" is one backbone forward. Peak memory is torch.cuda.max_memory_allocated
over the timed loop, less what earlier sections left allocated: the model's
weights plus its activations (`weights_mb` says how much the weights are). For
the pipelines (`ip2p`, `offload`) it is the peak of one call including all
pipeline weights that sit on the GPU.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the budget counts from here, imports included

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (also puts the repo root on sys.path)

import torch  # noqa: E402

# share of the budget each section may use at most (compile gets what is left, up to its share)
CAPS = {"unet": 0.16, "sd3": 0.15, "ip2p": 0.15, "fast": 0.10, "offload": 0.06, "compile_unet": 0.22, "compile_sd3": 0.18,
        "accelerate": 0.20}
ACCELERATE_CONFIGS = {"fsdp": "configs/accelerate/fsdp.yaml", "deepspeed_zero2": "configs/accelerate/deepspeed_zero2.yaml"}


class SectionTimeout(Exception):
    pass


class Clock:
    def __init__(self, budget: float):
        self.t0 = _T0
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


@contextlib.contextmanager
def cap(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds` (Python code and
    torch.compile are interrupted; a single long CUDA call finishes first)."""
    if seconds <= 0:
        raise SectionTimeout("no time left")
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise SectionTimeout(f"cut off at its {seconds:.0f} s cap")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Report:
    """The JSON, rewritten after every section; a watchdog writes it and exits if the budget is overrun."""

    def __init__(self, path: Path, budget: float):
        self.path = path
        self.data: dict[str, Any] = {"budget_s": budget, "sections": {}, "complete": False}
        self.lock = threading.Lock()

    def set(self, section: str, value: Any) -> None:
        with self.lock:
            self.data["sections"][section] = value
        self.write()

    def write(self) -> None:
        with self.lock:
            text = json.dumps(self.data, indent=2, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def watchdog(self, after: float) -> None:
        def fire():
            self.data["watchdog"] = f"budget overrun: stopped after {after:.0f} s"
            self.write()
            print(f"gpu_check: watchdog stop after {after:.0f} s; partial results in {self.path}", flush=True)
            os._exit(3)

        t = threading.Timer(after, fire)
        t.daemon = True
        t.start()


# -- measurement -----------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> float:
    """Reset the peak counter; returns the MB already allocated (models kept from earlier sections)."""
    if device != "cuda":
        return 0.0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def peak_mb(device: str, base: float = 0.0) -> float | None:
    """Peak MB since the last reset, less `base` (what other sections left allocated)."""
    return round(torch.cuda.max_memory_allocated() / 2**20 - base, 1) if device == "cuda" else None


def allocated_mb(device: str) -> float | None:
    return torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None


@torch.no_grad()
def time_forward(fn: Callable[[], Any], device: str, warmup: int, iters: int, clock: Clock, min_left: float = 3.0,
                 base: float = 0.0) -> dict[str, Any]:
    """steps/s of `fn` after `warmup` calls; stops early (and says so) when the budget runs low."""
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak(device)
    done, t0 = 0, time.perf_counter()
    while done < iters:
        fn()
        done += 1
        if clock.left() < min_left:
            break
    sync(device)
    dt = time.perf_counter() - t0
    return {"steps": done, "seconds": round(dt, 4), "steps_per_s": round(done / dt, 3), "peak_mb": peak_mb(device, base)}


def attention_switch(model: torch.nn.Module, name: str) -> dict[str, Any]:
    from editkit.attention import set_attention_backend

    return set_attention_backend(model, name)


# -- backbones -----------------------------------------------------------------------

def build_unet(smoke: bool, device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    cfg = dict(C.SD15_UNET)
    if smoke:
        cfg.update(block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, sample_size=8, norm_num_groups=16)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg).to(dtype).eval()
    side = 16 if smoke else 64  # latent side: 128 px (smoke, scale 8) or 512 px
    ctx = cfg["cross_attention_dim"]
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(3, 8, side, side, generator=gen, device=device).to(dtype)
    text = torch.randn(3, 77, ctx, generator=gen, device=device).to(dtype)
    t = torch.full((3,), 500, device=device)
    return unet, (lambda m=unet: m(x, t, encoder_hidden_states=text, return_dict=False)[0]), {"latent": [3, 8, side, side], "text": [3, 77, ctx]}


def build_sd3_backbone(smoke: bool, device: str, dtype: torch.dtype):
    """The SD3-medium-size MM-DiT, with editkit's UNIC adapter (control stream active) when
    `editkit.modeling.unic_adapter` imports, else the plain diffusers transformer."""
    from diffusers import SD3Transformer2DModel

    cfg = dict(C.SD3_MEDIUM)
    side, tokens = 128, 333  # 1024 px / VAE 8; 77 CLIP + 256 T5 tokens
    if smoke:
        cfg.update(num_layers=2, num_attention_heads=4, attention_head_dim=16, joint_attention_dim=64,
                   caption_projection_dim=64, pooled_projection_dim=32, pos_embed_max_size=32, sample_size=16)
        side, tokens = 16, 20
    unic = C.try_import("editkit.modeling.unic_adapter")
    cls = getattr(unic, "UNICSD3Transformer2DModel", None)
    torch.manual_seed(0)
    with torch.device(device):
        model = (cls or SD3Transformer2DModel)(**cfg).to(dtype).eval()
    gen = torch.Generator(device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    x = rand(2, cfg["in_channels"], side, side)
    ctx, pooled = rand(2, tokens, cfg["joint_attention_dim"]), rand(2, cfg["pooled_projection_dim"])
    t = torch.full((2,), 500.0, device=device)
    info = {"latent": [2, cfg["in_channels"], side, side], "text_tokens": tokens}
    if cls is not None:
        # the control stream: condition latents at the target size and the instruction through the text stack
        control = {"control_latents": rand(*x.shape), "instruction_embeds": rand(*ctx.shape), "pooled_instruction_embeds": rand(*pooled.shape)}
        info["backbone"] = "SD3 MM-DiT + UNIC adapter (control stream active, scale 1)"
    else:
        control = {}
        info["backbone"] = "plain SD3 MM-DiT (editkit.modeling.unic_adapter not built)"

    def fn(m=model):
        return m(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t, return_dict=False, **control)[0]

    return model, fn, info


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- sections ------------------------------------------------------------------------

def run_backbone_section(name: str, builder, args, clock: Clock, report: Report, keep: dict) -> None:
    out: dict[str, Any] = {"runs": {}}
    device = args.device
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        model = None
        try:
            base = reset_peak(device)
            model, fn, info = builder(args.smoke, device, dtype)
            out.update(info, params=n_params(model))
            weights = None if device != "cuda" else round(allocated_mb(device) - base, 1)
            out["runs"][f"{dtype_name}/sdpa"] = {"weights_mb": weights, **time_forward(fn, device, args.warmup, args.iters, clock, base=base)}
            if C.try_import("xformers") is not None and device == "cuda":
                try:
                    out["runs"][f"{dtype_name}/xformers"] = {"switch": attention_switch(model, "xformers"),
                                                             **time_forward(fn, device, args.warmup, args.iters, clock, base=base)}
                except SectionTimeout:
                    raise
                except Exception as e:  # a wheel built for another torch/CUDA: report it, keep the other runs
                    out["runs"][f"{dtype_name}/xformers"] = {"error": f"{type(e).__name__}: {e}"[:300]}
                finally:
                    attention_switch(model, "sdpa")
            elif dtype_name == args.dtypes[0]:
                out["xformers"] = "skipped (not importable)" if device == "cuda" else "skipped (CPU)"
            if dtype_name == args.dtypes[0]:
                keep[name] = (model, fn)  # the first dtype is compiled later
        except SectionTimeout as e:
            out["runs"][f"{dtype_name}/stopped"] = str(e)
            break
        except torch.cuda.OutOfMemoryError as e:
            out["runs"][f"{dtype_name}/error"] = f"out of memory: {e}"[:300]
        finally:
            if name not in keep or keep[name][0] is not model:
                del model
            report.set(name, out)
    print_section(name, out)


@torch.no_grad()
def ip2p_section(args, clock: Clock, report: Report, keep: dict) -> None:
    device, dtype = args.device, getattr(torch, args.dtypes[0])
    scale = "tiny" if args.smoke else "full"
    comps = C.ip2p_components(scale, device=device, dtype=dtype)
    ours, ref = C.editkit_ip2p(comps), C.reference_ip2p(comps)
    weights = sum(p.numel() * p.element_size() for m in (comps["unet"], comps["vae"], comps["text_encoder"]) for p in m.parameters()) / 2**20
    size = 64 if args.smoke else 512
    image = C.test_image(size)
    kw = dict(num_inference_steps=args.pipe_steps, guidance_scale=7.5, image_guidance_scale=1.5, output_type="np")

    def run(pipe, extra):
        base = reset_peak(device)
        t0 = time.perf_counter()
        img = pipe("turn it into a painting", image=image, generator=torch.Generator().manual_seed(0), **kw, **extra).images
        sync(device)
        return time.perf_counter() - t0, peak_mb(device, base - weights), img

    out: dict[str, Any] = {"scale": scale, "size": size, "steps": args.pipe_steps, "dtype": args.dtypes[0], "pairs": []}
    try:
        run(ours, {"max_side": None})
        run(ref, {})
        for i in range(args.pairs):
            order = [("editkit", ours, {"max_side": None}), ("diffusers", ref, {})]
            row: dict[str, Any] = {}
            for tag, pipe, extra in order if i % 2 == 0 else order[::-1]:
                row[f"{tag}_s"], row[f"{tag}_peak_mb"], img = run(pipe, extra)
                row[f"{tag}_img"] = img
            row["max_abs_diff"] = float(abs(row.pop("editkit_img") - row.pop("diffusers_img")).max())
            out["pairs"].append(row)
            if clock.left() < 5:
                break
    except SectionTimeout as e:
        out["stopped"] = str(e)
    if out["pairs"]:
        rows = out["pairs"]
        out["editkit_s_median"] = C.median([r["editkit_s"] for r in rows])
        out["diffusers_s_median"] = C.median([r["diffusers_s"] for r in rows])
        out["time_ratio_median"] = C.median([r["editkit_s"] / r["diffusers_s"] for r in rows])
        out["max_abs_diff"] = max(r["max_abs_diff"] for r in rows)
        if device == "cuda":
            out["peak_ratio_median"] = C.median([r["editkit_peak_mb"] / r["diffusers_peak_mb"] for r in rows])
    report.set("ip2p", out)
    keep["ip2p_pipe"] = ours
    print_section("ip2p", out)


@torch.no_grad()
def fast_section(args, clock: Clock, report: Report, keep: dict) -> None:
    """editkit's default (20 steps) against its --fast preset and the preset + DeepCache, same pipeline."""
    import dataclasses

    from editkit.speed import FAST_PRESETS, fast_pipeline

    pipe = keep["ip2p_pipe"]
    size = 64 if args.smoke else 512
    image = C.test_image(size)
    preset = FAST_PRESETS["instructcv"]
    systems = {"fast": fast_pipeline(pipe, "instructcv"),
               "fast_deep_cache2": fast_pipeline(pipe, "instructcv", dataclasses.replace(preset, deep_cache=2))}

    def run(p, kwargs):
        t0 = time.perf_counter()
        img = p("turn it into a painting", image=image, generator=torch.Generator().manual_seed(0), max_side=None,
                output_type="np", **kwargs).images
        sync(args.device)
        return time.perf_counter() - t0, img

    default_kwargs = {"num_inference_steps": 20}
    out: dict[str, Any] = {"size": size, "dtype": args.dtypes[0], "preset": preset.__dict__}
    try:
        for name, (p, kwargs) in systems.items():
            run(p, kwargs)
            run(pipe, default_kwargs)
            ratios, diffs = [], []
            for i in range(args.pairs):
                order = [("fast", p, kwargs), ("default", pipe, default_kwargs)]
                res = {tag: run(q, kw) for tag, q, kw in (order if i % 2 == 0 else order[::-1])}
                (t_fast, img_fast), (t_def, img_def) = res["fast"], res["default"]
                ratios.append(t_fast / t_def)
                diffs.append(float(abs(img_fast - img_def).max()))
            out[name] = {"time_ratio_median": C.median(ratios), "time_ratio_min": min(ratios), "time_ratio_max": max(ratios),
                         "speedup": 1 / C.median(ratios), "max_abs_diff_to_default": max(diffs), "pairs": len(ratios)}
            report.set("fast", out)
    except SectionTimeout as e:
        out["stopped"] = str(e)
    report.set("fast", out)
    print_section("fast", out)


def accelerate_section(args, clock: Clock, report: Report, keep: dict) -> None:
    """One trainer step per accelerate config, each in its own `accelerate launch` process."""
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    configs = {"ddp_cpu": "configs/accelerate/ddp.yaml"} if args.smoke else ACCELERATE_CONFIGS
    out: dict[str, Any] = {}
    for name, config in configs.items():
        if name == "deepspeed_zero2" and C.try_import("deepspeed") is None:
            out[name] = {"skipped": "deepspeed is not installed (pip install deepspeed)"}
            continue
        left = clock.left() - 6
        if left < 20:
            out[name] = {"skipped": f"budget spent ({clock.left():.0f} s left)"}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", "1",
                   *(["--cpu"] if args.smoke else []), "train/train.py", "--config", "configs/train/instructcv_shapes.yaml",
                   f"output_dir={tmp}/run", "train.max_steps=2", "train.batch_size=4", "data.num_samples=32",
                   "data.cache=false", "validation.every=0", "train.ema=false"]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=min(left, CAPS["accelerate"] * args.budget))
                rc, log = done.returncode, (done.stdout + done.stderr)
            except subprocess.TimeoutExpired as e:
                rc, log = "timeout", str(e.stdout or "") + str(e.stderr or "")
            out[name] = {"config": config, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
                         "exported": (Path(tmp) / "run" / "final").is_dir(), "log_tail": log[-1200:]}
        report.set("accelerate", out)
    report.set("accelerate", out)
    print_section("accelerate", {k: {kk: vv for kk, vv in v.items() if kk != "log_tail"} for k, v in out.items()})


@torch.no_grad()
def offload_section(args, clock: Clock, report: Report, keep: dict) -> None:
    device = args.device
    if device != "cuda":
        report.set("offload", {"skipped": "needs CUDA"})
        return
    pipe = keep.pop("ip2p_pipe")
    pipe.to("cpu")
    torch.cuda.empty_cache()
    pipe.enable_model_cpu_offload()
    base = reset_peak(device)
    t0 = time.perf_counter()
    pipe("turn it into a painting", image=C.test_image(512), num_inference_steps=args.pipe_steps, max_side=None,
         generator=torch.Generator().manual_seed(0), output_type="np")
    sync(device)
    out = {"seconds": round(time.perf_counter() - t0, 3), "peak_mb": peak_mb(device, base), "steps": args.pipe_steps}
    pipe.remove_all_hooks()
    report.set("offload", out)
    print_section("offload", out)


def compile_section(name: str, args, clock: Clock, report: Report, keep: dict) -> None:
    if name not in keep:
        report.set(f"compile_{name}", {"skipped": f"no {name} model"})
        return
    model, fn = keep.pop(name)
    out: dict[str, Any] = {"mode": "default", "dtype": args.dtypes[0]}
    try:
        model.compile(mode="default")
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
            fn()  # the first call compiles; the second shows it does not recompile
        sync(args.device)
        out["compile_s"] = round(time.perf_counter() - t0, 2)
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        out.update(time_forward(fn, args.device, 1, args.iters, clock, base=reset_peak(args.device) - weights))
    except SectionTimeout as e:
        out["skipped"] = f"compile {e}"
    except Exception as e:  # a backend without a compiler, a graph break that errors: report, carry on
        if "SectionTimeout" in str(e):  # inductor wraps the alarm in its own error
            out["skipped"] = "compile exceeded its time cap"
        else:
            out["error"] = f"{type(e).__name__}: {e}"[:400]
    report.set(f"compile_{name}", out)
    print_section(f"compile_{name}", out)


def print_section(name: str, out: dict[str, Any]) -> None:
    brief = {k: v for k, v in out.items() if k != "pairs"}
    print(f"[{name}] {json.dumps(brief, default=str)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=C.RESULTS / "gpu_check.json", help="where the JSON goes (always written)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for the whole run, setup included")
    parser.add_argument("--cpu-smoke", "--dry-run", dest="smoke", action="store_true", help="tiny sizes on CPU, to check the script runs")
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float16 bfloat16 (CUDA), float32 (smoke)")
    parser.add_argument("--iters", type=int, default=None, help="timed forwards per measurement (default 10, smoke 2)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None, help="interleaved editkit/diffusers pairs (default 3)")
    parser.add_argument("--pipe-steps", type=int, default=None, help="sampling steps per pipeline call (default 10, smoke 2)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(CAPS))
    args = parser.parse_args(argv)
    wall0 = _T0
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    args.device = "cpu" if args.smoke else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --cpu-smoke to check the script on CPU")
    args.dtypes = args.dtypes or (["float32"] if args.smoke else ["float16", "bfloat16"])
    args.iters = args.iters or (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.pairs = args.pairs or 3
    args.pipe_steps = args.pipe_steps or (2 if args.smoke else 10)

    clock = Clock(args.budget)
    report = Report(args.out, args.budget)
    report.watchdog(max(clock.left() - 1, 5))  # the caps end it earlier; this is the backstop for a call that hangs
    report.data["machine"] = C.machine()
    report.data["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report.write()

    keep: dict[str, Any] = {}
    plan: list[tuple[str, Callable[[], None]]] = [
        ("unet", lambda: run_backbone_section("unet", build_unet, args, clock, report, keep)),
        ("sd3", lambda: run_backbone_section("sd3", build_sd3_backbone, args, clock, report, keep)),
        ("ip2p", lambda: ip2p_section(args, clock, report, keep)),
        ("fast", lambda: fast_section(args, clock, report, keep)),
        ("offload", lambda: offload_section(args, clock, report, keep)),
        ("compile_unet", lambda: compile_section("unet", args, clock, report, keep)),
        ("compile_sd3", lambda: compile_section("sd3", args, clock, report, keep)),
        ("accelerate", lambda: accelerate_section(args, clock, report, keep)),
    ]
    reserve = 4.0  # seconds kept back for the final write
    for name, fn in plan:
        if name in args.skip:
            report.set(name, {"skipped": "--skip"})
            continue
        seconds = min(CAPS[name] * args.budget, clock.left() - reserve)
        if seconds < 3:
            report.set(name, {"skipped": f"budget spent ({clock.left():.0f} s left)"})
            continue
        t0 = time.perf_counter()
        try:
            with cap(seconds):
                fn()
        except SectionTimeout as e:
            report.set(name, {**report.data["sections"].get(name, {}), "stopped": str(e)})
        except Exception as e:
            report.set(name, {**report.data["sections"].get(name, {}), "error": f"{type(e).__name__}: {e}"[:400],
                              "trace": traceback.format_exc()[-1500:]})
            print(f"[{name}] error: {e}", flush=True)
        report.data.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 2)
        if name in ("sd3", "ip2p") and args.device == "cuda":
            torch.cuda.empty_cache()
    report.data["complete"] = True
    report.data["wall_s"] = round(time.perf_counter() - wall0, 2)
    report.write()
    print(f"gpu_check: done in {report.data['wall_s']} s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
