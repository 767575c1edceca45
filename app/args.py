"""Command-line arguments of `editkit app` / `python -m editkit.app` (no heavy imports here)."""

from __future__ import annotations

import argparse


def add_app_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="[METHOD=]PATH_OR_ID",
        help="checkpoint for a method: a local diffusers folder or hub id; without METHOD= it is InstructCV's. "
        "Repeat for several methods (e.g. --model instructcv=./m --model promptfix=yeates/PromptFix). "
        "Default: the shipped tiny models.",
    )
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (0: a free port)")
    p.add_argument("--steps", type=int, default=None, help="default denoising steps for every method (default: each method's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, in MB")
    p.add_argument("--max-megapixels", type=float, default=16.0, help="largest accepted image, in megapixels")
    p.add_argument("--queue-size", type=int, default=20, help="requests that may wait; more are refused with a message")
    p.add_argument("--concurrency", type=int, default=1, help="requests that may run on the model at once")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may wait and run before it is stopped (0: no limit)")
    p.add_argument("--cache-dir", default=None, help="where cached example outputs go (default: ~/.cache/editkit/app)")
    p.add_argument("--no-examples-cache", action="store_true", help="do not cache example outputs")
    return p


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m editkit.app", description="The editkit Gradio demo (serves on 127.0.0.1 only).")
    return add_app_arguments(p)
