"""Task codecs: how InstructCV asks for a vision task and reads the answer image.

Each task pairs a prompt builder with an encoder (ground truth -> target
image, for training) and a decoder (predicted image -> result). Decoders
accept a PIL image, a uint8 (H, W, 3) array or a float (H, W, 3) array in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .classification import decode_class, decode_presence, encode_class
from .colors import COLORS, nearest_color
from .depth import decode_depth, encode_depth
from .detection import box_iou, decode_boxes, encode_boxes
from .segmentation import decode_mask, encode_mask
from .templates import (
    FIXED_PROMPTS,
    HELDOUT_PROMPTS,
    NEEDS_LABEL,
    RP_PROMPTS,
    TASK_ALIASES,
    build_prompt,
    resolve_task,
)


@dataclass(frozen=True)
class TaskCodec:
    """Everything needed to run one task: prompt -> pipeline -> decoded result."""

    name: str
    needs_label: bool
    prompt: Callable[..., str]  # build_prompt with the task bound: prompt(label, style=..., ...)
    decode: Callable[..., Any]  # predicted image -> mask / boxes / depth / colour name
    encode: Callable[..., np.ndarray]  # ground truth -> target image


def _codec(name: str, encode: Callable[..., np.ndarray], decode: Callable[..., Any]) -> TaskCodec:
    return TaskCodec(name, NEEDS_LABEL[name], partial(build_prompt, name), decode, encode)


TASKS: dict[str, TaskCodec] = {
    "segment": _codec("segment", encode_mask, decode_mask),
    "detect": _codec("detect", encode_boxes, decode_boxes),
    "depth": _codec("depth", encode_depth, decode_depth),
    "classify": _codec("classify", encode_class, decode_class),
}


def get_task(name: str) -> TaskCodec:
    """Codec for a task name or alias ("segmentation", "detection", "classification")."""
    return TASKS[resolve_task(name)]


__all__ = [
    "COLORS",
    "FIXED_PROMPTS",
    "HELDOUT_PROMPTS",
    "RP_PROMPTS",
    "TASKS",
    "TASK_ALIASES",
    "TaskCodec",
    "box_iou",
    "build_prompt",
    "decode_boxes",
    "decode_class",
    "decode_depth",
    "decode_mask",
    "decode_presence",
    "encode_boxes",
    "encode_class",
    "encode_depth",
    "encode_mask",
    "get_task",
    "nearest_color",
]
