"""UNIC-Adapter: scale-0 equality with diffusers SD3, RoPE alignment, converter, training, evaluation adapter."""

import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from editkit.conditioning import EditRequest
from editkit.convert.unic import build_model, check_adapter_keys, convert
from editkit.data.shapes import make_sample
from editkit.modeling.unic_adapter import UNICSD3Transformer2DModel, is_adapter_key, position_ids, rope_2d
from editkit.pipelines import UNICAdapterPipeline
from editkit.evaluation.adapters import unic as evaluate_adapter
from editkit.pipelines.unic import GUIDANCE_PRESETS
from editkit.testing.sd3 import tiny_sd3_transformer
from editkit.testing.unic import tiny_unic_components, tiny_unic_transformer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


@pytest.fixture(scope="module")
def components():
    return tiny_unic_components(seed=0)


@pytest.fixture(scope="module")
def pipe(components):
    p = UNICAdapterPipeline(**components)
    p.set_progress_bar_config(disable=True)
    return p


def _sd3_pipeline(components):
    sd3 = StableDiffusion3Pipeline(
        transformer=components["transformer"].base_transformer(), scheduler=components["scheduler"], vae=components["vae"],
        text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        text_encoder_2=components["text_encoder_2"], tokenizer_2=components["tokenizer_2"],
        text_encoder_3=components["text_encoder_3"], tokenizer_3=components["tokenizer_3"],
    )
    sd3.set_progress_bar_config(disable=True)
    return sd3


def _inputs(b=2, size=16, text=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(b, 4, size, size, generator=g), encoder_hidden_states=torch.randn(b, 9, 32, generator=g),
        pooled_projections=torch.randn(b, 32, generator=g), timestep=torch.tensor([700.0, 250.0][:b]),
        control_latents=torch.randn(b, 4, size, size, generator=g), instruction_embeds=torch.randn(b, text, 32, generator=g),
        pooled_instruction_embeds=torch.randn(b, 32, generator=g),
    )


# -- 1. control_scale = 0 is exactly SD3 -----------------------------------------------------------------------


def test_scale_zero_pipeline_equals_diffusers_sd3(pipe, components):
    """Same weights, seed and inputs: UNIC with control_scale=0 (three-branch guidance on) gives diffusers' SD3 bit for bit."""
    sd3 = _sd3_pipeline(components)
    cond = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(1))
    kw = dict(num_inference_steps=3, guidance_scale=4.5, output_type="pt", max_sequence_length=12)
    ref = sd3("a red circle", negative_prompt="", height=32, width=48, generator=torch.Generator().manual_seed(0), **kw).images
    ours = pipe("a red circle", image=cond, instruction="Generate image from canny edge", control_scale=0.0, image_guidance_scale=1.3,
                generator=torch.Generator().manual_seed(0), **kw).images
    assert ours.shape == ref.shape == (1, 3, 32, 48)
    assert torch.equal(ours, ref)
    # the adapter is live at its default scale
    live = pipe("a red circle", image=cond, instruction="Generate image from canny edge", image_guidance_scale=1.3,
                generator=torch.Generator().manual_seed(0), **kw).images
    assert (live - ref).abs().max() > 1e-3
    # the same pipeline assembled from the diffusers one
    again = UNICAdapterPipeline.from_sd3_pipeline(sd3, components["transformer"])
    again.set_progress_bar_config(disable=True)
    assert torch.equal(again("a red circle", image=cond, instruction="Generate image from canny edge", image_guidance_scale=1.3,
                             generator=torch.Generator().manual_seed(0), **kw).images, live)


def test_scale_zero_model_is_bitwise_base():
    model = tiny_unic_transformer(num_layers=3, seed=3)
    base = model.base_transformer()
    x = _inputs()
    with torch.no_grad():
        ref = base(x["hidden_states"], x["encoder_hidden_states"], x["pooled_projections"], x["timestep"], return_dict=False)[0]
        zero = model(**x, control_scale=torch.zeros(2), return_dict=False)[0]
        one = model(**x, control_scale=torch.tensor([0.0, 1.0]), return_dict=False)[0]
        plain = model(x["hidden_states"], x["encoder_hidden_states"], x["pooled_projections"], x["timestep"], return_dict=False)[0]
    assert torch.equal(zero, ref) and torch.equal(plain, ref)
    assert torch.equal(one[0], ref[0]) and (one[1] - ref[1]).abs().max() > 1e-3  # per-sample scale


def test_zero_gate_and_base_init_make_a_fresh_adapter_the_identity():
    base = tiny_sd3_transformer(num_layers=2, heads=2, head_dim=16, seed=4)
    model = UNICSD3Transformer2DModel.from_sd3(base, init_from_base=True, use_control_gate=True)
    blk = model.transformer_blocks[0]
    assert torch.equal(blk.to_q_control.weight, blk.attn.to_q.weight) and torch.equal(blk.attn_control.to_k.weight, blk.attn.to_k.weight)
    x = _inputs()
    with torch.no_grad():
        ref = base(x["hidden_states"], x["encoder_hidden_states"], x["pooled_projections"], x["timestep"], return_dict=False)[0]
        assert torch.equal(model(**x, return_dict=False)[0], ref)
        blk.control_gate.fill_(1.0)
        assert (model(**x, return_dict=False)[0] - ref).abs().max() > 1e-4


# -- 2. RoPE alignment ------------------------------------------------------------------------------------------


def test_rope_ids_and_table():
    ids = position_ids(2, 3, 2)
    assert ids.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [0, 0], [0, 0]]
    cos, sin = rope_2d(ids, 16)
    assert cos.shape == sin.shape == (8, 16)
    assert torch.equal(cos[-1], torch.ones(16)) and torch.equal(sin[-1], torch.zeros(16))  # text at (0, 0): no rotation
    with pytest.raises(ValueError, match="multiple of 4"):
        rope_2d(ids, 10)


def _log_attention(model, cond_latents, x):
    with torch.no_grad():
        out = model(**{**x, "control_latents": cond_latents}, output_control_attentions=True)
    return out.control_attentions[0][0].double().log()  # block 0, sample 0: (heads, queries, keys)


def test_shifted_condition_shifts_the_injected_attention_map():
    """Condition shifted by (dr, dc) patches: target patch (r + dr, c + dc) attends to it as (r, c) attended to the original.

    Made exactly translation-equivariant by switching off what is not (the sin-cos tables of both streams) and by a
    spatially constant noisy latent; logits are compared relative to a reference key, so the softmax normaliser
    (which also sees the text keys at (0, 0)) cancels."""
    model = tiny_unic_transformer(num_layers=2, seed=5)
    with torch.no_grad():
        model.pos_embed.pos_embed.zero_()
        model.pos_embed_control.pos_embed.zero_()
    p, size, dr, dc = 2, 16, 1, 2
    x = _inputs(b=1, size=size)
    x["hidden_states"] = torch.full_like(x["hidden_states"], 0.3)
    cond = x["control_latents"]
    shifted = torch.roll(cond, shifts=(dr * p, dc * p), dims=(-2, -1))
    a, b = _log_attention(model, cond, x), _log_attention(model, shifted, x)
    g = size // p
    n = g * g
    a, b = a[..., :n].reshape(-1, g, g, g, g), b[..., :n].reshape(-1, g, g, g, g)  # (heads, qr, qc, kr, kc)
    a = a - a[..., :1, :1]  # relative to key (0, 0) ...
    b = b - b[..., dr:dr + 1, dc:dc + 1]  # ... which sits at (dr, dc) after the shift
    # targets (r + dr, c + dc) vs (r, c); keys in the region that did not wrap around
    got = b[:, dr:, dc:, dr:, dc:]
    want = a[:, : g - dr, : g - dc, : g - dr, : g - dc]
    assert torch.allclose(got, want, atol=1e-6)
    unshifted_target = b[:, : g - dr, : g - dc, dr:, dc:]  # target (r, c) reading the moved condition
    assert (unshifted_target - want).abs().max() > 1e-2


def test_condition_must_match_the_target_size():
    model = tiny_unic_transformer(seed=0)
    x = _inputs()
    with pytest.raises(ValueError, match="resize the condition"):
        model(**{**x, "control_latents": torch.zeros(2, 4, 8, 8)})
    with pytest.raises(ValueError, match="instruction_embeds"):
        model(x["hidden_states"], x["encoder_hidden_states"], x["pooled_projections"], x["timestep"], control_latents=x["control_latents"])


# -- pipeline behaviour ------------------------------------------------------------------------------------------


def test_task_presets_are_the_default_scales_never_zero(pipe):
    cond = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    kw = dict(num_inference_steps=2, output_type="pt", max_sequence_length=12)
    run = lambda **k: pipe("a blue square", image=cond, generator=torch.Generator().manual_seed(0), **kw, **k).images  # noqa: E731
    assert GUIDANCE_PRESETS["control"] == (3.0, 1.3) and GUIDANCE_PRESETS["style"] == (6.0, 3.0)
    assert torch.equal(run(task="depth"), run(task="depth", guidance_scale=3.0, image_guidance_scale=1.3))
    assert torch.equal(run(task="style"), run(task="style", guidance_scale=6.0, image_guidance_scale=3.0))
    assert (run(task="depth") - run(task="depth", guidance_scale=0.0, image_guidance_scale=0.0)).abs().max() > 1e-4


def test_converted_official_checkpoint_samples_the_official_way_by_default(pipe, monkeypatch):
    cond = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    lengths = []
    encode = pipe.encode_text
    monkeypatch.setattr(pipe, "encode_text", lambda prompts, n: lengths.append(n) or encode(prompts, n))
    def run(**k):
        torch.manual_seed(1)  # the official posterior sample comes from torch's global RNG
        return pipe("a blue square", image=cond, task="depth", num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **k).images

    editkit_default = run()
    assert set(lengths) == {pipe.default_max_sequence_length()}
    pipe.transformer.register_to_config(official_sampling=True)
    try:
        lengths.clear()
        official = run()
        assert set(lengths) == {77}  # the official pipeline's T5 length
        assert torch.equal(official, run(max_sequence_length=77, sample_condition=True))
        assert (official - editkit_default).abs().max() > 1e-5
    finally:
        pipe.transformer.register_to_config(official_sampling=False)


def test_batches_sizes_and_bad_input(pipe):
    cond = [torch.rand(3, 40, 60), torch.rand(3, 40, 60)]
    out = pipe(["a", "b"], image=cond, task="canny", num_inference_steps=1, num_images_per_prompt=2, max_sequence_length=8, output_type="np").images
    assert out.shape == (4, 40, 60, 3)  # output at the condition's size; work size rounded to 4 px
    with pytest.raises(ValueError, match="unknown `task`"):
        pipe("a", image=cond[0], task="teleport")
    with pytest.raises(ValueError, match="`prompt` has 2 entries for a batch of 3"):
        pipe(["a", "b"], image=cond[0], instruction=["x", "y", "z"])
    with pytest.raises(ValueError, match="detector_path"):
        pipe("a", image=cond[0], preprocess="depth")
    with pytest.raises(TypeError, match="prompt"):
        pipe(3, image=cond[0])
    with pytest.raises(TypeError, match="UNICSD3Transformer2DModel"):
        UNICAdapterPipeline(**{**dict(pipe.components), "transformer": tiny_sd3_transformer()})


def test_canny_preprocessing_and_edit_request(pipe):
    photo = make_sample("canny_to_image", "test", 0, 64).target
    out = pipe("shapes", image=photo, preprocess="canny", task="canny", num_inference_steps=1, max_sequence_length=8)
    assert out.images[0].size == (64, 64)
    got = pipe.edit(EditRequest("a red circle", references=[photo], task="canny"), num_inference_steps=1, max_sequence_length=8)
    assert got.images[0].size == (64, 64)


# -- 3. converter ------------------------------------------------------------------------------------------------


def official_adapter_state(num_layers=2, dim=32, ch=4, patch=2, joint=32, pooled=32, seed=0, with_pos_embed=False):
    """A synthetic SD3 adapter state dict with the official key layout (spec §10), written from the spec, not the model."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {
        "context_embedder_control.weight": r(dim, joint), "context_embedder_control.bias": r(dim),
        "pos_embed_control.proj.weight": r(dim, ch, patch, patch), "pos_embed_control.proj.bias": r(dim),
        "time_text_embed_control.timestep_embedder.linear_1.weight": r(dim, 256), "time_text_embed_control.timestep_embedder.linear_1.bias": r(dim),
        "time_text_embed_control.timestep_embedder.linear_2.weight": r(dim, dim), "time_text_embed_control.timestep_embedder.linear_2.bias": r(dim),
        "time_text_embed_control.text_embedder.linear_1.weight": r(dim, pooled), "time_text_embed_control.text_embedder.linear_1.bias": r(dim),
        "time_text_embed_control.text_embedder.linear_2.weight": r(dim, dim), "time_text_embed_control.text_embedder.linear_2.bias": r(dim),
    }
    if with_pos_embed:
        sd["pos_embed_control.pos_embed"] = r(1, 32 * 32 // patch // patch * 4, dim)
    for n in range(num_layers):
        last = n == num_layers - 1
        b = f"transformer_blocks.{n}."
        sd[b + "norm1_control.linear.weight"], sd[b + "norm1_control.linear.bias"] = r(6 * dim, dim), r(6 * dim)
        k = 2 if last else 6
        sd[b + "norm1_context_control.linear.weight"], sd[b + "norm1_context_control.linear.bias"] = r(k * dim, dim), r(k * dim)
        projs = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"] + ([] if last else ["to_add_out"])
        for name in projs:
            sd[b + f"attn_control.{name}.weight"], sd[b + f"attn_control.{name}.bias"] = r(dim, dim), r(dim)
        sd[b + "to_q_control.weight"], sd[b + "to_q_control.bias"] = r(dim, dim), r(dim)
    return sd


def test_converter_round_trip(tmp_path):
    base = tiny_sd3_transformer(num_layers=2, heads=2, head_dim=16, seed=6)
    state = official_adapter_state()
    pth = tmp_path / "sd3_medium_adapter.pth"
    torch.save(state, pth)
    out = convert(pth, tmp_path / "unic-transformer", base=base)
    model = UNICSD3Transformer2DModel.from_pretrained(str(out))
    assert model.config.official_sampling  # the pipeline samples a converted checkpoint the official way
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())  # every official tensor landed under its name
    assert all(torch.equal(got[k], v) for k, v in base.state_dict().items())  # base untouched
    assert set(model.adapter_state_dict()) == set(state) | {"pos_embed_control.pos_embed"}
    # adapter-only safetensors and back
    st = convert(pth, tmp_path / "adapter.safetensors")
    again = build_model(base, load_file(str(st)))
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model(**x, return_dict=False)[0], again(**x, return_dict=False)[0])
    assert all(is_adapter_key(k) for k in state)


def test_converter_refuses_foreign_layouts(tmp_path):
    base = tiny_sd3_transformer(num_layers=2, heads=2, head_dim=16, seed=6)
    state = official_adapter_state()
    with pytest.raises(ValueError, match="not UNIC adapter keys"):
        check_adapter_keys({**state, "transformer_blocks.0.attn.to_q.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="SD3.5"):
        check_adapter_keys({**state, "transformer_blocks.0.attn2_control.to_q.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="disagree"):
        build_model(base, official_adapter_state(num_layers=3))
    bad = dict(state)
    bad["transformer_blocks.0.to_q_control.weight"] = torch.zeros(32, 16)
    with pytest.raises(ValueError, match="wrong shape"):
        build_model(base, bad)
    with pytest.raises(ValueError, match=".safetensors"):
        torch.save(state, tmp_path / "a.pth")
        convert(tmp_path / "a.pth", tmp_path / "out_folder")


# -- 4. training ---------------------------------------------------------------------------------------------------

TINY = [
    "method=unic", "data.size=48", "data.num_samples=16", "data.tasks=canny_to_image,subject_driven,style_driven",
    "data.cache=false", "data.num_workers=0", "train.batch_size=4", "train.lr=1e-3", "log.tensorboard=false",
    "model.tiny.text_max_length=32", "model.tiny.vae_channels=[16,32]", "model.tiny.vae_mid_attention=false",
    "model.options.num_layers=2", "model.options.num_attention_heads=2", "model.options.attention_head_dim=8",
    "model.options.clip_hidden=16", "model.options.clip_layers=1", "model.options.projection_dim=8",
    "model.options.t5_dim=32", "model.options.t5_layers=1", "model.options.t5_max_length=40", "model.options.use_control_gate=true", "validation.every=0", "checkpoint.every=0",
]


def _method(extra=()):
    from editkit.training.config import load_config
    from editkit.training.methods import get_method

    return get_method("unic")(load_config(REPO / "configs/train/unic_shapes.yaml", [*TINY, *extra]))


def test_plugin_freezes_the_base_and_trains_the_adapter():
    from editkit.training.data import build_dataset, sample_generators

    method = _method(["model.options.train_base=false", "model.train_text_encoder=false"])
    tr = method.transformer
    trainable = {n for n, p in tr.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(n) for n in trainable)
    assert "transformer_blocks.1.attn_control.to_out.0.weight" not in trainable  # inert in the last block
    ds = build_dataset(method.cfg.data, 0)
    batch = method.collate([ds[i] for i in range(3)])
    assert batch["source"].shape == (3, 3, 48, 48) and len(batch["auxiliary_prompt"]) == 3
    batch["latents"] = method.encode_images(batch["source"], batch["target"])
    loss = method.loss({"transformer": tr}, batch, sample_generators(0, 0, batch["index"]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in tr.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in tr.named_parameters() if not is_adapter_key(n))


def test_lora_option_trains_only_lora_and_gates_and_exports_merged(tmp_path):
    method = _method(["model.options.train_base=false", "model.train_text_encoder=false", "model.options.lora_rank=2"])
    tr = method.transformer
    trainable = [n for n, p in tr.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.endswith("control_gate") for n in trainable)
    x = _inputs(size=24, text=5)
    x.update(pooled_projections=torch.randn(2, 16), pooled_instruction_embeds=torch.randn(2, 16))
    with torch.no_grad():
        for block in tr.transformer_blocks:
            block.control_gate.fill_(1.0)
        before = tr(**x, return_dict=False)[0]
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.normal_()
        trained = tr(**x, return_dict=False)[0]
    method.export(tmp_path / "lora", {"transformer": tr})
    loaded = UNICSD3Transformer2DModel.from_pretrained(str(tmp_path / "lora" / "transformer"))
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        merged = loaded(**x, return_dict=False)[0]
    assert (trained - before).abs().max() > 1e-2 and torch.allclose(merged, trained, atol=1e-5)


def test_training_smoke_run_exports_a_loadable_pipeline(tmp_path):
    sys.path.insert(0, str(REPO / "train"))
    import train as trainer

    out = tmp_path / "run"
    assert trainer.main(["--config", str(REPO / "configs/train/unic_shapes.yaml"), f"output_dir={out}", *TINY, "train.max_steps=2"]) == 0
    loaded = UNICAdapterPipeline.from_pretrained(str(out / "final"))
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.config.use_control_gate and loaded.default_max_sequence_length() == 40
    img = loaded("a red circle", image=make_sample("canny_to_image", "val", 0, 48).source, task="canny", num_inference_steps=2).images[0]
    assert img.size == (48, 48)


# -- 5. evaluation adapter ----------------------------------------------------------------------------------------


def test_evaluation_adapter_on_two_samples(pipe):
    samples = [make_sample("canny_to_image", "test", 0, 48), make_sample("style_driven", "test", 0, 48)]
    images = evaluate_adapter(pipe, samples, seeds=[0, 1], steps=2, guidance=None, image_guidance=None)
    assert len(images) == 2 and all(im.size == (48, 48) for im in images)
    again = evaluate_adapter(pipe, samples, seeds=[0, 1], steps=2, guidance=None, image_guidance=None)
    assert all(list(a.getdata()) == list(b.getdata()) for a, b in zip(images, again))


def test_condition_free_baseline_ignores_the_condition(pipe):
    """`control_scale=0` through the eval adapter (the baseline of the note's table): swapping the
    condition map for another sample's leaves the output unchanged; with the condition it changes."""
    a, b = make_sample("canny_to_image", "test", 0, 48), make_sample("canny_to_image", "test", 1, 48)
    swapped = dataclasses.replace(a, source=b.source)
    kw = dict(seeds=[3], steps=2, guidance=None, image_guidance=None)
    free = [np.asarray(evaluate_adapter(pipe, [s], control_scale=0.0, **kw)[0]) for s in (a, swapped)]
    assert np.array_equal(free[0], free[1])
    full = [np.asarray(evaluate_adapter(pipe, [s], **kw)[0]).astype(int) for s in (a, swapped)]
    assert np.abs(full[0] - full[1]).max() > 0


def test_control_path_follows_the_attention_switch(record_attend):
    """Every attention of the control path goes through `editkit.attention.attend` with the blocks'
    backend; the switch sets it (xformers itself needs CUDA, so a recorder stands in for the kernel)."""
    from editkit import attention as ea
    from editkit.modeling import unic_adapter

    model = tiny_unic_transformer(num_layers=2, seed=7)
    assert ea.attention_processors(model)["UNICJointTransformerBlock[sdpa]"] == 2
    x = _inputs()
    with torch.no_grad():
        want = model(**x).sample
    seen = record_attend(unic_adapter)
    for block in model.transformer_blocks:
        block.attention_backend = "xformers"  # what set_attention_backend(..., "xformers") writes
    with torch.no_grad():
        got = model(**x).sample
    torch.testing.assert_close(got, want)
    # per block: base joint + injection (+ control joint, except in the context-pre-only last block)
    assert seen == ["xformers"] * 5
