"""Speed presets: the settings behind `--fast` (CLI), the app's "Fast" toggle and `editkit eval --fast`.

A preset is plain call arguments plus, for the UNet pipelines, a multistep solver:

    steps               fewer denoising steps than the method's default
    guidance_interval   guide only part of the run (`editkit.guidance.GuidanceInterval`); outside it the
                        backbone runs one branch instead of two or three
    solver              "dpmpp_2m": DPM-Solver++ 2M (diffusers' `DPMSolverMultistepScheduler`) or "unipc" (UniPC,
                        `UniPCMultistepScheduler`), built from the pipeline's scheduler config so the prediction
                        type, betas and zero-SNR rescale carry over; for the flow-matching pipelines "unipc" on
                        flow sigmas with the same shift; None keeps the pipeline's scheduler
    deep_cache          DeepCache interval for the UNet pipelines (`editkit.deep_cache`): the whole UNet on
                        every n-th call, only its outermost level in between; None = no caching

    from editkit.speed import fast_pipeline
    pipe, kwargs = fast_pipeline(pipe, "instructcv")
    pipe(prompt, image, **kwargs)

The figures that chose each preset (shapes val split) and what they cost in quality on test are in
docs/performance.md (speed presets); benchmarks/speed_quality.py reruns them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from .deep_cache import DeepCacheConfig, deep_cache_unet


@dataclass(frozen=True)
class SpeedPreset:
    steps: int
    guidance_interval: tuple[float, float] | None = None
    solver: str | None = None
    deep_cache: int | None = None

    def call_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps}
        if self.guidance_interval is not None:
            kwargs["guidance_interval"] = self.guidance_interval
        return kwargs


# method -> preset, chosen on the shapes val split with the shipped tiny models (docs/performance.md)
FAST_PRESETS: dict[str, SpeedPreset] = {
    "instructcv": SpeedPreset(steps=10, guidance_interval=(0.0, 0.5)),  # its own Euler ancestral: val, docs/performance.md
    "promptfix": SpeedPreset(steps=8, guidance_interval=(0.0, 0.5), solver="unipc"),  # UniPC: val n=30, docs/performance.md
    "pixwizard": SpeedPreset(steps=8, guidance_interval=(0.0, 0.5), solver="unipc"),  # flow UniPC: val, docs/performance.md
    "unic": SpeedPreset(steps=10, guidance_interval=(0.0, 0.5)),
    "dream": SpeedPreset(steps=10, guidance_interval=(0.0, 0.5)),
}
SOLVERS = ("dpmpp_2m", "unipc")
FLOW_SOLVERS = ("unipc",)  # the flow pipelines set custom sigmas, which diffusers' DPM-Solver++ does not take


def is_flow_scheduler(scheduler: Any) -> bool:
    return "shift" in scheduler.config and "beta_start" not in scheduler.config


class FlowUniPC(UniPCMultistepScheduler):
    """diffusers' UniPC on flow sigmas, with float timesteps `sigma * 1000` as the flow transformers are trained on
    (diffusers' UniPC rounds them to integers). Its grid is UniPC's own: 1 .. 1/N (PixWizard's custom sigmas are
    the same), then the shift, then 0. The pipelines' Euler grid (1 .. 1/1000) was tried in UniPC and solved a
    closed-form ODE worse than Euler itself (docs/performance.md); tests/test_speed.py checks the grid used here."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, sigmas: list[float] | None = None,
                      mu: float | None = None) -> None:
        sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)  # UniPC's arithmetic wants an array
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
        self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).to(device)


def fast_scheduler(scheduler: Any, solver: str) -> Any:
    """A multistep solver with the same noise schedule and prediction type as `scheduler`: DPM-Solver++ 2M or UniPC
    (bh2, order 2) for the DDPM-family UNets; UniPC on flow sigmas (`flow_prediction`, the same shift) for the
    flow-matching pipelines."""
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
    config = dict(scheduler.config)
    if is_flow_scheduler(scheduler):
        if solver not in FLOW_SOLVERS:
            raise ValueError(f"`solver={solver!r}` is for DDPM-family schedulers; this pipeline samples with the flow-matching "
                             f"{type(scheduler).__name__}: use one of {FLOW_SOLVERS} or None (its own Euler).")
        keep = {k: config[k] for k in ("num_train_timesteps", "use_dynamic_shifting", "time_shift_type", "shift_terminal") if k in config}
        return FlowUniPC(**keep, use_flow_sigmas=True, flow_shift=float(config["shift"]), prediction_type="flow_prediction",
                         solver_order=2, final_sigmas_type="zero")
    extra: dict[str, Any] = {"solver_order": 2}
    if solver == "dpmpp_2m":
        extra["algorithm_type"] = "dpmsolver++"
    if config.get("rescale_betas_zero_snr"):
        extra["final_sigmas_type"] = "zero"  # zero terminal SNR: the last step lands on sigma 0 exactly
    cls = DPMSolverMultistepScheduler if solver == "dpmpp_2m" else UniPCMultistepScheduler
    return cls.from_config(config, **extra)


def fast_pipeline(pipe: Any, method: str, preset: SpeedPreset | None = None) -> tuple[Any, dict[str, Any]]:
    """(pipeline, call kwargs) for the method's fast preset. The pipeline is a shallow copy sharing the
    weights when the solver or the cache changes, so the caller's pipeline keeps its own scheduler and UNet."""
    if preset is None:
        if method not in FAST_PRESETS:
            raise ValueError(f"no fast preset for method {method!r}; known: {sorted(FAST_PRESETS)}.")
        preset = FAST_PRESETS[method]
    if preset.solver is not None or preset.deep_cache is not None:
        pipe = copy.copy(pipe)
    if preset.solver is not None:
        pipe.scheduler = fast_scheduler(pipe.scheduler, preset.solver)
    if preset.deep_cache is not None:
        if not hasattr(pipe, "unet"):
            raise ValueError(f"`deep_cache` is for the UNet pipelines; {type(pipe).__name__} has no UNet.")
        pipe.unet = deep_cache_unet(pipe.unet, DeepCacheConfig(preset.deep_cache))
    return pipe, preset.call_kwargs()
