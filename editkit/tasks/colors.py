"""The colour vocabulary of the classification task.

InstructCV's builders disagree about colours: some pass RGB tuples, others pass
names that PIL resolves with the CSS table (so "orange" becomes (255, 165, 0)).
This one explicit table is used for both encoding and decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
    "brown": (165, 42, 42),
    "gold": (255, 215, 0),
    "beige": (245, 245, 220),
    "violet": (238, 130, 238),
    "orange": (255, 128, 0),
    "maroon": (128, 0, 0),
    "indigo": (75, 0, 130),
    "aqua": (0, 255, 255),
    "coral": (255, 127, 80),
    "rosybrown": (188, 143, 143),
    "peru": (205, 133, 63),
    "black": (0, 0, 0),
}


def check_color(name: str, argument: str) -> str:
    """Return `name` if it is in COLORS, else raise ValueError naming `argument`."""
    if name not in COLORS:
        raise ValueError(f"{argument}={name!r} is not a known colour; valid: {sorted(COLORS)}")
    return name


def nearest_indices(pixels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Index into `names` of the nearest colour (Euclidean RGB) for each row of (N, 3) `pixels`."""
    palette = np.array([COLORS[n] for n in names], dtype=np.float32)
    px = pixels.reshape(-1, 3).astype(np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every c, so skip it
    # and avoid materialising an (N, K, 3) difference tensor.
    scores = (palette**2).sum(axis=1)[None, :] - 2.0 * px @ palette.T
    return scores.argmin(axis=1)


def nearest_color(rgb: Sequence[float]) -> str:
    """Name of the COLORS entry nearest to one RGB triple (0-255 scale)."""
    arr = np.asarray(rgb, dtype=np.float64)
    if arr.shape != (3,):
        raise ValueError(f"rgb must be three numbers (R, G, B), got shape {arr.shape}")
    names = list(COLORS)
    return names[int(nearest_indices(arr[None, :], names)[0])]
