"""Seeded image degradations for the restore family (PromptFix / PixWizard tasks).

Each function takes a clean uint8 HxWx3 image and a numpy Generator and
returns `(degraded, params)`, or `(degraded, params, flaw_mask)` where the
flaw has a support (watermark, snow, hole). `params` is json-serialisable
and records every random choice, so a sample's degradation is documented in
its ground truth.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def noise(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Additive white Gaussian noise, sigma in [10, 30] grey levels."""
    sigma = float(rng.uniform(10.0, 30.0))
    out = _u8(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32))
    return out, {"kind": "gaussian_noise", "sigma": round(sigma, 4)}


def blur(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Gaussian blur, sigma in [0.8, 1.8] px at 64 px (scaled with the canvas)."""
    n = img.shape[0]
    sigma = float(rng.uniform(0.8, 1.8)) * n / 64.0
    k = 2 * int(np.ceil(3 * sigma)) + 1
    out = cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return out, {"kind": "gaussian_blur", "sigma": round(sigma, 4)}


def haze(img: np.ndarray, depth_m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d), d = the scene's depth in metres."""
    beta = float(rng.uniform(0.12, 0.3))
    airlight = float(rng.uniform(200.0, 240.0))
    t = np.exp(-beta * depth_m.astype(np.float32))[..., None]
    out = _u8(img.astype(np.float32) * t + airlight * (1.0 - t))
    return out, {"kind": "haze", "beta": round(beta, 4), "airlight": round(airlight, 3)}


def low_light(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Darkening: out = 255 * gain * (img / 255) ** gamma."""
    gamma = float(rng.uniform(1.5, 2.5))
    gain = float(rng.uniform(0.2, 0.45))
    out = _u8(255.0 * gain * (img.astype(np.float32) / 255.0) ** gamma)
    return out, {"kind": "low_light", "gamma": round(gamma, 4), "gain": round(gain, 4)}


def grayscale(img: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """ITU-R 601 luma, replicated to three channels."""
    y = _u8(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    return np.repeat(y[..., None], 3, axis=2), {"kind": "grayscale"}


WATERMARK_TEXTS = ("editkit", "SAMPLE", "PROOF", "DRAFT", "(c) shapes")


def watermark(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Semi-transparent text stamped in 2-3 rows."""
    n = img.shape[0]
    text = WATERMARK_TEXTS[int(rng.integers(len(WATERMARK_TEXTS)))]
    white = bool(rng.integers(2))
    alpha = float(rng.uniform(0.35, 0.6))
    scale = 0.4 * n / 64.0
    thick = max(1, int(round(n / 64.0)))
    rows = int(rng.integers(2, 4))
    layer = np.zeros((n, n), dtype=np.uint8)
    for r in range(rows):
        y = int((r + 0.5) * n / rows + 0.2 * n / rows) + int(rng.integers(-2, 3))
        x = int(rng.integers(0, max(1, n // 4)))
        cv2.putText(layer, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_8)
    m = layer > 0
    colour = 255.0 if white else 0.0
    a = (alpha * m)[..., None]
    out = _u8(img.astype(np.float32) * (1 - a) + colour * a)
    return out, {"kind": "watermark", "text": text, "white": white, "alpha": round(alpha, 4), "rows": rows}, m


def snow(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """White flakes: random points, some grown to small discs, alpha-blended."""
    n = img.shape[0]
    density = float(rng.uniform(0.015, 0.04))
    small = rng.random((n, n)) < density
    big = rng.random((n, n)) < density / 4
    r = max(1, int(round(n / 64.0)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    big = cv2.dilate(big.astype(np.uint8), disc) > 0
    if n >= 128:
        small = cv2.dilate(small.astype(np.uint8), np.ones((r, r), np.uint8)) > 0
    m = small | big
    alpha = float(rng.uniform(0.7, 0.95))
    a = (alpha * m)[..., None]
    out = _u8(img.astype(np.float32) * (1 - a) + 255.0 * a)
    return out, {"kind": "snow", "density": round(density, 5), "alpha": round(alpha, 4)}, m


def downsample(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Area-downsample by 2 or 4, then upsample back with nearest or bilinear."""
    n = img.shape[0]
    factor = int((2, 4)[int(rng.integers(2))])
    nearest = bool(rng.integers(2))
    small = cv2.resize(img, (max(1, n // factor), max(1, n // factor)), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (n, n), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return out, {"kind": "downsample", "factor": factor, "upsample": "nearest" if nearest else "bilinear"}


def hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """A black rectangle, 25-45 % of the side in each direction."""
    n = img.shape[0]
    w = int(round(rng.uniform(0.25, 0.45) * n))
    h = int(round(rng.uniform(0.25, 0.45) * n))
    x = int(rng.integers(0, n - w + 1))
    y = int(rng.integers(0, n - h + 1))
    m = np.zeros((n, n), dtype=bool)
    m[y : y + h, x : x + w] = True
    out = img.copy()
    out[m] = 0
    return out, {"kind": "hole", "box": [x, y, x + w, y + h]}, m
