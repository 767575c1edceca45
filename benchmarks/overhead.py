"""Pipeline overhead: wall time of a pipeline call vs the sum of its backbone forwards.

    python benchmarks/overhead.py                 # InstructCV (and its diffusers reference), tiny and mid
    python benchmarks/overhead.py --scales mid --repeats 3 --threads 1

Forward hooks on the backbone (UNet / transformer) time and count every
forward; the VAE's encode/decode and the text encoder are timed too, so the
call splits into

    total = backbone forwards + VAE + text encoder + glue

where glue is everything else (image resizing, scheduler steps, guidance
arithmetic, callbacks, output conversion). The figure the issue targets is
`(total - backbone) / backbone` on the mid-size model; glue alone is reported
as well, because at one or two steps the VAE is a large share of any pipeline.
Every guidance branch shares one forward per step, so `forwards` must equal
the step count. The diffusers reference runs alongside for comparison.

Also: the cost of PromptFix's High-frequency Guidance Sampling at its default
settings (tiny model), as extra backbone forwards and milliseconds per step,
when editkit.pipelines.promptfix imports. Writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULTS = {"tiny": {"size": 64, "steps": 10}, "mid": {"size": 256, "steps": 2}}


class Timings:
    """Times and counts the forwards of `backbone`, the text encoder and VAE encode/decode of a pipeline."""

    def __init__(self, pipe: Any, backbone_name: str):
        self.pipe = pipe
        self.backbone = getattr(pipe, backbone_name)
        self.seconds: dict[str, float] = {}
        self.forwards = 0
        self.batch_sizes: list[int] = []
        self._handles: list[Any] = []
        self._saved: dict[str, Callable] = {}

    def reset(self) -> None:
        self.seconds = {"backbone": 0.0, "text_encoder": 0.0, "vae": 0.0}
        self.forwards = 0
        self.batch_sizes = []

    def _hook(self, module: Any, key: str, count: bool = False) -> None:
        start: list[float] = []

        def pre(mod, args, kwargs):
            start.append(time.perf_counter())
            if count:
                self.forwards += 1
                x = args[0] if args else next(iter(kwargs.values()))
                self.batch_sizes.append(int(x.shape[0]))

        def post(mod, args, kwargs, out):
            self.seconds[key] += time.perf_counter() - start.pop()

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def _wrap_vae(self, name: str) -> None:
        vae = self.pipe.vae
        original = getattr(vae, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds["vae"] += time.perf_counter() - t0

        self._saved[name] = original
        setattr(vae, name, timed)  # instance attribute shadows the method; removed in __exit__

    def __enter__(self) -> "Timings":
        self.reset()
        self._hook(self.backbone, "backbone", count=True)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            enc = getattr(self.pipe, name, None)
            if enc is not None:
                self._hook(enc, "text_encoder")
        for name in ("encode", "decode"):
            self._wrap_vae(name)
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for name in self._saved:
            delattr(self.pipe.vae, name)


def measure(pipe: Any, run: Callable[[], Any], repeats: int, backbone: str = "unet") -> dict[str, Any]:
    rows = []
    with Timings(pipe, backbone) as tm:
        run()  # warm-up
        for _ in range(repeats):
            tm.reset()
            t0 = time.perf_counter()
            run()
            total = time.perf_counter() - t0
            s = dict(tm.seconds)
            rows.append({"total_s": total, **{f"{k}_s": v for k, v in s.items()},
                         "glue_s": total - sum(s.values()), "forwards": tm.forwards, "batch": tm.batch_sizes[0] if tm.batch_sizes else None})
    med = {k: C.median([r[k] for r in rows]) for k in ("total_s", "backbone_s", "text_encoder_s", "vae_s", "glue_s")}
    return {
        **med,
        "forwards": rows[-1]["forwards"],
        "forward_batch": rows[-1]["batch"],
        "non_backbone_pct_of_backbone": 100 * C.median([(r["total_s"] - r["backbone_s"]) / r["backbone_s"] for r in rows]),
        "glue_pct_of_total": 100 * C.median([r["glue_s"] / r["total_s"] for r in rows]),
        "glue_ms_per_step": None,
        "runs": rows,
    }


def hgs_cost(repeats: int, steps: int = 4, size: int = 64) -> dict[str, Any] | None:
    """PromptFix with HGS at its default settings vs HGS off, tiny model: extra forwards and time per step."""
    import torch

    mod = C.load_pipelines_module("promptfix")
    testing = C.try_import("editkit.testing.promptfix")
    if mod is None or testing is None:
        return None
    pipe = mod.PromptFixPipeline(**testing.tiny_promptfix_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    image = C.test_image(size)
    out: dict[str, Any] = {"pipeline": "PromptFix (tiny)", "size": size, "steps": steps}
    for mode in ("off", "latent"):
        def run(mode=mode):
            return pipe("remove the haze", image=image, auxiliary_prompt="a hazy photo", num_inference_steps=steps, hgs_mode=mode,
                        height=size, width=size, resize_side=None, generator=torch.Generator().manual_seed(0), output_type="np")

        m = measure(pipe, run, repeats)
        out[f"hgs_{mode}"] = {k: m[k] for k in ("total_s", "backbone_s", "vae_s", "glue_s", "forwards")}
    off, on = out["hgs_off"], out["hgs_latent"]
    out["extra_forwards_per_step"] = (on["forwards"] - off["forwards"]) / steps
    out["extra_ms_per_step"] = 1000 * (on["total_s"] - off["total_s"]) / steps
    out["time_ratio_on_off"] = on["total_s"] / off["total_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-hgs", action="store_true", help="skip the PromptFix HGS cost measurement")
    parser.add_argument("--out", default="overhead.json")
    args = parser.parse_args(argv)
    C.pin_malloc()
    C.set_threads(args.threads)
    import torch
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    results = []
    for scale in args.scales:
        size, steps = DEFAULTS[scale]["size"], args.steps or DEFAULTS[scale]["steps"]
        comps = C.ip2p_components(scale, seed=0)
        image = C.test_image(size)
        kw = dict(num_inference_steps=steps, guidance_scale=7.5, image_guidance_scale=1.5, output_type="np")
        pipes = {"editkit InstructCV": (C.editkit_ip2p(comps), {"max_side": None}), "diffusers IP2P": (C.reference_ip2p(comps), {})}
        for name, (pipe, extra) in pipes.items():
            def run(pipe=pipe, extra=extra):
                return pipe("turn it into a painting", image=image, generator=torch.Generator().manual_seed(0), **kw, **extra)

            m = measure(pipe, run, args.repeats)
            m["glue_ms_per_step"] = 1000 * m["glue_s"] / steps
            row = {"pipeline": name, "scale": scale, "size": size, "steps": steps, **m}
            results.append(row)
            print(f"{name:20s} {scale:5s} forwards {m['forwards']} (batch {m['forward_batch']}) for {steps} steps; "
                  f"non-backbone {m['non_backbone_pct_of_backbone']:.1f}% of backbone, glue {m['glue_pct_of_total']:.2f}% of total", flush=True)
        del comps, pipes

    hgs = hgs_cost(args.repeats) if not args.no_hgs else None
    if hgs is not None:
        print(f"\nHGS (PromptFix defaults, tiny, {hgs['steps']} steps): +{hgs['extra_forwards_per_step']:.0f} backbone forwards "
              f"and +{hgs['extra_ms_per_step']:.0f} ms per step; call time x{hgs['time_ratio_on_off']:.2f} vs HGS off", flush=True)
    cols = ["pipeline", "scale", "steps", "forwards", "forward_batch", "total_s", "backbone_s", "vae_s", "text_encoder_s", "glue_s",
            "glue_ms_per_step", "non_backbone_pct_of_backbone", "glue_pct_of_total"]
    print()
    print(C.table(results, cols))
    path = C.write_json(args.out, {"machine": C.machine(), "settings": vars(args), "results": results, "hgs": hgs})
    print(f"\nwrote {path}")
    bad = [r for r in results if r["forwards"] != r["steps"]]
    if bad:
        print(f"ERROR: not one backbone forward per step: {[(r['pipeline'], r['scale'], r['forwards']) for r in bad]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
