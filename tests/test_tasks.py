"""Task codecs: encode -> decode round trips, noise robustness, prompts, registry."""

from __future__ import annotations

import random
import re
import string

import cv2
import numpy as np
import pytest
from PIL import Image

from editkit.tasks import (
    COLORS,
    FIXED_PROMPTS,
    HELDOUT_PROMPTS,
    RP_PROMPTS,
    TASKS,
    box_iou,
    build_prompt,
    decode_boxes,
    decode_class,
    decode_depth,
    decode_mask,
    decode_presence,
    encode_boxes,
    encode_class,
    encode_depth,
    encode_mask,
    get_task,
    nearest_color,
)
from editkit.tasks._image import _as_uint8_rgb
from editkit.tasks.detection import blue_mask, default_line_width
from editkit.tasks.segmentation import DEMO_THRESHOLD

SIZES = [(64, 64), (256, 192)]
NOISE_SIGMA = 8.0  # 8/255 on the [0, 1] scale
DEPTH_QUANT = 10.0 / 255.0 / 2.0


def add_noise(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def random_mask(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A few random ellipses: blobs with curved borders and holes between them."""
    rng = np.random.default_rng(seed)
    h, w = shape
    canvas = np.zeros(shape, np.uint8)
    for _ in range(4):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, w // 3)), int(rng.integers(3, h // 3)))
        cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return canvas.astype(bool)


def non_blue_color(rng: np.random.Generator) -> tuple[int, int, int]:
    # Blue must not be the largest channel (with margin), so the hue never falls in the blue range.
    while True:
        r, g, b = (int(v) for v in rng.integers(0, 256, 3))
        if b <= max(r, g) - 30:
            return r, g, b


def random_background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    img = np.empty((h, w, 3), np.uint8)
    img[:] = non_blue_color(rng)
    for _ in range(6):  # coloured patches give the decoder edges that are not boxes
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        img[y : y + int(rng.integers(4, h // 2)), x : x + int(rng.integers(4, w // 2))] = non_blue_color(rng)
    return img


def random_boxes(shape: tuple[int, int], count: int, rng: np.random.Generator, gap: int = 4) -> np.ndarray:
    """`count` non-overlapping boxes at least `gap` px apart, sides 10 px .. a third of the image."""
    h, w = shape
    lo, hi = 10, max(11, min(h, w) // 3)
    boxes: list[list[int]] = []
    while len(boxes) < count:
        bw, bh = (int(v) for v in rng.integers(lo, hi, 2))
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        grown = np.array([[x - gap, y - gap, x + bw + gap, y + bh + gap]])
        if not boxes or box_iou(grown, np.array(boxes)).max() == 0:
            boxes.append([x, y, x + bw, y + bh])
    return np.array(boxes, dtype=np.float64)


def sort_boxes(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort((boxes[:, 2], boxes[:, 3], boxes[:, 0], boxes[:, 1]))]


# -- input normalisation -------------------------------------------------------------------------


def test_as_uint8_rgb_accepts_pil_uint8_and_float() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    assert np.array_equal(_as_uint8_rgb(arr), arr)
    assert np.array_equal(_as_uint8_rgb(Image.fromarray(arr)), arr)
    assert np.array_equal(_as_uint8_rgb(arr.astype(np.float32) / 255.0), arr)
    grey = Image.fromarray(arr[:, :, 0])  # mode "L" is converted to RGB
    assert _as_uint8_rgb(grey).shape == (5, 7, 3)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ([[0, 0, 0]], TypeError),
        (np.zeros((4, 4), np.uint8), ValueError),
        (np.zeros((4, 4, 4), np.uint8), ValueError),
        (np.zeros((0, 4, 3), np.uint8), ValueError),
        (np.full((4, 4, 3), 1.5), ValueError),
        (np.full((4, 4, 3), np.nan), ValueError),
        (np.zeros((4, 4, 3), np.int64), TypeError),
    ],
)
def test_as_uint8_rgb_rejects(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        _as_uint8_rgb(bad)  # type: ignore[arg-type]


# -- colours -------------------------------------------------------------------------------------


def test_color_table() -> None:
    assert len(COLORS) == 17
    assert COLORS["orange"] == (255, 128, 0)
    assert COLORS["black"] == (0, 0, 0)
    assert all(name == name.lower() for name in COLORS)
    assert len(set(COLORS.values())) == 17
    for name, rgb in COLORS.items():
        assert nearest_color(rgb) == name
        assert nearest_color(tuple(min(255, c + 9) for c in rgb)) == name
    with pytest.raises(ValueError, match="rgb"):
        nearest_color((1, 2))


# -- segmentation --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("seed", range(3))
def test_mask_round_trip_and_noise(shape: tuple[int, int], seed: int) -> None:
    mask = random_mask(shape, seed)
    target = encode_mask(mask)
    assert target.dtype == np.uint8 and target.shape == (*shape, 3)
    assert set(np.unique(target)) <= {0, 255}
    assert iou(decode_mask(target), mask) == 1.0
    assert iou(decode_mask(target, threshold=DEMO_THRESHOLD), mask) == 1.0
    assert iou(decode_mask(Image.fromarray(target)), mask) == 1.0
    assert iou(decode_mask(target.astype(np.float32) / 255), mask) == 1.0
    assert iou(decode_mask(add_noise(target, seed)), mask) > 0.95


def test_mask_thresholds_and_errors() -> None:
    grey = np.full((4, 4, 3), 60, np.uint8)
    assert decode_mask(grey).all()  # eval threshold 10
    assert not decode_mask(grey, threshold=DEMO_THRESHOLD).any()
    assert not decode_mask(np.zeros((4, 4, 3), np.uint8)).any()
    assert encode_mask(np.eye(3, dtype=np.uint8))[1, 1].tolist() == [255, 255, 255]
    speck = np.zeros((8, 8, 3), np.uint8)
    speck[3, 3] = 40  # one isolated bright pixel: noise, unless despeckle is off
    assert not decode_mask(speck).any()
    assert decode_mask(speck, despeckle=False).sum() == 1
    with pytest.raises(ValueError, match="threshold"):
        decode_mask(grey, threshold=255)
    with pytest.raises(ValueError, match="mask"):
        encode_mask(np.zeros((2, 2, 2), bool))


# -- detection -----------------------------------------------------------------------------------


def test_line_width_default() -> None:
    assert default_line_width(512, 512) == 4
    assert default_line_width(512, 768) == 4
    assert default_line_width(256, 256) == 2
    assert default_line_width(64, 64) == 2


def test_encode_boxes_draws_inside_outline() -> None:
    img = np.zeros((20, 20, 3), np.uint8)
    out = encode_boxes(img, [[2, 3, 12, 15]], line_width=2)
    assert not img.any()  # input untouched
    blue = (out == (0, 0, 255)).all(axis=2)
    ys, xs = np.nonzero(blue)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (2, 3, 12, 15)
    assert blue.sum() == 10 * 12 - 6 * 8  # outer rectangle minus the 6x8 hole
    # Boxes are clipped to the image; boxes entirely outside are skipped.
    clipped = encode_boxes(img, [[-5, -5, 8, 8], [30, 30, 40, 40]], line_width=2)
    assert (clipped == (0, 0, 255)).all(axis=2).sum() == 8 * 8 - 4 * 4
    with pytest.raises(ValueError, match="x2 > x1"):
        encode_boxes(img, [[5, 5, 5, 9]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        encode_boxes(img, [[1, 2, 3]])


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("seed", range(8))
def test_boxes_round_trip_and_noise(shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    boxes = random_boxes(shape, 1 + seed % 4, rng)
    background = random_background(shape, rng)
    assert not blue_mask(background).any()
    target = encode_boxes(background, boxes)
    for image in (target, add_noise(target, seed)):
        found = decode_boxes(image)
        assert found.shape == boxes.shape
        assert np.abs(found - sort_boxes(boxes)).max() <= 1.0


def test_boxes_accept_pil_and_float() -> None:
    rng = np.random.default_rng(7)
    boxes = random_boxes((64, 64), 2, rng)
    target = encode_boxes(random_background((64, 64), rng), boxes)
    assert np.array_equal(decode_boxes(Image.fromarray(target)), sort_boxes(boxes))
    assert np.array_equal(decode_boxes(target.astype(np.float64) / 255), sort_boxes(boxes))


@pytest.mark.parametrize("size", [64, 256])
def test_boxes_nested_and_crossing(size: int) -> None:
    s = size / 64
    background = np.full((size, size, 3), (200, 180, 40), np.uint8)
    nested = np.array([[4, 4, 60, 60], [16, 20, 44, 46]]) * s
    crossing = np.array([[6, 6, 38, 36], [22, 18, 58, 56]]) * s
    for boxes in (nested, crossing):
        found = decode_boxes(encode_boxes(background, boxes))
        assert np.abs(found - sort_boxes(boxes)).max() <= 1.0
    # The union's bounding box and the rectangle where two outlines cross are not boxes.
    assert box_iou(found, np.array([[6, 6, 58, 56], [22, 18, 38, 36]]) * s).max() < 0.7


def test_boxes_aligned_neighbours_stay_separate() -> None:
    """Boxes sharing a side's line (4 px apart) must not also be read as one merged box."""
    background = np.full((64, 64, 3), (90, 200, 30), np.uint8)
    side_by_side = np.array([[0, 16, 19, 30], [23, 16, 44, 30]])
    stacked = np.array([[0, 16, 16, 33], [0, 37, 14, 53]])  # on the border, right sides 2 px apart
    for boxes in (side_by_side, stacked):
        found = decode_boxes(encode_boxes(background, boxes))
        assert np.array_equal(found, sort_boxes(boxes.astype(np.float64)))


@pytest.mark.parametrize("size", [48, 64, 256])
def test_boxes_one_pixel_from_the_border_stay_exact(size: int) -> None:
    """Regression: the 3x3 closing bridged a 1-px gap to the image border, decoding x1 == 1 as 0
    (and x2 == W - 1 as W); the mask is now padded before closing."""
    background = np.full((size, size, 3), (200, 180, 40), np.uint8)
    n = size
    cases = [
        [1, 10, 30, 40],  # x1 one pixel from the left border
        [10, 1, 30, 40],  # y1 one pixel from the top
        [5, 5, n - 1, 40],  # x2 one pixel from the right border
        [5, 5, 30, n - 1],  # y2 one pixel from the bottom
        [1, 1, n - 1, n - 1],  # all four sides
        [0, 0, 20, 20],  # touching the border stays touching
        [n - 20, n - 20, n, n],
    ]
    for box in cases:
        boxes = np.array([box], dtype=np.float64)
        target = encode_boxes(background, boxes)
        assert np.array_equal(decode_boxes(target), boxes), box
        # The outline's own blue pixels are unchanged by the closing.
        assert np.array_equal(blue_mask(target), (target == (0, 0, 255)).all(axis=2)), box
    # Pinholes next to the border are still closed.
    target = encode_boxes(background, [[1, 1, 30, 30]])
    target[1, 10] = background[0, 0]
    assert np.array_equal(decode_boxes(target), np.array([[1.0, 1.0, 30.0, 30.0]]))


def test_decode_boxes_bad_args() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="arm"):
        decode_boxes(image, arm=1)
    with pytest.raises(ValueError, match="max_gap"):
        decode_boxes(image, max_gap=-1)


def test_boxes_dense_overlap_is_sane() -> None:
    """Heavily overlapping boxes cannot all be recovered, but output stays well-formed."""
    rng = np.random.default_rng(3)
    size = 128
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in rng.integers([0, 0, 20, 20], [60, 60, 68, 68], (6, 4))])
    found = decode_boxes(encode_boxes(np.zeros((size, size, 3), np.uint8), boxes))
    assert found.dtype == np.float64 and found.ndim == 2 and found.shape[1] == 4
    assert (found[:, :2] >= 0).all() and (found[:, 2:] <= size).all()
    assert (found[:, 2] > found[:, 0]).all() and (found[:, 3] > found[:, 1]).all()
    if len(found) > 1:
        pairwise = box_iou(found, found)
        assert pairwise[~np.eye(len(found), dtype=bool)].max() <= 0.7  # de-duplicated
    assert len(found) <= 2 * len(boxes)


def test_boxes_no_blue_and_solid_blue() -> None:
    rng = np.random.default_rng(11)
    assert decode_boxes(random_background((64, 64), rng)).shape == (0, 4)
    assert decode_boxes(add_noise(random_background((256, 256), rng), 1)).shape == (0, 4)
    solid = np.zeros((64, 64, 3), np.uint8)
    solid[10:40, 10:40] = (0, 0, 255)  # a blue object is not an outline
    assert decode_boxes(solid).shape == (0, 4)


def test_box_iou_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    expected = np.array([[50 / 150, 0.0, 1.0], [0.0, 0.0, 4 / 100]])
    assert np.allclose(box_iou(a, b), expected)
    assert box_iou([0, 0, 4, 4], np.zeros((0, 4))).shape == (1, 0)


# -- depth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SIZES)
def test_depth_round_trip(shape: tuple[int, int]) -> None:
    depth = np.random.default_rng(5).uniform(0.0, 10.0, shape)
    target = encode_depth(depth)
    assert target.dtype == np.uint8 and target.shape == (*shape, 3)
    assert np.array_equal(target[:, :, 0], target[:, :, 2])
    for channel in ("mean", "red"):
        decoded = decode_depth(target, channel=channel)  # type: ignore[arg-type]
        assert decoded.dtype == np.float32 and decoded.shape == shape
        assert np.abs(decoded - depth).max() < DEPTH_QUANT + 1e-5
    decoded_pil = decode_depth(Image.fromarray(target))
    assert np.abs(decoded_pil - depth).max() < DEPTH_QUANT + 1e-5


def test_depth_clipping_and_errors() -> None:
    target = encode_depth(np.array([[-1.0, 0.0, 5.0, 10.0, 12.0, np.nan]]))
    assert target[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]  # 5 m -> 127.5 rounds to 128
    assert np.allclose(decode_depth(target)[0], [0, 0, 128 / 25.5, 10, 10, 0])
    assert encode_depth(np.full((1, 1), 2.0), max_depth=4.0)[0, 0, 0] == 128
    with pytest.raises(ValueError, match="depth_m"):
        encode_depth(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="max_depth"):
        encode_depth(np.zeros((2, 2)), max_depth=0)
    with pytest.raises(ValueError, match="channel"):
        decode_depth(target, channel="green")  # type: ignore[arg-type]


# -- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SIZES)
def test_class_round_trip_every_colour(shape: tuple[int, int]) -> None:
    for i, name in enumerate(COLORS):
        other = "black" if name != "black" else "white"
        canvas = encode_class(shape, True, pos=name, neg=other)
        assert canvas.shape == (*shape, 3) and (canvas == COLORS[name]).all()
        assert decode_class(canvas) == name
        assert decode_class(add_noise(canvas, i)) == name
        assert decode_presence(add_noise(canvas, i), pos=name, neg=other) is True
        assert decode_presence(encode_class(shape, False, pos=name, neg=other), pos=name, neg=other) is False


def test_class_majority_vote_and_errors() -> None:
    canvas = encode_class((64, 64), True)  # red
    canvas[:20, :20] = COLORS["green"]  # 10% stray colour, e.g. a badly rendered corner
    assert decode_class(add_noise(canvas, 0)) == "red"
    assert decode_presence(canvas) is True
    assert decode_class(canvas, candidates=["green", "blue"]) == "green"
    with pytest.raises(ValueError, match="pos"):
        encode_class((4, 4), True, pos="orange-ish")
    with pytest.raises(ValueError, match="differ"):
        decode_presence(canvas, pos="red", neg="red")
    with pytest.raises(ValueError, match="size"):
        encode_class((0, 4), True)


# -- prompts -------------------------------------------------------------------------------------


def format_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


@pytest.mark.parametrize("task", list(FIXED_PROMPTS))
def test_templates_complete_and_disjoint(task: str) -> None:
    train, held = RP_PROMPTS[task], HELDOUT_PROMPTS[task]
    assert len(train) >= 8 and len(held) >= 4
    assert train[0] == FIXED_PROMPTS[task]
    assert len(set(train)) == len(train) and len(set(held)) == len(held)
    assert not set(held) & (set(train) | {FIXED_PROMPTS[task]})
    expected = {"depth": set(), "classify": {"label", "pos", "neg"}}.get(task, {"label"})
    for template in (*train, *held):
        assert format_fields(template) == expected, template
        text = template.format(label="traffic light", pos="gold", neg="indigo")
        assert "{" not in text and "}" not in text


@pytest.mark.parametrize("task", list(FIXED_PROMPTS))
def test_build_prompt_samples_every_line(task: str) -> None:
    rng = random.Random(0)
    label = None if task == "depth" else "dog"
    seen = {build_prompt(task, label, style="rp", rng=rng) for _ in range(400)}
    assert seen == {t.format(label="dog", pos="red", neg="green") for t in RP_PROMPTS[task]}
    held = {build_prompt(task, label, style="rp", heldout=True, rng=rng) for _ in range(200)}
    assert held == {t.format(label="dog", pos="red", neg="green") for t in HELDOUT_PROMPTS[task]}
    assert not held & seen
    a = [build_prompt(task, label, style="rp", rng=random.Random(42)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same draw


def test_build_prompt_fixed_and_aliases() -> None:
    assert build_prompt("segment", "cat") == "Segment the cat."
    assert build_prompt("Detection", " cat ") == "Detect the cat."
    assert build_prompt("depth") == "Estimate the depth of this image."
    assert build_prompt("depth", "ignored") == "Estimate the depth of this image."
    assert (
        build_prompt("classification", "cat", pos="white", neg="black")
        == "Show white if the picture has cat, otherwise show black."
    )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"task": "caption", "label": "cat"}, r"task='caption'.*segment"),
        ({"task": "segment", "label": "cat", "style": "xx"}, r"style='xx'.*\['fp', 'rp'\]"),
        ({"task": "segment"}, "label is required"),
        ({"task": "detect", "label": "  "}, "label is required"),
        ({"task": "segment", "label": "cat", "heldout": True}, "heldout"),
        ({"task": "classify", "label": "cat", "pos": "teal"}, r"pos='teal'.*aqua"),
        ({"task": "classify", "label": "cat", "neg": "red"}, "pos and neg must differ"),
    ],
)
def test_build_prompt_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build_prompt(**kwargs)


# -- registry ------------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(TASKS) == {"segment", "detect", "depth", "classify"}
    assert [TASKS[t].needs_label for t in ("segment", "detect", "depth", "classify")] == [True, True, False, True]
    for alias, name in [("segmentation", "segment"), ("detection", "detect"), ("classification", "classify")]:
        assert get_task(alias) is TASKS[name]
    with pytest.raises(ValueError, match=re.escape("valid: ['classification', 'classify'")):
        get_task("pose")
    codec = get_task("classify")
    assert codec.prompt("cat", style="fp", pos="red", neg="green") == FIXED_PROMPTS["classify"].format(
        label="cat", pos="red", neg="green"
    )
    assert codec.decode(codec.encode((8, 8), False)) == "green"
    mask = random_mask((32, 32), 0)
    assert iou(get_task("segment").decode(get_task("segment").encode(mask)), mask) == 1.0
    assert get_task("depth").prompt(None, style="rp", rng=random.Random(1)) in RP_PROMPTS["depth"]
    with pytest.raises(AttributeError):
        codec.name = "other"  # type: ignore[misc]
