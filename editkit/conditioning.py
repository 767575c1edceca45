"""The shared conditioning interface.

Two types carry a user's wish to a backbone:

- `EditRequest`: what the user asks, method-agnostic (instruction or an
  interleaved text/image prompt, source image, references, mask, auxiliary
  prompt, task). The CLI and the app build these; every pipeline's `edit()`
  accepts one.
- `Conditioning`: the tensors a backbone consumes, each with its *null*
  (what the condition becomes when guidance or training dropout drops it).
  Conditions are dropped by *group*: dropping "text" nulls every tensor of
  that group (states, mask, pooled vector) together.

Guidance branches (`editkit.guidance`) and training dropout both call
`Conditioning.select`, so sampling and training agree by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Union

import PIL.Image
import torch

from .images import ImageInput, load_image, load_mask
from .validation import MAX_INSTRUCTION_CHARS, check_image_tags, check_text

InterleavedPrompt = list[Union[str, ImageInput]]


@dataclass
class EditRequest:
    """What the user asks for, independent of the method that serves it.

    `instruction` is plain text, or an interleaved list of text and images
    (Dream Engine); `image` is the image to edit; `references` are extra
    images (UNIC-Adapter's condition image, Dream Engine's inline images);
    `mask` limits where an edit may happen; `auxiliary_prompt` describes the
    image and its flaws (PromptFix); `task` names a task preset
    ("segment", "dehaze", "canny", ...).
    """

    instruction: str | InterleavedPrompt
    image: ImageInput | None = None
    references: list[ImageInput] = field(default_factory=list)
    mask: ImageInput | None = None
    auxiliary_prompt: str | None = None
    task: str | None = None

    def validated(self) -> "EditRequest":
        """Return a copy with images loaded as RGB PIL and every field checked.

        Checks (each error names the field): the instruction is non-empty text
        (at most `validation.MAX_INSTRUCTION_CHARS`) or an interleaved list of
        text and images with some text; <imageN> tags in a text instruction name
        one of `references`; images load (`images.load_image`); the mask has the
        image's size; `auxiliary_prompt` and `task` are strings.
        """
        if self.references is not None and not isinstance(self.references, (list, tuple)):
            raise TypeError(f"`references` must be a list of images, got {type(self.references).__name__}.")
        instruction = self.instruction
        if isinstance(instruction, str):
            check_text(instruction, "instruction")
            check_image_tags(instruction, len(self.references or []), "instruction")
        elif isinstance(instruction, (list, tuple)):
            if not instruction:
                raise ValueError("`instruction` is an empty interleaved prompt; give text and/or images.")
            parts: list = []
            for i, part in enumerate(instruction):
                if isinstance(part, str):
                    parts.append(check_text(part, f"instruction[{i}]", allow_empty=True))
                else:
                    parts.append(load_image(part, f"instruction[{i}]"))
            if not any(isinstance(p, str) and p.strip() for p in parts):
                raise ValueError("`instruction` has no text; an interleaved prompt needs at least one text part.")
            if sum(len(p) for p in parts if isinstance(p, str)) > MAX_INSTRUCTION_CHARS:
                raise ValueError(f"`instruction` has more than {MAX_INSTRUCTION_CHARS} characters of text.")
            instruction = parts
        else:
            raise TypeError(f"`instruction` must be a string or a list of strings and images, got {type(instruction).__name__}.")
        image = None if self.image is None else load_image(self.image, "image")
        references = [load_image(r, f"references[{i}]") for i, r in enumerate(self.references or [])]
        mask = None
        if self.mask is not None:
            if image is None:
                raise ValueError("`mask` was given without an `image` to apply it to.")
            mask = load_mask(self.mask, image.size, "mask")
        if self.auxiliary_prompt is not None:
            check_text(self.auxiliary_prompt, "auxiliary_prompt")
        if self.task is not None and not isinstance(self.task, str):
            raise TypeError(f"`task` must be a string naming a task preset, got {type(self.task).__name__}.")
        return replace(self, instruction=instruction, image=image, references=references, mask=mask)

    @property
    def interleaved_images(self) -> list[PIL.Image.Image]:
        if isinstance(self.instruction, str):
            return []
        return [p for p in self.instruction if not isinstance(p, str)]


@dataclass(frozen=True)
class Condition:
    """One tensor a backbone consumes, batch-first, and its null.

    `null` broadcasts to `value` along the batch axis (an empty-prompt
    embedding of batch 1, a zero latent, the initial noise latent, zero
    tokens); `group` names what a guidance branch drops.
    """

    value: torch.Tensor
    null: torch.Tensor
    group: str

    def __post_init__(self) -> None:
        if self.null.dim() != self.value.dim() or self.null.shape[1:] != self.value.shape[1:]:
            raise ValueError(
                f"null of group '{self.group}' has shape {tuple(self.null.shape)}, "
                f"not broadcastable to value shape {tuple(self.value.shape)}."
            )
        if self.null.shape[0] not in (1, self.value.shape[0]):
            raise ValueError(f"null of group '{self.group}' has batch {self.null.shape[0]}, expected 1 or {self.value.shape[0]}.")

    @classmethod
    def zeros_null(cls, value: torch.Tensor, group: str) -> "Condition":
        """A condition whose null is all zeros (IP2P's dropped image latent)."""
        return cls(value, torch.zeros_like(value[:1]), group)

    @property
    def batch_size(self) -> int:
        return self.value.shape[0]

    def null_value(self) -> torch.Tensor:
        return self.null.expand_as(self.value)


class Conditioning(Mapping[str, Condition]):
    """Named conditions of one batch; the keys are the backbone's argument names."""

    def __init__(self, conditions: Mapping[str, Condition]):
        self._conditions = dict(conditions)
        sizes = {c.batch_size for c in self._conditions.values()}
        if len(sizes) > 1:
            detail = {k: c.batch_size for k, c in self._conditions.items()}
            raise ValueError(f"conditions disagree on batch size: {detail}")

    def __getitem__(self, key: str) -> Condition:
        return self._conditions[key]

    def __iter__(self):
        return iter(self._conditions)

    def __len__(self) -> int:
        return len(self._conditions)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}[{c.group}]{tuple(c.value.shape)}" for k, c in self._conditions.items())
        return f"Conditioning({parts})"

    @property
    def groups(self) -> set[str]:
        return {c.group for c in self._conditions.values()}

    @property
    def batch_size(self) -> int:
        return next(iter(self._conditions.values())).batch_size

    def check_groups(self, groups: Iterable[str]) -> None:
        unknown = set(groups) - self.groups
        if unknown:
            raise ValueError(f"unknown condition group(s) {sorted(unknown)}; this conditioning has {sorted(self.groups)}.")

    def select(self, drop: Iterable[str] | Mapping[str, torch.Tensor] = ()) -> dict[str, torch.Tensor]:
        """The backbone's tensors with some groups replaced by their nulls.

        `drop` is either a set of groups (dropped for the whole batch: a
        guidance branch) or a mapping group -> bool tensor of shape (B,)
        (dropped per sample: training dropout).
        """
        if isinstance(drop, Mapping):
            self.check_groups(drop)
            out = {}
            for key, cond in self._conditions.items():
                mask = drop.get(cond.group)
                if mask is None:
                    out[key] = cond.value
                    continue
                shape = (-1,) + (1,) * (cond.value.dim() - 1)
                out[key] = torch.where(mask.to(cond.value.device).view(shape), cond.null_value(), cond.value)
            return out
        drop = set(drop)
        self.check_groups(drop)
        return {k: (c.null_value() if c.group in drop else c.value) for k, c in self._conditions.items()}

    def branch_batch(self, drops: Sequence[Iterable[str]]) -> dict[str, torch.Tensor]:
        """Concatenate `select(drop)` for each branch along the batch (branch-major)."""
        selected = [self.select(d) for d in drops]
        return {k: torch.cat([s[k] for s in selected]) for k in self._conditions}

    def repeat_interleave(self, repeats: int) -> "Conditioning":
        """Repeat every sample `repeats` times (num_images_per_prompt)."""
        if repeats == 1:
            return self
        return Conditioning(
            {
                k: Condition(
                    c.value.repeat_interleave(repeats, dim=0),
                    c.null if c.null.shape[0] == 1 else c.null.repeat_interleave(repeats, dim=0),
                    c.group,
                )
                for k, c in self._conditions.items()
            }
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Conditioning":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Conditioning({k: Condition(move(c.value), move(c.null), c.group) for k, c in self._conditions.items()})
