"""The `editkit` command line.

    editkit edit IMAGE "instruction" -o OUT [--method instructcv|promptfix|pixwizard|unic|dream] [--model PATH_OR_ID] [--steps ...]
    editkit task segment|detect|depth|classify IMAGE [--label dog]
    editkit data shapes --tasks cv,edit --n 5000 --size 64 --split train --out DIR
    editkit eval --model DIR --method instructcv --tasks cv,edit --n 200 --split test [--heldout-phrasings]
    editkit app [--model PATH_OR_ID | --model METHOD=PATH_OR_ID] [--port 7860]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np

from . import tasks
from .loading import DTYPES, METHODS, default_model, load_pipeline

def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="instructcv", choices=METHODS, help="which pipeline (default: instructcv)")
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: the method's shipped tiny model)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the method's)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the method's)")
    p.add_argument("--image-guidance", type=float, default=None, help="image guidance scale (default: the method's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=None, help="bound on the working resolution's long side")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--fast", action="store_true",
                   help="the method's speed preset (editkit.speed: fewer steps, a guidance interval, a multistep "
                        "solver; docs/performance.md); --steps still overrides its step count")


def load_for_run(args: argparse.Namespace, method: str, kwargs: dict):
    """The pipeline for a CLI run, with the speed preset applied under --fast (explicit flags win)."""
    from .speed import fast_pipeline

    pipe = load_pipeline(method, args.model, args.device, args.dtype)
    if getattr(args, "fast", False):
        pipe, preset = fast_pipeline(pipe, method)
        kwargs.update({k: v for k, v in preset.items() if k not in kwargs})
    return pipe


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    """The sampling options the user gave, checked (editkit.validation) before any model loads.

    An option the chosen method's pipeline does not take is an error, not silently dropped."""

    import torch

    from editkit.pipelines import pipeline_class

    from .validation import check_int, check_number

    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance,
             "image_guidance_scale": args.image_guidance, "max_side": args.max_side}
    flags = {"num_inference_steps": "--steps", "guidance_scale": "--guidance",
             "image_guidance_scale": "--image-guidance", "max_side": "--max-side"}
    if args.steps is not None:
        check_int(args.steps, "--steps", 1, 10_000)
    if args.guidance is not None:
        check_number(args.guidance, "--guidance")
    if args.image_guidance is not None:
        check_number(args.image_guidance, "--image-guidance")
    if args.max_side is not None:
        check_int(args.max_side, "--max-side", 8)
    check_int(args.seed, "--seed", 0, 2**63 - 1)
    accepted = inspect.signature(pipeline_class(args.method).__call__).parameters
    kw = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"`{flags[name]}` does not apply to --method {args.method}.")
        kw[name] = value
    kw["generator"] = torch.Generator().manual_seed(args.seed)
    return kw


def run_plan(pipe, kwargs: dict) -> str:
    """What a run will use, said before it starts (a large working size is why a CPU run is slow)."""
    params = inspect.signature(pipe.__call__).parameters
    steps = kwargs.get("num_inference_steps", params["num_inference_steps"].default)
    side = kwargs.get("max_side", params["max_side"].default if "max_side" in params else None)
    if isinstance(side, int):
        return f"{steps} steps · working size: long side at most {side} px"
    # "auto" / None: the size the model records (PromptFix's resize_side, PixWizard's bucket centre, ...)
    side = getattr(pipe.config, "resize_side", None) or pipe.trained_side
    return f"{steps} steps · working size: about {side} px (the model's)" if isinstance(side, int) else f"{steps} steps"


def cmd_edit(args: argparse.Namespace) -> int:
    from .conditioning import EditRequest

    request = EditRequest(args.instruction, image=args.image, mask=args.mask).validated()
    kwargs = _sampling_kwargs(args)
    pipe = load_for_run(args, args.method, kwargs)
    print(f"model {args.model or default_model(args.method)} · {run_plan(pipe, kwargs)}", file=sys.stderr)
    out = pipe.edit(request, **kwargs).images[0]
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out.save(out_path)
    print(f"wrote {out_path} ({out.size[0]}x{out.size[1]})")
    return 0


def _write_task_result(result, stem: str, out_dir: Path, pos: str) -> list[Path]:
    """Write the raw output and the decoded answer: PNG mask, JSON boxes, 16-bit depth PNG (mm) or JSON label."""
    import PIL.Image

    raw = out_dir / f"{stem}.output.png"
    result.image.save(raw)
    value = result.value
    if result.task == "segment":
        path = out_dir / f"{stem}.mask.png"
        PIL.Image.fromarray(np.asarray(value, dtype=np.uint8) * 255).save(path)
    elif result.task == "detect":
        path = out_dir / f"{stem}.boxes.json"
        path.write_text(json.dumps({"prompt": result.prompt, "boxes_xyxy": np.asarray(value).round(2).tolist()}, indent=1))
    elif result.task == "depth":
        path = out_dir / f"{stem}.depth.png"
        mm = np.clip(np.asarray(value, dtype=np.float64) * 1000.0, 0, 65535).round().astype(np.uint16)
        PIL.Image.fromarray(mm).save(path)
    else:
        path = out_dir / f"{stem}.label.json"
        path.write_text(json.dumps({"prompt": result.prompt, "colour": value, "present": value == pos}, indent=1))
    return [raw, path]


def cmd_task(args: argparse.Namespace) -> int:
    from .images import load_image
    from .validation import check_text

    codec = tasks.get_task(args.task)
    if codec.needs_label and not args.label:
        raise SystemExit(f"error: `editkit task {codec.name}` needs --label (the class to look for).")
    if args.label is not None:
        check_text(args.label, "--label", max_chars=200)
    image_path = Path(args.image)
    image = load_image(image_path)
    if args.method != "instructcv":
        raise SystemExit("error: `editkit task` decodes InstructCV's output encodings; use --method instructcv.")
    kwargs = _sampling_kwargs(args)
    pipe = load_for_run(args, "instructcv", kwargs)
    result = pipe.run_task(codec.name, image, args.label, pos=args.pos, neg=args.neg, **kwargs)
    slug = "".join(c if c.isalnum() else "_" for c in (args.label or ""))
    stem = f"{image_path.stem}.{codec.name}" + (f"-{slug}" if slug else "")
    out_dir = Path(args.out_dir) if args.out_dir else image_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in _write_task_result(result, stem, out_dir, args.pos):
        print(f"wrote {path}")
    if codec.name == "classify":
        print(f"answer: {result.value} ({'present' if result.value == args.pos else 'absent'})")
    elif codec.name == "detect":
        print(f"boxes: {len(result.value)}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from .app.__main__ import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editkit", description="Instruction-driven image editing with diffusers pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", help="edit an image following an instruction")
    p.add_argument("image", help="input image file")
    p.add_argument("instruction", help='what to do, e.g. "make it snowy"')
    p.add_argument("-o", "--output", required=True, help="output image file")
    p.add_argument("--mask", default=None, help="optional mask image (white = may change)")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("task", help="run a vision task and write the decoded answer beside the image")
    p.add_argument("task", choices=sorted(tasks.TASKS), help="which task")
    p.add_argument("image", help="input image file")
    p.add_argument("--label", default=None, help="class to segment/detect/classify")
    p.add_argument("--pos", default="red", help="classify: colour shown when the class is present")
    p.add_argument("--neg", default="green", help="classify: colour shown when it is absent")
    p.add_argument("--out-dir", default=None, help="where to write results (default: beside the image)")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_task)

    try:
        from .app.args import add_app_arguments
    except ImportError:  # installs without the app package
        add_app_arguments = None
    if add_app_arguments is not None:
        p = sub.add_parser("app", help="launch the Gradio demo on 127.0.0.1 (needs the `app` extra)")
        add_app_arguments(p)
        p.set_defaults(func=cmd_app)

    from .data.cli import add_data_parser

    add_data_parser(sub)

    from .evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # editkit.numerics.NonFiniteError: fp16 overflow while sampling
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
