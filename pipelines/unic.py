"""UNIC-Adapter: one image-instruction adapter on SD3 for pixel control, subject and style.

A frozen SD3 MM-DiT plus a parallel control stream over the condition image's
VAE tokens and the instruction's text tokens (`UNICSD3Transformer2DModel`).
Three inputs:

- `prompt`: a caption of the desired output (SD3's text stack, base stream);
- `instruction`: the task text ("Generate image from canny edge"), encoded
  separately by the same text stack for the control stream;
- `image`: the condition (an edge/depth/segmentation map, a subject or a style
  image), resized to the output size and VAE-encoded ((mode - shift) x scaling).

Guidance has three branches (official order [uncond, control, full]):
v = v_null + s_c (v_control - v_null) + s_p (v_full - v_control), where v_null
has the negative prompt in both text slots and a zero condition latent.
`guidance_scale` is s_p and `image_guidance_scale` s_c; when not given they
come from the task's preset (never the official zero defaults, which return
the unconditional prediction).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModelWithProjection, PreTrainedModel

from editkit.conditioning import Condition, Conditioning, EditRequest
from editkit.encoders import vae_decode, vae_encode_scaled
from editkit.guidance import Branch, GuidanceRule, Term, guided_prediction, interval_scales
from editkit.images import ImageInput, load_image, pil_to_tensor, plan_size, resize_input, resize_output
from editkit.modeling.unic_adapter import UNICSD3Transformer2DModel
from editkit.numerics import check_finite
from editkit.pipeline_utils import (
    EditPipelineMixin,
    EditPipelineOutput,
    check_output_type,
    embeds_placeholders,
    format_images,
    match_rows,
)

DEFAULT_MAX_SIDE = 512
POOLED_NAMES = {"prompt_embeds": "pooled_prompt_embeds", "instruction_embeds": "pooled_instruction_embeds",
                "negative_prompt_embeds": "negative_pooled_prompt_embeds"}

# v = uncond + s_c (control - uncond) + s_p (full - control); branch order as the official batch.
UNIC_GUIDANCE = GuidanceRule(
    branches=(
        Branch("uncond", frozenset({"prompt", "control"})),
        Branch("control", frozenset({"prompt"})),
        Branch("full"),
    ),
    base=(("uncond", 1.0),),
    terms=(Term("image_guidance_scale", "control", "uncond"), Term("guidance_scale", "full", "control")),
)

# (s_p, s_c) per task kind, from the official examples and app (spec §4).
GUIDANCE_PRESETS: dict[str, tuple[float, float]] = {
    "control": (3.0, 1.3),
    "style": (6.0, 3.0),
    "subject": (7.5, 1.2),  # white background
    "subject_natural": (7.0, 3.0),
}

# task -> (official instruction text, guidance preset)
TASKS: dict[str, tuple[str, str]] = {
    "canny": ("Generate image from canny edge", "control"),
    "hed": ("Generate image from hed edge", "control"),
    "depth": ("Generate image from depth map", "control"),
    "normal": ("Generate image from normal surface map", "control"),
    "segmentation": ("Generate image from segmentation map", "control"),
    "sketch": ("Generate image from sketch", "control"),
    "bbox": ("Generate image from bounding box", "control"),
    "pose": ("Generate image from human pose skeleton", "control"),
    "outpainting": ("Image completion through outpainting", "control"),
    "colorization": ("Transform gray image to color image", "control"),
    "inpainting": ("Image restoration", "control"),
    "style": ("Generate image from style image", "style"),
    "subject": ("Generate image from subject image with white background.", "subject"),
    "subject_natural": ("Generate image from subject image with natural background.", "subject_natural"),
}
TASK_ALIASES = {
    "canny_to_image": "canny", "depth_to_image": "depth", "seg_to_image": "segmentation", "seg": "segmentation",
    "subject_driven": "subject", "style_driven": "style", "canny-to-image": "canny", "depth-to-image": "depth",
    "subject-driven": "subject", "style-driven": "style", "colourization": "colorization",
}

# Detectors that need downloaded weights: controlnet-aux class and what it makes.
WEIGHTED_DETECTORS: dict[str, str] = {
    "hed": "HEDdetector", "depth": "MidasDetector", "normal": "NormalBaeDetector",
    "sketch": "PidiNetDetector", "pose": "OpenposeDetector", "lineart": "LineartDetector",
}


def resolve_task(task: str | None) -> str | None:
    if task is None:
        return None
    if not isinstance(task, str):
        raise TypeError(f"`task` must be a string, got {type(task).__name__}.")
    key = TASK_ALIASES.get(task.strip().lower(), task.strip().lower())
    if key not in TASKS:
        raise ValueError(f"unknown `task` {task!r}; known: {sorted(TASKS)} (aliases {sorted(TASK_ALIASES)}).")
    return key


def make_condition_map(image: PIL.Image.Image, preprocess: str | Callable | None, detector_path: str | os.PathLike | None = None) -> PIL.Image.Image:
    """Turn a photo into a condition map. `canny` runs offline (controlnet-aux `CannyDetector`); detectors that
    need weights load them from `detector_path` (a local folder of controlnet-aux weights) only."""
    if preprocess is None:
        return image
    if callable(preprocess):
        return load_image(preprocess(image), "preprocess(image)")
    if preprocess == "canny":
        from editkit.data.families import canny_edges

        return PIL.Image.fromarray(canny_edges(np.asarray(image)))
    if preprocess not in WEIGHTED_DETECTORS:
        raise ValueError(f"`preprocess` must be None, a callable, 'canny' or one of {sorted(WEIGHTED_DETECTORS)}; got {preprocess!r}.")
    if detector_path is None or not os.path.isdir(detector_path):
        raise ValueError(
            f"`preprocess={preprocess!r}` needs the controlnet-aux detector weights, which editkit never downloads: "
            f"pass `detector_path` (a local folder holding them, e.g. a snapshot of lllyasviel/Annotators), "
            f"or pass a ready {preprocess} map as `image` with `preprocess=None`. Got detector_path={detector_path!r}."
        )
    import controlnet_aux

    detector = getattr(controlnet_aux, WEIGHTED_DETECTORS[preprocess]).from_pretrained(str(detector_path))
    out = detector(image, detect_resolution=min(image.size), image_resolution=min(image.size), output_type="pil")
    return out.convert("RGB").resize(image.size, PIL.Image.BICUBIC)


def encode_sd3_text(tokenizers: Sequence, text_encoders: Sequence, prompts: list[str], max_sequence_length: int,
                    joint_attention_dim: int, device: torch.device | str, clip_max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's text stack: [CLIP-L ⊕ CLIP-G penultimate states, zero-padded to T5 width ; T5 states], pooled CLIP-L ⊕ CLIP-G.

    `text_encoders[2]` may be None (zeros in its place, as diffusers does). Gradients flow outside no_grad."""
    clip_states, pooled = [], []
    for tok, enc in zip(tokenizers[:2], text_encoders[:2]):
        length = clip_max_length or tok.model_max_length
        ids = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        out = enc(ids.to(device), output_hidden_states=True)
        pooled.append(out[0])
        clip_states.append(out.hidden_states[-2])
    clip = torch.cat(clip_states, dim=-1)
    if text_encoders[2] is None:
        t5 = torch.zeros(len(prompts), max_sequence_length, joint_attention_dim, device=device, dtype=clip.dtype)
    else:
        ids = tokenizers[2](prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                            add_special_tokens=True, return_tensors="pt").input_ids
        t5 = text_encoders[2](ids.to(device))[0]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)


def build_conditioning(prompt_embeds: torch.Tensor, pooled: torch.Tensor, instruction_embeds: torch.Tensor, pooled_instruction: torch.Tensor,
                       null_embeds: torch.Tensor, null_pooled: torch.Tensor, control_latents: torch.Tensor, dtype: torch.dtype) -> Conditioning:
    """UNIC's conditions (groups `prompt` and `control`); the trainer builds them with this same function.
    Nulls: the negative prompt in both text slots, a zero condition latent."""
    return Conditioning(
        {
            "encoder_hidden_states": Condition(prompt_embeds.to(dtype), null_embeds.to(dtype), "prompt"),
            "pooled_projections": Condition(pooled.to(dtype), null_pooled.to(dtype), "prompt"),
            "instruction_embeds": Condition(instruction_embeds.to(dtype), null_embeds.to(dtype), "control"),
            "pooled_instruction_embeds": Condition(pooled_instruction.to(dtype), null_pooled.to(dtype), "control"),
            "control_latents": Condition.zeros_null(control_latents.to(dtype), "control"),
        }
    )


def transformer_forward(transformer: UNICSD3Transformer2DModel, latent_input: torch.Tensor, cond: dict[str, torch.Tensor],
                        timestep: torch.Tensor, control_scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """The backbone call; `timestep` is sigma x 1000 (scalar or per sample)."""
    t = timestep.expand(latent_input.shape[0]) if timestep.ndim == 0 else timestep
    if isinstance(control_scale, (int, float)) and control_scale == 0:
        # plain SD3: do not run a control stream only to multiply it by zero
        return transformer(hidden_states=latent_input, timestep=t, encoder_hidden_states=cond["encoder_hidden_states"],
                           pooled_projections=cond["pooled_projections"], return_dict=False)[0]
    return transformer(
        hidden_states=latent_input,
        timestep=t,
        encoder_hidden_states=cond["encoder_hidden_states"],
        pooled_projections=cond["pooled_projections"],
        control_latents=cond["control_latents"],
        instruction_embeds=cond["instruction_embeds"],
        pooled_instruction_embeds=cond["pooled_instruction_embeds"],
        control_scale=control_scale,
        return_dict=False,
    )[0]


def _as_list(value: str | list[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if values is None or not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"`{name}` must be a string or a non-empty list of strings, got {type(value).__name__}.")
    return values


class UNICAdapterPipeline(EditPipelineMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components = ["text_encoder_3", "tokenizer_3"]
    _callback_tensor_inputs = ["latents"]
    request_fields = ("instruction", "image", "references")
    guidance = UNIC_GUIDANCE

    def __init__(
        self,
        transformer: UNICSD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: Any,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer_2: Any,
        text_encoder_3: PreTrainedModel | None = None,
        tokenizer_3: Any = None,
    ):
        super().__init__()
        if not isinstance(transformer, UNICSD3Transformer2DModel):
            raise TypeError(
                f"`transformer` must be a UNICSD3Transformer2DModel, got {type(transformer).__name__}; wrap an SD3 "
                "transformer with UNICSD3Transformer2DModel.from_sd3(...) or convert an official adapter (editkit.convert.unic)."
            )
        if transformer.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the transformer takes {transformer.config.in_channels} latent channels, the VAE makes {vae.config.latent_channels}.")
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size_multiple = self.vae_scale_factor * transformer.config.patch_size

    required_components = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")

    @classmethod
    def from_sd3_pipeline(cls, sd3_pipeline: DiffusionPipeline, transformer: UNICSD3Transformer2DModel | None = None) -> "UNICAdapterPipeline":
        """Reuse a loaded `StableDiffusion3Pipeline`'s VAE, text stack and scheduler. `transformer`: a converted UNIC
        transformer (editkit.convert.unic); default: the SD3 transformer wrapped with a fresh, base-initialised adapter."""
        needed = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
        parts = dict(sd3_pipeline.components)
        missing = [k for k in needed if parts.get(k) is None]
        if missing:
            raise ValueError(f"`sd3_pipeline` lacks {missing}; pass a full StableDiffusion3Pipeline.")
        if transformer is None:
            transformer = UNICSD3Transformer2DModel.from_sd3(parts["transformer"], init_from_base=True)
        return cls(transformer=transformer, scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                   tokenizer=parts["tokenizer"], text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
                   text_encoder_3=parts.get("text_encoder_3"), tokenizer_3=parts.get("tokenizer_3"))

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        """`instruction` is the caption prompt; the condition is `image` or else `references[0]`;
        `task` (canny, depth, subject, ...) picks the instruction text and the guidance preset."""
        if not isinstance(request.instruction, str):
            raise ValueError("UNIC-Adapter takes a text prompt, not an interleaved prompt.")
        condition = request.image if request.image is not None else (request.references[0] if request.references else None)
        if condition is None:
            raise ValueError("UNIC-Adapter needs a condition image: give `image` (a control map, subject or style image) or `references`.")
        return {"prompt": request.instruction, "image": condition, "task": request.task}

    # -- encoding -------------------------------------------------------------------

    def default_max_sequence_length(self) -> int:
        tok = self.tokenizer_3
        return min(256, int(tok.model_max_length)) if tok is not None else 256

    def encode_text(self, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_sd3_text(
            (self.tokenizer, self.tokenizer_2, self.tokenizer_3), (self.text_encoder, self.text_encoder_2, self.text_encoder_3),
            prompts, max_sequence_length, self.transformer.config.joint_attention_dim, self._execution_device,
        )

    def text_states(self, texts: list[str], embeds: torch.Tensor | None, pooled: torch.Tensor | None, name: str,
                    max_sequence_length: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The SD3 text stack's (states, pooled) for `texts`, or the precomputed pair (`encode_text`'s output)."""
        pooled_name = POOLED_NAMES[name]
        if embeds is None:
            if pooled is not None:
                raise ValueError(f"`{pooled_name}` was given without `{name}`.")
            return self.encode_text(texts, max_sequence_length)
        if pooled is None:
            raise ValueError(f"`{name}` needs `{pooled_name}` too: SD3 reads the sequence and the pooled embedding.")
        device = self._execution_device
        return match_rows(embeds, rows, name).to(device), match_rows(pooled, rows, pooled_name).to(device)

    # -- sampling -------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        instruction: str | list[str] | None = None,
        task: str | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        control_scale: float | None = None,
        negative_prompt: str | None = None,
        preprocess: str | Callable | None = None,
        detector_path: str | os.PathLike | None = None,
        height: int | None = None,
        width: int | None = None,
        max_side: int | None | str = "auto",
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        sample_condition: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        instruction_embeds: torch.Tensor | None = None,
        pooled_instruction_embeds: torch.Tensor | None = None,
    ) -> EditPipelineOutput | tuple:
        r"""Generate an image that follows a condition image, an instruction and a caption.

        Args:
            prompt: caption(s) of the desired output.
            image: condition image(s): a control map (or a photo with `preprocess`),
                a subject or a style image. Batches pair prompts, instructions
                and images (equal lengths, or length 1 broadcast).
            instruction: task text(s), e.g. "Generate image from depth map".
                Default: the `task`'s official instruction, else the prompt
                (the official convention for free-form editing).
            task: canny, hed, depth, normal, segmentation, sketch, bbox, pose,
                outpainting, colorization, inpainting, style, subject,
                subject_natural (shapes names such as canny_to_image also work).
                Picks the default instruction and guidance scales.
            guidance_scale: prompt guidance s_p (default: the task preset; 3.0 for control).
            image_guidance_scale: joint image + instruction guidance s_c (default: preset; 1.3 for control).
            control_scale: strength of the injection (default: the model's, 1.0); 0 gives plain SD3.
            negative_prompt: the null text for both text slots (default "").
            preprocess: None (image is already the map), "canny" (offline), a
                weighted controlnet-aux detector name (needs `detector_path`) or a callable.
            height, width: output size; by default the condition's size, the
                working size keeping its aspect ratio, long side <= `max_side` ("auto": the size the
                model was trained at, `trained_side`, else 512),
                multiples of VAE factor x patch size.
            num_images_per_prompt, generator, latents: as in diffusers.
            max_sequence_length: T5 tokens (default min(256, tokenizer_3 max length); 77, the official
                pipeline's, for a converted official checkpoint: transformer config `official_sampling`).
            sample_condition: encode the condition with a posterior sample (the
                official code) instead of the mode; default: the transformer config's `official_sampling`.
                The sample is drawn with `generator`, except for a converted official checkpoint, which
                draws it from torch's global RNG as the official pipeline does (seed it with `torch.manual_seed`).
            output_type: "pil", "np", "pt" or "latent".
            callback_on_step_end: `fn(pipe, step, timestep, callback_kwargs)`; may replace "latents".
            guidance_interval: (start, end) fractions of the run; only those steps are guided, the others
                run the conditional branch alone (a smaller batch). None: every step (editkit.guidance.GuidanceInterval).
            prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
                instruction_embeds, pooled_instruction_embeds: precomputed SD3 text-stack outputs
                (`encode_text`: (B or 1, L, D) and (B or 1, D)) instead of the strings, as in diffusers.
        """
        # -- check everything before any heavy work
        check_output_type(output_type)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be >= 1, got {num_images_per_prompt}.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"`negative_prompt` must be a string, got {type(negative_prompt).__name__}.")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(bad)}; allowed: {self._callback_tensor_inputs}.")
        task = resolve_task(task)
        prompts = _as_list(embeds_placeholders(prompt, prompt_embeds), "prompt")
        if image is None:
            raise TypeError("`image` is required: the condition image.")
        instructions = _as_list(embeds_placeholders(instruction, instruction_embeds, "instruction")
                                if instruction_embeds is not None else instruction, "instruction")
        if instructions is None:
            instructions = [TASKS[task][0]] * len(prompts) if task else list(prompts)
            if prompt_embeds is not None and not task:  # the instruction is the caption: reuse its states
                instruction_embeds, pooled_instruction_embeds = prompt_embeds, pooled_prompt_embeds
        images_in = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images_in:
            raise ValueError("`image` is an empty list.")
        images = [load_image(im, "image" if len(images_in) == 1 else f"image[{i}]") for i, im in enumerate(images_in)]
        batch = max(len(prompts), len(instructions), len(images))
        for name, values in (("prompt", prompts), ("instruction", instructions), ("image", images)):
            if len(values) not in (1, batch):
                raise ValueError(f"`{name}` has {len(values)} entries for a batch of {batch}; pass {batch} or 1.")
        prompts, instructions, images = (v * batch if len(v) == 1 else v for v in (prompts, instructions, images))
        preset = GUIDANCE_PRESETS[TASKS[task][1] if task else "control"]
        s_p = preset[0] if guidance_scale is None else float(guidance_scale)
        s_c = preset[1] if image_guidance_scale is None else float(image_guidance_scale)
        scale = self.transformer.config.control_scale if control_scale is None else float(control_scale)
        official = bool(getattr(self.transformer.config, "official_sampling", False))
        max_sequence_length = max_sequence_length or (77 if official else self.default_max_sequence_length())
        sample_condition = official if sample_condition is None else bool(sample_condition)
        if max_side == "auto":
            max_side = self.trained_side or DEFAULT_MAX_SIDE
        plans = {plan_size(im.size, self.size_multiple, height, width, max_side) for im in images}
        if len(plans) > 1:
            raise ValueError("the condition images of a batch need one working size; pass `height` and `width`, or call once per size.")
        plan = plans.pop()
        shape = (batch * num_images_per_prompt, self.transformer.config.in_channels,
                 plan.work_height // self.vae_scale_factor, plan.work_width // self.vae_scale_factor)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}.")

        # -- conditions
        device = self._execution_device
        dtype = self.transformer.dtype
        maps = [make_condition_map(im, preprocess, detector_path) for im in images]
        pixels = pil_to_tensor([resize_input(m, plan.work_width, plan.work_height) for m in maps]).to(device)
        # three separate encoder calls, as diffusers' SD3 pipeline batches them (numerics match it exactly)
        text, pooled = self.text_states(prompts, prompt_embeds, pooled_prompt_embeds, "prompt_embeds", max_sequence_length, batch)
        instr, pooled_instr = self.text_states(instructions, instruction_embeds, pooled_instruction_embeds,
                                               "instruction_embeds", max_sequence_length, batch)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass `negative_prompt` or `negative_prompt_embeds`, not both.")
        null, null_pooled = self.text_states([negative_prompt or ""], negative_prompt_embeds, negative_pooled_prompt_embeds,
                                             "negative_prompt_embeds", max_sequence_length, 1)
        # the official pipeline draws the posterior sample from torch's global RNG, not the call's generator
        condition_generator = generator if isinstance(generator, torch.Generator) and not official else None
        control_latents = vae_encode_scaled(self.vae, pixels, sample_condition, condition_generator)
        cond = build_conditioning(text, pooled, instr, pooled_instr, null, null_pooled, control_latents, dtype)
        cond = cond.repeat_interleave(num_images_per_prompt)
        self._scales = scales = {"guidance_scale": s_p, "image_guidance_scale": s_c}

        # -- flow-matching sampling
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device=device, dtype=dtype)
        forward = partial(transformer_forward, self.transformer, control_scale=scale)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                velocity = guided_prediction(self.guidance, interval_scales(self.guidance, scales, guidance_interval, i, len(timesteps)), cond, latents, partial(forward, timestep=t))
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                check_finite(latents, "latents", i)
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.get("latents", latents)
                progress.update()

        if output_type == "latent":
            result = latents
        else:
            decoded = vae_decode(self.vae, latents)
            result = (decoded.float() / 2 + 0.5).clamp(0, 1)
            result = resize_output(result, plan.out_width, plan.out_height)
            result = format_images(result, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return EditPipelineOutput(images=result)
