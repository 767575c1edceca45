"""Golden fixtures made by the official code, for the converter tests (tests/test_golden.py).

This script is run by hand, never by the tests: it needs the official repository checked out and its
dependencies, and writes small files under tests/fixtures/ that the tests then read. The official code
is not part of editkit; only its outputs on fixed inputs are.

PixWizard (github.com/AFeng-x/PixWizard, commit cb39454ca1fe72ca41505c9cd3d5c54b412ad48e):

    git -C PixWizard archive cb39454 models | tar -x -C /tmp/pixwizard_official
    pip install --no-deps --target /tmp/golden_deps fairscale==0.4.13
    python tools/make_golden.py pixwizard --official /tmp/pixwizard_official/models --deps /tmp/golden_deps

What had to change to run it on CPU, in words:
  * `flash_attn` is not installable without CUDA. The official attention calls it only for fp16/bf16
    inputs and takes `F.scaled_dot_product_attention` in fp32, so an empty stand-in module is put in
    `sys.modules` to satisfy the import; it raises if it is ever called.
  * fairscale's model-parallel layers need a process group: one gloo process (world size 1) is started
    and model parallelism initialised with size 1, which makes ColumnParallelLinear / RowParallelLinear
    plain linear layers.
  * The official fp32 self-attention calls `F.scaled_dot_product_attention` without repeating the KV
    heads, which fails for GQA models (the released 2B GQA model runs the flash path in bf16, where each
    group of query heads shares one KV head). Inside the official module, SDPA is given
    `enable_gqa=True` when the keys have fewer heads than the queries: the flash path's computation.
  * `precompute_freqs_cis` moves its frequency table to CUDA with `.cuda()`; while the model is built,
    `Tensor.cuda` returns the tensor unchanged (the table stays on the CPU, same values).
  * The Gumbel draw of the token sampler (`MultiHot_Gumbel_Softmax`) is random. For a reproducible
    fixture the module-level function is replaced by the same computation without the Gumbel noise
    (hard top-k of softmax(logits / tau), straight-through), i.e. the deterministic top-k that
    editkit's `token_selection="topk"` computes. Nothing else in the official model is touched.

PixWizard sampling (the same commit; after the pixwizard fixture, whose checkpoint it reads):

    git -C PixWizard archive cb39454 models transport | tar -x -C /tmp/pixwizard_full
    git -C PixWizard show cb39454:sample_pixwizard.py > /tmp/pixwizard_full/sample_pixwizard.py
    pip install --no-deps --target /tmp/golden_deps torchdiffeq
    python tools/make_golden.py pixwizard_sampling --official /tmp/pixwizard_full/models --deps /tmp/golden_deps

It runs sample_pixwizard.py's loop body for one image with its defaults (Linear path, velocity, Euler through
`transport.Sampler.sample_ode`, time shift 1, proportional attention with base_seqlen from the 512 bucket
found by its own `find_closest_size`), the official Gumbel token draw kept, `torch.random.manual_seed(25)`,
5 grid points, scales 4.0 / 1.5. What had to change, besides the model patches above (without the
deterministic token draw): the script needs CUDA, Gemma, CLIP and its data, so its `resolution2scale` table
and `find_closest_size` are parsed out of the file and run, and the loop body is repeated with CPU tensors;
the Gemma / CLIP text states and the CLIP image tokens are fixed random tensors (the encoders are separate
fixtures; a 1024-wide CLIP tower would be tens of MB); the VAE is a tiny 8x-down diffusers AutoencoderKL, as
the script assumes 8x (saved in vae/). `Tensor.cuda` returns the tensor during sampling too (the RoPE table
is rebuilt each step).

UNIC-Adapter (github.com/AIDC-AI/UNIC-Adapter, commit 1c8462d0c2e01f9117417b9cccf4c559fc956869):

    git -C UNIC-Adapter archive 1c8462d models | tar -x -C /tmp/unic_official
    python tools/make_golden.py unic --official /tmp/unic_official/models

What had to change: `diffusers.models.controlnet` (where the official code imports `zero_module`
from) is `diffusers.models.controlnets.controlnet` in the pinned diffusers; an alias module is put in
`sys.modules`. Nothing else. The fixture is a diffusers SD3 transformer folder (the base, as a user
downloads it), the adapter saved as the official `.pth` (the model's keys that SD3 does not have,
which the official app loads on top of SD3's), and the official forward at control scales 0, 0.5, 1.

UNIC-Adapter sampling (the same commit; after the unic fixture, whose checkpoint it reads):

    git -C UNIC-Adapter archive 1c8462d models | tar -x -C /tmp/unic_official
    python tools/make_golden.py unic_sampling --official /tmp/unic_official/models

The official `StableDiffusion3Pipeline` (models/pipeline_sd3.py) runs unchanged, with the adapter model loaded
as infer.py loads it (the base's state dict updated with the adapter's, strict) and the condition image
prepared as infer.py prepares it (Resize, ToTensor, Normalize 0.5). The other parts are a tiny SD3 stack
(CLIP-L/G and T5 at width 16/32 with a byte-level CLIP tokenizer, a 2-level VAE with SD3's scaling and shift,
FlowMatchEulerDiscreteScheduler(shift=3)), every parameter re-drawn, and saved next to the result in
sd3_pipeline/. The same zero_module alias as above; nothing else changed.

PromptFix (github.com/yeates/PromptFix, commit 5c8a34db6a38b865a28ec194b1c1765b910cf102):

    git -C PromptFix archive 5c8a34d stable_diffusion/ldm | tar -x -C /tmp/promptfix_official
    python tools/make_golden.py promptfix --official /tmp/promptfix_official/stable_diffusion/ldm

The official `UNetModel` (openaimodel.py, dual context) and `AutoencoderKL` (autoencoder.py, with
`enable_decoder_cond_lora=True`) are built tiny from configs/promptfix.yaml's settings, and the text
encoder is transformers' `CLIPTextModel`, which the official FrozenCLIPEmbedder wraps. What had to
change: autoencoder.py imports `taming`'s VectorQuantizer (used only by VQModel) and a print helper
from the training repo's `utils.utils`; both get empty stand-in modules. `force_type_convert` and
`use_checkpoint` are False: the first only casts to fp16 for the half-precision run, the second only
recomputes activations in training. The checkpoint is the LDM `.ckpt` layout, `{"state_dict": ...}`
with `model.diffusion_model.*`, `first_stage_model.*` and `cond_stage_model.transformer.*` (only the
model parts: the diffusion schedule buffers and EMA copies of a real release are not included).

PromptFix sampling (the same commit; after the promptfix fixture, whose checkpoint it reads):

    git -C PromptFix show 5c8a34d:process_images_json.py > /tmp/promptfix_official/process_images_json.py
    pip download --no-deps k-diffusion==0.1.1.post1 && unzip it; copy its k_diffusion folder to /tmp/golden_deps
    pip install --no-deps --target /tmp/golden_deps torchsde trampoline torchdiffeq
    python tools/make_golden.py promptfix_sampling --official /tmp/promptfix_official/stable_diffusion/ldm --deps /tmp/golden_deps

It runs the inference script's loop for one image: `K.external.CompVisDenoiser` around the model, the
script's own `CFGDenoiser` class, `K.sampling.sample_euler_ancestral` on `get_sigmas(4)`, the script's
`torch.manual_seed(2024)` and noise, HGS off (the script's default), and `decode_first_stage` with the
encoder's skips. What had to change: the script itself needs CUDA, its checkpoint and its image folder, so
only its `CFGDenoiser` class is taken from it (parsed out of the file and run unchanged). The model is the
official `LatentDiffusion` without its constructor (which would fetch CLIP from the hub): its `apply_model`,
`encode_first_stage`, `decode_first_stage` and `DDPM.register_schedule` with the config's linear 0.00085 /
0.012 betas, around the official `DiffusionWrapper("hybrid")`, UNet and autoencoder loaded strictly from the
fixture's checkpoint. The text states are fixed random tensors in place of CLIP's (the CLIP match is its
own test). k-diffusion is imported without its package `__init__`, which pulls in training-only modules;
the script pins k-diffusion's git HEAD, 0.1.1.post1 is its last release.

Dream Engine (github.com/chenllliang/DreamEngine, commit 374cffe), run with the library versions it was
trained with (transformers 4.49, its vendored diffusers fork):

    git -C DreamEngine archive HEAD src/diffusers/src | tar -x -C /tmp/dream_official
    python -m venv /tmp/dream_env && /tmp/dream_env/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        transformers==4.49.0 "accelerate<1.5" peft==0.11.1 "huggingface_hub<0.30" safetensors sentencepiece qwen-vl-utils
    PYTHONPATH=/tmp/dream_official/src/diffusers/src /tmp/dream_env/bin/python tools/make_golden.py dream --official /tmp/dream_official
    PYTHONPATH=/tmp/dream_official/src/diffusers/src /tmp/dream_env/bin/python tools/make_golden.py dream_sampling --official /tmp/dream_official

`dream_sampling` runs the release's own `QwenVLStableDiffusion3Pipeline.cfg_predict` unchanged (its
`qwen_vl_utils.process_vision_info` included) on a second tiny composite, this one with SD3.5's rms qk norm
and PEFT LoRA (rank 4, alpha = r) on the LMM and the DiT with demo.py's target modules (`add_adapter`, as
the demo does; the LoRA weights are re-drawn with the rest),
a tiny 4x AutoencoderKL with SD3's scaling and shift factors, and `FlowMatchEulerDiscreteScheduler(shift=3)`:
one call per branch at its default `max_sequence_length` (77), guidance 3.5, 4 steps, 64 x 64, a generator
seeded 136147 (the demo's seed), each call once for the latents and once decoded. A forward pre-hook only
records the token length the DiT saw. Saved: the state dict as two shards and their index (as `train.py`'s
`save_pretrained` writes them), the VAE, the input images, and per call its inputs, length and outputs.

Nothing in the official code is changed; the fork is put on the path instead of installed (its setup.py
needs a README the archive leaves out). The composite `QwenVLSD3_DirectMap_Transformer2DModel` is built tiny
(Qwen2-VL: 2 layers, width 32, a 2-layer ViT; SD3 DiT: 2 layers, 4 heads x 8; adapter MLPs 64 wide) with a
byte-level Qwen2 tokenizer, and its forward is run on a right-padded batch of two interleaved prompts of
different lengths (the official batch: every position, padding included, reaches the DiT). Saved: the state
dict as the release's single shard, without `pooled_proj` (a 4096 x 2048 layer the DirectMap forward never
uses, 32 MB; the converter drops it) and with `norm_lmm_out` at its initial all-ones (the release was trained
without `--do_lmm_post_norm`); the Qwen2-VL config and tokenizer; the processor's inputs; the LMM's last
hidden states and the forward's output.

Every parameter is re-drawn after construction (zero-initialised ones too), fan-in scaled, with norm
weights near 1 and gates away from 0, so that every path contributes to the output and a wrong or
dropped mapping changes it. The state dict is saved as the official training saves its EMA weights:
a plain fp32 dict in `consolidated_ema.00-of-01.pth`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import types
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PIXWIZARD_COMMIT = "cb39454ca1fe72ca41505c9cd3d5c54b412ad48e"
# the tiny official model: 2 layers, width 64, 4 heads over 2 KV heads, Gemma width 24, CLIP text width 20
PIXWIZARD_TINY = dict(patch_size=2, in_channels=4, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                      qk_norm=True, cap_feat_dim=24, cap_clip_feat_dim=20, sample_tokens=4, learn_sigma=True)


def redraw_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn again: weights ~ N(0, 1/fan_in), 1-D norm weights ~ 1 + N(0, 0.1^2),
    biases and gates ~ N(0, 0.3^2), so nothing is zero and every branch reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _stand_ins() -> None:
    def unavailable(*args, **kwargs):
        raise RuntimeError("flash_attn stand-in: the fp32 path of the official attention should not call this")

    flash = types.ModuleType("flash_attn")
    flash.flash_attn_varlen_func = unavailable
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.index_first_axis = padding.pad_input = padding.unpad_input = unavailable
    flash.bert_padding = padding
    sys.modules.setdefault("flash_attn", flash)
    sys.modules.setdefault("flash_attn.bert_padding", padding)


def _deterministic_multi_hot(logits, tau=1, hard=False, dim=-1, sample_tokens=1):
    # the official MultiHot_Gumbel_Softmax with the Gumbel noise left out
    y_soft = (logits / tau).softmax(dim)
    if not hard:
        return y_soft
    indices = y_soft.topk(sample_tokens, dim=dim).indices
    y_hard = torch.zeros_like(logits).scatter_(dim, indices, 1.0)
    return y_hard - y_soft.detach() + y_soft


def _functional_with_gqa() -> types.ModuleType:
    functional = types.ModuleType("functional_with_gqa")
    functional.__dict__.update(torch.nn.functional.__dict__)

    def sdpa(query, key, value, *args, **kwargs):
        if key.shape[1] < query.shape[1]:
            kwargs["enable_gqa"] = True
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, *args, **kwargs)

    functional.scaled_dot_product_attention = sdpa
    return functional


def pixwizard_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three samples at an 8 x 12 latent: two with CLIP image tokens, the third the image-free CFG branch."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = 3, 8, 12
    clip = torch.randn(b, 9, 1024, generator=g)
    clip[2] = 0
    return {
        "x": torch.randn(b, 4, h, w, generator=g),
        "input_x": torch.randn(b, 4, h, w, generator=g),
        "t": torch.rand(b, generator=g),
        "cap_feats": torch.randn(b, 7, 24, generator=g),
        "cap_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]),
        "cap_pooled_feats": torch.randn(b, 20, generator=g),
        "input_clip_x": clip,
    }


def _official_pixwizard(official: Path, deps: Path, deterministic_tokens: bool) -> torch.nn.Module:
    """The official PixWizard model class built tiny on the CPU (the patches are described in the module docstring)."""
    sys.path[:0] = [str(deps), str(official.parent)]
    _stand_ins()
    import torch.distributed as dist

    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(delete=False)
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    import fairscale.nn.model_parallel.initialize as fs_init

    fs_init.initialize_model_parallel(1)
    package = official.name
    model_module = __import__(f"{package}.model", fromlist=["PixWizard"])
    if deterministic_tokens:
        model_module.MultiHot_Gumbel_Softmax = _deterministic_multi_hot
    model_module.F = _functional_with_gqa()
    with _cuda_is_cpu():
        return model_module.PixWizard(**PIXWIZARD_TINY).eval()


@contextlib.contextmanager
def _cuda_is_cpu():
    """`Tensor.cuda` returns the tensor unchanged (the official RoPE tables call it; the values stay the same)."""
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def make_pixwizard(official: Path, deps: Path, out: Path) -> None:
    model = _official_pixwizard(official, deps, deterministic_tokens=True)
    redraw_(model, seed=1)
    x = pixwizard_inputs()
    with torch.no_grad():
        # the official sampler passes lists (one tensor per sample: any resolution)
        outputs = model(list(x["input_x"]), list(x["input_clip_x"][:, None]), list(x["x"]), x["t"], x["cap_feats"],
                        x["cap_mask"], x["cap_pooled_feats"])
    output = torch.stack(outputs)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "consolidated_ema.00-of-01.pth")
    torch.save({**x, "output": output.clone(), "commit": PIXWIZARD_COMMIT, "config": PIXWIZARD_TINY}, out / "io.pt")
    print(f"wrote {out}: {sum(v.numel() for v in model.state_dict().values())} parameters, output {tuple(output.shape)}")


PIXWIZARD_SAMPLING = {"num_sampling_steps": 5, "text_cfg_scale": 4.0, "image_cfg_scale": 1.5, "seed": 25, "resolution": 512}
PIXWIZARD_VAE = dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=8)  # 8x down, as sample_pixwizard.py assumes


def pixwizard_sampling_inputs(seed: int = 9) -> dict[str, torch.Tensor]:
    """A 64 x 64 RGB image (uint8; the sampler resizes it to the 512 x 512 bucket), Gemma-like states for the
    prompt and the two empty prompts (one padded length, masks), pooled CLIP text, and CLIP image tokens."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g)
    image = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    null = torch.randn(1, 8, 24, generator=g)
    return {
        "image": (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8),
        "cap_feats": torch.cat([torch.randn(1, 8, 24, generator=g), null, null]),
        "cap_mask": torch.tensor([[1] * 6 + [0] * 2, [1] * 2 + [0] * 6, [1] * 2 + [0] * 6]),
        "cap_pooled_feats": torch.cat([torch.randn(1, 20, generator=g), torch.randn(1, 20, generator=g).repeat(2, 1)]),
        "input_clip_x": torch.randn(1, 9, 1024, generator=g),
    }


def make_pixwizard_sampling(official: Path, deps: Path, out: Path) -> None:
    """sample_pixwizard.py's loop for one image on the pixwizard fixture's checkpoint, its Gumbel token draw kept."""
    import ast

    from PIL import Image
    from torchvision import transforms

    from editkit.testing import tiny_vae

    model = _official_pixwizard(official, deps, deterministic_tokens=False)
    model.load_state_dict(torch.load(out / "consolidated_ema.00-of-01.pth", weights_only=True), strict=True)
    from transport import Sampler, create_transport

    script = official.parent / "sample_pixwizard.py"
    names: dict = {}
    body = [n for n in ast.parse(script.read_text()).body
            if (isinstance(n, ast.Assign) and n.targets[0].id == "resolution2scale")
            or (isinstance(n, ast.FunctionDef) and n.name == "find_closest_size")]
    exec(compile(ast.Module(body, type_ignores=[]), str(script), "exec"), names)
    vae = tiny_vae(**PIXWIZARD_VAE, seed=14)
    redraw_(vae, seed=15)
    vae.register_to_config(scaling_factor=0.18215)  # the script's factor for a non-SDXL VAE
    x = pixwizard_sampling_inputs()
    args = PIXWIZARD_SAMPLING
    image_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3, inplace=True)])
    with torch.no_grad(), _cuda_is_cpu():  # the script's loop body for one image, fp32 on the CPU (euler, Linear, velocity)
        transport = create_transport("Linear", "velocity", None, None, None)
        sample_fn = Sampler(transport).sample_ode(sampling_method="euler", num_steps=args["num_sampling_steps"], atol=1e-6,
                                                  rtol=1e-3, reverse=False, time_shifting_factor=1.0)
        torch.random.manual_seed(args["seed"])
        inp_img = Image.fromarray(x["image"].numpy())
        w_gt, h_gt = inp_img.size
        _, (w, h), res_cat = names["find_closest_size"](names["resolution2scale"][args["resolution"]], w_gt / h_gt)
        z_1 = torch.randn([1, 4, h // 8, w // 8])
        z = z_1.repeat(3, 1, 1, 1)
        inp = image_transform(inp_img.resize((w, h), resample=Image.LANCZOS))
        input_clip_x = torch.cat((x["input_clip_x"], x["input_clip_x"], torch.zeros_like(x["input_clip_x"])), dim=0)
        input_x = vae.encode(inp[None]).latent_dist.sample().mul_(0.18215)
        input_x = torch.cat((input_x, input_x, z_1), dim=0)
        model_kwargs = dict(input_x=input_x, input_clip_x=input_clip_x, cap_feats=x["cap_feats"], cap_mask=x["cap_mask"],
                            cap_pooled_feats=x["cap_pooled_feats"], text_cfg_scale=args["text_cfg_scale"],
                            image_cfg_scale=args["image_cfg_scale"], proportional_attn=True, base_seqlen=(res_cat // 16) ** 2,
                            scale_factor=1.0, scale_watershed=1.0)
        samples = sample_fn(z, model.forward_with_cfg, **model_kwargs)[-1][:1]
        image = ((vae.decode(samples / 0.18215).sample + 1.0) / 2.0).clamp(0.0, 1.0)
    vae.save_pretrained(out / "vae")
    # the decoded image's top-left 64 x 64 corner only (the whole 512 x 512 image is 3 MB)
    torch.save({**x, **args, "size": (w, h), "latents": samples.clone(), "output_corner": image[..., :64, :64].clone(), "commit": PIXWIZARD_COMMIT},
               out / "sampling.pt")
    print(f"wrote {out / 'sampling.pt'}: bucket {w}x{h}, base_seqlen {(res_cat // 16) ** 2}")


UNIC_TINY = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=64,  # RoPE axes 32 + 32
                 num_attention_heads=1, joint_attention_dim=32, caption_projection_dim=64, pooled_projection_dim=32,
                 out_channels=4, pos_embed_max_size=16, qk_norm=None, dual_attention_layers=())
UNIC_COMMIT = "1c8462d0c2e01f9117417b9cccf4c559fc956869"


def unic_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 8, 12
    return {
        "hidden_states": torch.randn(b, 4, h, w, generator=g),
        "encoder_hidden_states": torch.randn(b, 6, 32, generator=g),
        "pooled_projections": torch.randn(b, 32, generator=g),
        "hidden_states_control": torch.randn(b, 4, h, w, generator=g),
        "encoder_hidden_states_control": torch.randn(b, 6, 32, generator=g),  # official: same length as the prompt
        "pooled_projections_control": torch.randn(b, 32, generator=g),
        "timestep": torch.tensor([250.0, 800.0]),
    }


def make_unic(official: Path, out: Path) -> None:
    from diffusers import SD3Transformer2DModel
    from diffusers.models.controlnets import controlnet

    sys.path.insert(0, str(official.parent))
    alias = types.ModuleType("diffusers.models.controlnet")
    alias.zero_module = controlnet.zero_module
    sys.modules.setdefault("diffusers.models.controlnet", alias)
    module = __import__(f"{official.name}.transformer_sd3", fromlist=["SD3Transformer2DModelControl"])
    outputs = {}
    base_keys = set(SD3Transformer2DModel(**UNIC_TINY).state_dict())
    for scale in (0.0, 0.5, 1.0):
        model = module.SD3Transformer2DModelControl(**UNIC_TINY, control_scale=scale).eval()
        redraw_(model, seed=2)  # the same draw at every scale: same names, same order
        x = unic_inputs()
        with torch.no_grad():
            outputs[scale] = model(**x, return_dict=False).clone()  # the official forward returns the tensor itself
    state = model.state_dict()
    base = SD3Transformer2DModel(**UNIC_TINY)
    base.load_state_dict({k: v for k, v in state.items() if k in base_keys}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out / "sd3_transformer", safe_serialization=True)
    adapter = {k: v.detach().clone() for k, v in state.items() if k not in base_keys}
    torch.save(adapter, out / "sd3_adapter.pth")
    torch.save({**x, **{f"output_{s}": o for s, o in outputs.items()}, "commit": UNIC_COMMIT}, out / "io.pt")
    print(f"wrote {out}: {len(adapter)} adapter tensors, output {tuple(outputs[1.0].shape)}")


UNIC_SAMPLING = {"prompt": "a red square on a blue background", "instruct_prompt": "Generate an image from the canny edges.",
                 "num_inference_steps": 4, "guidance_scale": 7.0, "prompt_guidance": 4.0, "image_instruction_guidance": 1.5,
                 "height": 32, "width": 32}
UNIC_SEEDS = (2024, 7)  # the call's generator (initial latents), torch's global seed (the condition's posterior sample)


def unic_condition_image(seed: int = 6) -> torch.Tensor:
    """A smooth 32 x 32 RGB image, uint8 (H, W, 3), as read from a file."""
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear", align_corners=False)
    return (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8)


def make_unic_sampling(official: Path, out: Path) -> None:
    """The official StableDiffusion3Pipeline (models/pipeline_sd3.py) with the unic fixture's adapter model, loaded as
    infer.py loads it, on a tiny SD3 pipeline; its parts (all but the transformer) are saved with the result."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers.models.controlnets import controlnet
    from torchvision import transforms

    from editkit.testing import tiny_vae
    from editkit.testing.unic import tiny_sd3_text_stack

    sys.path.insert(0, str(official.parent))
    alias = types.ModuleType("diffusers.models.controlnet")
    alias.zero_module = controlnet.zero_module
    sys.modules.setdefault("diffusers.models.controlnet", alias)
    transformer_module = __import__(f"{official.name}.transformer_sd3", fromlist=["SD3Transformer2DModelControl"])
    pipeline_module = __import__(f"{official.name}.pipeline_sd3", fromlist=["StableDiffusion3Pipeline"])

    model_sd = SD3Transformer2DModel.from_pretrained(out / "sd3_transformer").state_dict()  # infer.py: base | adapter
    model_sd.update(torch.load(out / "sd3_adapter.pth", weights_only=True))
    model = transformer_module.SD3Transformer2DModelControl(**UNIC_TINY)
    model.load_state_dict(model_sd, strict=True)
    parts = {**tiny_sd3_text_stack(seed=11), "vae": tiny_vae(seed=12), "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)}
    parts["vae"].register_to_config(shift_factor=0.0609, scaling_factor=1.5305)
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            redraw_(part, seed=13)
    pipe = pipeline_module.StableDiffusion3Pipeline(transformer=model.eval(), **parts)
    pipe.set_progress_bar_config(disable=True)
    image = unic_condition_image()
    # infer.py's load_prompt_image_instruction: Resize to the output size, ToTensor, Normalize(0.5, 0.5)
    resize = transforms.Resize((UNIC_SAMPLING["height"], UNIC_SAMPLING["width"]))
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    from PIL import Image

    instruct_image = to_tensor(resize(Image.fromarray(image.numpy())))
    results = {}
    for output_type in ("latent", "pt"):
        torch.manual_seed(UNIC_SEEDS[1])
        generator = torch.Generator().manual_seed(UNIC_SEEDS[0])
        with torch.no_grad():
            results[output_type] = pipe(**UNIC_SAMPLING, instruct_image=instruct_image, generator=generator,
                                        output_type=output_type).images
    folder = out / "sd3_pipeline"
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    torch.save({"image": image, **UNIC_SAMPLING, "seeds": UNIC_SEEDS, "latents": results["latent"], "output": results["pt"],
                "commit": UNIC_COMMIT}, out / "sampling.pt")
    print(f"wrote {out / 'sampling.pt'} and {folder}")


PROMPTFIX_COMMIT = "5c8a34db6a38b865a28ec194b1c1765b910cf102"
PROMPTFIX_UNET = dict(image_size=8, in_channels=8, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                      num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
                      transformer_depth=1, context_dim=32, use_checkpoint=False, legacy=False,
                      force_type_convert=False, disable_dual_context=False)
PROMPTFIX_VAE = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0)
PROMPTFIX_CLIP = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu", bos_token_id=0,
                      eos_token_id=1, pad_token_id=1)


def _promptfix_stand_ins(official: Path) -> None:
    sys.path.insert(0, str(official.parent))
    for name in ("taming", "taming.modules", "taming.modules.vqvae", "taming.modules.vqvae.quantize", "utils", "utils.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["taming.modules.vqvae.quantize"].VectorQuantizer2 = None
    sys.modules["utils.utils"].print_model_submodules_info = lambda *a, **k: None


def make_promptfix(official: Path, out: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    _promptfix_stand_ins(official)
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**PROMPTFIX_UNET).eval()
    vae = AutoencoderKL(ddconfig=PROMPTFIX_VAE, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4,
                        enable_decoder_cond_lora=True).eval()
    clip = CLIPTextModel(CLIPTextConfig(**PROMPTFIX_CLIP)).eval()
    for i, part in enumerate((unet, vae, clip)):
        redraw_(part, seed=3 + i)
    g = torch.Generator().manual_seed(0)
    x = {
        "x": torch.randn(2, 8, 8, 8, generator=g),
        "t": torch.tensor([120, 870]),
        "context": torch.randn(4, 5, 32, generator=g),  # interleaved: instruction, auxiliary, instruction, ...
        "pixels": torch.rand(1, 3, 32, 32, generator=g) * 2 - 1,
        "input_ids": torch.randint(0, 1000, (2, 16), generator=g),
    }
    with torch.no_grad():
        io = dict(x, unet_out=unet(x["x"], x["t"], context=x["context"]))
        h, hs = vae.encoder(x["pixels"])
        posterior = vae.encode(x["pixels"])
        z = posterior.mode()
        io.update(latent_mode=z, decoded_with_skips=vae.decode(z, list(hs)), decoded_without_skips=vae.decode(z))
        io["clip_hidden"] = clip(input_ids=x["input_ids"]).last_hidden_state
    state = {}
    for prefix, part in (("model.diffusion_model.", unet), ("first_stage_model.", vae), ("cond_stage_model.transformer.", clip)):
        state.update({prefix + k: v.detach().clone() for k, v in part.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, out / "promptfix.ckpt")
    configs = {"unet": PROMPTFIX_UNET, "vae": PROMPTFIX_VAE, "clip": PROMPTFIX_CLIP}
    torch.save({**io, "commit": PROMPTFIX_COMMIT, "configs": configs}, out / "io.pt")
    print(f"wrote {out}: {len(state)} tensors")


PROMPTFIX_SEED, PROMPTFIX_STEPS, PROMPTFIX_SCALES = 2024, 4, (6.5, 1.25)  # the script's seed and scales; 4 steps


def _k_diffusion(deps: Path) -> types.ModuleType:
    """k_diffusion's sampling, external and utils modules, without its package __init__ (which imports the
    training and evaluation modules and their dependencies)."""
    sys.path.insert(0, str(deps))
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(deps / "k_diffusion")]
    sys.modules["k_diffusion"] = package
    import k_diffusion.external
    import k_diffusion.sampling
    import k_diffusion.utils

    return package


def _official_class(script: Path, name: str, namespace: dict) -> type:
    """One class of the official inference script, run as written (the script itself needs CUDA and its data)."""
    import ast

    node = next(n for n in ast.parse(script.read_text()).body if isinstance(n, ast.ClassDef) and n.name == name)
    exec(compile(ast.Module([node], type_ignores=[]), str(script), "exec"), namespace)
    return namespace[name]


def promptfix_sampling_inputs(seed: int = 5) -> dict[str, torch.Tensor]:
    """A smooth 32 x 32 RGB image (uint8, as read from a file) and instruction / auxiliary / null text states."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g)
    image = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    image = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    return {"image": image, **{k: torch.randn(1, 5, 32, generator=g) for k in ("instruction", "auxiliary", "null")}}


def make_promptfix_sampling(official: Path, deps: Path, out: Path) -> None:
    """The official inference loop of process_images_json.py on the promptfix fixture's checkpoint."""
    import einops

    _promptfix_stand_ins(official)
    K = _k_diffusion(deps)
    from ldm.hfp import extract_high_freq_component, sobel_operator
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.models.diffusion.ddpm_edit import DDPM, DiffusionWrapper, LatentDiffusion

    # the LatentDiffusion parts the sampler touches (apply_model, the schedule buffers, encode/decode_first_stage),
    # without its constructor (which builds the CLIP embedder from the hub and the training machinery)
    model = LatentDiffusion.__new__(LatentDiffusion)
    torch.nn.Module.__init__(model)
    model.v_posterior, model.parameterization, model.scale_factor = 0.0, "eps", 0.18215
    DDPM.register_schedule(model, beta_schedule="linear", timesteps=1000, linear_start=0.00085, linear_end=0.012)
    model.model = DiffusionWrapper({"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": PROMPTFIX_UNET}, "hybrid")
    model.first_stage_model = AutoencoderKL(ddconfig=PROMPTFIX_VAE, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4,
                                            enable_decoder_cond_lora=True)
    state = torch.load(out / "promptfix.ckpt", weights_only=True)["state_dict"]
    for prefix, part in (("model.diffusion_model.", model.model.diffusion_model), ("first_stage_model.", model.first_stage_model)):
        part.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    model.eval()

    script = official.parent.parent / "process_images_json.py"
    names = {"nn": torch.nn, "torch": torch, "F": torch.nn.functional, "einops": einops, "utils": K.utils,
             "extract_high_freq_component": extract_high_freq_component, "sobel_operator": sobel_operator}
    cfg_denoiser = _official_class(script, "CFGDenoiser", names)
    model_wrap = K.external.CompVisDenoiser(model)
    model_wrap_cfg = cfg_denoiser(model_wrap)

    x = promptfix_sampling_inputs()
    denoised = []
    with torch.no_grad():  # the script's loop body for one image, HGS off (its default), fp32 on the CPU
        input_image = einops.rearrange(2 * x["image"].float() / 255 - 1, "h w c -> 1 c h w")
        cond = {"c_crossattn": [torch.cat([x["instruction"], x["auxiliary"]])],
                "c_concat": [model.encode_first_stage(input_image).mode()]}
        uncond = {"c_crossattn": [torch.cat([x["null"], x["null"]])], "c_concat": [torch.zeros_like(cond["c_concat"][0])]}
        sigmas = model_wrap.get_sigmas(PROMPTFIX_STEPS)
        extra_args = {"cond": cond, "uncond": uncond, "text_cfg_scale": PROMPTFIX_SCALES[0], "image_cfg_scale": PROMPTFIX_SCALES[1]}
        torch.manual_seed(PROMPTFIX_SEED)
        _, skip_connect_hs = model.first_stage_model.encoder(input_image)
        z = torch.randn_like(cond["c_concat"][0]) * sigmas[0]
        z0 = z.clone()
        z = K.sampling.sample_euler_ancestral(model_wrap_cfg, z, sigmas, extra_args=extra_args,
                                              callback=lambda info: denoised.append(info["denoised"].clone()))
        image = model.decode_first_stage(z, skip_connect_hs=skip_connect_hs)
        image = torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
    torch.save({**x, "seed": PROMPTFIX_SEED, "steps": PROMPTFIX_STEPS, "scales": PROMPTFIX_SCALES, "sigmas": sigmas,
                "initial_latents": z0, "denoised": torch.stack(denoised), "latents": z, "output": image,
                "commit": PROMPTFIX_COMMIT, "k_diffusion": "0.1.1.post1"}, out / "sampling.pt")
    print(f"wrote {out / 'sampling.pt'}: sigmas {sigmas.tolist()}")


DREAM_COMMIT = "374cffe"
DREAM_PIXELS = 112  # every image 112 x 112: 16 merged image tokens
DREAM_PROMPTS = ("Put <|vision_start|><|image_pad|><|vision_end|> on a red background, in the top left corner.",
                 "<|vision_start|><|image_pad|><|vision_end|>")


def _dream_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))  # GPT-2's byte alphabet
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    backend = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(dict(sorted(table.items())).values())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = Qwen2TokenizerFast(tokenizer_object=backend, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                             pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                                          "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]})
    tok.padding_side = "right"
    return tok


DREAM_LORA_TARGETS = {  # demo.py's target modules; rank 4 with alpha = r, as the demo attaches its LoRA (r = alpha = 32)
    "lmm": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
    "dit": ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_out.0",
            "attn.to_q", "attn.to_v"],
}


def _official_dream(seed: int, qk_norm: str | None = None, lora: bool = False):
    """The official composite, tiny, every parameter re-drawn (LoRA pairs too, when attached as demo.py
    attaches them); (tokenizer, Qwen2-VL config, model)."""
    from diffusers.models.transformers.transformer_sd3 import QwenVLSD3_DirectMap_Transformer2DModel, SD3Transformer2DModel
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = _dream_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2VLConfig(
        hidden_size=32, intermediate_size=69, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=320, max_position_embeddings=1024, rope_theta=10000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 32, "hidden_act": "quick_gelu", "mlp_ratio": 4, "num_heads": 4,
                       "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    lmm = Qwen2VLForConditionalGeneration(config).eval()
    dit = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                                joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
                                pos_embed_max_size=32, qk_norm=qk_norm).eval()
    if lora:
        from peft import LoraConfig

        for part, name in ((lmm, "lmm"), (dit, "dit")):
            part.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=DREAM_LORA_TARGETS[name]))
    model = QwenVLSD3_DirectMap_Transformer2DModel(lmm, dit, mlp_dim=64).eval()
    redraw_(model, seed=seed)
    with torch.no_grad():
        model.norm_lmm_out.weight.fill_(1.0)
    return tok, config, model


def _dream_processor(tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    area = DREAM_PIXELS * DREAM_PIXELS
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=area, max_pixels=area), tokenizer=tok)


def make_dream(official: Path, out: Path) -> None:
    import numpy as np
    from PIL import Image

    tok, config, model = _official_dream(seed=3)
    processor = _dream_processor(tok)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (DREAM_PIXELS, DREAM_PIXELS, 3), dtype=np.uint8) for _ in DREAM_PROMPTS]
    inputs = processor(text=list(DREAM_PROMPTS), images=[Image.fromarray(a) for a in images], padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    latents, timestep = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([700.0, 700.0])
    with torch.no_grad():
        states = model.lmm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"], output_hidden_states=True)["hidden_states"][-1]
        output = model(lmm_input_ids=inputs["input_ids"], lmm_attention_mask=inputs["attention_mask"], dit_hidden_states=latents,
                       dit_time_step=timestep, lmm_pixel_values=inputs["pixel_values"], lmm_image_grid_thw=inputs["image_grid_thw"])[0]
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("pooled_proj.")}
    torch.save(state, out / "diffusion_pytorch_model.bin")
    config.save_pretrained(out / "qwen2_vl")
    tok.save_pretrained(out / "qwen2_vl")
    torch.save({"prompts": list(DREAM_PROMPTS), "images": [torch.from_numpy(a) for a in images], "pixels": DREAM_PIXELS,
                "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "latents": latents,
                "timestep": timestep, "lmm_states": states, "output": output, "commit": DREAM_COMMIT}, out / "io.pt")
    print(f"wrote {out}: {len(state)} tensors, states {tuple(states.shape)}, output {tuple(output.shape)}")


DREAM_SAMPLING = {"num_inference_steps": 4, "guidance_scale": 3.5, "height": 64, "width": 64, "seed": 136147}
DREAM_LONG_PROMPT = "a small red square at the top left, a large blue circle at the bottom right, and a green triangle between them"


def dream_sampling_cases(tok) -> list[dict]:
    """One call per `cfg_predict` branch, each within what the official code runs without crashing; the
    interleaved caption is sized so its prompt is exactly `max_sequence_length` (77) tokens, the only length at
    which the official OBJ2I_V2 branch (cond padded to itself, null to 77) can concatenate its batch."""
    tail = " on the grass."
    text = "Generate Image: " + "A <|vision_start|><|image_pad|><|vision_end|> next to <|vision_start|><|image_pad|><|vision_end|>" + tail
    length = len(tok(text)["input_ids"]) + 2 * (DREAM_PIXELS // 28) ** 2 - 2
    assert length == 77, length
    return [
        {"name": "generate", "prompt": "a red square on a blue background"},
        {"name": "generate_long", "prompt": DREAM_LONG_PROMPT},  # > 77 tokens: the official truncates it
        {"name": "copy", "image": 0},
        {"name": "edit", "prompt": "make it blue", "image": 0},
        {"name": "combine", "prompt": "a cat wearing a hat", "segments": [["cat", 1], ["hat", 2]]},
        {"name": "interleaved", "segments": ["A ", 1, " next to ", 2, tail]},
    ]


def _save_like_train_py(state: dict[str, torch.Tensor], out: Path) -> None:
    """Two `.bin` shards and their index, as the release's `save_pretrained` wrote them."""
    import json

    keys = sorted(state)
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.bin" for i in (1, 2)]
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2 :])
    for name, part in zip(names, halves):
        torch.save({k: state[k] for k in part}, out / name)
    weight_map = {k: name for name, part in zip(names, halves) for k in part}
    size = sum(v.numel() * v.element_size() for v in state.values())
    (out / "diffusion_pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))


def make_dream_sampling(official: Path, out: Path) -> None:
    import numpy as np
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_qwen_vl_stable_diffusion_3 import QwenVLStableDiffusion3Pipeline
    from PIL import Image

    # SD3.5's qk norm (the converter reads the heads off it) and LoRA on both parts, as the demo runs the release
    tok, config, model = _official_dream(seed=5, qk_norm="rms_norm", lora=True)
    assert any(".lora_A." in k for k in model.state_dict()) and any(k.startswith("lmm.") and ".lora_B." in k for k in model.state_dict())
    torch.manual_seed(8)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
                        scaling_factor=1.5305, shift_factor=0.0609).eval()
    pipe = QwenVLStableDiffusion3Pipeline(transformer=model, processor=_dream_processor(tok),
                                          scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (DREAM_PIXELS, DREAM_PIXELS, 3), dtype=np.uint8) for _ in range(3)]
    images = [Image.fromarray(a) for a in arrays]
    cases = dream_sampling_cases(tok)
    lengths: list[int] = []  # the token length each official DiT call saw (cond and null share it)
    model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(kwargs["lmm_input_ids"].shape[1]), with_kwargs=True)
    settings = {k: v for k, v in DREAM_SAMPLING.items() if k != "seed"}
    for case in cases:
        kwargs = {"prompt": case.get("prompt")}
        if "image" in case:
            kwargs["image"] = images[case["image"]]
        if "segments" in case:
            kwargs["segments"] = [[p[0], images[p[1]]] if isinstance(p, list) else images[p] if isinstance(p, int) else p
                                  for p in case["segments"]]
        for output_type in ("latent", "np"):
            generator = torch.Generator().manual_seed(DREAM_SAMPLING["seed"])
            result = pipe.cfg_predict(**kwargs, **settings, generator=generator, output_type=output_type).images
            case["latents" if output_type == "latent" else "output"] = torch.as_tensor(np.asarray(result)).clone()
        case["sequence_length"] = lengths[-1]
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("pooled_proj.")}
    _save_like_train_py(state, out)
    vae.save_pretrained(out / "vae")
    torch.save({"cases": cases, "images": [torch.from_numpy(a) for a in arrays], "pixels": DREAM_PIXELS,
                "settings": DREAM_SAMPLING, "commit": DREAM_COMMIT}, out / "sampling.pt")
    print(f"wrote {out}: {len(state)} tensors, {len(cases)} cases: " + ", ".join(f"{c['name']} {c['sequence_length']} tokens" for c in cases))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=("pixwizard", "pixwizard_sampling", "unic", "unic_sampling", "promptfix", "promptfix_sampling", "dream", "dream_sampling"))
    parser.add_argument("--official", type=Path, required=True, help="folder of the official `models` package")
    parser.add_argument("--deps", type=Path, default=None, help="folder with the official code's extra packages")
    parser.add_argument("--out", type=Path, default=None, help="default: tests/fixtures/<method>_official")
    args = parser.parse_args(argv)
    out = args.out or FIXTURES / f"{args.method}_official"
    if args.method == "pixwizard":
        if args.deps is None:
            parser.error("pixwizard needs --deps (the folder fairscale was installed to)")
        make_pixwizard(args.official.resolve(), args.deps.resolve(), out)
    elif args.method == "pixwizard_sampling":
        if args.deps is None:
            parser.error("pixwizard_sampling needs --deps (fairscale and torchdiffeq)")
        make_pixwizard_sampling(args.official.resolve(), args.deps.resolve(), FIXTURES / "pixwizard_official" if args.out is None else out)
    elif args.method == "unic":
        make_unic(args.official.resolve(), out)
    elif args.method == "unic_sampling":
        make_unic_sampling(args.official.resolve(), FIXTURES / "unic_official" if args.out is None else out)
    elif args.method == "dream":
        make_dream(args.official.resolve(), out)
    elif args.method == "dream_sampling":
        make_dream_sampling(args.official.resolve(), FIXTURES / "dream_official" / "sampling" if args.out is None else out)
    elif args.method == "promptfix_sampling":
        if args.deps is None:
            parser.error("promptfix_sampling needs --deps (the folder k-diffusion and torchsde were installed to)")
        make_promptfix_sampling(args.official.resolve(), args.deps.resolve(), FIXTURES / "promptfix_official" if args.out is None else out)
    else:
        make_promptfix(args.official.resolve(), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
