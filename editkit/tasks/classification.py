"""Classification codec: a uniform canvas in the "present" or "absent" colour."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from ._image import ImageLike, _as_uint8_rgb
from .colors import COLORS, check_color, nearest_indices


def encode_class(
    size: tuple[int, int], present: bool, pos: str = "red", neg: str = "green"
) -> np.ndarray:
    """uint8 (height, width, 3) canvas filled with COLORS[pos] if `present`, else COLORS[neg]."""
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be (height, width) with positive entries, got {size}")
    check_color(pos, "pos")
    check_color(neg, "neg")
    if pos == neg:
        raise ValueError(f"pos and neg must differ, both are {pos!r}")
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = COLORS[pos if present else neg]
    return out


def decode_class(image: ImageLike, candidates: Iterable[str] | None = None) -> str:
    """Name of the colour covering most of the predicted canvas.

    Each pixel votes for its nearest colour (Euclidean RGB) among `candidates`
    (default: all of COLORS) after a 5x5 Gaussian blur, which averages away
    pixel noise before the vote. Ties go to the earlier candidate.
    """
    names = list(COLORS) if candidates is None else [check_color(c, "candidates") for c in candidates]
    if not names:
        raise ValueError("candidates must name at least one colour")
    rgb = cv2.GaussianBlur(_as_uint8_rgb(image), (5, 5), 0)
    votes = np.bincount(nearest_indices(rgb, names), minlength=len(names))
    return names[int(votes.argmax())]


def decode_presence(image: ImageLike, pos: str = "red", neg: str = "green") -> bool:
    """True when the canvas is closer to `pos` than to `neg` (a forced two-way vote)."""
    check_color(pos, "pos")
    check_color(neg, "neg")
    if pos == neg:
        raise ValueError(f"pos and neg must differ, both are {pos!r}")
    return decode_class(image, (pos, neg)) == pos
