import io

import numpy as np
import PIL.Image
import pytest
import torch

from editkit.conditioning import EditRequest
from editkit.images import load_image, load_mask, plan_size


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "I;16", "I", "F", "CMYK", "RGB"])
def test_every_mode_becomes_rgb(mode):
    base = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 13, 3), dtype=np.uint8))
    if mode == "I;16":
        img = PIL.Image.fromarray((np.arange(9 * 13, dtype=np.uint16).reshape(9, 13) * 500))
    else:
        img = base.convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (13, 9)


def test_rgba_is_composited_on_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[:2, :, 3] = 255  # top half opaque red, bottom transparent
    out = np.asarray(load_image(PIL.Image.fromarray(arr, "RGBA")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[3, 3].tolist() == [255, 255, 255]


def test_16bit_scales_to_8bit():
    img = PIL.Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    assert np.asarray(load_image(img)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = PIL.Image.new("RGB", (20, 10), (10, 200, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (10, 20)


def test_bad_inputs_give_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"`image` .* not a readable image"):
        load_image(text)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="zero size"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="pixels, more than the limit"):
        load_image(PIL.Image.new("RGB", (200, 200)), max_pixels=100 * 100)
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        load_image(np.full((4, 4, 3), 3.0, dtype=np.float32))
    with pytest.raises(TypeError, match="must be a file path"):
        load_image(42)
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((5, 5, 7), dtype=np.uint8))


def test_huge_file_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    PIL.Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ValueError, match="limit"):
        load_image(path, max_pixels=1_000_000)


def test_tensor_and_array_inputs():
    t = torch.rand(3, 6, 8)
    assert load_image(t).size == (8, 6)
    assert load_image(np.ones((6, 8), dtype=bool)).getpixel((0, 0)) == (255, 255, 255)


def test_mask_must_match_the_image():
    m = load_mask(PIL.Image.fromarray(np.array([[0, 200], [90, 255]], dtype=np.uint8)), (2, 2))
    assert np.asarray(m).tolist() == [[0, 255], [0, 255]]
    with pytest.raises(ValueError, match="`mask` is 3x3 but the image is 2x2"):
        load_mask(PIL.Image.new("L", (3, 3)), (2, 2))


@pytest.mark.parametrize(
    "size,kw,want",
    [
        ((640, 480), {}, (512, 384, 640, 480)),  # long side bounded, aspect kept
        ((64, 64), {}, (64, 64, 64, 64)),  # small inputs are not upscaled
        ((100, 30), {}, (128, 64, 100, 30)),  # rounded to the multiple
        ((640, 480), {"height": 240}, (320, 256, 320, 240)),  # one side given
        ((640, 480), {"height": 100, "width": 300}, (320, 128, 300, 100)),
        ((2000, 1000), {"max_side": 256}, (256, 128, 2000, 1000)),
    ],
)
def test_plan_size(size, kw, want):
    kw = {"max_side": 512, **kw}
    p = plan_size(size, 64, **kw)
    assert (p.work_width, p.work_height, p.out_width, p.out_height) == want
    assert p.work_width % 64 == 0 and p.work_height % 64 == 0
    assert max(p.work_width, p.work_height) <= kw["max_side"]


def test_plan_size_rejects_bad_numbers():
    with pytest.raises(ValueError, match="`height` must be a positive integer"):
        plan_size((10, 10), 8, height=0)
    with pytest.raises(ValueError, match="`max_side`"):
        plan_size((10, 10), 8, max_side=-3)


def test_request_validation():
    img = PIL.Image.new("RGBA", (8, 6))
    req = EditRequest("make it snowy", image=img).validated()
    assert req.image.mode == "RGB"
    with pytest.raises(ValueError, match="`instruction` is empty"):
        EditRequest("  ", image=img).validated()
    with pytest.raises(ValueError, match="`mask` was given without an `image`"):
        EditRequest("x", mask=img).validated()
    with pytest.raises(ValueError, match="no text"):
        EditRequest([img], image=img).validated()
    inter = EditRequest(["combine", img, "with", img]).validated()
    assert len(inter.interleaved_images) == 2
    buf = io.BytesIO()
    with pytest.raises(TypeError, match="`instruction` must be a string"):
        EditRequest(buf).validated()
