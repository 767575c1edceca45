"""The community benchmarks' metrics, as each benchmark defines them.

Pixel metrics take images in [0, 1] (torchvision's ToTensor); the output is resized (bicubic) to the image it is
compared with, as MagicBrush's evaluation does. Embedding metrics use models from local folders:

    clip    a transformers `CLIPModel` folder (MagicBrush: ViT-B/32; Emu Edit and PIE-Bench: ViT-L/14)
    dino    a transformers `AutoModel` ViT folder (MagicBrush and Emu Edit: DINO ViT-S/16; PIE-Bench's
            structure distance: DINO ViT-B/8)

MagicBrush   l1, l2 (output vs target); clip_i, dino (cosine of image embeddings, output vs target);
             clip_t (cosine of the output's image embedding and the target's local caption)
Emu Edit     l1, clip_i, dino (output vs input); clip_out (output vs output caption); clip_dir (cosine of the
             image change and the caption change, both in CLIP space)
PIE-Bench    structure_distance (MSE between the DINO key self-similarities of input and output, last layer, on
             the unscaled 0-255 pixels as PnP-Inversion's evaluation feeds them);
             bg_psnr, bg_mse, bg_ssim, bg_lpips (input vs output with the edited region zeroed, torchmetrics;
             LPIPS on SqueezeNet 1.1, as PnP-Inversion's evaluation/matrics_calculator.py);
             clip_whole, clip_edited (CLIP score 100 * max(cos, 0) of the output, or the output with all but the
             edited region zeroed, against the editing prompt)

    lpips   torchvision's SqueezeNet 1.1 weights file (squeezenet1_1-b8a52dc0.pth); LPIPS's linear heads ship
            with torchmetrics

A metric whose model was not given is not computed: `missing_models` names it and the flag to pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

METRICS = {
    "magicbrush": ("l1", "l2", "clip_i", "dino", "clip_t"),
    "emu_edit": ("l1", "clip_i", "dino", "clip_out", "clip_dir"),
    "pie_bench": ("structure_distance", "bg_psnr", "bg_mse", "bg_ssim", "bg_lpips", "clip_whole", "clip_edited"),
    "folder": ("l1", "l2", "psnr", "ssim", "clip_i", "dino", "clip_t", "bg_psnr"),
}
NEEDS = {"clip_i": "clip", "clip_t": "clip", "clip_out": "clip", "clip_dir": "clip", "clip_whole": "clip",
         "clip_edited": "clip", "dino": "dino", "structure_distance": "dino", "bg_lpips": "lpips"}
LOWER_IS_BETTER = {"l1", "l2", "bg_mse", "bg_lpips", "structure_distance", "rmse"}
WHAT = {"clip": "a local transformers CLIPModel folder", "dino": "a local transformers ViT folder",
        "lpips": "torchvision's SqueezeNet 1.1 weights file, squeezenet1_1-b8a52dc0.pth"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STRUCTURE_SIDE, STRUCTURE_MAX_SIDE = 224, 480  # PnP-Inversion's `dino_global_patch_size` and its Resize max_size


def missing_models(fmt: str, clip: Any, dino: Any, lpips: Any = None) -> dict[str, str]:
    """metric -> why it is not computed, for the metrics of `fmt` whose model is absent."""
    have = {"clip": clip is not None, "dino": dino is not None, "lpips": lpips is not None}
    return {m: f"{m} needs a {NEEDS[m].upper()} model: pass --{NEEDS[m]} PATH ({WHAT[NEEDS[m]]})"
            for m in METRICS[fmt] if m in NEEDS and not have[NEEDS[m]]}


def to_tensor(image: PIL.Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; resized (bicubic) to `size` = (width, height) first when given."""
    if size is not None and image.size != size:
        image = image.resize(size, PIL.Image.BICUBIC)
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a[None], b[None], data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(a[None], b[None], data_range=1.0))


def keep(image: torch.Tensor, region: np.ndarray) -> torch.Tensor:
    """The image with everything outside `region` (bool HxW) set to 0."""
    return image * torch.from_numpy(region.astype(np.float32))[None]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten()[None], b.flatten()[None]))


def projected(features: Any) -> torch.Tensor:
    """CLIP's projected embeddings: a tensor (transformers 4.x) or the output's pooler_output (5.x)."""
    return (features if isinstance(features, torch.Tensor) else features.pooler_output).float().cpu()


@dataclass
class Clip:
    """Image and text embeddings of a local `CLIPModel` folder (projected, as `encode_image` / `encode_text`)."""

    model: Any
    processor: Any
    tokenizer: Any
    device: str = "cpu"

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> Clip:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(path).to(device).eval()
        return cls(model, CLIPImageProcessor.from_pretrained(path), CLIPTokenizer.from_pretrained(path), device)

    @torch.no_grad()
    def image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return projected(self.model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        limit = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return projected(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))


@dataclass
class Dino:
    """A local DINO ViT: its CLS embedding, and the last layer's keys for PIE-Bench's structure distance."""

    model: Any
    size: int
    device: str = "cpu"

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> Dino:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(path).to(device).eval()
        return cls(model, int(model.config.image_size), device)

    def pixels(self, images: Sequence[PIL.Image.Image], crop: bool = True) -> torch.Tensor:
        """Resize to 256/224 of the model's input and centre-crop (MagicBrush's transform), or resize to it."""
        from torchvision.transforms import v2 as T

        steps = [T.Resize(round(self.size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(self.size)] if crop \
            else [T.Resize((self.size, self.size), interpolation=T.InterpolationMode.BICUBIC)]
        tf = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), *steps, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return torch.stack([tf(im.convert("RGB")) for im in images]).to(self.device)

    @torch.no_grad()
    def embed(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        return self.model(pixel_values=self.pixels(images)).last_hidden_state[:, 0].float().cpu()

    def interpolate_kwargs(self) -> dict[str, bool]:
        """ViT needs `interpolate_pos_encoding` for a size it was not trained at (DINOv2 always interpolates)."""
        import inspect

        return {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters else {}

    def structure_pixels(self, image: PIL.Image.Image) -> torch.Tensor:
        """PnP-Inversion's structure-distance input: the 0-255 pixels themselves (it never divides by 255),
        short side resized to 224 (long side at most 480; bilinear, no antialias, as torchvision 0.13 did on
        tensors), then ImageNet-normalised."""
        from torchvision.transforms import v2 as T

        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
        x = T.functional.resize(x, STRUCTURE_SIDE, max_size=STRUCTURE_MAX_SIDE, antialias=False)
        return T.functional.normalize(x, IMAGENET_MEAN, IMAGENET_STD)[None].to(self.device)

    @torch.no_grad()
    def key_self_similarity(self, image: PIL.Image.Image) -> torch.Tensor:
        """Cosine self-similarity of the last layer's keys (CLS and patches, heads concatenated)."""
        name, proj = [(n, m) for n, m in self.model.named_modules() if n.endswith(("k_proj", "attention.key"))][-1]
        seen: list[torch.Tensor] = []
        handle = proj.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            self.model(pixel_values=self.structure_pixels(image), **self.interpolate_kwargs())
        finally:
            handle.remove()
        keys = seen[-1][0].float()
        norms = keys.norm(dim=-1, keepdim=True)
        return ((keys @ keys.T) / (norms @ norms.T).clamp(min=1e-8)).cpu()


@dataclass
class Lpips:
    """torchmetrics' LPIPS on SqueezeNet 1.1 (PIE-Bench's choice), its backbone read from a local file."""

    metric: Any
    device: str = "cpu"

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> Lpips:
        import os
        import tempfile

        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        from torchvision.models import SqueezeNet1_1_Weights

        if not os.path.isfile(path):
            raise ValueError(f"--lpips {path!r} is not a file; pass torchvision's SqueezeNet 1.1 weights ({WHAT['lpips']}).")
        # torchvision finds its weights in torch.hub's cache by file name: a cache holding only `path` means no download
        name = os.path.basename(SqueezeNet1_1_Weights.IMAGENET1K_V1.url)
        before = torch.hub.get_dir()
        with tempfile.TemporaryDirectory() as hub:
            os.makedirs(os.path.join(hub, "checkpoints"))
            os.symlink(os.path.abspath(path), os.path.join(hub, "checkpoints", name))
            torch.hub.set_dir(hub)
            try:
                metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
            except (RuntimeError, KeyError, ValueError) as err:
                raise ValueError(f"--lpips {path!r} is not a SqueezeNet 1.1 state dict: {str(err).splitlines()[0]}") from None
            finally:
                torch.hub.set_dir(before)
        return cls(metric.to(device).eval(), device)

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """LPIPS of two (3, H, W) images in [0, 1], fed in [-1, 1] as PnP-Inversion does."""
        return float(self.metric(a[None].to(self.device) * 2 - 1, b[None].to(self.device) * 2 - 1))


def clip_score(image_embed: torch.Tensor, text_embed: torch.Tensor) -> float:
    """torchmetrics' CLIPScore for one pair: 100 * max(cosine, 0)."""
    return 100.0 * max(cosine(image_embed, text_embed), 0.0)


def score_row(fmt: str, row: Any, output: PIL.Image.Image, clip: Clip | None, dino: Dino | None,
              lpips: Lpips | None = None) -> dict[str, float]:
    """The metrics of `fmt` for one output; metrics whose inputs (target, caption, mask, model) are absent are left out."""
    names = METRICS[fmt]
    out: dict[str, float] = {}
    ref = row.target if fmt in ("magicbrush", "folder") else row.source  # Emu Edit and PIE-Bench compare with the input
    if ref is not None:
        a, b = to_tensor(output, ref.size), to_tensor(ref)
        for name, fn in (("l1", l1), ("l2", l2), ("psnr", psnr), ("ssim", ssim)):
            if name in names:
                out[name] = fn(a, b)
    if row.mask is not None and any(n.startswith("bg_") for n in names):
        src, res = to_tensor(row.source), to_tensor(output, row.source.size)
        bg = ~row.mask
        out["bg_psnr"] = psnr(keep(res, bg), keep(src, bg))
        if "bg_mse" in names:
            out["bg_mse"] = l2(keep(res, bg), keep(src, bg))
            out["bg_ssim"] = ssim(keep(res, bg), keep(src, bg))
        if "bg_lpips" in names and lpips is not None:
            out["bg_lpips"] = lpips(keep(res, bg), keep(src, bg))
    if clip is not None:
        out.update(clip_metrics(names, row, output, ref, clip))
    if dino is not None:
        if "dino" in names and ref is not None:
            emb = dino.embed([output, ref])
            out["dino"] = cosine(emb[0], emb[1])
        if "structure_distance" in names:
            out["structure_distance"] = float(((dino.key_self_similarity(row.source) - dino.key_self_similarity(output)) ** 2).mean())
    return out


def clip_metrics(names: Sequence[str], row: Any, output: PIL.Image.Image, ref: PIL.Image.Image | None, clip: Clip) -> dict[str, float]:
    out: dict[str, float] = {}
    img = clip.image([output] + ([ref] if ref is not None else []))
    if "clip_i" in names and ref is not None:
        out["clip_i"] = cosine(img[0], img[1])
    caption = row.output_caption
    if caption and any(n in names for n in ("clip_t", "clip_out", "clip_whole", "clip_dir", "clip_edited")):
        texts = clip.text([caption, row.input_caption or caption])
        if "clip_t" in names:
            out["clip_t"] = cosine(img[0], texts[0])
        if "clip_out" in names:
            out["clip_out"] = cosine(img[0], texts[0])
        if "clip_whole" in names:
            out["clip_whole"] = clip_score(img[0], texts[0])
        if "clip_dir" in names and row.input_caption:
            source = img[1] if ref is row.source else clip.image([row.source])[0]
            out["clip_dir"] = cosine(img[0] - source, texts[0] - texts[1])
        if "clip_edited" in names and row.mask is not None:
            region = to_tensor(output, row.source.size)
            masked = PIL.Image.fromarray((keep(region, row.mask).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            out["clip_edited"] = clip_score(clip.image([masked])[0], texts[0])
    return out
