"""Loading a pipeline by method name: the shipped tiny models and `load_pipeline`.

The CLI, the evaluator and the app all load models through here:

    from editkit.loading import default_model, load_pipeline
    pipe = load_pipeline("instructcv")                         # the shipped tiny model, offline
    pipe = load_pipeline("pixwizard", "./my-pixwizard", device="cuda", dtype="fp16")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHIPPED_MODELS = Path(__file__).parent / "models"
METHODS = ("instructcv", "promptfix", "pixwizard", "unic", "dream")
DTYPES = ("fp32", "fp16", "bf16")


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says which and what to pass instead."""


def default_model(method: str = "instructcv") -> Path | None:
    """The small model of `method` shipped inside the package (`editkit/models/<method>-tiny`), if this install has it."""
    path = SHIPPED_MODELS / f"{method}-tiny"
    return path if (path / "model_index.json").is_file() else None


def trained_side(folder: str | Path) -> int | None:
    """The image side a local model folder says it was trained at, without loading it: the pipeline's
    `resize_side` when model_index.json records one, else the backbone's `sample_size` x the VAE factor
    (the same figure as a loaded pipeline's `trained_side`). None when the folder records neither."""
    import json

    folder = Path(folder)

    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    side = read(folder / "model_index.json").get("resize_side")
    if isinstance(side, int) and side > 0:
        return side
    vae = read(folder / "vae" / "config.json").get("block_out_channels")
    for backbone in ("unet", "transformer"):
        size = read(folder / backbone / "config.json").get("sample_size")
        if isinstance(size, (list, tuple)):
            size = max(size)
        if isinstance(size, int) and vae:
            return size * 2 ** (len(vae) - 1)
    return None


def resolve_source(method: str, source: str | Path | None) -> str:
    """`source` as given, or the method's shipped model when it is None."""
    if source is not None:
        return str(source)
    shipped = default_model(method)
    if shipped is None:
        raise ModelLoadError(f"no default {method} model is shipped with this install; pass a model folder or hub id (`--model PATH_OR_ID` on the command line).")
    return str(shipped)


def torch_dtype(name: str) -> Any:
    """'fp32' | 'fp16' | 'bf16' -> the torch dtype."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ModelLoadError(f"dtype must be one of {list(DTYPES)}, got {name!r}.")
    return table[name]


def default_device(device: str | None = None) -> str:
    """`device`, or cuda when it is available, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(method: str = "instructcv", source: str | Path | None = None, device: str | None = None,
                  dtype: str = "fp32") -> Any:
    """The method's pipeline from `source` (a folder or hub id; None: the shipped tiny model), on `device`."""
    from editkit.pipelines import pipeline_class

    cls = pipeline_class(method)
    source = resolve_source(method, source)
    try:
        pipe = cls.from_pretrained(source, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {source} with {cls.__name__}.from_pretrained: {err}") from None
    return pipe.to(default_device(device))
