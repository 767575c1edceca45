"""Argument checks shared by every pipeline, the CLI and the app.

Images go through `editkit.images` (`load_image`, `load_mask`, `plan_size`);
requests through `EditRequest.validated`; prompt/image batches through
`pipeline_utils.broadcast_batch`. Those call the checks below for text,
numbers, user-given tensors and interleaved prompts, so every entry point
rejects the same bad input with the same message, naming the argument and
what was expected, before any model runs.

Documented handling (not errors):
- any PIL mode (1, L, LA, P, RGBA, I;16, CMYK, ...) becomes 8-bit RGB;
  transparency is composited on white; EXIF orientation is applied.
- any size from 1x1 up to `images.MAX_PIXELS` is accepted; the working size is
  rounded to the backbone's multiple and the output is resized back to the
  input size (or the requested `height`/`width`).
- an instruction longer than the text encoder's context is truncated by its
  tokenizer; one longer than `MAX_INSTRUCTION_CHARS` is refused.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import torch

# Far beyond any text encoder's context (CLIP: 77 tokens, T5: 512); longer input is a
# mistake (a pasted file) and would only cost tokenizer time.
MAX_INSTRUCTION_CHARS = 4096

# "<image1>", "<Image 2>": the n-th image (from 1) of an interleaved prompt's references.
IMAGE_TAG = re.compile(r"<\s*image\s*(\d+)\s*>", re.IGNORECASE)


def _q(name: str) -> str:
    """'prompt[0]' -> '`prompt`[0]' (the argument in backticks, then the index)."""
    base, _, rest = name.partition("[")
    return f"`{base}`" + (f"[{rest}" if rest else "")


def check_text(value: Any, name: str, *, max_chars: int = MAX_INSTRUCTION_CHARS, allow_empty: bool = False) -> str:
    """A user text: a `str`, not blank (unless `allow_empty`), at most `max_chars` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{_q(name)} must be a string, got {type(value).__name__}.")
    if "\x00" in value:
        raise ValueError(f"{_q(name)} contains a NUL character; pass plain text.")
    if not allow_empty and not value.strip():
        raise ValueError(f"{_q(name)} is empty; say what to do, e.g. 'make it snowy'.")
    if len(value) > max_chars:
        raise ValueError(f"{_q(name)} has {len(value)} characters; at most {max_chars} are accepted.")
    return value


def check_prompts(prompt: Any, name: str = "prompt") -> list[str]:
    """A string or a non-empty list of strings, each checked with `check_text`."""
    if isinstance(prompt, str):
        return [check_text(prompt, f"{name}[0]")]  # one prompt is the batch's first
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"{_q(name)} must be a string or a list of strings, got {type(prompt).__name__}.")
    if not prompt:
        raise ValueError(f"{_q(name)} is an empty list.")
    return [check_text(p, f"{name}[{i}]") for i, p in enumerate(prompt)]


def check_int(value: Any, name: str, lo: int = 1, hi: int | None = None) -> int:
    """An integer (bools refused) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_q(name)} must be an integer, got {type(value).__name__} {value!r}.")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{_q(name)} must be {'>= ' + str(lo) if hi is None else f'in [{lo}, {hi}]'}, got {value}.")
    return int(value)


def check_number(value: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number (bools refused) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_q(name)} must be a number, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{_q(name)} must be a finite number, got {v}.")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{_q(name)} must be in [{lo}, {hi}], got {v}.")
    return v


def check_sampling_args(num_inference_steps: Any, num_images_per_prompt: Any, **scales: Any) -> None:
    """The numbers every sampler takes: steps >= 1, images per prompt in [1, 64], finite scales (and eta)."""
    check_int(num_inference_steps, "num_inference_steps", 1, 10_000)
    check_int(num_images_per_prompt, "num_images_per_prompt", 1, 64)
    for key, v in scales.items():
        if v is not None:
            check_number(v, key)


def check_tensor(value: Any, name: str, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A user-given tensor (latents, embeddings): a floating tensor of `shape` with finite values."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{_q(name)} must be a torch.Tensor, got {type(value).__name__}.")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{_q(name)} has shape {tuple(value.shape)}, expected {tuple(shape)}.")
    if not value.is_floating_point():
        raise TypeError(f"{_q(name)} must be a floating-point tensor, got {value.dtype}.")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{_q(name)} contains {int((~torch.isfinite(value)).sum())} NaN/inf values.")
    return value


def image_tags(text: str) -> list[int]:
    """The image numbers (from 1) that `text` refers to with <imageN> tags, in order."""
    return [int(m.group(1)) for m in IMAGE_TAG.finditer(text)]


def check_image_tags(text: str, num_images: int, name: str = "instruction") -> None:
    """Every <imageN> tag in `text` must name one of `num_images` images."""
    for idx in image_tags(text):
        if not 1 <= idx <= num_images:
            raise ValueError(
                f"{_q(name)} refers to <image{idx}>, but {num_images} reference image(s) were given; "
                f"tags count the `references` from <image1>."
            )


def parse_interleaved(text: str, images: Sequence[Any], name: str = "instruction") -> list[Any]:
    """'Put <image1> on <image2>' -> ['Put ', images[0], ' on ', images[1]].

    Raises a `ValueError` naming `name` when a tag has no image.
    """
    check_text(text, name)
    check_image_tags(text, len(images), name)
    parts: list[Any] = []
    pos = 0
    for m in IMAGE_TAG.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(images[int(m.group(1)) - 1])
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts
