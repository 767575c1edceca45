"""torch.compile on the CPU: compile time and steady-state time ratio (compiled / eager) for one UNet
(InstructCV's) and one DiT (UNIC-Adapter's MM-DiT), on the shipped tiny models, whole pipeline calls.

    python benchmarks/compile_cpu.py [--steps 10] [--pairs 6]

The backbone is compiled with `torch.compile(backbone)` (inductor, default mode); the first call after it
is timed separately (compile + run); then eager and compiled calls alternate in pairs (`interleaved_pairs`).
Outputs are compared too: compiling must not change them beyond float reordering.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from editkit.loading import default_model, load_pipeline  # noqa: E402

CASES = {"instructcv": "unet", "unic": "transformer"}


def call(pipe, method: str, steps: int):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    kw = {"prompt": "make it red", "image": image} if method == "instructcv" else \
        {"prompt": "a red circle", "image": image, "task": "canny"}
    return lambda: pipe(**kw, num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(0)).images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report: dict = {"steps": args.steps, "methods": {}, "machine": C.machine()}
    for method, attr in CASES.items():
        eager = load_pipeline(method, str(default_model(method)), "cpu", "fp32")
        compiled = load_pipeline(method, str(default_model(method)), "cpu", "fp32")
        for p in (eager, compiled):
            p.set_progress_bar_config(disable=True)
        setattr(compiled, attr, torch.compile(getattr(compiled, attr)))
        run_eager, run_compiled = call(eager, method, args.steps), call(compiled, method, args.steps)
        ref = run_eager()
        t0 = time.perf_counter()
        out = run_compiled()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_eager()
        eager_s = time.perf_counter() - t0
        timing = C.interleaved_pairs(run_compiled, run_eager, args.pairs)
        entry = {"backbone": attr, "first_call_s": first, "eager_call_s": eager_s,
                 "compile_overhead_s": first - eager_s, "max_abs_diff": float(np.abs(out - ref).max()),
                 "time_ratio_median": timing["time_ratio_median"], "time_ratio_min": timing["time_ratio_min"],
                 "time_ratio_max": timing["time_ratio_max"], "pairs": timing["pairs"]}
        report["methods"][method] = entry
        print(f"{method} ({attr}): first compiled call {first:.1f} s (eager {eager_s:.2f} s); steady-state compiled/eager "
              f"{entry['time_ratio_median']:.2f} ({entry['time_ratio_min']:.2f}-{entry['time_ratio_max']:.2f}); "
              f"max |diff| {entry['max_abs_diff']:.2e}", flush=True)
    C.write_json("compile_cpu.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
