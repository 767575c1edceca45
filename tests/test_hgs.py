"""High-frequency guidance sampling: x0 formulas per scheduler, loss descent, masks, batch safety, fp16."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from editkit.correctors import StepState
from editkit.encoders import vae_decode
from editkit.hgs import (
    HighFrequencyGuidance,
    hf_loss,
    high_pass,
    noise_level,
    prediction_from_x0,
    prediction_type,
    sobel_magnitude,
    x0_from_prediction,
)
from editkit.pipelines.instructcv import InstructCVPipeline, build_conditioning, unet_forward
from editkit.testing import tiny_instructcv_components

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def comps():
    return tiny_instructcv_components(seed=0)


def _state(comps, batch=2, step=5, mask=None, dtype=torch.float32, seed=0):
    s = EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace")
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(seed)
    unet, vae = comps["unet"].to(dtype), comps["vae"].to(dtype)
    src = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        il = vae.encode(src.to(dtype)).latent_dist.mode()
    cond = build_conditioning(torch.randn(batch, 77, 32, generator=g), torch.zeros(1, 77, 32), il, dtype)
    t = s.timesteps[step]
    lat = (torch.randn(batch, 4, 16, 16, generator=g) * float(s.sigmas[step])).to(dtype)
    return StepState(
        step=step, num_steps=10, timestep=t, latents=lat, scheduler=s, conditioning=cond,
        predict_noise=lambda x: unet_forward(unet, s.scale_model_input(x, t), cond.select(()), t),
        decode=lambda z: vae_decode(vae, z), source=src.to(dtype), mask=mask,
    )


# -- the x0 formula of each scheduler ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("make", [
    lambda k: EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace", prediction_type=k),
    lambda k: EulerDiscreteScheduler(**SD, prediction_type=k),
    lambda k: DDIMScheduler(**SD, prediction_type=k, clip_sample=False),
    lambda k: DDPMScheduler(**SD, prediction_type=k, clip_sample=False),
])
def test_x0_estimate_matches_the_schedulers_own(make, kind):
    s = make(kind)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    for i in (0, 4, 9):
        t = s.timesteps[i]
        z, pred = torch.randn(2, 4, 8, 8, generator=g) * 3, torch.randn(2, 4, 8, 8, generator=g)
        if hasattr(s, "_step_index"):
            s._step_index = i  # as after i sampling steps
        level = noise_level(s, t)
        ours = x0_from_prediction(pred, z, level, prediction_type(s))
        theirs = s.step(pred, t, z, generator=torch.Generator().manual_seed(1)).pred_original_sample
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (type(s).__name__, i)
        assert torch.allclose(prediction_from_x0(ours, z, level, prediction_type(s)), pred, atol=1e-3)


def test_flow_matching_x0_and_official_bug_is_not_reproduced():
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(5)
    z, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    level = noise_level(s, s.timesteps[2])
    assert torch.allclose(x0_from_prediction(v, z, level, "flow"), z - float(s.sigmas[2]) * v)
    # Euler (sigma space): x0 = z - sigma * eps, not the official (z / sigma - sqrt(1-abar) eps) / sqrt(abar)
    e = EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace")
    e.set_timesteps(20)
    level = noise_level(e, e.timesteps[18])
    sigma = float(e.sigmas[18])
    assert level.sigma == pytest.approx(sigma) and level.kind == "vp"
    eps = torch.randn(1, 4, 8, 8)
    assert torch.allclose(x0_from_prediction(eps, z, level, "epsilon"), z - sigma * eps, atol=1e-5)


# -- maps and loss ---------------------------------------------------------------------------------


def test_maps_are_per_sample_and_high_pass_removes_flat_content():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.4)
    edges = torch.rand(1, 3, 32, 32, generator=g)
    x = torch.arange(32.0)
    low, high = 0.2 * torch.cos(2 * math.pi * x / 32), 0.1 * torch.cos(2 * math.pi * 12 * x / 32)
    waves = (0.5 + low + high).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    hp = high_pass(waves, cutoff=5)  # keeps the 12-cycle wave only, normalised to max 1
    assert hp.shape == (1, 1, 32, 32)
    assert torch.allclose(hp[0, 0, 0], high.abs() / high.abs().max(), atol=1e-4)
    both = torch.cat([edges, edges * 0.1])
    # per-sample max normalisation: scaling one sample does not change its maps or the other sample's
    assert torch.allclose(high_pass(both, 3)[0], high_pass(both, 3)[1], atol=1e-5)
    assert torch.allclose(sobel_magnitude(both)[0], sobel_magnitude(edges)[0], atol=1e-5)
    loss = hf_loss(both, torch.cat([edges, flat]), cutoff=3)
    assert loss.shape == (2,) and loss[0] < 1e-8 and loss[1] > 1e-3
    keep = torch.ones(1, 1, 32, 32)
    keep[..., :16] = 0
    changed = edges.clone()
    changed[..., :10] = torch.rand(1, 3, 32, 10, generator=g)
    # only pixels outside the mask count: changes far inside it (beyond the Sobel footprint) do not
    assert float(hf_loss(changed, edges, 3, keep)) < float(hf_loss(changed, edges, 3))
    assert float(hf_loss(edges, edges, 3, keep)) == 0.0


# -- the corrector -----------------------------------------------------------------------------------


def test_hgs_lowers_its_own_loss_on_a_fixed_latent(comps):
    state = _state(comps)
    hgs = HighFrequencyGuidance(iterations=4, step_size=500.0, cutoff=4, cutoff_size=None)
    moved = hgs.before_model(state)
    losses = hgs.losses[0]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.97 * losses[0]
    assert (moved - state.latents).abs().max() > 1e-3 and moved.dtype == state.latents.dtype
    # the time weight exp(-lam t): the same loss at a later (less noisy) step moves the latent further
    assert math.exp(-1e-3 * float(state.timestep)) < 1.0


def test_hgs_leaves_masked_in_latents_free_and_is_batch_safe(comps):
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1  # may change
    hgs = HighFrequencyGuidance(iterations=2, step_size=500.0, cutoff=4, cutoff_size=None)
    state = _state(comps, mask=mask)
    moved = hgs.before_model(state)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 4:12] = True
    assert torch.equal(moved[..., inside], state.latents[..., inside])
    assert (moved[..., ~inside] - state.latents[..., ~inside]).abs().max() > 1e-3
    # batch of two = each sample alone (no cross-sample broadcasting or normalisation)
    both = HighFrequencyGuidance(iterations=2, step_size=500.0, cutoff=4, cutoff_size=None).before_model(_state(comps))
    full = _state(comps)
    for b in range(2):
        single = _state(comps)
        single.latents, single.source = full.latents[b : b + 1], full.source[b : b + 1]
        cond = full.conditioning
        from editkit.conditioning import Condition, Conditioning

        sub = Conditioning({k: Condition(c.value[b : b + 1], c.null, c.group) for k, c in cond.items()})
        t, s = single.timestep, single.scheduler
        single.predict_noise = lambda x, sub=sub: unet_forward(comps["unet"], s.scale_model_input(x, t), sub.select(()), t)
        alone = HighFrequencyGuidance(iterations=2, step_size=500.0, cutoff=4, cutoff_size=None).before_model(single)
        assert torch.allclose(alone, both[b : b + 1], atol=1e-5)


def test_after_model_re_expresses_the_guided_x0_relative_to_the_unmodified_latents(comps):
    state = _state(comps)
    hgs = HighFrequencyGuidance()
    eps = torch.randn_like(state.latents)
    assert hgs.after_model(state, state.latents, eps) is eps
    moved = state.latents + 0.3
    sigma = float(state.scheduler.sigmas[5])
    state.scheduler._step_index = 5
    assert torch.allclose(hgs.after_model(state, moved, eps), eps + (state.latents - moved) / sigma, atol=1e-5)


def test_hgs_step_window_and_bad_parameters(comps):
    hgs = HighFrequencyGuidance(iterations=2, step_range=(0.0, 0.5))
    assert [hgs.active(i, 10) for i in (0, 4, 5, 9)] == [True, True, False, False]
    state = _state(comps, step=7)
    assert hgs.before_model(state) is state.latents and hgs.losses == []
    assert HighFrequencyGuidance(cutoff=30, cutoff_size=640).radius(64, 96) == pytest.approx(3.0)
    for kwargs, name in (({"iterations": -1}, "iterations"), ({"step_size": float("nan")}, "step_size"),
                         ({"cutoff": -1}, "cutoff"), ({"step_range": (0.6, 0.2)}, "step_range"), ({"cutoff_size": 0}, "cutoff_size")):
        with pytest.raises(ValueError, match=name):
            HighFrequencyGuidance(**kwargs)


def test_hgs_in_half_precision_keeps_dtype_and_finite_values():
    comps = tiny_instructcv_components(seed=0)
    state = _state(comps, batch=1, dtype=torch.float16)
    hgs = HighFrequencyGuidance(iterations=2, step_size=500.0, cutoff=4, cutoff_size=None)
    moved = hgs.before_model(state)
    assert moved.dtype == torch.float16 and torch.isfinite(moved).all()
    assert hgs.losses[0][1] < hgs.losses[0][0]


def test_hgs_as_a_corrector_of_instructcv(comps):
    pipe = InstructCVPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(torch.float32)
    img = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    kw = {"num_inference_steps": 2, "output_type": "np"}
    off = pipe("sharpen", image=img, generator=torch.Generator().manual_seed(0), **kw).images
    hgs = HighFrequencyGuidance(iterations=2, step_size=500.0, cutoff=4, cutoff_size=None)
    on = pipe("sharpen", image=img, generator=torch.Generator().manual_seed(0), correctors=[hgs], **kw).images
    assert len(hgs.losses) == 2 and np.abs(on - off).max() > 1e-4
    none = HighFrequencyGuidance(iterations=0)
    same = pipe("sharpen", image=img, generator=torch.Generator().manual_seed(0), correctors=[none], **kw).images
    assert np.abs(same - off).max() < 1e-6
