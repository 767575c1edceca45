"""Baselines that give every model number its context: identity (output = source) and, where one is
honest, a classical method that sees only the source and what the instruction says (`CLASSICAL`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from editkit.data import Sample
from editkit.data.reader import color_labels, read_scene
from editkit.data.scene import BACKGROUND_DEPTH_M, OBJECT_COLORS, OBJECT_DEPTHS_M
from editkit.metrics import as_rgb
from editkit.tasks import encode_boxes, encode_class, encode_depth, encode_mask


def identity(sample: Sample) -> np.ndarray:
    """The identity baseline: output = source."""
    return as_rgb(sample.source)


def _label(sample: Sample) -> tuple[str | None, str]:
    """(colour or None, shape) named by the query label ("red circle" or "circle")."""
    words = sample.ground_truth["query"]["label"].split()
    return (words[0], words[-1]) if len(words) > 1 and words[0] in OBJECT_COLORS else (None, words[-1])


def _label_masks(sample: Sample) -> list[np.ndarray]:
    """Masks of the source's objects matching the label: colour thresholding for "red circle"
    (colours are unique in a scene), the scene reader's shape fit for "circle"."""
    src = as_rgb(sample.source)
    colour, shape = _label(sample)
    if colour is not None:
        m = color_labels(src) == list(OBJECT_COLORS).index(colour)
        return [m] if m.any() else []
    return [d.mask for d in read_scene(src) if d.shape == shape]


def _classical_segment(s: Sample) -> np.ndarray:
    masks = _label_masks(s)
    union = np.logical_or.reduce(masks) if masks else np.zeros(as_rgb(s.source).shape[:2], bool)
    return encode_mask(union)


def _classical_detect(s: Sample) -> np.ndarray:
    boxes = []
    for m in _label_masks(s):
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return encode_boxes(as_rgb(s.source), np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def _classical_depth(s: Sample) -> np.ndarray:
    objects = color_labels(as_rgb(s.source)) >= 0
    depth = np.where(objects, float(np.mean(OBJECT_DEPTHS_M)), BACKGROUND_DEPTH_M)
    return encode_depth(depth)


def _classical_classify(s: Sample) -> np.ndarray:
    src = as_rgb(s.source)
    colour, shape = _label(s)
    present = any(d.shape == shape and (colour is None or d.color == colour) for d in read_scene(src))
    q = s.ground_truth["query"]
    return encode_class(src.shape[:2], present, q["positive_color"], q["negative_color"])


def _median3(s: Sample) -> np.ndarray:
    return cv2.medianBlur(as_rgb(s.source), 3)


def _unsharp(s: Sample) -> np.ndarray:
    src = as_rgb(s.source)
    return cv2.addWeighted(src, 2.0, cv2.GaussianBlur(src, (0, 0), 1.0), -1.0, 0)


def _dark_channel_prior(s: Sample, patch: int = 3, omega: float = 0.95, t_min: float = 0.1) -> np.ndarray:
    """He et al.'s dark-channel dehazing without the transmission refinement, on a small patch
    (the canvases are small): airlight from the brightest pixels, t = 1 - omega * dark(I / A)."""
    src = as_rgb(s.source).astype(np.float32)
    kernel = np.ones((patch, patch), np.uint8)
    airlight = max(float(np.percentile(src.max(axis=2), 99.9)), 1.0)
    t = 1.0 - omega * cv2.erode((src / airlight).min(axis=2), kernel)
    t = np.maximum(t, t_min)[..., None]
    return np.clip(np.rint((src - airlight) / t + airlight), 0, 255).astype(np.uint8)


def _brighten(s: Sample) -> np.ndarray:
    src = as_rgb(s.source).astype(np.float32)
    x = src / max(float(src.max()), 1.0)
    return np.clip(np.rint(255.0 * np.sqrt(x)), 0, 255).astype(np.uint8)


def _inpaint(s: Sample) -> np.ndarray:
    src = as_rgb(s.source)
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
