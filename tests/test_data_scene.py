"""The shapes world: shape masks, colours, rendering, places, sampling."""

import itertools

import cv2
import numpy as np
import pytest

from editkit.data.scene import (
    BACKGROUND_COLORS,
    BACKGROUND_DEPTH_M,
    BACKGROUND_KINDS,
    MAX_CANVAS,
    MIN_CANVAS,
    OBJECT_COLORS,
    PLACES,
    SHAPES,
    SIZE_CLASSES,
    Background,
    Obj,
    Scene,
    caption,
    check_canvas_size,
    is_valid,
    object_pixels,
    place_of,
    place_position,
    random_scene,
    shape_mask,
    visible_box,
    visible_fractions,
)


def test_tables_have_required_sizes():
    assert len(SHAPES) >= 5 and len(OBJECT_COLORS) == 8
    assert set(BACKGROUND_KINDS) == {"solid", "gradient", "stripes", "checker"}


def test_object_colours_are_far_apart_and_not_box_blue():
    rgb = np.array(list(OBJECT_COLORS.values()), float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert d[~np.eye(len(rgb), dtype=bool)].min() > 85
    hsv = cv2.cvtColor(rgb.astype(np.uint8)[None], cv2.COLOR_RGB2HSV)[0]
    # detection boxes are decoded from OpenCV hue 100-130 (with S >= 110): no object colour may fall there
    assert not np.any((hsv[:, 0] >= 95) & (hsv[:, 0] <= 140) & (hsv[:, 1] >= 100))


def test_background_colours_far_from_objects_along_every_gradient():
    obj = np.array(list(OBJECT_COLORS.values()), float)
    bg = np.array(list(BACKGROUND_COLORS.values()), float)
    t = np.linspace(0, 1, 101)[:, None]
    worst = min(
        np.linalg.norm((a * (1 - t) + b * t)[:, None] - obj[None], axis=-1).min()
        for a, b in itertools.product(bg, bg)
    )
    assert worst > 60
    d = np.linalg.norm(bg[:, None] - bg[None], axis=-1)
    assert d[~np.eye(len(bg), dtype=bool)].min() > 56  # backgrounds can be told apart


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_masks_fill_their_box(shape):
    for s in (8, 16, 26, 33):
        m = shape_mask(shape, s)
        assert m.shape == (s, s) and m.dtype == bool
        box = visible_box(m)
        # every shape spans (almost) its whole box: at most 1 px lost to the pixel-centre rule per side
        assert box[0] <= 1 and box[1] <= 2 and box[2] >= s - 1 and box[3] >= s - 1
    assert shape_mask(shape, 20) is shape_mask(shape, 20)  # cached
    with pytest.raises(ValueError):
        shape_mask(shape, 20)[0, 0] = True


def test_shape_areas_and_distinctness():
    s = 200
    area = {k: shape_mask(k, s).mean() for k in SHAPES}
    assert area["square"] == 1.0
    assert abs(area["circle"] - np.pi / 4) < 0.01
    assert abs(area["triangle"] - 0.5) < 0.01 and abs(area["diamond"] - 0.5) < 0.01
    assert abs(area["ring"] - np.pi / 4 * (1 - 0.25)) < 0.01  # inner radius = half the outer radius
    assert abs(area["cross"] - 5 / 9) < 0.01
    for a, b in itertools.combinations(SHAPES, 2):  # shapes are told apart at the smallest size
        ma, mb = shape_mask(a, 16), shape_mask(b, 16)
        assert (ma & mb).sum() / (ma | mb).sum() < 0.9, (a, b)


def test_render_is_exact():
    bg = Background("checker", ("white", "plum"), period=8)
    objs = (
        Obj("square", "red", 10, 10, 20, depth=8.0, size_class="medium"),
        Obj("circle", "green", 20, 20, 20, depth=3.0, size_class="medium"),
    )
    r = Scene(64, bg, objs).render()
    assert r.image.dtype == np.uint8 and r.image.shape == (64, 64, 3)
    circle = np.zeros((64, 64), bool)
    circle[20:40, 20:40] = shape_mask("circle", 20)
    square = np.zeros((64, 64), bool)
    square[10:30, 10:30] = True
    assert np.array_equal(r.labels == 1, circle)  # front object fully visible
    assert np.array_equal(r.labels == 0, square & ~circle)  # back object occluded
    assert np.all(r.image[r.labels == 0] == OBJECT_COLORS["red"])
    assert np.all(r.image[r.labels == 1] == OBJECT_COLORS["green"])
    assert np.all(r.depth[r.labels == 1] == 3.0) and np.all(r.depth[r.labels == 0] == 8.0)
    assert np.all(r.depth[r.labels == -1] == BACKGROUND_DEPTH_M)
    bgimg = bg.render(64)
    assert np.array_equal(r.image[r.labels == -1], bgimg[r.labels == -1])
    assert tuple(bgimg[0, 0]) == BACKGROUND_COLORS["white"] and tuple(bgimg[0, 8]) == BACKGROUND_COLORS["plum"]
    assert tuple(bgimg[8, 8]) == BACKGROUND_COLORS["white"]


def test_background_kinds():
    n = 64
    g = Background("gradient", ("black", "white"), vertical=True).render(n)
    assert tuple(g[5, 0]) == BACKGROUND_COLORS["black"] and tuple(g[5, -1]) == BACKGROUND_COLORS["white"]
    assert np.all(np.diff(g[0, :, 0].astype(int)) >= 0) and np.all(g[:, 10] == g[0, 10])
    st = Background("stripes", ("white", "gray"), vertical=False, period=8).render(n)
    assert np.all(st[:, 0] == st[:, 33]) and tuple(st[8, 0]) == BACKGROUND_COLORS["gray"]
    assert np.all(Background("solid", ("beige",)).render(n) == BACKGROUND_COLORS["beige"])
    assert "stripes" in Background("stripes", ("white", "gray")).describe()


def test_scene_dict_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = random_scene(rng, 64)
        s2 = Scene.from_dict(s.to_dict())
        assert s2 == s
        assert np.array_equal(s2.render().image, s.render().image)


def test_random_scenes_are_valid():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        s = random_scene(rng, 64)
        counts.add(len(s.objects))
        assert 1 <= len(s.objects) <= 4
        assert len({o.color for o in s.objects}) == len(s.objects)
        depths = [o.depth for o in s.objects]
        assert depths == sorted(depths, reverse=True) and len(set(depths)) == len(depths)
        assert all(0 <= o.x and o.x + o.size <= 64 and 0 <= o.y and o.y + o.size <= 64 for o in s.objects)
        assert min(visible_fractions(s)) >= 0.75 and is_valid(s)
        assert {o.size for o in s.objects} <= {object_pixels(c, 64) for c in SIZE_CLASSES}
    assert counts == {1, 2, 3, 4}


def test_places_round_trip():
    for n in (48, 64, 100, 512):
        for c in SIZE_CLASSES:
            s = object_pixels(c, n)
            for name in PLACES:
                x, y = place_position(name, s, n)
                assert 0 <= x <= n - s and 0 <= y <= n - s
                assert place_of((x + s / 2, y + s / 2), n) == name
    with pytest.raises(ValueError, match="place"):
        place_position("upstairs", 10, 64)


def test_canvas_size_checks():
    assert check_canvas_size(64) == 64
    for bad in (MIN_CANVAS - 1, 0, -5, MAX_CANVAS + 1):
        with pytest.raises(ValueError, match="size"):
            check_canvas_size(bad)
    with pytest.raises(ValueError, match="size"):
        check_canvas_size(64.0)


def test_caption_mentions_every_object_and_background():
    s = Scene(64, Background("stripes", ("beige", "plum"), vertical=True),
              (Obj("star", "red", 2, 2, 16, 5.0, "small"), Obj("ring", "cyan", 40, 40, 20, 4.0, "medium")))
    c = caption(s)
    assert c == ("a small red star at the top left and a medium cyan ring at the bottom right "
                 "on a background of beige and plum vertical stripes")
