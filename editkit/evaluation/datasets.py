"""Readers for the community's editing benchmarks: MagicBrush, Emu Edit, PIE-Bench, and a plain folder.

    rows = read_rows("MagicBrush/test", "magicbrush")     # the benchmark's own layout
    rows = read_rows("magicbrush_dev", "magicbrush", split="dev")  # a `datasets` save_to_disk folder
    rows = read_rows("emu_edit/data", "emu_edit", split="test")    # parquet files as the hub serves them

Every reader yields `EditRow`s whose images are still raw (a path, bytes or a PIL image); `load_row` opens
them and raises `BadRow` (missing file, unreadable image, size mismatch, empty instruction) so the runner can
report the row by id and go on.

Layouts (from each benchmark's dataset card and repository):
    magicbrush  columns img_id, turn_index, source_img, mask_img, instruction, target_img (hub, train/dev);
                or the test zip: edit_sessions.json {img_id: [{input, mask, output, instruction}, ...]} with
                images/<img_id>/<file>, and local_descriptions.json {img_id: {output file: caption}} when present.
                Turn k > 1 takes turn k-1's ground-truth output as its source; the mask's white region is the
                area to edit. Rows of one img_id form a chain (multi-turn).
    emu_edit    columns instruction, image, task, split, idx, hash, input_caption, output_caption; no target.
    pie_bench   mapping_file.json {id: {image_path, original_prompt, editing_prompt, editing_instruction,
                editing_type_id, mask}} with images under annotation_images/; the mask is run-length pairs
                (start, length) over a 512x512 raster, 1 = the edited region, with the image border set to 1
                as the benchmark does; "[" and "]" mark the edited words in the prompts and are dropped.
    folder      metadata.jsonl, one object per line: input_image, edited_image, edit_prompt (the trainer's
                columns), optional mask, input_caption, output_caption, id, task.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from editkit.training.data import PROMPT_COLUMNS, SOURCE_COLUMNS, TARGET_COLUMNS

FORMATS = ("magicbrush", "emu_edit", "pie_bench", "folder")
PIE_SIZE = 512


class BadRow(ValueError):
    """A row that cannot be scored: its id and why."""


@dataclass
class EditRow:
    id: str
    instruction: str
    source: Any  # path (relative to root), bytes, a `datasets` image dict or a PIL image
    target: Any = None
    mask: Any = None  # image-like, or a bool array (PIE-Bench)
    input_caption: str = ""
    output_caption: str = ""
    chain: str = ""  # multi-turn session id (MagicBrush img_id)
    turn: int = 1
    task: str = ""
    root: Path | None = None


@dataclass
class LoadedRow:
    id: str
    instruction: str
    source: PIL.Image.Image
    target: PIL.Image.Image | None
    mask: np.ndarray | None  # bool HxW, True = edited region
    input_caption: str = ""
    output_caption: str = ""
    chain: str = ""
    turn: int = 1
    task: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- opening rows


def open_image(raw: Any, root: Path | None, what: str, row_id: str) -> PIL.Image.Image:
    """A raw image value as an RGB PIL image, or BadRow naming the row and the column."""
    try:
        if isinstance(raw, PIL.Image.Image):
            return raw.convert("RGB")
        if isinstance(raw, dict):  # a `datasets` Image value left undecoded: {"bytes": ..., "path": ...}
            raw = raw.get("bytes") or raw.get("path")
        if isinstance(raw, (bytes, bytearray)):
            with PIL.Image.open(io.BytesIO(raw)) as im:
                return im.convert("RGB")
        if isinstance(raw, (str, Path)) and str(raw):
            path = Path(raw) if root is None or Path(raw).is_absolute() else root / raw
            if not path.is_file():
                raise BadRow(f"row {row_id}: {what} file {str(path)!r} is missing")
            with PIL.Image.open(path) as im:
                return im.convert("RGB")
    except BadRow:
        raise
    except Exception as err:  # PIL raises several types for broken files
        raise BadRow(f"row {row_id}: {what} is not a readable image ({type(err).__name__}: {err})") from None
    raise BadRow(f"row {row_id}: no {what}")


def load_row(row: EditRow) -> LoadedRow:
    """Open a row's images and check it: instruction present, target and mask the source's size."""
    if not str(row.instruction or "").strip():
        raise BadRow(f"row {row.id}: empty instruction")
    source = open_image(row.source, row.root, "source image", row.id)
    target = None if row.target is None else open_image(row.target, row.root, "target image", row.id)
    if target is not None and target.size != source.size:
        raise BadRow(f"row {row.id}: target is {target.size[0]}x{target.size[1]}, source {source.size[0]}x{source.size[1]}")
    mask = None
    if row.mask is not None:
        if isinstance(row.mask, np.ndarray):
            mask = row.mask.astype(bool)
        else:
            mask = np.asarray(open_image(row.mask, row.root, "mask", row.id).convert("L")) > 127
        if mask.shape != (source.size[1], source.size[0]):
            raise BadRow(f"row {row.id}: mask is {mask.shape[1]}x{mask.shape[0]}, source {source.size[0]}x{source.size[1]}")
    return LoadedRow(row.id, row.instruction, source, target, mask, row.input_caption, row.output_caption,
                     row.chain, row.turn, row.task)


# --------------------------------------------------------------------------- tables (datasets / parquet / arrow)


def is_table(path: Path) -> bool:
    return path.suffix in (".parquet", ".arrow") or (path.is_dir() and (
        any((path / f).is_file() for f in ("dataset_dict.json", "state.json")) or any(path.glob("*.parquet"))))


def read_table(path: Path, split: str | None) -> Any:
    """A `datasets.Dataset` from a save_to_disk folder, parquet file(s) or an arrow file; images left undecoded."""
    import datasets

    if path.suffix == ".arrow":
        ds = datasets.Dataset.from_file(str(path))
    elif path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("*.parquet"))
        if split and path.is_dir():
            files = [f for f in files if Path(f).name.startswith(f"{split}-")] or files
        ds = datasets.Dataset.from_parquet(files)
    else:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            if split not in ds:
                raise ValueError(f"--dataset {path}: pick a split with --split, one of {sorted(ds)} (got {split!r}).")
            ds = ds[split]
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def need_columns(ds: Any, columns: tuple[str, ...], fmt: str, path: Path) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"--dataset {path} (--format {fmt}) lacks column(s) {missing}; it has {ds.column_names}.")


# --------------------------------------------------------------------------- the four formats


def magicbrush_rows(path: Path, split: str | None) -> Iterator[EditRow]:
    if is_table(path):
        ds = read_table(path, split)
        need_columns(ds, ("img_id", "turn_index", "source_img", "instruction", "target_img"), "magicbrush", path)
        for r in ds:
            yield EditRow(f"{r['img_id']}_{r['turn_index']}", r["instruction"], r["source_img"], r["target_img"],
                          r.get("mask_img"), chain=str(r["img_id"]), turn=int(r["turn_index"]))
        return
    sessions_file = path / "edit_sessions.json"
    if not sessions_file.is_file():
        raise ValueError(f"--dataset {path} (--format magicbrush): expected edit_sessions.json (the test zip's layout), "
                         "a `datasets` save_to_disk folder or parquet files.")
    captions: dict[str, dict[str, str]] = {}
    for name in ("local_descriptions.json", "local_captions.json"):
        if (path / name).is_file():
            captions = json.loads((path / name).read_text())
            break
    for img_id, turns in json.loads(sessions_file.read_text()).items():
        for k, t in enumerate(turns, 1):
            yield EditRow(f"{img_id}_{k}", t.get("instruction", ""), f"images/{img_id}/{t['input']}",
                          f"images/{img_id}/{t['output']}", f"images/{img_id}/{t['mask']}" if t.get("mask") else None,
                          output_caption=captions.get(str(img_id), {}).get(t["output"], ""),
                          chain=str(img_id), turn=k, root=path)


def emu_edit_rows(path: Path, split: str | None) -> Iterator[EditRow]:
    ds = read_table(path, split)
    need_columns(ds, ("instruction", "image", "input_caption", "output_caption"), "emu_edit", path)
    for i, r in enumerate(ds):
        yield EditRow(str(r.get("idx", i)), r["instruction"], r["image"], None, None, r["input_caption"] or "",
                      r["output_caption"] or "", task=r.get("task") or "")


def pie_mask(encoded: list[int], shape: tuple[int, int] = (PIE_SIZE, PIE_SIZE)) -> np.ndarray:
    """PIE-Bench's run-length mask: (start, length) pairs over the flat raster; the border counts as edited."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for start, length in zip(encoded[0::2], encoded[1::2]):
        flat[start:min(start + length, flat.size)] = True
    mask = flat.reshape(shape)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def pie_bench_rows(path: Path, split: str | None) -> Iterator[EditRow]:
    mapping = path if path.is_file() else path / "mapping_file.json"
    if not mapping.is_file():
        raise ValueError(f"--dataset {path} (--format pie_bench): expected mapping_file.json next to annotation_images/.")
    root = mapping.parent / "annotation_images"
    clean = lambda s: (s or "").replace("[", "").replace("]", "")  # noqa: E731
    for key, r in json.loads(mapping.read_text()).items():
        yield EditRow(str(key), r.get("editing_instruction", ""), r.get("image_path", ""), None,
                      pie_mask(r["mask"]) if r.get("mask") else None, clean(r.get("original_prompt")),
                      clean(r.get("editing_prompt")), task=str(r.get("editing_type_id", "")), root=root)


def first_present(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((row[n] for n in names if row.get(n) is not None), None)


def folder_rows(path: Path, split: str | None) -> Iterator[EditRow]:
    meta = path / "metadata.jsonl"
    if not meta.is_file():
        raise ValueError(f"--dataset {path} (--format folder): no metadata.jsonl (one JSON line per pair with "
                         "input_image, edited_image, edit_prompt).")
    for n, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta}:{n}: not valid JSON ({err})") from None
        yield EditRow(str(r.get("id", n)), first_present(r, PROMPT_COLUMNS) or "", first_present(r, SOURCE_COLUMNS),
                      first_present(r, TARGET_COLUMNS), r.get("mask"), r.get("input_caption") or "",
                      r.get("output_caption") or "", task=r.get("task") or "", root=path)


READERS = {"magicbrush": magicbrush_rows, "emu_edit": emu_edit_rows, "pie_bench": pie_bench_rows, "folder": folder_rows}


def read_rows(path: str | Path, fmt: str, split: str | None = None) -> list[EditRow]:
    """All rows of a benchmark (images still unopened), in the benchmark's order."""
    if fmt not in READERS:
        raise ValueError(f"--format must be one of {FORMATS}; got {fmt!r}.")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--dataset {str(path)!r} does not exist.")
    rows = list(READERS[fmt](path, split))
    if not rows:
        raise ValueError(f"--dataset {path} (--format {fmt}) has no rows.")
    return rows
