"""Monocular depth codec: linear 8-bit grey, 0 to `max_depth` metres (10 m for NYUv2)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._image import ImageLike, _as_uint8_rgb

MAX_DEPTH = 10.0


def encode_depth(depth_m: np.ndarray, max_depth: float = MAX_DEPTH) -> np.ndarray:
    """Depth in metres (H, W) -> uint8 (H, W, 3) grey target, round(clip(d, 0, max) * 255 / max).

    Encoding from float metres avoids the official script's 16-bit-as-8-bit read.
    NaN (missing depth) becomes 0, the same "invalid" value as the dataset uses.
    """
    if max_depth <= 0:
        raise ValueError(f"max_depth must be positive, got {max_depth}")
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth_m must have shape (H, W), got {depth.shape}")
    depth = np.nan_to_num(depth, nan=0.0, posinf=max_depth, neginf=0.0)
    grey = np.rint(np.clip(depth, 0.0, max_depth) * (255.0 / max_depth)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def decode_depth(
    image: ImageLike,
    max_depth: float = MAX_DEPTH,
    channel: Literal["mean", "red"] = "mean",
) -> np.ndarray:
    """Predicted grey target -> float32 (H, W) depth in metres.

    The default averages R, G and B, which is less noisy than one channel when
    the prediction is not perfectly grey; channel="red" reproduces the
    official decoder.
    """
    if max_depth <= 0:
        raise ValueError(f"max_depth must be positive, got {max_depth}")
    rgb = _as_uint8_rgb(image)
    if channel == "mean":
        grey = rgb.astype(np.float32).mean(axis=2)
    elif channel == "red":
        grey = rgb[:, :, 0].astype(np.float32)
    else:
        raise ValueError(f"channel={channel!r} is not valid; valid: ['mean', 'red']")
    return grey * np.float32(max_depth / 255.0)
