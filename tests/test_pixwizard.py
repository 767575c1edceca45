"""PixWizard: transformer parity with Lumina-Next, flow sampling, guidance, any resolution, converter, training."""

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import LuminaNextDiT2DModel
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

from editkit.convert.pixwizard import convert_checkpoint, to_official_state_dict
from editkit.data.shapes import make_sample
from editkit.evaluation.adapters import prompt_and_image
from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel
from editkit.pipelines.pixwizard import (
    PIXWIZARD_GUIDANCE,
    PixWizardPipeline,
    aspect_buckets,
    choose_bucket,
)
from editkit.testing.pixwizard import tiny_pixwizard_components, tiny_pixwizard_transformer

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    p = PixWizardPipeline(**tiny_pixwizard_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p


def _image(w=40, h=24, seed=0):
    return PIL.Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def _inputs(b=2, h=8, w=12, seed=0, text_dim=24, pooled=20, image_dim=28, tokens=9):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(b, 4, h, w, generator=g),
        timestep=torch.rand(b, generator=g),
        encoder_hidden_states=torch.randn(b, 7, text_dim, generator=g),
        encoder_attention_mask=torch.tensor([[1] * 7] + [[1] * 4 + [0] * 3] * (b - 1)),
        pooled_text_embeds=torch.randn(b, pooled, generator=g),
        image_latents=torch.randn(b, 4, h, w, generator=g),
        image_embeds=torch.randn(b, tokens, image_dim, generator=g),
    )


# -- transformer -----------------------------------------------------------------------


def test_closed_gates_equal_lumina_next():
    """Semantic gates at zero + zero extra patch columns: exactly diffusers' LuminaNextDiT2DModel."""
    torch.manual_seed(0)
    lumina = LuminaNextDiT2DModel(sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=2,
                                  num_attention_heads=4, num_kv_heads=2, multiple_of=16, cross_attention_dim=24).eval()
    with torch.no_grad():
        for p in lumina.parameters():
            p.copy_(torch.randn_like(p) * 0.3)  # every path live, gates and adaLN included
        # PixWizard has no caption embedder and one query projection per block
        lumina.time_caption_embed.caption_embedder[1].weight.zero_()
        lumina.time_caption_embed.caption_embedder[1].bias.zero_()
        for layer in lumina.layers:
            layer.attn2.to_q.load_state_dict(layer.attn1.to_q.state_dict())
            layer.attn2.norm_q.load_state_dict(layer.attn1.norm_q.state_dict())
    model = PixWizardTransformer2DModel.from_lumina_next(lumina, pooled_text_dim=20, image_embed_dim=28, sample_tokens=5).eval()
    assert model.patch_embedder.proj.weight.shape == (32, 32)
    assert torch.all(model.patch_embedder.proj.weight[:, 16:] == 0)

    x = _inputs()
    rope = get_2d_rotary_pos_embed_lumina(8, 384, 384)
    with torch.no_grad():
        # Lumina with the source latent through zero patch columns = plain 4-channel Lumina
        widened = torch.nn.Linear(32, 32)
        widened.weight.zero_()
        widened.weight[:, :16] = lumina.patch_embedder.proj.weight
        widened.bias.copy_(lumina.patch_embedder.proj.bias)
        ref = lumina(x["hidden_states"], x["timestep"], x["encoder_hidden_states"], x["encoder_attention_mask"], rope,
                     cross_attention_kwargs={"base_sequence_length": 16}, return_dict=False)[0]
        lumina.patch_embedder.proj = widened
        ref_wide = lumina(torch.cat([x["hidden_states"], x["image_latents"]], 1), x["timestep"], x["encoder_hidden_states"],
                          x["encoder_attention_mask"], rope, cross_attention_kwargs={"base_sequence_length": 16}, return_dict=False)[0]
        out = model(**x, base_sequence_length=16, return_dict=False)[0]
        torch.testing.assert_close(ref_wide, ref, rtol=0, atol=0)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        assert out.shape == (2, 8, 8, 12)
        # opening the image gate (or the task embedder) makes the CLIP paths count
        model.layers[0].gate_image.fill_(0.5)
        assert (model(**x, base_sequence_length=16, return_dict=False)[0] - ref).abs().max() > 1e-3


def test_token_sampler_topk_deterministic_gumbel_seeded():
    model = tiny_pixwizard_transformer(cross_attention_dim=24, pooled_text_dim=20, image_embed_dim=28, sample_tokens=4, randomize=True)
    x = _inputs()
    with torch.no_grad():
        a = model(**x, return_dict=False)[0]
        b = model(**x, return_dict=False)[0]
        g1 = model(**x, token_selection="gumbel", generator=torch.Generator().manual_seed(1), return_dict=False)[0]
        g1b = model(**x, token_selection="gumbel", generator=torch.Generator().manual_seed(1), return_dict=False)[0]
        g2 = model(**x, token_selection="gumbel", generator=torch.Generator().manual_seed(2), return_dict=False)[0]
        # samples whose CLIP tokens are all zero (the null image) see zero tokens: no sampler, no image attention
        x0 = dict(x, image_embeds=torch.zeros_like(x["image_embeds"]))
        z1 = model(**x0, token_selection="gumbel", generator=torch.Generator().manual_seed(1), return_dict=False)[0]
        z2 = model(**x0, token_selection="gumbel", generator=torch.Generator().manual_seed(2), return_dict=False)[0]
    assert torch.equal(a, b)
    assert torch.equal(g1, g1b)
    assert (g1 - g2).abs().max() > 1e-4
    assert torch.equal(z1, z2)
    sampler = model.layers[0].token_sampler
    tokens = torch.randn(2, 9, 32)
    logits = sampler.logits(tokens)
    with torch.no_grad():
        picked = sampler(tokens, tokens, 4)
    idx = logits.topk(4, dim=1).indices.sort(dim=1).values
    torch.testing.assert_close(picked, tokens.gather(1, idx[..., None].expand(-1, -1, 32)))
    # with grad, the kept rows are unchanged (straight-through weight 1) and the scorer gets gradients
    torch.testing.assert_close(sampler(tokens, tokens, 4), picked, rtol=0, atol=0)
    model(**x, token_selection="gumbel", generator=torch.Generator().manual_seed(1), return_dict=False)[0].square().mean().backward()
    assert sampler.out_conv[4].weight.grad.abs().sum() > 0


def test_bad_inputs_raise():
    model = tiny_pixwizard_transformer(cross_attention_dim=24, pooled_text_dim=20, image_embed_dim=28)
    x = _inputs()
    with pytest.raises(ValueError, match="image_latents"):
        model(**dict(x, image_latents=x["image_latents"][..., :-2]))
    with pytest.raises(ValueError, match="token_selection"):
        model(**x, token_selection="random")
    with pytest.raises(ValueError, match="patch size"):
        model(**dict(x, hidden_states=x["hidden_states"][..., :-1], image_latents=x["image_latents"][..., :-1]))
    with pytest.raises(ValueError, match="num_kv_heads"):
        PixWizardTransformer2DModel(hidden_size=32, num_attention_heads=4, num_kv_heads=3)


# -- pipeline ----------------------------------------------------------------------------


def test_flow_grid_matches_official(pipe):
    """Custom sigmas + the scheduler's shift reproduce the official shifted t grid; the model sees t = 1 - sigma."""
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config, shift=3.0)
    n = 6
    sched.set_timesteps(sigmas=(1 - np.linspace(0, 1, n + 1)[:-1]).tolist())
    t = np.linspace(0, 1, n + 1)
    official = t / (t + 3.0 - 3.0 * t)
    np.testing.assert_allclose(1 - sched.sigmas.numpy(), official, atol=1e-6)


def test_deterministic_and_seed_dependent(pipe):
    img = _image()
    kw = dict(num_inference_steps=3, resolution=32, output_type="np")
    a = pipe("make the square red", img, generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe("make the square red", img, generator=torch.Generator().manual_seed(0), **kw).images
    c = pipe("make the square red", img, generator=torch.Generator().manual_seed(1), **kw).images
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_any_resolution_keeps_aspect(pipe):
    for w, h in ((40, 24), (24, 56), (33, 33)):
        bw, bh = choose_bucket(w, h, 32, pipe.size_multiple)
        assert bw % 4 == 0 and bh % 4 == 0 and bw * bh <= 32 * 32
        assert abs(np.log(bw / bh) - np.log(w / h)) < 0.2
        out = pipe("denoise", _image(w, h), num_inference_steps=2, resolution=32, generator=torch.Generator().manual_seed(0)).images[0]
        assert out.size == (w, h)
    # the working size follows the bucket; latents come back at its grid
    bw, bh = choose_bucket(40, 24, 32, 4)
    assert (bw, bh) == (40, 24)
    lat = pipe("denoise", _image(80, 48), num_inference_steps=2, resolution=32, output_type="latent").images
    assert lat.shape == (1, 4, bh // 2, bw // 2)
    out = pipe("denoise", _image(40, 24), num_inference_steps=2, resolution=32, height=48, output_type="pt").images
    assert out.shape == (1, 3, 48, 80)
    buckets = aspect_buckets(768, 16)
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 768 * 768 and max(w / h, h / w) <= 4 for w, h in buckets)
    assert choose_bucket(1024, 1024, 768, 16) == (768, 768)
    with pytest.raises(ValueError, match="resolution"):
        pipe("denoise", _image(), resolution=2)


def test_guidance_branch_count_and_formula(pipe):
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: batches.append(args[0].shape[0]), with_kwargs=True)
    try:
        for s_t, s_i, expect in ((4.0, 1.0, 2), (4.0, 1.5, 3), (1.0, 1.0, 1), (1.0, 2.0, 3), (0.0, 2.0, 2)):
            batches.clear()
            pipe("detect the circle", _image(), num_inference_steps=2, resolution=32, guidance_scale=s_t, image_guidance_scale=s_i,
                 output_type="latent")
            assert batches == [expect] * 2, (s_t, s_i, batches)
    finally:
        hook.remove()
    names = [b.name for b in PIXWIZARD_GUIDANCE.active_branches({"guidance_scale": 4.0, "image_guidance_scale": 1.0})]
    assert names == ["full", "image"]
    out = {"full": torch.tensor(3.0), "image": torch.tensor(2.0), "null": torch.tensor(0.5)}
    v = PIXWIZARD_GUIDANCE.combine(out, {"guidance_scale": 4.0, "image_guidance_scale": 1.5})
    assert float(v) == pytest.approx(0.5 + 1.5 * (2.0 - 0.5) + 4.0 * (3.0 - 2.0))


def test_null_branch_uses_initial_noise_and_official_channels(pipe):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    noise = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(3))
    try:
        pipe("segment the square", _image(), num_inference_steps=1, resolution=32, image_guidance_scale=1.5, latents=noise,
             output_type="latent")
    finally:
        hook.remove()
    kw = seen[0]
    assert torch.equal(kw["image_latents"][2], noise[0])  # null branch: the sampler's own starting noise
    assert torch.all(kw["image_embeds"][2] == 0) and kw["image_embeds"][0].abs().sum() > 0
    assert not torch.equal(kw["image_latents"][0], noise[0])

    kw = dict(num_inference_steps=2, resolution=32, image_guidance_scale=1.5, output_type="latent")
    ours = pipe("segment the square", _image(), latents=noise.clone(), **kw).images
    official = pipe("segment the square", _image(), latents=noise.clone(), official_cfg_channels=True, **kw).images
    assert (ours[:, 3] - official[:, 3]).abs().max() > 1e-4
    one_step = dict(kw, num_inference_steps=1)
    ours1 = pipe("segment the square", _image(), latents=noise.clone(), **one_step).images
    off1 = pipe("segment the square", _image(), latents=noise.clone(), official_cfg_channels=True, **one_step).images
    torch.testing.assert_close(ours1[:, :3], off1[:, :3])
    # a converted official checkpoint (official_sampling in its config) samples the official way by default
    pipe.transformer.register_to_config(official_sampling=True)
    try:
        gen = dict(kw, generator=torch.Generator().manual_seed(1))
        default = pipe("segment the square", _image(), latents=noise.clone(), **gen).images
        gen = dict(kw, generator=torch.Generator().manual_seed(1))
        explicit = pipe("segment the square", _image(), latents=noise.clone(), official_cfg_channels=True,
                        sample_condition=True, add_eos=False, **gen).images
        torch.testing.assert_close(default, explicit, rtol=0, atol=0)
        assert (default - official).abs().max() > 1e-4  # the posterior sample changes the condition
        official_tokens = int(pipe.encode_prompt("segment the square")["prompt_attention_mask"].sum())
    finally:
        pipe.transformer.register_to_config(official_sampling=False)
    # no EOS for an official checkpoint (the official code never appends one), EOS for editkit's models
    assert int(pipe.encode_prompt("segment the square")["prompt_attention_mask"].sum()) == official_tokens + 1


def test_the_official_add_eos_argument_is_ignored_by_gemmas_tokenizer(tmp_path):
    """sample_pixwizard.py loads its tokenizer with `AutoTokenizer.from_pretrained(path, add_eos=True)`. Gemma's
    tokenizer takes `add_eos_token`; `add_eos` is swallowed as an unknown keyword, so no EOS is appended. The
    official-checkpoint default (`add_eos` off) rests on this; the test pins it on the installed transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, GemmaTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate("abcdefgh")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    GemmaTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                       unk_token="<unk>").save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)("abc").input_ids
    official = AutoTokenizer.from_pretrained(tmp_path, add_eos=True)("abc").input_ids
    with_eos = AutoTokenizer.from_pretrained(tmp_path, add_eos_token=True)("abc").input_ids
    assert official == plain and plain[-1] != 1
    assert with_eos == plain + [1]


# -- converter --------------------------------------------------------------------------

OFFICIAL_TOP = {"x_embedder.weight", "x_embedder.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias",
                "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias", "task_embedder.0.weight", "task_embedder.0.bias",
                "task_embedder.1.weight", "task_embedder.1.bias", "global_semantic_embedder.0.weight",
                "global_semantic_embedder.0.bias", "global_semantic_embedder.1.weight", "global_semantic_embedder.1.bias",
                "final_layer.linear.weight", "final_layer.linear.bias", "final_layer.adaLN_modulation.1.weight",
                "final_layer.adaLN_modulation.1.bias", "pad_token"}
OFFICIAL_BLOCK = {f"attention.{n}.weight" for n in ("wq", "wk", "wv", "wo", "wk_y", "wv_y", "wk_ii", "wv_ii")} | {
    f"attention.{n}.{p}" for n in ("q_norm", "k_norm", "ky_norm", "kii_norm") for p in ("weight", "bias")} | {
    "attention.gate", "attention.gate_for_ii"} | {f"feed_forward.w{i}.weight" for i in (1, 2, 3)} | {
    f"{n}.weight" for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2", "attention_y_norm",
                            "attention_input_norm", "input_image_proj", "y_pool_proj")} | {
    f"{n}.{p}" for n in ("adaLN_modulation.1", "in_conv.0", "in_conv.1", "out_conv.0", "out_conv.2",
                         "out_conv.4") for p in ("weight", "bias")}


def test_converter_round_trip(tmp_path):
    model = tiny_pixwizard_transformer(cross_attention_dim=24, pooled_text_dim=20, image_embed_dim=28, sample_tokens=4,
                                       randomize=True, seed=5)
    official = to_official_state_dict(model.state_dict())
    expected = OFFICIAL_TOP | {f"layers.{i}.{k}" for i in range(2) for k in OFFICIAL_BLOCK}
    assert set(official) == expected  # the official key layout (pixwizard.md §10)
    assert official["x_embedder.weight"].shape == (32, 32)
    path = tmp_path / "consolidated_ema.00-of-01.pth"
    torch.save({k: v.clone() for k, v in official.items()}, path)
    converted = convert_checkpoint(path, tmp_path / "transformer", sample_tokens=4, sample_size=16)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    for key in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "learn_sigma",
                "cross_attention_dim", "pooled_text_dim", "image_embed_dim", "in_channels"):
        assert converted.config[key] == model.config[key], key
    # an official checkpoint samples the official way by default: Gumbel token draw, official guidance channels
    assert converted.config.official_sampling and converted.config.token_selection == "gumbel"
    assert not converted.config.task_proj_bias
    reloaded = PixWizardTransformer2DModel.from_pretrained(tmp_path / "transformer")
    x = _inputs()
    with torch.no_grad():
        ref = model(**x, return_dict=False)[0]
        torch.testing.assert_close(converted(**x, token_selection="topk", return_dict=False)[0], ref, rtol=0, atol=0)
        torch.testing.assert_close(reloaded(**x, token_selection="topk", return_dict=False)[0], ref, rtol=0, atol=0)
    # the official y_pool_proj has no bias: a checkpoint that carries one does not fit, and says so
    with_bias = {**official, "layers.0.y_pool_proj.bias": torch.zeros(official["layers.0.y_pool_proj.weight"].shape[0])}
    torch.save(with_bias, tmp_path / "bias.pth")
    with pytest.raises(ValueError, match="unexpected.*task_proj.bias"):
        convert_checkpoint(tmp_path / "bias.pth")
    torch.save({"x_embedder.weight": torch.zeros(2, 2), "unknown.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises((ValueError, KeyError)):
        convert_checkpoint(tmp_path / "bad.pth")


# -- training and evaluation -------------------------------------------------------------

TINY_TRAIN = [
    "data.num_samples=16", "data.tasks=denoise,segment,recolor,depth", "data.size=48", "data.cache=false",
    "data.buckets=true", "data.bucket_sizes=[[48,32]]",  # a non-square bucket: RoPE and latents follow it
    "train.batch_size=4", "log.tensorboard=false", "checkpoint.every=0",
    "model.options.hidden_size=32", "model.options.num_layers=1", "model.options.llm_hidden=32",
    "model.options.llm_layers=1", "model.options.sample_tokens=8", "model.options.vision_image_size=16",
]


def test_training_smoke_and_eval_adapter(tmp_path):
    sys.path.insert(0, str(REPO / "train"))
    import train as trainer

    out = tmp_path / "run"
    assert trainer.main(["--config", str(REPO / "configs/train/pixwizard_shapes.yaml"), f"output_dir={out}",
                         "train.max_steps=3", "train.instruction_noise=0.5", *TINY_TRAIN]) == 0
    final = out / "final"
    pipe = PixWizardPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.default_resolution == 48 and pipe.transformer.config.num_layers == 1
    # the offline byte-level LLM tokenizer survives save/load: BOS, one id per byte, EOS/pad apart
    assert pipe.tokenizer("ab").input_ids == [258, 97, 98] and len(pipe.tokenizer) == 259
    assert (pipe.tokenizer.eos_token_id, pipe.tokenizer.pad_token_id) == (257, 256)
    samples = [make_sample(t, "test", i, 48, seed=0) for i, t in enumerate(("denoise", "segment"))]
    imgs = prompt_and_image(pipe, samples, seeds=[0, 1], steps=2, guidance=None, image_guidance=None)
    assert [im.size for im in imgs] == [(48, 48), (48, 48)]
    again = prompt_and_image(pipe, samples, seeds=[0, 1], steps=2, guidance=None, image_guidance=None)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, again))
    with pytest.raises(ValueError, match="model.options"):
        trainer.main(["--config", str(REPO / "configs/train/pixwizard_shapes.yaml"), f"output_dir={tmp_path / 'x'}",
                      "model.options.hidden=3", *TINY_TRAIN])


def test_text_to_image_canvas_and_mask(pipe):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        out = pipe("a red circle", height=24, width=40, num_inference_steps=2, resolution=32).images[0]
    finally:
        hook.remove()
    assert out.size == (40, 24)
    # the white canvas is the source: its VAE latent and CLIP tokens condition the full branch
    white = PIL.Image.new("RGB", (40, 24), "white")
    ref_embeds = seen[0]["image_embeds"][0]
    seen.clear()
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        pipe("Text to image generation: a red circle", white, num_inference_steps=2, resolution=32)
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0]["image_embeds"][0], ref_embeds)

    img = _image(40, 24)
    mask = np.zeros((24, 40), dtype=np.uint8)
    mask[:, :20] = 255
    res = pipe("remove the noise", img, mask=mask, num_inference_steps=2, resolution=32, output_type="np").images[0]
    np.testing.assert_allclose(res[:, 20:], np.asarray(img, dtype=np.float32)[:, 20:] / 255.0, atol=1e-5)
    assert np.abs(res[:, :20] - np.asarray(img, dtype=np.float32)[:, :20] / 255.0).max() > 0.05
    with pytest.raises(ValueError, match="mask"):
        pipe("a red circle", mask=mask, height=24, width=40)


def test_blocks_follow_the_attention_switch(record_attend):
    """Self-, text- and image-attention of every block go through `editkit.attention.attend` with the
    block's backend (a recorder stands in for xformers, which needs CUDA)."""
    from editkit import attention as ea
    from editkit.modeling import pixwizard_transformer

    model = tiny_pixwizard_transformer(cross_attention_dim=24, pooled_text_dim=20, image_embed_dim=28, sample_tokens=4, randomize=True)
    ea.set_attention_backend(model, "sdpa")
    assert ea.attention_processors(model)["PixWizardBlock[sdpa]"] == 2
    x = _inputs()
    with torch.no_grad():
        want = model(**x, return_dict=False)[0]
    seen = record_attend(pixwizard_transformer)
    for block in model.layers:
        block.attention_backend = "xformers"
    with torch.no_grad():
        got = model(**x, return_dict=False)[0]
    torch.testing.assert_close(got, want)
    assert seen == ["xformers"] * 6
