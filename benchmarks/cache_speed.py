"""Backbone caches on top of each method's fast preset, measured against the preset alone.

    python benchmarks/cache_speed.py --split val --n 20 [--methods instructcv,promptfix,dream] [--pairs 6] [--no-quality]

Candidates:
    instructcv, promptfix   DeepCache (editkit.deep_cache; SpeedPreset.deep_cache) at intervals 2 and 3
    dream, pixwizard        diffusers' FirstBlockCacheConfig on the transformer at thresholds 0.05-0.2
UNIC-Adapter has no candidate: its blocks return a control stream the block hooks do not carry.

Quality is `editkit eval`'s headline metric and PSNR to the target per task (benchmarks/speed_quality.py's
`quality`); time is wall seconds per image in interleaved pairs against the preset without a cache.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import speed_quality as SQ  # noqa: E402

import torch  # noqa: E402
from diffusers.hooks import FirstBlockCacheConfig  # noqa: E402

from editkit.speed import FAST_PRESETS  # noqa: E402

CANDIDATES: dict[str, list[tuple[str, float]]] = {
    "instructcv": [("deep_cache", 2), ("deep_cache", 3)],
    "promptfix": [("deep_cache", 2)],
    "dream": [("first_block_cache", 0.05), ("first_block_cache", 0.1), ("first_block_cache", 0.2)],
    "pixwizard": [("first_block_cache", 0.05), ("first_block_cache", 0.1), ("first_block_cache", 0.2)],
}


def with_cache(pipe, kind: str, value: float, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` run with diffusers' FirstBlockCache on the transformer, taken off again after (a DeepCache preset
    needs no wrapper: fast_pipeline builds its cached view)."""
    if kind != "first_block_cache":
        return fn

    def run():
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=value))
        try:
            return fn()
        finally:
            pipe.transformer.disable_cache()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = SQ.base_parser(__doc__, list(CANDIDATES), "val", 20)
    parser.add_argument("--no-quality", action="store_true", help="time only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report: dict = {"split": args.split, "n_per_task": args.n, "methods": {}, "machine": C.machine()}
    for method in args.methods.split(","):
        pipe = SQ.shipped(method)
        base = FAST_PRESETS[method]
        base_run = SQ.one_image(pipe, method, base)
        entry: dict = {"preset": base.__dict__, "candidates": []}
        if not args.no_quality:
            entry["preset_quality"] = SQ.quality(pipe, method, SQ.TASKS[method], args.n, args.split, base)
        for kind, value in CANDIDATES[method]:
            preset = dataclasses.replace(base, deep_cache=int(value)) if kind == "deep_cache" else base
            row: dict = {kind: value}
            if not args.no_quality:
                row["quality"] = with_cache(pipe, kind, value, lambda p=preset: SQ.quality(pipe, method, SQ.TASKS[method], args.n, args.split, p))()
            t = C.interleaved_pairs(with_cache(pipe, kind, value, SQ.one_image(pipe, method, preset)), base_run, args.pairs)
            row["time"] = {k: v for k, v in t.items() if k != "pairs"}
            entry["candidates"].append(row)
            print(f"{method} {kind}={value}: time vs preset {t['time_ratio_median']:.2f} ({t['time_ratio_min']:.2f}-"
                  f"{t['time_ratio_max']:.2f})" + (f", quality {row['quality']}" if "quality" in row else ""), flush=True)
        report["methods"][method] = entry
        C.write_json(args.out or f"cache_speed_{args.split}.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
