"""Paired editing data for training: shapes on the fly, a folder with metadata.jsonl, or `datasets`.

Every item is a dict: index, source and target (PIL RGB), instruction,
auxiliary_prompt, task. Batches are planned deterministically from
(seed, micro-step): each global batch is split across processes, so a run
on N processes sees exactly the samples a single process with N times the
batch would, and a resumed run continues the same stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Sampler

from editkit.images import load_image

# Column names (diffusers' IP2P training script defaults first).
SOURCE_COLUMNS = ("input_image", "file_name", "source")
TARGET_COLUMNS = ("edited_image", "target")
PROMPT_COLUMNS = ("edit_prompt", "instruction", "prompt")


def _column(columns, names: tuple[str, ...], what: str, where: str) -> str:
    """The first of `names` present in `columns`."""
    for n in names:
        if n in columns:
            return n
    raise ValueError(f"{where}: no {what} column; expected one of {list(names)}, found {sorted(columns)}")


class ShapesPairs(Dataset):
    """The shapes benchmark, generated on the fly.

    Without `task_weights` item i is task tasks[i % T], index i // T. With weights
    ({task: w}, unlisted tasks 1) a round of sum(w) items holds w items of each task,
    interleaved, and every task's indices still run 0, 1, 2, ... without repeats.
    """

    def __init__(self, tasks: str, num_samples: int, size: int, split: str = "train", seed: int = 0, heldout: bool = False,
                 task_weights: dict[str, int] | None = None, paraphrase: bool = False):
        from editkit.data.shapes import parse_tasks

        self.tasks = parse_tasks(tasks, "data.tasks")
        self.num_samples, self.size, self.split, self.seed, self.heldout = int(num_samples), int(size), split, int(seed), heldout
        self.paraphrase = bool(paraphrase)
        if self.num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {num_samples}")
        weights = dict(task_weights or {})
        for name, w in weights.items():
            if name not in self.tasks:
                raise ValueError(f"data.task_weights names '{name}', which is not in data.tasks {self.tasks}")
            if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                raise ValueError(f"data.task_weights.{name} must be a whole number >= 1, got {w!r}")
        w = [weights.get(t, 1) for t in self.tasks]
        # slot -> (task, its k-th slot of the round): round r takes every task whose weight exceeds r
        self.slots = [(t, r) for r in range(max(w)) for t, wt in zip(self.tasks, w) if wt > r]
        self.weight = dict(zip(self.tasks, w))

    def __len__(self) -> int:
        return self.num_samples

    def image_size(self, i: int) -> tuple[int, int]:
        return (self.size, self.size)

    def task_index(self, i: int) -> tuple[str, int]:
        """The task of item i and its index within that task's samples."""
        task, k = self.slots[i % len(self.slots)]
        return task, (i // len(self.slots)) * self.weight[task] + k

    def __getitem__(self, i: int) -> dict:
        from editkit.data.shapes import make_sample

        task, index = self.task_index(i)
        s = make_sample(task, self.split, index, self.size, seed=self.seed, heldout=self.heldout, paraphrase=self.paraphrase)
        return {"index": i, "source": s.source, "target": s.target, "instruction": s.instruction, "auxiliary_prompt": s.auxiliary_prompt, "task": s.task,
                "references": list(s.references)}


class FolderPairs(Dataset):
    """A folder of images plus `metadata.jsonl` (one JSON object per line)."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        meta = self.root / "metadata.jsonl"
        if not meta.is_file():
            raise ValueError(f"data.path={self.root}: no metadata.jsonl (one JSON line per pair with input_image, edited_image, edit_prompt).")
        self.rows = []
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{meta}:{n}: not valid JSON ({err})") from None
            where = f"{meta}:{n}"
            present = {k for k, v in row.items() if v is not None}
            self.rows.append(
                {
                    "source": row[_column(present, SOURCE_COLUMNS, "source image", where)],
                    "target": row[_column(present, TARGET_COLUMNS, "target image", where)],
                    "instruction": row[_column(present, PROMPT_COLUMNS, "instruction", where)],
                    "auxiliary_prompt": row.get("auxiliary_prompt") or "",
                    "task": row.get("task") or "",
                }
            )
        if not self.rows:
            raise ValueError(f"{meta} has no rows.")
        missing = [f for r in self.rows for f in (r["source"], r["target"]) if not (self.root / f).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} image file(s) listed in {meta} are missing, e.g. {missing[:5]}")

    def __len__(self) -> int:
        return len(self.rows)

    def image_size(self, i: int) -> tuple[int, int]:
        with PIL.Image.open(self.root / self.rows[i]["source"]) as im:
            return im.size

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        return {
            "index": i,
            "source": load_image(self.root / r["source"], "source"),
            "target": load_image(self.root / r["target"], "target"),
            "instruction": r["instruction"],
            "auxiliary_prompt": r["auxiliary_prompt"],
            "task": r["task"],
        }


class HFPairs(Dataset):
    """A `datasets` dataset: a `save_to_disk` folder, or a hub name (needs a network)."""

    def __init__(self, path: str):
        import datasets

        self.ds = datasets.load_from_disk(path) if Path(path).is_dir() else datasets.load_dataset(path, split="train")
        if isinstance(self.ds, datasets.DatasetDict):
            self.ds = self.ds["train"]
        cols, where = set(self.ds.column_names), f"dataset {path}"
        self.src = _column(cols, SOURCE_COLUMNS, "source image", where)
        self.tgt = _column(cols, TARGET_COLUMNS, "target image", where)
        self.prm = _column(cols, PROMPT_COLUMNS, "instruction", where)

    def __len__(self) -> int:
        return len(self.ds)

    def image_size(self, i: int) -> tuple[int, int]:
        return load_image(self.ds[i][self.src]).size

    def __getitem__(self, i: int) -> dict:
        row = self.ds[i]
        return {
            "index": i,
            "source": load_image(row[self.src], "source"),
            "target": load_image(row[self.tgt], "target"),
            "instruction": row[self.prm],
            "auxiliary_prompt": row.get("auxiliary_prompt") or "",
            "task": row.get("task") or "",
        }


def build_dataset(data_cfg, seed: int, split: str = "train") -> Dataset:
    if data_cfg.source == "shapes":
        weights = OmegaConf.to_container(data_cfg.task_weights) if isinstance(data_cfg.task_weights, DictConfig) else data_cfg.task_weights
        return ShapesPairs(data_cfg.tasks, data_cfg.num_samples, data_cfg.size, split, seed, bool(data_cfg.heldout_phrasings), weights,
                           bool(data_cfg.paraphrases))
    if data_cfg.source == "folder":
        return FolderPairs(data_cfg.path)
    return HFPairs(data_cfg.path)


def assign_buckets(dataset: Dataset, buckets: bool, bucket_sizes: list) -> tuple[list[int], list[tuple[int, int]]]:
    """Bucket id per item and the bucket sizes (w, h).

    Without buckets all items must share one size: mixed sizes are an error
    before any step runs (square-resizing them would distort the aspect ratio).
    """
    sizes = [tuple(dataset.image_size(i)) for i in range(len(dataset))] if not isinstance(dataset, ShapesPairs) else [dataset.image_size(0)] * len(dataset)
    if not buckets:
        distinct = sorted(set(sizes))
        if len(distinct) > 1:
            raise ValueError(
                f"the training images have {len(distinct)} different sizes (e.g. {distinct[:4]}); "
                "set data.buckets=true (with data.bucket_sizes) to train on mixed sizes."
            )
        return [0] * len(sizes), [distinct[0]]
    table = [(int(w), int(h)) for w, h in bucket_sizes]
    ratios = np.log([w / h for w, h in table])
    ids = [int(np.argmin(np.abs(ratios - np.log(w / h)))) for w, h in sizes]
    return ids, table


def fit_to(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Resize to cover `size` (w, h), keeping the aspect ratio, then centre-crop."""
    if image.size == size:
        return image
    w, h = size
    scale = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((rw, rh), PIL.Image.Resampling.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    return image.crop((left, top, left + w, top + h))


class BatchPlan:
    """Deterministic global batches: per epoch, shuffle each bucket, cut global batches, shuffle them."""

    def __init__(self, bucket_ids: list[int], global_batch: int, seed: int):
        self.bucket_ids = np.asarray(bucket_ids)
        self.global_batch, self.seed = global_batch, seed
        per_bucket = np.bincount(self.bucket_ids)
        self.batches_per_epoch = int(sum(n // global_batch for n in per_bucket))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"no bucket holds a full global batch of {global_batch} samples (bucket sizes {per_bucket.tolist()}); "
                "lower train.batch_size or add data."
            )
        self._epoch, self._batches = -1, []

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for b in np.unique(self.bucket_ids):
                idx = rng.permutation(np.flatnonzero(self.bucket_ids == b))
                batches += [idx[k : k + self.global_batch] for k in range(0, len(idx) - self.global_batch + 1, self.global_batch)]
            order = rng.permutation(len(batches))
            self._epoch, self._batches = epoch, [batches[o] for o in order]
        return self._batches

    def global_batch_at(self, micro_step: int) -> np.ndarray:
        epoch, k = divmod(micro_step, self.batches_per_epoch)
        return self._epoch_batches(epoch)[k]


class RankBatches(Sampler):
    """This process's share of the global batches from `start` to `stop` micro-steps."""

    def __init__(self, plan: BatchPlan, start: int, stop: int, rank: int, world: int):
        self.plan, self.start, self.stop, self.rank, self.world = plan, start, stop, rank, world
        self.per_rank = plan.global_batch // world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for m in range(self.start, self.stop):
            g = self.plan.global_batch_at(m)
            yield g[self.rank * self.per_rank : (self.rank + 1) * self.per_rank].tolist()


def sample_seed(seed: int, step: int, index: int) -> int:
    """The seed of everything random about one sample at one step (noise, timestep, dropout, flip)."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] >> 1)


def sample_generators(seed: int, step: int, indices: torch.Tensor | list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(sample_seed(seed, step, int(i))) for i in indices]
