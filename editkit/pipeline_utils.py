"""Small pieces every editkit pipeline uses: batching, outputs, loading checks."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from .conditioning import EditRequest
from .images import ImageInput, load_image, resize_output, tensor_to_pil
from .validation import check_prompts

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class EditPipelineOutput(BaseOutput):
    """`images`: list of PIL images, a (B, H, W, 3) float array in [0, 1],
    a (B, 3, H, W) tensor in [0, 1], or latents, by `output_type`."""

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]


def broadcast_batch(prompt: str | list[str], image: ImageInput | list[ImageInput]) -> tuple[list[str], list[PIL.Image.Image]]:
    """Pair prompts with images: equal lengths, or one side of length 1 repeated."""
    prompts = check_prompts(prompt, "prompt")
    images_in = list(image) if isinstance(image, (list, tuple)) else [image]
    if not images_in:
        raise ValueError("`image` is an empty list.")
    images = [load_image(im, "image" if len(images_in) == 1 else f"image[{i}]") for i, im in enumerate(images_in)]
    if len(prompts) == len(images):
        return prompts, images
    if len(images) == 1:
        return prompts, images * len(prompts)
    if len(prompts) == 1:
        return prompts * len(images), images
    raise ValueError(f"got {len(prompts)} prompts and {len(images)} images; pass equally many, or one of either.")


def embeds_placeholders(prompt: Any, prompt_embeds: torch.Tensor | None, prompt_name: str = "prompt") -> Any:
    """`prompt`, or (when the caller passes precomputed `prompt_embeds` instead, as in diffusers) one
    placeholder string per embedding row, so that batching follows the embeddings."""
    if prompt_embeds is None:
        if prompt is None:
            raise TypeError(f"`{prompt_name}` is required, or pass `prompt_embeds`.")
        return prompt
    if prompt is not None:
        raise ValueError(f"pass `{prompt_name}` or `prompt_embeds`, not both.")
    if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.dim() != 3:
        raise ValueError(f"`prompt_embeds` must be a (batch, tokens, dim) tensor, got {getattr(prompt_embeds, 'shape', type(prompt_embeds).__name__)}.")
    return [f"prompt_embeds[{i}]" for i in range(prompt_embeds.shape[0])]


def match_rows(embeds: torch.Tensor, rows: int, name: str) -> torch.Tensor:
    """Precomputed embeddings for a batch of `rows`: as given, or one row repeated."""
    if embeds.shape[0] == rows:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(rows, *embeds.shape[1:])
    raise ValueError(f"`{name}` has {embeds.shape[0]} rows for a batch of {rows}; pass {rows} or 1.")


def cache_scope(backbone: torch.nn.Module, name: str) -> contextlib.AbstractContextManager:
    """diffusers' cache hooks keep one state per `cache_context`; name it by the call's shapes (batch, text
    length) so a guidance interval or a per-length call never compares residuals of different shapes.
    A no-op for a backbone without a cache enabled."""
    if getattr(backbone, "is_cache_enabled", False):
        return backbone.cache_context(name)
    return contextlib.nullcontext()


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")


def format_images(images: torch.Tensor, output_type: str) -> Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] to the requested output type."""
    if output_type == "pt":
        return images
    if output_type == "np":
        return images.cpu().permute(0, 2, 3, 1).float().numpy()
    return tensor_to_pil(images)


def finish_images(decoded: torch.Tensor, out_width: int, out_height: int, output_type: str, pixels: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, repeats: int = 1):
    """Decoded pixels in [-1, 1] -> [0, 1] at the output size, the source (`pixels`, working size,
    [-1, 1]) pasted back outside `mask` (1 = may change), then formatted as `output_type`."""
    result = resize_output((decoded.float() / 2 + 0.5).clamp(0, 1), out_width, out_height)
    if mask is not None:
        keep = resize_output(pixels.float() / 2 + 0.5, out_width, out_height).repeat_interleave(repeats, dim=0).to(result.device)
        m = resize_output(mask, out_width, out_height).to(result.device)
        result = m * result + (1 - m) * keep
    return format_images(result, output_type)


def step_kwargs(scheduler, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict[str, Any]:
    """Pass `eta` and `generator` only to schedulers whose `step` takes them."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_model_dir(path: str | os.PathLike, required: tuple[str, ...], allow_pickle: bool = False) -> None:
    """Fail early, with the missing parts named, when a local pipeline folder is incomplete.

    Weights are read from safetensors only: a component folder holding pickle
    weights (.bin, .pt, ...) but no .safetensors file is refused unless
    `allow_pickle` (the caller passed `use_safetensors=False`), because
    unpickling can run code. Convert such folders once with `editkit.convert`.
    Pipelines pass `use_safetensors=True` to diffusers by default for the same reason.
    """
    root = Path(path)
    if not root.exists():
        return  # a hub id: diffusers resolves it (or explains why it cannot, offline)
    if not root.is_dir():
        raise ValueError(f"model path {root} is a file; expected a diffusers pipeline folder with model_index.json.")
    if not (root / "model_index.json").is_file():
        raise ValueError(f"model folder {root} has no model_index.json; is it a diffusers pipeline folder?")
    index = json.loads((root / "model_index.json").read_text())
    missing = [c for c in required if c not in index or not (root / c).is_dir()]
    if missing:
        raise ValueError(f"model folder {root} is missing component(s) {missing}; expected {list(required)}.")
    if allow_pickle:
        return
    for comp in sorted(c for c in index if not c.startswith("_") and (root / c).is_dir()):
        files = [f for f in (root / comp).iterdir() if f.is_file()]
        pickled = [f.name for f in files if f.name.endswith(PICKLE_WEIGHT_SUFFIXES)]
        if pickled and not any(f.name.endswith(".safetensors") for f in files):
            raise ValueError(
                f"model folder {root}: component '{comp}' has only pickle weights {pickled}; editkit loads "
                "safetensors only, because unpickling can run code. Convert it (editkit.convert.load_state_dict + "
                "save_state_dict, or save_pretrained(safe_serialization=True)), or pass use_safetensors=False "
                "if you trust the source."
            )


def safe_loading_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`from_pretrained` kwargs that read safetensors only, unless the caller passed `use_safetensors=False`.

    diffusers' default (`None`) silently falls back to pickle files when a
    component has no safetensors; `True` makes that an error instead.
    `False` (the caller trusts the source) becomes diffusers' `None`: safetensors
    where present, pickle (unpickled with weights_only=True) elsewhere.
    """
    if kwargs.get("use_safetensors", True) is False:
        return {**kwargs, "use_safetensors": None}
    return {**kwargs, "use_safetensors": True}


class EditPipelineMixin:
    """Adds `edit(EditRequest)`: the method-agnostic entry used by the CLI and the app.

    Each pipeline says which request fields it understands in
    `request_fields` and maps them to its `__call__` in `request_kwargs`.
    """

    request_fields: tuple[str, ...] = ("instruction", "image")
    # components a local model folder must have (checked before diffusers loads anything)
    required_components: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader, reading safetensors only unless `use_safetensors=False` is passed.

        The mixin comes first in each pipeline's bases so that this runs before `DiffusionPipeline.from_pretrained`."""
        kwargs = safe_loading_kwargs(kwargs)
        check_model_dir(pretrained_model_name_or_path, cls.required_components, allow_pickle=kwargs["use_safetensors"] is None)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def trained_side(self) -> int | None:
        """The image side the backbone was trained at (its `sample_size` x the VAE factor), if it records one."""
        backbone = getattr(self, "unet", None)
        if backbone is None:  # no `or`: a torch.compile'd module has no truth value (it raises on len())
            backbone = getattr(self, "transformer", None)
        size = getattr(getattr(backbone, "config", None), "sample_size", None)
        if isinstance(size, (list, tuple)):
            size = max(size)
        return int(size) * int(self.vae_scale_factor) if size else None

    # -- diffusers' call-state properties: a `callback_on_step_end` may read them, and change the
    # scales for the steps after it (the sampling loop reads the same `_scales` dict every step)

    @property
    def num_timesteps(self) -> int | None:
        """Denoising steps of the current (or last) call."""
        return getattr(self, "_num_timesteps", None)

    def _read_scale(self, name: str) -> float | None:
        scales = getattr(self, "_scales", None)
        if scales is not None:
            return scales.get(name)
        return getattr(self.config, name, None)  # before any call: the model's default, where it has one

    def _write_scale(self, name: str, value: float) -> None:
        scales = getattr(self, "_scales", None)
        if scales is None or name not in scales:
            raise AttributeError(f"{type(self).__name__}.{name} can be changed only during a call (from `callback_on_step_end`).")
        scales[name] = float(value)

    guidance_scale = property(lambda self: self._read_scale("guidance_scale"), lambda self, v: self._write_scale("guidance_scale", v))
    image_guidance_scale = property(lambda self: self._read_scale("image_guidance_scale"), lambda self, v: self._write_scale("image_guidance_scale", v))
    # the private names diffusers' own callbacks write (e.g. `pipe._guidance_scale += 1`)
    _guidance_scale = guidance_scale
    _image_guidance_scale = image_guidance_scale

    def edit(self, request: EditRequest, **kwargs: Any) -> EditPipelineOutput:
        request = request.validated()
        unsupported = [
            name
            for name in ("image", "references", "mask", "auxiliary_prompt")
            if getattr(request, name) not in (None, []) and name not in self.request_fields
        ]
        if unsupported:
            raise ValueError(f"{type(self).__name__} does not take {unsupported}; it takes {list(self.request_fields)}.")
        return self(**self.request_kwargs(request), **kwargs)

    def set_attention_backend(self, name: str, *, strict: bool = False) -> dict[str, Any]:
        """Switch all attention in this pipeline to "sdpa", "xformers" or "auto" (see `editkit.attention`)."""
        from .attention import set_attention_backend

        return set_attention_backend(self, name, strict=strict)
