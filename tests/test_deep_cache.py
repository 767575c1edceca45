"""editkit.deep_cache: replayed calls equal a by-hand DeepCache built on plain torch forward hooks, the original
UNet is never changed, and the full/replay schedule follows the interval, new runs and batch changes."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from editkit.deep_cache import DeepCacheConfig, deep_blocks, deep_cache_state, deep_cache_unet, remove_deep_cache
from editkit.speed import SpeedPreset, fast_pipeline


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2).eval()
    with torch.no_grad():  # zero-initialised output layers would hide a wrong replay
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 3, 8, generator=g)


def by_hand_replay(unet, first, second) -> torch.Tensor:
    """Record the deep blocks' outputs on the first call, substitute them on the second (torch's own hooks)."""
    stored, handles = {}, []
    for i, block in enumerate(deep_blocks(unet)):
        handles.append(block.register_forward_hook(lambda m, a, out, i=i: stored.setdefault(i, out)))
    unet(*first).sample
    for h in handles:
        h.remove()
    handles = [block.register_forward_hook(lambda m, a, out, i=i: stored[i]) for i, block in enumerate(deep_blocks(unet))]
    try:
        return unet(*second).sample
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def test_replayed_call_equals_the_by_hand_cache_and_differs_from_the_full_call():
    unet = tiny_unet()
    x, ctx = inputs()
    x2 = x + 0.3 * torch.randn_like(x)
    first, second = (x, torch.tensor(900), ctx), (x2, torch.tensor(700), ctx)
    expected = by_hand_replay(unet, first, second)
    full = unet(*second).sample
    view = deep_cache_unet(unet, DeepCacheConfig(interval=2))
    view(*first)
    replayed = view(*second).sample
    assert torch.allclose(replayed, expected, atol=1e-6, rtol=0)
    assert (replayed - full).abs().max() > 1e-3  # the deep blocks really were skipped
    state = deep_cache_state(view)
    assert (state.full_calls, state.replayed_calls) == (1, 1)
    assert torch.equal(unet(*second).sample, full)  # the original UNet computes as before, next to its view


@torch.no_grad()
def test_schedule_follows_interval_new_runs_and_batch_changes():
    unet = tiny_unet()
    x, ctx = inputs()
    view = deep_cache_unet(unet, DeepCacheConfig(interval=3))
    state = deep_cache_state(view)
    for t in (999, 800, 600, 400, 200):  # full, replay, replay, full, replay
        view(x, torch.tensor(t), ctx)
    assert (state.full_calls, state.replayed_calls) == (2, 3)
    view(x, torch.tensor(999), ctx)  # the timestep went up: a new run starts with a full call
    assert state.full_calls == 3
    view(x[:1], torch.tensor(800), ctx[:1])  # fewer branches (a guidance interval): full, shapes fit
    assert state.full_calls == 4
    assert view(x[:1], torch.tensor(700), ctx[:1]).sample.shape == (1, 4, 8, 8) and state.replayed_calls == 4


@torch.no_grad()
def test_interval_one_and_removed_hooks_compute_the_plain_unet():
    unet = tiny_unet()
    x, ctx = inputs()
    plain = [unet(x, torch.tensor(t), ctx).sample for t in (900, 500)]
    view = deep_cache_unet(unet, DeepCacheConfig(interval=1))
    assert all(torch.equal(view(x, torch.tensor(t), ctx).sample, p) for t, p in zip((900, 500), plain))
    view2 = deep_cache_unet(unet, DeepCacheConfig(interval=2))
    remove_deep_cache(unet)
    assert all(torch.equal(view2(x, torch.tensor(t), ctx).sample, p) for t, p in zip((900, 500), plain))


def test_bad_configs_and_models_are_refused():
    with pytest.raises(ValueError, match="interval must be >= 1"):
        DeepCacheConfig(interval=0)
    unet = tiny_unet()
    view = deep_cache_unet(unet, DeepCacheConfig())
    with pytest.raises(ValueError, match="already a DeepCache view"):
        deep_cache_unet(view, DeepCacheConfig())
    with pytest.raises(TypeError, match="has no 'down_blocks'"):
        deep_cache_unet(torch.nn.Linear(2, 2), DeepCacheConfig())


def test_fast_pipeline_caches_on_a_copy_only():
    class Pipe:
        unet = tiny_unet()

    pipe = Pipe()
    fast, kwargs = fast_pipeline(pipe, "instructcv", SpeedPreset(10, (0.0, 0.5), None, 2))
    assert kwargs == {"num_inference_steps": 10, "guidance_interval": (0.0, 0.5)}
    assert deep_cache_state(fast.unet).interval == 2 and deep_cache_state(pipe.unet) is None
    assert fast.unet.conv_in.weight is pipe.unet.conv_in.weight  # one copy of the weights

    class NoUNet:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="`deep_cache` is for the UNet pipelines"):
        fast_pipeline(NoUNet(), "unic", SpeedPreset(10, None, None, 2))


def test_instructcv_pipeline_with_deep_cache_and_its_original_side_by_side():
    from editkit.pipelines import InstructCVPipeline
    from editkit.testing import tiny_instructcv_components

    pipe = InstructCVPipeline(**tiny_instructcv_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def run(p, **kwargs):
        return p("segment the circle", image, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images[0]

    plain = run(pipe, num_inference_steps=6, guidance_interval=(0.0, 0.5))
    fast, kwargs = fast_pipeline(pipe, "instructcv", SpeedPreset(6, (0.0, 0.5), None, 2))
    cached = run(fast, **kwargs)
    state = deep_cache_state(fast.unet)
    # 3 guided steps (3 branches): full, replay, full; 3 unguided (1 branch): full, replay, full
    assert (state.full_calls, state.replayed_calls) == (4, 2)
    assert cached.shape == plain.shape and 1e-4 < abs(cached - plain).max() < 0.5
    assert (run(pipe, num_inference_steps=6, guidance_interval=(0.0, 0.5)) == plain).all()  # the original is untouched
