"""PromptFix: auxiliary attention, midpoint guidance, resize policy, captioners, VAE skips, converter, training."""

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

from editkit.conditioning import EditRequest
from editkit.correctors import StepCorrector
from editkit.guidance import guided_prediction
from editkit.modeling.promptfix_unet import AUX_KEY, PromptFixUNet2DConditionModel
from editkit.pipelines.promptfix import (
    PROMPTFIX_GUIDANCE,
    PromptFixPipeline,
    build_conditioning,
    promptfix_size,
)
from editkit.evaluation.adapters import promptfix as evaluate_adapter
from editkit.testing import tiny_instructcv_components
from editkit.testing.promptfix import tiny_promptfix_components

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def pipe():
    p = PromptFixPipeline(**tiny_promptfix_components(seed=0), resize_side=None)
    p.set_progress_bar_config(disable=True)
    return p


def _image(h=32, w=48, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


FAST = {"num_inference_steps": 2, "hgs_mode": "off", "output_type": "np"}


# -- adapter off = InstructPix2Pix ------------------------------------------------------------


def test_without_auxiliary_layers_equals_diffusers_instruct_pix2pix():
    comps = tiny_instructcv_components(seed=0)
    ref = StableDiffusionInstructPix2PixPipeline(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ours = PromptFixPipeline(**comps, resize_side=None)
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    img = _image()
    want = ref("make it red", image=img, num_inference_steps=3, guidance_scale=7.5, image_guidance_scale=1.5, generator=_gen(), output_type="np").images
    got = ours("make it red", image=img, num_inference_steps=3, guidance_scale=7.5, image_guidance_scale=1.5, guidance_mode="ip2p",
               hgs_mode="off", generator=_gen(), output_type="np").images
    assert got.shape == want.shape == (1, 32, 48, 3)
    assert np.abs(got - want).max() <= 1e-5


def test_auxiliary_layers_with_zero_output_or_no_states_equal_the_plain_unet():
    comps = tiny_instructcv_components(seed=0)
    plain = comps["unet"]
    torch.manual_seed(1)
    pf = PromptFixUNet2DConditionModel.from_unet(plain, 32)
    n_blocks = sum(1 for n, _ in pf.named_modules() if n.endswith("attn_extra"))
    assert n_blocks == 6  # 2 down + 1 mid + 3 up transformer blocks of the tiny UNet
    x, text, aux = torch.randn(2, 8, 16, 16), torch.randn(2, 77, 32), torch.randn(2, 77, 32)
    with torch.no_grad():
        want = plain(x, 10, text).sample
        assert torch.equal(pf(x, 10, text).sample, want)  # no auxiliary states: the extra layer is skipped
        changed = pf(x, 10, text, auxiliary_hidden_states=aux).sample
        assert (changed - want).abs().max() > 1e-3  # default (non-zero) initialisation reads the auxiliary prompt
        via_kwargs = pf(x, 10, text, cross_attention_kwargs={AUX_KEY: aux}).sample
        assert torch.equal(changed, via_kwargs)
        for name, p in pf.named_parameters():
            if "attn_extra.to_out" in name:
                p.zero_()
        assert torch.equal(pf(x, 10, text, auxiliary_hidden_states=aux).sample, want)


def test_unet_saves_and_loads_its_auxiliary_weights(tmp_path):
    unet = tiny_promptfix_components(seed=0)["unet"]
    unet.save_pretrained(tmp_path)
    loaded = PromptFixUNet2DConditionModel.from_pretrained(tmp_path)
    assert loaded.config.auxiliary_cross_attention_dim == 32
    sd, sd2 = unet.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and any("attn_extra.to_k" in k for k in sd)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


# -- guidance --------------------------------------------------------------------------------------


def test_four_term_midpoint_formula_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    full, img, txt = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    s_t, s_i = 6.5, 1.25
    want = 0.5 * (img + txt) + s_t * (full - img) + s_i * (full - txt)
    scales = {"guidance_scale": s_t, "image_guidance_scale": s_i}
    got = PROMPTFIX_GUIDANCE.combine({"full": full, "image": img, "text": txt}, scales)
    assert torch.allclose(got, want, atol=1e-5)
    # coefficients sum to one (so the rule is the same on eps and on x0)
    assert sum(PROMPTFIX_GUIDANCE.weights(scales).values()) == pytest.approx(1.0)
    # one batched forward, branch order [full, image-only, text-only], with the right nulls
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond = build_conditioning(torch.ones(2, 3, 5), torch.zeros(1, 3, 5), torch.full((2, 4, 8, 8), 2.0), torch.float32, torch.full((2, 3, 5), 3.0))
    calls = []

    def forward(inp, c):
        calls.append({k: v.clone() for k, v in c.items()})
        # a fake backbone whose output tells the branches apart
        return inp + c["encoder_hidden_states"].mean((1, 2)).view(-1, 1, 1, 1) + 10 * c["image_latents"] + 100 * c[AUX_KEY].mean((1, 2)).view(-1, 1, 1, 1)

    out = guided_prediction(PROMPTFIX_GUIDANCE, scales, cond, x, forward)
    assert len(calls) == 1 and calls[0]["image_latents"].shape[0] == 6
    b_full, b_img, b_txt = x + 1 + 20 + 300, x + 0 + 20 + 0, x + 1 + 0 + 300
    assert torch.allclose(out, 0.5 * (b_img + b_txt) + s_t * (b_full - b_img) + s_i * (b_full - b_txt), atol=1e-4)
    assert torch.equal(calls[0][AUX_KEY][2:4], torch.zeros(2, 3, 5))  # image-only branch: both texts null
    assert torch.equal(calls[0]["image_latents"][4:], torch.zeros(2, 4, 8, 8))  # text-only branch: zero image


def test_midpoint_scales_of_one_half_run_the_conditional_branch_alone():
    active = PROMPTFIX_GUIDANCE.active_branches({"guidance_scale": 0.5, "image_guidance_scale": 0.5})
    assert [b.name for b in active] == ["full"]


# -- the pipeline --------------------------------------------------------------------------------


def test_resize_policy_follows_the_official_rule():
    plan = promptfix_size((1000, 750), 640)
    assert (plan.work_width, plan.work_height, plan.out_width, plan.out_height) == (832, 640, 1000, 750)
    plan = promptfix_size((1000, 750), 640, "long")
    assert (plan.work_width, plan.work_height) == (640, 448)
    with pytest.raises(ValueError, match="resize_mode"):
        promptfix_size((10, 10), 640, "middle")


def test_output_at_input_size_and_auxiliary_prompt_changes_the_result(pipe):
    img = _image(40, 56)
    a = pipe("remove the haze", image=img, auxiliary_prompt="The image is hazy.", resize_side=64, generator=_gen(), **FAST).images
    b = pipe("remove the haze", image=img, auxiliary_prompt="The image is dark.", resize_side=64, generator=_gen(), **FAST).images
    assert a.shape == (1, 40, 56, 3)
    assert np.abs(a - b).max() > 1e-4
    c = pipe("remove the haze", image=img, auxiliary_prompt="The image is hazy.", resize_side=64, generator=_gen(), **FAST).images
    assert np.array_equal(a, c)


def test_blind_restoration_and_captioner_and_bad_input(pipe):
    img = _image()
    out = pipe("", image=img, auxiliary_prompt="The image is noisy.", generator=_gen(), **FAST).images
    assert out.shape == (1, 32, 48, 3)
    with pytest.raises(ValueError, match="empty"):
        pipe("", image=img, **FAST)
    seen = []

    def captioner(im):
        seen.append(im.size)
        return "The image is noisy."

    got = pipe("", image=[img, img], captioner=captioner, generator=[_gen(), _gen()], **FAST).images
    assert seen == [(48, 32), (48, 32)] and got.shape == (2, 32, 48, 3)
    assert np.abs(got[0] - out[0]).max() < 1e-5  # same auxiliary prompt, same seed
    for kwargs, err in (
        ({"guidance_mode": "cfg"}, "guidance_mode"),
        ({"hgs_mode": "on"}, "hgs_mode"),
        ({"auxiliary_prompt": ["a", "b", "c"], "image": [img, img]}, "`image` has 2 entries for a batch of 3"),
        ({"resize_side": 0}, "resize_side"),
    ):
        with pytest.raises(ValueError, match=err):
            pipe(**{"prompt": "fix", "image": img, **FAST, **kwargs})
    with pytest.raises(TypeError, match="auxiliary_prompt"):
        pipe("fix", image=img, auxiliary_prompt=3, **FAST)


def test_edit_request_mask_and_correctors(pipe):
    img = _image()
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 16:40] = 255
    calls = []

    class Count(StepCorrector):
        def before_model(self, state):
            calls.append((state.step, state.mask.shape, state.source.shape))
            return state.latents

    out = pipe.edit(EditRequest("remove the snow", image=img, mask=mask, auxiliary_prompt="snowy"), correctors=[Count()], generator=_gen(), **FAST).images
    src = np.asarray(img, np.float32) / 255
    assert np.abs(out[0][mask == 0] - src[mask == 0]).max() < 1e-6
    assert np.abs(out[0][mask > 0] - src[mask > 0]).max() > 0.05
    assert calls == [(0, (1, 1, 32, 48), (1, 3, 32, 48)), (1, (1, 1, 32, 48), (1, 3, 32, 48))]


def test_hgs_runs_inside_the_pipeline_and_changes_the_output(pipe):
    from editkit.hgs import HighFrequencyGuidance

    img = _image()
    off = pipe("sharpen", image=img, generator=_gen(), num_inference_steps=2, hgs_mode="off", output_type="np").images
    hgs = HighFrequencyGuidance(iterations=2, step_size=50.0, cutoff_size=None, cutoff=4)
    on = pipe("sharpen", image=img, generator=_gen(), num_inference_steps=2, hgs=hgs, output_type="np").images
    assert len(hgs.losses) == 2 and np.abs(on - off).max() > 1e-4


def test_save_load_round_trip_with_skip_vae(tmp_path):
    p = PromptFixPipeline(**tiny_promptfix_components(seed=1, skip_lora=True), resize_side=None)
    p.set_progress_bar_config(disable=True)
    assert p.vae.has_skip_lora
    img = _image()
    a = p("fix", image=img, auxiliary_prompt="blurry", generator=_gen(), **FAST).images
    p.save_pretrained(tmp_path)
    q = PromptFixPipeline.from_pretrained(tmp_path)
    q.set_progress_bar_config(disable=True)
    assert type(q.unet).__name__ == "PromptFixUNet2DConditionModel" and type(q.vae).__name__ == "PromptFixAutoencoderKL"
    assert q.config.resize_side is None
    b = q("fix", image=img, auxiliary_prompt="blurry", generator=_gen(), **FAST).images
    assert np.abs(a - b).max() < 1e-6


def test_default_guidance_scales_travel_with_the_model(tmp_path):
    p = PromptFixPipeline(**tiny_promptfix_components(seed=1), resize_side=None)
    assert (p.config.guidance_scale, p.config.image_guidance_scale) == (6.5, 1.25)  # official
    p = PromptFixPipeline(**tiny_promptfix_components(seed=1), resize_side=None, guidance_scale=3.0, image_guidance_scale=1.5)
    p.set_progress_bar_config(disable=True)
    p.save_pretrained(tmp_path)
    q = PromptFixPipeline.from_pretrained(tmp_path)
    q.set_progress_bar_config(disable=True)
    assert (q.config.guidance_scale, q.config.image_guidance_scale) == (3.0, 1.5)
    img = _image()
    run = lambda **kw: q("fix", image=img, auxiliary_prompt="blurry", generator=_gen(), **FAST, **kw).images  # noqa: E731
    default, explicit, official = run(), run(guidance_scale=3.0, image_guidance_scale=1.5), run(guidance_scale=6.5, image_guidance_scale=1.25)
    assert np.array_equal(default, explicit)
    assert np.abs(default - official).max() > 1e-3


def test_skip_vae_with_zero_lora_equals_the_plain_vae():
    from editkit.modeling.promptfix_vae import PromptFixAutoencoderKL
    from editkit.testing import tiny_vae

    vae = tiny_vae(seed=0)
    pf = PromptFixAutoencoderKL.from_config({**vae.config, "skip_lora_rank": 4}).eval()
    missing, unexpected = pf.load_state_dict(vae.state_dict(), strict=False)
    assert not unexpected and all(".lora." in k for k in missing) and len(missing) == 8
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        skips = pf.encoder_skips(x)
        assert [tuple(s.shape[1:]) for s in skips] == [(32, 32, 32), (32, 32, 32), (32, 16, 16), (64, 16, 16)]
        z = vae.encode(x).latent_dist.mode()
        assert not pf.has_skip_lora
        assert torch.equal(pf.decode_with_skips(z, skips), vae.decode(z).sample)
        pf.decoder.up_blocks[1].resnets[1].lora.lora_up.weight.normal_()
        assert pf.has_skip_lora and (pf.decode_with_skips(z, skips) - vae.decode(z).sample).abs().max() > 1e-3
        with pytest.raises(ValueError, match="skips"):
            pf.decode_with_skips(z, skips[:2])


def test_skip_vae_decodes_without_lora_when_no_skips_and_copies_hook_their_own_lora():
    import copy

    from editkit.modeling.promptfix_vae import PromptFixAutoencoderKL
    from editkit.testing import tiny_vae

    vae = tiny_vae(seed=0)
    pf = PromptFixAutoencoderKL.from_config({**vae.config, "skip_lora_rank": 4}).eval()
    pf.load_state_dict(vae.state_dict(), strict=False)
    torch.manual_seed(0)
    for r in pf._decoder_resnets:
        r.lora.lora_up.weight.data.normal_(0, 0.5)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        skips = pf.encoder_skips(x)
        plain = vae.decode(z).sample
        # the official decoder adds its LoRA only when it is given skips
        assert torch.equal(pf.decode(z).sample, plain)
        assert torch.equal(pf.decode_with_skips(z, None), plain)
        with_skips = pf.decode_with_skips(z, skips)
        assert (with_skips - plain).abs().max() > 1e-2
        twin = copy.deepcopy(pf)
        assert torch.equal(twin.decode_with_skips(z, skips), with_skips)
        for r in twin._decoder_resnets:
            r.lora.lora_up.weight.zero_()
        assert torch.allclose(twin.decode_with_skips(z, skips), plain, atol=1e-6)  # the copy reads its own LoRA
        assert torch.equal(pf.decode_with_skips(z, skips), with_skips)  # and the original is untouched
        double = copy.deepcopy(pf).double()
        out = double.decode_with_skips(z.double(), [s.double() for s in skips])
        assert out.dtype == torch.float64 and torch.allclose(out.float(), with_skips, atol=1e-4)


def test_evaluation_adapter_on_two_shapes_samples(pipe):
    from editkit.data.shapes import make_sample

    samples = [make_sample("dehaze", "test", 0, 64), make_sample("denoise", "test", 0, 64)]
    out = evaluate_adapter(pipe, samples, seeds=[0, 1], steps=2, guidance=None, image_guidance=None, hgs_mode="off")
    assert len(out) == 2 and all(im.size == (64, 64) for im in out)


# -- training --------------------------------------------------------------------------------------


def _train(out, *extra):
    sys.path.insert(0, str(REPO / "train"))
    import train as trainer

    overrides = [
        f"output_dir={out}", "data.size=48", "data.num_samples=16", "data.tasks=dehaze,denoise", "train.batch_size=4",
        "train.max_steps=2", "model.options.resize_side=48", "log.tensorboard=false", "validation.every=0", "data.num_workers=0", "checkpoint.every=0",
        "model.tiny.unet_channels=[16,32]", "model.tiny.text_hidden=32", "model.tiny.text_layers=1", "model.tiny.vae=null",
        "model.tiny.vae_channels=[16,32]", "model.tiny.vae_mid_attention=false", "model.tiny.norm_groups=4", *extra,
    ]
    assert trainer.main(["--config", str(REPO / "configs/train/promptfix_shapes.yaml"), *overrides]) == 0


def test_training_smoke_run_exports_a_loadable_pipeline(tmp_path):
    _train(tmp_path, "data.cache=true", "train.instruction_noise=0.5")
    pipe = PromptFixPipeline.from_pretrained(tmp_path / "final")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.auxiliary_cross_attention_dim == 32 and pipe.config.resize_side == 48
    assert (pipe.config.guidance_scale, pipe.config.image_guidance_scale) == (3.0, 1.5)  # the recipe's model.options
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    from editkit.data.shapes import make_sample

    s = make_sample("dehaze", "test", 0, 80)
    out = pipe(s.instruction, image=s.source, auxiliary_prompt=s.auxiliary_prompt, num_inference_steps=2, hgs_mode="off").images[0]
    assert out.size == (80, 80)


def test_training_dropout_rates_and_official_pattern():
    from editkit.training.config import load_config
    from editkit.training.methods import get_method

    cfg = load_config(REPO / "configs/train/promptfix_shapes.yaml", ["model.tiny.vae=null", "model.tiny.vae_channels=[16,32]", "model.tiny.norm_groups=4"])
    plugin = get_method("promptfix")(cfg)
    gens = [torch.Generator().manual_seed(i) for i in range(20000)]
    masks = plugin.dropout_masks(gens, "cpu")
    rates = {g: float(m.float().mean()) for g, m in masks.items()}
    assert rates["instruction"] == pytest.approx(0.2, abs=0.01)
    assert rates["auxiliary"] == pytest.approx(0.075, abs=0.006) and rates["image"] == pytest.approx(0.075, abs=0.006)
    both = float((masks["auxiliary"] & masks["image"]).float().mean())
    assert both == pytest.approx(0.075**2, abs=0.002)  # independent draws
    plugin.dropout_mode = "official"
    m = plugin.dropout_masks(gens[:5000], "cpu")
    assert not bool((m["image"] & ~m["instruction"]).any())  # the official pattern never zeroes the image alone
    assert float(m["instruction"].float().mean()) == pytest.approx(0.2, abs=0.015)
    with pytest.raises(ValueError, match="dropout"):
        get_method("promptfix")(load_config(REPO / "configs/train/promptfix_shapes.yaml", ["model.options.dropout=joint"]))


# -- converter ----------------------------------------------------------------------------------------


def test_converter_round_trip_from_the_official_layout(tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from editkit.convert.promptfix import convert_promptfix, to_ldm_state_dict

    comps = tiny_promptfix_components(seed=2, skip_lora=True)
    official = to_ldm_state_dict(comps["unet"], comps["vae"], comps["text_encoder"])
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn_extra.to_k.weight" in official
    assert "model.diffusion_model.input_blocks.0.0.weight" in official and official["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 8
    assert "first_stage_model.decoder.up.1.block.0.lora.lora_up.weight" in official
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.0.") for k in official)
    # the layout is the real LDM one: diffusers' own single-file converter maps it to the same weights
    unet_sd, vae_sd = comps["unet"].state_dict(), comps["vae"].state_dict()
    ref = convert_ldm_unet_checkpoint(official, dict(comps["unet"].config))
    assert ref.keys() == unet_sd.keys() and all(torch.equal(ref[k], unet_sd[k]) for k in ref)
    ref = convert_ldm_vae_checkpoint(official, dict(comps["vae"].config))
    assert ref.keys() == vae_sd.keys() and all(torch.equal(ref[k], vae_sd[k]) for k in ref)

    ckpt = tmp_path / "promptfix.ckpt"
    torch.save(official, ckpt)
    convert_promptfix(ckpt, tmp_path / "out", tokenizer=comps["tokenizer"], unet_config=dict(comps["unet"].config),
                      vae_config=dict(comps["vae"].config), text_config=comps["text_encoder"].config.to_dict(), resize_side=None)
    assert sorted(p.name for p in (tmp_path / "out" / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    converted = PromptFixPipeline.from_pretrained(tmp_path / "out")
    direct = PromptFixPipeline(**comps, resize_side=None)
    for p in (converted, direct):
        p.set_progress_bar_config(disable=True)
    assert type(converted.vae).__name__ == "PromptFixAutoencoderKL"
    img = _image()
    a = converted("fix", image=img, auxiliary_prompt="noisy", generator=_gen(), **FAST).images
    b = direct("fix", image=img, auxiliary_prompt="noisy", generator=_gen(), **FAST).images
    assert np.abs(a - b).max() < 1e-6
    # a converted checkpoint samples as the released script does: HGS off (spec §11 #1), Euler ancestral, 6.5 / 1.25
    assert (converted.config.hgs_mode, direct.config.hgs_mode) == ("off", "latent")
    assert type(converted.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert (converted.config.guidance_scale, converted.config.image_guidance_scale) == (6.5, 1.25)
    run = lambda p, **kw: p("fix", image=img, auxiliary_prompt="noisy", generator=_gen(), num_inference_steps=2, output_type="np", **kw).images  # noqa: E731
    assert np.array_equal(run(converted), run(converted, hgs_mode="off"))
    assert np.array_equal(run(direct), run(direct, hgs_mode="latent"))
    assert np.abs(run(converted) - run(converted, hgs_mode="latent")).max() > 1e-4


def test_converter_uses_the_stock_vae_for_zero_lora_and_rejects_foreign_keys(tmp_path):
    from editkit.convert.promptfix import convert_promptfix, to_ldm_state_dict

    comps = tiny_promptfix_components(seed=3, skip_lora=True)
    official = to_ldm_state_dict(comps["unet"], comps["vae"], comps["text_encoder"])
    for k in official:
        if "lora_up" in k:
            official[k] = torch.zeros_like(official[k])
    torch.save(official, tmp_path / "zero.ckpt")
    cfgs = {"unet_config": dict(comps["unet"].config), "vae_config": dict(comps["vae"].config), "text_config": comps["text_encoder"].config.to_dict()}
    pipe = convert_promptfix(tmp_path / "zero.ckpt", tmp_path / "zero", tokenizer=comps["tokenizer"], **cfgs)
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    official["model.diffusion_model.mystery_block.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="no place"):
        convert_promptfix(tmp_path / "bad.ckpt", tmp_path / "bad", tokenizer=comps["tokenizer"], **cfgs)
    with pytest.raises(ValueError, match="tokenizer"):
        convert_promptfix(tmp_path / "zero.ckpt", tmp_path / "x")


# -- captioners ---------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_shapes_captioner_reads_objects_and_flaws():
    from editkit.captioners import ShapesCaptioner
    from editkit.data.families import FLAWS
    from editkit.data.shapes import make_sample

    cap = ShapesCaptioner()
    for task in ("colorize", "inpaint", "lowlight", "denoise"):
        hits = sum(cap(make_sample(task, "test", i, 64).source).flaw == FLAWS[task] for i in range(6))
        assert hits >= 4, task
    def objects(text):  # the object phrases of "... shows A, B and C on <background>."
        body = text.split("The image shows ")[1].split(" on ")[0]
        return sorted(p.strip().lower() for p in body.replace(" and ", ", ").split(", "))

    same = 0
    for i in range(6):
        s = make_sample("colorize", "test", i, 64)  # restore: the auxiliary prompt describes the clean scene (the target)
        clean = cap(s.target)
        assert clean.flaw == "" and clean.description.startswith("The image shows ")
        same += objects(clean.description) == objects(s.auxiliary_prompt)
    assert same >= 5  # objects read back from the pixels as the generator described them
    hinted = ShapesCaptioner(task="dehaze")(make_sample("dehaze", "test", 0, 64).source)
    assert hinted.auxiliary_prompt.startswith(FLAWS["dehaze"] + " The image shows ")
    with pytest.raises(ValueError, match="task"):
        ShapesCaptioner(task="sharpen")


def test_transformers_captioner_with_a_tiny_offline_vlm_feeds_the_pipeline(tmp_path, pipe):
    from transformers import Qwen2VLForConditionalGeneration

    from editkit.captioners import Caption, TransformersCaptioner
    from editkit.testing.dream import tiny_qwen2_vl, tiny_qwen2_vl_processor

    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(tiny_qwen2_vl().config).eval().save_pretrained(tmp_path / "vlm")
    cap = TransformersCaptioner(tmp_path / "vlm", processor=tiny_qwen2_vl_processor(56), chat_template=CHAT_TEMPLATE, max_new_tokens=6)
    img = _image(64, 64)
    answer = cap(img)
    assert isinstance(answer, Caption) and answer.description and answer.flaw
    assert cap(img) == answer  # greedy: deterministic
    assert answer.auxiliary_prompt == f"{answer.flaw.strip()} {answer.description.strip()}"
    pipe.captioner = cap
    try:
        asked = pipe("fix", image=img, generator=_gen(), **FAST).images
    finally:
        pipe.captioner = None
    given = pipe("fix", image=img, auxiliary_prompt=answer.auxiliary_prompt, generator=_gen(), **FAST).images
    assert np.array_equal(asked, given)
    with pytest.raises(ValueError, match="chat template"):
        TransformersCaptioner(cap.model, processor=tiny_qwen2_vl_processor(56))(img)
    with pytest.raises(ValueError, match="max_new_tokens"):
        TransformersCaptioner(cap.model, processor=cap.processor, max_new_tokens=0)
