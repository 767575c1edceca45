"""Scene reader: accuracy on generated and lightly noised scenes, occlusion, comparisons."""

import numpy as np
import pytest

from editkit.data.reader import compare, fit_shape, read_background, read_scene
from editkit.data.scene import Background, Obj, Scene, random_scene, shape_mask

KEYS = ("color", "shape", "place", "size_class")


def _accuracy(size, sigma, n, seed=1):
    rng = np.random.default_rng(seed)
    exact, right, total = 0, 0, 0
    for _ in range(n):
        s = random_scene(rng, size)
        img = s.render().image
        if sigma:
            img = np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)
        dets = read_scene(img)
        exact += compare(dets, s, keys=KEYS).exact
        by_color = {d.color: d for d in dets}
        for o in s.objects:
            d = by_color.get(o.color)
            total += 1
            right += bool(d and d.shape == o.shape and d.place == o.place(size) and d.size_class == o.size_class)
    return exact / n, right / total


@pytest.mark.parametrize("size, sigma, n", [(64, 0, 150), (64, 8, 100), (48, 0, 60), (128, 5, 40)])
def test_reader_accuracy_near_one(size, sigma, n):
    scene_acc, object_acc = _accuracy(size, sigma, n)
    assert object_acc >= 0.99, object_acc
    assert scene_acc >= 0.97, scene_acc


def test_clean_scene_is_read_exactly():
    s = Scene(64, Background("stripes", ("white", "gray"), vertical=True),
              (Obj("star", "yellow", 4, 6, 26, 6.0, "large"), Obj("ring", "purple", 40, 38, 20, 3.0, "medium")))
    dets = read_scene(s.render().image)
    assert [(d.color, d.shape, d.box, d.size_class, d.place) for d in dets] == [
        ("yellow", "star", (4, 6, 30, 32), "large", "top left"),
        ("purple", "ring", (40, 38, 60, 58), "medium", "bottom right"),
    ]
    assert all(d.score == 1.0 for d in dets)
    r = s.render()
    assert np.array_equal(dets[0].mask, r.labels == 0)


def test_ring_with_an_object_seen_through_its_hole():
    # a cyan square behind a green ring shows through the hole: still a ring, not a circle
    s = Scene(64, Background(), (Obj("square", "cyan", 10, 10, 26, 8.0, "large"),
                                 Obj("ring", "green", 13, 13, 20, 2.0, "medium")))
    dets = {d.color: d for d in read_scene(s.render().image)}
    assert dets["green"].shape == "ring" and dets["cyan"].shape == "square"


def test_occluded_shape_is_fitted_with_occluders_as_dont_care():
    # a star partly behind a square keeps its class and its full box
    s = Scene(64, Background("solid", ("beige",)), (Obj("star", "red", 20, 20, 26, 8.0, "large"),
                                                   Obj("square", "green", 36, 20, 16, 2.0, "small")))
    d = {d.color: d for d in read_scene(s.render().image)}["red"]
    assert d.shape == "star" and d.box == (20, 20, 46, 46) and d.visible_box[2] < 46


def test_fit_shape_on_a_bare_mask():
    m = np.zeros((64, 64), bool)
    m[10:30, 5:25] = shape_mask("diamond", 20)
    score, t, x, y = fit_shape(m)
    assert (t.shape, t.size, x, y) == ("diamond", 20, 5, 10) and score == 1.0


def test_compare_reports_missing_extra_presence_and_colour():
    s = Scene(64, Background(), (Obj("circle", "red", 2, 2, 16, 5.0, "small"),
                                 Obj("cross", "green", 40, 40, 20, 4.0, "medium")))
    recoloured = Scene(64, Background(), (Obj("circle", "pink", 2, 2, 16, 5.0, "small"), s.objects[1]))
    m = compare(read_scene(recoloured.render().image), s)
    assert not m.exact and m.presence == 0.5 and m.color_accuracy == 0.5
    assert m.missing == [("red", "circle", "top left")] and m.extra == [("pink", "circle", "top left")]
    m = compare(read_scene(s.render().image), s, keys=KEYS)
    assert m.exact and m.presence == 1.0 and m.color_accuracy == 1.0
    empty = Scene(64, Background(), ())
    assert compare(read_scene(empty.render().image), empty).exact
    with pytest.raises(ValueError, match="canvas"):
        compare([], list(s.objects))


def test_split_components_separates_same_coloured_objects():
    s = Scene(64, Background(), (Obj("circle", "red", 2, 2, 16, 5.0, "small"),
                                 Obj("square", "red", 40, 40, 16, 4.0, "small")))
    img = s.render().image
    assert len(read_scene(img)) == 1
    dets = read_scene(img, split_components=True)
    assert sorted(d.shape for d in dets) == ["circle", "square"]


def test_read_background_and_input_forms():
    s = Scene(64, Background("checker", ("black", "beige"), period=8), (Obj("circle", "red", 2, 2, 16, 5.0, "small"),))
    img = s.render().image
    assert read_background(img) == ["black", "beige"]
    from PIL import Image

    assert [d.name for d in read_scene(Image.fromarray(img))] == ["red circle"]
    assert [d.name for d in read_scene(img.astype(np.float32) / 255.0)] == ["red circle"]
    with pytest.raises(ValueError, match="image"):
        read_scene(np.zeros((4, 4)))
