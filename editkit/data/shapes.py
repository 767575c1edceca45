"""The shapes benchmark generator: `generate(tasks, n, size, split)` -> Samples.

Determinism: the sample for (task, split, index) comes from
`numpy.random.default_rng([TASK_IDS[task], SPLITS[split].start + index, seed])`
and the canvas size, nothing else, so identical arguments give identical
bytes, and a sample does not depend on which other tasks are generated with
it. Splits use disjoint seed ranges (`SPLITS`), so no train scene seed is ever
a val or test scene seed.

Interleaving: with T tasks, the k-th generated sample (k counted from `start`)
is task `tasks[k % T]` at per-task index `k // T`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .families import BUILDERS, FAMILIES, TASK_ALIASES, TASK_FAMILY, TASK_IDS, TASKS, Ctx, Sample
from .scene import check_canvas_size

SPLIT_RANGE = 1_000_000_000
SPLITS: dict[str, range] = {
    "train": range(0, SPLIT_RANGE),
    "val": range(SPLIT_RANGE, 2 * SPLIT_RANGE),
    "test": range(2 * SPLIT_RANGE, 3 * SPLIT_RANGE),
}


def parse_tasks(tasks: str | Iterable[str], argument: str = "tasks") -> list[str]:
    """Task names from a spec: "cv,edit", "all", "segment,recolour", or a list of such names.

    Family names expand to their tasks; aliases map to canonical names; the
    order is kept and duplicates dropped.
    """
    if isinstance(tasks, str):
        items = [t for t in (p.strip() for p in tasks.split(",")) if t]
    else:
        items = []
        for t in tasks:
            if not isinstance(t, str):
                raise ValueError(f"`{argument}` must hold task or family names (strings); got {t!r}.")
            items += [p.strip() for p in t.split(",") if p.strip()]
    if not items:
        raise ValueError(f"`{argument}` is empty; expected a comma-separated list of families {sorted(FAMILIES)} or tasks.")
    out: list[str] = []
    for raw in items:
        key = raw.lower().replace("-", "_").replace(" ", "_")
        if key == "all":
            names = list(TASKS)
        elif key in FAMILIES:
            names = list(FAMILIES[key])
        elif key in TASK_FAMILY:
            names = [key]
        elif key in TASK_ALIASES:
            names = [TASK_ALIASES[key]]
        else:
            raise ValueError(
                f"`{argument}` names an unknown task {raw!r}; expected 'all', a family "
                f"{sorted(FAMILIES)} or a task {sorted(TASKS)}."
            )
        for n in names:
            if n not in out:
                out.append(n)
    return out


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}; got {split!r}.")
    return split


def sample_rng(task: str, split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator behind one sample."""
    check_split(split)
    if not 0 <= index < SPLIT_RANGE:
        raise ValueError(f"`index` must be in [0, {SPLIT_RANGE}); got {index}.")
    return np.random.default_rng([TASK_IDS[task], SPLITS[split].start + int(index), int(seed)])


def make_sample(task: str, split: str = "train", index: int = 0, size: int = 64, *, seed: int = 0,
                heldout: bool = False, paraphrase: bool = False) -> Sample:
    """One sample: a pure function of (task, split, index, size, seed, heldout, paraphrase).

    `paraphrase=True` (training) also draws instructions from `phrasings.PARAPHRASES`; the scene is the same."""
    names = parse_tasks([task], "task")
    if len(names) != 1:
        raise ValueError(f"`task` must name a single task (not a family or list); got {task!r}.")
    task = names[0]
    size = check_canvas_size(size, "size")
    rng = sample_rng(task, split, index, seed)
    prng = random.Random(int(rng.integers(2**63)))
    s = BUILDERS[task](Ctx(rng=rng, prng=prng, canvas=size, heldout=heldout, paraphrase=paraphrase))
    s.split, s.index = split, int(index)
    s.ground_truth["sample"] = {"task": task, "split": split, "index": int(index), "seed": int(seed),
                                "size": size, "heldout_phrasing": bool(heldout)}
    return s


def generate(tasks: str | Iterable[str], n: int, size: int = 64, split: str = "train", seed: int = 0, *,
             heldout: bool = False, start: int = 0) -> Iterator[Sample]:
    """Yield `n` samples interleaving `tasks` round-robin (see module doc).

    Arguments are checked before the first sample: unknown task names,
    n <= 0, sizes outside [48, 512] and unknown splits raise ValueError.
    `heldout=True` draws instructions from the held-out phrasings.
    """
    names = parse_tasks(tasks)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"`n` must be a positive integer number of samples; got {n!r}.")
    size = check_canvas_size(size, "size")
    check_split(split)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"`start` must be a non-negative integer; got {start!r}.")
    if (int(start) + int(n) - 1) // len(names) >= SPLIT_RANGE:
        raise ValueError(f"`n`={n} with `start`={start} runs past the split's {SPLIT_RANGE} seeds per task.")
    return _iterate(names, int(n), size, split, int(seed), heldout, int(start))


def _iterate(names: list[str], n: int, size: int, split: str, seed: int, heldout: bool, start: int) -> Iterator[Sample]:
    t = len(names)
    for k in range(start, start + n):
        yield make_sample(names[k % t], split, k // t, size, seed=seed, heldout=heldout)


def describe_tasks() -> dict[str, Any]:
    """Families -> tasks, for help texts."""
    return {f: list(ts) for f, ts in FAMILIES.items()}
