"""The shapes benchmark: a procedural world with exact ground truth for every task family.

    from editkit.data import generate, export
    samples = generate("cv,edit", n=100, size=64, split="train")
    export(samples, "out/shapes_train")
"""

from .export import export, load_metadata, load_samples
from .families import FAMILIES, TASK_FAMILY, TASKS, Sample, arrays_from_ground_truth
from .reader import compare, read_scene
from .scene import BACKGROUND_COLORS, OBJECT_COLORS, PLACES, SHAPES, Background, Obj, Scene
from .shapes import SPLITS, generate, make_sample, parse_tasks

__all__ = [
    "BACKGROUND_COLORS",
    "FAMILIES",
    "OBJECT_COLORS",
    "PLACES",
    "SHAPES",
    "SPLITS",
    "TASKS",
    "TASK_FAMILY",
    "Background",
    "Obj",
    "Sample",
    "Scene",
    "arrays_from_ground_truth",
    "compare",
    "export",
    "generate",
    "load_metadata",
    "load_samples",
    "make_sample",
    "parse_tasks",
    "read_scene",
]
