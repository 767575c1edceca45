"""InstructCV: vision tasks as instruction-conditioned image generation.

An InstructPix2Pix UNet (8 input channels: noisy latent + unscaled VAE mode
of the source image) guided by the IP2P three-way rule. With the same
components, scheduler, seed and inputs, `InstructCVPipeline` reproduces
diffusers' `StableDiffusionInstructPix2PixPipeline`; on top it keeps the
input's aspect ratio, takes an optional mask and step correctors, and
decodes task outputs (`run_task`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from editkit import tasks
from editkit.conditioning import Condition, Conditioning, EditRequest
from editkit.correctors import StepCorrector, StepState, apply_after, apply_before
from editkit.encoders import encode_clip_text, vae_decode, vae_encode_mode
from editkit.guidance import IP2P_GUIDANCE, guided_prediction, interval_scales
from editkit.images import ImageInput, load_mask, pil_to_tensor, plan_size, resize_input
from editkit.numerics import check_finite
from editkit.pipeline_utils import (
    EditPipelineMixin,
    EditPipelineOutput,
    broadcast_batch,
    check_output_type,
    embeds_placeholders,
    finish_images,
    match_rows,
    step_kwargs,
)
from editkit.validation import check_prompts, check_sampling_args, check_tensor

DEFAULT_MAX_SIDE = 512


def build_conditioning(text: torch.Tensor, null_text: torch.Tensor, image_latents: torch.Tensor, dtype: torch.dtype) -> Conditioning:
    """InstructCV's conditions; the trainer builds them with this same function."""
    return Conditioning(
        {
            "encoder_hidden_states": Condition(text.to(dtype), null_text.to(dtype), "text"),
            "image_latents": Condition.zeros_null(image_latents.to(dtype), "image"),
        }
    )


def unet_forward(
    unet: UNet2DConditionModel,
    latent_input: torch.Tensor,
    cond: dict[str, torch.Tensor],
    timestep: torch.Tensor,
    cross_attention_kwargs: dict | None = None,
) -> torch.Tensor:
    """The backbone call: noisy latent and image latent concatenated on channels."""
    x = torch.cat([latent_input, cond["image_latents"]], dim=1)
    return unet(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"], cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]


@dataclass
class TaskResult:
    """A decoded task answer: `value` is a mask (H, W) bool array, boxes (N, 4),
    depth in metres (H, W) or a colour name; `image` is the raw output."""

    task: str
    prompt: str
    value: Any
    image: PIL.Image.Image


class InstructCVPipeline(EditPipelineMixin, DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "image_latents"]
    request_fields = ("instruction", "image", "mask")
    guidance = IP2P_GUIDANCE

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
    ):
        super().__init__()
        latent_ch = vae.config.latent_channels
        if unet.config.in_channels != 2 * latent_ch:
            raise ValueError(
                f"InstructCV needs a UNet with {2 * latent_ch} input channels (noisy latent + image latent), "
                f"but this UNet has {unet.config.in_channels}. Is this a text-to-image checkpoint rather than "
                "an InstructPix2Pix/InstructCV one?"
            )
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        # the default scales travel with the model (official 7.5 / 1.5; a shapes model keeps the ones chosen on val)
        self.register_to_config(guidance_scale=float(guidance_scale), image_guidance_scale=float(image_guidance_scale))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # latent sides must survive every UNet downsampling
        self.size_multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)

    required_components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        if request.image is None:
            raise ValueError("InstructCV edits an image: the request has no `image`.")
        if not isinstance(request.instruction, str):
            raise ValueError("InstructCV takes a text instruction, not an interleaved prompt.")
        return {"prompt": request.instruction, "image": request.image, "mask": request.mask}

    # -- conditioning ---------------------------------------------------------------

    def encode_prompt(self, prompts: str | list[str]) -> torch.Tensor:
        """Text-encoder states (B, L, D) for `prompts`: what `prompt_embeds` / `negative_prompt_embeds` take."""
        return encode_clip_text(self.tokenizer, self.text_encoder, check_prompts(prompts), self._execution_device)

    def encode_conditioning(self, prompts: list[str], pixels: torch.Tensor, negative_prompt: str | list[str] | None = None,
                            prompt_embeds: torch.Tensor | None = None,
                            negative_prompt_embeds: torch.Tensor | None = None) -> Conditioning:
        """Text states (null: the empty/negative prompt) and unscaled image latents (null: zeros);
        precomputed `prompt_embeds` / `negative_prompt_embeds` replace the text encoder's."""
        device = self._execution_device
        if prompt_embeds is None:
            text = encode_clip_text(self.tokenizer, self.text_encoder, prompts, device)
        else:
            text = match_rows(prompt_embeds, len(prompts), "prompt_embeds").to(device)
        if negative_prompt_embeds is not None:
            if negative_prompt is not None:
                raise ValueError("pass `negative_prompt` or `negative_prompt_embeds`, not both.")
            null_text = negative_prompt_embeds.to(device)
            if null_text.shape[0] != 1:
                null_text = match_rows(null_text, len(prompts), "negative_prompt_embeds")
        elif negative_prompt is None or isinstance(negative_prompt, str):
            null_text = encode_clip_text(self.tokenizer, self.text_encoder, [negative_prompt or ""], device)
        else:
            if len(negative_prompt) != len(prompts):
                raise ValueError(f"`negative_prompt` has {len(negative_prompt)} entries for {len(prompts)} prompts.")
            null_text = encode_clip_text(self.tokenizer, self.text_encoder, list(negative_prompt), device)
        with torch.no_grad():
            image_latents = vae_encode_mode(self.vae, pixels.to(device))
        return build_conditioning(text, null_text, image_latents, self.unet.dtype)

    # -- sampling -------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        max_side: int | None | str = "auto",
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
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> EditPipelineOutput | tuple:
        r"""Edit `image` following `prompt`.

        Args:
            prompt: instruction(s); a list edits a batch (one image for many
                prompts, many images for one prompt, or pairs).
            image: path, PIL image, array or tensor (or a list of them).
            num_inference_steps: denoising steps (InstructCV CLI default 100).
            guidance_scale: text guidance $s_T$. None: the model's `config.guidance_scale` (official 7.5).
            image_guidance_scale: image guidance $s_I$. None: `config.image_guidance_scale` (official 1.5). Branches whose
                weight is zero are skipped; (1, 1) runs the conditional branch only.
            negative_prompt: the null text (default "").
            height, width: output size; the other side follows the aspect
                ratio when only one is given. Default: the input's size.
            max_side: bound on the working resolution's long side (the model
                runs at most this large; the output is resized back). "auto": the
                size the model was trained at (`trained_side`: UNet sample size x VAE
                factor; 512 for SD 1.5-based InstructCV, 64 for the shipped tiny model).
                None: no bound.
            mask: optional (H, W) mask of the input's size; white = may change.
                Pixels outside it are taken from the input.
            num_images_per_prompt: samples per prompt.
            eta, generator, latents: as in diffusers.
            output_type: "pil", "np", "pt" or "latent".
            correctors: `StepCorrector`s run at every step (e.g. HGS).
            callback_on_step_end: `fn(pipe, step, timestep, callback_kwargs)`;
                may return a dict replacing "latents", "prompt_embeds" or "image_latents".
            guidance_interval: (start, end) fractions of the run; only those steps are guided, the others
                run the conditional branch alone (a smaller batch). None: every step (editkit.guidance.GuidanceInterval).
            prompt_embeds, negative_prompt_embeds: precomputed text-encoder states (B or 1, L, D) instead of
                `prompt` / `negative_prompt` (cached prompts, other encoders), as in diffusers.
        """
        check_output_type(output_type)
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        image_guidance_scale = self.config.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        check_sampling_args(num_inference_steps, num_images_per_prompt, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale, eta=eta)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(bad)}; allowed: {self._callback_tensor_inputs}.")

        if image is None:
            raise TypeError("`image` is required: the image to edit.")
        prompts, images = broadcast_batch(embeds_placeholders(prompt, prompt_embeds), image)
        if max_side == "auto":
            max_side = self.trained_side or DEFAULT_MAX_SIDE
        plans = {plan_size(im.size, self.size_multiple, height, width, max_side) for im in images}
        if len(plans) > 1:
            raise ValueError(
                "the images of a batch need one working size; they differ in size or aspect ratio. "
                "Pass `height` and `width`, or edit them in separate calls."
            )
        plan = plans.pop()
        device = self._execution_device
        pixels = pil_to_tensor([resize_input(im, plan.work_width, plan.work_height) for im in images])
        mask_t = None
        if mask is not None:
            if len(images) != 1 and len({im.size for im in images}) != 1:
                raise ValueError("`mask` needs all images of the batch to share one size.")
            mask_img = load_mask(mask, images[0].size, "mask")
            mask_t = torch.from_numpy(np.asarray(mask_img, dtype=np.float32) / 255.0)[None, None]

        cond = self.encode_conditioning(prompts, pixels, negative_prompt, prompt_embeds,
                                        negative_prompt_embeds).repeat_interleave(num_images_per_prompt)
        batch = cond.batch_size
        self._scales = scales = {"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale}

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.vae.config.latent_channels, plan.work_height // self.vae_scale_factor, plan.work_width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            check_tensor(latents, "latents", shape)
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        extra = step_kwargs(self.scheduler, generator, eta)
        source = pixels.to(device).repeat_interleave(num_images_per_prompt, dim=0) if correctors else None

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                forward = partial(unet_forward, self.unet, timestep=t, cross_attention_kwargs=cross_attention_kwargs)
                model_latents = latents
                if correctors:
                    state = StepState(
                        step=i,
                        num_steps=len(timesteps),
                        timestep=t,
                        latents=latents,
                        scheduler=self.scheduler,
                        conditioning=cond,
                        predict_noise=lambda x, f=forward, t=t: f(self.scheduler.scale_model_input(x, t), cond.select(())),
                        decode=lambda z: vae_decode(self.vae, z),
                        source=source,
                        mask=None if mask_t is None else mask_t.to(device),
                    )
                    model_latents = apply_before(correctors, state)
                model_input = self.scheduler.scale_model_input(model_latents, t)
                noise_pred = guided_prediction(self.guidance, interval_scales(self.guidance, scales, guidance_interval, i, len(timesteps)), cond, model_input, forward)
                if correctors:
                    noise_pred = apply_after(correctors, state, model_latents, noise_pred)
                latents = check_finite(self.scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0], "latents", i)

                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "prompt_embeds": cond["encoder_hidden_states"].value,
                        "image_latents": cond["image_latents"].value,
                    }
                    out = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}) or {}
                    latents = out.get("latents", latents)
                    if "prompt_embeds" in out or "image_latents" in out:
                        text, img = cond["encoder_hidden_states"], cond["image_latents"]
                        cond = Conditioning(
                            {
                                "encoder_hidden_states": Condition(out.get("prompt_embeds", text.value), text.null, "text"),
                                "image_latents": Condition(out.get("image_latents", img.value), img.null, "image"),
                            }
                        )
                progress.update()

        if output_type == "latent":
            result = latents
        else:
            decoded = check_finite(vae_decode(self.vae, latents), "the VAE-decoded image")
            result = finish_images(decoded, plan.out_width, plan.out_height, output_type, pixels, mask_t, num_images_per_prompt)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return EditPipelineOutput(images=result)

    # -- tasks ----------------------------------------------------------------------

    def run_task(
        self,
        task: str,
        image: ImageInput,
        label: str | list[str] | None = None,
        *,
        style: str = "fp",
        pos: str = "red",
        neg: str = "green",
        **kwargs: Any,
    ) -> TaskResult | list[TaskResult]:
        """Ask for a vision task and decode the answer.

        `pipe.run_task("segment", image, "dog")` returns a `TaskResult` whose
        `value` is a boolean mask; "detect" gives (N, 4) boxes, "depth" a
        depth map in metres, "classify" the colour name shown (compare with
        `pos`/`neg`). A list of labels is batched over the same image.
        """
        codec = tasks.get_task(task)
        labels = label if isinstance(label, list) else [label]
        if codec.needs_label and any(not lab for lab in labels):
            raise ValueError(f"task '{codec.name}' needs a `label` (the class to look for).")
        prompts = [codec.prompt(lab, style=style, pos=pos, neg=neg) for lab in labels]
        out = self(prompt=prompts, image=image, output_type="pil", **kwargs).images
        per_prompt = kwargs.get("num_images_per_prompt", 1)
        results = [TaskResult(codec.name, prompts[j // per_prompt], codec.decode(im), im) for j, im in enumerate(out)]
        return results if isinstance(label, list) else results[0]
