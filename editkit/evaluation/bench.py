"""Run a method over a community benchmark (`editkit.evaluation.datasets`) and score it (`bench_metrics`).

    from editkit.evaluation.bench import pipeline_editor, run_benchmark
    rows = read_rows("MagicBrush/test", "magicbrush")
    summary = run_benchmark(pipeline_editor(pipe, "instructcv", steps=20), rows, "magicbrush", "outputs/mb",
                            clip=Clip.load("clip-vit-base-patch32"), dino=Dino.load("dino-vits16"))

    editkit eval --dataset MagicBrush/test --format magicbrush --clip CLIP_DIR --dino DINO_DIR --report mb.html

Resumable: every scored row is appended to OUT/results.jsonl as it finishes (with its output image under
OUT/images/), and a rerun with the same OUT scores only the rows that file lacks. Bad rows are recorded
there too, with their reason, and skipped. OUT/summary.json holds the means, the counts and the bad rows.

MagicBrush's two settings: single-turn (default) edits every turn from its ground-truth source and scores
every turn; `multi_turn=True` edits each session's turns in a chain, each from the model's previous output,
and scores the final turn against the final ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from editkit.data import Sample

from .adapters import ADAPTERS
from .bench_metrics import METRICS, Clip, Dino, Lpips, missing_models, score_row
from .datasets import BadRow, EditRow, LoadedRow, load_row
from .harness import positive_int

Editor = Callable[[LoadedRow, PIL.Image.Image, int], PIL.Image.Image]  # (row, source to edit, seed) -> output
THUMB = 256


class PipelineEditor:
    """Calls the method's pipeline through its evaluation adapter: per row (`editor(row, source, seed)`) and,
    for `run_benchmark(batch_size=N)`, N rows of one size in one pipeline call (`editor.batch(...)`)."""

    def __init__(self, pipe: Any, method: str, *, steps: int, guidance: float | None = None,
                 image_guidance: float | None = None, call_args: dict[str, Any] | None = None) -> None:
        self.pipe, self.adapter, self.steps = pipe, ADAPTERS[method], steps
        self.guidance, self.image_guidance, self.call_args = guidance, image_guidance, dict(call_args or {})

    def batch(self, rows: list[LoadedRow], sources: list[PIL.Image.Image], seeds: list[int]) -> list[PIL.Image.Image]:
        samples = [Sample(task=r.task, family="benchmark", source=src, target=r.target or src, instruction=r.instruction,
                          auxiliary_prompt="", mask=None) for r, src in zip(rows, sources)]
        return list(self.adapter(self.pipe, samples, seeds=seeds, steps=self.steps, guidance=self.guidance,
                                 image_guidance=self.image_guidance, **self.call_args))

    def __call__(self, row: LoadedRow, source: PIL.Image.Image, seed: int) -> PIL.Image.Image:
        return self.batch([row], [source], [seed])[0]


def pipeline_editor(pipe: Any, method: str, *, steps: int, guidance: float | None = None,
                    image_guidance: float | None = None, call_args: dict[str, Any] | None = None) -> PipelineEditor:
    """An editor that calls the method's pipeline through its evaluation adapter (batched where asked)."""
    return PipelineEditor(pipe, method, steps=steps, guidance=guidance, image_guidance=image_guidance, call_args=call_args)


def thumbnail(image: PIL.Image.Image, path: Path) -> str:
    im = image.copy()
    im.thumbnail((THUMB, THUMB))
    im.save(path)
    return path.name


def save_views(out: Path, key: str, row: LoadedRow, output: PIL.Image.Image) -> dict[str, str]:
    """Full-size output plus thumbnails of source / output / target / mask, for the report."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    output.save(out / "images" / f"{key}.png")
    views = {"source": thumbnail(row.source, out / "thumbs" / f"{key}_source.png"),
             "output": thumbnail(output, out / "thumbs" / f"{key}_output.png")}
    if row.target is not None:
        views["target"] = thumbnail(row.target, out / "thumbs" / f"{key}_target.png")
    if row.mask is not None:
        views["mask"] = thumbnail(PIL.Image.fromarray(row.mask.astype(np.uint8) * 255), out / "thumbs" / f"{key}_mask.png")
    return views


def shapes_recorder(out: str | Path) -> Callable[[str, list[Sample], list[Any]], None]:
    """An `evaluate(on_outputs=...)` hook writing OUT/results.jsonl + thumbnails like `run_benchmark`, so the
    shapes harness gets the same report; each sample is scored by its PSNR to the target image."""
    from editkit.metrics import as_rgb, psnr

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("")

    def record(task: str, samples: list[Sample], outputs: list[Any]) -> None:
        with (out / "results.jsonl").open("a") as f:
            for s, o in zip(samples, outputs):
                image = PIL.Image.fromarray(as_rgb(o))
                row = LoadedRow(f"{task}_{s.index}", s.instruction, s.source, s.target, None, task=task)
                rec = {"id": row.id, "task": task, "instruction": s.instruction,
                       "metrics": {"psnr": psnr(np.asarray(image), np.asarray(s.target.convert("RGB")))},
                       "views": save_views(out, row.id, row, image)}
                f.write(json.dumps(rec) + "\n")

    return record


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """id -> record of a results.jsonl (a torn last line from an interrupted run is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["id"]] = rec
    return done


def chains(rows: list[EditRow]) -> list[list[EditRow]]:
    """Rows grouped by session (MagicBrush img_id), turns in order; a row without a chain is its own."""
    groups: dict[str, list[EditRow]] = {}
    for r in rows:
        groups.setdefault(r.chain or r.id, []).append(r)
    return [sorted(g, key=lambda r: r.turn) for g in groups.values()]


def unit_key(unit: list[EditRow], multi_turn: bool) -> str:
    return (unit[0].chain or unit[0].id) if multi_turn else unit[0].id


def scored_record(fmt: str, key: str, final: LoadedRow, output: PIL.Image.Image, turns: int, out: Path,
                  clip: Clip | None, dino: Dino | None, lpips: Lpips | None) -> dict[str, Any]:
    return {"id": key, "turns": turns, "task": final.task, "instruction": final.instruction,
            "metrics": score_row(fmt, final, output, clip, dino, lpips), "views": save_views(out, key, final, output)}


def run_unit(edit: Editor, unit: list[EditRow], fmt: str, seed: int, out: Path, clip: Clip | None,
             dino: Dino | None, multi_turn: bool, lpips: Lpips | None = None) -> dict[str, Any]:
    """One scored record: a single row, or (multi-turn) a whole chain scored at its last turn."""
    key = unit_key(unit, multi_turn)
    try:
        loaded = [load_row(r) for r in unit]
    except BadRow as err:
        return {"id": key, "bad": str(err)}
    current = loaded[0].source
    for k, row in enumerate(loaded):  # one row in single-turn; the chain, each turn from the last output, in multi-turn
        current = edit(row, current, seed + k)
    final = loaded[-1]
    if multi_turn:
        final = LoadedRow(**{**final.__dict__, "source": loaded[0].source})
    return scored_record(fmt, key, final, current, len(loaded), out, clip, dino, lpips)


def batched_records(edit: Any, todo: list[tuple[int, list[EditRow]]], batch_size: int, fmt: str, seed: int, out: Path,
                    clip: Clip | None, dino: Dino | None, lpips: Lpips | None) -> Iterator[dict[str, Any]]:
    """Single-turn records, edited `batch_size` rows of one source size per `edit.batch` call; bad rows as they load."""
    pending: list[tuple[int, LoadedRow]] = []

    def flush() -> Iterator[dict[str, Any]]:
        rows = [r for _, r in pending]
        outputs = edit.batch(rows, [r.source for r in rows], [seed + i for i, _ in pending])
        pending.clear()
        for row, output in zip(rows, outputs):
            yield scored_record(fmt, row.id, row, output, 1, out, clip, dino, lpips)

    for i, unit in todo:
        try:
            row = load_row(unit[0])
        except BadRow as err:
            yield {"id": unit[0].id, "bad": str(err)}
            continue
        if pending and pending[0][1].source.size != row.source.size:
            yield from flush()
        pending.append((i, row))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def summarize(records: list[dict[str, Any]], fmt: str, missing: dict[str, str], multi_turn: bool) -> dict[str, Any]:
    scored = [r for r in records if "metrics" in r]
    names = [m for m in METRICS[fmt] if any(m in r["metrics"] for r in scored)]
    means = {m: float(np.mean([r["metrics"][m] for r in scored if m in r["metrics"]])) for m in names}
    counts = {m: sum(m in r["metrics"] for r in scored) for m in names}
    bad = [{"id": r["id"], "why": r["bad"]} for r in records if "bad" in r]
    return {"format": fmt, "setting": "multi_turn" if multi_turn else "single_turn", "n_scored": len(scored),
            "n_bad": len(bad), "metrics": means, "n_per_metric": counts, "not_computed": missing, "bad_rows": bad}


def run_benchmark(edit: Editor, rows: list[EditRow], fmt: str, out: str | Path, *, clip: Clip | None = None,
                  dino: Dino | None = None, multi_turn: bool = False, seed: int = 0, limit: int | None = None,
                  progress: bool = True, lpips: Lpips | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Edit and score every row (or chain), appending to OUT/results.jsonl; returns and writes the summary.

    `batch_size` > 1 with an editor that has a `batch` method (`pipeline_editor`'s): single-turn rows of one
    source size go through the model together; each row keeps its own seed, so the outputs are the ones a
    batch of 1 gives (editkit's pipelines are batch-independent; tests/test_conformance.py)."""
    if multi_turn and fmt != "magicbrush":
        raise ValueError(f"--multi-turn is MagicBrush's setting; --format {fmt} has no edit sessions.")
    batch_size = positive_int(batch_size, "batch_size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    units = chains(rows) if multi_turn else [[r] for r in rows]
    units = units[:limit] if limit else units
    results = out / "results.jsonl"
    done = read_done(results)
    todo = [(i, u) for i, u in enumerate(units) if unit_key(u, multi_turn) not in done]
    if batch_size > 1 and not multi_turn and hasattr(edit, "batch"):
        records = batched_records(edit, todo, batch_size, fmt, seed, out, clip, dino, lpips)
    else:
        records = (run_unit(edit, unit, fmt, seed + i, out, clip, dino, multi_turn, lpips) for i, unit in todo)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=f"eval {fmt}", unit="row")
    with results.open("a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[rec["id"]] = rec
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    keys = [unit_key(u, multi_turn) for u in units]
    summary = summarize([done[k] for k in keys if k in done], fmt, missing_models(fmt, clip, dino, lpips), multi_turn)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
