"""Dream Engine's encoder side: interleaved prompts through Qwen2-VL (or Qwen2.5-VL).

A prompt is raw text with a task prefix and the images inline as the vision
placeholder triple `<|vision_start|><|image_pad|><|vision_end|>`; no chat
template and no system prompt (as Dream Engine trains and samples). The
processor expands each `<|image_pad|>` to one token per merged 28 x 28 patch;
the LMM runs over the whole sequence and its last hidden state (after the
final norm) is what the adapters read, every position included.

Task formats (cond -> null; the null drops the text and keeps the images,
except where Dream Engine's own null differs, which `official_null` selects):

    generate     "Generate Image: " + prompt              -> "Generate Image: "
    copy         "Copy Image: <V>"                        -> "Copy Image: "         (no image)
    edit         "Edit image <V> following:" + instruction -> "Edit image <V> following: "
    combine      "Combine the objects: a<V>, b<V> and generate an image following: " + caption
                                                          -> the same without the caption
    interleaved  "Generate Image: " + text with <V> inline -> "Generate Image: " + the <V>s in order
                 (Dream Engine's OBJ2I_V2 format; its own null keeps the text and drops the images)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END

TASK_PREFIXES = {
    "generate": "Generate Image: ",
    "copy": "Copy Image: ",
    "edit": "Edit image ",
    "combine": "Combine the objects: ",
    "interleaved": "Generate Image: ",
}
EDIT_MIDDLE = " following:"
COMBINE_MIDDLE = " and generate an image following: "

_MENTION = re.compile(r"\b[Ii]mage\s+(\d+)\b")


@dataclass(frozen=True)
class DreamPrompt:
    """One LMM input: text with one placeholder per image, and the images in order."""

    text: str
    images: tuple[PIL.Image.Image, ...] = ()

    def __post_init__(self) -> None:
        n = self.text.count(IMAGE_PLACEHOLDER)
        if n != len(self.images):
            raise ValueError(f"prompt has {n} image placeholder(s) but {len(self.images)} image(s): {self.text!r}")
        if self.text.count(IMAGE_PAD) != n:
            raise ValueError(f"prompt has a bare {IMAGE_PAD}; write images only as the full vision triple: {self.text!r}")


def render_interleaved(parts: Sequence[str | PIL.Image.Image]) -> tuple[str, list[PIL.Image.Image]]:
    """Text parts verbatim, each image as the vision placeholder triple at its place."""
    text, images = [], []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, PIL.Image.Image):
            text.append(IMAGE_PLACEHOLDER)
            images.append(part.convert("RGB"))
        else:
            raise TypeError(f"interleaved prompt part {i} must be a string or a PIL image, got {type(part).__name__}.")
    return "".join(text), images


def interleave_references(instruction: str, images: Sequence[PIL.Image.Image]) -> list[str | PIL.Image.Image]:
    """Place image k right after the first mention of "image k" in the text.

    "Put the object of image 1 on the background of image 2." with two images
    becomes ["Put the object of image 1", <img1>, " on the background of image 2", <img2>, "."].
    Images the text never mentions follow the text, in order.
    """
    if not isinstance(instruction, str):
        raise TypeError(f"`instruction` must be a string, got {type(instruction).__name__}.")
    placed: dict[int, int] = {}  # image index -> character position after its first mention
    for m in _MENTION.finditer(instruction):
        k = int(m.group(1))
        if not 1 <= k <= len(images):
            raise ValueError(f"the instruction mentions 'image {k}' but {len(images)} image(s) were given.")
        placed.setdefault(k - 1, m.end())
    parts: list[str | PIL.Image.Image] = []
    cursor = 0
    for idx, pos in sorted(placed.items(), key=lambda kv: kv[1]):
        if pos > cursor:
            parts.append(instruction[cursor:pos])
        parts.append(images[idx])
        cursor = pos
    if cursor < len(instruction):
        parts.append(instruction[cursor:])
    parts += [im for i, im in enumerate(images) if i not in placed]
    return parts


def task_prompts(
    task: str,
    *,
    text: str | None = None,
    image: PIL.Image.Image | None = None,
    parts: Sequence[str | PIL.Image.Image] | None = None,
    objects: Sequence[tuple[str, PIL.Image.Image]] = (),
    official_null: bool = False,
) -> tuple[DreamPrompt, DreamPrompt]:
    """The conditional prompt and its CFG null for one sample of `task` (see the module docstring)."""
    if task not in TASK_PREFIXES:
        raise ValueError(f"`task` must be one of {sorted(TASK_PREFIXES)}, got {task!r}.")
    prefix = TASK_PREFIXES[task]
    if task == "generate":
        if not isinstance(text, str):
            raise ValueError("task 'generate' needs `text` (the prompt).")
        return DreamPrompt(prefix + text), DreamPrompt(prefix)
    if task in ("copy", "edit") and not isinstance(image, PIL.Image.Image):
        raise ValueError(f"task {task!r} needs `image` (a PIL image).")
    if task == "copy":
        return DreamPrompt(prefix + IMAGE_PLACEHOLDER, (image,)), DreamPrompt(prefix)
    if task == "edit":
        if not isinstance(text, str):
            raise ValueError("task 'edit' needs `text` (the instruction).")
        head = prefix + IMAGE_PLACEHOLDER + EDIT_MIDDLE
        # toolkit null: the training form with a trailing space; Dream Engine's inference null has none
        return DreamPrompt(head + text, (image,)), DreamPrompt(head if official_null else head + " ", (image,))
    if task == "combine":
        if not objects or not isinstance(text, str):
            raise ValueError("task 'combine' needs `objects` [(name, image), ...] and `text` (the caption).")
        entries = ", ".join(f"{name}{IMAGE_PLACEHOLDER}" for name, _ in objects)
        imgs = tuple(im for _, im in objects)
        head = prefix + entries + COMBINE_MIDDLE
        return DreamPrompt(head + text, imgs), DreamPrompt(head, imgs)
    # interleaved
    if not parts:
        raise ValueError("task 'interleaved' needs `parts` (a list of text and images).")
    body, imgs = render_interleaved(parts)
    if official_null:  # OBJ2I_V2: both stripped, the null is the caption text alone, images dropped
        text_only = "".join(p for p in parts if isinstance(p, str))
        return DreamPrompt(prefix + body.strip(), tuple(imgs)), DreamPrompt(prefix + text_only.strip())
    return DreamPrompt(prefix + body, tuple(imgs)), DreamPrompt(prefix + IMAGE_PLACEHOLDER * len(imgs), tuple(imgs))


class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without a video processor.

    The stock processor insists on a video processor, which on transformers
    5.x needs torchvision (4.x needs one as well). Dream Engine never feeds
    video, so this one declares only an image processor and a tokenizer and
    otherwise behaves the same (image-token expansion, `mm_token_type_ids`).
    """

    attributes = ["image_processor", "tokenizer"]  # transformers 4.x reads this list
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = ("Qwen2Tokenizer", "Qwen2TokenizerFast")

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is None or image_processor is None:
            raise ValueError("Qwen2VLImageProcessorOnly needs an `image_processor` and a `tokenizer`.")
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_PAD
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @property
    def patch_signature(self) -> str:
        """What an image's stored patches depend on: the image processor's settings."""
        if getattr(self, "_patch_signature", None) is None:
            self._patch_signature = json.dumps(self.image_processor.to_dict(), sort_keys=True, default=str)
        return self._patch_signature

    def _process_images(self, images, **kwargs):
        """Resize and patch each distinct image object once, and none that carries its patches already
        (`attach_patches`, run in the DataLoader workers). A batch's guidance nulls keep their prompts' images, so
        every image appears twice, and this work is most of a training step's prompt processing.
        (transformers 5.x routes images through this hook; 4.x never calls it.)"""
        flat = list(images) if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(im, PIL.Image.Image) for im in flat):
            return super()._process_images(images, **kwargs)
        unique = list({id(im): im for im in flat}.values())
        stored = {id(im): _stored_patches(im, self.patch_signature) for im in unique}
        missing = [im for im in unique if stored[id(im)] is None]
        if len(unique) == len(flat) == len(missing):
            return super()._process_images(images, **kwargs)
        if missing:
            processed, _ = super()._process_images(missing, **kwargs)
            stored.update(zip(map(id, missing), _split_patches(processed)))
        rows = [stored[id(im)] for im in flat]
        processed = {"pixel_values": torch.cat([px for px, _ in rows]), "image_grid_thw": torch.stack([g for _, g in rows])}
        return processed, [self.replace_image_token(processed, image_idx=i) for i in range(len(flat))]


PATCHES_KEY = "editkit_qwen2vl_patches"  # PIL `info` entry: (key, pixel rows, grid row)


def _split_patches(processed) -> list[tuple[torch.Tensor, torch.Tensor]]:
    grid = torch.as_tensor(processed["image_grid_thw"])
    return list(zip(torch.as_tensor(processed["pixel_values"]).split(grid.prod(-1).tolist()), grid))


def _patch_key(image: PIL.Image.Image, signature: str) -> tuple:
    # PIL copies `info` into derived images (convert, resize, ...): the pixels are part of the key
    return (signature, image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())


def _stored_patches(image: PIL.Image.Image, signature: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    entry = image.info.get(PATCHES_KEY)
    return entry[1:] if entry is not None and entry[0] == _patch_key(image, signature) else None


def attach_patches(processor: Qwen2VLImageProcessorOnly, images: Sequence[PIL.Image.Image]) -> None:
    """Resize and patch `images` now and keep the result on each image (`image.info`, which travels with it
    out of a DataLoader worker), so the training process only gathers the rows. Images that already carry
    patches for this processor are skipped."""
    sig = processor.patch_signature
    todo = [im for im in {id(im): im for im in images}.values() if _stored_patches(im, sig) is None]
    if todo:
        processed = processor.image_processor(todo, return_tensors="pt")
        for im, (px, grid) in zip(todo, _split_patches(processed)):
            im.info[PATCHES_KEY] = (_patch_key(im, sig), px, grid)


def lmm_hidden_size(lmm) -> int:
    """The LLM width (transformers 5.x keeps it only in `text_config`)."""
    cfg = lmm.config
    text = getattr(cfg, "text_config", None)
    return int(text.hidden_size if text is not None else cfg.hidden_size)


def _base_model(lmm):
    # Qwen2VLForConditionalGeneration wraps the Qwen2VLModel in `.model`; its lm_head is unused here
    return lmm.model if hasattr(lmm, "lm_head") else lmm


def official_position_ids(base, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2-VL's multimodal RoPE positions (3, B, N) with padding at position 1, as the official code ran them.

    Dream Engine was trained on transformers 4.x, whose `get_rope_index` leaves padding at 1 and gives the
    text-only path positions too; 5.x puts padding at 0 and gives text-only prompts none (the LLM then counts
    the padding on). The official forward feeds every position, padding included, to the DiT and its mean pool,
    so these positions change the output: they are computed here the same way on every transformers version.
    """
    rope_index = base.get_rope_index
    takes = inspect.signature(rope_index).parameters
    kwargs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "attention_mask") if k in inputs and k in takes}
    if "mm_token_type_ids" in takes:  # transformers 5.x: image tokens are type 1
        kwargs["mm_token_type_ids"] = inputs.get("mm_token_type_ids", (inputs["input_ids"] == base.config.image_token_id).int())
    positions, _ = rope_index(inputs["input_ids"], **kwargs)
    if "attention_mask" in inputs:
        positions = positions.masked_fill(inputs["attention_mask"][None] == 0, 1)
    return positions


def tokenize_prompts(processor, prompts: Sequence[DreamPrompt], max_sequence_length: int | None = None,
                     min_lengths: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Processor outputs for a batch, right-padded to the longest prompt (or to `max_sequence_length`).

    Vision tokens are never truncated: a prompt longer than `max_sequence_length` is an error.
    `min_lengths` (one per prompt; Dream Engine's `cfg_predict` padding, `padding="max_length"`): prompt i is
    padded to at least `min_lengths[i]` tokens, and a text-only prompt longer than that is truncated to it (the
    official text calls pass `truncation=True`; those with images do not).
    """
    texts = [p.text for p in prompts]
    images = [im for p in prompts for im in p.images]
    processor.tokenizer.padding_side = "right"
    inputs = dict(processor(text=texts, images=images or None, return_tensors="pt", padding="longest"))
    if min_lengths is not None:
        if max_sequence_length is not None:
            raise ValueError("give `max_sequence_length` (one fixed length) or `min_lengths` (per prompt), not both.")
        inputs = _truncate_text_rows(inputs, prompts, min_lengths, processor.tokenizer.pad_token_id)
        max_sequence_length = max([*min_lengths, int(inputs["attention_mask"].sum(dim=1).max())])
    if max_sequence_length is None:
        return inputs
    length = inputs["input_ids"].shape[1]
    if length > max_sequence_length:
        raise ValueError(
            f"a prompt needs {length} tokens, more than `max_sequence_length`={max_sequence_length}; "
            "raise it (image tokens are never truncated) or leave it None to pad to the longest prompt."
        )
    extra = int(max_sequence_length) - length  # right-pad the token-aligned outputs to the fixed length
    pad = {"input_ids": processor.tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
    for key, value in pad.items():
        if key in inputs and extra:
            inputs[key] = torch.nn.functional.pad(inputs[key], (0, extra), value=value)
    return dict(inputs)


def _truncate_text_rows(inputs: dict[str, torch.Tensor], prompts: Sequence[DreamPrompt], min_lengths: Sequence[int],
                        pad_id: int) -> dict[str, torch.Tensor]:
    """Cut each text-only row to its `min_lengths` entry (the tokenizer's right truncation: Qwen2's adds no
    special tokens), then drop the columns no row uses."""
    if len(min_lengths) != len(prompts):
        raise ValueError(f"`min_lengths` has {len(min_lengths)} entries for {len(prompts)} prompts.")
    inputs = {k: v.clone() for k, v in inputs.items()}
    for i, (prompt, limit) in enumerate(zip(prompts, min_lengths)):
        if not prompt.images and limit and int(inputs["attention_mask"][i].sum()) > limit:
            inputs["input_ids"][i, limit:] = pad_id
            inputs["attention_mask"][i, limit:] = 0
            if "mm_token_type_ids" in inputs:
                inputs["mm_token_type_ids"][i, limit:] = 0
    used = int(inputs["attention_mask"].sum(dim=1).max())
    return {k: v[:, :used] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()}


def encode_prompts(
    lmm,
    processor,
    prompts: Sequence[DreamPrompt],
    *,
    vit_ratio: float | torch.Tensor | None = None,
    max_sequence_length: int | None = None,
    min_lengths: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    hidden_layer: int = -1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LMM states (B, N, D) for `prompts`, and the processor outputs that produced them.

    Every processor output is forwarded (transformers 5.x needs
    `mm_token_type_ids` for Qwen2-VL's multimodal RoPE; Qwen2.5-VL silently
    falls back to 1-D positions without it). `hidden_layer=-1` is the
    post-final-norm state. `vit_ratio` r (a float, or one value per prompt)
    blends the merged ViT features into the image-token positions,
    h = (1 - r) h_LLM + r h_ViT, out of place; None means no blend.
    """
    if not prompts:
        raise ValueError("`prompts` is empty.")
    base = _base_model(lmm)
    device = device if device is not None else base.device
    inputs = tokenize_prompts(processor, prompts, max_sequence_length, min_lengths)
    dtype = base.dtype
    inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in inputs.items()}
    positions = official_position_ids(base, inputs)
    out = base(**inputs, position_ids=positions, output_hidden_states=True, return_dict=True)
    states = out.hidden_states[hidden_layer]
    if vit_ratio is None:
        return states, inputs
    image_mask = inputs["input_ids"] == base.config.image_token_id
    n_img = int(image_mask.sum())
    if n_img == 0:
        return states, inputs
    vit = torch.cat(list(out.image_outputs.pooler_output), dim=0).to(states.dtype)
    if vit.shape[0] != n_img:
        raise RuntimeError(f"{vit.shape[0]} merged ViT rows for {n_img} image tokens")
    r = torch.as_tensor(vit_ratio, dtype=states.dtype, device=states.device)
    if r.dim() == 0:
        r = r.expand(states.shape[0])
    if r.shape != (states.shape[0],):
        raise ValueError(f"`vit_ratio` must be a float or have one value per prompt ({states.shape[0]}), got shape {tuple(r.shape)}.")
    if bool(((r < 0) | (r > 1)).any()):
        raise ValueError("`vit_ratio` must lie in [0, 1].")
    vit_full = torch.zeros_like(states).masked_scatter(image_mask[..., None], vit)
    r = r.view(-1, 1, 1)
    blended = (1 - r) * states + r * vit_full
    return torch.where(image_mask[..., None], blended, states), inputs
