"""The methods the app knows: one `MethodSpec` per pipeline.

A spec says everything the UI and the engine need to serve a method without
knowing its code: the pipeline class (imported lazily, by name), which
`EditRequest` fields it takes, its default steps and scales, how the HGS
switch maps to pipeline arguments, where its default checkpoint lives, and
its task presets. A new pipeline plugs in by filling in its spec (or
registering a new one with `register`); nothing else in the app changes.

Every method has its pipeline; a method is available in the app when a
checkpoint is configured for it (`--model KEY=PATH`) or the package ships
its tiny model (`editkit/models/<method>-tiny`). A spec whose pipeline class
does not import is listed as "planned".
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Request fields a method may take (the names of `EditRequest` fields, plus
# "interleaved": an instruction given as a text/image list).
FIELDS = ("instruction", "image", "mask", "references", "auxiliary_prompt", "interleaved")


@dataclass(frozen=True)
class Preset:
    """A task preset: fills the instruction from a template.

    `template` may hold `{label}` (the class/object the user names, needed
    when `needs_label`). `decode` names an `editkit.tasks` codec whose decoded
    result (mask, boxes, depth, class) the app shows beside the output.
    `auxiliary` fills PromptFix's auxiliary prompt; `scales` overrides the
    method's (text, image) guidance for this task.
    """

    name: str
    template: str = ""
    needs_label: bool = False
    default_label: str = ""
    decode: str | None = None
    auxiliary: str = ""
    scales: tuple[float, float] | None = None

    def instruction(self, label: str | None = None) -> str:
        if not self.template:
            return ""
        label = (label or "").strip() or self.default_label
        return self.template.format(label=label)


FREE = Preset("free edit")


@dataclass(frozen=True)
class MethodSpec:
    """How the app serves one method."""

    key: str  # identifier used on the command line and in the API ("instructcv")
    name: str  # shown in the UI ("InstructCV")
    pipeline: str  # "module:Class", imported when first needed
    fields: frozenset[str]
    steps: int
    guidance: float  # text guidance s_T (or the single CFG scale)
    image_guidance: float | None  # image guidance s_I; None: the method has one scale
    max_side: int = 512
    presets: tuple[Preset, ...] = (FREE,)
    # HGS switch -> extra pipeline kwargs; None: the method has no HGS
    hgs: Callable[[bool, float], dict[str, Any]] | None = None
    hgs_strength: float = 1.0
    # the checkpoint used when none is given on the command line
    default_source: Callable[[], str | None] = lambda: None
    description: str = ""
    guidance_labels: tuple[str, str] = ("Text guidance", "Image guidance")
    method: str = ""  # editkit's name for the method (editkit.loading, editkit.speed) when it differs from `key`

    @property
    def loading_method(self) -> str:
        return self.method or self.key

    def __post_init__(self) -> None:
        unknown = set(self.fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"method {self.key}: unknown request field(s) {sorted(unknown)}; known: {FIELDS}")
        names = [p.name for p in self.presets]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.key}: duplicate preset names {names}")

    def takes(self, name: str) -> bool:
        return name in self.fields

    def preset(self, name: str | None) -> Preset:
        if not name:  # the free edit where the method has one (an API call that names no preset)
            return next((p for p in self.presets if not p.template), self.presets[0])
        for p in self.presets:
            if p.name == name:
                return p
        raise ValueError(f"{self.name} has no task preset {name!r}; presets: {[p.name for p in self.presets]}.")

    def match_preset(self, text: str) -> tuple[Preset, str] | None:
        """The templated preset whose template produces `text` (case and a final '.' ignored), with its label."""
        t = (text or "").strip().rstrip(".").strip()
        for p in self.presets:
            if not p.template or p.template.strip() == "{label}":
                continue  # a bare "{label}" template matches everything
            pattern = re.escape(p.template.strip().rstrip(".")).replace(re.escape("{label}"), "(?P<label>.+?)")
            m = re.fullmatch(pattern, t, flags=re.IGNORECASE)
            if m:
                return p, (m.group("label").strip() if "label" in m.groupdict() else "")
        return None

    def pipeline_class(self) -> type | None:
        """The pipeline class, or None when this install does not have it (yet)."""
        module, _, cls = self.pipeline.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            return None


def _shipped(method: str) -> Callable[[], str | None]:
    """The package's tiny model of `method`, when this install ships one."""

    def source() -> str | None:
        from editkit.loading import default_model

        path = default_model(method)
        return None if path is None else str(path)

    return source


def _promptfix_hgs(on: bool, strength: float) -> dict[str, Any]:
    """HGS on: the benchmarked corrector with its step size scaled by `strength` (1 = the default)."""
    if not on:
        return {"hgs_mode": "off"}
    from editkit.hgs import HighFrequencyGuidance

    base = HighFrequencyGuidance.recommended()
    return {"hgs_mode": "latent", "hgs": HighFrequencyGuidance.recommended(step_size=base.step_size * float(strength))}


INSTRUCTCV_PRESETS = (
    Preset("segment", "Segment the {label}.", True, "red circle", decode="segment"),
    Preset("detect", "Detect the {label}.", True, "red circle", decode="detect"),
    Preset("depth", "Estimate the depth of this image.", decode="depth"),
    Preset("classify", "Show red if the picture has {label}, otherwise show green.", True, "circle", decode="classify"),
    FREE,
)

METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add (or replace) a method; the UI lists methods in registration order."""
    METHODS[spec.key] = spec
    return spec


register(
    MethodSpec(
        key="instructcv",
        name="InstructCV",
        pipeline="editkit.pipelines:InstructCVPipeline",
        fields=frozenset({"instruction", "image", "mask"}),
        steps=50,
        guidance=7.5,
        image_guidance=1.5,
        presets=INSTRUCTCV_PRESETS,
        default_source=_shipped("instructcv"),
        description="Vision tasks (segment, detect, depth, classify) and edits as instruction-conditioned generation.",
    )
)
register(
    MethodSpec(
        key="promptfix",
        name="PromptFix",
        pipeline="editkit.pipelines:PromptFixPipeline",
        fields=frozenset({"instruction", "image", "mask", "auxiliary_prompt"}),
        steps=20,
        guidance=6.5,
        image_guidance=1.25,
        presets=(
            Preset("dehaze", "Remove the haze from this image.", auxiliary="The image is hazy and washed out."),
            Preset("colourise", "Colourise this black and white photo.", auxiliary="The image is black and white."),
            Preset("denoise", "Remove the noise from this image.", auxiliary="The image is grainy and noisy."),
            Preset("deblur", "Make this blurry image sharp.", auxiliary="The image is blurry."),
            Preset("low light", "Brighten this dark image.", auxiliary="The image is underexposed and dark."),
            Preset("remove watermark", "Remove the watermark.", auxiliary="A watermark covers the image."),
            Preset("remove snow", "Remove the snowflakes.", auxiliary="Snowflakes cover the image."),
            Preset("super-resolve", "Increase the resolution of this image.", auxiliary="The image is pixelated."),
            FREE,
        ),
        hgs=_promptfix_hgs,
        default_source=_shipped("promptfix"),
        description="Low-level restoration and edits guided by an auxiliary description of the image's flaws.",
    )
)
register(
    MethodSpec(
        key="pixwizard",
        name="PixWizard",
        pipeline="editkit.pipelines:PixWizardPipeline",
        fields=frozenset({"instruction", "image"}),
        steps=59,
        guidance=4.0,
        image_guidance=1.0,
        max_side=768,
        presets=(
            Preset("segment", "Segment the {label}.", True, "red circle"),
            Preset("depth", "Estimate the depth map of this image."),
            Preset("canny-to-image", "Generate an image from this canny edge map: {label}.", True, "a red circle on a white background"),
            Preset("dehaze", "Remove the haze from this image."),
            Preset("colourise", "Colourise this grey image."),
            FREE,
        ),
        default_source=_shipped("pixwizard"),
        description="A generalist image-to-image model for vision, restoration and conditional generation tasks.",
    )
)
register(
    MethodSpec(
        key="unic",
        name="UNIC-Adapter",
        pipeline="editkit.pipelines:UNICAdapterPipeline",
        fields=frozenset({"instruction", "image", "references"}),
        steps=28,
        guidance=7.0,
        image_guidance=1.5,
        presets=(
            Preset("canny-to-image", "{label}", True, "a red circle on a white background"),
            Preset("depth-to-image", "{label}", True, "a blue square in front of a wall"),
            Preset("subject-driven", "{label}", True, "the object from the reference on a beach"),
            FREE,
        ),
        default_source=_shipped("unic"),
        description="Controllable generation from a condition image (edges, depth, subject) with task presets.",
        guidance_labels=("Prompt guidance", "Control guidance"),
    )
)
register(
    MethodSpec(
        key="dreamengine",
        method="dream",
        name="Dream Engine",
        pipeline="editkit.pipelines:DreamEnginePipeline",
        fields=frozenset({"instruction", "interleaved", "references"}),
        steps=28,
        guidance=3.5,
        image_guidance=None,
        presets=(
            # the shipped dream-tiny's training phrasings: each image follows its "image k" mention
            Preset("combine images", "Combine the object in image 1<image1> with the object in image 2<image2>."),
            Preset("put on background", "Put the object of image 1<image1> on the background of image 2<image2>."),
            FREE,
        ),
        default_source=_shipped("dream"),
        description="Text-image interleaved generation: refer to reference images as <image1>, <image2>, ...",
        guidance_labels=("Guidance", "Image guidance"),
    )
)


def get_method(key: str) -> MethodSpec:
    """The spec for a method key or display name (case-insensitive)."""
    k = (key or "").strip().lower()
    for spec in METHODS.values():
        if k in (spec.key, spec.name.lower()):
            return spec
    raise ValueError(f"unknown method {key!r}; methods: {[s.key for s in METHODS.values()]}")


def parse_model_args(values: list[str] | None) -> dict[str, str]:
    """`--model PATH` (for the first method) or `--model KEY=PATH` (repeatable) -> {key: source}."""
    out: dict[str, str] = {}
    first = next(iter(METHODS))
    for v in values or []:
        key, sep, src = v.partition("=")
        if sep and key.strip().lower() in {s.key for s in METHODS.values()} | {s.name.lower() for s in METHODS.values()}:
            out[get_method(key).key] = src.strip()
        else:
            out[first] = v.strip()
    return out


def default_sources(overrides: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Checkpoint source per method: the command line's, else the method's default."""
    overrides = dict(overrides or {})
    return {key: overrides.get(key) or spec.default_source() for key, spec in METHODS.items()}


def is_local_path(source: str) -> bool:
    """A source is a local folder when it looks like a path (a hub id is 'owner/name')."""
    p = Path(source).expanduser()
    return p.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1 or "\\" in source
