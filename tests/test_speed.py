"""editkit.speed: the fast preset's solver keeps the model's noise schedule, and refuses what it cannot serve."""

import pytest
import torch
from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from editkit.speed import SpeedPreset, fast_pipeline, fast_scheduler


@pytest.mark.parametrize("solver,cls", [("dpmpp_2m", "DPMSolverMultistepScheduler"), ("unipc", "UniPCMultistepScheduler")])
def test_solver_keeps_prediction_type_betas_and_zero_snr(solver, cls):
    base = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                                           rescale_betas_zero_snr=True, timestep_spacing="trailing")
    fast = fast_scheduler(base, solver)
    assert type(fast).__name__ == cls and fast.config.solver_order == 2
    assert fast.config.prediction_type == "v_prediction" and fast.config.rescale_betas_zero_snr
    assert fast.config.final_sigmas_type == "zero"
    assert solver != "dpmpp_2m" or fast.config.algorithm_type == "dpmsolver++"
    assert torch.allclose(fast.alphas_cumprod, base.alphas_cumprod)
    fast.set_timesteps(10)
    assert len(fast.timesteps) == 10 and int(fast.timesteps[0]) == 999  # trailing spacing starts at the last step


def _gaussian_flow(x: torch.Tensor, sigma: float, m: float = 0.7, s: float = 0.3) -> torch.Tensor:
    """Exact velocity (noise - x0) of the flow x = (1 - sigma) x0 + sigma noise, x0 ~ N(m, s^2), noise ~ N(0, 1)."""
    a = 1.0 - sigma
    x0 = m + a * s * s / (a * a * s * s + sigma * sigma) * (x - a * m)
    return (x - x0) / sigma


def _solve(scheduler, noise: torch.Tensor, steps: int, sigmas: list[float] | None = None) -> torch.Tensor:
    scheduler.set_timesteps(steps, sigmas=sigmas) if sigmas is not None else scheduler.set_timesteps(steps)
    x = noise.clone()
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(_gaussian_flow(x, float(scheduler.sigmas[i])), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("shift,gain", [(1.0, 0.3), (3.0, 0.95)])
def test_flow_unipc_solves_the_ode_better_than_euler_at_few_steps(shift, gain):
    """On a Gaussian whose probability-flow ODE is known in closed form (noise n -> m + s n), the flow UniPC of the
    fast presets lands closer to the exact end point than the pipelines' Euler at 10 steps, with the same shift,
    float timesteps sigma * 1000, and PixWizard's custom sigmas (1 .. 1/N) giving its default grid."""
    base = FlowMatchEulerDiscreteScheduler(shift=shift)
    fast = fast_scheduler(base, "unipc")
    assert fast.config.prediction_type == "flow_prediction" and fast.config.flow_shift == shift
    noise = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = 0.7 + 0.3 * noise
    err = lambda sch, n, sigmas=None: float((_solve(sch, noise, n, sigmas) - exact).abs().max())  # noqa: E731
    assert err(fast, 10) < gain * err(base, 10)
    assert err(fast, 50) < 6e-3 < err(base, 50)
    grid = (1.0 - torch.linspace(0, 1, 11)[:-1]).tolist()
    fast.set_timesteps(10, sigmas=grid)
    custom = fast.sigmas.clone()
    fast.set_timesteps(10)
    assert torch.allclose(custom, fast.sigmas, atol=3e-3) and float(fast.sigmas[-1]) == 0.0  # 1 .. 1/N vs 1 .. 1/N + 1e-3
    assert fast.timesteps.dtype.is_floating_point and torch.allclose(fast.timesteps, fast.sigmas[:-1] * 1000)


def test_solver_refuses_flow_schedulers_and_unknown_names():
    with pytest.raises(ValueError, match="flow-matching FlowMatchEulerDiscreteScheduler: use one of"):
        fast_scheduler(FlowMatchEulerDiscreteScheduler(), "dpmpp_2m")
    dynamic = fast_scheduler(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "unipc")
    with pytest.raises(ValueError, match="mu"):  # dynamic shifting carries over, with its own error
        dynamic.set_timesteps(10)
    with pytest.raises(ValueError, match="`solver` must be one of"):
        fast_scheduler(DDPMScheduler(), "unipc_9")


def test_fast_pipeline_swaps_the_scheduler_on_a_copy_only():
    class Pipe:
        scheduler = DDPMScheduler()

    pipe = Pipe()
    fast, kwargs = fast_pipeline(pipe, "instructcv", SpeedPreset(6, (0.0, 0.5), "dpmpp_2m"))
    assert kwargs == {"num_inference_steps": 6, "guidance_interval": (0.0, 0.5)}
    assert type(fast.scheduler).__name__ == "DPMSolverMultistepScheduler" and type(pipe.scheduler) is DDPMScheduler
    same, kwargs = fast_pipeline(pipe, "unic", SpeedPreset(10))
    assert same is pipe and kwargs == {"num_inference_steps": 10}
    with pytest.raises(ValueError, match="no fast preset for method 'nope'"):
        fast_pipeline(pipe, "nope")


def test_flow_unipc_in_the_pixwizard_pipeline_converges_to_its_euler_result():
    """The swapped solver runs through a real flow pipeline (custom sigmas, model time from `scheduler.sigmas`):
    at 40 steps it agrees with the pipeline's own Euler at 40; at 10 steps it is closer to that than Euler at 10."""
    import numpy as np

    from editkit.data.shapes import make_sample
    from editkit.loading import default_model, load_pipeline

    pipe = load_pipeline("pixwizard", str(default_model("pixwizard")), "cpu", "fp32")
    pipe.set_progress_bar_config(disable=True)
    s = make_sample("segment", "val", 0)

    def run(p, steps: int) -> np.ndarray:
        return p(s.instruction, image=s.source, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 output_type="np").images[0]

    fast, _ = fast_pipeline(pipe, "pixwizard", SpeedPreset(10, None, "unipc"))
    assert type(fast.scheduler).__name__ == "FlowUniPC" and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    euler40 = run(pipe, 40)
    assert np.abs(run(fast, 40) - euler40).mean() < 1e-3
    assert np.abs(run(fast, 10) - euler40).mean() < 0.75 * np.abs(run(pipe, 10) - euler40).mean()
