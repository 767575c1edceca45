"""editkit.attention: one switch for every pipeline's attention (sdpa / xformers / auto)."""

import importlib

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    JointAttnProcessor2_0,
    XFormersAttnProcessor,
    XFormersJointAttnProcessor,
)

import editkit.attention as ea
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components
from editkit.testing.sd3 import tiny_sd3_transformer


@pytest.fixture()
def pipe():
    p = InstructCVPipeline(**tiny_instructcv_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture()
def fake_xformers(monkeypatch):
    """Pretend xformers and CUDA exist, to check which processors the switch installs (nothing runs)."""
    monkeypatch.setattr(ea, "xformers_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _edit(pipe):
    img = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return pipe("make it red", image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def test_sdpa_is_the_default_and_the_switch_keeps_outputs(pipe, one_torch_thread):
    assert ea.attention_processors(pipe) == {"AttnProcessor2_0": 14}  # 12 in the UNet, 2 in the VAE
    before = _edit(pipe)
    report = pipe.set_attention_backend("sdpa")
    assert report["backend"] == "sdpa" and report["components"] == {"vae": 2, "text_encoder": 0, "unet": 12}
    assert report["untouched"] == {}
    np.testing.assert_array_equal(_edit(pipe), before)


def test_xformers_swaps_every_processor_and_back(pipe, fake_xformers):
    report = ea.set_attention_backend(pipe, "xformers")
    assert report["backend"] == "xformers"
    assert ea.attention_processors(pipe) == {"XFormersAttnProcessor": 14}
    pipe.set_attention_backend("sdpa")
    assert ea.attention_processors(pipe) == {"AttnProcessor2_0": 14}


def test_auto_picks_xformers_only_with_package_and_cuda(monkeypatch):
    monkeypatch.setattr(ea, "xformers_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ea.resolve_backend("auto") == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ea.resolve_backend("auto") == "xformers"
    monkeypatch.setattr(ea, "xformers_available", lambda: False)
    assert ea.resolve_backend("AUTO") == "sdpa"


def test_mm_dit_joint_processors_follow_the_switch(fake_xformers):
    model = tiny_sd3_transformer()
    assert ea.attention_processors(model) == {"JointAttnProcessor2_0": 2}
    ea.set_attention_backend(model, "xformers")
    assert all(type(b.attn.processor) is XFormersJointAttnProcessor for b in model.transformer_blocks)
    ea.set_attention_backend(model, "sdpa")
    assert all(type(b.attn.processor) is JointAttnProcessor2_0 for b in model.transformer_blocks)


@pytest.mark.parametrize("name", ["flash", "", None, 3])
def test_unknown_backend_is_a_clear_error(pipe, name):
    with pytest.raises(ValueError, match="attention backend must be one of"):
        pipe.set_attention_backend(name)
    assert ea.attention_processors(pipe) == {"AttnProcessor2_0": 14}


def test_xformers_without_package_or_cuda_says_why(pipe, monkeypatch):
    monkeypatch.setattr(ea, "xformers_available", lambda: False)
    with pytest.raises(ValueError, match="needs the xformers package"):
        pipe.set_attention_backend("xformers")
    monkeypatch.setattr(ea, "xformers_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        pipe.set_attention_backend("xformers")
    assert ea.attention_processors(pipe) == {"AttnProcessor2_0": 14}  # nothing touched


def test_not_a_pipeline_is_a_type_error():
    with pytest.raises(TypeError, match="`pipe` must be a diffusers pipeline"):
        ea.set_attention_backend("unet", "sdpa")


def test_eager_processor_is_upgraded_to_sdpa(pipe):
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.set_attention_backend("sdpa")
    assert ea.attention_processors(pipe) == {"AttnProcessor2_0": 14}


def test_unknown_processors_are_reported_and_strict_refuses(pipe):
    class Mine:  # a third-party processor the switch does not know
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask)

    pipe.vae.set_attn_processor(Mine())
    report = pipe.set_attention_backend("sdpa")
    assert report["untouched"] == {"vae:Mine": 2}
    with pytest.raises(ValueError, match="do not follow the switch"):
        pipe.set_attention_backend("sdpa", strict=True)


class EditkitAttention(ea.AttentionBackendMixin, torch.nn.Module):
    """How an editkit module honours the switch: compute attention through `attend`."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x, mask=None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return ea.attend(q, k, v, mask, backend=self.attention_backend).transpose(1, 2).reshape(b, n, d)


def test_editkit_modules_get_the_backend(fake_xformers):
    outer = torch.nn.Sequential(EditkitAttention(), torch.nn.Linear(16, 16), EditkitAttention())
    report = ea.set_attention_backend(outer, "xformers")
    assert report["components"] == {"Sequential": 2}
    assert [m.attention_backend for m in (outer[0], outer[2])] == ["xformers", "xformers"]
    assert ea.attention_processors(outer) == {"EditkitAttention[xformers]": 2}
    ea.set_attention_backend(outer, "sdpa")
    assert outer[0].attention_backend == "sdpa"


def test_attend_sdpa_matches_softmax_attention_with_a_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    want = torch.softmax((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(ea.attend(q, k, v, mask), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="`backend` must be 'sdpa' or 'xformers'"):
        ea.attend(q, k, v, backend="auto")


@pytest.mark.parametrize("method, cls_name", [("instructcv", "InstructCVPipeline"), ("promptfix", "PromptFixPipeline"),
                                              ("pixwizard", "PixWizardPipeline"), ("unic", "UNICAdapterPipeline"),
                                              ("dream", "DreamEnginePipeline")])
def test_every_pipeline_has_the_switch(method, cls_name):
    try:
        module = importlib.import_module(f"editkit.pipelines.{method}")
    except ImportError as e:
        pytest.skip(f"{method} not built yet ({e})")
    assert callable(getattr(getattr(module, cls_name), "set_attention_backend"))
