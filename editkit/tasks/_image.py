"""Input normalisation shared by the task decoders."""

from __future__ import annotations

from typing import Union

import numpy as np
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray]

# Pipelines return floats clamped to [0, 1]; allow rounding slack from resizing, nothing more.
_FLOAT_SLACK = 1e-3


def _as_uint8_rgb(image: ImageLike) -> np.ndarray:
    """Return `image` as a C-contiguous uint8 array of shape (H, W, 3).

    Accepts a PIL image (any mode, converted to RGB), a uint8 (H, W, 3) array,
    or a floating (H, W, 3) array with values in [0, 1]. uint8 arrays are
    returned without copying, so callers must not write into the result.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a PIL.Image.Image or a numpy array, got {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image array must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError("float image contains NaN or infinity")
        lo, hi = float(image.min()), float(image.max())
        if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
            raise ValueError(f"float image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(f"image array must be uint8 or floating in [0, 1], got dtype {image.dtype}")
