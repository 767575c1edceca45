"""`editkit data ...` commands.

    editkit data shapes --tasks cv,edit --n 5000 --size 64 --split train --out DIR
    editkit data tasks

`add_data_parser(subparsers)` registers the `data` command on the main CLI's
argparse subparsers; each leaf sets `func(args) -> int`, which raises
ValueError on bad input (the message names the argument). `main(argv)` runs
the same commands standalone: `python -m editkit.data.cli shapes ...`.
"""

from __future__ import annotations

import argparse
import sys
import time

from .families import FAMILIES


def _cmd_shapes(args: argparse.Namespace) -> int:
    from .export import check_out_dir, export
    from .shapes import generate, parse_tasks

    tasks = parse_tasks(args.tasks)
    samples = generate(tasks, args.n, size=args.size, split=args.split, seed=args.seed,
                       heldout=args.heldout_phrasings, start=args.start)  # validates n, size, split
    check_out_dir(args.out, args.overwrite)
    info = {"generator": "editkit.data.shapes", "tasks": tasks, "n": args.n, "size": args.size,
            "split": args.split, "seed": args.seed, "start": args.start, "heldout_phrasings": args.heldout_phrasings}
    t0 = time.perf_counter()
    res = export(samples, args.out, overwrite=args.overwrite, progress=not args.no_progress, total=args.n, info=info)
    dt = time.perf_counter() - t0
    print(f"wrote {res.count} samples ({len(res.tasks)} tasks) to {res.out_dir} in {dt:.1f} s", file=sys.stderr)
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    for fam, tasks in FAMILIES.items():
        print(f"{fam}: {', '.join(tasks)}")
    return 0


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """Register `data` (with `shapes` and `tasks`) on an argparse subparsers object."""
    data = subparsers.add_parser("data", help="procedural datasets (the shapes benchmark)",
                                 description="Procedural datasets with exact ground truth.")
    sub = data.add_subparsers(dest="data_command", metavar="{shapes,tasks}")
    sub.required = True
    fams = ", ".join(FAMILIES)
    p = sub.add_parser(
        "shapes", help="generate a shapes-benchmark folder (PNGs + metadata.jsonl)",
        description="Generate paired samples of the shapes world with exact ground truth and write them as "
                    "PNGs plus metadata.jsonl (loadable with datasets' imagefolder).",
    )
    p.add_argument("--tasks", default="all",
                   help=f"comma-separated families ({fams}), task names, or 'all' (default: all)")
    p.add_argument("--n", type=int, required=True, help="number of samples (tasks are interleaved round-robin)")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels, 48-512 (default: 64)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="split; splits use disjoint seed ranges (default: train)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="extra seed mixed into every sample (default: 0)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample, for sharding (default: 0)")
    p.add_argument("--heldout-phrasings", action="store_true",
                   help="draw instructions from the held-out phrasings (generalisation tests)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_shapes)
    t = sub.add_parser("tasks", help="list task families and tasks")
    t.set_defaults(func=_cmd_tasks)
    return data


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: `main(["shapes", "--n", "10", "--out", "DIR"])` (a leading "data" is accepted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="editkit")
    subs = parser.add_subparsers(dest="command")
    add_data_parser(subs)
    args = parser.parse_args(["data", *argv])
    try:
        return int(args.func(args))
    except ValueError as e:
        print(f"editkit data {args.data_command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
