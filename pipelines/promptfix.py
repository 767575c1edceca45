"""PromptFix: instruction-driven restoration with an auxiliary prompt and high-frequency guidance.

An InstructPix2Pix-style UNet (noisy latent + unscaled VAE mode of the source
on channels) whose transformer blocks also attend to an *auxiliary prompt*
("The image is hazy. The image shows ..."), encoded by CLIP separately from
the instruction. Guidance is PromptFix's midpoint rule, three branches in one
batched forward:

    eps = 1/2 (image + text) + s_T (full - image) + s_I (full - text)

(full = instruction+auxiliary+image; image = both texts null; text = zero
image latent). High-frequency guidance sampling (`editkit.hgs`) runs as a step
corrector. With a UNet without auxiliary layers and `guidance_mode="ip2p"` the
pipeline reproduces diffusers' `StableDiffusionInstructPix2PixPipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from editkit.conditioning import Condition, Conditioning, EditRequest
from editkit.correctors import StepCorrector, StepState, apply_after, apply_before
from editkit.encoders import encode_clip_text, vae_encode_mode
from editkit.guidance import Branch, GuidanceRule, IP2P_GUIDANCE, Term, guided_prediction, interval_scales
from editkit.hgs import HighFrequencyGuidance
from editkit.images import ImageInput, SizePlan, load_image, load_mask, pil_to_tensor, plan_size, resize_input, resize_output
from editkit.modeling.promptfix_unet import AUX_KEY
from editkit.numerics import check_finite
from editkit.pipeline_utils import (
    EditPipelineMixin,
    EditPipelineOutput,
    check_output_type,
    embeds_placeholders,
    format_images,
    match_rows,
    step_kwargs,
)

logger = logging.getLogger(__name__)

DEFAULT_RESIZE_SIDE = 640  # official: short side to 640 (long side for inpainting), floor to a multiple of 64
RESIZE_MULTIPLE = 64

# PromptFix's midpoint rule (spec §4): the fully unconditional branch is never evaluated.
PROMPTFIX_GUIDANCE = GuidanceRule(
    branches=(
        Branch("full"),
        Branch("image", frozenset({"text"})),  # instruction and auxiliary prompt both null
        Branch("text", frozenset({"image"})),  # zero image latent
    ),
    base=(("image", 0.5), ("text", 0.5)),
    terms=(Term("guidance_scale", "full", "image"), Term("image_guidance_scale", "full", "text")),
)
GUIDANCE_MODES = {"promptfix": PROMPTFIX_GUIDANCE, "ip2p": IP2P_GUIDANCE}
HGS_MODES = ("latent", "off")


def unet_has_auxiliary(unet) -> bool:
    return bool(getattr(unet.config, "auxiliary_cross_attention_dim", None))


def build_conditioning(
    instruction: torch.Tensor,
    null_text: torch.Tensor,
    image_latents: torch.Tensor,
    dtype: torch.dtype,
    auxiliary: torch.Tensor | None = None,
) -> Conditioning:
    """PromptFix's conditions (the trainer builds them with this same function).

    Instruction and auxiliary states share the group "text" (guidance drops both
    together); each one's null is the empty-prompt embedding. The image latent's null is zeros.
    """
    conds = {"encoder_hidden_states": Condition(instruction.to(dtype), null_text.to(dtype), "text")}
    if auxiliary is not None:
        conds[AUX_KEY] = Condition(auxiliary.to(dtype), null_text.to(dtype), "text")
    conds["image_latents"] = Condition.zeros_null(image_latents.to(dtype), "image")
    return Conditioning(conds)


def unet_forward(unet, latent_input: torch.Tensor, cond: dict[str, torch.Tensor], timestep: torch.Tensor, cross_attention_kwargs: dict | None = None) -> torch.Tensor:
    """The backbone call: latents and image latents on channels; auxiliary states to the extra attention."""
    x = torch.cat([latent_input, cond["image_latents"]], dim=1)
    kwargs = dict(cross_attention_kwargs or {})
    if AUX_KEY in cond:
        kwargs[AUX_KEY] = cond[AUX_KEY]
    return unet(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"], cross_attention_kwargs=kwargs or None, return_dict=False)[0]


def promptfix_size(image_size: tuple[int, int], side: int, mode: str = "short", multiple: int = RESIZE_MULTIPLE) -> SizePlan:
    """Official resize: scale so the short (or long) side is `side`, floor each side to `multiple`; output at the input size."""
    if mode not in ("short", "long"):
        raise ValueError(f"`resize_mode` must be 'short' or 'long', got {mode!r}.")
    if not isinstance(side, (int, np.integer)) or side <= 0:
        raise ValueError(f"`resize_side` must be a positive integer or None, got {side!r}.")
    w, h = image_size
    scale = side / (min(w, h) if mode == "short" else max(w, h))
    work_w = max(multiple, int(w * scale) // multiple * multiple)
    work_h = max(multiple, int(h * scale) // multiple * multiple)
    return SizePlan(work_w, work_h, w, h)


def auxiliary_text(answer: Any) -> str:
    """A captioner's answer as an auxiliary prompt: a string, or an object with `.auxiliary_prompt`."""
    if isinstance(answer, str):
        return answer
    text = getattr(answer, "auxiliary_prompt", None)
    if not isinstance(text, str):
        raise TypeError(f"a captioner must return a string or a Caption, got {type(answer).__name__}.")
    return text


class PromptFixPipeline(EditPipelineMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "auxiliary_embeds", "image_latents"]
    request_fields = ("instruction", "image", "mask", "auxiliary_prompt")

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        resize_side: int | None = DEFAULT_RESIZE_SIDE,
        guidance_scale: float = 6.5,
        image_guidance_scale: float = 1.25,
        hgs_mode: str = "latent",
    ):
        super().__init__()
        if hgs_mode not in HGS_MODES:
            raise ValueError(f"`hgs_mode` must be one of {HGS_MODES}, got {hgs_mode!r}.")
        latent_ch = vae.config.latent_channels
        if unet.config.in_channels != 2 * latent_ch:
            raise ValueError(
                f"PromptFix needs a UNet with {2 * latent_ch} input channels (noisy latent + image latent), "
                f"but this UNet has {unet.config.in_channels}."
            )
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        # the default working size, scales and HGS mode travel with the model (official 640 and 6.5 / 1.25; a 64 px
        # shapes model works at 64 and may be tuned to other scales; a converted official checkpoint samples with
        # HGS off, as the released script always does, spec §11 #1)
        self.register_to_config(
            resize_side=resize_side, guidance_scale=float(guidance_scale), image_guidance_scale=float(image_guidance_scale),
            hgs_mode=hgs_mode,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size_multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        # image -> auxiliary prompt (a `editkit.captioners.Captioner` or any callable returning a string);
        # asked when a call gives no auxiliary prompt.
        self.captioner: Callable | None = None

    required_components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        if request.image is None:
            raise ValueError("PromptFix edits an image: the request has no `image`.")
        if not isinstance(request.instruction, str):
            raise ValueError("PromptFix takes a text instruction, not an interleaved prompt.")
        return {"prompt": request.instruction, "image": request.image, "mask": request.mask, "auxiliary_prompt": request.auxiliary_prompt}

    # -- inputs ---------------------------------------------------------------------------

    def _batch(self, prompt, image, auxiliary_prompt, captioner) -> tuple[list[str], list[PIL.Image.Image], list[str]]:
        """Pair instructions, images and auxiliary prompts (equal lengths or length 1)."""
        def as_list(value, name):
            if isinstance(value, str):
                return [value]
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
                return list(value)
            raise TypeError(f"`{name}` must be a string or a non-empty list of strings, got {value!r:.80}.")

        prompts = as_list(prompt, "prompt")
        images_in = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images_in:
            raise ValueError("`image` is an empty list.")
        images = [load_image(im, "image" if len(images_in) == 1 else f"image[{i}]") for i, im in enumerate(images_in)]
        aux = None if auxiliary_prompt is None else as_list(auxiliary_prompt, "auxiliary_prompt")
        n = max(len(prompts), len(images), len(aux or []))
        for name, seq in (("prompt", prompts), ("image", images), ("auxiliary_prompt", aux)):
            if seq is not None and len(seq) not in (1, n):
                raise ValueError(f"`{name}` has {len(seq)} entries for a batch of {n}; pass {n} or 1.")
        prompts = prompts * n if len(prompts) == 1 else prompts
        images = images * n if len(images) == 1 else images
        if aux is None:
            captioner = captioner if captioner is not None else self.captioner
            aux = [auxiliary_text(captioner(im)) for im in images] if captioner is not None else [""] * n
        elif len(aux) == 1:
            aux = aux * n
        for i, (p, a) in enumerate(zip(prompts, aux)):
            if not p.strip() and not a.strip():
                raise ValueError(
                    f"`prompt`[{i}] is empty and there is no auxiliary prompt; give an instruction such as "
                    "'remove the haze', or an auxiliary prompt for blind restoration."
                )
        return prompts, images, aux

    def encode_prompt(self, prompts: str | list[str]) -> torch.Tensor:
        """Text-encoder states (B, L, D): what `prompt_embeds`, `negative_prompt_embeds` and
        `auxiliary_prompt_embeds` take."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return encode_clip_text(self.tokenizer, self.text_encoder, prompts, self._execution_device)

    def encode_conditioning(self, prompts: list[str], auxiliary: list[str], pixels: torch.Tensor,
                            negative_prompt: str | list[str] | None = None,
                            embeds: dict[str, torch.Tensor | None] | None = None) -> Conditioning:
        """Instruction, auxiliary and null text states (one batched encoder call for the texts given as
        strings; `embeds` holds precomputed `prompt_embeds` / `auxiliary_prompt_embeds` /
        `negative_prompt_embeds`) and the unscaled image latents."""
        device = self._execution_device
        embeds = embeds or {}
        use_aux = unet_has_auxiliary(self.unet)
        if not use_aux and (any(a.strip() for a in auxiliary) or embeds.get("auxiliary_prompt_embeds") is not None):
            logger.warning("this UNet has no auxiliary cross-attention; the auxiliary prompt is ignored.")
        if embeds.get("negative_prompt_embeds") is not None and negative_prompt is not None:
            raise ValueError("pass `negative_prompt` or `negative_prompt_embeds`, not both.")
        nulls = [negative_prompt or ""] if negative_prompt is None or isinstance(negative_prompt, str) else list(negative_prompt)
        if len(nulls) not in (1, len(prompts)):
            raise ValueError(f"`negative_prompt` has {len(nulls)} entries for {len(prompts)} prompts.")
        parts = {"prompt_embeds": prompts, "auxiliary_prompt_embeds": auxiliary if use_aux else [],
                 "negative_prompt_embeds": nulls}
        texts = [t for name, seq in parts.items() if embeds.get(name) is None for t in seq]
        states = encode_clip_text(self.tokenizer, self.text_encoder, texts, device) if texts else None
        got, start = {}, 0
        for name, seq in parts.items():
            given = embeds.get(name)
            if given is not None:
                rows = 1 if name == "negative_prompt_embeds" and given.shape[0] == 1 else len(prompts)
                got[name] = match_rows(given, rows, name).to(device)
            else:
                got[name] = states[start : start + len(seq)]
                start += len(seq)
        with torch.no_grad():
            image_latents = vae_encode_mode(self.vae, pixels.to(device))
        return build_conditioning(got["prompt_embeds"], got["negative_prompt_embeds"], image_latents, self.unet.dtype,
                                  got["auxiliary_prompt_embeds"] if use_aux else None)

    def _skips(self, pixels: torch.Tensor) -> list[torch.Tensor] | None:
        if not getattr(self.vae, "has_skip_lora", False):
            return None
        with torch.no_grad():
            return self.vae.encoder_skips(pixels.to(self._execution_device))

    def decode_latents(self, latents: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1], through the skip-LoRA decoder when the VAE has one."""
        z = latents / self.vae.config.scaling_factor + (getattr(self.vae.config, "shift_factor", None) or 0.0)
        z = z.to(self.vae.dtype)
        if skips is not None:
            reps = z.shape[0] // skips[0].shape[0]
            return self.vae.decode_with_skips(z, [s.repeat_interleave(reps, dim=0) for s in skips])
        return self.vae.decode(z, return_dict=False)[0]

    # -- sampling -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        auxiliary_prompt: str | list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        guidance_mode: str = "promptfix",
        hgs_mode: str | None = None,
        hgs: HighFrequencyGuidance | None = None,
        captioner: Callable | None = None,
        resize_side: int | None | str = "auto",
        resize_mode: str = "short",
        height: int | None = None,
        width: int | None = None,
        max_side: int | None = None,
        mask: ImageInput | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        correctors: Sequence[StepCorrector] = (),
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        auxiliary_prompt_embeds: torch.Tensor | None = None,
    ) -> EditPipelineOutput | tuple:
        r"""Fix or edit `image` following `prompt`.

        Args:
            prompt: instruction(s), e.g. "remove the haze". May be "" when an
                auxiliary prompt is given (blind restoration).
            image: path, PIL image, array or tensor (or a list of them).
            auxiliary_prompt: description of the image and its flaw, read by the
                extra cross-attention. None: ask `captioner` (or `pipe.captioner`)
                if one is set, else the empty string.
            num_inference_steps: denoising steps (official 20; 50 for inpainting).
            guidance_scale, image_guidance_scale: $s_T$ and $s_I$. None: the model's
                `config.guidance_scale` / `config.image_guidance_scale` (official 6.5 / 1.25).
            guidance_mode: "promptfix" (midpoint rule) or "ip2p" (needs a fully
                unconditional branch the released model never saw).
            hgs_mode: "latent" (high-frequency guidance on the latents) or "off"
                (the released script's effective behaviour; fastest). None: the model's `config.hgs_mode`
                ("latent" for editkit's models, "off" for a converted official checkpoint); "latent" when `hgs` is given.
            hgs: a configured `HighFrequencyGuidance`; default `HighFrequencyGuidance.recommended()`
                (1 iteration, step 2000, last half of the steps; see docs/hgs.md). `HighFrequencyGuidance()` = the official 5 x 1.0.
            captioner: image -> auxiliary prompt, for this call.
            resize_side, resize_mode: the working size ("auto": the pipeline's
                `config.resize_side`, 640 unless the model says otherwise): the "short" (or "long",
                as official for inpainting) side scaled to `resize_side`, each side
                floored to a multiple of 64. None: work at the input's size
                (rounded to what the UNet needs). The output is at the input's size.
            height, width: output size instead (working size = it, rounded).
            max_side: the working size every editkit pipeline takes: the input's aspect ratio with
                the long side scaled down to at most `max_side` (replaces `resize_side` when given).
            mask: optional mask of the input's size; white = may change. Pixels
                outside come from the input; HGS only compares outside it.
            num_images_per_prompt, eta, generator, latents: as in diffusers.
            output_type: "pil", "np", "pt" or "latent".
            correctors: extra `StepCorrector`s, run after HGS.
            callback_on_step_end: `fn(pipe, step, timestep, callback_kwargs)`; may return {"latents": ...}.
            guidance_interval: (start, end) fractions of the run; only those steps are guided, the others
                run the conditional branch alone (a smaller batch). None: every step (editkit.guidance.GuidanceInterval).
            negative_prompt: the null text of the image-only branch (default "", as the official code).
            prompt_embeds, negative_prompt_embeds, auxiliary_prompt_embeds: precomputed text-encoder states
                (`encode_prompt`) instead of the strings, as in diffusers.
        """
        check_output_type(output_type)
        if hgs_mode is None:  # settings given: run them; else the model's default (older folders lack one)
            hgs_mode = "latent" if hgs is not None else getattr(self.config, "hgs_mode", "latent")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be >= 1, got {num_images_per_prompt}.")
        if guidance_mode not in GUIDANCE_MODES:
            raise ValueError(f"`guidance_mode` must be one of {sorted(GUIDANCE_MODES)}, got {guidance_mode!r}.")
        if hgs_mode not in HGS_MODES:
            raise ValueError(f"`hgs_mode` must be one of {HGS_MODES}, got {hgs_mode!r}.")
        if hgs is not None and not isinstance(hgs, HighFrequencyGuidance):
            raise TypeError(f"`hgs` must be a HighFrequencyGuidance, got {type(hgs).__name__}.")
        if hgs is not None and hgs_mode == "off":
            raise ValueError("`hgs` settings were given with hgs_mode='off'; use hgs_mode='latent' to run them.")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(bad)}; allowed: {self._callback_tensor_inputs}.")

        if resize_side == "auto":
            resize_side = self.config.resize_side
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        image_guidance_scale = self.config.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        if image is None:
            raise TypeError("`image` is required: the image to fix or edit.")
        if auxiliary_prompt_embeds is not None:
            if auxiliary_prompt is not None:
                raise ValueError("pass `auxiliary_prompt` or `auxiliary_prompt_embeds`, not both.")
            auxiliary_prompt = embeds_placeholders(None, auxiliary_prompt_embeds, "auxiliary_prompt")
        prompts, images, auxiliary = self._batch(embeds_placeholders(prompt, prompt_embeds), image, auxiliary_prompt, captioner)
        multiple = int(np.lcm(RESIZE_MULTIPLE, self.size_multiple))
        if height is not None or width is not None:
            plans = {plan_size(im.size, self.size_multiple, height, width, None) for im in images}
        elif max_side is not None:
            plans = {plan_size(im.size, multiple, None, None, max_side) for im in images}
        elif resize_side is None:
            plans = {plan_size(im.size, self.size_multiple) for im in images}
        else:
            plans = {promptfix_size(im.size, resize_side, resize_mode, multiple) for im in images}
        if len(plans) > 1:
            raise ValueError("the images of a batch need one working size; they differ in size or aspect ratio. Edit them in separate calls.")
        plan = plans.pop()
        device = self._execution_device
        pixels = pil_to_tensor([resize_input(im, plan.work_width, plan.work_height) for im in images])
        mask_t = None
        if mask is not None:
            if len({im.size for im in images}) != 1:
                raise ValueError("`mask` needs all images of the batch to share one size.")
            mask_img = load_mask(mask, images[0].size, "mask")
            mask_t = torch.from_numpy(np.asarray(mask_img, dtype=np.float32) / 255.0)[None, None]

        embeds = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds,
                  "auxiliary_prompt_embeds": auxiliary_prompt_embeds}
        cond = self.encode_conditioning(prompts, auxiliary, pixels, negative_prompt, embeds).repeat_interleave(num_images_per_prompt)
        skips = self._skips(pixels)
        batch = cond.batch_size
        rule = GUIDANCE_MODES[guidance_mode]
        self._scales = scales = {"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale}
        steps_correctors = ([hgs or HighFrequencyGuidance.recommended()] if hgs_mode == "latent" else []) + list(correctors)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.vae.config.latent_channels, plan.work_height // self.vae_scale_factor, plan.work_width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}.")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        extra = step_kwargs(self.scheduler, generator, eta)
        source = pixels.to(device).repeat_interleave(num_images_per_prompt, dim=0) if steps_correctors else None
        work_mask = None
        if mask_t is not None:
            work_mask = torch.nn.functional.interpolate(mask_t, size=(plan.work_height, plan.work_width), mode="nearest").to(device)

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                forward = partial(unet_forward, self.unet, timestep=t, cross_attention_kwargs=cross_attention_kwargs)
                model_latents = latents
                if steps_correctors:
                    state = StepState(
                        step=i,
                        num_steps=len(timesteps),
                        timestep=t,
                        latents=latents,
                        scheduler=self.scheduler,
                        conditioning=cond,
                        predict_noise=lambda x, f=forward, t=t: f(self.scheduler.scale_model_input(x, t), cond.select(())),
                        decode=lambda z: self.decode_latents(z, skips),
                        source=source,
                        mask=work_mask,
                    )
                    model_latents = apply_before(steps_correctors, state)
                model_input = self.scheduler.scale_model_input(model_latents, t)
                noise_pred = guided_prediction(rule, interval_scales(rule, scales, guidance_interval, i, len(timesteps)), cond, model_input, forward)
                if steps_correctors:
                    noise_pred = apply_after(steps_correctors, state, model_latents, noise_pred)
                latents = self.scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
                check_finite(latents, "latents", i)

                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "prompt_embeds": cond["encoder_hidden_states"].value,
                        "auxiliary_embeds": cond[AUX_KEY].value if AUX_KEY in cond else None,
                        "image_latents": cond["image_latents"].value,
                    }
                    out = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}) or {}
                    latents = out.get("latents", latents)
                progress.update()

        if output_type == "latent":
            result = latents
        else:
            decoded = self.decode_latents(latents, skips)
            result = (decoded.float().clamp(-1, 1) / 2 + 0.5)
            result = resize_output(result, plan.out_width, plan.out_height)
            if mask_t is not None:
                keep = pil_to_tensor([im.resize((plan.out_width, plan.out_height), PIL.Image.Resampling.LANCZOS) if im.size != (plan.out_width, plan.out_height) else im for im in images]) / 2 + 0.5
                keep = keep.repeat_interleave(num_images_per_prompt, dim=0).to(result.device)
                m = resize_output(mask_t, plan.out_width, plan.out_height).to(result.device)
                result = m * result + (1 - m) * keep
            result = format_images(result, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return EditPipelineOutput(images=result)
