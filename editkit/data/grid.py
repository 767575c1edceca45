"""A picture grid of the shapes benchmark: one sample per task, source | target | references.

    python -m editkit.data.grid docs/shapes_grid.png
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .families import TASKS
from .shapes import make_sample, parse_tasks

_BG = (255, 255, 255)
_INK = (20, 20, 20)


def make_grid(tasks: str | Sequence[str] = "all", size: int = 64, split: str = "val", index: int = 0,
              scale: int = 2, columns: int = 2, label_width: int = 230, max_refs: int = 2) -> Image.Image:
    """One row per task: label (task, family, instruction), source, target, then reference images."""
    names = parse_tasks(tasks)
    cell = size * scale
    pad = 6
    row_h = cell + 2 * pad
    panel_w = label_width + (2 + max_refs) * (cell + pad) + pad
    rows_per_col = -(-len(names) // columns)
    header = 22
    grid = Image.new("RGB", (columns * panel_w, header + rows_per_col * row_h), _BG)
    draw = ImageDraw.Draw(grid)
    for c in range(columns):
        x0 = c * panel_w + label_width
        for j, title in enumerate(["source", "target"] + [f"ref {k + 1}" for k in range(max_refs)]):
            draw.text((x0 + j * (cell + pad) + pad, 5), title, fill=_INK)
    for k, task in enumerate(names):
        s = make_sample(task, split, index, size)
        col, row = divmod(k, rows_per_col)
        x, y = col * panel_w, header + row * row_h
        draw.line([(x, y), (x + panel_w - pad, y)], fill=(210, 210, 210))
        lines = [f"{s.task}  ({s.family})"] + textwrap.wrap(s.instruction, 36)[:6]
        draw.multiline_text((x + pad, y + pad), "\n".join(lines), fill=_INK, spacing=2)
        imgs = [s.source, s.target] + s.references[:max_refs]
        for j, im in enumerate(imgs):
            grid.paste(im.resize((cell, cell), Image.NEAREST), (x + label_width + j * (cell + pad) + pad, y + pad))
    return grid


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/shapes_grid.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(TASKS).save(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
