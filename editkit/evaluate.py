"""Evaluation harness: run a method over shapes-benchmark samples and score every task, with baselines.

    from editkit.evaluate import evaluate, format_table, write_results
    results = evaluate(pipe, "instructcv", "cv,edit", n=200, split="test", steps=20, seed=0)
    print(format_table(results))
    write_results(results, "results.json")

    editkit eval --model DIR --method instructcv --tasks cv,edit --n 200 --split test

What is scored
    Every task has a `TaskScorer` (`SCORERS`): the metrics it reports (all kept
    in the results) and one headline metric with its direction for the table.

    cv           outputs are decoded with the task codecs (`editkit.tasks`):
                 segment  miou (mean over samples of the decoded mask's IoU)
                 detect   ap50, precision, recall (pooled over the samples)
                 depth    rmse (m), absrel, delta1..3 (per image, averaged)
                 classify accuracy of the decoded present/absent answer
    edit, remove_object, control, interleaved
                 edit_success (scene reader: the output holds exactly the
                 target's objects and background), presence, color_accuracy,
                 background; psnr / ssim to the target; psnr_in / psnr_out
                 inside / outside the edited region where one is defined;
                 canny_to_image also edge_f1 (output edges vs the control
                 edges), subject_driven also subject_present. Neither of these
                 two is a headline: returning the input scores 1.0 on both.
    restore      psnr (headline), ssim; psnr_in / psnr_out of the flaw's
                 region (watermark, snow, hole) where there is one
    mark         mark_iou: IoU of the pixels the output highlights (near the
                 50 % marker blend and closer to it than to the source) with
                 the object; psnr, psnr_in / psnr_out of the object

Baselines (so every number has context)
    identity     output = source, for every task.
    classical    a simple hand-written method where one is honest (`CLASSICAL`):
                 it sees only the source image and what the instruction says
                 (the queried label, the two classification colours), never the
                 target or the ground truth. Tasks without one show "-".

Determinism
    Samples are `make_sample(task, split, i, size, seed=data_seed)` for
    i < n, so a task's samples do not depend on which other tasks run. The
    sampler's noise for sample i of a task comes from
    `torch.Generator().manual_seed(seed + i)`, so a sample's output does not
    depend on the batch size or on the other tasks either.

Methods
    A pipeline is driven through an adapter, `ADAPTERS[method](pipe, samples,
    seeds=..., steps=..., guidance=..., image_guidance=...) -> list of images`;
    each method's adapter lives beside its pipeline in `editkit.pipelines`.
    Any other callable
    `fn(instructions, sources, samples) -> images` can be evaluated directly.
    `call_args` go to the adapter as extra keywords, and from there to the
    pipeline call, which makes a method's own ablation a baseline, e.g.
    `{"control_scale": 0}` (UNIC-Adapter without its condition) or
    `{"drop_images": True}` (Dream Engine's text-only prompt).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import metrics
from .data import Sample, arrays_from_ground_truth, make_sample, parse_tasks
from .data.families import MARK_OPACITY, MARKERS, TASK_FAMILY
from .data.reader import DEFAULT_MAX_COLOR_DIST, color_labels, read_scene
from .data.scene import BACKGROUND_DEPTH_M, OBJECT_COLORS, OBJECT_DEPTHS_M, check_canvas_size
from .data.shapes import check_split
from .tasks import decode_boxes, decode_depth, decode_mask, decode_presence, encode_boxes, encode_class, encode_depth, encode_mask
from .tasks.depth import MAX_DEPTH

RESULTS_FORMAT = 1
DEFAULT_EVAL_STEPS = 20

SYSTEMS = ("model", "identity", "classical")

# --------------------------------------------------------------------------- helpers


def _rgb(image: Any) -> np.ndarray:
    return metrics._rgb(image)


def _array(sample: Sample, name: str) -> np.ndarray:
    """A ground-truth array of the sample (rebuilt from its json ground truth if the sample lacks it)."""
    if name not in sample.arrays:
        rebuilt = arrays_from_ground_truth(sample.ground_truth)
        if name not in rebuilt:
            raise ValueError(f"sample of task {sample.task!r} has no ground-truth array {name!r}.")
        sample.arrays[name] = rebuilt[name]
    return sample.arrays[name]


def _mean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


# --------------------------------------------------------------------------- per-task metrics


def _segment(out: np.ndarray, s: Sample) -> dict[str, float]:
    return {"miou": metrics.mask_iou(decode_mask(out), _array(s, "mask"))}


def _detect_set(outs: list[np.ndarray], samples: list[Sample]) -> dict[str, float]:
    res = metrics.box_metrics([decode_boxes(o) for o in outs], [_array(s, "boxes") for s in samples])
    return {"ap50": res["ap50"], "precision": res["precision"], "recall": res["recall"]}


MIN_DEPTH = MAX_DEPTH / 255.0  # one grey level: the nearest depth the encoding can show


def _depth(out: np.ndarray, s: Sample) -> dict[str, float]:
    # Predictions are clipped to one grey level so that black (0 m) pixels count as
    # wrong instead of dropping out of the metric (InstructCV's protocol skips pred <= 0).
    pred = np.maximum(decode_depth(out), MIN_DEPTH)
    return metrics.depth_metrics(pred, _array(s, "depth"))


def _classify(out: np.ndarray, s: Sample) -> dict[str, float]:
    q = s.ground_truth["query"]
    said = decode_presence(out, q["positive_color"], q["negative_color"])
    return {"accuracy": float(said == bool(s.ground_truth["present"]))}


def _pixels(region: str | None = None) -> Callable[[np.ndarray, Sample], dict[str, float]]:
    def score(out: np.ndarray, s: Sample) -> dict[str, float]:
        tgt = _rgb(s.target)
        res = {"psnr": metrics.psnr(out, tgt), "ssim": metrics.ssim(out, tgt)}
        if region is not None:
            res.update(metrics.psnr_in_out(out, tgt, _array(s, region)))
        return res

    return score


def _scene(out: np.ndarray, s: Sample) -> dict[str, float]:
    return metrics.scene_scores(out, s.ground_truth)


def _edges(out: np.ndarray, s: Sample) -> dict[str, float]:
    e = metrics.edge_f1(out, _rgb(s.source))
    return {"edge_f1": e["f1"], "edge_precision": e["precision"], "edge_recall": e["recall"]}


MARK_TOLERANCE = DEFAULT_MAX_COLOR_DIST  # RGB distance to the marker blend that still counts as marked


def _mark(out: np.ndarray, s: Sample) -> dict[str, float]:
    """IoU with the object of the pixels the output highlights: within MARK_TOLERANCE of the
    50 % marker blend of the source and closer to it than to the source (so noise is not a mark)."""
    src = _rgb(s.source).astype(np.float32)
    o = out.astype(np.float32)
    marker = np.array(MARKERS[s.ground_truth["marker"]], np.float32)
    blend = (1 - MARK_OPACITY) * src + MARK_OPACITY * marker
    to_blend = ((o - blend) ** 2).sum(-1)
    marked = (to_blend <= MARK_TOLERANCE**2) & (to_blend < ((o - src) ** 2).sum(-1))
    return {"mark_iou": metrics.mask_iou(marked, _array(s, "mask"))}


def _combine(*parts: Callable[[np.ndarray, Sample], dict[str, float]]) -> Callable[[np.ndarray, Sample], dict[str, float]]:
    def score(out: np.ndarray, s: Sample) -> dict[str, float]:
        res: dict[str, float] = {}
        for p in parts:
            res.update(p(out, s))
        return res

    return score


@dataclass(frozen=True)
class TaskScorer:
    """How one task is scored: `per_sample(output, sample) -> metrics` (averaged over the
    samples, NaN ignored) and/or `per_set(outputs, samples) -> metrics` (pooled, e.g. AP)."""

    headline: str
    higher_is_better: bool
    per_sample: Callable[[np.ndarray, Sample], dict[str, float]] | None = None
    per_set: Callable[[list[np.ndarray], list[Sample]], dict[str, float]] | None = None

    def score(self, outputs: list[np.ndarray], samples: list[Sample]) -> dict[str, float]:
        res: dict[str, float] = {}
        if self.per_sample is not None:
            rows = [self.per_sample(o, s) for o, s in zip(outputs, samples, strict=True)]
            for key in dict.fromkeys(k for r in rows for k in r):
                res[key] = _mean([r[key] for r in rows if key in r])
        if self.per_set is not None:
            res.update(self.per_set(outputs, samples))
        if self.headline not in res:  # pragma: no cover - a registry bug
            raise RuntimeError(f"scorer did not produce its headline metric {self.headline!r}.")
        return res


_EDIT = TaskScorer("edit_success", True, _combine(_scene, _pixels("edit_region")))
_SCENE = TaskScorer("edit_success", True, _combine(_scene, _pixels()))
_RESTORE = TaskScorer("psnr", True, _pixels())
_RESTORE_REGION = TaskScorer("psnr", True, _pixels("flaw_mask"))

SCORERS: dict[str, TaskScorer] = {
    **{t: _EDIT for t in ("recolor", "remove", "add", "move", "resize", "change_background")},
    "segment": TaskScorer("miou", True, _segment),
    "detect": TaskScorer("ap50", True, per_set=_detect_set),
    "depth": TaskScorer("rmse", False, _depth),
    "classify": TaskScorer("accuracy", True, _classify),
    **{t: _RESTORE for t in ("denoise", "deblur", "dehaze", "lowlight", "colorize", "super_resolve")},
    **{t: _RESTORE_REGION for t in ("dewatermark", "desnow", "inpaint")},
    "remove_object": _EDIT,
    # Edge F1 and subject presence stay in the results but are no headline: the identity
    # baseline (the control edge map, the subject's reference image) scores 1.0 on them.
    "canny_to_image": TaskScorer("edit_success", True, _combine(_scene, _edges, _pixels())),
    "depth_to_image": _SCENE,
    "seg_to_image": _SCENE,
    "subject_driven": _SCENE,
    "style_driven": _SCENE,
    "mark": TaskScorer("mark_iou", True, _combine(_mark, _pixels("mask"))),
    "combine": _SCENE,
    "put_on_background": _SCENE,
}
assert set(SCORERS) == set(TASK_FAMILY)

# --------------------------------------------------------------------------- baselines


def identity(sample: Sample) -> np.ndarray:
    """The identity baseline: output = source."""
    return _rgb(sample.source)


def _label(sample: Sample) -> tuple[str | None, str]:
    """(colour or None, shape) named by the query label ("red circle" or "circle")."""
    words = sample.ground_truth["query"]["label"].split()
    return (words[0], words[-1]) if len(words) > 1 and words[0] in OBJECT_COLORS else (None, words[-1])


def _label_masks(sample: Sample) -> list[np.ndarray]:
    """Masks of the source's objects matching the label: colour thresholding for "red circle"
    (colours are unique in a scene), the scene reader's shape fit for "circle"."""
    src = _rgb(sample.source)
    colour, shape = _label(sample)
    if colour is not None:
        m = color_labels(src) == list(OBJECT_COLORS).index(colour)
        return [m] if m.any() else []
    return [d.mask for d in read_scene(src) if d.shape == shape]


def _classical_segment(s: Sample) -> np.ndarray:
    masks = _label_masks(s)
    union = np.logical_or.reduce(masks) if masks else np.zeros(_rgb(s.source).shape[:2], bool)
    return encode_mask(union)


def _classical_detect(s: Sample) -> np.ndarray:
    boxes = []
    for m in _label_masks(s):
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return encode_boxes(_rgb(s.source), np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def _classical_depth(s: Sample) -> np.ndarray:
    objects = color_labels(_rgb(s.source)) >= 0
    depth = np.where(objects, float(np.mean(OBJECT_DEPTHS_M)), BACKGROUND_DEPTH_M)
    return encode_depth(depth)


def _classical_classify(s: Sample) -> np.ndarray:
    src = _rgb(s.source)
    colour, shape = _label(s)
    present = any(d.shape == shape and (colour is None or d.color == colour) for d in read_scene(src))
    q = s.ground_truth["query"]
    return encode_class(src.shape[:2], present, q["positive_color"], q["negative_color"])


def _median3(s: Sample) -> np.ndarray:
    return cv2.medianBlur(_rgb(s.source), 3)


def _unsharp(s: Sample) -> np.ndarray:
    src = _rgb(s.source)
    return cv2.addWeighted(src, 2.0, cv2.GaussianBlur(src, (0, 0), 1.0), -1.0, 0)


def _dark_channel_prior(s: Sample, patch: int = 3, omega: float = 0.95, t_min: float = 0.1) -> np.ndarray:
    """He et al.'s dark-channel dehazing without the transmission refinement, on a small patch
    (the canvases are small): airlight from the brightest pixels, t = 1 - omega * dark(I / A)."""
    src = _rgb(s.source).astype(np.float32)
    kernel = np.ones((patch, patch), np.uint8)
    airlight = max(float(np.percentile(src.max(axis=2), 99.9)), 1.0)
    t = 1.0 - omega * cv2.erode((src / airlight).min(axis=2), kernel)
    t = np.maximum(t, t_min)[..., None]
    return np.clip(np.rint((src - airlight) / t + airlight), 0, 255).astype(np.uint8)


def _brighten(s: Sample) -> np.ndarray:
    src = _rgb(s.source).astype(np.float32)
    x = src / max(float(src.max()), 1.0)
    return np.clip(np.rint(255.0 * np.sqrt(x)), 0, 255).astype(np.uint8)


def _inpaint(s: Sample) -> np.ndarray:
    src = _rgb(s.source)
    hole = (src == 0).all(axis=2).astype(np.uint8)  # the hole is pure black; no scene colour is
    return cv2.inpaint(src, hole, 3, cv2.INPAINT_TELEA) if hole.any() else src


@dataclass(frozen=True)
class Baseline:
    description: str
    run: Callable[[Sample], np.ndarray]


CLASSICAL: dict[str, Baseline] = {
    "segment": Baseline("colour threshold of the named colour (scene-reader shape fit for shape-only labels)", _classical_segment),
    "detect": Baseline("boxes around the colour-thresholded regions (scene-reader shape fit for shape-only labels)", _classical_detect),
    "depth": Baseline(f"figure/ground: object colours at {np.mean(OBJECT_DEPTHS_M):g} m, the rest at {BACKGROUND_DEPTH_M:g} m", _classical_depth),
    "classify": Baseline("scene reader (colour regions + shape templates) says whether the label is present", _classical_classify),
    "denoise": Baseline("3x3 median filter", _median3),
    "desnow": Baseline("3x3 median filter", _median3),
    "deblur": Baseline("unsharp mask (sigma 1, amount 1)", _unsharp),
    "dehaze": Baseline("dark channel prior (3x3 patch, no refinement)", _dark_channel_prior),
    "lowlight": Baseline("normalise by the maximum, then gamma 1/2", _brighten),
    "inpaint": Baseline("OpenCV Telea inpainting of the pure-black hole", _inpaint),
}

# --------------------------------------------------------------------------- methods


def sampling_kwargs(steps: int, guidance: float | None, image_guidance: float | None, **extra: Any) -> dict[str, Any]:
    """An adapter's pipeline kwargs: the steps, and the scales only when given (else the pipeline's defaults)."""
    kw: dict[str, Any] = {"num_inference_steps": steps, **extra}
    if guidance is not None:
        kw["guidance_scale"] = guidance
    if image_guidance is not None:
        kw["image_guidance_scale"] = image_guidance
    return kw


def prompt_and_image(pipe: Any, samples: list[Sample], *, seeds: list[int], steps: int, guidance: float | None,
                     image_guidance: float | None, **call_args: Any) -> list[Any]:
    """The adapter of pipelines called as `pipe(prompt=..., image=...)` (InstructCV, PixWizard)."""
    import torch

    return pipe(
        prompt=[s.instruction for s in samples],
        image=[s.source for s in samples],
        generator=[torch.Generator().manual_seed(k) for k in seeds],
        output_type="pil",
        **sampling_kwargs(steps, guidance, image_guidance, **call_args),
    ).images


def _adapter_in(module: str, name: str) -> Callable[..., list[Any]]:
    """A method's adapter lives beside its pipeline; import it only when that method is evaluated."""

    def adapter(pipe: Any, samples: list[Sample], **kwargs: Any) -> list[Any]:
        return getattr(importlib.import_module(f"editkit.pipelines.{module}"), name)(pipe, samples, **kwargs)

    adapter.__name__ = f"{module}.{name}"
    return adapter


# method -> adapter(pipe, samples, *, seeds, steps, guidance, image_guidance) -> images (one per sample)
ADAPTERS: dict[str, Callable[..., list[Any]]] = {
    "instructcv": prompt_and_image,
    "promptfix": _adapter_in("promptfix", "evaluate_adapter"),
    "pixwizard": prompt_and_image,
    "unic": _adapter_in("unic", "evaluate_adapter"),
    "dream": _adapter_in("dream", "evaluate_adapter"),
}
CUSTOM = "custom"  # a plain callable fn(instructions, sources, samples) -> images


def check_method(method: str) -> str:
    if method in ADAPTERS or method == CUSTOM:
        return method
    raise ValueError(f"`method` must be one of {sorted(ADAPTERS)} (or {CUSTOM!r} for a plain callable); got {method!r}.")


def _is_pipeline(obj: Any) -> bool:
    diffusers = sys.modules.get("diffusers")  # a pipeline object implies diffusers is imported
    return diffusers is not None and isinstance(obj, diffusers.DiffusionPipeline)


def _positive_int(value: Any, name: str) -> int:
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
        a = _rgb(o)
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
) -> dict[str, Any]:
    """Score a method on `n` samples per task of the shapes benchmark, next to the baselines.

    `pipe_or_callable`: a pipeline (driven by `ADAPTERS[method]`), a callable
    `fn(instructions, sources, samples) -> images` (any `method` name from
    ADAPTERS, or "custom"), or None for the baselines alone. Each returned
    image (PIL or HxWx3 array) must have its sample's size. `tasks`: families
    and/or task names ("cv,edit", "all"). `steps` defaults to
    DEFAULT_EVAL_STEPS; `guidance` / `image_guidance` to the pipeline's own.
    `call_args`: extra keywords for the adapter (pipelines only).
    Returns a json-serialisable dict (see `write_results`, `format_table`).
    """
    check_method(method)
    if pipe_or_callable is not None and not callable(pipe_or_callable):
        raise ValueError(f"`pipe_or_callable` must be a pipeline, a callable or None; got {type(pipe_or_callable).__name__}.")
    names = parse_tasks(tasks)
    n = _positive_int(n, "n")
    size = check_canvas_size(size, "size")
    check_split(split)
    batch_size = _positive_int(batch_size, "batch_size")
    steps = DEFAULT_EVAL_STEPS if steps is None else _positive_int(steps, "steps")
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
            elif bar is not None:
                bar.update(n)
            scores["identity"] = scorer.score([identity(s) for s in samples], samples)
            classical = CLASSICAL.get(task)
            if classical is not None:
                scores["classical"] = scorer.score([_rgb(classical.run(s)) for s in samples], samples)
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
    return _jsonable(results)


def _jsonable(obj: Any) -> Any:
    """Plain json types; NaN and infinities become None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write `evaluate`'s results as json (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------- table


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    v = float(v)
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def format_table(results: dict[str, Any]) -> str:
    """One row per task: task | n | metric (headline, with its direction) | model | identity | classical."""
    header = ("task", "n", "metric", "model", "identity", "classical")
    rows = []
    for task, r in results["tasks"].items():
        head = r["headline"]
        metric = f"{head} {'↑' if r['higher_is_better'] else '↓'}"
        vals = [_fmt(r["scores"].get(system, {}).get(head)) if system in r["scores"] else "-" for system in SYSTEMS]
        rows.append((task, str(r["n"]), metric, *vals))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def compare_table(runs: dict[str, dict[str, Any]], metrics: Sequence[str] | None = None, *, baselines: bool = True) -> str:
    """Markdown table of several `evaluate` results side by side (a model and its ablations, or two methods).

    `runs`: column name -> results. One row per (task, metric) for the tasks every run has; `metrics`
    default to each task's headline. The identity and classical baselines of the first run are appended
    as columns when `baselines`."""
    if not runs:
        raise ValueError("`runs` is empty: give at least one results dict.")
    names = list(runs)
    tasks = [t for t in runs[names[0]]["tasks"] if all(t in r["tasks"] for r in runs.values())]
    base = [b for b in ("identity", "classical") if baselines]
    lines = ["| task | metric | " + " | ".join(names + base) + " |", "|---|---|" + "---:|" * (len(names) + len(base))]
    for task in tasks:
        first = runs[names[0]]["tasks"][task]
        for metric in metrics or [first["headline"]]:
            cells = [_fmt(r["tasks"][task]["scores"].get("model", {}).get(metric)) for r in runs.values()]
            cells += [_fmt(first["scores"].get(b, {}).get(metric)) for b in base]
            if all(c == "-" for c in cells):
                continue  # a metric this task does not report
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(results: dict[str, Any]) -> str:
    """One line naming what was evaluated."""
    c = results["config"]
    parts = ["baselines only" if c.get("baselines_only") else f"method {c['method']}"]
    if c.get("model"):
        parts.append(f"model {c['model']}")
    parts += [f"split {c['split']}", f"n {c['n']}/task", f"size {c['size']}"]
    if not c.get("baselines_only"):
        parts += [f"steps {c['steps']}", f"seed {c['seed']}"]
        parts += [f"{k}={v}" for k, v in (c.get("call_args") or {}).items()]
    if c.get("heldout_phrasings"):
        parts.append("held-out phrasings")
    return " | ".join(parts)


# --------------------------------------------------------------------------- command line


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
    p.add_argument("--n", type=int, default=200, help="samples per task (default: 200)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="benchmark split (default: test)")
    p.add_argument("--heldout-phrasings", action="store_true", help="instructions from the held-out phrasings")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels, 48-512 (default: 64)")
    p.add_argument("--steps", type=int, default=DEFAULT_EVAL_STEPS, help=f"denoising steps (default: {DEFAULT_EVAL_STEPS})")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the pipeline's)")
    p.add_argument("--image-guidance", type=float, default=None, help="image guidance scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed; sample i of a task uses seed + i (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per pipeline call (default: 8)")
    p.add_argument("--out", default=None, help="JSON results file (default: outputs/eval/<method>-<split>.json)")
    p.add_argument("--baselines-only", action="store_true", help="score only the identity and classical baselines")
    p.add_argument("--call-arg", action="append", default=[], metavar="KEY=VALUE", dest="call_args",
                   help="extra keyword for the method's pipeline call, repeatable; VALUE is read as JSON when it "
                        "parses, else as a string (e.g. control_scale=0 for UNIC-Adapter without its condition, "
                        "drop_images=true for Dream Engine's text-only baseline)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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
    # Check everything cheap before loading a model.
    parse_tasks(args.tasks)
    _positive_int(args.n, "n")
    check_canvas_size(args.size, "size")
    _positive_int(args.steps, "steps")
    _positive_int(args.batch_size, "batch_size")
    call_args = parse_call_args(args.call_args)
    if call_args and args.baselines_only:
        raise ValueError("`--call-arg` changes the model's run; it does not apply with `--baselines-only`.")
    pipe, model_name = None, None
    if not args.baselines_only:
        from .cli import _load_pipeline, default_model

        pipe = _load_pipeline(args.model, args.device, args.dtype, method)  # exits with a clear message if no model
        model_name = str(args.model if args.model is not None else default_model(method))
    results = evaluate(pipe, method, args.tasks, args.n, split=args.split, size=args.size, seed=args.seed,
                       heldout=args.heldout_phrasings, steps=args.steps, guidance=args.guidance,
                       batch_size=args.batch_size, progress=not args.no_progress,
                       image_guidance=args.image_guidance, model_name=model_name, call_args=call_args)
    out = Path(args.out) if args.out else Path("outputs") / "eval" / f"{method}-{args.split}.json"
    print(describe(results))
    print(format_table(results))
    print(f"wrote {write_results(results, out)}", file=sys.stderr)
    return 0
