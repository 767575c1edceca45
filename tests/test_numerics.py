"""Half-precision overflow is reported (where, and how to fix it) instead of returning a black image."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

from editkit import cli
from editkit.numerics import NonFiniteError, check_finite
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components

IMG = PIL.Image.new("RGB", (16, 16), (150, 60, 30))


def _pipe(dtype=torch.float16, unet_scale=1.0, vae_scale=1.0) -> InstructCVPipeline:
    comps = tiny_instructcv_components(seed=0)
    with torch.no_grad():
        comps["unet"].conv_out.weight.mul_(unet_scale)  # noise predictions ~scale x larger
        comps["vae"].decoder.conv_in.weight.mul_(vae_scale)  # decoder activations ~scale x larger
    pipe = InstructCVPipeline(**comps).to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, **kw):
    return pipe("make it red", image=IMG, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", **kw).images


def test_check_finite_passes_finite_tensors_through_and_names_the_place():
    x = torch.randn(2, 3)
    assert check_finite(x, "latents", 0) is x
    bad = torch.tensor([1.0, math.inf, math.nan], dtype=torch.float16)
    with pytest.raises(NonFiniteError, match=r"latents at step 4 contains 2 NaN/inf values of 3\..*float16.*bfloat16"):
        check_finite(bad, "latents", 4)
    with pytest.raises(NonFiniteError, match="Check the inputs") as err:
        check_finite(bad.float(), "the VAE-decoded image")
    assert "float16" not in str(err.value)
    assert issubclass(NonFiniteError, FloatingPointError)


def test_unet_fp16_overflow_is_reported_at_the_first_step():
    pipe = _pipe(unet_scale=1e5)
    with pytest.raises(NonFiniteError, match=r"latents at step 0 contains \d+ NaN/inf.*float16.*torch_dtype=torch.bfloat16"):
        _run(pipe)
    # what the check prevents: diffusers' own pipeline on the same weights returns black
    ref = StableDiffusionInstructPix2PixPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    with np.errstate(invalid="ignore"):
        black = ref("make it red", image=IMG, num_inference_steps=3, output_type="pil").images[0]
    assert np.asarray(black).max() == 0
    # the same weights in float32 (or bf16, as the message says) sample without error
    pipe32 = _pipe(torch.float32, unet_scale=1e5)
    assert np.isfinite(_run(pipe32)).all()


def test_vae_fp16_overflow_is_reported_and_an_fp32_vae_fixes_it():
    pipe = _pipe(vae_scale=1e5)
    with pytest.raises(NonFiniteError, match=r"the VAE-decoded image contains \d+ NaN/inf.*pipe\.vae\.to\(torch\.float32\)"):
        _run(pipe)
    pipe.vae.to(torch.float32)  # the fix the message gives
    out = _run(pipe)
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("at_step", [0, 2])
def test_inf_injected_mid_sampling_names_the_step(at_step):
    pipe = _pipe(torch.float32)
    calls = []

    def inject(_module, _args, output):
        calls.append(1)
        # guided_prediction runs one batched forward per step
        if len(calls) != at_step + 1:
            return output
        return (output[0].index_fill(0, torch.tensor([0]), math.inf), *output[1:])  # unet(..., return_dict=False)

    pipe.unet.register_forward_hook(inject)
    with pytest.raises(NonFiniteError, match=rf"latents at step {at_step} contains"):
        _run(pipe)
    assert len(calls) == at_step + 1  # stopped at once, no further steps ran


def test_cli_reports_overflow_instead_of_writing_a_black_image(tmp_path, capsys):
    _pipe(torch.float32, unet_scale=1e5).save_pretrained(tmp_path / "model")
    IMG.save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    rc = cli.main(["edit", str(tmp_path / "in.png"), "make it red", "-o", str(out), "--model", str(tmp_path / "model"), "--steps", "2", "--dtype", "fp16"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "error: latents at step 0 contains" in err and "bfloat16" in err
    assert not out.exists()
