"""`editkit eval` and `editkit eval-table`: the shapes benchmark from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editkit.data import parse_tasks
from editkit.data.scene import check_canvas_size
from editkit.loading import DTYPES, default_model, load_pipeline
from editkit.speed import FAST_PRESETS, fast_pipeline

from .adapters import ADAPTERS, CUSTOM, check_method
from .bench import pipeline_editor, run_benchmark, shapes_recorder
from .bench_metrics import Clip, Dino, Lpips
from .datasets import FORMATS, read_rows
from .html_report import write_contact_sheet, write_html
from .harness import DEFAULT_EVAL_STEPS, evaluate, positive_int
from .report import compare_table, describe, format_table, write_results


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "eval", help="score a model on the shapes benchmark, with identity and classical baselines",
        description="Run a method over generated shapes-benchmark samples and print one row per task: the "
                    "headline metric for the model, the identity baseline (output = input) and a classical "
                    "baseline where one exists. All metrics go to the JSON file.",
    )
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: the shipped tiny model)")
    p.add_argument("--method", default="instructcv", help=f"method of the model: {', '.join(sorted(ADAPTERS))} (default: instructcv)")
    p.add_argument("--tasks", default="cv,edit", help="comma-separated families, task names or 'all' (default: cv,edit)")
    p.add_argument("--n", type=int, default=None, help="samples per task (default: 200); with --dataset, the first N rows (default: all)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="benchmark split (default: test)")
    p.add_argument("--heldout-phrasings", action="store_true", help="instructions from the held-out phrasings")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels, 48-512 (default: 64)")
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: {DEFAULT_EVAL_STEPS}, or the --fast preset's)")
    p.add_argument("--fast", action="store_true", help="score the method's speed preset (editkit.speed)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the pipeline's)")
    p.add_argument("--image-guidance", type=float, default=None, help="image guidance scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed; sample i of a task uses seed + i (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per pipeline call (default: 8; with --dataset, rows of one image size)")
    p.add_argument("--out", default=None, help="JSON results file (default: outputs/eval/<method>-<split>.json)")
    p.add_argument("--baselines-only", action="store_true", help="score only the identity and classical baselines")
    p.add_argument("--call-arg", action="append", default=[], metavar="KEY=VALUE", dest="call_args",
                   help="extra keyword for the method's pipeline call, repeatable; VALUE is read as JSON when it "
                        "parses, else as a string (e.g. control_scale=0 for UNIC-Adapter without its condition, "
                        "drop_images=true for Dream Engine's text-only baseline)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b = p.add_argument_group("community benchmarks (instead of the shapes benchmark)")
    b.add_argument("--dataset", default=None, help="a benchmark's folder, `datasets` save_to_disk folder or parquet/arrow file")
    b.add_argument("--format", default="folder", choices=FORMATS, help="the dataset's layout (default: folder = metadata.jsonl)")
    b.add_argument("--dataset-split", default=None, help="split of a `datasets` folder or parquet files (e.g. dev, test)")
    b.add_argument("--multi-turn", action="store_true", help="MagicBrush: edit each session in a chain, score its final turn")
    b.add_argument("--clip", default=None, help="local CLIPModel folder for the CLIP metrics")
    b.add_argument("--dino", default=None, help="local DINO ViT folder (transformers AutoModel) for DINO and structure distance")
    b.add_argument("--lpips", default=None, help="torchvision's SqueezeNet 1.1 weights file (squeezenet1_1-b8a52dc0.pth) for PIE-Bench's LPIPS")
    b.add_argument("--report", default=None, help="write an HTML page (and a PNG contact sheet next to it) of the run, for the shapes benchmark too")
    p.set_defaults(func=cmd_eval)
    t = subparsers.add_parser(
        "eval-table", help="put several `editkit eval` JSON files side by side as a markdown table",
        description="One column per results file (NAME=PATH or PATH), one row per shared task and metric, "
                    "then the first file's identity and classical baselines.",
    )
    t.add_argument("runs", nargs="+", metavar="[NAME=]PATH", help="results JSON files written by `editkit eval`")
    t.add_argument("--metrics", default=None, help="comma-separated metrics (default: each task's headline)")
    t.set_defaults(func=cmd_eval_table)
    return p


def cmd_eval_table(args: argparse.Namespace) -> int:
    runs: dict[str, dict[str, Any]] = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        path, name = (path, name) if sep else (item, Path(item).stem)
        if not Path(path).is_file():
            raise ValueError(f"results file {path!r} does not exist (write it with `editkit eval --out {path}`).")
        runs[name] = json.loads(Path(path).read_text())
    print(compare_table(runs, args.metrics.split(",") if args.metrics else None))
    return 0


def parse_call_args(items: Sequence[str]) -> dict[str, Any]:
    """["control_scale=0", "drop_images=true", "task=canny"] -> {"control_scale": 0, "drop_images": True, "task": "canny"}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"`--call-arg` expects KEY=VALUE with KEY a Python identifier; got {item!r}.")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    method = check_method(args.method)
    if method == CUSTOM:
        raise ValueError("`--method custom` is for Python callables; the command line needs a pipeline method.")
    if args.dataset is not None:
        return cmd_eval_dataset(args, method)
    # Check everything cheap before loading a model.
    parse_tasks(args.tasks)
    args.n = 200 if args.n is None else args.n
    positive_int(args.n, "n")
    check_canvas_size(args.size, "size")
    if args.steps is not None:
        positive_int(args.steps, "steps")
    positive_int(args.batch_size, "batch_size")
    call_args = parse_call_args(args.call_args)
    if call_args and args.baselines_only:
        raise ValueError("`--call-arg` changes the model's run; it does not apply with `--baselines-only`.")
    pipe, model_name = None, None
    if not args.baselines_only:
        pipe = load_pipeline(method, args.model, args.device, args.dtype)  # a clear ModelLoadError if there is none
        model_name = str(args.model if args.model is not None else default_model(method))
    steps = args.steps
    if args.fast and pipe is not None:
        pipe, preset = fast_pipeline(pipe, method)
        steps = steps or preset.pop("num_inference_steps")
        call_args = {**{k: v for k, v in preset.items() if k != "num_inference_steps"}, **call_args}
    steps = steps or DEFAULT_EVAL_STEPS
    out = Path(args.out) if args.out else Path("outputs") / "eval" / f"{method}-{args.split}.json"
    pictures = out.with_suffix("") if args.report and pipe is not None else None
    results = evaluate(pipe, method, args.tasks, args.n, split=args.split, size=args.size, seed=args.seed,
                       heldout=args.heldout_phrasings, steps=steps, guidance=args.guidance,
                       batch_size=args.batch_size, progress=not args.no_progress,
                       image_guidance=args.image_guidance, model_name=model_name, call_args=call_args,
                       on_outputs=shapes_recorder(pictures) if pictures is not None else None)
    if args.fast and pipe is not None:  # the solver is not a call argument: say which preset ran
        results["config"]["speed_preset"] = dict(FAST_PRESETS[method].__dict__)
    print(describe(results))
    print(format_table(results))
    print(f"wrote {write_results(results, out)}", file=sys.stderr)
    if pictures is not None:
        page = write_html(pictures, args.report, f"{method} on the shapes benchmark ({args.split})")
        print(f"wrote {page} and {write_contact_sheet(pictures, Path(args.report).with_suffix('.png'))}", file=sys.stderr)
    return 0


def cmd_eval_dataset(args: argparse.Namespace, method: str) -> int:
    """`editkit eval --dataset PATH --format F`: edit and score a community benchmark, resumably."""
    if args.n is not None:
        positive_int(args.n, "n")
    if args.baselines_only:
        raise ValueError("`--baselines-only` is for the shapes benchmark; with --dataset every row runs the model.")
    positive_int(args.batch_size, "batch_size")
    for flag in ("clip", "dino"):
        folder = getattr(args, flag)
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"--{flag} {folder!r} is not a folder (a local transformers model saved with save_pretrained).")
    if args.lpips is not None and not Path(args.lpips).is_file():
        raise ValueError(f"--lpips {args.lpips!r} is not a file (torchvision's SqueezeNet 1.1 weights, squeezenet1_1-b8a52dc0.pth).")
    rows = read_rows(args.dataset, args.format, args.dataset_split)  # layout errors before any model loads
    device = args.device or "cpu"
    clip = Clip.load(args.clip, device) if args.clip else None
    dino = Dino.load(args.dino, device) if args.dino else None
    lpips = Lpips.load(args.lpips, device) if args.lpips else None
    pipe = load_pipeline(method, args.model, args.device, args.dtype)
    steps = args.steps
    call_args = parse_call_args(args.call_args)
    if args.fast:
        pipe, preset = fast_pipeline(pipe, method)
        steps = steps or preset.pop("num_inference_steps")
        call_args = {**preset, **call_args}
    out = Path(args.out) if args.out else Path("outputs") / "eval" / args.format
    edit = pipeline_editor(pipe, method, steps=steps or DEFAULT_EVAL_STEPS, guidance=args.guidance,
                           image_guidance=args.image_guidance, call_args=call_args)
    summary = run_benchmark(edit, rows, args.format, out, clip=clip, dino=dino, multi_turn=args.multi_turn,
                            seed=args.seed, limit=args.n, progress=not args.no_progress, lpips=lpips,
                            batch_size=args.batch_size)
    print(f"{args.format} ({summary['setting']}): {summary['n_scored']} scored, {summary['n_bad']} skipped")
    for name, value in summary["metrics"].items():
        print(f"  {name:<20} {value:.4f}  (n={summary['n_per_metric'][name]})")
    for name, why in summary["not_computed"].items():
        print(f"  {name:<20} not computed: {why}")
    for bad in summary["bad_rows"][:10]:
        print(f"  skipped {bad['why']}")
    if args.report:
        page = write_html(out, args.report, f"{method} on {args.format} ({summary['setting']})")
        sheet = write_contact_sheet(out, Path(args.report).with_suffix(".png"))
        print(f"wrote {page} and {sheet}", file=sys.stderr)
    print(f"wrote {out / 'summary.json'}", file=sys.stderr)
    return 0
