"""How the shapes harness calls each method: one adapter per method in `ADAPTERS`.

An adapter is `adapter(pipe, samples, *, seeds, steps, guidance, image_guidance, **call_args) -> images`
(one image per sample, each the size of its sample's target). `call_args` go on to the pipeline call,
which makes a method's own ablation a baseline, e.g. `{"control_scale": 0}` (UNIC-Adapter without its
condition) or `{"drop_images": True}` (Dream Engine's text-only prompt). Adding a method to the benchmark
is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from editkit.data import Sample


def sampling_kwargs(steps: int, guidance: float | None, image_guidance: float | None, **extra: Any) -> dict[str, Any]:
    """An adapter's pipeline kwargs: the steps, and the scales only when given (else the pipeline's defaults)."""
    kw: dict[str, Any] = {"num_inference_steps": steps, **extra}
    if guidance is not None:
        kw["guidance_scale"] = guidance
    if image_guidance is not None:
        kw["image_guidance_scale"] = image_guidance
    return kw


def generators(seeds: list[int]) -> list[Any]:
    """One CPU generator per sample, so a sample's noise does not depend on its batch."""
    import torch

    return [torch.Generator().manual_seed(int(k)) for k in seeds]


def prompt_and_image(pipe: Any, samples: list[Sample], *, seeds: list[int], steps: int, guidance: float | None,
                     image_guidance: float | None, **call_args: Any) -> list[Any]:
    """Pipelines called as `pipe(prompt=..., image=...)` (InstructCV, PixWizard)."""
    return pipe(
        prompt=[s.instruction for s in samples],
        image=[s.source for s in samples],
        generator=generators(seeds),
        output_type="pil",
        **sampling_kwargs(steps, guidance, image_guidance, **call_args),
    ).images


def promptfix(pipe: Any, samples: list[Sample], *, seeds: list[int], steps: int, guidance: float | None,
              image_guidance: float | None, **call_args: Any) -> list[Any]:
    """PromptFix: the instruction plus the sample's auxiliary prompt; the pipeline's configured working size."""
    return pipe(
        prompt=[s.instruction for s in samples],
        image=[s.source for s in samples],
        auxiliary_prompt=[s.auxiliary_prompt or "" for s in samples],
        generator=generators(seeds),
        output_type="pil",
        **sampling_kwargs(steps, guidance, image_guidance, **call_args),
    ).images


def unic(pipe: Any, samples: list[Sample], *, seeds: list[int], steps: int, guidance: float | None,
         image_guidance: float | None, **call_args: Any) -> list[Any]:
    """UNIC-Adapter: prompt = the target caption, instruction = the sample's instruction, condition = its first
    reference (subject / style) or else its source map; the guidance preset of the samples' task when they
    share one (a mixed batch uses the control preset). `control_scale=0` is the condition-free baseline."""
    from editkit.pipelines.unic import TASK_ALIASES, TASKS

    names = {s.task for s in samples}
    task = None
    if len(names) == 1:
        key = TASK_ALIASES.get(next(iter(names)), next(iter(names)))
        task = key if key in TASKS else None
    return pipe(
        prompt=[s.auxiliary_prompt or s.instruction for s in samples],
        instruction=[s.instruction for s in samples],
        image=[(list(s.references) or [s.source])[0] for s in samples],
        height=samples[0].source.size[1],
        width=samples[0].source.size[0],
        generator=generators(seeds),
        output_type="pil",
        task=task,
        **sampling_kwargs(steps, guidance, image_guidance, **call_args),
    ).images


def dream(pipe: Any, samples: list[Sample], *, seeds: list[int], steps: int, guidance: float | None,
          image_guidance: float | None, drop_images: bool = False, **call_args: Any) -> list[Any]:
    """Dream Engine: interleaved samples place their references inline; others edit their source.

    It has one guidance scale, so `image_guidance` must be None. `drop_images=True` is the text-only
    baseline: the same prompt text with no image."""
    if image_guidance is not None:
        raise ValueError("Dream Engine has a single guidance scale; `image_guidance` must be None.")
    kw = sampling_kwargs(steps, guidance, None, **call_args)
    out = []
    # one call per sample: prompts are padded to the longest of a batch and every position (pads too)
    # reaches the DiT, so batching would make a sample's output depend on its neighbours
    for s, seed in zip(samples, seeds):
        w, h = s.target.size
        if drop_images:
            call: dict[str, Any] = {"prompt": s.instruction}
        elif s.references:
            call = {"prompt": s.instruction, "references": list(s.references)}
        else:
            call = {"prompt": s.instruction, "image": s.source}
        out.append(pipe(**call, height=h, width=w, generator=generators([seed])[0], output_type="pil", **kw).images[0])
    return out


# method -> adapter(pipe, samples, *, seeds, steps, guidance, image_guidance, **call_args) -> images
ADAPTERS: dict[str, Callable[..., list[Any]]] = {
    "instructcv": prompt_and_image,
    "promptfix": promptfix,
    "pixwizard": prompt_and_image,
    "unic": unic,
    "dream": dream,
}
CUSTOM = "custom"  # a plain callable fn(instructions, sources, samples) -> images


def check_method(method: str) -> str:
    if method in ADAPTERS or method == CUSTOM:
        return method
    raise ValueError(f"`method` must be one of {sorted(ADAPTERS)} (or {CUSTOM!r} for a plain callable); got {method!r}.")
