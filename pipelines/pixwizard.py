"""PixWizard: open-language image-to-image tasks on a flow-matching Lumina-Next DiT.

The transformer (`PixWizardTransformer2DModel`) sees the noisy latent with the
source image's VAE latent concatenated on channels, LLM (Gemma) states of the
instruction, the pooled CLIP text embedding (task embedding) and CLIP vision
tokens of the source image. Sampling is a rectified flow solved with diffusers'
`FlowMatchEulerDiscreteScheduler` (pixwizard.md §5): custom sigmas
1 - linspace(0, 1, N + 1)[:-1], the model is fed t = 1 - sigma and predicts
v = data - noise, so the scheduler steps with -v.

Guidance (three branches, one batched forward per step):

    v = v_null + s_I (v_image - v_null) + s_T (v_full - v_image)

where the image branch drops the text (empty prompt) and the null branch also
drops the image: its VAE slot holds the initial noise latent and its CLIP
tokens are zeros, the convention the released weights were trained with. With
s_I = 1 the null branch has zero weight and is skipped. Guidance acts on all
latent channels; `official_cfg_channels=True` reproduces the official code's
guidance of channels 0-2 only. A converted official checkpoint samples the
official way by default: its transformer config has `official_sampling=True`
(channels 0-2 guided, condition encoded with a posterior sample) and
`token_selection="gumbel"`, written by `editkit.convert.pixwizard`.

Any resolution: the image is resized to the aspect-ratio bucket (sizes that
fit the VAE x patch grid, area <= resolution^2, aspect <= 4) closest to its
aspect ratio; RoPE is built for that grid; the output comes back at the
input's size (or `height`/`width`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModel, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from editkit.conditioning import Condition, Conditioning, EditRequest
from editkit.encoders import tokenize_clip, vae_decode, vae_encode_scaled
from editkit.guidance import Branch, ConditionDropout, GuidanceRule, Term, guided_prediction, interval_scales, ip2p_dropout
from editkit.images import ImageInput, load_mask, pil_to_tensor, plan_size, resize_input
from editkit.modeling.pixwizard_transformer import TOKEN_SELECTIONS, PixWizardTransformer2DModel
from editkit.numerics import check_finite
from editkit.pipeline_utils import (
    EditPipelineMixin,
    EditPipelineOutput,
    broadcast_batch,
    cache_scope,
    check_output_type,
    embeds_placeholders,
    finish_images,
    match_rows,
)

MAX_ASPECT = 4.0
LLM_MAX_LENGTH = 256
T2I_PREFIX = "Text to image generation: "

# v = null + s_I (image - null) + s_T (full - image); branch order [full, image, null].
PIXWIZARD_GUIDANCE = GuidanceRule(
    branches=(
        Branch("full"),
        Branch("image", frozenset({"text"})),
        Branch("null", frozenset({"text", "image"})),
    ),
    base=(("null", 1.0),),
    terms=(Term("image_guidance_scale", "image", "null"), Term("guidance_scale", "full", "image")),
)


def pixwizard_dropout(p: float = 0.05) -> ConditionDropout:
    """The paper's training dropout (the code's inverted 0.95 image dropout is a bug, §11.3):
    text only, text and image, image only, p each."""
    return ip2p_dropout(p)


# -- sizes --------------------------------------------------------------------------


def aspect_buckets(resolution: int, multiple: int, max_aspect: float = MAX_ASPECT,
                   max_side: int | None = None) -> list[tuple[int, int]]:
    """(width, height) buckets: multiples of `multiple`, area <= resolution^2, aspect <= `max_aspect`.

    For each width the tallest height that fits the area is kept.
    """
    if resolution < multiple:
        raise ValueError(f"`resolution` {resolution} is smaller than the size multiple {multiple}.")
    area = resolution * resolution
    buckets = []
    w = multiple
    while w * multiple <= area:
        h = (area // w) // multiple * multiple
        if max(w / h, h / w) <= max_aspect and (max_side is None or max(w, h) <= max_side):
            buckets.append((w, h))
        w += multiple
    if not buckets:
        raise ValueError(f"no size bucket fits resolution {resolution} with max_side {max_side} (multiple {multiple}).")
    return buckets


def choose_bucket(width: int, height: int, resolution: int, multiple: int, max_side: int | None = None) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to width/height; ties go to the larger area."""
    target = math.log(width / height)
    return min(aspect_buckets(resolution, multiple, max_side=max_side),
               key=lambda b: (round(abs(math.log(b[0] / b[1]) - target), 9), -b[0] * b[1]))


# -- encoders (shared with the training plugin) -------------------------------------------


def encode_llm_text(tokenizer, text_encoder, prompts: list[str], device: torch.device | str | None = None,
                    max_length: int = LLM_MAX_LENGTH, add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM's penultimate hidden states (B, L, D) and mask (B, L); right padding to a multiple of 8.

    The tokenizer adds its own BOS; `add_eos` appends EOS (editkit's models are trained so; the official code
    never does: its `from_pretrained(..., add_eos=True)` is not a Gemma tokenizer argument and is ignored)."""
    model = getattr(text_encoder, "module", text_encoder)
    device = device if device is not None else model.device
    ids = tokenizer(prompts, add_special_tokens=True, truncation=True, max_length=max_length - int(add_eos)).input_ids
    if add_eos:
        ids = [seq + [tokenizer.eos_token_id] for seq in ids]
    length = max(len(seq) for seq in ids)
    length = -(-length // 8) * 8
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([seq + [pad] * (length - len(seq)) for seq in ids], device=device)
    mask = torch.tensor([[1] * len(seq) + [0] * (length - len(seq)) for seq in ids], device=device)
    out = text_encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[-2].to(model.dtype), mask


def encode_clip_pooled(tokenizer, text_encoder, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
    """CLIP `text_embeds`: the projected EOS token (B, projection_dim)."""
    model = getattr(text_encoder, "module", text_encoder)
    device = device if device is not None else model.device
    tokens = tokenize_clip(tokenizer, prompts)
    return text_encoder(tokens.input_ids.to(device)).text_embeds.to(model.dtype)


def clip_image_tokens(image_encoder, pixels: torch.Tensor, official_resize: bool = False) -> torch.Tensor:
    """CLIP vision last hidden state without CLS (B, N, D) for pixels in [-1, 1].

    As in PixWizard the image is squashed to the encoder's square input (bicubic), ignoring the aspect ratio:
    antialiased and clamped (editkit's models are trained so), or `official_resize`: the official
    `FrozenCLIPEmbedder_Image` resize (kornia bicubic, align_corners=True, no antialias, no clamp)."""
    size = image_encoder.config.image_size
    x = (pixels.float() + 1) / 2
    if official_resize:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    else:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(device=image_encoder.device, dtype=image_encoder.dtype)
    return image_encoder(pixel_values=x).last_hidden_state[:, 1:]


def build_conditioning(text: torch.Tensor, text_mask: torch.Tensor, pooled: torch.Tensor, null_text: torch.Tensor,
                       null_mask: torch.Tensor, null_pooled: torch.Tensor, image_latents: torch.Tensor,
                       null_image_latents: torch.Tensor, image_embeds: torch.Tensor, dtype: torch.dtype) -> Conditioning:
    """PixWizard's conditions; the training plugin builds them with this same function.

    Group "text": LLM states, their mask and the pooled CLIP text (null: the empty prompt).
    Group "image": the VAE latent (null: Gaussian noise) and the CLIP tokens (null: zeros)."""
    return Conditioning(
        {
            "encoder_hidden_states": Condition(text.to(dtype), null_text.to(dtype), "text"),
            "encoder_attention_mask": Condition(text_mask, null_mask, "text"),
            "pooled_text_embeds": Condition(pooled.to(dtype), null_pooled.to(dtype), "text"),
            "image_latents": Condition(image_latents.to(dtype), null_image_latents.to(dtype), "image"),
            "image_embeds": Condition.zeros_null(image_embeds.to(dtype), "image"),
        }
    )


def transformer_forward(transformer: PixWizardTransformer2DModel, latent_input: torch.Tensor, cond: dict[str, torch.Tensor],
                        timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The backbone call; keeps the first `in_channels` output channels (learn_sigma)."""
    with cache_scope(transformer, f"rows{latent_input.shape[0]}"):
        out = transformer(latent_input, timestep, return_dict=False, **cond, **kwargs)[0]
    config = getattr(transformer, "module", transformer).config  # unwrap DDP
    return out[:, : config.in_channels]


EMBED_NAMES = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds",
               "negative_prompt_embeds", "negative_prompt_attention_mask", "negative_pooled_prompt_embeds")


def broadcast_negatives(negative_prompt: str | list[str] | None, n: int) -> list[str]:
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * n
    if len(negative_prompt) != n:
        raise ValueError(f"`negative_prompt` has {len(negative_prompt)} entries for {n} prompts.")
    return list(negative_prompt)


class PixWizardPipeline(EditPipelineMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->clip_text_encoder->image_encoder->transformer->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents"]
    request_fields = ("instruction", "image", "mask")
    guidance = PIXWIZARD_GUIDANCE

    def __init__(
        self,
        transformer: PixWizardTransformer2DModel,
        vae: AutoencoderKL,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        clip_text_encoder: CLIPTextModelWithProjection,
        clip_tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        tc = transformer.config
        if tc.in_channels != vae.config.latent_channels or tc.condition_channels != vae.config.latent_channels:
            raise ValueError(
                f"the transformer takes {tc.in_channels}+{tc.condition_channels} latent channels but the VAE has "
                f"{vae.config.latent_channels}."
            )
        llm_width = text_encoder.config.get_text_config().hidden_size
        checks = (
            ("text_encoder hidden size", llm_width, tc.cross_attention_dim),
            ("clip_text_encoder projection_dim", clip_text_encoder.config.projection_dim, tc.pooled_text_dim),
            ("image_encoder hidden_size", image_encoder.config.hidden_size, tc.image_embed_dim),
        )
        for what, got, want in checks:
            if got != want:
                raise ValueError(f"{what} is {got}, but the transformer expects {want}.")
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise TypeError(f"PixWizard samples a rectified flow: `scheduler` must be a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}.")
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            clip_text_encoder=clip_text_encoder, clip_tokenizer=clip_tokenizer, image_encoder=image_encoder,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # image sides must be whole latent patches
        self.size_multiple = self.vae_scale_factor * tc.patch_size

    required_components = ("transformer", "vae", "text_encoder", "tokenizer", "clip_text_encoder", "clip_tokenizer", "image_encoder", "scheduler")

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        if not isinstance(request.instruction, str):
            raise ValueError("PixWizard takes a text instruction, not an interleaved prompt.")
        # no image: text-to-image on PixWizard's blank canvas
        return {"prompt": request.instruction, "image": request.image, "mask": request.mask}

    @property
    def default_resolution(self) -> int:
        """The bucket centre: the transformer's native latent size in pixels."""
        return int(self.transformer.config.sample_size) * self.vae_scale_factor

    # -- conditioning ---------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], negative: list[str], add_eos: bool = True) -> tuple[torch.Tensor, ...]:
        """LLM states + mask and pooled CLIP text for prompts and their nulls, padded to one length."""
        device = self._execution_device
        states, mask = encode_llm_text(self.tokenizer, self.text_encoder, prompts + negative, device, add_eos=add_eos)
        pooled = encode_clip_pooled(self.clip_tokenizer, self.clip_text_encoder, prompts + negative, device)
        n = len(prompts)
        return states[:n], mask[:n], pooled[:n], states[n:], mask[n:], pooled[n:]

    def resolve_add_eos(self, add_eos: bool | None) -> bool:
        """None: append EOS for editkit's models (trained with it), not for a converted official checkpoint."""
        return not getattr(self.transformer.config, "official_sampling", False) if add_eos is None else bool(add_eos)

    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                      add_eos: bool | None = None) -> dict[str, torch.Tensor]:
        """The call's precomputed text inputs, as keyword arguments: `prompt_embeds`, `prompt_attention_mask`,
        `pooled_prompt_embeds` and their `negative_` twins (prompts and nulls padded to one length, as the
        text path does). Text-to-image prompts need the "Text to image generation: " prefix here."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = broadcast_negatives(negative_prompt, len(prompts))
        parts = self.encode_prompts(prompts, negatives, self.resolve_add_eos(add_eos))
        return dict(zip(EMBED_NAMES, parts))

    def prompt_states(self, prompts: list[str], negatives: list[str], add_eos: bool,
                      embeds: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
        """`encode_prompts`' six tensors, taking the precomputed ones from `embeds` (a mask defaults to all
        ones; a pooled state must come with its sequence); prompts and nulls are padded to one length."""
        given = {k: v for k, v in embeds.items() if v is not None}
        if not given:
            return self.encode_prompts(prompts, negatives, add_eos)
        n, device = len(prompts), self._execution_device
        out = {}
        for side, texts in (("", prompts), ("negative_", negatives)):
            seq, mask, pooled = (f"{side}prompt_embeds", f"{side}prompt_attention_mask", f"{side}pooled_prompt_embeds")
            if seq not in given:
                for extra in (mask, pooled):
                    if extra in given:
                        raise ValueError(f"`{extra}` needs `{seq}` with it.")
                states, m = encode_llm_text(self.tokenizer, self.text_encoder, texts, device, add_eos=add_eos)
                out[seq], out[mask] = states, m
                out[pooled] = encode_clip_pooled(self.clip_tokenizer, self.clip_text_encoder, texts, device)
                continue
            if pooled not in given:
                raise ValueError(f"`{seq}` needs `{pooled}` (the CLIP text state): take both from `encode_prompt`.")
            states = match_rows(given[seq].to(device), n, seq)
            out[seq] = states
            m = given.get(mask)
            out[mask] = torch.ones(states.shape[:2], dtype=torch.long, device=device) if m is None else match_rows(m.to(device), n, mask)
            out[pooled] = match_rows(given[pooled].to(device), n, pooled)
        length = max(out["prompt_embeds"].shape[1], out["negative_prompt_embeds"].shape[1])
        for side in ("", "negative_"):  # pad to one length; the padding is masked out
            seq, mask = f"{side}prompt_embeds", f"{side}prompt_attention_mask"
            extra = length - out[seq].shape[1]
            out[seq] = F.pad(out[seq], (0, 0, 0, extra))
            out[mask] = F.pad(out[mask], (0, extra))
        return tuple(out[k] for k in EMBED_NAMES)

    # -- sampling -------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        num_inference_steps: int = 59,
        guidance_scale: float = 4.0,
        image_guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        resolution: int | None = None,
        height: int | None = None,
        width: int | None = None,
        max_side: int | None = None,
        mask: ImageInput | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        official_cfg_channels: bool | None = None,
        token_selection: str | None = None,
        proportional_attention: bool = True,
        add_eos: bool | None = None,
        sample_condition: bool | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
    ) -> EditPipelineOutput | tuple:
        r"""Apply the instruction `prompt` to `image`.

        Args:
            prompt: instruction(s); a list edits a batch (one image for many prompts, many images for one, or pairs).
            image: path, PIL image, array or tensor (or a list). None: text-to-image, as PixWizard does it:
                a white canvas of `height` x `width` (default `resolution` square) and the prompt prefixed
                with "Text to image generation: ".
            num_inference_steps: Euler steps (59 = the official 60-point grid).
            guidance_scale: text guidance $s_T$ (4.0).
            image_guidance_scale: image guidance $s_I$ (1.0: the null branch is skipped).
            negative_prompt: the null text (default "").
            resolution: bucket centre in pixels; the working size has area <= resolution^2.
                Default: the transformer's `sample_size` x the VAE factor.
            height, width: output size (default the input's); the working size follows its aspect ratio.
            max_side: optional bound on the working size's long side.
            mask: optional mask of the input's size; pixels outside it are taken from the input.
            num_images_per_prompt, generator, latents: as in diffusers (`latents` is the initial noise).
            output_type: "pil", "np", "pt" or "latent".
            official_cfg_channels: guide latent channels 0-2 only, channel 3 from the full branch (official quirk);
                default: the transformer config's `official_sampling`.
            token_selection: "topk" (deterministic, default) or "gumbel" (the official random draw, seeded by `generator`).
            proportional_attention: scale self-attention by log_base(seq len) with base = the bucket centre's token count.
            add_eos: append EOS to the LLM tokens. None: yes for editkit's models (trained so), no for a converted
                official checkpoint (the official tokenizer call's `add_eos=True` is ignored by Gemma's tokenizer:
                it takes `add_eos_token`, so the official code never appends EOS).
            sample_condition: encode the source with a posterior sample (official) instead of the mode; default:
                the transformer config's `official_sampling`.
            callback_on_step_end: `fn(pipe, step, timestep, callback_kwargs)`; may return a dict replacing "latents".
            guidance_interval: (start, end) fractions of the run; only those steps are guided, the others
                run the conditional branch alone (a smaller batch). None: every step (editkit.guidance.GuidanceInterval).
            prompt_embeds, prompt_attention_mask, pooled_prompt_embeds: precomputed LLM states (B, L, D), their
                mask (B, L) and the pooled CLIP text (B, D) instead of `prompt` (from `encode_prompt`); the
                `negative_` twins replace `negative_prompt`. One row is broadcast to the batch.
        """
        prompt = embeds_placeholders(prompt, prompt_embeds)
        check_output_type(output_type)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be >= 1, got {num_images_per_prompt}.")
        if token_selection is not None and token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"`token_selection` must be one of {TOKEN_SELECTIONS}, got {token_selection!r}.")
        official = bool(getattr(self.transformer.config, "official_sampling", False))
        if official_cfg_channels is None:  # with guidance off there is no full branch to take channel 3 from
            official_cfg_channels = official and guidance_scale != 0
        sample_condition = official if sample_condition is None else sample_condition
        if official_cfg_channels and guidance_scale == 0:
            raise ValueError("`official_cfg_channels=True` takes channel 3 from the full branch, which guidance_scale=0 skips.")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(bad)}; allowed: {self._callback_tensor_inputs}.")
        resolution = self.default_resolution if resolution is None else resolution
        if not isinstance(resolution, int) or resolution < self.size_multiple:
            raise ValueError(f"`resolution` must be an integer >= {self.size_multiple}, got {resolution!r}.")

        if image is None:
            if mask is not None:
                raise ValueError("`mask` needs an `image` to keep pixels from; text-to-image takes none.")
            canvas = PIL.Image.new("RGB", (width or height or resolution, height or width or resolution), "white")
            prompts_in = [prompt] if isinstance(prompt, str) else prompt
            if isinstance(prompts_in, (list, tuple)) and all(isinstance(p, str) for p in prompts_in):
                prompt = [p if p.startswith(T2I_PREFIX) else T2I_PREFIX + p for p in prompts_in]
            image = canvas
        prompts, images = broadcast_batch(prompt, image)
        negatives = broadcast_negatives(negative_prompt, len(prompts))
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass `negative_prompt` or `negative_prompt_embeds`, not both.")
        plans = {plan_size(im.size, 1, height, width) for im in images}
        if len(plans) > 1:
            raise ValueError("the images of a batch need one output size; they differ in size or aspect ratio. "
                             "Pass `height` and `width`, or edit them in separate calls.")
        plan = plans.pop()
        work_w, work_h = choose_bucket(plan.out_width, plan.out_height, resolution, self.size_multiple, max_side)
        device = self._execution_device
        dtype = self.transformer.dtype
        pixels = pil_to_tensor([resize_input(im, work_w, work_h) for im in images])
        mask_t = None
        if mask is not None:
            if len({im.size for im in images}) != 1:
                raise ValueError("`mask` needs all images of the batch to share one size.")
            mask_img = load_mask(mask, images[0].size, "mask")
            mask_t = torch.from_numpy(np.asarray(mask_img, dtype=np.float32) / 255.0)[None, None]

        # -- conditions ---------------------------------------------------------------
        embeds = {"prompt_embeds": prompt_embeds, "prompt_attention_mask": prompt_attention_mask,
                  "pooled_prompt_embeds": pooled_prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds,
                  "negative_prompt_attention_mask": negative_prompt_attention_mask,
                  "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds}
        text, text_mask, pooled, null_text, null_mask, null_pooled = self.prompt_states(prompts, negatives, self.resolve_add_eos(add_eos), embeds)
        reps = num_images_per_prompt
        batch = len(prompts) * reps
        shape = (batch, self.transformer.config.in_channels, work_h // self.vae_scale_factor, work_w // self.vae_scale_factor)
        # the starting noise first, then the condition's posterior sample: the official draw order
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}.")
        latents = latents.to(device=device, dtype=dtype)
        cond_generator = generator[0] if isinstance(generator, list) else generator
        image_latents = vae_encode_scaled(self.vae, pixels.to(device), sample_condition, cond_generator)
        image_embeds = clip_image_tokens(self.image_encoder, pixels.to(device), official_resize=official)
        rep = lambda x: x.repeat_interleave(reps, dim=0)  # noqa: E731
        # the null branch's VAE slot is the sampler's own starting noise
        cond = build_conditioning(rep(text), rep(text_mask), rep(pooled), rep(null_text), rep(null_mask), rep(null_pooled),
                                  rep(image_latents), latents.clone(), rep(image_embeds), dtype)
        self._scales = scales = {"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale}

        # -- flow-matching grid: sigmas 1 - linspace(0, 1, N + 1)[:-1], shifted by the scheduler --
        sigmas = (1.0 - np.linspace(0.0, 1.0, num_inference_steps + 1)[:-1]).tolist()
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps
        patch_tokens = resolution // self.size_multiple
        kwargs: dict[str, Any] = {
            "base_sequence_length": patch_tokens * patch_tokens if proportional_attention else None,
            "token_selection": token_selection,
        }
        if (token_selection or self.transformer.config.token_selection) == "gumbel":
            kwargs["generator"] = generator[0] if isinstance(generator, list) else generator

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                sigma = self.scheduler.sigmas[i].to(device)
                model_t = 1.0 - sigma  # the model's time: 0 = noise, 1 = data (one for every branch)
                captured: dict[str, torch.Tensor] = {}

                def forward(x, c, model_t=model_t):
                    out = transformer_forward(self.transformer, x, c, model_t, **kwargs)
                    captured["out"] = out
                    return out

                velocity = guided_prediction(self.guidance, interval_scales(self.guidance, scales, guidance_interval, i, len(timesteps)), cond, latents, forward)
                if official_cfg_channels:
                    # the official sampler guides channels 0-2; channel 3 keeps the full branch's output
                    full = captured["out"][:batch]
                    velocity = torch.cat([velocity[:, :3], full[:, 3:]], dim=1)
                latents = self.scheduler.step(-velocity, t, latents, return_dict=False)[0]
                check_finite(latents, "latents", i)

                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.get("latents", latents)
                progress.update()

        if output_type == "latent":
            result = latents
        else:
            decoded = vae_decode(self.vae, latents)
            result = finish_images(decoded, plan.out_width, plan.out_height, output_type, pixels, mask_t, reps)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return EditPipelineOutput(images=result)
