"""Image input/output shared by every pipeline, the CLI and the app.

All user images pass through `load_image`, so every entry point accepts the
same things and fails with the same clear messages. Sizes are planned with
`plan_size`: keep the aspect ratio, bound the long side, round to what the
backbone needs, and remember the size the user wants back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

ImageInput = Union[str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor]

# Larger inputs are almost always a mistake (or a decompression bomb); the
# limit can be raised per call.
MAX_PIXELS = 64 * 1024 * 1024


def _to_rgb(img: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"`{name}` contains NaN or infinite pixel values.")
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        scale = 255.0 if hi <= 1.0 and lo >= 0.0 else 1.0
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        canvas = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


def _array_to_pil(arr: np.ndarray, name: str) -> PIL.Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"`{name}` array has shape {tuple(arr.shape)}; expected HxW, HxWx3 or HxWx4 (or CxHxW)."
        )
    if arr.dtype == np.uint8:
        return PIL.Image.fromarray(arr)
    if arr.dtype == np.uint16:
        return PIL.Image.fromarray((arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8))
    if arr.dtype == bool:
        return PIL.Image.fromarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(
                f"`{name}` is a float array with values in [{arr.min():.3g}, {arr.max():.3g}]; "
                "expected values in [0, 1] (or pass uint8)."
            )
        return PIL.Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8))
    raise TypeError(f"`{name}` array has dtype {arr.dtype}; expected uint8, uint16, bool or float in [0, 1].")


def load_image(image: ImageInput, name: str = "image", max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Return `image` as an 8-bit RGB PIL image with EXIF orientation applied.

    Accepts a path, a PIL image, a numpy array (HxW[xC] uint8/uint16/bool or
    float in [0, 1]) or a tensor (CxHxW or HxWxC, float in [0, 1], uint8 or bool).
    `name` is the argument name used in error messages.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"`{name}`: no such file: {path}")
        try:
            # Opened from a file object, not a path: Pillow then never memory-maps the pixels. Its
            # mmap path (uncompressed TIFF in L, P, RGBA, CMYK, I;16) skips the EXIF rotation it
            # applies to every other TIFF, so the same file would come out rotated or not by mode.
            with open(path, "rb") as fh, PIL.Image.open(fh) as opened:
                # Reject bombs before decoding the pixels.
                w, h = opened.size
                if w * h > max_pixels:
                    raise ValueError(
                        f"`{name}` is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}; "
                        "downscale it first or raise `max_pixels`."
                    )
                opened.load()
                pil = opened.copy()
                pil.info.update(opened.info)
                exif = opened.getexif()
        except PIL.Image.DecompressionBombError as err:
            raise ValueError(f"`{name}` ({path}) is too large to decode safely: {err}") from None
        except (PIL.UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"`{name}` ({path}) is not a readable image file: {err}") from None
        if exif:
            pil.info["exif"] = exif.tobytes()
            pil.getexif().update(exif)
    elif isinstance(image, PIL.Image.Image):
        pil = image
    elif isinstance(image, torch.Tensor):
        if not (image.is_floating_point() or image.dtype in (torch.uint8, torch.bool)):
            raise TypeError(f"`{name}` tensor has dtype {image.dtype}; expected float in [0, 1], uint8 or bool.")
        arr = image.detach().cpu()
        arr = (arr.float() if arr.is_floating_point() else arr).numpy()  # uint8 tensors keep 0..255
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        pil = _array_to_pil(arr, name)
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image, name)
    else:
        raise TypeError(
            f"`{name}` must be a file path, PIL.Image, numpy array or torch tensor, got {type(image).__name__}."
        )

    w, h = pil.size
    if w == 0 or h == 0:
        raise ValueError(f"`{name}` has zero size ({w}x{h}).")
    if w * h > max_pixels:
        raise ValueError(
            f"`{name}` is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}; "
            "downscale it first or raise `max_pixels`."
        )
    pil = PIL.ImageOps.exif_transpose(pil) or pil
    return _to_rgb(pil, name)


def load_mask(mask: ImageInput, size: tuple[int, int], name: str = "mask") -> PIL.Image.Image:
    """Return a binary 'L' mask (255 = selected) of `size` (width, height).

    A mask must have the image's size: silently stretching a mask would edit
    the wrong pixels.
    """
    if isinstance(mask, PIL.Image.Image) and mask.mode in ("RGBA", "LA"):
        mask_l = mask.getchannel("A")
    elif isinstance(mask, (str, os.PathLike)):
        rgb = load_image(mask, name)
        mask_l = rgb.convert("L")
    elif isinstance(mask, PIL.Image.Image):
        mask_l = PIL.ImageOps.exif_transpose(mask).convert("L")
    else:
        mask_l = load_image(mask, name).convert("L")
    if mask_l.size != tuple(size):
        raise ValueError(f"`{name}` is {mask_l.size[0]}x{mask_l.size[1]} but the image is {size[0]}x{size[1]}.")
    return mask_l.point(lambda v: 255 if v >= 128 else 0)


@dataclass(frozen=True)
class SizePlan:
    """Where an image is processed and the size it is returned at."""

    work_width: int
    work_height: int
    out_width: int
    out_height: int

    @property
    def resized(self) -> bool:
        return (self.work_width, self.work_height) != (self.out_width, self.out_height)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_size(
    image_size: tuple[int, int],
    multiple: int,
    height: int | None = None,
    width: int | None = None,
    max_side: int | None = None,
) -> SizePlan:
    """Choose the working size for an image of `image_size` (width, height).

    - `height` and `width` both given: that is the output size; the working
      size is it rounded to `multiple`.
    - one of them given: the other follows the input's aspect ratio.
    - neither: the output is the input size; the working size keeps the
      aspect ratio, with the long side scaled down to `max_side` if larger.
    The working size is always a multiple of `multiple` (what the VAE and the
    backbone's downsampling need).
    """
    for arg, val in (("height", height), ("width", width), ("max_side", max_side)):
        if val is not None and (not isinstance(val, (int, np.integer)) or val <= 0):
            raise ValueError(f"`{arg}` must be a positive integer, got {val!r}.")
    in_w, in_h = image_size
    if height is not None and width is not None:
        out_w, out_h = int(width), int(height)
    elif height is not None:
        out_h = int(height)
        out_w = max(1, int(round(in_w * out_h / in_h)))
    elif width is not None:
        out_w = int(width)
        out_h = max(1, int(round(in_h * out_w / in_w)))
    else:
        out_w, out_h = in_w, in_h
    work_w, work_h = float(out_w), float(out_h)
    if max_side is not None and max(work_w, work_h) > max_side:
        scale = max_side / max(work_w, work_h)
        work_w, work_h = work_w * scale, work_h * scale
    work_w_i, work_h_i = _round_to(work_w, multiple), _round_to(work_h, multiple)
    if max_side is not None:
        # rounding up must not break the bound
        while work_w_i > max(max_side, multiple):
            work_w_i -= multiple
        while work_h_i > max(max_side, multiple):
            work_h_i -= multiple
    return SizePlan(work_w_i, work_h_i, out_w, out_h)


def pil_to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """Stack RGB PIL images (same size) into a (B, 3, H, W) float tensor in [-1, 1]."""
    # x / 255 * 2 - 1 on a permuted (channels-last strided) view, exactly as diffusers'
    # VaeImageProcessor does: convolutions then pick the same kernels (bitwise parity).
    arr = np.stack([np.asarray(im).astype(np.float32) / 255.0 for im in images])
    return 2.0 * torch.from_numpy(arr).permute(0, 3, 1, 2) - 1.0


def tensor_to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """(B, 3, H, W) in [0, 1] to PIL images."""
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in arr]


def resize_output(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (B, C, h, w) images in [0, 1] to (height, width) with antialiasing."""
    if images.shape[-2:] == (height, width):
        return images
    out = torch.nn.functional.interpolate(
        images.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    return out.clamp(0, 1).to(images.dtype)


def resize_input(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), PIL.Image.Resampling.LANCZOS)
