"""diffusers-style pipeline conformance for all five pipelines, on CPU with the shipped tiny models.

Written for editkit after diffusers' own `PipelineTesterMixin`: save/load round trip (plain, variant,
dtype map), batch vs single, num_images_per_prompt, output types, determinism, reduced precision.
"""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from editkit.loading import default_model, load_pipeline

METHODS = ["instructcv", "promptfix", "pixwizard", "unic", "dream"]
STEPS = 2
# a run's only random draws come from its generator; these extras keep it deterministic where a method
# has a random option on by default (PromptFix's HGS is deterministic but slow: off keeps the suite short)
EXTRA = {"promptfix": {"hgs_mode": "off"}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=METHODS)
def pipe(request):
    p = load_pipeline(request.param, str(default_model(request.param)), "cpu", "fp32")
    p.set_progress_bar_config(disable=True)
    p.method = request.param
    return p


def _image(seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def _call(pipe, prompts: list[str], images: list[PIL.Image.Image], seeds: list[int], **kw):
    generator = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompt=prompts if len(prompts) > 1 else prompts[0], image=images if len(images) > 1 else images[0],
                num_inference_steps=STEPS, generator=generator if len(generator) > 1 else generator[0],
                **EXTRA.get(pipe.method, {}), **kw).images


def test_same_seed_same_output_and_output_types(pipe):
    args = (["make it red"], [_image(0)], [0])
    a = _call(pipe, *args, output_type="np")
    assert np.array_equal(a, _call(pipe, *args, output_type="np"))  # determinism
    assert a.shape == (1, 40, 48, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    pt = _call(pipe, *args, output_type="pt")
    assert tuple(pt.shape) == (1, 3, 40, 48) and np.allclose(pt.permute(0, 2, 3, 1).numpy(), a, atol=1e-6)
    pil = _call(pipe, *args, output_type="pil")
    assert len(pil) == 1 and pil[0].size == (48, 40) and pil[0].mode == "RGB"
    latent = _call(pipe, *args, output_type="latent")
    assert latent.dim() == 4 and latent.shape[0] == 1 and latent.shape[1] == pipe.vae.config.latent_channels
    with pytest.raises(ValueError, match="output_type"):
        _call(pipe, *args, output_type="jpeg")


def test_num_images_per_prompt(pipe):
    out = _call(pipe, ["make it red", "make it blue"], [_image(0)], [0], num_images_per_prompt=2, output_type="np")
    assert out.shape == (4, 40, 48, 3)
    assert np.abs(out[0] - out[1]).max() > 1e-4  # two samples of one prompt are different draws


@pytest.mark.parametrize("other", ["a longer instruction: make the whole picture very blue and bright", "make it red"])
def test_each_sample_of_a_batch_is_what_it_is_alone(pipe, other):
    alone = _call(pipe, ["make it green"], [_image(0)], [0], output_type="np")
    batch = _call(pipe, ["make it green", other], [_image(0), _image(1)], [0, 1], output_type="np")
    assert np.abs(batch[0] - alone[0]).max() <= 1e-4


def test_save_load_round_trip_plain_variant_and_dtype_map(pipe, tmp_path: Path):
    args = (["make it red"], [_image(0)], [0])
    ref = _call(pipe, *args, output_type="np")
    pipe.save_pretrained(tmp_path / "plain", safe_serialization=True)
    again = type(pipe).from_pretrained(tmp_path / "plain")
    again.method = pipe.method
    assert np.array_equal(_call(again, *args, output_type="np"), ref)
    pipe.save_pretrained(tmp_path / "variant", safe_serialization=True, variant="fp16")
    assert list((tmp_path / "variant" / "vae").glob("*.fp16.safetensors"))
    variant = type(pipe).from_pretrained(tmp_path / "variant", variant="fp16")
    variant.method = pipe.method
    assert np.array_equal(_call(variant, *args, output_type="np"), ref)
    backbone = "unet" if hasattr(pipe, "unet") else "transformer"
    mapped = type(pipe).from_pretrained(tmp_path / "plain", torch_dtype={backbone: torch.bfloat16, "default": torch.float32})
    assert getattr(mapped, backbone).dtype == torch.bfloat16 and mapped.vae.dtype == torch.float32


def test_reduced_precision_runs_close_to_fp32(pipe, tmp_path: Path):
    args = (["make it red"], [_image(0)], [0])
    ref = _call(pipe, *args, output_type="np")
    half = load_pipeline(pipe.method, str(default_model(pipe.method)), "cpu", "bf16")
    half.set_progress_bar_config(disable=True)
    half.method = pipe.method
    out = _call(half, *args, output_type="np")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - ref).mean() < 0.1  # bf16 keeps ~3 significant digits: the image stays the same image


@pytest.mark.parametrize("method", ["instructcv", "unic"])
def test_a_torch_compiled_backbone_runs_and_gives_the_same_image(method):
    """diffusers' recipe `pipe.unet = torch.compile(pipe.unet)`: the wrapper has no truth value (len() raises),
    so the pipeline must never test a module with `or` / `if`."""
    from editkit.loading import default_model, load_pipeline

    pipe = load_pipeline(method, str(default_model(method)), "cpu", "fp32")
    pipe.set_progress_bar_config(disable=True)
    pipe.method = method
    attr = "unet" if hasattr(pipe, "unet") else "transformer"
    ref = _call(pipe, ["make it red"], [_image(0)], [0], output_type="np")
    setattr(pipe, attr, torch.compile(getattr(pipe, attr), backend="eager"))  # dynamo tracing, no C++ build
    np.testing.assert_allclose(_call(pipe, ["make it red"], [_image(0)], [0], output_type="np"), ref, atol=1e-5)
