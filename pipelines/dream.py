"""Dream Engine: text-image interleaved control of an SD3 MM-DiT through Qwen2-VL.

SD3's text encoders are replaced by a multimodal LLM (Qwen2-VL, or
Qwen2.5-VL): the prompt is raw task-prefixed text with the images inline,
the LMM's last-layer states go through adapter 1 into joint attention and
their mean through adapter 2 into the timestep embedding
(`DreamTransformer2DModel`, a stock SD3 transformer with those two modules
swapped). Images reach the DiT only through the LMM's vision tokens.

Two-way CFG, `v = v_null + g (v_cond - v_null)`, batched [cond, null]; the
null prompt drops the text and keeps the images (per task, see
`editkit.modeling.dream_encoder`). Cond and null are padded to the longer of
the two, so image tokens are never truncated. Sampling is rectified-flow
Euler (`FlowMatchEulerDiscreteScheduler`, shift 3): the DiT gets
t = sigma * 1000 and predicts noise - x0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from transformers import Qwen2VLModel

from editkit.conditioning import Condition, Conditioning, EditRequest
from editkit.encoders import vae_decode
from editkit.guidance import Branch, GuidanceRule, Term, guided_prediction, interval_scales
from editkit.images import ImageInput, load_image, plan_size, resize_output
from editkit.modeling.dream_adapter import DreamTransformer2DModel, pool_states
from editkit.modeling.dream_encoder import (
    DreamPrompt,
    Qwen2VLImageProcessorOnly,
    encode_prompts,
    interleave_references,
    lmm_hidden_size,
    task_prompts,
)
from editkit.numerics import check_finite
from editkit.pipeline_utils import EditPipelineMixin, EditPipelineOutput, cache_scope, check_output_type, format_images, match_rows

# v = null + g (full - null); the null keeps the task prefix and the images.
DREAM_GUIDANCE = GuidanceRule(
    branches=(Branch("full"), Branch("null", frozenset({"text"}))),
    base=(("null", 1.0),),
    terms=(Term("guidance_scale", "full", "null"),),
)

TASKS = ("generate", "copy", "edit", "combine", "interleaved")
# Dream Engine's `cfg_predict` pads cond and null to `max_length` (77 by default; text truncated, image prompts
# not), except object fusion ("combine"), which pads both to the conditional prompt's own length
OFFICIAL_MIN_LENGTH = 77


def official_min_lengths(tasks: Sequence[str]) -> list[int]:
    """The padding floor of each sample under the official default, for a converted checkpoint."""
    return [0 if task == "combine" else OFFICIAL_MIN_LENGTH for task in tasks]


TEXT_LENGTH = "text_length"  # a conditioning entry: each row's own text length (not a transformer input)


def build_conditioning(states: torch.Tensor, null_states: torch.Tensor, dtype: torch.dtype,
                       lengths: torch.Tensor | None = None) -> Conditioning:
    """LMM states and their mean, both in group "text"; the trainer builds them with this same function.

    `lengths` (B,): each sample's own sequence length (what it is padded to alone); the mean pool stops there
    and `transformer_forward` runs each length's rows on their own states, so no sample sees the padding a
    longer prompt of its batch adds. None: every row uses the whole padded batch (training)."""
    conds = {
        "encoder_hidden_states": Condition(states.to(dtype), null_states.to(dtype), "text"),
        "pooled_projections": Condition(pool_states(states, lengths).to(dtype), pool_states(null_states, lengths).to(dtype), "text"),
    }
    if lengths is not None:
        conds[TEXT_LENGTH] = Condition(lengths, lengths, "text")
    return Conditioning(conds)


def transformer_forward(transformer: DreamTransformer2DModel, latent_input: torch.Tensor, cond: dict[str, torch.Tensor],
                        timestep: torch.Tensor, joint_attention_kwargs: dict | None = None) -> torch.Tensor:
    """The backbone call: the stock SD3 forward with LMM states in place of text embeddings; rows with
    their own `TEXT_LENGTH` run in one call per length, on their states cut to it."""
    t = timestep.expand(latent_input.shape[0]) if timestep.dim() == 0 else timestep
    lengths = cond.get(TEXT_LENGTH)
    if lengths is None or bool((lengths == cond["encoder_hidden_states"].shape[1]).all()):
        states = cond["encoder_hidden_states"]
        with cache_scope(transformer, f"rows{states.shape[0]}_text{states.shape[1]}"):
            return transformer(hidden_states=latent_input, encoder_hidden_states=states,
                               pooled_projections=cond["pooled_projections"], timestep=t,
                               joint_attention_kwargs=joint_attention_kwargs, return_dict=False)[0]
    out = None
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().flatten()
        part = {TEXT_LENGTH: None, "encoder_hidden_states": cond["encoder_hidden_states"][rows, : int(length)],
                "pooled_projections": cond["pooled_projections"][rows]}
        pred = transformer_forward(transformer, latent_input[rows], part, t[rows], joint_attention_kwargs)
        out = torch.empty((latent_input.shape[0], *pred.shape[1:]), dtype=pred.dtype, device=pred.device) if out is None else out
        out[rows] = pred
    return out


def sample_prompts(
    prompt: str | list | None,
    image: PIL.Image.Image | None,
    references: Sequence[PIL.Image.Image],
    objects: Sequence[tuple[str, PIL.Image.Image]],
    task: str | None,
    official_null: bool = False,
) -> tuple[str, DreamPrompt, DreamPrompt]:
    """Route one sample to a task format; returns (task, cond, null).

    Without `task`: an interleaved list -> "interleaved"; text with
    `references` -> "interleaved" (image k placed after "image k");
    text with `image` -> "edit"; text alone -> "generate".
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS} or None, got {task!r}.")
    if image is not None and references:
        raise ValueError("give either `image` (edit / copy) or `references` (images placed inline), not both.")
    if task is None:
        if isinstance(prompt, list):
            task = "interleaved"
        elif references:
            task = "interleaved"
        elif image is not None:
            task = "edit"
        elif objects:
            task = "combine"
        else:
            task = "generate"
    if task == "interleaved":
        parts = prompt if isinstance(prompt, list) else interleave_references(_text(prompt), list(references))
        cond, null = task_prompts("interleaved", parts=parts, official_null=official_null)
    elif task == "combine":
        cond, null = task_prompts("combine", text=_text(prompt), objects=list(objects), official_null=official_null)
    elif task == "copy":
        cond, null = task_prompts("copy", image=image)
    else:
        cond, null = task_prompts(task, text=_text(prompt), image=image, official_null=official_null)
    return task, cond, null


def _text(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"this task needs a non-empty text `prompt`, got {prompt!r}.")
    return prompt


def _batch_prompts(prompt: Any) -> list:
    """A list of strings or of interleaved lists is a batch; a list holding images is one interleaved prompt."""
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("`prompt` is an empty list.")
        if any(not isinstance(p, (str, list, tuple)) for p in prompt):
            return [list(prompt)]
        return [list(p) if isinstance(p, tuple) else p for p in prompt]
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, an interleaved list or a list of those, got {type(prompt).__name__}.")
    return [prompt]


def _per_sample(value: Any, n: int, name: str, is_item: Callable[[Any], bool]) -> list:
    """One value per prompt: a single item is shared, a list must have one entry per prompt."""
    if value is None or is_item(value):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    raise ValueError(f"`{name}` must be one item or a list with one entry per prompt ({n}), got {type(value).__name__} of length {len(value) if hasattr(value, '__len__') else '?'}.")


def _is_image_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(not isinstance(v, (list, tuple)) for v in value)


class DreamEnginePipeline(EditPipelineMixin, DiffusionPipeline):
    model_cpu_offload_seq = "lmm->transformer->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds"]
    request_fields = ("instruction", "image", "references")
    guidance = DREAM_GUIDANCE

    def __init__(
        self,
        vae: AutoencoderKL,
        lmm: Qwen2VLModel,
        tokenizer,
        image_processor,
        transformer: DreamTransformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        if not isinstance(transformer, DreamTransformer2DModel):
            raise TypeError(
                f"`transformer` must be a DreamTransformer2DModel (SD3 with the Dream Engine adapters), got {type(transformer).__name__}; "
                "build one from an SD3 transformer with DreamTransformer2DModel.from_sd3."
            )
        width = lmm_hidden_size(lmm)
        if transformer.config.joint_attention_dim != width:
            raise ValueError(f"the transformer's adapters read {transformer.config.joint_attention_dim}-wide states but the LMM is {width} wide.")
        if transformer.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the transformer takes {transformer.config.in_channels} channels but the VAE has {vae.config.latent_channels} latent channels.")
        self.register_modules(vae=vae, lmm=lmm, tokenizer=tokenizer, image_processor=image_processor, transformer=transformer, scheduler=scheduler)
        self.processor = Qwen2VLImageProcessorOnly(image_processor=image_processor, tokenizer=tokenizer)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size_multiple = self.vae_scale_factor * transformer.config.patch_size
        self.default_size = transformer.config.sample_size * self.vae_scale_factor

    required_components = ("vae", "lmm", "tokenizer", "image_processor", "transformer", "scheduler")

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        if request.references:
            if not isinstance(request.instruction, str):
                raise ValueError("give the images either inline in the interleaved instruction or as `references`, not both.")
            return {"prompt": request.instruction, "references": request.references}
        return {"prompt": request.instruction, "image": request.image}

    # -- conditioning ---------------------------------------------------------------

    @property
    def official_sampling(self) -> bool:
        """A converted official checkpoint (transformer config `official_sampling`): sample as `cfg_predict`."""
        return bool(getattr(self.transformer.config, "official_sampling", False))

    def encode_conditioning(self, conds: Sequence[DreamPrompt], nulls: Sequence[DreamPrompt], vit_ratio: float | None = None,
                            max_sequence_length: int | None = None, min_lengths: Sequence[int] | None = None) -> Conditioning:
        """Cond and null prompts in one LMM call, so both are padded to the longer of the two (and to at least
        `min_lengths[i]` for sample i, text-only prompts truncated to it: the official padding)."""
        floors = None if min_lengths is None else [int(m) for m in min_lengths] * 2
        with torch.no_grad():
            states, inputs = encode_prompts(self.lmm, self.processor, list(conds) + list(nulls), vit_ratio=vit_ratio,
                                            max_sequence_length=max_sequence_length, min_lengths=floors,
                                            device=self._execution_device)
        n = len(conds)
        # each sample alone pads its prompt and null to the longer of the two (the official single-prompt run);
        # a right-padded causal LMM gives the same states there, so cutting each sample to that length makes it
        # independent of the rest of the batch
        tokens = inputs["attention_mask"].sum(dim=1).cpu()
        lengths = torch.maximum(tokens[:n], tokens[n:])
        if min_lengths is not None:
            lengths = torch.maximum(lengths, torch.tensor(floors[:n]))
        if max_sequence_length:
            lengths = torch.full((n,), states.shape[1])
        return build_conditioning(states[:n], states[n:], self.transformer.dtype, lengths.to(states.device))

    def padding_floors(self, routed: Sequence[tuple], max_sequence_length: int | None) -> list[int] | None:
        """Per-sample padding floors: the official ones for a converted checkpoint without `max_sequence_length`."""
        if self.official_sampling and max_sequence_length is None:
            return official_min_lengths([task for task, _, _ in routed])
        return None

    def route_prompts(self, prompt: Any, image: Any, references: Any, objects: Any, task: str | None, official_null: bool,
                      negative_prompt: str | list[str] | None = None) -> tuple[list, PIL.Image.Image | None]:
        """Every sample routed to its task format, (task, cond, null), and the first image (for the size);
        a `negative_prompt` is appended to each null's text (its images stay). All checks, no model call."""
        prompts = _batch_prompts(prompt)
        for i, p in enumerate(prompts):
            if isinstance(p, list):
                prompts[i] = [q if isinstance(q, str) else load_image(q, f"prompt[{i}] image") for q in p]
        images = _per_sample(image, len(prompts), "image", lambda v: not isinstance(v, (list, tuple)))
        images = [None if im is None else load_image(im, "image") for im in images]
        refs = _per_sample(references, len(prompts), "references", _is_image_list)
        refs = [[load_image(r, f"references[{j}]") for j, r in enumerate(rs or [])] for rs in refs]
        objs = [(str(name), load_image(im, f"objects[{j}]")) for j, (name, im) in enumerate(objects or [])]
        routed = [sample_prompts(p, im, rs, objs, task, official_null) for p, im, rs in zip(prompts, images, refs)]
        if negative_prompt is not None:
            negatives = _per_sample(negative_prompt, len(routed), "negative_prompt", lambda v: isinstance(v, str))
            routed = [(t, c, DreamPrompt(n.text + neg, n.images)) for (t, c, n), neg in zip(routed, negatives)]
        first = next((im for im in images if im is not None), None) or next((rs[0] for rs in refs if rs), None)
        return routed, first

    def encode_prompt(self, prompt: Any, image: Any = None, references: Any = None, objects: Any = None, task: str | None = None,
                      negative_prompt: str | list[str] | None = None, official_null: bool | None = None,
                      vit_ratio: float | None = None, max_sequence_length: int | None = None) -> dict[str, torch.Tensor]:
        """LMM states of the prompts and their nulls (routed as the call routes them), padded to one length:
        what `prompt_embeds` / `negative_prompt_embeds` take. With one prompt (or prompts of one length) the
        call gives the text path's result; each of a mixed batch is pooled over the whole padded length."""
        official_null = self.official_sampling if official_null is None else official_null
        routed, _ = self.route_prompts(prompt, image, references, objects, task, official_null, negative_prompt)
        cond = self.encode_conditioning([c for _, c, _ in routed], [n for _, _, n in routed], vit_ratio, max_sequence_length,
                                        self.padding_floors(routed, max_sequence_length))
        states = cond["encoder_hidden_states"]
        return {"prompt_embeds": states.value, "negative_prompt_embeds": states.null}

    def given_conditioning(self, prompt: Any, negative_prompt: Any, prompt_embeds: torch.Tensor | None,
                           negative_prompt_embeds: torch.Tensor | None, image: Any, references: Any) -> tuple[Conditioning, Any]:
        """The conditioning from precomputed LMM states (both needed: the null depends on the task routing)."""
        if prompt is not None or negative_prompt is not None:
            raise ValueError("pass `prompt` / `negative_prompt` or `prompt_embeds` / `negative_prompt_embeds`, not both.")
        if prompt_embeds is None or negative_prompt_embeds is None:
            raise ValueError("Dream Engine's null depends on the task routing: pass both `prompt_embeds` and "
                             "`negative_prompt_embeds` (from `encode_prompt`).")
        for name, e in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if not isinstance(e, torch.Tensor) or e.dim() != 3 or e.shape[-1] != self.transformer.lmm_hidden_size:
                raise ValueError(f"`{name}` must be (batch, tokens, {self.transformer.lmm_hidden_size}) LMM states, got "
                                 f"{getattr(e, 'shape', type(e).__name__)}.")
        if negative_prompt_embeds.shape[1] != prompt_embeds.shape[1]:
            raise ValueError("`prompt_embeds` and `negative_prompt_embeds` must be padded to one length (take both from `encode_prompt`).")
        device = self._execution_device
        null = match_rows(negative_prompt_embeds.to(device), prompt_embeds.shape[0], "negative_prompt_embeds")
        first = next((load_image(im, "image") for im in ([image] if not isinstance(image, (list, tuple)) else image) if im is not None), None)
        if first is None and references:
            refs = references[0] if isinstance(references[0], (list, tuple)) else references
            first = load_image(refs[0], "references[0]")
        return build_conditioning(prompt_embeds.to(device), null, self.transformer.dtype), first

    # -- sampling -------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        references: list[ImageInput] | list[list[ImageInput]] | None = None,
        objects: list[tuple[str, ImageInput]] | None = None,
        task: str | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        vit_ratio: float | None = None,
        height: int | None = None,
        width: int | None = None,
        max_side: int | None | str = "auto",
        max_sequence_length: int | None = None,
        official_null: bool | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        guidance_interval: tuple[float, float] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> EditPipelineOutput | tuple:
        r"""Generate from a text or text-image interleaved prompt.

        Args:
            prompt: text; an interleaved list of text and images
                (`["Put ", img1, " on ", img2]`); or a list of either (a batch).
            image: the image to edit ("edit") or reconstruct ("copy"); one or one per prompt.
            references: images placed inline where the text says "image k"
                (image k right after its first mention); a list, or a list per prompt.
            objects: [(name, image), ...] for Dream Engine's object fusion
                ("combine": `prompt` is then the caption).
            task: "generate", "copy", "edit", "combine", "interleaved", or
                None to route from the inputs (see `sample_prompts`).
            num_inference_steps: Euler steps (28).
            guidance_scale: CFG g (3.5); 1 runs the conditional branch only.
            vit_ratio: r in [0, 1] blending the merged ViT features into the
                image-token states (None: no blend, the official default).
            height, width: output size. Default: the image's (or the first
                reference's) size, else the transformer's sample size x VAE factor.
            max_side: without height/width, the long side of the working size is scaled
                down to at most this (the output stays at the input's size); "auto": the size the
                model was trained at (`trained_side`); None: the input's own size.
            max_sequence_length: pad every prompt to this length (an error if a prompt is longer). None:
                each sample's prompt and null to the longer of the two; for a converted official checkpoint
                (transformer config `official_sampling`) as Dream Engine's `cfg_predict`: to at least 77
                tokens, a text-only prompt truncated to 77, object fusion to its own length.
            official_null: Dream Engine's own null strings (edit: no trailing space; interleaved: the
                text with the images dropped). None: the transformer config's `official_sampling`.
            num_images_per_prompt, generator, latents, output_type: as in diffusers.
            callback_on_step_end: `fn(pipe, step, timestep, callback_kwargs)`; may return new "latents".
            guidance_interval: (start, end) fractions of the run; only those steps are guided, the others
                run the conditional branch alone (a smaller batch). None: every step (editkit.guidance.GuidanceInterval).
            negative_prompt: text appended to each sample's null prompt (the null keeps its task prefix and the
                images it has; default: nothing).
            prompt_embeds, negative_prompt_embeds: precomputed LMM states (B, N, D) of the prompts and their nulls,
                padded to one length (`encode_prompt`), instead of `prompt`; `image` / `references` then only set the size.
        """
        check_output_type(output_type)
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be >= 1, got {num_images_per_prompt}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}.")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {sorted(bad)}; allowed: {self._callback_tensor_inputs}.")

        if prompt_embeds is not None or negative_prompt_embeds is not None:
            cond, first = self.given_conditioning(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, image, references)
        else:
            official_null = self.official_sampling if official_null is None else official_null
            routed, first = self.route_prompts(prompt, image, references, objects, task, official_null, negative_prompt)
            cond = self.encode_conditioning([c for _, c, _ in routed], [n for _, _, n in routed], vit_ratio, max_sequence_length,
                                            self.padding_floors(routed, max_sequence_length))
        size = first.size if first is not None else (self.default_size, self.default_size)
        if max_side == "auto":
            max_side = self.trained_side
        plan = plan_size(size, self.size_multiple, height, width, max_side)
        device = self._execution_device
        cond = cond.repeat_interleave(num_images_per_prompt)
        batch = cond.batch_size
        self._scales = scales = {"guidance_scale": guidance_scale}

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.transformer.config.in_channels, plan.work_height // self.vae_scale_factor, plan.work_width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}.")
        latents = latents.to(device=device, dtype=self.transformer.dtype)

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                forward = partial(transformer_forward, self.transformer, timestep=t, joint_attention_kwargs=joint_attention_kwargs)
                velocity = guided_prediction(self.guidance, interval_scales(self.guidance, scales, guidance_interval, i, len(timesteps)), cond, latents, forward)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                check_finite(latents, "latents", i)
                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": cond["encoder_hidden_states"].value}
                    out = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs}) or {}
                    latents = out.get("latents", latents)
                progress.update()

        if output_type == "latent":
            result = latents
        else:
            decoded = vae_decode(self.vae, latents)
            result = (decoded.float() / 2 + 0.5).clamp(0, 1)
            result = format_images(resize_output(result, plan.out_width, plan.out_height), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return EditPipelineOutput(images=result)
