"""Object detection codec: every instance outlined by an unfilled pure-blue rectangle.

Box convention: [x1, y1, x2, y2] in pixels, x1/y1 inclusive and x2/y2 exclusive
(COCO [x, y, w, h] is [x, y, x + w, y + h]). The outline is drawn *inside* the
box, so the blue pixels' bounding rectangle is exactly the box and decoding can
be exact.
"""

from __future__ import annotations

import cv2
import numpy as np

from ._image import ImageLike, _as_uint8_rgb

BOX_COLOR: tuple[int, int, int] = (0, 0, 255)

# OpenCV HSV (hue 0-179): pure blue is hue 120. Loose enough for generated
# near-blues, strict enough to ignore greys and cyans.
BLUE_HUE = (100, 130)
MIN_SATURATION = 110
MIN_VALUE = 60


def default_line_width(height: int, width: int) -> int:
    """4 px at a 512 short side; never below 2 so outlines survive at 64 px."""
    return max(2, round(min(height, width) / 128))


def _as_boxes(boxes: np.ndarray | list, name: str = "boxes") -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as [x1, y1, x2, y2], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinity")
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) [x1, y1, x2, y2] boxes -> (N, M).

    Areas are (x2 - x1) * (y2 - y1), consistent with exclusive x2/y2.
    A single box of shape (4,) is treated as (1, 4).
    """
    a = _as_boxes(np.atleast_2d(a), "a")
    b = _as_boxes(np.atleast_2d(b), "b")
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def encode_boxes(image: ImageLike, boxes: np.ndarray | list, line_width: int | None = None) -> np.ndarray:
    """Copy of `image` with each box outlined in pure blue, `line_width` px drawn inwards.

    Coordinates are rounded to whole pixels and clipped to the image; boxes
    entirely outside are skipped. Boxes with x2 <= x1 or y2 <= y1 are rejected.
    """
    canvas = _as_uint8_rgb(image).copy()
    h, w = canvas.shape[:2]
    lw = default_line_width(h, w) if line_width is None else int(line_width)
    if lw < 1:
        raise ValueError(f"line_width must be >= 1, got {line_width}")
    arr = _as_boxes(boxes)
    if np.any(arr[:, 2] <= arr[:, 0]) or np.any(arr[:, 3] <= arr[:, 1]):
        raise ValueError("every box needs x2 > x1 and y2 > y1 ([x1, y1, x2, y2])")
    for x1, y1, x2, y2 in np.rint(arr).astype(np.int64):
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if x2 <= x1 or y2 <= y1:
            continue
        canvas[y1 : min(y1 + lw, y2), x1:x2] = BOX_COLOR
        canvas[max(y2 - lw, y1) : y2, x1:x2] = BOX_COLOR
        canvas[y1:y2, x1 : min(x1 + lw, x2)] = BOX_COLOR
        canvas[y1:y2, max(x2 - lw, x1) : x2] = BOX_COLOR
    return canvas


def blue_mask(
    image: ImageLike,
    hue: tuple[int, int] = BLUE_HUE,
    min_saturation: int = MIN_SATURATION,
    min_value: int = MIN_VALUE,
) -> np.ndarray:
    """Boolean (H, W) mask of blue pixels (OpenCV HSV range), closed with a 3x3 square.

    The closing fills pinholes that noise punches into outlines; a square
    element keeps axis-aligned corners, so box extents are unchanged.

    The mask is padded with one unset pixel on every side before closing and
    cropped after: OpenCV's default border would let the closing bridge a
    1-px gap between an outline and the image border, moving a box with
    x1 == 1 to x1 == 0 (and x2 == W - 1 to W).
    """
    hsv = cv2.cvtColor(_as_uint8_rgb(image), cv2.COLOR_RGB2HSV)
    lo = np.array([hue[0], min_saturation, min_value], dtype=np.uint8)
    hi = np.array([hue[1], 255, 255], dtype=np.uint8)
    mask = cv2.copyMakeBorder(cv2.inRange(hsv, lo, hi), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return mask[1:-1, 1:-1] > 0


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = mask[y + dy, x + dx], False where that falls outside."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(0, -dy) : min(h, h - dy), max(0, -dx) : min(w, w - dx)] = mask[
        max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)
    ]
    return out


def _corners(mask: np.ndarray, sx: int, sy: int, arm: int) -> np.ndarray:
    """(K, 2) [x, y] of L-shaped outer corners whose arms run towards +sx and +sy.

    A corner pixel is set, starts `arm`-long runs horizontally and vertically,
    and has nothing set just behind it along either run.
    """
    hit = mask & ~_shifted(mask, 0, -sx) & ~_shifted(mask, -sy, 0)
    for k in range(1, arm):
        hit &= _shifted(mask, 0, sx * k) & _shifted(mask, sy * k, 0)
    ys, xs = np.nonzero(hit)
    return np.stack([xs, ys], axis=1)


def _pair(first: np.ndarray, second: np.ndarray, arm: int, tl_br: bool) -> np.ndarray:
    """Boxes from every (first, second) corner pair that forms a valid rectangle.

    tl_br: first = top-left, second = bottom-right; else first = top-right,
    second = bottom-left.
    """
    if len(first) == 0 or len(second) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    fx, fy = first[:, None, 0], first[:, None, 1]
    qx, qy = second[None, :, 0], second[None, :, 1]
    if tl_br:
        x1, y1, x2, y2 = fx, fy, qx + 1, qy + 1
    else:
        x1, y1, x2, y2 = qx, fy, fx + 1, qy + 1
    x1, y1, x2, y2 = np.broadcast_arrays(x1, y1, x2, y2)
    ok = (x2 - x1 >= arm) & (y2 - y1 >= arm)
    return np.stack([x1[ok], y1[ok], x2[ok], y2[ok]], axis=1)


def _verify(mask: np.ndarray, cands: np.ndarray, max_gap: int) -> np.ndarray:
    """Keep candidates that look like a drawn outline in `mask`.

    Three tests: (1) each side's outer line is continuous, with no break
    longer than `max_gap` px after forgiving 1 px of wobble, which rejects two
    aligned boxes read as one; (2) at least three corners are clean ends, i.e.
    the lines stop there, which rejects the inner rectangle formed where two
    outlines cross; (3) the box is hollow, i.e. less than half of the inside
    (inset by the measured line width) is set, which rejects solid blue regions.
    """
    if len(cands) == 0:
        return cands
    h, w = mask.shape
    dil = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    # Cheap vectorised screen first (prefix sums give each side's coverage in O(1)).
    rows = np.zeros((h, w + 1), np.int32)
    rows[:, 1:] = np.cumsum(dil, axis=1)
    cols = np.zeros((h + 1, w), np.int32)
    cols[1:] = np.cumsum(dil, axis=0)
    x1, y1, x2, y2 = cands.T
    bw, bh = x2 - x1, y2 - y1
    cover = np.minimum.reduce([
        (rows[y1, x2] - rows[y1, x1]) / bw,
        (rows[y2 - 1, x2] - rows[y2 - 1, x1]) / bw,
        (cols[y2, x1] - cols[y1, x1]) / bh,
        (cols[y2, x2 - 1] - cols[y1, x2 - 1]) / bh,
    ])
    pad = np.pad(mask, 1)  # pad[y + 1, x + 1] == mask[y, x]; outside counts as unset
    clean = (
        (~pad[y1 + 1, x1] & ~pad[y1, x1 + 1]).astype(int)  # top-left: (x1-1, y1), (x1, y1-1)
        + (~pad[y1 + 1, x2 + 1] & ~pad[y1, x2])  # top-right: (x2, y1), (x2-1, y1-1)
        + (~pad[y2, x1] & ~pad[y2 + 1, x1 + 1])  # bottom-left: (x1-1, y2-1), (x1, y2)
        + (~pad[y2, x2 + 1] & ~pad[y2 + 1, x2])  # bottom-right: (x2, y2-1), (x2-1, y2)
    )
    screened = np.flatnonzero((cover >= 0.5) & (clean >= 3))
    keep = [i for i in screened if _continuous(dil, cands[i], max_gap) and _hollow(mask, cands[i])]
    return cands[keep]


def _longest_gap(line: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], (~line).astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if starts.size else 0


def _continuous(dil: np.ndarray, box: np.ndarray, max_gap: int) -> bool:
    x1, y1, x2, y2 = (int(v) for v in box)
    sides = (dil[y1, x1:x2], dil[y2 - 1, x1:x2], dil[y1:y2, x1], dil[y1:y2, x2 - 1])
    return max(_longest_gap(side) for side in sides) <= max_gap


def _leading_run(line: np.ndarray) -> int:
    gaps = np.flatnonzero(~line)
    return int(gaps[0]) if gaps.size else int(line.size)


def _hollow(mask: np.ndarray, box: np.ndarray) -> bool:
    x1, y1, x2, y2 = (int(v) for v in box)
    xm, ym = (x1 + x2) // 2, (y1 + y2) // 2
    runs = sorted([
        _leading_run(mask[y1:y2, xm]),
        _leading_run(mask[y1:y2, xm][::-1]),
        _leading_run(mask[ym, x1:x2]),
        _leading_run(mask[ym, x1:x2][::-1]),
    ])
    # Second-smallest: one midpoint may sit on a crossing line (long run) or a gap (zero).
    t = max(runs[1], 1)
    inside = mask[y1 + t : y2 - t, x1 + t : x2 - t]
    return inside.size > 0 and float(inside.mean()) < 0.5


def _dedupe(boxes: np.ndarray, iou: float) -> np.ndarray:
    kept: list[np.ndarray] = []
    for box in boxes:
        if not kept or box_iou(box, np.stack(kept)).max() <= iou:
            kept.append(box)
    return np.stack(kept) if kept else np.zeros((0, 4), dtype=boxes.dtype)


def decode_boxes(
    image: ImageLike,
    *,
    arm: int | None = None,
    max_gap: int = 0,
    dedupe_iou: float = 0.7,
    max_corners: int = 256,
    hue: tuple[int, int] = BLUE_HUE,
    min_saturation: int = MIN_SATURATION,
    min_value: int = MIN_VALUE,
) -> np.ndarray:
    """Recover [x1, y1, x2, y2] boxes (x2/y2 exclusive) from blue outlines -> float (N, 4).

    Two candidate sources over one blue mask, as in InstructCV's union of two
    decoders: (a) the bounding rectangle of each 8-connected blue component,
    exact for separate boxes and nested ones; (b) pairs of L-shaped corners
    (top-left with bottom-right, top-right with bottom-left) with arms of `arm`
    px (default scales with image size, 3 px at 64), which recover boxes whose
    outlines touch or cross and so share a component. Every candidate must pass
    an outline check (see `_verify`); raise `max_gap` (the longest tolerated
    break in a side, px) for sketchy generated lines. Near-duplicates are then
    merged, keeping the first of any pair with IoU > `dedupe_iou` (components
    before corners). Corner pairing is skipped when a corner list exceeds `max_corners`,
    which only happens for large blue regions that are not outlines.
    Output rows are sorted by (y1, x1, y2, x2).
    """
    if arm is not None and arm < 2:
        raise ValueError(f"arm must be >= 2, got {arm}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    mask = blue_mask(image, hue, min_saturation, min_value)
    h, w = mask.shape
    arm = max(3, round(min(h, w) / 64)) if arm is None else int(arm)

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    x, y, bw, bh = (stats[1:count, i].astype(np.int64) for i in range(4))
    big = (bw >= 3) & (bh >= 3)
    from_components = np.stack([x, y, x + bw, y + bh], axis=1)[big]

    pairs: list[np.ndarray] = []
    tl, br = _corners(mask, 1, 1, arm), _corners(mask, -1, -1, arm)
    tr, bl = _corners(mask, -1, 1, arm), _corners(mask, 1, -1, arm)
    if max(len(tl), len(br), len(tr), len(bl)) <= max_corners:
        pairs = [_pair(tl, br, arm, tl_br=True), _pair(tr, bl, arm, tl_br=False)]
    from_corners = np.concatenate([np.zeros((0, 4), np.int64), *pairs])
    # Stable order for the corner candidates so dedupe ties are deterministic.
    from_corners = from_corners[np.lexsort(from_corners.T[::-1])]

    cands = np.concatenate([_verify(mask, from_components, max_gap), _verify(mask, from_corners, max_gap)])
    boxes = _dedupe(cands.astype(np.float64), dedupe_iou)
    return boxes[np.lexsort((boxes[:, 2], boxes[:, 3], boxes[:, 0], boxes[:, 1]))]
