"""Captioners: image in, (description, flaw) out -- PromptFix's auxiliary prompt.

PromptFix's auxiliary prompt is a VLM's answer to two questions, "describe the
image" and "what is wrong with it", with the flaw first ("The image is hazy ...
The image shows ..."). A `Captioner` returns both parts as a `Caption`;
`Caption.auxiliary_prompt` joins them in that order. `PromptFixPipeline` asks
its captioner when a call gives no auxiliary prompt.

- `TransformersCaptioner`: any transformers image-text-to-text model (a hub id
  or a local folder, or model and processor objects), asked the two questions.
- `ShapesCaptioner`: the shapes world's own describer: reads the objects and
  background with `editkit.data.reader` and names the flaw with simple image
  statistics (or takes the task's flaw sentence from the generator when told the task).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .images import ImageInput, load_image

DESCRIBE_QUESTION = "Describe this image and its style in a very detailed manner."
FLAW_QUESTION = "Introduce the drawback of the image."


@dataclass(frozen=True)
class Caption:
    description: str
    flaw: str = ""

    @property
    def auxiliary_prompt(self) -> str:
        """The flaw first, then the description (PromptFix's released examples)."""
        return " ".join(p.strip() for p in (self.flaw, self.description) if p and p.strip())


class Captioner:
    """Image -> `Caption`. Subclasses implement `caption`."""

    def caption(self, image: PIL.Image.Image) -> Caption:
        raise NotImplementedError

    def __call__(self, image: ImageInput) -> Caption:
        return self.caption(load_image(image, "image"))


# -- a transformers vision-language model ------------------------------------------------------


class TransformersCaptioner(Captioner):
    """Ask a transformers VLM the two PromptFix questions.

    Args:
        model: a hub id or local folder (loaded with `AutoModelForImageTextToText`),
            or a loaded model with `generate`.
        processor: a processor object or folder; default: `AutoProcessor` from `model`'s path.
        describe_question, flaw_question: the two questions (PromptFix's by default).
        max_new_tokens: answer length bound per question (greedy decoding).
        chat_template: a Jinja template when the processor has none.
    """

    def __init__(
        self,
        model: str | Path | Any,
        processor: str | Path | Any | None = None,
        *,
        describe_question: str = DESCRIBE_QUESTION,
        flaw_question: str = FLAW_QUESTION,
        max_new_tokens: int = 64,
        chat_template: str | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
    ):
        from transformers import AutoProcessor

        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForImageTextToText

            kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
            model_path = model
            model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
            processor = processor if processor is not None else model_path
        elif not hasattr(model, "generate"):
            raise TypeError(f"`model` must be a model id/folder or a model with `generate`, got {type(model).__name__}.")
        if processor is None:
            raise ValueError("`processor` is required when `model` is an object.")
        if isinstance(processor, (str, Path)):
            processor = AutoProcessor.from_pretrained(processor)
        self.model = model.eval() if device is None else model.to(device).eval()
        self.processor = processor
        self.questions = (describe_question, flaw_question)
        self.max_new_tokens = int(max_new_tokens)
        self.chat_template = chat_template

    def _prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        template = self.chat_template or getattr(self.processor, "chat_template", None)
        if template is None:
            raise ValueError("the processor has no chat template; pass `chat_template=` (a Jinja string).")
        return self.processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def ask(self, image: PIL.Image.Image, question: str) -> str:
        inputs = self.processor(text=[self._prompt(question)], images=[image], return_tensors="pt")
        inputs = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in inputs.items()}  # every output, M-RoPE ids included
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def caption(self, image: PIL.Image.Image) -> Caption:
        describe, flaw = self.questions
        return Caption(description=self.ask(image, describe), flaw=self.ask(image, flaw))


# -- the shapes world's own describer -------------------------------------------------------------


def _flaw_from_statistics(rgb: np.ndarray) -> str | None:
    """Name the degradation of a shapes image from simple statistics; None when unsure.

    Recognised: a black rectangular hole (inpaint), grayscale (colorize), very dark
    (lowlight), white specks (desnow), grain (denoise)."""
    import cv2

    from .data.families import FLAWS

    x = rgb.astype(np.float32)
    n = min(rgb.shape[:2])
    black = (x.max(axis=2) <= 2).astype(np.uint8)
    count, comp, stats, _ = cv2.connectedComponentsWithStats(black, connectivity=4)
    for k in range(1, count):
        _, _, w, h, area = stats[k]
        if 0.2 * n <= w <= 0.5 * n and 0.2 * n <= h <= 0.5 * n and area == w * h:
            return FLAWS["inpaint"]
    if float(np.abs(x - x.mean(axis=2, keepdims=True)).max()) <= 2.0:
        return FLAWS["colorize"]
    luma = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if float(luma.max()) < 130 and float(luma.mean()) < 70:
        return FLAWS["lowlight"]
    med = cv2.medianBlur(rgb.astype(np.uint8), 3).astype(np.float32)
    specks = ((x - med).min(axis=2) > 60) & (x.min(axis=2) > 200)
    if specks.mean() > 0.01:  # many snow images are missed (white backgrounds); few clean ones pass
        return FLAWS["desnow"]
    if float(np.abs(x - med).mean()) > 6.0:
        return FLAWS["denoise"]
    return None


def describe_shapes(rgb: np.ndarray) -> str:
    """'The image shows a small red circle at the top left ... on a plain white background.'"""
    from .data.reader import read_background, read_scene

    dets = read_scene(rgb)
    parts = [f"a {d.size_class} {d.color} {d.shape} at the {d.place}" for d in dets]
    bg = read_background(rgb, dets)
    where = f"a plain {bg[0]} background" if len(bg) == 1 else f"a background of {' and '.join(bg)}" if bg else "a background"
    if not parts:
        return f"The image shows an empty canvas with {where}."
    objs = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"The image shows {objs} on {where}."


class ShapesCaptioner(Captioner):
    """Describe a shapes-benchmark image: objects and background read from the pixels, and its flaw.

    `task` (a restore task name) fixes the flaw sentence to the generator's own;
    otherwise it is inferred from image statistics (`_flaw_from_statistics`;
    haze, blur, watermark and low resolution are not recognised and give no flaw).
    """

    def __init__(self, task: str | None = None):
        from .data.families import FLAWS

        if task is not None and task not in FLAWS:
            raise ValueError(f"`task` must be one of {sorted(FLAWS)} or None, got {task!r}.")
        self.task = task

    def caption(self, image: PIL.Image.Image) -> Caption:
        from .data.families import FLAWS

        rgb = np.asarray(image.convert("RGB"))
        flaw = FLAWS[self.task] if self.task else (_flaw_from_statistics(rgb) or "")
        return Caption(description=describe_shapes(rgb), flaw=flaw)
