"""How every shapes-benchmark task is scored: one `TaskScorer` per task in `SCORERS`.

Each scorer reports all its metrics (kept in the results) and names one headline metric with its
direction, the number the tables show (see `editkit.evaluation` for the list).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from editkit import metrics
from editkit.data import Sample, arrays_from_ground_truth
from editkit.data.families import MARK_OPACITY, MARKERS, TASK_FAMILY
from editkit.data.reader import DEFAULT_MAX_COLOR_DIST
from editkit.metrics import as_rgb
from editkit.tasks import decode_boxes, decode_depth, decode_mask, decode_presence
from editkit.tasks.depth import MAX_DEPTH


def ground_truth_array(sample: Sample, name: str) -> np.ndarray:
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
    return {"miou": metrics.mask_iou(decode_mask(out), ground_truth_array(s, "mask"))}


def _detect_set(outs: list[np.ndarray], samples: list[Sample]) -> dict[str, float]:
    res = metrics.box_metrics([decode_boxes(o) for o in outs], [ground_truth_array(s, "boxes") for s in samples])
    return {"ap50": res["ap50"], "precision": res["precision"], "recall": res["recall"]}


MIN_DEPTH = MAX_DEPTH / 255.0  # one grey level: the nearest depth the encoding can show


def _depth(out: np.ndarray, s: Sample) -> dict[str, float]:
    # Predictions are clipped to one grey level so that black (0 m) pixels count as
    # wrong instead of dropping out of the metric (InstructCV's protocol skips pred <= 0).
    pred = np.maximum(decode_depth(out), MIN_DEPTH)
    return metrics.depth_metrics(pred, ground_truth_array(s, "depth"))


def _classify(out: np.ndarray, s: Sample) -> dict[str, float]:
    q = s.ground_truth["query"]
    said = decode_presence(out, q["positive_color"], q["negative_color"])
    return {"accuracy": float(said == bool(s.ground_truth["present"]))}


def _pixels(region: str | None = None) -> Callable[[np.ndarray, Sample], dict[str, float]]:
    def score(out: np.ndarray, s: Sample) -> dict[str, float]:
        tgt = as_rgb(s.target)
        res = {"psnr": metrics.psnr(out, tgt), "ssim": metrics.ssim(out, tgt)}
        if region is not None:
            res.update(metrics.psnr_in_out(out, tgt, ground_truth_array(s, region)))
        return res

    return score


def _scene(out: np.ndarray, s: Sample) -> dict[str, float]:
    return metrics.scene_scores(out, s.ground_truth)


def _edges(out: np.ndarray, s: Sample) -> dict[str, float]:
    e = metrics.edge_f1(out, as_rgb(s.source))
    return {"edge_f1": e["f1"], "edge_precision": e["precision"], "edge_recall": e["recall"]}


MARK_TOLERANCE = DEFAULT_MAX_COLOR_DIST  # RGB distance to the marker blend that still counts as marked


def _mark(out: np.ndarray, s: Sample) -> dict[str, float]:
    """IoU with the object of the pixels the output highlights: within MARK_TOLERANCE of the
    50 % marker blend of the source and closer to it than to the source (so noise is not a mark)."""
    src = as_rgb(s.source).astype(np.float32)
    o = out.astype(np.float32)
    marker = np.array(MARKERS[s.ground_truth["marker"]], np.float32)
    blend = (1 - MARK_OPACITY) * src + MARK_OPACITY * marker
    to_blend = ((o - blend) ** 2).sum(-1)
    marked = (to_blend <= MARK_TOLERANCE**2) & (to_blend < ((o - src) ** 2).sum(-1))
    return {"mark_iou": metrics.mask_iou(marked, ground_truth_array(s, "mask"))}


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
