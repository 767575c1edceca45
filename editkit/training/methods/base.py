"""What every method's training plugin provides to `train/train.py`."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch


def images_to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size to (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class MethodTraining:
    """A method plugs into the shared trainer by defining these.

    - `trainable()` / `frozen()`: modules by name (trainable ones are optimised,
      prepared by accelerate and checkpointed);
    - `encode_images(source, target)`: the frozen encodings latent caching stores;
    - `loss(models, batch, generators)`: one generator per sample, so a sample's
      noise, timestep and dropout do not depend on batch layout or process count;
    - `collate(items)`, `pipeline(models)`: batching, and the method's pipeline
      for validation and export.
    """

    name = "base"
    has_pipeline = True  # validation images and export through `pipeline()`
    distributed = True  # the loss calls the prepared (DDP-wrapped) modules' forward

    def __init__(self, cfg):
        self.cfg = cfg

    def trainable(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {}

    def fingerprint_parts(self) -> dict:
        raise NotImplementedError

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        raise NotImplementedError

    def pipeline(self, models: dict[str, torch.nn.Module]):
        raise NotImplementedError

    def export(self, path, models: dict[str, torch.nn.Module]) -> None:
        """Write a folder the method's pipeline loads with `from_pretrained`."""
        self.pipeline(models).save_pretrained(path, safe_serialization=True)
