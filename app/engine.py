"""The app's inference engine, importable and testable without Gradio.

- `ModelCache`: pipelines load lazily, once per (method, checkpoint), and
  stay loaded; switching methods never reloads what is loaded.
- `Engine.run(...)`: one edit request from the UI or the API: checks every
  input (with messages meant for the user), builds an `EditRequest`, runs
  the method's pipeline with per-step progress, and decodes task results
  (mask overlay, boxes, depth colour map, class) where the preset has a codec.
- Image inputs given as paths are only read from the app's own folders
  (`AppConfig.allowed_roots`: the upload folder and the examples); anything
  else is refused before the file is touched.

Every problem a user can cause raises `UserError` (a ValueError) whose
message the UI shows as it is.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from editkit.conditioning import EditRequest
from editkit.images import load_image
from editkit.loading import default_device, torch_dtype, trained_side
from editkit.numerics import NonFiniteError
from editkit.speed import FAST_PRESETS, fast_pipeline
from editkit.validation import parse_interleaved as _parse_interleaved

from .methods import METHODS, MethodSpec, Preset, default_sources, get_method, is_local_path

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"

MAX_SEED = 2**31 - 1
MAX_STEPS = 500
MAX_SIDE_RANGE = (32, 2048)
GUIDANCE_RANGE = (0.0, 30.0)


class UserError(ValueError):
    """A problem with what the user sent; the message is shown to them as it is."""


class RequestTimeout(UserError):
    """A request waited or ran longer than `AppConfig.request_timeout_s`; it was stopped, the server goes on."""


@dataclass
class AppConfig:
    """What the app serves and the limits it enforces."""

    sources: dict[str, str | None] = field(default_factory=default_sources)
    device: str | None = None
    dtype: str = "fp32"
    max_pixels: int = 16 * 1024 * 1024  # decoded pixels per input image
    max_upload_bytes: int = 20 * 1024 * 1024  # per input file
    allowed_roots: list[Path] = field(default_factory=lambda: [EXAMPLES_DIR])
    steps: int | None = None  # overrides every method's default steps (e.g. a fast CPU demo)
    max_references: int = 4
    # a request (waiting for the model + sampling) is stopped after this long; None: no limit
    request_timeout_s: float | None = 300.0
    history_size: int = 24
    # image -> description, fills PromptFix's auxiliary prompt when left empty
    captioner: Callable[[PIL.Image.Image], str] | None = None

    def default_steps(self, spec: MethodSpec) -> int:
        return self.steps or spec.steps


@dataclass(frozen=True)
class Availability:
    ok: bool
    message: str


def availability(spec: MethodSpec, source: str | None) -> Availability:
    """Whether a method can run here, and a sentence saying why (not)."""
    if spec.pipeline_class() is None:
        return Availability(False, f"{spec.name} is not available: its pipeline is not in this install yet (planned).")
    if not source:
        return Availability(
            False,
            f"{spec.name} is not available: no checkpoint is configured. "
            f"Start the app with `--model {spec.key}=PATH_OR_HUB_ID`.",
        )
    if is_local_path(source):
        path = Path(source).expanduser()
        if not (path / "model_index.json").is_file():
            return Availability(False, f"{spec.name} is not available: {path} is not a diffusers pipeline folder (no model_index.json).")
        return Availability(True, f"{spec.name}: local checkpoint {path.name}")
    return Availability(True, f"{spec.name}: hub checkpoint {source} (needs it in the local cache when offline)")


# ----------------------------------------------------------------------------- model cache


class ModelCache:
    """Loaded pipelines, keyed by (method, source); each loads at most once.

    Loading holds a per-key lock, so two requests for a model that is not
    loaded yet wait for one load. `run_lock(key)` serialises calls into one
    pipeline (schedulers keep per-call state).
    """

    def __init__(self, device: str | None = None, dtype: str = "fp32"):
        self.device = device
        self.dtype = dtype
        self._pipes: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._run_locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self.loads: Counter = Counter()  # key -> number of loads (tests check it stays 1)

    def _lock_for(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            self._run_locks.setdefault(key, threading.Lock())
            return self._locks.setdefault(key, threading.Lock())

    def run_lock(self, key: tuple[str, str]) -> threading.Lock:
        self._lock_for(key)
        return self._run_locks[key]

    def loaded(self) -> list[tuple[str, str]]:
        with self._guard:
            return list(self._pipes)

    def is_loaded(self, key: tuple[str, str]) -> bool:
        with self._guard:
            return key in self._pipes

    def get(self, spec: MethodSpec, source: str) -> Any:
        key = (spec.key, source)
        with self._guard:
            if key in self._pipes:
                return self._pipes[key]
        with self._lock_for(key):
            with self._guard:
                if key in self._pipes:
                    return self._pipes[key]
            pipe = self._load(spec, source)
            with self._guard:
                self._pipes[key] = pipe
                self.loads[key] += 1
            return pipe

    def _load(self, spec: MethodSpec, source: str) -> Any:
        cls = spec.pipeline_class()
        if cls is None:
            raise UserError(f"{spec.name} is not available: its pipeline is not in this install yet (planned).")
        try:
            pipe = cls.from_pretrained(source, dtype=torch_dtype(self.dtype))
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the {spec.name} checkpoint {source}: {err}") from None
        pipe = pipe.to(default_device(self.device))
        pipe.set_progress_bar_config(disable=True)
        return pipe


# ----------------------------------------------------------------------------- inputs


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_readable_path(value: str | os.PathLike, roots: Sequence[Path], name: str) -> Path:
    """Resolve `value` (symlinks and '..' included) and refuse it unless it lies in one of `roots`.

    The check runs before the file is touched, and the message does not say
    whether the file exists.
    """
    path = Path(os.path.realpath(os.fspath(value)))
    for root in roots:
        if _is_within(path, Path(os.path.realpath(root))):
            return path
    raise UserError(f"{name}: this file cannot be read; the app only reads images uploaded to it or its examples.")


def load_user_image(value: Any, name: str, config: AppConfig) -> PIL.Image.Image:
    """A user's image (upload path, PIL image or array) as RGB PIL, or a clear `UserError`."""
    if isinstance(value, (str, os.PathLike)):
        path = check_readable_path(value, config.allowed_roots, name)
        if not path.is_file():
            raise UserError(f"{name}: the uploaded file is gone; upload it again.")
        size = path.stat().st_size
        if size > config.max_upload_bytes:
            raise UserError(
                f"{name} is {size / 2**20:.1f} MB; the limit is {config.max_upload_bytes / 2**20:.0f} MB. Upload a smaller image."
            )
        value = str(path)
    try:
        img = load_image(value, name, max_pixels=config.max_pixels)
    except FileNotFoundError:
        raise UserError(f"{name}: the uploaded file is gone; upload it again.") from None
    except (ValueError, TypeError) as err:
        msg = str(err)
        if "not a readable image" in msg:
            raise UserError(f"{name} is not an image file Pillow can read (PNG, JPEG, WebP, ...).") from None
        if "more than the limit" in msg or "too large" in msg:
            dims = re.search(r"(\d+x\d+) =", msg)
            raise UserError(
                f"{name} is too large{' (' + dims.group(1) + ')' if dims else ''}: "
                f"at most {config.max_pixels / 1e6:.1f} megapixels are accepted. Downscale it first."
            ) from None
        raise UserError(msg) from None
    return img


def mask_from_editor(value: Any, size: tuple[int, int], config: AppConfig) -> PIL.Image.Image | None:
    """A mask from the image editor (or a plain mask image): white = may change; None when nothing is painted.

    Editor values are dicts with "background", "layers" and "composite"; the
    mask is the alpha of the first layer (the strokes), never the composite.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        layers = [lay for lay in (value.get("layers") or []) if lay is not None]
        if not layers:
            return None
        layer = layers[0]
        if isinstance(layer, (str, os.PathLike)):
            check_readable_path(layer, config.allowed_roots, "mask")
            with PIL.Image.open(layer) as opened:
                layer = opened.convert("RGBA")
        elif isinstance(layer, np.ndarray):
            layer = PIL.Image.fromarray(layer)
        if layer.mode in ("RGBA", "LA"):
            m = np.asarray(layer.getchannel("A")) > 0
        else:
            m = np.asarray(layer.convert("L")) >= 128
    else:
        img = value
        if isinstance(img, (str, os.PathLike)):
            img = load_user_image(img, "mask", config)
        elif isinstance(img, np.ndarray):
            img = PIL.Image.fromarray(img)
        if not isinstance(img, PIL.Image.Image):
            raise UserError(f"mask must be an image, got {type(value).__name__}.")
        m = np.asarray(img.getchannel("A")) > 0 if img.mode in ("RGBA", "LA") else np.asarray(img.convert("L")) >= 128
    if not m.any():
        return None
    mask = PIL.Image.fromarray(m.astype(np.uint8) * 255, "L")
    if mask.size != tuple(size):
        # the editor's canvas follows the image, but guard against a scaled canvas
        mask = mask.resize(size, PIL.Image.Resampling.NEAREST)
    return mask


def parse_interleaved(text: str, references: Sequence[PIL.Image.Image]) -> list[str | PIL.Image.Image]:
    """'Put <image1> on <image2>' -> ['Put ', ref1, ' on ', ref2] (tags count references from 1)."""
    try:
        return _parse_interleaved(text, references, "prompt")
    except (ValueError, TypeError) as err:
        raise UserError(str(err).replace("`prompt` refers", "the prompt refers")) from None


def _reference_items(refs: Any) -> list[Any]:
    """Gallery values are lists of (path, caption) tuples or dicts; accept plain images and paths too."""
    if refs is None:
        return []
    if not isinstance(refs, (list, tuple)):
        refs = [refs]
    out = []
    for r in refs:
        if isinstance(r, (tuple, list)) and r:
            r = r[0]
        if isinstance(r, Mapping):
            r = r.get("image") or r.get("path") or r.get("name")
            if isinstance(r, Mapping):
                r = r.get("path")
        if r is not None:
            out.append(r)
    return out


def _number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float | int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(v) or not lo <= v <= hi:
        raise UserError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}.")
    if integer:
        if v != int(v):
            raise UserError(f"{name} must be a whole number, got {value!r}.")
        return int(v)
    return v


# ----------------------------------------------------------------------------- results


@dataclass
class EditResult:
    source: PIL.Image.Image
    output: PIL.Image.Image
    seed: int
    method: str
    instruction: str
    task: str | None = None
    task_value: Any = None
    task_image: PIL.Image.Image | None = None  # mask overlay, boxes, depth colour map
    summary: str = ""
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def overlay_mask(image: PIL.Image.Image, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.55) -> PIL.Image.Image:
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask, dtype=bool)[..., None]
    tint = base * (1 - alpha) + np.asarray(color, np.float32) * alpha
    dimmed = base * 0.6
    return PIL.Image.fromarray(np.where(m, tint, dimmed).round().clip(0, 255).astype(np.uint8))


def draw_boxes(image: PIL.Image.Image, boxes: np.ndarray, color=(255, 40, 40)) -> PIL.Image.Image:
    out = image.convert("RGB").copy()
    draw = PIL.ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 64))
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
    return out


def depth_colormap(depth: np.ndarray) -> PIL.Image.Image:
    """Near = bright yellow, far = dark purple (inferno), normalised to the map's own range."""
    import cv2

    d = np.asarray(depth, dtype=np.float32)
    lo, hi = float(d.min()), float(d.max())
    norm = np.zeros_like(d) if hi - lo < 1e-6 else (d - lo) / (hi - lo)
    grey = ((1.0 - norm) * 255).round().astype(np.uint8)
    bgr = cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO)
    return PIL.Image.fromarray(bgr[..., ::-1].copy())


def decode_task(task: str, source: PIL.Image.Image, output: PIL.Image.Image, label: str | None) -> tuple[Any, PIL.Image.Image | None, str]:
    """(value, visual, one-line summary) for a task codec's reading of `output`."""
    from editkit import tasks

    codec = tasks.get_task(task)
    value = codec.decode(output)
    what = (label or "").strip() or "object"
    if codec.name == "segment":
        frac = float(np.mean(value))
        return value, overlay_mask(source, value), f"Mask of the {what}: {frac:.1%} of the image."
    if codec.name == "detect":
        boxes = np.asarray(value).reshape(-1, 4)
        listed = ", ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in boxes[:8])
        more = f" (+{len(boxes) - 8} more)" if len(boxes) > 8 else ""
        return boxes, draw_boxes(source, boxes), f"{len(boxes)} box(es) for the {what}" + (f": {listed}{more}" if len(boxes) else ".")
    if codec.name == "depth":
        d = np.asarray(value)
        return d, depth_colormap(d), f"Depth {float(d.min()):.2f} m (bright) to {float(d.max()):.2f} m (dark)."
    colour = str(value)
    verdict = {"red": f"the picture has a {what}", "green": f"no {what} in the picture"}.get(colour, "neither red nor green")
    return colour, None, f"The output shows {colour}: {verdict}."


# ----------------------------------------------------------------------------- the steps of one request


@dataclass(frozen=True)
class Settings:
    """The numbers of one run, checked: what the pipeline is called with."""

    steps: int
    guidance: float
    image_guidance: float | None  # None: the method has one scale
    max_side: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific call arguments (HGS, guidance interval)
    fast: bool = False  # the method's speed preset (editkit.speed): its solver is swapped in at call time


def read_settings(
    spec: MethodSpec,
    pre: Preset,
    config: AppConfig,
    default_scales: tuple[float, float | None],
    *,
    default_side: int | None = None,
    steps: Any = None,
    guidance: Any = None,
    image_guidance: Any = None,
    seed: Any = 0,
    randomize_seed: bool = False,
    hgs: bool = False,
    hgs_strength: Any = None,
    max_side: Any = None,
    fast: bool = False,
) -> tuple[Settings, list[str]]:
    """Step 1: the user's numbers, each range-checked (blank: the default); notes for ignored switches.

    A preset's scales replace the defaults, not a value the user changed. `default_side`: the working size
    of the method's model (`Engine.working_side`), used when the user gives no max side."""
    notes: list[str] = []
    steps = config.default_steps(spec) if steps in (None, "") else _number(steps, "Steps", 1, MAX_STEPS, integer=True)
    default_g, default_ig = default_scales
    guidance = default_g if guidance in (None, "") else _number(guidance, "Text guidance", *GUIDANCE_RANGE)
    if pre.scales and guidance == default_g:
        guidance = pre.scales[0]
    if spec.image_guidance is None:
        image_guidance = None
    else:
        image_guidance = default_ig if image_guidance in (None, "") else _number(image_guidance, "Image guidance", *GUIDANCE_RANGE)
        if pre.scales and image_guidance == default_ig:
            image_guidance = pre.scales[1]
    if max_side in (None, ""):
        max_side = default_side or spec.max_side
    else:
        max_side = _number(max_side, "Max side", *MAX_SIDE_RANGE, integer=True)
    if randomize_seed:
        seed = random.SystemRandom().randint(0, MAX_SEED)
    else:
        seed = 0 if seed in (None, "") else _number(seed, "Seed", 0, MAX_SEED, integer=True)
    extra: dict[str, Any] = {}
    if spec.hgs is not None:
        strength = spec.hgs_strength if hgs_strength in (None, "") else _number(hgs_strength, "HGS strength", 0, 100)
        extra = spec.hgs(bool(hgs), float(strength))
    elif hgs:
        notes.append(f"{spec.name} has no high-frequency guidance; HGS was not applied.")
    speed = FAST_PRESETS.get(spec.loading_method) if fast else None
    if fast and speed is None:
        notes.append(f"{spec.name} has no speed preset; the run used the normal settings.")
    if speed is not None:
        if steps == config.default_steps(spec):  # the preset's steps replace the default, not the user's choice
            steps = speed.steps
        if speed.guidance_interval is not None:
            extra["guidance_interval"] = speed.guidance_interval
    return Settings(steps, guidance, image_guidance, max_side, seed, extra, fast=speed is not None), notes


def label_from_text(spec: MethodSpec, pre: Preset, instruction: Any, label: str | None) -> str | None:
    """The object the model was told about: "Segment the dog." under the segment preset -> "dog"
    (an instruction in other words keeps `label`: presets also run held-out phrasings)."""
    match = spec.match_preset(instruction.strip()) if isinstance(instruction, str) and instruction.strip() else None
    if match is None or match[0] is not pre or not match[1]:
        return label
    return match[1]


def read_text(spec: MethodSpec, instruction: Any, interleaved: Any, pre: Preset | None = None, label: str | None = None) -> tuple[str, str]:
    """Step 2a: the instruction and the interleaved prompt, stripped; at least one must be given.

    Both empty and a templated preset chosen: the preset's sentence, as the page fills it (API callers)."""
    if not (instruction is None or isinstance(instruction, str)):
        raise UserError("The instruction must be text.")
    text = (instruction or "").strip()
    inter_text = (interleaved or "").strip() if spec.takes("interleaved") else ""
    if not text and not inter_text and pre is not None and pre.template:
        filled = pre.instruction(label)
        if spec.takes("interleaved") and "<image" in filled:
            inter_text = filled
        else:
            text = filled
    if not text and not inter_text:
        raise UserError("The instruction is empty: type what to do (e.g. 'segment the red circle') or pick a task preset.")
    if len(text) > 2000 or len(inter_text) > 2000:
        raise UserError("The instruction is too long (at most 2000 characters).")
    return text, inter_text


def read_images(
    spec: MethodSpec, config: AppConfig, image: Any, mask: Any, references: Any
) -> tuple[PIL.Image.Image | None, PIL.Image.Image | None, list[PIL.Image.Image], list[str]]:
    """Step 2b: (source, mask, references, notes); inputs the method does not take are dropped with a note."""
    notes: list[str] = []
    src = None
    if spec.takes("image"):
        if image is None:
            raise UserError(f"Upload a source image: {spec.name} edits an image.")
        src = load_user_image(image, "The source image", config)
    elif image is not None:
        notes.append(f"{spec.name} does not take a source image; it was not used.")
    refs: list[PIL.Image.Image] = []
    ref_items = _reference_items(references)
    if ref_items and not spec.takes("references"):
        notes.append(f"{spec.name} does not take reference images; they were not used.")
    elif ref_items:
        if len(ref_items) > config.max_references:
            raise UserError(f"At most {config.max_references} reference images are accepted, got {len(ref_items)}.")
        refs = [load_user_image(r, f"Reference image {i + 1}", config) for i, r in enumerate(ref_items)]
    mask_img = mask_from_editor(mask, src.size, config) if mask is not None and src is not None else None
    if mask_img is not None and not spec.takes("mask"):
        notes.append(f"{spec.name} does not take a mask; the painted mask was not used.")
        mask_img = None
    return src, mask_img, refs, notes


def build_request(
    spec: MethodSpec,
    pre: Preset,
    config: AppConfig,
    text: str,
    inter_text: str,
    images: tuple[PIL.Image.Image | None, PIL.Image.Image | None, list[PIL.Image.Image]],
    auxiliary_prompt: str | None,
) -> tuple[EditRequest, list[str]]:
    """Step 3: the validated `EditRequest` (the interleaved prompt parsed against the references)."""
    src, mask_img, refs = images
    notes: list[str] = []
    aux = None
    if spec.takes("auxiliary_prompt"):
        aux = (auxiliary_prompt or "").strip() or pre.auxiliary or None
        if aux is None and config.captioner is not None and src is not None:
            aux = config.captioner(src)
            notes.append("The auxiliary prompt was written by the captioner.")
    instr: str | list = text
    if inter_text:  # the tagged references go inline; the pipeline takes them one way, not both
        instr = parse_interleaved(inter_text, refs)
        unused = sum(1 for r in refs if not any(part is r for part in instr))
        if unused:
            notes.append(f"{unused} reference image(s) not named by an <imageN> tag in the prompt were not used.")
        refs = []
    request = EditRequest(instr, image=src, references=refs, mask=mask_img, auxiliary_prompt=aux, task=pre.decode)
    try:
        return request.validated(), notes
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def pipeline_kwargs(spec: MethodSpec, settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `pipe.edit(request, ...)` for these settings."""
    import torch

    kwargs: dict[str, Any] = {
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance,
        "max_side": settings.max_side,
        "generator": torch.Generator().manual_seed(settings.seed),
        **settings.extra,
    }
    if spec.image_guidance is not None:
        kwargs["image_guidance_scale"] = settings.image_guidance
    return kwargs


def step_callback(total: int, on_step: Callable[[int, int], None] | None, deadline: float | None, timeout_s: float | None) -> Callable:
    """A `callback_on_step_end` reporting progress and stopping the run once past `deadline`."""

    def callback(_pipe, i, _t, _kw):
        if on_step is not None:
            on_step(i + 1, total)
        if deadline is not None and time.monotonic() > deadline:  # checked every step: stops a long run cleanly
            raise RequestTimeout(
                f"The request took longer than {timeout_s:g} s and was stopped after step {i + 1} of {total}. "
                "Use fewer steps or a smaller max side."
            )
        return {}

    return callback


def make_result(
    spec: MethodSpec,
    pre: Preset,
    request: EditRequest,
    output: PIL.Image.Image,
    settings: Settings,
    *,
    instruction: str,
    seconds: float,
    label: str | None,
    notes: list[str],
) -> EditResult:
    """Step 5: the output, what ran (`info`) and, for task presets, the decoded result."""
    result = EditResult(
        source=request.image if request.image is not None else output,
        output=output,
        seed=settings.seed,
        method=spec.name,
        instruction=instruction,
        task=pre.decode,
        notes=notes,
        info={
            "method": spec.key,
            "seed": settings.seed,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "image_guidance": settings.image_guidance,
            "max_side": settings.max_side,
            "fast": settings.fast,
            "size": list(output.size),
            "mask": request.mask is not None,
            "seconds": round(seconds, 3),
        },
    )
    if pre.decode and request.image is not None:
        result.task_value, result.task_image, result.summary = decode_task(pre.decode, request.image, output, label or pre.default_label)
    return result


def history_entry(result: EditResult, history: Sequence | None, size: int, caption: str) -> list:
    """Step 6: the history gallery with this result first, at most `size` entries."""
    return ([(result.output, caption)] + list(history or []))[:size]


# ----------------------------------------------------------------------------- engine


class Engine:
    """Serves edit requests for every registered method, with one shared model cache.

    Methods take the resolved `MethodSpec`; `spec(name)` resolves a name once, at the edge."""

    def __init__(self, config: AppConfig | None = None, cache: ModelCache | None = None):
        self.config = config or AppConfig()
        self.cache = cache or ModelCache(self.config.device, self.config.dtype)

    # -- what is available

    def spec(self, method: str | None) -> MethodSpec:
        """The spec of `method` (None or empty: the first available method), or a `UserError`."""
        try:
            return get_method(method or self.default_method())
        except ValueError as err:
            raise UserError(str(err)) from None

    def source(self, spec: MethodSpec) -> str | None:
        return self.config.sources.get(spec.key)

    def availability(self, spec: MethodSpec) -> Availability:
        return availability(spec, self.source(spec))

    def is_loaded(self, spec: MethodSpec) -> bool:
        return self.cache.is_loaded((spec.key, self.source(spec) or ""))

    def scales(self, spec: MethodSpec) -> tuple[float, float | None]:
        """The (text, image) guidance a run starts from: the model's own defaults when its local
        `model_index.json` records them (a small model tuned to other scales), else the method's."""
        text, image = spec.guidance, spec.image_guidance
        src = self.source(spec)
        if src and is_local_path(src):
            try:
                index = json.loads((Path(src).expanduser() / "model_index.json").read_text())
            except (OSError, ValueError):
                index = {}
            text = float(index.get("guidance_scale", text))
            if image is not None:
                image = float(index.get("image_guidance_scale", image))
        return text, image

    def working_side(self, spec: MethodSpec) -> int:
        """The working size a run starts from: the size the model was trained at when its local folder
        records it (PromptFix's `resize_side`, else the backbone's `sample_size` x the VAE factor), else
        the method's `max_side`."""
        src = self.source(spec)
        if not (src and is_local_path(src)):
            return spec.max_side
        return trained_side(Path(src).expanduser()) or spec.max_side

    def available_methods(self) -> list[str]:
        return [k for k, spec in METHODS.items() if self.availability(spec).ok]

    def default_method(self) -> str:
        avail = self.available_methods()
        return avail[0] if avail else next(iter(METHODS))

    def describe(self) -> list[dict[str, Any]]:
        """Every method, its availability and defaults (the /methods API)."""
        return [self.describe_one(spec) for spec in METHODS.values()]

    def describe_one(self, spec: MethodSpec) -> dict[str, Any]:
        a = self.availability(spec)
        guidance, image_guidance = self.scales(spec)
        return {
            "key": spec.key,
            "name": spec.name,
            "available": a.ok,
            "status": a.message,
            "loaded": self.is_loaded(spec),
            "fields": sorted(spec.fields),
            "steps": self.config.default_steps(spec),
            "guidance": guidance,
            "image_guidance": image_guidance,
            "max_side": self.working_side(spec),
            "hgs": spec.hgs is not None,
            "presets": [{"name": p.name, "template": p.template, "needs_label": p.needs_label, "decodes": p.decode} for p in spec.presets],
        }

    def pipeline(self, spec: MethodSpec) -> Any:
        a = self.availability(spec)
        if not a.ok:
            raise UserError(a.message)
        return self.cache.get(spec, self.source(spec))

    # -- one request

    def run(
        self,
        method: str | None,
        image: Any,
        instruction: str | None,
        *,
        preset: str | None = None,
        label: str | None = None,
        mask: Any = None,
        references: Any = None,
        auxiliary_prompt: str | None = None,
        interleaved: str | None = None,
        on_step: Callable[[int, int], None] | None = None,
        **numbers: Any,
    ) -> EditResult:
        """One request: settings -> text and images -> `EditRequest` -> pipeline call -> result.

        `numbers`: steps, guidance, image_guidance, seed, randomize_seed, hgs, hgs_strength, max_side, fast
        (see `read_settings`)."""
        deadline = time.monotonic() + self.config.request_timeout_s if self.config.request_timeout_s else None
        spec = self.spec(method)
        a = self.availability(spec)
        if not a.ok:
            raise UserError(a.message)
        try:
            pre = spec.preset(preset)
        except ValueError as err:
            raise UserError(str(err)) from None
        label = label_from_text(spec, pre, instruction, label)
        settings, notes = read_settings(spec, pre, self.config, self.scales(spec), default_side=self.working_side(spec),
                                        **numbers)
        text, inter_text = read_text(spec, instruction, interleaved, pre, label)
        src, mask_img, refs, image_notes = read_images(spec, self.config, image, mask, references)
        request, request_notes = build_request(spec, pre, self.config, text, inter_text, (src, mask_img, refs), auxiliary_prompt)
        output, seconds = self.call(spec, request, settings, on_step, deadline)
        notes += image_notes + request_notes
        # the instruction as typed (interleaved: with its <imageN> tags)
        return make_result(spec, pre, request, output, settings, instruction=text or inter_text, seconds=seconds, label=label, notes=notes)

    def call(
        self, spec: MethodSpec, request: EditRequest, settings: Settings, on_step: Callable[[int, int], None] | None, deadline: float | None
    ) -> tuple[PIL.Image.Image, float]:
        """Step 4: run the pipeline once (one request at a time per model), with progress and the deadline."""
        pipe = self.pipeline(spec)
        if settings.fast:  # a shallow copy with the preset's solver; the cached pipeline keeps its own
            pipe, _ = fast_pipeline(pipe, spec.loading_method)
        kwargs = pipeline_kwargs(spec, settings)
        kwargs["callback_on_step_end"] = step_callback(settings.steps, on_step, deadline, self.config.request_timeout_s)
        lock = self.cache.run_lock((spec.key, self.source(spec)))
        if not lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise RequestTimeout(f"The server is busy: the model was not free within {self.config.request_timeout_s:g} s. Try again shortly.")
        t0 = time.perf_counter()
        try:
            return pipe.edit(request, **kwargs).images[0], time.perf_counter() - t0
        except RequestTimeout:
            raise
        except NonFiniteError as err:
            raise UserError(f"{spec.name} produced invalid numbers on this request: {err}") from None
        except (ValueError, TypeError) as err:
            raise UserError(f"{spec.name} could not run this request: {err}") from None
        finally:
            lock.release()
