"""editkit.speed: the fast preset's solver keeps the model's noise schedule, and refuses what it cannot serve."""

import pytest
import torch
from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from editkit.speed import SpeedPreset, fast_pipeline, fast_scheduler


def test_solver_keeps_prediction_type_betas_and_zero_snr():
    base = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                                           rescale_betas_zero_snr=True, timestep_spacing="trailing")
    fast = fast_scheduler(base, "dpmpp_2m")
    assert fast.config.prediction_type == "v_prediction" and fast.config.rescale_betas_zero_snr
    assert fast.config.final_sigmas_type == "zero" and fast.config.algorithm_type == "dpmsolver++"
    assert torch.allclose(fast.alphas_cumprod, base.alphas_cumprod)
    fast.set_timesteps(10)
    assert len(fast.timesteps) == 10 and int(fast.timesteps[0]) == 999  # trailing spacing starts at the last step


def test_solver_refuses_flow_schedulers_and_unknown_names():
    with pytest.raises(ValueError, match="flow-matching FlowMatchEulerDiscreteScheduler"):
        fast_scheduler(FlowMatchEulerDiscreteScheduler(), "dpmpp_2m")
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
