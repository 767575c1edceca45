"""Instruction templates for the four InstructCV tasks.

Placeholders: `{label}` is the queried class, `{pos}` / `{neg}` are the colours
shown when the class is present / absent (classification only).

Each task has one fixed (FP) prompt and a pool of rephrasings (RP). The first
RP line is the fixed prompt; unlike the official builder, every RP line,
including that first one, can be drawn. HELDOUT_PROMPTS are extra rephrasings
that never appear in training, for testing generalisation to unseen wording.
"""

from __future__ import annotations

import random

from .colors import check_color

TASK_NAMES: tuple[str, ...] = ("segment", "detect", "depth", "classify")
TASK_ALIASES: dict[str, str] = {
    "segmentation": "segment",
    "detection": "detect",
    "classification": "classify",
}
STYLES: tuple[str, ...] = ("fp", "rp")

FIXED_PROMPTS: dict[str, str] = {
    "segment": "Segment the {label}.",
    "detect": "Detect the {label}.",
    "depth": "Estimate the depth of this image.",
    "classify": "Show {pos} if the picture has {label}, otherwise show {neg}.",
}

RP_PROMPTS: dict[str, tuple[str, ...]] = {
    "segment": (
        FIXED_PROMPTS["segment"],
        "Mark every pixel that belongs to the {label} in white.",
        "Produce a binary mask of the {label}.",
        "Separate the {label} from the rest of the picture.",
        "Highlight the region covered by the {label}.",
        "Draw the {label} as a white silhouette on black.",
        "Create a segmentation mask for the {label} in this photo.",
        "Which pixels show the {label}? Paint them white.",
        "Cut out the {label} as a mask.",
        "Show me where the {label} is, pixel by pixel.",
    ),
    "detect": (
        FIXED_PROMPTS["detect"],
        "Draw a blue box around each {label}.",
        "Locate every {label} with a blue bounding box.",
        "Find the {label} and frame it in blue.",
        "Put a blue rectangle around the {label}.",
        "Mark the position of each {label} using blue boxes.",
        "Where is the {label}? Box it in blue.",
        "Enclose every {label} in this image with a blue box.",
        "Show the bounding boxes of the {label}.",
    ),
    "depth": (
        FIXED_PROMPTS["depth"],
        "Create a depth map of this scene.",
        "How far away is each part of this picture?",
        "Turn this photo into a depth map.",
        "Predict the distance of every pixel from the camera.",
        "Show the scene depth as a grey image.",
        "Render the depth of this picture.",
        "Infer per-pixel depth from this single image.",
        "Estimate how far each pixel is from the viewer.",
    ),
    "classify": (
        FIXED_PROMPTS["classify"],
        "If there is a {label} in the image, show {pos}; if not, show {neg}.",
        "Fill the image with {pos} when a {label} is present and {neg} when it is absent.",
        "Does this picture contain a {label}? Answer {pos} for yes and {neg} for no.",
        "Paint the canvas {pos} if you see a {label}, else paint it {neg}.",
        "Respond with {pos} when the photo includes a {label}, and with {neg} otherwise.",
        "Is a {label} visible here? Show {pos} for yes, {neg} for no.",
        "Output {pos} if a {label} appears in this image, or {neg} if it does not.",
        "Colour everything {pos} when the image shows a {label}; otherwise colour it {neg}.",
    ),
}

HELDOUT_PROMPTS: dict[str, tuple[str, ...]] = {
    "segment": (
        "Give me a pixel mask of the {label}.",
        "Isolate the {label} with a segmentation map.",
        "Paint the {label} white and everything else black.",
        "Find the area occupied by the {label} and mask it.",
    ),
    "detect": (
        "Surround each {label} with a blue rectangle.",
        "Use blue boxes to point out the {label}.",
        "Frame every instance of {label} in blue.",
        "Spot the {label} and draw a box around it.",
    ),
    "depth": (
        "Map out the distances in this scene.",
        "Give me the depth of every pixel.",
        "Produce a distance map for this photo.",
        "Visualise how deep this scene is.",
    ),
    "classify": (
        "Check for a {label}: {pos} means present, {neg} means absent.",
        "Show a {pos} image if this contains a {label} and a {neg} image if it doesn't.",
        "Turn the picture {pos} if it has a {label} in it, and {neg} if it has none.",
        "Signal a {label} with {pos}; signal no {label} with {neg}.",
    ),
}

NEEDS_LABEL: dict[str, bool] = {"segment": True, "detect": True, "depth": False, "classify": True}


def resolve_task(task: str) -> str:
    """Canonical task name for `task` or one of its aliases (case-insensitive)."""
    key = task.strip().lower() if isinstance(task, str) else task
    key = TASK_ALIASES.get(key, key)
    if key not in TASK_NAMES:
        valid = sorted([*TASK_NAMES, *TASK_ALIASES])
        raise ValueError(f"task={task!r} is not a known task; valid: {valid}")
    return key


def build_prompt(
    task: str,
    label: str | None = None,
    *,
    style: str = "fp",
    heldout: bool = False,
    rng: random.Random | None = None,
    pos: str = "red",
    neg: str = "green",
) -> str:
    """Instruction text for one (task, label) query.

    style="fp" returns the fixed prompt; style="rp" draws uniformly from the
    training rephrasings, or from the held-out ones when `heldout=True` (which
    therefore requires style="rp"). `rng` makes the draw reproducible; without
    it the global `random` state is used. `label` is ignored for "depth";
    `pos` / `neg` (names from COLORS, distinct) only matter for "classify".
    """
    task = resolve_task(task)
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not valid; valid: {list(STYLES)}")
    if heldout and style != "rp":
        raise ValueError("heldout=True draws rephrasings, so it needs style='rp'")
    if NEEDS_LABEL[task] and (not isinstance(label, str) or not label.strip()):
        raise ValueError(f"label is required for task {task!r} (a non-empty class name), got {label!r}")
    if task == "classify":
        check_color(pos, "pos")
        check_color(neg, "neg")
        if pos == neg:
            raise ValueError(f"pos and neg must differ, both are {pos!r}")
    if style == "fp":
        template = FIXED_PROMPTS[task]
    else:
        pool = HELDOUT_PROMPTS[task] if heldout else RP_PROMPTS[task]
        template = rng.choice(pool) if rng is not None else random.choice(pool)
    if isinstance(label, str):
        label = label.strip()
    return template.format(label=label, pos=pos, neg=neg)
