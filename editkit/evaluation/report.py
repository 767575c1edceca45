"""Results files and tables: `write_results`, `format_table`, `compare_table`, `describe`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SYSTEMS = ("model", "identity", "classical")


def jsonable(obj: Any) -> Any:
    """Plain json types; NaN and infinities become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write `evaluate`'s results as json (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------- table


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    v = float(v)
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def format_table(results: dict[str, Any]) -> str:
    """One row per task: task | n | metric (headline, with its direction) | model | identity | classical."""
    header = ("task", "n", "metric", "model", "identity", "classical")
    rows = []
    for task, r in results["tasks"].items():
        head = r["headline"]
        metric = f"{head} {'↑' if r['higher_is_better'] else '↓'}"
        vals = [_fmt(r["scores"].get(system, {}).get(head)) if system in r["scores"] else "-" for system in SYSTEMS]
        rows.append((task, str(r["n"]), metric, *vals))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def compare_table(runs: dict[str, dict[str, Any]], metrics: Sequence[str] | None = None, *, baselines: bool = True) -> str:
    """Markdown table of several `evaluate` results side by side (a model and its ablations, or two methods).

    `runs`: column name -> results. One row per (task, metric) for the tasks every run has; `metrics`
    default to each task's headline. The identity and classical baselines of the first run are appended
    as columns when `baselines`."""
    if not runs:
        raise ValueError("`runs` is empty: give at least one results dict.")
    names = list(runs)
    tasks = [t for t in runs[names[0]]["tasks"] if all(t in r["tasks"] for r in runs.values())]
    base = [b for b in ("identity", "classical") if baselines]
    lines = ["| task | metric | " + " | ".join(names + base) + " |", "|---|---|" + "---:|" * (len(names) + len(base))]
    for task in tasks:
        first = runs[names[0]]["tasks"][task]
        for metric in metrics or [first["headline"]]:
            cells = [_fmt(r["tasks"][task]["scores"].get("model", {}).get(metric)) for r in runs.values()]
            cells += [_fmt(first["scores"].get(b, {}).get(metric)) for b in base]
            if all(c == "-" for c in cells):
                continue  # a metric this task does not report
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(results: dict[str, Any]) -> str:
    """One line naming what was evaluated."""
    c = results["config"]
    parts = ["baselines only" if c.get("baselines_only") else f"method {c['method']}"]
    if c.get("model"):
        parts.append(f"model {c['model']}")
    parts += [f"split {c['split']}", f"n {c['n']}/task", f"size {c['size']}"]
    if not c.get("baselines_only"):
        parts += [f"steps {c['steps']}", f"seed {c['seed']}"]
        parts += [f"{k}={v}" for k, v in (c.get("call_args") or {}).items()]
    if c.get("heldout_phrasings"):
        parts.append("held-out phrasings")
    return " | ".join(parts)


