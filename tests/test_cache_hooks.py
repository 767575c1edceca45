"""diffusers' own cache hooks on Dream Engine's MM-DiT and PixWizard's DiT: Dream's last joint block keeps SD3's
output and gives the hooks a text stream, FirstBlockCache at threshold 0 changes nothing, at a high threshold it
really skips the remaining blocks, and each pipeline keeps one cache state per batch shape (the guidance interval
changes it)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.models.attention import JointTransformerBlock

from editkit.conditioning import EditRequest
from editkit.loading import default_model, load_pipeline
from editkit.testing.dream import tiny_dream_transformer


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@torch.no_grad()
def test_final_block_is_sd3s_last_block_returning_its_text_input():
    model = tiny_dream_transformer(num_layers=3)
    final = model.transformer_blocks[-1]
    stock = JointTransformerBlock(32, 4, 8, context_pre_only=True).eval()
    stock.load_state_dict(final.state_dict())  # strict: the same parameters, so checkpoints load unchanged
    g = torch.Generator().manual_seed(0)
    h, ctx, temb = torch.randn(2, 16, 32, generator=g), torch.randn(2, 5, 32, generator=g), torch.randn(2, 32, generator=g)
    ctx_out, h_out = final(hidden_states=h, encoder_hidden_states=ctx, temb=temb)
    none, h_ref = stock(hidden_states=h, encoder_hidden_states=ctx, temb=temb)
    assert none is None and ctx_out is ctx and torch.equal(h_out, h_ref)


@torch.no_grad()
def test_first_block_cache_skips_only_above_its_threshold():
    model = tiny_dream_transformer(num_layers=3)
    g = torch.Generator().manual_seed(1)
    x, states = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 32, generator=g)
    pooled = states.mean(1)
    args = [dict(hidden_states=x + 0.01 * i, encoder_hidden_states=states, pooled_projections=pooled,
                 timestep=torch.tensor([900.0 - 100 * i] * 2), return_dict=False) for i in range(3)]
    plain = [model(**a)[0] for a in args]
    middle = count_calls(model.transformer_blocks[1].attn)
    for threshold, expected_middle_calls in ((0.0, 3), (1e6, 1)):
        middle[0] = 0
        model.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        with model.cache_context("rows2"):
            cached = [model(**a)[0] for a in args]
        model.disable_cache()
        assert middle[0] == expected_middle_calls
        if threshold == 0.0:
            assert all(torch.equal(c, p) for c, p in zip(cached, plain))
        else:  # calls 2 and 3 reuse call 1's residual of the remaining blocks: first call exact, later ones not
            assert torch.equal(cached[0], plain[0]) and (cached[2] - plain[2]).abs().max() > 1e-4
            assert all(torch.isfinite(c).all() for c in cached)


@pytest.mark.parametrize("method", ["dream", "pixwizard"])
def test_pipeline_keeps_a_cache_state_per_batch_shape(method, one_torch_thread):
    pipe = load_pipeline(method, str(default_model(method)), "cpu", "fp32")
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    blocks = pipe.transformer.transformer_blocks if method == "dream" else pipe.transformer.layers

    def run() -> np.ndarray:
        return pipe.edit(EditRequest("make it red", image=image), num_inference_steps=4, guidance_interval=(0.0, 0.5),
                         generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    plain = run()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    exact = run()
    pipe.transformer.disable_cache()
    middle = count_calls(blocks[1].attn if method == "dream" else blocks[1].attn1.to_k)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e6))
    skipping = run()  # two guided steps (2+ rows), two unguided (1 row): a first, computed call for each shape
    pipe.transformer.disable_cache()
    assert np.array_equal(exact, plain)
    assert middle[0] == 2 and np.isfinite(skipping).all() and np.abs(skipping - plain).max() > 1e-4
    assert np.array_equal(run(), plain)  # disable_cache restores the plain model
