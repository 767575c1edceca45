"""Converters against the official code: fixtures made by running the official modules (tools/make_golden.py).

Each test reads the official checkpoint through the converter's command line, loads the result with
editkit's own `from_pretrained`, and matches the official output on the same inputs in fp32. A mapping
deliberately broken must break the match (so the fixture can fail).
"""

import types
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- PixWizard -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixwizard_golden():
    folder = FIXTURES / "pixwizard_official"
    return folder / "consolidated_ema.00-of-01.pth", torch.load(folder / "io.pt", weights_only=True)


def _pixwizard_forward(model, io: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=io["x"], timestep=io["t"], encoder_hidden_states=io["cap_feats"],
                     encoder_attention_mask=io["cap_mask"], pooled_text_embeds=io["cap_pooled_feats"],
                     image_latents=io["input_x"], image_embeds=io["input_clip_x"], token_selection="topk",
                     return_dict=False)[0][:, : io["x"].shape[1]]  # learn_sigma: the official forward keeps this half


def test_pixwizard_official_checkpoint_converts_and_matches_the_official_forward(pixwizard_golden, tmp_path):
    from editkit.convert.pixwizard import main
    from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel

    checkpoint, io = pixwizard_golden
    assert io["output"].abs().max() > 0.1 and io["input_clip_x"][2].abs().max() == 0  # real outputs, a null branch
    assert main([str(checkpoint), str(tmp_path / "transformer"), "--sample-tokens", "4", "--sample-size", "16"]) == 0
    model = PixWizardTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    assert model.config.hidden_size == io["config"]["dim"] and model.config.num_kv_heads == io["config"]["n_kv_heads"]
    assert relative_error(_pixwizard_forward(model, io), io["output"]) <= 1e-4


# (the token sampler's y_pool_proj acts only through which CLIP tokens are picked, so zeroing it need not
# change the output; the broken mappings below are ones that always must)
@pytest.mark.parametrize("broken", ["swap_image_kv", "swap_k_norms", "drop_image_gate"])
def test_pixwizard_golden_fixture_catches_a_wrong_mapping(pixwizard_golden, broken):
    from editkit.convert.pixwizard import convert_state_dict, config_from_state_dict
    from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel

    checkpoint, io = pixwizard_golden
    official = torch.load(checkpoint, weights_only=True)
    state = convert_state_dict(official)
    if broken == "swap_image_kv":
        a, b = "layers.1.to_k_image.weight", "layers.1.to_v_image.weight"
        state[a], state[b] = state[b], state[a]
    elif broken == "swap_k_norms":
        for p in ("weight", "bias"):
            a, b = f"layers.0.attn1.norm_k.{p}", f"layers.0.norm_k_image.{p}"
            state[a], state[b] = state[b], state[a]
    else:
        state["layers.0.gate_image"] = torch.zeros_like(state["layers.0.gate_image"])
    model = PixWizardTransformer2DModel(**config_from_state_dict(official, sample_tokens=4, sample_size=16))
    model.load_state_dict(state, strict=True)
    assert relative_error(_pixwizard_forward(model.eval(), io), io["output"]) > 1e-3


class FixedCLIPTokens(torch.nn.Module):
    """In place of the CLIP vision tower (a 1024-wide one is tens of MB): the fixture's CLIP tokens, after a CLS
    slot, for any image. The official CLIP preprocessing is checked on its own (docs/fidelity.md)."""

    def __init__(self, tokens: torch.Tensor):
        super().__init__()
        self.register_buffer("tokens", tokens)
        self.config = types.SimpleNamespace(hidden_size=tokens.shape[-1], image_size=336)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens.dtype

    def forward(self, pixel_values: torch.Tensor) -> types.SimpleNamespace:
        tokens = self.tokens.expand(pixel_values.shape[0], -1, -1)
        return types.SimpleNamespace(last_hidden_state=torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1))


def test_pixwizard_samples_as_the_official_sampler(pixwizard_golden, tmp_path):
    """sample_pixwizard.py's loop (transport Sampler.sample_ode: torchdiffeq Euler on a 5-point grid, the model's
    forward_with_cfg with its channel-0-2 guidance, the Gumbel token draw, proportional attention at the 512 bucket,
    the condition's posterior sample, all from seed 25) against the converted pipeline with its defaults."""
    import PIL.Image
    from diffusers import AutoencoderKL

    from editkit.convert.pixwizard import main
    from editkit.modeling.pixwizard_transformer import PixWizardTransformer2DModel
    from editkit.pipelines.pixwizard import PixWizardPipeline
    from editkit.testing import tiny_clip_tokenizer
    from editkit.testing.pixwizard import (pixwizard_flow_scheduler, tiny_clip_text_with_projection, tiny_llm_text_encoder,
                                           tiny_llm_tokenizer)

    checkpoint, _ = pixwizard_golden
    ref = torch.load(FIXTURES / "pixwizard_official" / "sampling.pt", weights_only=True)
    assert main([str(checkpoint), str(tmp_path / "transformer"), "--sample-tokens", "4", "--sample-size", "16"]) == 0
    pipe = PixWizardPipeline(
        transformer=PixWizardTransformer2DModel.from_pretrained(tmp_path / "transformer"),
        vae=AutoencoderKL.from_pretrained(FIXTURES / "pixwizard_official" / "vae"),
        text_encoder=tiny_llm_text_encoder(hidden_size=24), tokenizer=tiny_llm_tokenizer(),  # unused: states are given
        clip_text_encoder=tiny_clip_text_with_projection(projection_dim=20), clip_tokenizer=tiny_clip_tokenizer(),
        image_encoder=FixedCLIPTokens(ref["input_clip_x"]), scheduler=pixwizard_flow_scheduler())
    pipe.set_progress_bar_config(disable=True)
    feats, mask, pooled = ref["cap_feats"], ref["cap_mask"], ref["cap_pooled_feats"]

    def run(output_type: str, **kw) -> torch.Tensor:
        return pipe(image=PIL.Image.fromarray(ref["image"].numpy()), prompt_embeds=feats[:1], prompt_attention_mask=mask[:1],
                    pooled_prompt_embeds=pooled[:1], negative_prompt_embeds=feats[1:2], negative_prompt_attention_mask=mask[1:2],
                    negative_pooled_prompt_embeds=pooled[1:2], height=ref["size"][1], width=ref["size"][0],
                    resolution=ref["resolution"], num_inference_steps=ref["num_sampling_steps"] - 1,  # N grid points
                    guidance_scale=ref["text_cfg_scale"], image_guidance_scale=ref["image_cfg_scale"],
                    generator=torch.Generator().manual_seed(ref["seed"]), output_type=output_type, **kw).images

    assert relative_error(run("latent"), ref["latents"]) <= 1e-4
    assert relative_error(run("pt")[..., :64, :64], ref["output_corner"]) <= 1e-4
    # the comparison can fail: editkit's deterministic top-k token choice moves the result
    assert relative_error(run("latent", token_selection="topk"), ref["latents"]) > 1e-2


# -- UNIC-Adapter --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unic_converted(tmp_path_factory):
    from editkit.convert.unic import main
    from editkit.modeling.unic_adapter import UNICSD3Transformer2DModel

    folder = FIXTURES / "unic_official"
    out = tmp_path_factory.mktemp("unic") / "transformer"
    assert main([str(folder / "sd3_adapter.pth"), "-o", str(out), "--base", str(folder / "sd3_transformer")]) == 0
    return UNICSD3Transformer2DModel.from_pretrained(out).eval(), torch.load(folder / "io.pt", weights_only=True)


def _unic_forward(model, io: dict, scale: float) -> torch.Tensor:
    with torch.no_grad():
        return model(hidden_states=io["hidden_states"], encoder_hidden_states=io["encoder_hidden_states"],
                     pooled_projections=io["pooled_projections"], timestep=io["timestep"],
                     control_latents=io["hidden_states_control"], instruction_embeds=io["encoder_hidden_states_control"],
                     pooled_instruction_embeds=io["pooled_projections_control"], control_scale=scale,
                     return_dict=False)[0]


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_unic_official_adapter_converts_and_matches_the_official_forward(unic_converted, scale):
    model, io = unic_converted
    official = io[f"output_{scale}"]
    assert (io["output_1.0"] - io["output_0.0"]).abs().max() > 0.1  # the adapter changes the official output
    assert relative_error(_unic_forward(model, io, scale), official) <= 1e-4


def test_unic_samples_as_the_official_pipeline(unic_converted):
    """The official models/pipeline_sd3.py StableDiffusion3Pipeline (adapter loaded as infer.py loads it, its
    3-branch rule, T5 length 77, the condition's posterior sample from torch's global RNG) against editkit's
    UNICAdapterPipeline on the converted checkpoint with its defaults: same latents and image after 4 steps."""
    import PIL.Image
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    from editkit.pipelines.unic import UNICAdapterPipeline

    model, _ = unic_converted
    parts = FIXTURES / "unic_official" / "sd3_pipeline"
    pipe = UNICAdapterPipeline(
        transformer=model, vae=AutoencoderKL.from_pretrained(parts / "vae"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(parts / "scheduler"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(parts / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(parts / "text_encoder_2"),
        text_encoder_3=T5EncoderModel.from_pretrained(parts / "text_encoder_3"),
        tokenizer=CLIPTokenizer.from_pretrained(parts / "tokenizer"), tokenizer_2=CLIPTokenizer.from_pretrained(parts / "tokenizer_2"),
        tokenizer_3=CLIPTokenizer.from_pretrained(parts / "tokenizer_3"))
    pipe.set_progress_bar_config(disable=True)
    ref = torch.load(FIXTURES / "unic_official" / "sampling.pt", weights_only=True)

    def run(output_type: str, **kw) -> torch.Tensor:
        torch.manual_seed(ref["seeds"][1])
        return pipe(ref["prompt"], image=PIL.Image.fromarray(ref["image"].numpy()), instruction=ref["instruct_prompt"],
                    guidance_scale=ref["prompt_guidance"], image_guidance_scale=ref["image_instruction_guidance"],
                    num_inference_steps=ref["num_inference_steps"], height=ref["height"], width=ref["width"],
                    generator=torch.Generator().manual_seed(ref["seeds"][0]), output_type=output_type, **kw).images

    assert model.config.official_sampling
    assert relative_error(run("latent"), ref["latents"]) <= 1e-4
    assert relative_error(run("pt"), ref["output"]) <= 1e-4
    # the comparison can fail: the condition's mode (editkit's own default) instead of the posterior sample
    assert relative_error(run("latent", sample_condition=False), ref["latents"]) > 1e-3


def test_unic_golden_fixture_catches_a_wrong_mapping(unic_converted):
    import copy

    model, io = unic_converted
    broken = copy.deepcopy(model)
    block = broken.transformer_blocks[0]
    with torch.no_grad():  # the control attention's key and value projections swapped
        k, v = block.attn_control.to_k.weight.clone(), block.attn_control.to_v.weight.clone()
        block.attn_control.to_k.weight.copy_(v)
        block.attn_control.to_v.weight.copy_(k)
    assert relative_error(_unic_forward(broken, io, 1.0), io["output_1.0"]) > 1e-3


# -- PromptFix -----------------------------------------------------------------------------------

# the diffusers configs a user passes for the tiny official geometry (tools/make_golden.py PROMPTFIX_*)
PROMPTFIX_UNET = {"sample_size": 8, "in_channels": 8, "out_channels": 4, "block_out_channels": [32, 64],
                  "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D"] * 2,
                  "up_block_types": ["CrossAttnUpBlock2D"] * 2, "cross_attention_dim": 32, "attention_head_dim": 2}
PROMPTFIX_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
                 "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [32, 64], "layers_per_block": 1,
                 "latent_channels": 4, "sample_size": 32}


@pytest.fixture(scope="module")
def promptfix_converted(tmp_path_factory):
    import json

    from editkit.convert.promptfix import main
    from editkit.pipelines.promptfix import PromptFixPipeline
    from editkit.testing import tiny_clip_tokenizer

    folder = FIXTURES / "promptfix_official"
    io = torch.load(folder / "io.pt", weights_only=True)
    work = tmp_path_factory.mktemp("promptfix")
    tiny_clip_tokenizer(model_max_length=16).save_pretrained(work / "tokenizer")
    for name, config in (("unet", PROMPTFIX_UNET), ("vae", PROMPTFIX_VAE), ("text", io["configs"]["clip"])):
        (work / f"{name}.json").write_text(json.dumps(config))
    assert main([str(folder / "promptfix.ckpt"), str(work / "out"), "--tokenizer", str(work / "tokenizer"),
                 "--unet-config", str(work / "unet.json"), "--vae-config", str(work / "vae.json"),
                 "--text-config", str(work / "text.json")]) == 0
    return PromptFixPipeline.from_pretrained(work / "out"), io


def test_promptfix_official_unet_matches_with_its_auxiliary_context(promptfix_converted):
    pipe, io = promptfix_converted
    ctx = io["context"]
    with torch.no_grad():
        out = pipe.unet(io["x"], io["t"], encoder_hidden_states=ctx[0::2], auxiliary_hidden_states=ctx[1::2]).sample
        no_aux = pipe.unet(io["x"], io["t"], encoder_hidden_states=ctx[0::2]).sample
    assert relative_error(out, io["unet_out"]) <= 1e-4
    assert relative_error(no_aux, io["unet_out"]) > 1e-2  # the auxiliary attention contributes


def test_promptfix_official_vae_and_text_encoder_match(promptfix_converted):
    pipe, io = promptfix_converted
    vae = pipe.vae
    assert vae.config.skip_lora_rank == 4 and vae.has_skip_lora
    with torch.no_grad():
        z = vae.encode(io["pixels"]).latent_dist.mode()
        with_skips = vae.decode_with_skips(z, vae.encoder_skips(io["pixels"]))
        without = vae.decode(z).sample
        clip = pipe.text_encoder(input_ids=io["input_ids"]).last_hidden_state
    assert relative_error(z, io["latent_mode"]) <= 1e-4
    assert relative_error(with_skips, io["decoded_with_skips"]) <= 1e-4
    assert relative_error(without, io["decoded_without_skips"]) <= 1e-4  # the official decoder: no LoRA without skips
    assert relative_error(with_skips, io["decoded_without_skips"]) > 1e-2
    assert relative_error(clip, io["clip_hidden"]) <= 1e-4


def test_promptfix_golden_fixture_catches_a_wrong_mapping(promptfix_converted):
    import copy

    pipe, io = promptfix_converted
    unet = copy.deepcopy(pipe.unet)
    block = unet.down_blocks[1].attentions[0].transformer_blocks[0]
    with torch.no_grad():  # the instruction and auxiliary cross-attentions' output projections swapped
        a, b = block.attn2.to_out[0].weight.clone(), block.attn_extra.to_out[0].weight.clone()
        block.attn2.to_out[0].weight.copy_(b)
        block.attn_extra.to_out[0].weight.copy_(a)
        ctx = io["context"]
        out = unet(io["x"], io["t"], encoder_hidden_states=ctx[0::2], auxiliary_hidden_states=ctx[1::2]).sample
    assert relative_error(out, io["unet_out"]) > 1e-3


def test_promptfix_samples_as_the_official_inference_loop(promptfix_converted):
    """process_images_json.py's loop (k-diffusion Euler ancestral on CompVisDenoiser sigmas, its CFGDenoiser's
    midpoint rule, HGS off as the script always runs, seed 2024, decode with the encoder's skips) against the
    converted pipeline called with its defaults: same sigmas, same noise draws, same latents and image."""
    import PIL.Image

    pipe, _ = promptfix_converted
    ref = torch.load(FIXTURES / "promptfix_official" / "sampling.pt", weights_only=True)
    pipe.scheduler.set_timesteps(ref["steps"])
    assert relative_error(pipe.scheduler.sigmas, ref["sigmas"]) <= 1e-5
    assert (pipe.config.guidance_scale, pipe.config.image_guidance_scale) == tuple(ref["scales"])

    def run(output_type: str, **kw) -> torch.Tensor:
        return pipe(image=PIL.Image.fromarray(ref["image"].numpy()), prompt_embeds=ref["instruction"],
                    auxiliary_prompt_embeds=ref["auxiliary"], negative_prompt_embeds=ref["null"], resize_side=None,
                    num_inference_steps=ref["steps"], generator=torch.Generator().manual_seed(ref["seed"]),
                    output_type=output_type, **kw).images

    assert relative_error(run("latent"), ref["latents"]) <= 1e-4
    assert relative_error(run("pt"), ref["output"]) <= 1e-4
    # the comparison can fail: HGS on, or the IP2P guidance rule, moves the result
    assert relative_error(run("latent", hgs_mode="latent"), ref["latents"]) > 1e-3
    assert relative_error(run("latent", guidance_mode="ip2p"), ref["latents"]) > 1e-3


# -- Dream Engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dream_converted(tmp_path_factory):
    """The official tiny composite (transformers 4.49 + the release's diffusers fork) through the converter CLI."""
    from safetensors.torch import load_file
    from transformers import Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLModel

    from editkit.convert.dream import main
    from editkit.modeling.dream_adapter import DreamTransformer2DModel
    from editkit.modeling.dream_encoder import Qwen2VLImageProcessorOnly
    from editkit.testing.dream import tiny_qwen2_vl_image_processor

    folder, out = FIXTURES / "dream_official", tmp_path_factory.mktemp("dream")
    # this DiT has no qk norm (SD3-Medium style), so its head width is given; the config is read off the weights
    assert main([str(folder / "diffusion_pytorch_model.bin"), str(out), "--attention-head-dim", "8", "--sample-size", "32"]) == 0
    io = torch.load(folder / "io.pt", weights_only=True)
    lmm = Qwen2VLModel(Qwen2VLConfig.from_pretrained(folder / "qwen2_vl")).eval()
    lmm.load_state_dict(load_file(out / "lmm" / "model.safetensors"), strict=True)
    transformer = DreamTransformer2DModel.from_pretrained(out / "transformer").eval()
    assert transformer.config.qk_norm is None and transformer.config.num_attention_heads == 4
    processor = Qwen2VLImageProcessorOnly(image_processor=tiny_qwen2_vl_image_processor(io["pixels"]),
                                          tokenizer=Qwen2TokenizerFast.from_pretrained(folder / "qwen2_vl"))
    return io, lmm, transformer, processor


def _dream_states(io, lmm, processor):
    import PIL.Image

    from editkit.modeling.dream_encoder import DreamPrompt, encode_prompts

    prompts = [DreamPrompt(text, (PIL.Image.fromarray(im.numpy()),)) for text, im in zip(io["prompts"], io["images"])]
    with torch.no_grad():
        return encode_prompts(lmm, processor, prompts)


def test_dream_official_release_converts_and_matches_the_official_lmm_and_forward(dream_converted):
    from editkit.modeling.dream_adapter import pool_states

    io, lmm, transformer, processor = dream_converted
    states, inputs = _dream_states(io, lmm, processor)
    assert torch.equal(inputs["input_ids"], io["input_ids"]) and torch.equal(inputs["attention_mask"], io["attention_mask"])
    assert int(io["attention_mask"][1].sum()) < io["attention_mask"].shape[1]  # the batch is padded: positions too are checked
    assert relative_error(states, io["lmm_states"]) < 1e-4  # padding included (the DiT sees it)
    with torch.no_grad():
        out = transformer(hidden_states=io["latents"], encoder_hidden_states=states, pooled_projections=pool_states(states),
                          timestep=io["timestep"], return_dict=False)[0]
    assert relative_error(out, io["output"]) < 1e-4


def test_dream_golden_fixture_catches_wrong_positions_and_a_wrong_mapping(dream_converted, monkeypatch):
    import editkit.modeling.dream_encoder as enc

    io, lmm, transformer, processor = dream_converted
    monkeypatch.setattr(enc, "official_position_ids", lambda base, inputs: None)  # transformers 5.x's own positions
    states, _ = _dream_states(io, lmm, processor)
    assert relative_error(states, io["lmm_states"]) > 1e-3
    monkeypatch.undo()
    states, _ = _dream_states(io, lmm, processor)
    ctx = transformer.context_embedder
    with torch.no_grad():
        ctx.linear_1.weight.copy_(ctx.linear_1.weight.flip(0))
        try:
            out = transformer(hidden_states=io["latents"], encoder_hidden_states=states, pooled_projections=states.mean(1),
                              timestep=io["timestep"], return_dict=False)[0]
        finally:
            ctx.linear_1.weight.copy_(ctx.linear_1.weight.flip(0))
    assert relative_error(out, io["output"]) > 1e-3


@pytest.fixture(scope="module")
def dream_sampling(tmp_path_factory):
    """The official `cfg_predict` runs (tools/make_golden.py dream_sampling) and the release converted through
    the CLI (two shards and their index), assembled into a pipeline folder and loaded with `from_pretrained`."""
    import json
    import shutil

    from transformers import Qwen2TokenizerFast, Qwen2VLConfig

    from editkit.convert.dream import main
    from editkit.testing.dream import tiny_qwen2_vl_image_processor
    from pipelines.dream import DreamEnginePipeline

    folder, out = FIXTURES / "dream_official" / "sampling", tmp_path_factory.mktemp("dream_sampling")
    assert main([str(folder), str(out)]) == 0
    golden = torch.load(folder / "sampling.pt", weights_only=True)
    Qwen2VLConfig.from_pretrained(FIXTURES / "dream_official" / "qwen2_vl").save_pretrained(out / "lmm")
    Qwen2TokenizerFast.from_pretrained(FIXTURES / "dream_official" / "qwen2_vl").save_pretrained(out / "tokenizer")
    processor = tiny_qwen2_vl_image_processor(golden["pixels"])
    processor.save_pretrained(out / "image_processor")
    shutil.copytree(folder / "vae", out / "vae")
    index = {"_class_name": "DreamEnginePipeline", "image_processor": ["transformers", type(processor).__name__],
             "lmm": ["transformers", "Qwen2VLModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "tokenizer": ["transformers", "Qwen2TokenizerFast"],
             "transformer": ["editkit.modeling.dream_adapter", "DreamTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index))
    pipe = DreamEnginePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return golden, pipe


def _dream_call(pipe, golden: dict, case: dict, **overrides) -> torch.Tensor:
    import PIL.Image

    images = [PIL.Image.fromarray(a.numpy()) for a in golden["images"]]
    s = golden["settings"]
    kwargs = {"prompt": case.get("prompt")}
    if "image" in case:
        kwargs["image"] = images[case["image"]]
    if case["name"] == "combine":
        kwargs["objects"] = [(name, images[i]) for name, i in case["segments"]]
    if case["name"] == "interleaved":
        kwargs["prompt"] = [images[p] if isinstance(p, int) else p for p in case["segments"]]
    if case["name"] == "copy":
        kwargs["task"] = "copy"
    return pipe(**kwargs, num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"], height=s["height"],
                width=s["width"], max_side=None, generator=torch.Generator().manual_seed(s["seed"]), output_type="latent",
                **overrides).images


CASES = ("generate", "generate_long", "copy", "edit", "combine", "interleaved")


def test_dream_converter_writes_the_official_config_read_off_the_weights(dream_sampling):
    _, pipe = dream_sampling
    c = pipe.transformer.config
    assert (c.num_layers, c.num_attention_heads, c.attention_head_dim, c.qk_norm) == (2, 4, 8, "rms_norm")
    assert (c.joint_attention_dim, c.caption_projection_dim, c.adapter_hidden_dim, c.pos_embed_max_size) == (32, 32, 64, 32)
    assert c.official_sampling and pipe.scheduler.config.shift == 3.0


@pytest.mark.parametrize("name", CASES)
def test_dream_converted_release_samples_like_the_official_cfg_predict(dream_sampling, name):
    golden, pipe = dream_sampling
    case = next(c for c in golden["cases"] if c["name"] == name)
    latents = _dream_call(pipe, golden, case)
    assert relative_error(latents, case["latents"]) <= 1e-4
    if name == "edit":  # the decode too (the official: latents / 1.5305 + 0.0609, the VAE, postprocess)
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
        assert relative_error((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1), case["output"]) <= 1e-4


@pytest.mark.parametrize("name", ["generate", "edit", "interleaved"])
def test_dream_sampling_fixture_catches_editkits_own_padding_and_nulls(dream_sampling, name):
    golden, pipe = dream_sampling
    case = next(c for c in golden["cases"] if c["name"] == name)
    # editkit's own defaults: pad to the longer of the pair (49 tokens here), the training nulls
    own = {"generate": {"max_sequence_length": 49}, "edit": {"official_null": False}, "interleaved": {"official_null": False}}[name]
    assert relative_error(_dream_call(pipe, golden, case, **own), case["latents"]) > 1e-3


def test_dream_sampling_fixture_catches_the_training_lora_alpha(dream_sampling):
    """The fixture's LoRA is attached as demo.py attaches it (alpha = r); merged at the training alpha (2r) the
    same call no longer matches."""
    import copy

    from editkit.convert import load_state_dict
    from editkit.convert.dream import convert_state_dict

    golden, pipe = dream_sampling
    folder = FIXTURES / "dream_official" / "sampling"
    state = {k: v for shard in sorted(folder.glob("*.bin")) for k, v in load_state_dict(shard).items()}
    assert any(".lora_A." in k for k in state)
    parts = convert_state_dict(state, lora_alpha=8)  # rank 4: the training's 2r
    doubled = copy.copy(pipe)
    doubled.transformer, doubled.lmm = copy.deepcopy(pipe.transformer), copy.deepcopy(pipe.lmm)
    doubled.transformer.load_state_dict(parts["transformer"], strict=True)
    doubled.lmm.load_state_dict(parts["lmm"], strict=True)
    case = next(c for c in golden["cases"] if c["name"] == "edit")
    assert relative_error(_dream_call(doubled, golden, case), case["latents"]) > 1e-3
