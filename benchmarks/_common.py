"""Shared helpers for the benchmark scripts: peak memory, timing statistics, loading
editkit's pipelines with or without the editable install, and model geometries.

Peak memory on CPU is the kernel's resident-set high-water mark (VmHWM in
/proc/self/status), reset before each measured call by writing "5" to
/proc/self/clear_refs. Unlike tracemalloc it sees torch's tensor storage, and
unlike a sampling thread it cannot miss a short spike. glibc keeps freed heap
memory resident, which would hide the second of two runs' peak behind the
first; `pin_malloc` therefore re-executes the script once with a fixed mmap
threshold so every large tensor is mapped and unmapped on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:  # `editkit` from this checkout, installed or not
    sys.path.insert(0, str(REPO))

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def pin_malloc() -> None:
    """Re-run this script once with glibc's mmap threshold fixed (see the module doc)."""
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.environ.update(MALLOC_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


class PeakRSS:
    """`with PeakRSS() as p: ...` then `p.peak_mb` (high-water RSS during the block)
    and `p.delta_mb` (that minus the RSS at entry).

    Uses the kernel's VmHWM where it can be reset; otherwise a 2 ms sampling thread."""

    def __init__(self) -> None:
        self.peak_mb = self.start_mb = self.delta_mb = float("nan")
        self.method = ""

    def __enter__(self) -> "PeakRSS":
        self.start_mb = rss_mb() or float("nan")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampling"
            self._stop = threading.Event()
            self._max = self.start_mb
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_mb() or 0.0)
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        if self.method == "VmHWM":
            self.peak_mb = (_status_kb("VmHWM") or 0) / 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._max, rss_mb() or 0.0)
        self.delta_mb = self.peak_mb - self.start_mb


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def interleaved_pairs(run_a: Callable[[], Any], run_b: Callable[[], Any], pairs: int, warmup: int = 1) -> dict[str, Any]:
    """Time and measure `run_a` (editkit) against `run_b` (reference) in alternating order
    (AB, BA, AB, ...), so drift on a shared machine hits both alike. Ratios are a / b per pair."""
    for _ in range(warmup):
        run_a()
        run_b()
    rows = []
    for i in range(pairs):
        order = [("a", run_a), ("b", run_b)] if i % 2 == 0 else [("b", run_b), ("a", run_a)]
        row: dict[str, float] = {}
        for tag, fn in order:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                fn()
                row[f"{tag}_s"] = time.perf_counter() - t0
            row[f"{tag}_peak_mb"] = mem.peak_mb
            row[f"{tag}_delta_mb"] = mem.delta_mb
        rows.append(row)
    time_ratios = [r["a_s"] / r["b_s"] for r in rows]
    mem_ratios = [r["a_delta_mb"] / r["b_delta_mb"] for r in rows if r["b_delta_mb"] > 0]
    return {
        "pairs": rows,
        "a_s_median": median([r["a_s"] for r in rows]),
        "b_s_median": median([r["b_s"] for r in rows]),
        "time_ratio_median": median(time_ratios),
        "time_ratio_min": min(time_ratios),
        "time_ratio_max": max(time_ratios),
        "a_delta_mb_median": median([r["a_delta_mb"] for r in rows]),
        "b_delta_mb_median": median([r["b_delta_mb"] for r in rows]),
        "mem_ratio_median": median(mem_ratios) if mem_ratios else float("nan"),
    }


def try_import(name: str) -> Any | None:
    """The module, or None when it (or something it needs) is not there yet."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def load_pipelines_module(method: str) -> Any | None:
    """`editkit.pipelines.<method>`, falling back to `pipelines/<method>.py` by path when
    editkit is not installed (only the editable install maps `editkit.pipelines` to pipelines/)."""
    mod = try_import(f"editkit.pipelines.{method}")
    if mod is not None:
        return mod
    path = REPO / "pipelines" / f"{method}.py"
    if not path.is_file():
        return None
    name = f"editkit_pipelines_{method}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError:
        del sys.modules[name]
        return None
    return module


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for pkg in ("diffusers", "transformers", "accelerate", "xformers"):
        mod = try_import(pkg)
        info[pkg] = getattr(mod, "__version__", None) if mod else None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(name_or_path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(name_or_path)
    if not path.is_absolute() and path.parent == Path("."):
        path = RESULTS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A plain-text table (also valid Markdown)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


# -- model geometries ------------------------------------------------------------------

SD15_UNET = dict(
    in_channels=8,  # InstructPix2Pix / InstructCV: noisy latent + image latent
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    sample_size=64,
)

SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)

CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)

SD3_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
)


def ip2p_components(scale: str, seed: int = 0, device: str = "cpu", dtype=None) -> dict[str, Any]:
    """Components for InstructCVPipeline / StableDiffusionInstructPix2PixPipeline.

    scale: "tiny" (editkit.testing), "mid" (SD1.5 UNet block widths with 1 layer per
    block, a 3-level SD-like VAE, a 4-layer CLIP-L-width text encoder) or "full"
    (SD1.5 UNet, SD VAE, CLIP-L-size text encoder), all randomly initialised."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from editkit.testing import sd_euler_ancestral, tiny_clip_tokenizer, tiny_instructcv_components

    if scale == "tiny":
        comps = tiny_instructcv_components(seed=seed)
        return {k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.nn.Module) and dtype else v) for k, v in comps.items()}
    if scale not in ("mid", "full"):
        raise ValueError(f"`scale` must be 'tiny', 'mid' or 'full', got {scale!r}.")
    unet_cfg = dict(SD15_UNET)
    vae_cfg = dict(SD_VAE)
    text_cfg = dict(CLIP_L_TEXT)
    if scale == "mid":
        unet_cfg["layers_per_block"] = 1
        text_cfg["num_hidden_layers"] = 4
        vae_cfg.update(block_out_channels=(64, 128, 256, 256), layers_per_block=1)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg).eval()
        vae = AutoencoderKL(**vae_cfg).eval()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, **text_cfg)
        ).eval()
    if dtype is not None:
        unet, vae, text_encoder = unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tiny_clip_tokenizer(), "scheduler": sd_euler_ancestral()}


def reference_ip2p(components: dict[str, Any]):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def editkit_ip2p(components: dict[str, Any]):
    mod = load_pipelines_module("instructcv")
    if mod is None:
        raise ImportError("pipelines/instructcv.py could not be imported")
    pipe = mod.InstructCVPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_image(size: int, seed: int = 0):
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    # smooth colour fields rather than white noise, so VAE tiles see image-like content
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return PIL.Image.fromarray(small).resize((size, size), PIL.Image.BICUBIC)
