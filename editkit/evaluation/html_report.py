"""A picture of a benchmark run: an HTML page (source | output | target | mask per row, sortable by any metric,
worst first) and a PNG contact sheet of the worst rows, both from a `run_benchmark` output folder.

    editkit eval --dataset DIR --format folder --report outputs/eval/folder/report.html
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageDraw

from .bench import read_done
from .bench_metrics import LOWER_IS_BETTER

VIEWS = ("source", "output", "target", "mask")
SORT_JS = """
function sortBy(col, numeric) {
  const body = document.querySelector('tbody');
  const rows = Array.from(body.rows);
  const th = document.querySelectorAll('th')[col];
  const dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  th.dataset.dir = dir;
  rows.sort((a, b) => {
    let x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    if (numeric) { x = x === '' ? Infinity : parseFloat(x); y = y === '' ? Infinity : parseFloat(y); }
    return (x < y ? -1 : x > y ? 1 : 0) * (dir === 'asc' ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
}
"""


def worst_first(records: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Scored records ordered from the worst value of `metric` to the best; rows without it last."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def key(r: dict[str, Any]) -> float:
        v = r["metrics"].get(metric)
        return math.inf if v is None or not math.isfinite(v) else -sign * v

    return sorted(records, key=key)


def metric_names(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m for r in records for m in r["metrics"]))


def write_html(run_dir: str | Path, path: str | Path, title: str = "editkit evaluation") -> Path:
    """The sortable page for the run in `run_dir`; images are linked relative to the page."""
    run_dir, path = Path(run_dir), Path(path)
    done = list(read_done(run_dir / "results.jsonl").values())
    records = [r for r in done if "metrics" in r]
    bad = [r for r in done if "bad" in r]
    names = metric_names(records)
    records = worst_first(records, names[0]) if names else records
    rel = Path(os.path.relpath(run_dir / "thumbs", path.parent))
    head = "".join(f"<th onclick=\"sortBy({i}, {str(i >= 3).lower()})\">{html.escape(h)}</th>"
                   for i, h in enumerate(["id", "instruction", "images", *names]))
    body = []
    for r in records:
        imgs = "".join(f'<figure><img src="{html.escape(str(rel / r["views"][v]))}" alt="{v}"><figcaption>{v}</figcaption></figure>'
                       for v in VIEWS if v in r.get("views", {}))
        cells = [f'<td data-v="{html.escape(str(r["id"]))}">{html.escape(str(r["id"]))}</td>',
                 f'<td data-v="{html.escape(r.get("instruction", ""))}">{html.escape(r.get("instruction", ""))}</td>',
                 f'<td data-v="">{imgs}</td>']
        for m in names:
            v = r["metrics"].get(m)
            cells.append(f'<td data-v="{"" if v is None else v}">{"-" if v is None else f"{v:.4g}"}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    bad_list = "".join(f"<li>{html.escape(str(b['id']))}: {html.escape(b['bad'])}</li>" for b in bad)
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}figure{display:inline-block;margin:2px}img{width:128px;image-rendering:pixelated}"
            "th{cursor:pointer;background:#eee}td{border-top:1px solid #ddd;padding:4px;vertical-align:top}</style>"
            f"<h1>{html.escape(title)}</h1><p>{len(records)} scored rows, worst first by {html.escape(names[0]) if names else '-'};"
            f" click a column to sort.</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<h2>Skipped rows ({len(bad)})</h2><ul>{bad_list}</ul><script>{SORT_JS}</script>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def write_contact_sheet(run_dir: str | Path, path: str | Path, rows: int = 16, cell: int = 128) -> Path:
    """A PNG grid of the worst `rows` rows by the first metric: source | output | target | mask, with the value."""
    run_dir = Path(run_dir)
    records = [r for r in read_done(run_dir / "results.jsonl").values() if "metrics" in r]
    names = metric_names(records)
    records = (worst_first(records, names[0]) if names else records)[:rows]
    label = 16
    sheet = PIL.Image.new("RGB", (cell * len(VIEWS), max(1, len(records)) * (cell + label)), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for i, r in enumerate(records):
        y = i * (cell + label)
        value = r["metrics"].get(names[0]) if names else None
        draw.text((2, y + 2), f"{r['id']}  {names[0] if names else ''} {'' if value is None else f'{value:.4g}'}", fill="black")
        for j, v in enumerate(VIEWS):
            if v in r.get("views", {}):
                with PIL.Image.open(run_dir / "thumbs" / r["views"][v]) as im:
                    sheet.paste(im.convert("RGB").resize((cell, cell), PIL.Image.NEAREST), (j * cell, y + label))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Path(path)

