import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionInstructPix2PixPipeline

from editkit.correctors import StepCorrector
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components, tiny_unet


@pytest.fixture(scope="module")
def comps():
    return tiny_instructcv_components(seed=0)


@pytest.fixture(scope="module")
def pipe(comps):
    p = InstructCVPipeline(**comps)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def ref(comps):
    p = StableDiffusionInstructPix2PixPipeline(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def _image(h=32, w=48, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "kw",
    [
        {"guidance_scale": 7.5, "image_guidance_scale": 1.5, "num_inference_steps": 3},
        {"guidance_scale": 3.0, "image_guidance_scale": 1.2, "num_inference_steps": 2},
        {"guidance_scale": 7.5, "image_guidance_scale": 1.5, "num_inference_steps": 2, "num_images_per_prompt": 2},
        {"guidance_scale": 1.0, "image_guidance_scale": 1.0, "num_inference_steps": 2},
    ],
)
def test_equals_diffusers_instruct_pix2pix(pipe, ref, kw):
    img = _image()
    want = ref("make it red", image=img, generator=_gen(), output_type="np", **kw).images
    got = pipe("make it red", image=img, generator=_gen(), output_type="np", **kw).images
    assert got.shape == want.shape == (kw.get("num_images_per_prompt", 1), 32, 48, 3)
    assert np.abs(got - want).max() <= 1e-5


def test_equals_diffusers_with_a_batch_of_prompts_and_another_scheduler(comps, ref):
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ours = InstructCVPipeline(**{**comps, "scheduler": ddim})
    theirs = StableDiffusionInstructPix2PixPipeline(**{**comps, "scheduler": ddim}, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    prompts, images = ["make it red", "segment the circle"], [_image(seed=1), _image(seed=2)]
    want = theirs(prompts, image=images, num_inference_steps=3, generator=_gen(3), output_type="np").images
    got = ours(prompts, image=images, num_inference_steps=3, generator=_gen(3), output_type="np").images
    assert np.abs(got - want).max() <= 1e-5


def test_one_backbone_forward_per_step(pipe, comps):
    calls = []
    handle = comps["unet"].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        pipe("x", image=_image(), num_inference_steps=4, generator=_gen(), output_type="latent")
        pipe("x", image=_image(), num_inference_steps=3, guidance_scale=4.0, image_guidance_scale=1.0, generator=_gen(), output_type="latent")
    finally:
        handle.remove()
    # 3 branches batched for IP2P; 2 when the image scale is 1 (the uncond branch has weight 0)
    assert calls == [3] * 4 + [2] * 3


@pytest.mark.parametrize("size", [(40, 72), (72, 40), (30, 50)])
def test_output_keeps_input_size_and_aspect(pipe, size):
    h, w = size
    out = pipe("x", image=_image(h, w), num_inference_steps=1, generator=_gen()).images[0]
    assert out.size == (w, h)


def test_max_side_and_requested_size(pipe, comps):
    seen = []
    handle = comps["unet"].register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape[-2:])))
    try:
        out = pipe("x", image=_image(64, 128), max_side=32, num_inference_steps=1, generator=_gen()).images[0]
        out2 = pipe("x", image=_image(64, 128), height=20, width=60, num_inference_steps=1, generator=_gen(), output_type="np").images
    finally:
        handle.remove()
    assert out.size == (128, 64)  # returned at the input's size
    assert seen[0] == (8, 16)  # worked at 16x32 pixels: latents 8x16 (VAE factor 2)
    assert out2.shape == (1, 20, 60, 3)


def test_output_types(pipe):
    kw = dict(prompt="x", image=_image(), num_inference_steps=1)
    assert isinstance(pipe(**kw, generator=_gen()).images[0], PIL.Image.Image)
    np_out = pipe(**kw, generator=_gen(), output_type="np").images
    pt_out = pipe(**kw, generator=_gen(), output_type="pt").images
    lat = pipe(**kw, generator=_gen(), output_type="latent").images
    assert np_out.shape == (1, 32, 48, 3) and pt_out.shape == (1, 3, 32, 48) and lat.shape == (1, 4, 16, 24)
    np.testing.assert_allclose(pt_out.permute(0, 2, 3, 1).numpy(), np_out, atol=0)
    assert 0.0 <= np_out.min() and np_out.max() <= 1.0
    with pytest.raises(ValueError, match="`output_type` must be one of"):
        pipe(**kw, output_type="jpeg")


def test_seeded_runs_repeat_and_seeds_differ(pipe):
    a = pipe("x", image=_image(), num_inference_steps=2, generator=_gen(5), output_type="np").images
    b = pipe("x", image=_image(), num_inference_steps=2, generator=_gen(5), output_type="np").images
    c = pipe("x", image=_image(), num_inference_steps=2, generator=_gen(6), output_type="np").images
    assert np.array_equal(a, b) and np.abs(a - c).max() > 1e-3


def test_batch_of_images_for_one_prompt_and_mismatch_errors(pipe):
    out = pipe("x", image=[_image(seed=1), _image(seed=2), _image(seed=3)], num_inference_steps=1, generator=_gen(), output_type="np").images
    assert out.shape[0] == 3
    with pytest.raises(ValueError, match="3 prompts and 2 images"):
        pipe(["a", "b", "c"], image=[_image(), _image()], num_inference_steps=1)
    with pytest.raises(ValueError, match="one working size"):
        pipe("x", image=[_image(32, 48), _image(48, 32)], num_inference_steps=1)
    with pytest.raises(ValueError, match=r"`prompt`\[0\] is empty"):
        pipe("", image=_image(), num_inference_steps=1)


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(pipe):
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, kw["latents"].shape))
        return {"latents": torch.zeros_like(kw["latents"])} if i == 1 else {}

    out = pipe("x", image=_image(), num_inference_steps=2, generator=_gen(), output_type="latent", callback_on_step_end=cb).images
    assert [s[0] for s in seen] == [0, 1] and seen[0][1] == (1, 4, 16, 24)
    assert out.abs().max() == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe("x", image=_image(), num_inference_steps=1, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["noise"])


def test_mask_keeps_pixels_outside(pipe):
    img = _image()
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[:, :24] = 255
    out = pipe("x", image=img, mask=PIL.Image.fromarray(mask), num_inference_steps=1, generator=_gen(), output_type="np").images[0]
    src = np.asarray(img, dtype=np.float32) / 255.0
    np.testing.assert_allclose(out[:, 24:], src[:, 24:], atol=1e-6)
    assert np.abs(out[:, :24] - src[:, :24]).mean() > 0.01


def test_correctors_see_each_step_and_shape_the_result(pipe):
    class Shift(StepCorrector):
        def __init__(self):
            self.steps = []

        def before_model(self, state):
            self.steps.append(state.step)
            assert state.source.shape == (1, 3, 32, 48)
            eps = state.predict_noise(state.latents)
            assert eps.shape == state.latents.shape
            assert state.decode(state.latents).shape == (1, 3, 32, 48)
            return state.latents + 0.5

        def after_model(self, state, model_latents, noise_pred):
            assert torch.allclose(model_latents, state.latents + 0.5)
            return noise_pred

    shift = Shift()
    base = pipe("x", image=_image(), num_inference_steps=3, generator=_gen(), output_type="np").images
    moved = pipe("x", image=_image(), num_inference_steps=3, generator=_gen(), output_type="np", correctors=[shift]).images
    assert shift.steps == [0, 1, 2]
    assert np.abs(base - moved).max() > 1e-3


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    loaded = InstructCVPipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    a = pipe("x", image=_image(), num_inference_steps=2, generator=_gen(), output_type="np").images
    b = loaded("x", image=_image(), num_inference_steps=2, generator=_gen(), output_type="np").images
    assert np.array_equal(a, b)


def test_loads_a_diffusers_instruct_pix2pix_folder(ref, pipe, tmp_path):
    # the layout of alaa-lab/InstructCV and timbrooks/instruct-pix2pix
    ref.save_pretrained(tmp_path / "ip2p")
    assert json.loads((tmp_path / "ip2p" / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    loaded = InstructCVPipeline.from_pretrained(tmp_path / "ip2p")
    loaded.set_progress_bar_config(disable=True)
    a = pipe("x", image=_image(), num_inference_steps=2, generator=_gen(), output_type="np").images
    b = loaded("x", image=_image(), num_inference_steps=2, generator=_gen(), output_type="np").images
    assert np.array_equal(a, b)


def test_missing_component_and_wrong_unet_are_explained(pipe, comps, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    import shutil

    shutil.rmtree(tmp_path / "m" / "unet")
    with pytest.raises(ValueError, match=r"missing component\(s\) \['unet'\]"):
        InstructCVPipeline.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="no model_index.json"):
        InstructCVPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs a UNet with 8 input channels"):
        InstructCVPipeline(**{**comps, "unet": tiny_unet(in_channels=4)})


def test_any_scheduler_runs(comps):
    p = InstructCVPipeline(**{**comps, "scheduler": DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")})
    p.set_progress_bar_config(disable=True)
    out = p("x", image=_image(), num_inference_steps=3, generator=_gen(), output_type="np").images
    assert out.shape == (1, 32, 48, 3) and np.isfinite(out).all()


def test_run_task_decodes_each_task(pipe):
    from editkit.tasks import COLORS

    img = _image(32, 48)
    masks = pipe.run_task("segment", img, ["circle", "square"], num_inference_steps=1, generator=_gen())
    assert [r.prompt for r in masks] == ["Segment the circle.", "Segment the square."]
    assert all(r.value.dtype == bool and r.value.shape == (32, 48) for r in masks)
    boxes = pipe.run_task("detection", img, "circle", num_inference_steps=1, generator=_gen()).value
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    depth = pipe.run_task("depth", img, num_inference_steps=1, generator=_gen()).value
    assert depth.shape == (32, 48) and depth.min() >= 0.0 and depth.max() <= 10.0
    answer = pipe.run_task("classify", img, "circle", num_inference_steps=1, generator=_gen())
    assert answer.value in COLORS and "red" in answer.prompt and "green" in answer.prompt
    with pytest.raises(ValueError, match="needs a `label`"):
        pipe.run_task("segment", img)
    with pytest.raises(ValueError, match="task"):
        pipe.run_task("paint", img, "x")


def test_default_scales_travel_with_the_model(comps, pipe, tmp_path):
    tuned = InstructCVPipeline(**comps, guidance_scale=3.0, image_guidance_scale=1.2)
    tuned.save_pretrained(tmp_path / "tuned")
    loaded = InstructCVPipeline.from_pretrained(tmp_path / "tuned")
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.config.guidance_scale, loaded.config.image_guidance_scale) == (3.0, 1.2)
    run = lambda p, **kw: p("x", image=_image(), num_inference_steps=2, generator=_gen(), output_type="np", **kw).images  # noqa: E731
    assert np.array_equal(run(loaded), run(pipe, guidance_scale=3.0, image_guidance_scale=1.2))
    assert not np.allclose(run(loaded), run(pipe))  # the official 7.5 / 1.5 differ
    assert (pipe.config.guidance_scale, pipe.config.image_guidance_scale) == (7.5, 1.5)
