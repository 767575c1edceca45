"""Semantic segmentation codec: the queried class as white on a black canvas."""

from __future__ import annotations

import numpy as np

from ._image import ImageLike, _as_uint8_rgb

EVAL_THRESHOLD = 10  # official evaluation: any visible brightness counts as foreground
DEMO_THRESHOLD = 127  # official demo: plain binary threshold at mid-grey


def encode_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> uint8 (H, W, 3) target: 255 where the mask is set, 0 elsewhere.

    Non-boolean masks are read as "non-zero is foreground".
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[mask != 0] = 255
    return out


def decode_mask(image: ImageLike, threshold: int = EVAL_THRESHOLD) -> np.ndarray:
    """Predicted target -> boolean (H, W) mask.

    Foreground is where the mean over R, G and B exceeds `threshold`. The mean
    (rather than one channel) keeps slightly tinted predictions stable. The
    default 10 matches the official evaluation; pass DEMO_THRESHOLD (127) for
    the stricter demo behaviour.
    """
    if not 0 <= threshold < 255:
        raise ValueError(f"threshold must be in [0, 255), got {threshold}")
    rgb = _as_uint8_rgb(image)
    return rgb.mean(axis=2) > threshold
