"""Converters from official checkpoints to editkit/diffusers folders.

This package is the one place in editkit that reads pickle files, and it
always does so with `torch.load(..., weights_only=True)`, which refuses any
pickle that would run code or build arbitrary objects. Everything editkit
writes is safetensors.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint safely: safetensors, or a pickle with `weights_only=True`.

    Lightning-style wrappers (`{"state_dict": ...}`, `{"model": ...}`, `{"module": ...}`)
    are unwrapped. Non-tensor entries are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"checkpoint {str(path)!r}: expected a .safetensors file or a pickle ending in {PICKLE_SUFFIXES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {str(path)!r}: it is not a plain weights file (weights_only=True rejected it: "
            f"{str(err).splitlines()[0]}). Only load checkpoints from sources you trust."
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write contiguous tensors as safetensors (shared storage is cloned apart)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))
    return path
