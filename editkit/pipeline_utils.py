"""Small pieces every editkit pipeline uses: batching, outputs, loading checks."""

from __future__ import annotations

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
from .images import ImageInput, load_image, tensor_to_pil

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class EditPipelineOutput(BaseOutput):
    """`images`: list of PIL images, a (B, H, W, 3) float array in [0, 1],
    a (B, 3, H, W) tensor in [0, 1], or latents, by `output_type`."""

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]


def broadcast_batch(prompt: str | list[str], image: ImageInput | list[ImageInput]) -> tuple[list[str], list[PIL.Image.Image]]:
    """Pair prompts with images: equal lengths, or one side of length 1 repeated."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if prompts is None or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
    if not prompts:
        raise ValueError("`prompt` is an empty list.")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise ValueError(f"`prompt`[{i}] is empty; give an instruction such as 'segment the dog'.")
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


def step_kwargs(scheduler, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict[str, Any]:
    """Pass `eta` and `generator` only to schedulers whose `step` takes them."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def check_model_dir(path: str | os.PathLike, required: tuple[str, ...]) -> None:
    """Fail early, with the missing parts named, when a local pipeline folder is incomplete."""
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


class EditPipelineMixin:
    """Adds `edit(EditRequest)`: the method-agnostic entry used by the CLI and the app.

    Each pipeline says which request fields it understands in
    `request_fields` and maps them to its `__call__` in `request_kwargs`.
    """

    request_fields: tuple[str, ...] = ("instruction", "image")

    def request_kwargs(self, request: EditRequest) -> dict[str, Any]:
        raise NotImplementedError

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
