"""Scene reader: find the objects of the shapes world in any image.

`read_scene(image)` returns one `Detection` per object colour found:
colour, shape class, fitted box, centre, size class, named place and the
fit score. It works on generated images, on lightly noised ones and on model
outputs that stay roughly in this world, so edits can be scored semantically
(see `compare` and `editkit.metrics`).

How it works
    1. Each pixel takes the nearest object colour (RGB distance) if it is
       within `max_color_dist`; everything else is background. Object colours
       are >= 90 apart and background colours (gradients included) >= 61 from
       any object colour, so the default 41 separates them and tolerates
       noise up to sigma ~ 10.
    2. Per colour, connected components smaller than `min_area` are dropped
       (stray noise); the rest form the object's region (or one region per
       component with `split_components=True`).
    3. The shape is fitted by rendering every shape class at the canvas's
       object sizes (and at the region's own extent), aligned with the region's
       box on each side, with a +-1 px refinement. The score is an IoU in which
       template pixels covered by another object's colour do not count as
       missing, so partly occluded objects still fit their true shape.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

from .scene import (
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    SHAPES,
    SIZE_CLASSES,
    Obj,
    Scene,
    min_fragment,
    object_pixels,
    place_of,
    shape_mask,
)

_OBJ_NAMES = list(OBJECT_COLORS)
_OBJ_RGB = np.array([OBJECT_COLORS[c] for c in _OBJ_NAMES], dtype=np.float32)
_BG_NAMES = list(BACKGROUND_COLORS)
_BG_RGB = np.array([BACKGROUND_COLORS[c] for c in _BG_NAMES], dtype=np.float32)

DEFAULT_MAX_COLOR_DIST = 41.0


@dataclass
class Detection:
    color: str
    shape: str
    score: float  # fit IoU of the chosen shape template, 0..1
    box: tuple[int, int, int, int]  # fitted template box [x1, y1, x2, y2], x2/y2 exclusive
    visible_box: tuple[int, int, int, int]  # box of the region's pixels
    size: int  # fitted side in pixels
    size_class: str  # nearest size class
    place: str
    area: int  # region pixels
    mask: np.ndarray = field(repr=False, default=None)

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "color": self.color, "shape": self.shape, "score": round(float(self.score), 4), "box": list(self.box),
            "size": self.size, "size_class": self.size_class, "place": self.place, "area": self.area,
        }


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"`image` must be an RGB image (H, W, 3); got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0 + 1e-6:
            arr = np.rint(np.clip(arr, 0, 1) * 255)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def color_labels(image, max_color_dist: float = DEFAULT_MAX_COLOR_DIST) -> np.ndarray:
    """Per-pixel index into OBJECT_COLORS (-1: not an object colour)."""
    px = _as_rgb(image).astype(np.float32)
    d2 = ((px[:, :, None, :] - _OBJ_RGB[None, None]) ** 2).sum(-1)
    idx = d2.argmin(-1)
    ok = np.take_along_axis(d2, idx[..., None], -1)[..., 0] <= max_color_dist**2
    return np.where(ok, idx, -1).astype(np.int8)


@dataclass
class _Template:
    shape: str
    size: int
    mask: np.ndarray
    off: tuple[int, int, int, int]  # visible extent inside the box: x1, y1, x2, y2


@lru_cache(maxsize=4096)
def _template(shape: str, size: int) -> _Template:
    m = shape_mask(shape, size)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return _Template(shape, size, m, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


def _templates(sizes: Iterable[int]) -> list[_Template]:
    return [_template(shape, s) for s in sorted(set(int(v) for v in sizes if v >= 3)) for shape in SHAPES]


OCCLUSION_WEIGHT = 0.1  # small cost per template pixel explained as "hidden by another object"


def _score(region: np.ndarray, other: np.ndarray, area: int, t: _Template, x: int, y: int) -> float:
    """IoU of the template at (x, y) with `region`, where template pixels on `other` (possible
    occluders) are not missing pixels but cost OCCLUSION_WEIGHT each (this breaks ties towards
    the shape that needs the fewest hidden pixels, e.g. a ring over a circle whose hole shows
    another object)."""
    n_h, n_w = region.shape
    s = t.size
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, n_w), min(y + s, n_h)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    tm = t.mask[y0 - y : y1 - y, x0 - x : x1 - x]
    reg = region[y0:y1, x0:x1]
    oth = other[y0:y1, x0:x1]
    inter = int(np.count_nonzero(tm & reg))
    extra = int(np.count_nonzero(tm & ~reg & ~oth))
    hidden = int(np.count_nonzero(tm & oth))
    denom = area + extra + OCCLUSION_WEIGHT * hidden
    return inter / denom if denom else 0.0


def fit_shape(region: np.ndarray, other: np.ndarray | None = None, sizes: Sequence[int] | None = None):
    """Best (score, template, x, y) for a boolean region mask; `other` marks possible occluders."""
    if other is None:
        other = np.zeros_like(region)
    area = int(region.sum())
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    bx1, by1, bx2, by2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    extent = max(bx2 - bx1, by2 - by1)
    canvas = region.shape[0]
    cand_sizes = set(sizes or [object_pixels(c, canvas) for c in SIZE_CLASSES])
    cand_sizes |= {extent, extent + 1, extent + 2}
    templates = _templates(cand_sizes)
    results = []
    for t in templates:
        ox1, oy1, ox2, oy2 = t.off
        best = (0.0, 0, 0)
        for x in {bx1 - ox1, bx2 - ox2}:
            for y in {by1 - oy1, by2 - oy2}:
                sc = _score(region, other, area, t, x, y)
                if sc > best[0]:
                    best = (sc, x, y)
        results.append((best[0], t, best[1], best[2]))
    results.sort(key=lambda r: -r[0])
    refined = []
    for sc, t, x, y in results[:6]:
        b = (sc, x, y)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                if dx or dy:
                    s2 = _score(region, other, area, t, x + dx, y + dy)
                    if s2 > b[0] + 1e-9:
                        b = (s2, x + dx, y + dy)
        refined.append((b[0], t, b[1], b[2]))
    refined.sort(key=lambda r: (-r[0], SHAPES.index(r[1].shape)))
    if refined[0][0] < 0.9 and (other & _grow(region)).any():
        # Occluded on several sides: try every placement whose shape extent covers the region.
        for t in templates:
            ox1, oy1, ox2, oy2 = t.off
            xs = range(bx2 - ox2, bx1 - ox1 + 1)
            ys = range(by2 - oy2, by1 - oy1 + 1)
            for x in xs:
                for y in ys:
                    sc = _score(region, other, area, t, x, y)
                    if sc > refined[0][0] + 1e-9:
                        refined.insert(0, (sc, t, x, y))
    return refined[0]


def _grow(m: np.ndarray) -> np.ndarray:
    return cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _size_class(size: int, canvas: int) -> str:
    return min(SIZE_CLASSES, key=lambda c: abs(object_pixels(c, canvas) - size))


def read_scene(image, *, max_color_dist: float = DEFAULT_MAX_COLOR_DIST, min_area: int | None = None,
               split_components: bool = False) -> list[Detection]:
    """Objects found in `image` (PIL or HxWx3 array), sorted by colour name order."""
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    canvas = min(h, w)
    if min_area is None:
        min_area = min_fragment(canvas)
    lab = color_labels(rgb, max_color_dist)
    regions: list[tuple[int, np.ndarray]] = []
    for ci in range(len(_OBJ_NAMES)):
        m = lab == ci
        if m.sum() < min_area:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        keep = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area]
        if not keep:
            continue
        if split_components:
            regions += [(ci, comp == k) for k in keep]
        else:
            regions.append((ci, np.isin(comp, keep)))
    anything = lab >= 0
    out = []
    for ci, region in regions:
        score, t, x, y = fit_shape(region, anything & ~region)
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        vb = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        box = (int(x), int(y), int(x + t.size), int(y + t.size))
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        out.append(Detection(
            color=_OBJ_NAMES[ci], shape=t.shape, score=float(score), box=box, visible_box=vb, size=t.size,
            size_class=_size_class(t.size, canvas), place=place_of((cx, cy), canvas), area=int(region.sum()),
            mask=region,
        ))
    return out


def read_background(image, detections: Sequence[Detection] | None = None, *, min_share: float = 0.15) -> list[str]:
    """Names of the background colours covering at least `min_share` of the non-object pixels."""
    rgb = _as_rgb(image)
    if detections is None:
        detections = read_scene(rgb)
    objects = np.zeros(rgb.shape[:2], dtype=bool)
    for d in detections:
        objects |= d.mask
    px = rgb[~objects].astype(np.float32)
    if px.size == 0:
        return []
    idx = ((px[:, None, :] - _BG_RGB[None]) ** 2).sum(-1).argmin(-1)
    counts = np.bincount(idx, minlength=len(_BG_NAMES)) / len(idx)
    return [n for n, c in zip(_BG_NAMES, counts) if c >= min_share]


# --------------------------------------------------------------------------- comparisons

KEYS_ALL = ("color", "shape", "place", "size_class")


def _key(o: Obj | Detection, keys: Sequence[str], canvas: int) -> tuple:
    vals = []
    for k in keys:
        if k == "place":
            vals.append(o.place(canvas) if isinstance(o, Obj) else o.place)
        else:
            vals.append(getattr(o, k))
    return tuple(vals)


@dataclass
class SceneMatch:
    exact: bool  # same multiset of keyed objects, nothing missing or extra
    presence: float  # fraction of expected objects found (by colour and shape)
    color_accuracy: float  # of expected objects found by shape (and place), fraction in the right colour
    missing: list[tuple]
    extra: list[tuple]

    def to_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "presence": self.presence, "color_accuracy": self.color_accuracy,
                "missing": [list(m) for m in self.missing], "extra": [list(e) for e in self.extra]}


def compare(detections: Sequence[Detection], expected: Scene | Sequence[Obj], *, keys: Sequence[str] = ("color", "shape", "place"),
            canvas: int | None = None) -> SceneMatch:
    """Compare what the reader found with the objects that should be there."""
    if isinstance(expected, Scene):
        canvas = expected.canvas
        objs = list(expected.objects)
    else:
        objs = list(expected)
        if canvas is None:
            raise ValueError("`canvas` is needed when `expected` is a list of objects.")
    want = Counter(_key(o, keys, canvas) for o in objs)
    got = Counter(_key(d, keys, canvas) for d in detections)
    missing = list((want - got).elements())
    extra = list((got - want).elements())
    found_cs = Counter(_key(d, ("color", "shape"), canvas) for d in detections)
    need_cs = Counter(_key(o, ("color", "shape"), canvas) for o in objs)
    presence = sum((need_cs & found_cs).values()) / sum(need_cs.values()) if need_cs else 1.0
    # colour accuracy: match by shape (+ place when keyed), then check the colour
    loc = ("shape", "place") if "place" in keys else ("shape",)
    pool = [d for d in detections]
    right = total = 0
    for o in objs:
        k = _key(o, loc, canvas)
        cands = [d for d in pool if _key(d, loc, canvas) == k]
        if not cands:
            total += 1
            continue
        total += 1
        hit = next((d for d in cands if d.color == o.color), None)
        d = hit or cands[0]
        pool.remove(d)
        right += d.color == o.color
    return SceneMatch(exact=not missing and not extra, presence=presence,
                      color_accuracy=right / total if total else 1.0, missing=missing, extra=extra)
