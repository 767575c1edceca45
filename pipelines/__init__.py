"""One diffusers pipeline per method, installed as `editkit.pipelines`."""

from .instructcv import InstructCVPipeline, TaskResult

__all__ = ["InstructCVPipeline", "TaskResult"]
