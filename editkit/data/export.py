"""Write samples as a training folder: PNGs plus `metadata.jsonl`.

Layout::

    OUT/metadata.jsonl
    OUT/images/000000_source.png     input image (also `file_name`)
    OUT/images/000000_target.png     edited image
    OUT/images/000000_ref0.png ...   reference images, if any
    OUT/images/000000_mask.png       mask, if any
    OUT/shapes_info.json             how the folder was made (optional)

Each metadata row has: `file_name` (the source image, so `datasets`'
imagefolder loads it as the "image" column), `input_image`, `edited_image`,
`edit_prompt`, `auxiliary_prompt`, `task`, `family`, `reference_images`
(list of file names), `mask_image` (file name or null), `split`, `index`,
and `ground_truth`, a JSON-encoded string (rows of different tasks have
different ground-truth fields, which a single Arrow schema cannot hold;
`load_metadata` decodes it back to a dict). All paths are relative to OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .families import TASK_FAMILY, Sample

METADATA = "metadata.jsonl"
IMAGES = "images"
INFO = "shapes_info.json"
PNG_COMPRESS_LEVEL = 1  # fast; PNG is lossless at any level


@dataclass
class ExportResult:
    out_dir: Path
    count: int
    seconds: float
    tasks: dict[str, int] = field(default_factory=dict)


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty folder unless `overwrite`; with `overwrite`, only a previous export is cleared."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out_dir`={str(out)!r} exists and is not a folder; expected a new or empty folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"`out_dir`={str(out)!r} exists and is not empty; expected a new or empty folder "
                "(pass overwrite=True / --overwrite to replace a previous export)."
            )
        if not (out / METADATA).is_file():
            raise ValueError(
                f"`out_dir`={str(out)!r} is not empty and holds no {METADATA}, so it is not a previous export; "
                "refusing to clear it even with overwrite. Expected a new, empty or previously exported folder."
            )
    return out


def _clear(out: Path) -> None:
    for name in (METADATA, INFO):
        p = out / name
        if p.is_file():
            p.unlink()
    if (out / IMAGES).is_dir():
        shutil.rmtree(out / IMAGES)


def _save(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def sample_row(sample: Sample, k: int) -> tuple[dict[str, Any], list[tuple[Image.Image, str]]]:
    """The metadata row of a sample written as item `k`, and the (image, relative path) pairs to save."""
    stem = f"{IMAGES}/{k:06d}"
    files = [(sample.source, f"{stem}_source.png"), (sample.target, f"{stem}_target.png")]
    refs = []
    for j, ref in enumerate(sample.references):
        refs.append(f"{stem}_ref{j}.png")
        files.append((ref, refs[-1]))
    mask = None
    if sample.mask is not None:
        mask = f"{stem}_mask.png"
        files.append((sample.mask, mask))
    row = {
        "file_name": files[0][1],
        "input_image": files[0][1],
        "edited_image": files[1][1],
        "edit_prompt": sample.instruction,
        "auxiliary_prompt": sample.auxiliary_prompt,
        "task": sample.task,
        "family": sample.family,
        "reference_images": refs,
        "mask_image": mask,
        "split": sample.split,
        "index": int(sample.index),
        "ground_truth": json.dumps(sample.ground_truth, sort_keys=True, separators=(",", ":")),
    }
    return row, files


def export(samples: Iterable[Sample], out_dir: str | os.PathLike, *, overwrite: bool = False,
           progress: bool = True, total: int | None = None, info: dict[str, Any] | None = None) -> ExportResult:
    """Write `samples` to `out_dir` (see module doc). Returns counts and the time taken.

    The folder must be new or empty; with `overwrite=True` a previous export
    (a folder holding metadata.jsonl) is cleared first. Nothing is written
    before these checks pass.
    """
    out = check_out_dir(out_dir, overwrite)
    t0 = time.perf_counter()
    if overwrite and out.is_dir():
        _clear(out)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"shapes -> {out}", unit="sample")
    counts: dict[str, int] = {}
    k = 0
    with open(out / METADATA, "w", encoding="utf-8") as f:
        for sample in samples:
            row, files = sample_row(sample, k)
            for img, rel in files:
                _save(img, out / rel)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[sample.task] = counts.get(sample.task, 0) + 1
            k += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if info is not None:
        (out / INFO).write_text(json.dumps({**info, "count": k, "task_counts": counts}, indent=2, sort_keys=True) + "\n")
    return ExportResult(out_dir=out, count=k, seconds=time.perf_counter() - t0, tasks=counts)


def load_metadata(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of `metadata.jsonl`, with `ground_truth` decoded to a dict."""
    path = Path(out_dir) / METADATA
    if not path.is_file():
        raise ValueError(f"`out_dir`={str(out_dir)!r} has no {METADATA}; expected a shapes export folder.")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if isinstance(row.get("ground_truth"), str):
                    row["ground_truth"] = json.loads(row["ground_truth"])
                rows.append(row)
    return rows


def load_samples(out_dir: str | os.PathLike) -> Iterator[Sample]:
    """Samples back from an export folder (images loaded as RGB / L; `arrays` left empty:
    use `arrays_from_ground_truth(sample.ground_truth)`)."""
    out = Path(out_dir)

    def _open(rel: str, mode: str = "RGB") -> Image.Image:
        with Image.open(out / rel) as im:
            return im.convert(mode)

    for row in load_metadata(out):
        yield Sample(
            task=row["task"],
            family=row.get("family", TASK_FAMILY.get(row["task"], "")),
            source=_open(row["file_name"]),
            target=_open(row["edited_image"]),
            instruction=row["edit_prompt"],
            auxiliary_prompt=row.get("auxiliary_prompt", ""),
            references=[_open(r) for r in row.get("reference_images") or []],
            mask=_open(row["mask_image"], "L") if row.get("mask_image") else None,
            ground_truth=row["ground_truth"],
            split=row.get("split", ""),
            index=int(row.get("index", -1)),
        )
