"""`python -m editkit.app` (the same as `editkit app`)."""

from __future__ import annotations

import argparse
import sys


def config_from_args(args: argparse.Namespace):
    from .engine import AppConfig
    from .methods import default_sources, parse_model_args

    try:
        overrides = parse_model_args(args.model)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-megapixels", args.max_megapixels), ("--queue-size", args.queue_size), ("--concurrency", args.concurrency)):
        if not value > 0:
            raise SystemExit(f"error: {flag} must be positive, got {value}.")
    if args.timeout < 0:
        raise SystemExit(f"error: --timeout must be >= 0 seconds (0: no limit), got {args.timeout}.")
    return AppConfig(
        sources=default_sources(overrides),
        device=args.device,
        dtype=args.dtype,
        max_pixels=int(args.max_megapixels * 1e6),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        steps=args.steps,
        request_timeout_s=args.timeout or None,
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        from .ui import launch
    except ImportError as err:
        raise SystemExit(f"error: the app needs Gradio ({err}); install it with `pip install 'editkit[app]'`.") from None
    from .engine import Engine

    engine = Engine(config_from_args(args))
    for d in engine.describe():
        print(f"  {'ok ' if d['available'] else ' - '} {d['status']}")
    if not engine.available_methods():
        print("warning: no method has a checkpoint; the app will say so. Pass --model PATH.", file=sys.stderr)
    launch(
        engine,
        port=args.port,
        queue_size=args.queue_size,
        concurrency=args.concurrency,
        cache_examples=not args.no_examples_cache,
        cache_dir=args.cache_dir,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from .args import build_arg_parser

    return run_from_args(build_arg_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
