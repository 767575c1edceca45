"""Performance properties that can be checked exactly on CPU.

- every editkit pipeline runs its backbone exactly once per sampling step, with all
  active guidance branches in that one batched forward;
- VAE tiling (the 2048x2048 memory feature) keeps the output size and changes the
  image only by a bounded amount.
"""

import importlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from editkit.conditioning import EditRequest

STEPS = 3  # HGS (PromptFix) adds its own forwards by design; the property is checked with it off
SIZE = {"height": 32, "width": 32}  # every pipeline takes an explicit working size; keep it tiny
# method -> (pipeline module, pipeline class, module with the tiny components, builder, backbone attribute, call kwargs)
METHODS = {
    "instructcv": ("editkit.pipelines.instructcv", "InstructCVPipeline", "editkit.testing", "tiny_instructcv_components", "unet", SIZE),
    "promptfix": ("editkit.pipelines.promptfix", "PromptFixPipeline", "editkit.testing.promptfix", "tiny_promptfix_components", "unet",
                  {**SIZE, "resize_side": None, "hgs_mode": "off", "request": {"auxiliary_prompt": "a red square on blue"}}),
    "pixwizard": ("editkit.pipelines.pixwizard", "PixWizardPipeline", "editkit.testing.pixwizard", "tiny_pixwizard_components", "transformer", SIZE),
    "unic": ("editkit.pipelines.unic", "UNICAdapterPipeline", "editkit.testing.unic", "tiny_unic_components", "transformer", SIZE),
    "dream": ("editkit.pipelines.dream", "DreamEnginePipeline", "editkit.testing.dream", "tiny_dream_components", "transformer", SIZE),
}
SHIPPED = Path(__file__).resolve().parents[1] / "editkit" / "models" / "instructcv-tiny"


def _image(size=32, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _pipeline(method):
    module_name, cls_name, testing_name, builder, backbone, _ = METHODS[method]
    try:
        module = importlib.import_module(module_name)
        testing = importlib.import_module(testing_name)
    except ImportError as e:
        pytest.skip(f"{method} not built yet ({e})")
    if not hasattr(testing, builder):
        pytest.skip(f"{testing_name}.{builder} not there yet")
    pipe = getattr(module, cls_name)(**getattr(testing, builder)(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe, getattr(pipe, backbone)


class ForwardCounter:
    """Counts forwards of a module and records each one's batch size."""

    def __init__(self, module):
        self.batches = []
        self.handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.batches.append(int(x.shape[0]))

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("method", list(METHODS))
def test_one_backbone_forward_per_step(method, one_torch_thread):
    pipe, backbone = _pipeline(method)
    counter = ForwardCounter(backbone)
    try:
        kwargs = dict(METHODS[method][5])
        request = EditRequest("make the square red", image=_image(), **kwargs.pop("request", {}))
        out = pipe.edit(request, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
    finally:
        counter.remove()
    assert len(counter.batches) == STEPS, f"{method}: {len(counter.batches)} backbone forwards for {STEPS} steps"
    assert len(set(counter.batches)) == 1  # the same batched branches every step
    assert np.isfinite(out.images).all()


@pytest.mark.parametrize("scales, branches", [((7.5, 1.5), 3), ((7.5, 1.0), None), ((1.0, 1.0), 1)])
def test_instructcv_branches_share_one_forward(scales, branches, one_torch_thread):
    pipe, unet = _pipeline("instructcv")
    named = {"guidance_scale": scales[0], "image_guidance_scale": scales[1]}
    want = len(pipe.guidance.active_branches(named))
    if branches is not None:
        assert want == branches
    counter = ForwardCounter(unet)
    try:
        pipe("make it red", image=_image(), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
             output_type="latent", **named)
    finally:
        counter.remove()
    assert counter.batches == [want] * STEPS


# -- VAE tiling --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_pipe():
    from editkit.pipelines import InstructCVPipeline

    if not (SHIPPED / "model_index.json").is_file():
        pytest.skip("shipped tiny model missing")
    pipe = InstructCVPipeline.from_pretrained(SHIPPED)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _shapes_image(size):
    img = PIL.Image.new("RGB", (size, size), (40, 90, 160))
    px = img.load()
    for y in range(size // 4, size // 2):
        for x in range(size // 5, size // 2):
            px[x, y] = (220, 60, 40)
    return img


def test_vae_tiling_keeps_size_and_bounds_the_difference(shipped_pipe, one_torch_thread):
    pipe, vae = shipped_pipe, shipped_pipe.vae
    image = _shapes_image(96)
    kw = dict(num_inference_steps=1, output_type="np", max_side=None)
    plain = pipe("segment the red square", image=image, generator=torch.Generator().manual_seed(0), **kw).images
    decoder_calls = []
    handle = vae.decoder.register_forward_pre_hook(lambda m, a: decoder_calls.append(a[0].shape))
    vae.enable_tiling()
    # tile size and overlap are attributes (from the config's sample_size); 64 px tiles on a 96 px image
    saved = vae.tile_sample_min_size, vae.tile_latent_min_size
    vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 64 // pipe.vae_scale_factor
    try:
        tiled = pipe("segment the red square", image=image, generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = saved
        handle.remove()
    assert len(decoder_calls) > 1, "tiling did not engage: one decoder call"
    assert all(s[-1] < 96 // pipe.vae_scale_factor for s in decoder_calls)  # every tile smaller than the image
    assert tiled.shape == plain.shape == (1, 96, 96, 3)
    diff = np.abs(tiled - plain)
    # tiles see their own GroupNorm statistics and are blended over the overlap: close, not equal
    assert diff.mean() < 0.05, diff.mean()
    assert 0 < diff.max() < 0.5, diff.max()

