"""Property-based tests: odd inputs to the one validation layer, the InstructCV pipeline and the CLI.

Every input either gets a clear ValueError/TypeError naming the argument, or is
handled as documented in editkit/validation.py. `TRIED` counts the inputs tried;
the last test prints the total.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from editkit import cli
from editkit.conditioning import EditRequest
from editkit.images import MAX_PIXELS, load_image, load_mask, plan_size
from editkit.pipeline_utils import broadcast_batch
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components
from editkit.validation import MAX_INSTRUCTION_CHARS, check_sampling_args, check_text, parse_interleaved

TRIED: Counter = Counter()
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr"]
ORIENT = {  # EXIF orientation -> the same transform on an (H, W, C) array
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _image(mode: str, w: int, h: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return PIL.Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16), "I;16")
    if mode == "I":
        return PIL.Image.fromarray(rng.integers(-5, 70000, (h, w), dtype=np.int32), "I")
    if mode == "F":
        return PIL.Image.fromarray(rng.random((h, w), dtype=np.float32), "F")
    rgba = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return rgba.convert("RGB").convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    return rgba.convert(mode)


def _check_rgb(img: PIL.Image.Image, size: tuple[int, int]) -> None:
    assert isinstance(img, PIL.Image.Image) and img.mode == "RGB" and img.size == size


# ----------------------------------------------------------------------------- images


@FAST
@given(
    mode=st.sampled_from(MODES),
    w=st.integers(1, 48),
    h=st.integers(1, 48),
    orientation=st.integers(1, 8),
    as_file=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_mode_size_and_orientation_loads_as_upright_rgb(tmp_path_factory, mode, w, h, orientation, as_file, seed):
    TRIED["image modes/orientations"] += 1
    img = _image(mode, w, h, seed)
    expected = np.asarray(load_image(img.copy()))  # the unrotated RGB conversion
    img.getexif()[0x0112] = orientation
    value = img
    if as_file:
        fmt = "TIFF" if mode in ("CMYK", "YCbCr", "F", "I") else "PNG"
        path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
        if mode == "YCbCr":  # only JPEG stores YCbCr; store RGB with the same EXIF instead
            img = img.convert("RGB")
            img.getexif()[0x0112] = orientation
            expected = np.asarray(img)
        img.save(path, format=fmt, exif=img.getexif())
        value = path
        if mode == "YCbCr":
            expected = np.asarray(load_image(img.copy()))
    out = load_image(value)
    upright = ORIENT[orientation](expected)
    _check_rgb(out, (upright.shape[1], upright.shape[0]))
    np.testing.assert_array_equal(np.asarray(out), upright)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_uncompressed_tiff_is_rotated_like_any_other_file(tmp_path, mode):
    # found by the property test above: Pillow memory-maps uncompressed TIFFs of these modes and then
    # skips the EXIF rotation it applies to other TIFFs; load_image must give one answer for all
    img = _image(mode, 3, 2, seed=1)
    expected = np.rot90(np.asarray(load_image(img.copy())), -1)
    img.getexif()[0x0112] = 6
    img.save(tmp_path / "x.tiff", format="TIFF", exif=img.getexif())
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "x.tiff")), expected)


def test_mode_conversions_keep_values():
    grey = PIL.Image.new("L", (3, 2), 77)
    assert np.asarray(load_image(grey)).tolist() == [[[77] * 3] * 3] * 2
    deep = PIL.Image.fromarray(np.full((2, 2), 65535, np.uint16), "I;16")
    assert (np.asarray(load_image(deep)) == 255).all()
    clear = PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # transparent composites on white
    assert (np.asarray(load_image(clear)) == 255).all()
    cmyk = PIL.Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert (np.asarray(load_image(cmyk)) == 255).all()


@FAST
@given(
    shape=st.sampled_from([(8, 8), (8, 8, 3), (3, 8, 8), (8, 8, 4), (1, 8, 8), (8, 8, 1), (8,), (2, 8, 8, 3), (8, 8, 5), (5, 8, 8)]),
    dtype=st.sampled_from(["uint8", "uint16", "bool", "float32", "float64", "int64", "complex64"]),
    poison=st.sampled_from([None, math.nan, math.inf, -math.inf, -0.5, 1.5]),
    as_tensor=st.booleans(),
)
def test_arrays_and_tensors_are_accepted_or_refused_by_name(shape, dtype, poison, as_tensor):
    TRIED["arrays/tensors (NaN, inf, ranges, shapes, dtypes)"] += 1
    arr = np.full(shape, 0.5 if dtype.startswith("float") or dtype == "complex64" else 1).astype(dtype)
    if poison is not None and arr.dtype.kind == "f":
        arr.flat[arr.size // 2] = poison
    value = arr
    if as_tensor:
        value = torch.from_numpy(arr)
    bad_shape = len(shape) not in (2, 3) and not (as_tensor and len(shape) == 4 and shape[0] == 1)
    bad_shape = bad_shape or (len(shape) == 3 and shape[-1] not in (1, 3, 4) and shape[0] not in (1, 3, 4))
    if as_tensor and len(shape) == 4:
        bad_shape = True  # a batch of two is not one image
    bad_values = arr.dtype.kind == "f" and poison is not None
    bad_dtype = dtype in ("int64", "complex64") or (as_tensor and dtype == "uint16")
    if bad_shape or bad_values or bad_dtype:
        with pytest.raises((TypeError, ValueError), match="`source`"):
            load_image(value, "source")
        return
    out = load_image(value, "source")
    assert out.mode == "RGB" and max(out.size) == 8


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (and holds almost no data): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@FAST
@given(w=st.integers(1, 2**31 - 1), h=st.integers(1, 2**31 - 1))
def test_huge_images_are_refused_before_decoding(tmp_path_factory, w, h):
    assume(w * h > MAX_PIXELS)
    TRIED["huge image files"] += 1
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(_png_header(w, h))
    with pytest.raises(ValueError, match=r"`image`.*(more than the limit|too large)"):
        load_image(path)


def test_unreadable_and_missing_files_name_the_argument(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    with pytest.raises(ValueError, match="`mask`.*not a readable image"):
        load_image(tmp_path / "junk.png", "mask")
    with pytest.raises(FileNotFoundError, match="`image`"):
        load_image(tmp_path / "nope.png")
    for bad in (None, 3, b"bytes", [1, 2]):
        with pytest.raises(TypeError, match="`image` must be a file path"):
            load_image(bad)


@FAST
@given(
    w=st.integers(1, 5000),
    h=st.integers(1, 5000),
    multiple=st.sampled_from([1, 8, 16, 32, 64]),
    height=st.one_of(st.none(), st.integers(-4, 3000)),
    width=st.one_of(st.none(), st.integers(-4, 3000)),
    max_side=st.one_of(st.none(), st.integers(1, 2048)),
)
def test_plan_size_is_a_valid_plan_or_a_named_error(w, h, multiple, height, width, max_side):
    TRIED["sizes (1x1 .. 5000x5000, VAE multiples)"] += 1
    if (height is not None and height <= 0) or (width is not None and width <= 0):
        with pytest.raises(ValueError, match="`(height|width)` must be a positive integer"):
            plan_size((w, h), multiple, height, width, max_side)
        return
    plan = plan_size((w, h), multiple, height, width, max_side)
    assert plan.work_width % multiple == 0 and plan.work_height % multiple == 0
    assert plan.work_width >= multiple and plan.work_height >= multiple
    if max_side is not None:
        assert max(plan.work_width, plan.work_height) <= max(max_side, multiple)
    assert plan.out_width == (width if width is not None else (w if height is None else plan.out_width))
    assert plan.out_height == (height if height is not None else (h if width is None else plan.out_height))
    assert plan.out_width >= 1 and plan.out_height >= 1


@FAST
@given(iw=st.integers(1, 40), ih=st.integers(1, 40), mw=st.integers(1, 40), mh=st.integers(1, 40), mode=st.sampled_from(["1", "L", "LA", "RGB", "RGBA", "I;16"]))
def test_masks_must_match_the_image(iw, ih, mw, mh, mode):
    TRIED["masks (sizes, modes)"] += 1
    mask = _image(mode, mw, mh, seed=mw * 41 + mh)
    if (mw, mh) != (iw, ih):
        with pytest.raises(ValueError, match=rf"`mask` is {mw}x{mh} but the image is {iw}x{ih}"):
            load_mask(mask, (iw, ih))
        return
    out = load_mask(mask, (iw, ih))
    assert out.mode == "L" and out.size == (iw, ih) and set(np.unique(np.asarray(out))) <= {0, 255}


# ----------------------------------------------------------------------------- text and requests


@FAST
@given(text=st.one_of(st.text(max_size=60), st.just(""), st.just("   \n\t"), st.integers(4090, 5000).map(lambda n: "a" * n), st.just("cat\x00dog")))
def test_instructions_are_text_nonblank_and_bounded(text):
    TRIED["instructions (unicode, blank, huge, NUL)"] += 1
    if "\x00" in text or not text.strip() or len(text) > MAX_INSTRUCTION_CHARS:
        with pytest.raises(ValueError, match="`instruction`"):
            EditRequest(text).validated()
        return
    assert EditRequest(text).validated().instruction == text


@FAST
@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=5), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)))
def test_non_text_instructions_are_type_errors(value):
    TRIED["non-text instructions"] += 1
    with pytest.raises(TypeError, match="`instruction` must be"):
        EditRequest(value).validated()
    with pytest.raises(TypeError, match="`prompt`"):
        broadcast_batch(value, PIL.Image.new("RGB", (4, 4)))


@FAST
@given(n_prompts=st.integers(0, 4), n_images=st.integers(0, 4))
def test_batch_lengths_pair_up_or_fail_naming_both(n_prompts, n_images):
    TRIED["batch length combinations"] += 1
    prompts = [f"edit {i}" for i in range(n_prompts)]
    images = [PIL.Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(n_images)]
    if n_prompts == 0:
        with pytest.raises(ValueError, match="`prompt` is an empty list"):
            broadcast_batch(prompts, images)
    elif n_images == 0:
        with pytest.raises(ValueError, match="`image` is an empty list"):
            broadcast_batch(prompts, images)
    elif n_prompts == n_images or 1 in (n_prompts, n_images):
        p, i = broadcast_batch(prompts, images)
        assert len(p) == len(i) == max(n_prompts, n_images)
    else:
        with pytest.raises(ValueError, match=f"{n_prompts} prompts and {n_images} images"):
            broadcast_batch(prompts, images)


@FAST
@given(tags=st.lists(st.integers(0, 6), max_size=4), n_refs=st.integers(0, 4), words=st.lists(st.sampled_from(["put", "on", "the", "cat"]), min_size=1, max_size=5))
def test_interleaved_image_tags_must_match_the_references(tags, n_refs, words):
    TRIED["interleaved prompts (tags vs references)"] += 1
    text = " ".join(words) + "".join(f" <image{k}> and" for k in tags)
    refs = [PIL.Image.new("RGB", (4, 4), (k * 40, 0, 0)) for k in range(n_refs)]
    if any(not 1 <= k <= n_refs for k in tags):
        bad = next(k for k in tags if not 1 <= k <= n_refs)
        with pytest.raises(ValueError, match=rf"`instruction` refers to <image{bad}>, but {n_refs} reference"):
            parse_interleaved(text, refs)
        with pytest.raises(ValueError, match=rf"<image{bad}>"):
            EditRequest(text, references=refs).validated()
        return
    parts = parse_interleaved(text, refs)
    assert [p for p in parts if not isinstance(p, str)] == [refs[k - 1] for k in tags]
    assert "".join(p for p in parts if isinstance(p, str)).startswith(" ".join(words))
    req = EditRequest(text, references=refs).validated()
    assert len(req.references) == n_refs


def test_interleaved_lists_and_other_fields():
    img = PIL.Image.new("RGB", (4, 4))
    assert len(EditRequest(["a", img, ""]).validated().interleaved_images) == 1
    with pytest.raises(ValueError, match="has no text"):
        EditRequest([img, " "]).validated()
    with pytest.raises(ValueError, match=r"`instruction\[1\]`.*NaN"):
        EditRequest(["a", np.full((4, 4), np.nan)]).validated()
    with pytest.raises(TypeError, match="`references` must be a list"):
        EditRequest("a", references=img).validated()
    with pytest.raises(TypeError, match="`auxiliary_prompt` must be a string"):
        EditRequest("a", image=img, auxiliary_prompt=3).validated()
    with pytest.raises(ValueError, match="`auxiliary_prompt` is empty"):
        EditRequest("a", image=img, auxiliary_prompt="  ").validated()
    with pytest.raises(ValueError, match="`mask` was given without an `image`"):
        EditRequest("a", mask=img).validated()
    assert check_text("", "label", allow_empty=True) == ""
    with pytest.raises(ValueError, match=r"`label` has 5 characters; at most 4"):
        check_text("abcde", "label", max_chars=4)


@FAST
@given(
    steps=st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.booleans(), st.none()),
    per_prompt=st.one_of(st.integers(-1, 70), st.just(2.0)),
    scale=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=2)),
)
def test_sampling_numbers(steps, per_prompt, scale):
    TRIED["sampling numbers (steps, scales)"] += 1
    ok_steps = isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1
    ok_per = isinstance(per_prompt, int) and 1 <= per_prompt <= 64
    ok_scale = isinstance(scale, (int, float)) and math.isfinite(scale)
    if ok_steps and ok_per and ok_scale:
        check_sampling_args(steps, per_prompt, guidance_scale=scale)
        return
    name = "num_inference_steps" if not ok_steps else "num_images_per_prompt" if not ok_per else "guidance_scale"
    with pytest.raises((TypeError, ValueError), match=f"`{name}`"):
        check_sampling_args(steps, per_prompt, guidance_scale=scale)


# ----------------------------------------------------------------------------- the InstructCV pipeline


@pytest.fixture(scope="module")
def pipe(one_torch_thread):
    p = InstructCVPipeline(**tiny_instructcv_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p


@SLOW
@given(mode=st.sampled_from(MODES), w=st.integers(1, 40), h=st.integers(1, 40), orientation=st.sampled_from([1, 6]))
def test_pipeline_returns_the_input_size_for_any_mode_and_odd_size(pipe, mode, w, h, orientation):
    TRIED["pipeline: modes x odd sizes"] += 1
    img = _image(mode, w, h, seed=w + 100 * h)
    img.getexif()[0x0112] = orientation
    out = pipe("edit", image=img, num_inference_steps=1, max_side=32, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == ((h, w) if orientation == 6 else (w, h))  # non-multiples of 8 come back at their own size
    assert np.isfinite(np.asarray(out, dtype=np.float32)).all()


@settings(SLOW, max_examples=30)  # fails before the model runs: every case is tried
@given(
    case=st.sampled_from(["nan_latents", "inf_latents", "int_latents", "shape_latents", "nan_image", "nan_scale", "steps0", "steps_float", "neg_prompts", "mask_size", "empty", "huge", "pairs", "output"]),
)
def test_pipeline_refuses_bad_arguments_by_name(pipe, case):
    TRIED["pipeline: bad arguments"] += 1
    img = PIL.Image.new("RGB", (16, 16), (120, 30, 30))
    lat = torch.zeros(1, 4, 4, 4)
    kw: dict = {"prompt": "x", "image": img, "num_inference_steps": 1}
    name = {
        "nan_latents": "latents", "inf_latents": "latents", "int_latents": "latents", "shape_latents": "latents",
        "nan_image": "image", "nan_scale": "guidance_scale", "steps0": "num_inference_steps", "steps_float": "num_inference_steps",
        "neg_prompts": "negative_prompt", "mask_size": "mask", "empty": "prompt", "huge": "prompt", "pairs": "prompts", "output": "output_type",
    }[case]
    kw.update(
        {
            "nan_latents": {"latents": lat.index_fill(1, torch.tensor([0]), math.nan)},
            "inf_latents": {"latents": lat.index_fill(1, torch.tensor([0]), math.inf)},
            "int_latents": {"latents": lat.long()},
            "shape_latents": {"latents": torch.zeros(1, 4, 5, 4)},
            "nan_image": {"image": torch.full((3, 16, 16), math.nan)},
            "nan_scale": {"guidance_scale": math.nan},
            "steps0": {"num_inference_steps": 0},
            "steps_float": {"num_inference_steps": 2.5},
            "neg_prompts": {"negative_prompt": ["a", "b"]},
            "mask_size": {"mask": PIL.Image.new("L", (8, 16))},
            "empty": {"prompt": ["ok", " "]},
            "huge": {"prompt": "z" * (MAX_INSTRUCTION_CHARS + 1)},
            "pairs": {"prompt": ["a", "b", "c"], "image": [img, img]},
            "output": {"output_type": "jpeg"},
        }[case]
    )
    with pytest.raises((ValueError, TypeError), match=name):
        pipe(**kw)


def test_edit_request_path_through_the_pipeline(pipe):
    img = PIL.Image.new("LA", (13, 7), (90, 128))
    out = pipe.edit(EditRequest("make it red", image=img), num_inference_steps=1).images[0]
    assert out.size == (13, 7)
    with pytest.raises(ValueError, match="interleaved"):
        pipe.edit(EditRequest(["a", img], image=img), num_inference_steps=1)
    with pytest.raises(ValueError, match="does not take \\['references'\\]"):
        pipe.edit(EditRequest("a", image=img, references=[img]), num_inference_steps=1)


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    InstructCVPipeline(**tiny_instructcv_components(seed=0)).save_pretrained(path)
    return path


@settings(SLOW, max_examples=30)
@given(
    case=st.sampled_from(["blank", "huge", "nul", "steps0", "nan_guidance", "max_side0", "mask_size", "missing", "junk", "bomb", "neg_seed"]),
)
def test_cli_refuses_bad_input_before_loading_any_model(tmp_path_factory, capsys, case):
    """The model path does not exist: an error about the argument proves the check ran first."""
    TRIED["CLI: bad arguments"] += 1
    d = tmp_path_factory.mktemp("cli")
    PIL.Image.new("RGB", (20, 12)).save(d / "in.png")
    (d / "junk.png").write_bytes(b"nope")
    (d / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    PIL.Image.new("L", (5, 5)).save(d / "small_mask.png")
    args = ["edit", str(d / "in.png"), "make it red", "-o", str(d / "out.png"), "--model", str(d / "no-model")]
    name = {"blank": "instruction", "huge": "instruction", "nul": "instruction", "steps0": "--steps", "nan_guidance": "--guidance",
            "max_side0": "--max-side", "mask_size": "mask", "missing": "image", "junk": "image", "bomb": "image", "neg_seed": "--seed"}[case]
    if case in ("blank", "huge", "nul"):
        args[2] = {"blank": "  ", "huge": "x" * (MAX_INSTRUCTION_CHARS + 5), "nul": "a\x00b"}[case]
    elif case in ("missing", "junk", "bomb"):
        args[1] = str(d / {"missing": "gone.png", "junk": "junk.png", "bomb": "bomb.png"}[case])
    else:
        args += {"steps0": ["--steps", "0"], "nan_guidance": ["--guidance", "nan"], "max_side0": ["--max-side", "0"],
                 "mask_size": ["--mask", str(d / "small_mask.png")], "neg_seed": ["--seed", "-1"]}[case]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"`{name}`" in err and "no-model" not in err, err
    assert not (d / "out.png").exists()


def test_cli_good_odd_input_runs(model_dir, tmp_path, capsys):
    img = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (7, 13, 4), dtype=np.uint8), "RGBA").convert("CMYK")
    img.save(tmp_path / "in.tiff")
    assert cli.main(["edit", str(tmp_path / "in.tiff"), "make it red", "-o", str(tmp_path / "o.png"), "--model", str(model_dir), "--steps", "1"]) == 0
    assert PIL.Image.open(tmp_path / "o.png").size == (13, 7)
    TRIED["CLI: odd but valid input"] += 1


def test_zz_report_inputs_tried(capsys):
    total = sum(TRIED.values())
    with capsys.disabled():
        print(f"\n[validation] inputs tried: {total} " + ", ".join(f"{k}={v}" for k, v in TRIED.items()))
    assert total >= 300, TRIED
