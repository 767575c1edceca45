"""Task families of the shapes benchmark: one builder per task, each returning a `Sample`.

Every builder is a pure function of its numpy Generator and the canvas size.
The `ground_truth` dict is json-serialisable and complete: it holds the source
scene (and the target scene where the task changes the scene), the query and
every random choice, so `arrays_from_ground_truth` rebuilds the exact masks,
boxes, depth and edit regions from the json alone (e.g. from an exported
metadata.jsonl).

Families and tasks
    edit         recolor, remove, add, move, resize, change_background
    cv           segment, detect, depth, classify            (InstructCV encodings)
    restore      denoise, deblur, dehaze, lowlight, colorize, dewatermark, desnow,
                 super_resolve, inpaint, remove_object       (PromptFix / PixWizard)
    control      canny_to_image, depth_to_image, seg_to_image, subject_driven,
                 style_driven                                (UNIC-Adapter / PixWizard)
    grounding    mark                                        (PixWizard)
    interleaved  combine, put_on_background                  (Dream Engine)

Conventions
    * `source` is always the pipeline's input image. Where a method has no
      input image of its own (subject-driven, interleaved) the source is the
      first reference image, and `references` lists all of them.
    * `auxiliary_prompt`: restore: "<flaw sentence> The image shows <caption>."
      (the defect first, as in PromptFix's released examples; object removal
      uses the empty string, as PromptFix does); cv and grounding: a caption of
      the source; edit, control, interleaved: a caption of the target (the
      "prompt" slot of UNIC-Adapter / Dream Engine).
    * `mask`: the inpainting hole, or the edited region for edit tasks and
      object removal (L image, 255 inside).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
from PIL import Image

from editkit.tasks.classification import encode_class
from editkit.tasks.colors import COLORS as CLASS_COLORS
from editkit.tasks.depth import encode_depth
from editkit.tasks.detection import default_line_width, encode_boxes
from editkit.tasks.segmentation import encode_mask

from . import degrade
from .phrasings import phrase
from .scene import (
    BACKGROUND_KINDS,
    _bg_phrase,
    OBJECT_COLORS,
    PLACES,
    SHAPES,
    SIZE_CLASSES,
    Background,
    Obj,
    Scene,
    caption,
    is_valid,
    object_pixels,
    place_position,
    random_background,
    random_object,
    random_scene,
    sort_by_depth,
    visible_box,
)

FAMILIES: dict[str, tuple[str, ...]] = {
    "edit": ("recolor", "remove", "add", "move", "resize", "change_background"),
    "cv": ("segment", "detect", "depth", "classify"),
    "restore": (
        "denoise", "deblur", "dehaze", "lowlight", "colorize",
        "dewatermark", "desnow", "super_resolve", "inpaint", "remove_object",
    ),
    "control": ("canny_to_image", "depth_to_image", "seg_to_image", "subject_driven", "style_driven"),
    "grounding": ("mark",),
    "interleaved": ("combine", "put_on_background"),
}
TASK_FAMILY: dict[str, str] = {t: f for f, ts in FAMILIES.items() for t in ts}
TASKS: tuple[str, ...] = tuple(TASK_FAMILY)

# Stable ids used for seeding. Never renumber; append new tasks at the end.
TASK_IDS: dict[str, int] = {
    "recolor": 1, "remove": 2, "add": 3, "move": 4, "resize": 5, "change_background": 6,
    "segment": 11, "detect": 12, "depth": 13, "classify": 14,
    "denoise": 21, "deblur": 22, "dehaze": 23, "lowlight": 24, "colorize": 25, "dewatermark": 26,
    "desnow": 27, "super_resolve": 28, "inpaint": 29, "remove_object": 30,
    "canny_to_image": 41, "depth_to_image": 42, "seg_to_image": 43, "subject_driven": 44, "style_driven": 45,
    "mark": 51,
    "combine": 61, "put_on_background": 62,
}

TASK_ALIASES: dict[str, str] = {
    "recolour": "recolor", "background": "change_background", "change_bg": "change_background",
    "segmentation": "segment", "detection": "detect", "classification": "classify",
    "colourise": "colorize", "colourize": "colorize", "colorise": "colorize",
    "low_light": "lowlight", "watermark": "dewatermark", "snow": "desnow", "haze": "dehaze",
    "sr": "super_resolve", "super_resolution": "super_resolve", "superres": "super_resolve",
    "canny": "canny_to_image", "depth2img": "depth_to_image", "seg2img": "seg_to_image",
    "subject": "subject_driven", "style": "style_driven", "grounding_mark": "mark",
}

# Semantic-segmentation palette of the seg_to_image control map (shape class -> colour, black background).
SEG_PALETTE: dict[str, tuple[int, int, int]] = {
    "circle": (230, 25, 75),
    "square": (60, 180, 75),
    "triangle": (255, 225, 25),
    "star": (0, 130, 200),
    "ring": (245, 130, 48),
    "diamond": (145, 30, 180),
    "cross": (70, 240, 240),
}

# Highlight colours for "mark" (50 % overlay, PixWizard's referring-segmentation encoding).
MARKERS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "magenta": (255, 0, 255),
}
MARK_OPACITY = 0.5

WHITE_BG = Background("solid", ("white",))

FLAWS: dict[str, str] = {
    "denoise": "The image is noisy, with visible grain all over.",
    "deblur": "The image is blurry and the edges are soft.",
    "dehaze": "The image is hazy; a milky veil hides the far background.",
    "lowlight": "The image is very dark and underexposed.",
    "colorize": "The image is in black and white and has no colors.",
    "dewatermark": "The image is covered by a semi-transparent watermark text.",
    "desnow": "The image is covered with white snowflakes.",
    "super_resolve": "The image has a low resolution and looks pixelated.",
    "inpaint": "Part of the image is missing and shows a black rectangle.",
}


@dataclass
class Sample:
    """One benchmark example: input, references, instruction, auxiliary prompt, exact target."""

    task: str
    family: str
    source: Image.Image
    target: Image.Image
    instruction: str
    auxiliary_prompt: str = ""
    references: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None
    ground_truth: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    split: str = ""
    index: int = -1


@dataclass
class Ctx:
    rng: np.random.Generator
    prng: random.Random  # phrasing choice
    canvas: int
    heldout: bool = False
    paraphrase: bool = False  # training only: draw from phrasings.PARAPHRASES too

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]


# --------------------------------------------------------------------------- helpers


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr))


def _mask_pil(m: np.ndarray) -> Image.Image:
    return Image.fromarray((m.astype(np.uint8) * 255), "L")


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _scene_with(ctx: Ctx, min_objects: int = 1, max_objects: int = 4, **kw) -> Scene:
    return random_scene(ctx.rng, ctx.canvas, min_objects=min_objects, max_objects=max_objects, **kw)


def subject_image(o: Obj, canvas: int, background: Background = WHITE_BG) -> Scene:
    """The object alone, centred on a (white) canvas, at its own size: a reference image."""
    c = (canvas - o.size) // 2
    return Scene(canvas, background, (replace(o, x=c, y=c),))


def _base_gt(scene: Scene, **extra) -> dict[str, Any]:
    gt: dict[str, Any] = {"scene": scene.to_dict()}
    gt.update(extra)
    return gt


def _unused_depth(ctx: Ctx, scene: Scene) -> float:
    used = {o.depth for o in scene.objects}
    free = [float(d) for d in range(1, 10) if float(d) not in used]
    return free[int(ctx.rng.integers(len(free)))]


# --------------------------------------------------------------------------- ground truth arrays


def arrays_from_ground_truth(gt: dict[str, Any]) -> dict[str, np.ndarray]:
    """Exact arrays of a sample, rebuilt from its json ground truth.

    Always: `labels` (source object index per pixel, -1 background) and
    `depth` (source depth, metres). Where defined: `target_labels`,
    `target_depth`, `mask` (the queried / marked object pixels),
    `boxes` (N x 4, x2/y2 exclusive), `edit_region`, `hole`.
    """
    scene = Scene.from_dict(gt["scene"])
    r = scene.render()
    out: dict[str, np.ndarray] = {"labels": r.labels, "depth": r.depth}
    tr = None
    if "target_scene" in gt:
        tr = Scene.from_dict(gt["target_scene"]).render()
        out["target_labels"] = tr.labels
        out["target_depth"] = tr.depth
    q = gt.get("query")
    if q is not None and "objects" in q:
        m = np.zeros_like(r.labels, dtype=bool)
        for i in q["objects"]:
            m |= r.labels == i
        out["mask"] = m
    if "boxes" in gt:
        out["boxes"] = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
    e = gt.get("edit")
    if e is not None:
        out["edit_region"] = _edit_region(r.labels, None if tr is None else tr.labels, e)
    d = gt.get("degradation")
    if d is not None and d.get("kind") == "hole":
        x1, y1, x2, y2 = d["box"]
        h = np.zeros_like(r.labels, dtype=bool)
        h[y1:y2, x1:x2] = True
        out["hole"] = h
    return out


def _finish(ctx: Ctx, task: str, *, source: np.ndarray, target: np.ndarray, instruction: str,
            aux: str, gt: dict[str, Any], references: list[np.ndarray] | None = None,
            mask: np.ndarray | None = None, extra_arrays: dict[str, np.ndarray] | None = None) -> Sample:
    gt = dict(gt)
    gt.setdefault("canvas", ctx.canvas)
    return Sample(
        task=task,
        family=TASK_FAMILY[task],
        source=_pil(source),
        target=_pil(target),
        instruction=instruction,
        auxiliary_prompt=aux,
        references=[_pil(a) for a in (references or [])],
        mask=None if mask is None else _mask_pil(mask),
        ground_truth=gt,
        arrays=dict(extra_arrays or {}),
    )


# --------------------------------------------------------------------------- edit


def _edit_sample(ctx: Ctx, task: str, src: Scene, tgt: Scene, instruction: str, edit: dict[str, Any],
                 **extra) -> Sample:
    rs, rt = src.render(), tgt.render()
    gt = _base_gt(src, target_scene=tgt.to_dict(), edit=edit, **extra)
    region = _edit_region(rs.labels, rt.labels, edit)
    gt["edited_box"] = visible_box(region)
    return _finish(ctx, task, source=rs.image, target=rt.image, instruction=instruction,
                   aux=_sentence(caption(tgt)), gt=gt, mask=region, extra_arrays={"edit_region": region})


def _edit_region(src_labels: np.ndarray, tgt_labels: np.ndarray | None, edit: dict[str, Any]) -> np.ndarray:
    """Pixels an edit may change: the edited object's source and target pixels, or the background."""
    region = np.zeros(src_labels.shape, dtype=bool)
    if edit.get("background"):
        region |= src_labels == -1
    if edit.get("source_object") is not None:
        region |= src_labels == edit["source_object"]
    if edit.get("target_object") is not None and tgt_labels is not None:
        region |= tgt_labels == edit["target_object"]
    if edit.get("all_objects"):
        region |= src_labels >= 0
        if tgt_labels is not None:
            region |= tgt_labels >= 0
    return region


def build_recolor(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 4)
    i = int(ctx.rng.integers(len(src.objects)))
    o = src.objects[i]
    free = [c for c in OBJECT_COLORS if c not in {p.color for p in src.objects}]
    new = ctx.choice(free)
    objs = list(src.objects)
    objs[i] = replace(o, color=new)
    tgt = src.with_objects(objs)
    text = phrase("recolor", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, obj=o.name, color=new)
    return _edit_sample(ctx, "recolor", src, tgt, text, {"source_object": i, "target_object": i},
                        object=o.name, new_color=new)


def build_remove(ctx: Ctx, task: str = "remove") -> Sample:
    src = _scene_with(ctx, 1, 4)
    i = int(ctx.rng.integers(len(src.objects)))
    o = src.objects[i]
    tgt = src.with_objects(p for k, p in enumerate(src.objects) if k != i)
    text = phrase(task, ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, obj=o.name)
    s = _edit_sample(ctx, task, src, tgt, text, {"source_object": i, "target_object": None}, object=o.name)
    if task == "remove_object":
        s.auxiliary_prompt = ""  # PromptFix: object removal uses an empty auxiliary prompt
    return s


def _valid_places(ctx: Ctx, scene: Scene, o: Obj, exclude: str | None = None) -> list[tuple[str, Scene, int]]:
    """Places where `o` (added to or replacing itself in `scene`) keeps the scene valid."""
    out = []
    for place in PLACES:
        if place == exclude:
            continue
        x, y = place_position(place, o.size, ctx.canvas)
        moved = replace(o, x=x, y=y)
        others = [p for p in scene.objects if p is not o]
        objs = sort_by_depth(others + [moved])
        cand = scene.with_objects(objs)
        if is_valid(cand):
            out.append((place, cand, objs.index(moved)))
    return out


def build_add(ctx: Ctx) -> Sample:
    for attempt in range(60):
        src = _scene_with(ctx, 0, 3 if attempt < 20 else 1)
        new = random_object(ctx.rng, ctx.canvas, depth=1.0, exclude_colors=[p.color for p in src.objects])
        if src.objects:
            new = replace(new, depth=_unused_depth(ctx, src))
        options = _valid_places(ctx, src, new)
        if options:
            break
    place, tgt, j = options[int(ctx.rng.integers(len(options)))]
    added = tgt.objects[j]
    desc = f"{added.size_class} {added.color} {added.shape}"
    text = phrase("add", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, new=desc, place=place)
    return _edit_sample(ctx, "add", src, tgt, text, {"source_object": None, "target_object": j},
                        object=added.name, new_object=added.to_dict(), place=place)


def build_move(ctx: Ctx) -> Sample:
    for attempt in range(60):
        src = _scene_with(ctx, 1, 4 if attempt < 20 else 1)
        i = int(ctx.rng.integers(len(src.objects)))
        o = src.objects[i]
        here = o.place(ctx.canvas)
        options = [(p, t, j) for p, t, j in _valid_places(ctx, src, o, exclude=here)
                   if t.objects[j].box != o.box]
        if options:
            break
    place, tgt, j = options[int(ctx.rng.integers(len(options)))]
    text = phrase("move", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, obj=o.name, place=place)
    return _edit_sample(ctx, "move", src, tgt, text, {"source_object": i, "target_object": j},
                        object=o.name, place=place, from_place=here)


def build_resize(ctx: Ctx) -> Sample:
    for attempt in range(60):
        src = _scene_with(ctx, 1, 4 if attempt < 20 else 1)
        i = int(ctx.rng.integers(len(src.objects)))
        o = src.objects[i]
        k = SIZE_CLASSES.index(o.size_class)
        if k == 0:
            step = 1
        elif k == len(SIZE_CLASSES) - 1:
            step = -1
        else:
            step = 1 if ctx.rng.integers(2) else -1
        cls = SIZE_CLASSES[k + step]
        s = object_pixels(cls, ctx.canvas)
        cx, cy = o.center
        x = int(min(max(round(cx - s / 2.0), 0), ctx.canvas - s))
        y = int(min(max(round(cy - s / 2.0), 0), ctx.canvas - s))
        objs = list(src.objects)
        objs[i] = replace(o, x=x, y=y, size=s, size_class=cls)
        tgt = src.with_objects(objs)
        if is_valid(tgt):
            break
    bigger = step > 0
    text = phrase("resize", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, obj=o.name, adj="bigger" if bigger else "smaller",
                  verb="enlarge" if bigger else "shrink")
    return _edit_sample(ctx, "resize", src, tgt, text, {"source_object": i, "target_object": i},
                        object=o.name, bigger=bigger, new_size_class=cls)


def build_change_background(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 4)
    bg = random_background(ctx.rng, ctx.canvas, BACKGROUND_KINDS, exclude=src.background)
    tgt = src.with_background(bg)
    text = phrase("change_background", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, bg=bg.describe())
    return _edit_sample(ctx, "change_background", src, tgt, text, {"background": True},
                        new_background=bg.to_dict())


# --------------------------------------------------------------------------- cv


def _query(ctx: Ctx, scene: Scene, present: bool = True) -> dict[str, Any]:
    """A label naming objects of the scene (present) or none of them (absent).

    kind "colored": "red circle" (one object, colours are unique in a scene);
    kind "shape": "circle" (every circle of the scene).
    """
    kind = "shape" if ctx.rng.integers(2) else "colored"
    if present:
        o = scene.objects[int(ctx.rng.integers(len(scene.objects)))]
        label = o.shape if kind == "shape" else o.name
    else:
        if kind == "shape":
            label = ctx.choice([s for s in SHAPES if s not in {o.shape for o in scene.objects}])
        else:
            names = {o.name for o in scene.objects}
            pool = [f"{c} {s}" for c in OBJECT_COLORS for s in SHAPES if f"{c} {s}" not in names]
            label = ctx.choice(pool)
    matches = [i for i, o in enumerate(scene.objects) if (o.shape if kind == "shape" else o.name) == label]
    return {"label": label, "kind": kind, "objects": matches, "present": bool(matches)}


def build_segment(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 4)
    r = src.render()
    q = _query(ctx, src)
    m = np.isin(r.labels, q["objects"])
    text = phrase("segment", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, label=q["label"])
    return _finish(ctx, "segment", source=r.image, target=encode_mask(m), instruction=text,
                   aux=_sentence(caption(src)), gt=_base_gt(src, query=q), extra_arrays={"mask": m})


def _separated(boxes: list[list[int]], gap: int) -> bool:
    """No two boxes overlap or come closer than `gap` pixels (so their outlines never touch)."""
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            p, q = boxes[a], boxes[b]
            if max(q[0] - p[2], p[0] - q[2], q[1] - p[3], p[1] - q[3]) < gap:
                return False
    return True


def build_detect(ctx: Ctx) -> Sample:
    """Boxes of one query are kept apart by more than the outline width (redrawing the scene
    otherwise): touching or crossing outlines make the drawn target ambiguous to decode."""
    gap = default_line_width(ctx.canvas, ctx.canvas) + 1
    for _ in range(100):
        src = _scene_with(ctx, 1, 4)
        r = src.render()
        q = _query(ctx, src)
        boxes = [list(visible_box(r.labels == i)) for i in q["objects"]]
        if _separated(boxes, gap):
            break
    text = phrase("detect", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, label=q["label"])
    target = encode_boxes(r.image, boxes)
    return _finish(ctx, "detect", source=r.image, target=target, instruction=text,
                   aux=_sentence(caption(src)), gt=_base_gt(src, query=q, boxes=boxes),
                   extra_arrays={"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4)})


def build_depth(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 4)
    r = src.render()
    text = phrase("depth", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase)
    return _finish(ctx, "depth", source=r.image, target=encode_depth(r.depth), instruction=text,
                   aux=_sentence(caption(src)), gt=_base_gt(src, depth_levels=[o.depth for o in src.objects]),
                   extra_arrays={"depth": r.depth})


def build_classify(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 4)
    r = src.render()
    present = bool(ctx.rng.integers(2))
    q = _query(ctx, src, present=present)
    names = list(CLASS_COLORS)
    a, b = ctx.rng.choice(len(names), size=2, replace=False)
    pos, neg = names[int(a)], names[int(b)]
    text = phrase("classify", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, label=q["label"], pos=pos, neg=neg)
    target = encode_class((ctx.canvas, ctx.canvas), present, pos, neg)
    q = {**q, "positive_color": pos, "negative_color": neg}
    return _finish(ctx, "classify", source=r.image, target=target, instruction=text,
                   aux=_sentence(caption(src)), gt=_base_gt(src, query=q, present=present, answer=pos if present else neg))


# --------------------------------------------------------------------------- restore


def _restore(ctx: Ctx, task: str) -> Sample:
    src = _scene_with(ctx, 1, 4)
    r = src.render()
    clean = r.image
    flaw_mask = None
    if task == "denoise":
        bad, params = degrade.noise(clean, ctx.rng)
    elif task == "deblur":
        bad, params = degrade.blur(clean, ctx.rng)
    elif task == "dehaze":
        bad, params = degrade.haze(clean, r.depth, ctx.rng)
    elif task == "lowlight":
        bad, params = degrade.low_light(clean, ctx.rng)
    elif task == "colorize":
        bad, params = degrade.grayscale(clean)
    elif task == "dewatermark":
        bad, params, flaw_mask = degrade.watermark(clean, ctx.rng)
    elif task == "desnow":
        bad, params, flaw_mask = degrade.snow(clean, ctx.rng)
    elif task == "super_resolve":
        bad, params = degrade.downsample(clean, ctx.rng)
    elif task == "inpaint":
        bad, params, flaw_mask = degrade.hole(clean, ctx.rng)
    else:  # pragma: no cover
        raise ValueError(task)
    flaw = FLAWS[task]
    if task == "super_resolve" and params["upsample"] == "bilinear":
        flaw = "The image has a low resolution and looks soft, lacking detail."
    aux = f"{flaw} The image shows {caption(src)}."
    text = phrase(task, ctx.prng, ctx.heldout)
    arrays = {} if flaw_mask is None else {"flaw_mask": flaw_mask}
    mask = flaw_mask if task == "inpaint" else None
    return _finish(ctx, task, source=bad, target=clean, instruction=text, aux=aux,
                   gt=_base_gt(src, degradation=params), mask=mask, extra_arrays=arrays)


def build_remove_object(ctx: Ctx) -> Sample:
    return build_remove(ctx, task="remove_object")


# --------------------------------------------------------------------------- control

_CANNY = None


def canny_edges(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """controlnet-aux `CannyDetector` edges at the image's own resolution (uint8 HxWx3, 0/255)."""
    global _CANNY
    if _CANNY is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from controlnet_aux import CannyDetector
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "the canny_to_image task and edge_f1 need controlnet-aux (pip install controlnet-aux)"
                ) from err
        _CANNY = CannyDetector()
    h, w = image.shape[:2]
    res = min(h, w)
    out = _CANNY(image, low_threshold=low, high_threshold=high, detect_resolution=res,
                 image_resolution=res, output_type="np")
    if out.shape[:2] != (h, w):  # controlnet-aux rounds sizes to multiples of 64
        import cv2

        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def segmentation_map(scene: Scene) -> np.ndarray:
    """Semantic map: each pixel in its shape class's SEG_PALETTE colour, background black."""
    r = scene.render()
    out = np.zeros_like(r.image)
    for i, o in enumerate(scene.objects):
        out[r.labels == i] = SEG_PALETTE[o.shape]
    return out


def _control(ctx: Ctx, task: str) -> Sample:
    tgt = _scene_with(ctx, 1, 4)
    r = tgt.render()
    if task == "canny_to_image":
        cond = canny_edges(r.image)
    elif task == "depth_to_image":
        cond = encode_depth(r.depth)
    else:
        cond = segmentation_map(tgt)
    cap = caption(tgt)
    text = phrase(task, ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, caption=cap)
    gt = _base_gt(tgt, target_scene=tgt.to_dict(), control=task.split("_to_")[0])
    return _finish(ctx, task, source=cond, target=r.image, instruction=text, aux=_sentence(cap), gt=gt)


def build_subject_driven(ctx: Ctx) -> Sample:
    for attempt in range(60):
        subj = random_object(ctx.rng, ctx.canvas, depth=_depth_choice(ctx))
        scene = _scene_with(ctx, 0, 1 if attempt < 20 else 0, exclude_colors=[subj.color])
        if any(o.depth == subj.depth for o in scene.objects):
            subj = replace(subj, depth=_unused_depth(ctx, scene))
        options = _valid_places(ctx, scene, subj)
        if options:
            break
    place, tgt, j = options[int(ctx.rng.integers(len(options)))]
    ref = subject_image(tgt.objects[j], ctx.canvas).render().image
    others = [o for k, o in enumerate(tgt.objects) if k != j]
    parts = [f"the subject at the {place}"]
    parts += [f"a {o.size_class} {o.color} {o.shape} at the {o.place(ctx.canvas)}" for o in others]
    cap = " and ".join(parts) + f" on {_bg_phrase(tgt.background)}"
    text = phrase("subject_driven", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, caption=cap)
    gt = _base_gt(tgt, target_scene=tgt.to_dict(), subject=tgt.objects[j].to_dict(), subject_index=j, place=place)
    return _finish(ctx, "subject_driven", source=ref, target=tgt.render().image, instruction=text,
                   aux=_sentence(caption(tgt)), gt=gt, references=[ref])


def _depth_choice(ctx: Ctx) -> float:
    return float(ctx.rng.integers(1, 10))


def build_style_driven(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 3, min_visible=1.0)  # no occlusion: the objects all get one colour
    style_bg = random_background(ctx.rng, ctx.canvas, ("stripes", "checker", "gradient", "solid"), exclude=src.background)
    ink = ctx.choice(list(OBJECT_COLORS))
    ref_scene = random_scene(ctx.rng, ctx.canvas, int(ctx.rng.integers(2, 4)), background=style_bg)
    ref_scene = ref_scene.with_objects(replace(o, color=ink) for o in ref_scene.objects)
    tgt = Scene(ctx.canvas, style_bg, tuple(replace(o, color=ink) for o in src.objects))
    ref = ref_scene.render().image
    text = phrase("style_driven", ctx.prng, ctx.heldout)
    gt = _base_gt(src, target_scene=tgt.to_dict(), style={"background": style_bg.to_dict(), "ink": ink},
                  reference_scene=ref_scene.to_dict(), edit={"background": True, "all_objects": True})
    return _finish(ctx, "style_driven", source=src.render().image, target=tgt.render().image, instruction=text,
                   aux=_sentence(caption(tgt)), gt=gt, references=[ref])


# --------------------------------------------------------------------------- grounding


def build_mark(ctx: Ctx) -> Sample:
    src = _scene_with(ctx, 1, 4)
    r = src.render()
    i = int(ctx.rng.integers(len(src.objects)))
    o = src.objects[i]
    marker = ctx.choice(list(MARKERS))
    m = r.labels == i
    target = r.image.copy()
    blend = np.rint((1 - MARK_OPACITY) * r.image[m].astype(np.float32) + MARK_OPACITY * np.array(MARKERS[marker], np.float32))
    target[m] = blend.astype(np.uint8)
    text = phrase("mark", ctx.prng, ctx.heldout, paraphrase=ctx.paraphrase, obj=o.name, marker=marker)
    q = {"label": o.name, "kind": "colored", "objects": [i], "present": True}
    return _finish(ctx, "mark", source=r.image, target=target, instruction=text, aux=_sentence(caption(src)),
                   gt=_base_gt(src, query=q, marker=marker, opacity=MARK_OPACITY), extra_arrays={"mask": m})


# --------------------------------------------------------------------------- interleaved


def build_combine(ctx: Ctx) -> Sample:
    n = ctx.canvas
    o1 = random_object(ctx.rng, n, depth=5.0)
    o2 = random_object(ctx.rng, n, depth=4.0, exclude_colors=[o1.color])
    refs = [subject_image(o, n) for o in (o1, o2)]
    placed = []
    for o, cx in ((o1, n / 4.0), (o2, 3 * n / 4.0)):
        x = int(min(max(round(cx - o.size / 2.0), 0), n - o.size))
        y = (n - o.size) // 2
        placed.append(replace(o, x=x, y=y))
    tgt = Scene(n, WHITE_BG, tuple(placed))
    ref_imgs = [s.render().image for s in refs]
    text = phrase("combine", ctx.prng, ctx.heldout)
    gt = _base_gt(refs[0], target_scene=tgt.to_dict(), reference_scenes=[s.to_dict() for s in refs],
                  objects=[o1.name, o2.name])
    return _finish(ctx, "combine", source=ref_imgs[0], target=tgt.render().image, instruction=text,
                   aux=_sentence(caption(tgt)), gt=gt, references=ref_imgs)


def build_put_on_background(ctx: Ctx) -> Sample:
    n = ctx.canvas
    first = _scene_with(ctx, 1, 1)
    bg2 = random_background(ctx.rng, n, BACKGROUND_KINDS, exclude=first.background)
    second = Scene(n, bg2, ())
    tgt = Scene(n, bg2, first.objects)
    ref_imgs = [first.render().image, second.render().image]
    text = phrase("put_on_background", ctx.prng, ctx.heldout)
    gt = _base_gt(first, target_scene=tgt.to_dict(), reference_scenes=[first.to_dict(), second.to_dict()],
                  objects=[first.objects[0].name], edit={"background": True})
    return _finish(ctx, "put_on_background", source=ref_imgs[0], target=tgt.render().image, instruction=text,
                   aux=_sentence(caption(tgt)), gt=gt, references=ref_imgs)


# --------------------------------------------------------------------------- registry

BUILDERS: dict[str, Callable[[Ctx], Sample]] = {
    "recolor": build_recolor,
    "remove": build_remove,
    "add": build_add,
    "move": build_move,
    "resize": build_resize,
    "change_background": build_change_background,
    "segment": build_segment,
    "detect": build_detect,
    "depth": build_depth,
    "classify": build_classify,
    **{t: (lambda ctx, _t=t: _restore(ctx, _t)) for t in FAMILIES["restore"] if t != "remove_object"},
    "remove_object": build_remove_object,
    **{t: (lambda ctx, _t=t: _control(ctx, _t)) for t in ("canny_to_image", "depth_to_image", "seg_to_image")},
    "subject_driven": build_subject_driven,
    "style_driven": build_style_driven,
    "mark": build_mark,
    "combine": build_combine,
    "put_on_background": build_put_on_background,
}
assert set(BUILDERS) == set(TASKS) == set(TASK_IDS)
