"""Trainer throughput on the tiny InstructCV model, with and without latent caching.

    python benchmarks/train_throughput.py [--steps 30] [--batch 16]

Both runs happen in this process, one after the other, on the same config;
the figure that matters is the ratio. Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))

import train as trainer  # noqa: E402


def run(out: Path, steps: int, batch: int, cache: bool) -> dict:
    t0 = time.perf_counter()
    trainer.main(
        [
            f"output_dir={out}",
            "method=instructcv",
            "data.size=64",
            f"data.num_samples={max(4 * batch, 256)}",
            "data.tasks=cv,edit",
            f"data.cache={str(cache).lower()}",
            f"train.max_steps={steps}",
            f"train.batch_size={batch}",
            "checkpoint.every=0",
            "log.tensorboard=false",
            "log.every=1000000",
            "model.tiny.unet_channels=[32,64,64]",
            "model.tiny.unet_layers_per_block=1",
            "model.tiny.text_hidden=64",
            "model.tiny.text_layers=3",
            "model.tiny.vae_channels=[16,32]",
            "model.tiny.vae_mid_attention=false",
            "model.train_text_encoder=true",
        ]
    )
    summary = json.loads((out / "train_summary.json").read_text())
    summary["wall_s_including_setup"] = round(time.perf_counter() - t0, 2)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(Path(tmp) / "plain", args.steps, args.batch, cache=False)
        cached = run(Path(tmp) / "cached", args.steps, args.batch, cache=True)
    result = {
        "steps": args.steps,
        "batch": args.batch,
        "no_cache_samples_per_s": plain["samples_per_s"],
        "cache_samples_per_s": cached["samples_per_s"],
        "speedup": round(cached["samples_per_s"] / plain["samples_per_s"], 2),
        "no_cache_wall_s": plain["wall_s_including_setup"],
        "cache_wall_s_including_encoding": cached["wall_s_including_setup"],
    }
    print(f"{'run':<10} {'samples/s':>10} {'wall s (incl. setup)':>22}")
    print(f"{'no cache':<10} {plain['samples_per_s']:>10.2f} {plain['wall_s_including_setup']:>22.1f}")
    print(f"{'cache':<10} {cached['samples_per_s']:>10.2f} {cached['wall_s_including_setup']:>22.1f}")
    print(f"speedup from caching: {result['speedup']}x")
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
