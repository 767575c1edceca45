"""The shapes-benchmark harness: run a method over generated samples and score every task next to the
baselines (`evaluate`). Deterministic: sample i of a task is `make_sample(task, split, i, size,
seed=data_seed)` and its sampler noise comes from `torch.Generator().manual_seed(seed + i)`, so a
sample's output depends neither on the batch size nor on the other tasks."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from editkit.data import Sample, make_sample, parse_tasks
from editkit.data.families import TASK_FAMILY
from editkit.data.scene import check_canvas_size
from editkit.data.shapes import check_split
from editkit.metrics import as_rgb

from .adapters import ADAPTERS, CUSTOM, check_method
from .baselines import CLASSICAL, identity
from .report import jsonable
from .scoring import SCORERS

RESULTS_FORMAT = 1
DEFAULT_EVAL_STEPS = 20


def _is_pipeline(obj: Any) -> bool:
    diffusers = sys.modules.get("diffusers")  # a pipeline object implies diffusers is imported
    return diffusers is not None and isinstance(obj, diffusers.DiffusionPipeline)


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _batches(samples: list[Sample], batch_size: int) -> Iterable[tuple[int, list[Sample]]]:
    """Consecutive runs of at most `batch_size` samples whose sources share one size."""
    i = 0
    while i < len(samples):
        j = i + 1
        while j < len(samples) and j - i < batch_size and samples[j].source.size == samples[i].source.size:
            j += 1
        yield i, samples[i:j]
        i = j


def _check_outputs(outs: Any, batch: list[Sample], who: str) -> list[np.ndarray]:
    outs = list(outs)
    if len(outs) != len(batch):
        raise ValueError(f"{who} returned {len(outs)} images for {len(batch)} samples.")
    res = []
    for o, s in zip(outs, batch):
        a = as_rgb(o)
        want = (s.target.size[1], s.target.size[0])
        if a.shape[:2] != want:
            raise ValueError(f"{who} returned an image of size {a.shape[1]}x{a.shape[0]} for a "
                             f"{want[1]}x{want[0]} {s.task} sample; outputs must have the target's size.")
        res.append(a)
    return res


# --------------------------------------------------------------------------- evaluate


def evaluate(
    pipe_or_callable: Any,
    method: str,
    tasks: str | Iterable[str],
    n: int,
    split: str = "test",
    size: int = 64,
    seed: int = 0,
    heldout: bool = False,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
    *,
    image_guidance: float | None = None,
    data_seed: int = 0,
    model_name: str | None = None,
    call_args: dict[str, Any] | None = None,
    on_outputs: Callable[[str, list[Sample], list[np.ndarray]], None] | None = None,
) -> dict[str, Any]:
    """Score a method on `n` samples per task of the shapes benchmark, next to the baselines.

    `pipe_or_callable`: a pipeline (driven by `ADAPTERS[method]`), a callable
    `fn(instructions, sources, samples) -> images` (any `method` name from
    ADAPTERS, or "custom"), or None for the baselines alone. Each returned
    image (PIL or HxWx3 array) must have its sample's size. `tasks`: families
    and/or task names ("cv,edit", "all"). `steps` defaults to
    DEFAULT_EVAL_STEPS; `guidance` / `image_guidance` to the pipeline's own.
    `call_args`: extra keywords for the adapter (pipelines only).
    `on_outputs(task, samples, outputs)`: called with each task's model outputs (e.g. to keep a picture).
    Returns a json-serialisable dict (see `write_results`, `format_table`).
    """
    check_method(method)
    if pipe_or_callable is not None and not callable(pipe_or_callable):
        raise ValueError(f"`pipe_or_callable` must be a pipeline, a callable or None; got {type(pipe_or_callable).__name__}.")
    names = parse_tasks(tasks)
    n = positive_int(n, "n")
    size = check_canvas_size(size, "size")
    check_split(split)
    batch_size = positive_int(batch_size, "batch_size")
    steps = DEFAULT_EVAL_STEPS if steps is None else positive_int(steps, "steps")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer; got {seed!r}.")
    seed = int(seed)
    call_args = dict(call_args or {})
    if call_args and not _is_pipeline(pipe_or_callable):
        raise ValueError(f"`call_args` {sorted(call_args)} apply to a pipeline's adapter; got {type(pipe_or_callable).__name__}.")

    call: Callable[[list[Sample], int], list[Any]] | None = None
    restore_bar: dict | None = None
    if pipe_or_callable is not None:
        if _is_pipeline(pipe_or_callable):
            if method == CUSTOM:
                raise ValueError(f"a pipeline needs its method's adapter; pass one of {sorted(ADAPTERS)} as `method`.")
            adapter, pipe = ADAPTERS[method], pipe_or_callable
            restore_bar = dict(getattr(pipe, "_progress_bar_config", {}))
            pipe.set_progress_bar_config(disable=True)

            def call(batch: list[Sample], first: int) -> list[Any]:
                return adapter(pipe, batch, seeds=[seed + first + k for k in range(len(batch))], steps=steps,
                               guidance=guidance, image_guidance=image_guidance, **call_args)
        else:
            fn = pipe_or_callable

            def call(batch: list[Sample], first: int) -> list[Any]:
                return fn([s.instruction for s in batch], [s.source for s in batch], batch)

    config = {
        "method": method, "model": model_name, "tasks": names, "n": n, "split": split, "size": size,
        "seed": seed, "data_seed": int(data_seed), "heldout_phrasings": bool(heldout),
        "steps": steps if call is not None else None, "guidance": guidance, "image_guidance": image_guidance,
        "baselines_only": call is None, "call_args": call_args,
    }
    results: dict[str, Any] = {"format": RESULTS_FORMAT, "config": config, "tasks": {}}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(names), desc=f"eval {method if call is not None else 'baselines'}", unit="sample",
                   file=sys.stderr)
    try:
        for task in names:
            samples = [make_sample(task, split, i, size, seed=int(data_seed), heldout=heldout) for i in range(n)]
            scorer = SCORERS[task]
            scores: dict[str, dict[str, float]] = {}
            if call is not None:
                outs: list[np.ndarray] = []
                for first, batch in _batches(samples, batch_size):
                    outs += _check_outputs(call(batch, first), batch, f"method {method!r}")
                    if bar is not None:
                        bar.update(len(batch))
                scores["model"] = scorer.score(outs, samples)
                if on_outputs is not None:
                    on_outputs(task, samples, outs)
            elif bar is not None:
                bar.update(n)
            scores["identity"] = scorer.score([identity(s) for s in samples], samples)
            classical = CLASSICAL.get(task)
            if classical is not None:
                scores["classical"] = scorer.score([as_rgb(classical.run(s)) for s in samples], samples)
            results["tasks"][task] = {
                "family": TASK_FAMILY[task],
                "n": n,
                "headline": scorer.headline,
                "higher_is_better": scorer.higher_is_better,
                "classical": None if classical is None else classical.description,
                "scores": scores,
            }
    finally:
        if bar is not None:
            bar.close()
        if restore_bar is not None:
            pipe_or_callable._progress_bar_config = restore_bar
    return jsonable(results)


