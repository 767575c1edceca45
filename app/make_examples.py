"""Regenerate the app's examples from the shapes benchmark (test split).

    python -m editkit.app.make_examples [--size 64]

Writes `app/examples/*.png` and `app/examples/examples.json` (one row per
example: image file, instruction, method, task preset, label). The files are
committed, so the app does not depend on the generator at run time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .methods import get_method

OUT = Path(__file__).resolve().parent / "examples"

# (benchmark task, index in the test split, app preset)
CHOICES = (
    ("segment", 0, "segment"),
    ("detect", 0, "detect"),
    ("depth", 0, "depth"),
    ("classify", 1, "classify"),
    ("recolor", 0, "free edit"),
)


def main(argv: list[str] | None = None) -> int:
    from editkit.data import make_sample

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    spec = get_method("instructcv")
    rows = []
    for task, index, preset_name in CHOICES:
        s = make_sample(task, "test", index, args.size)
        query = s.ground_truth.get("query", {})
        label = query.get("label", "")
        preset = spec.preset(preset_name)
        # classify: the app decodes red/green answers, so use its own template with the benchmark's label
        instruction = preset.instruction(label) if task == "classify" else s.instruction
        name = f"{task}_{index}.png"
        s.source.save(OUT / name)
        rows.append({"image": name, "instruction": instruction, "method": spec.key, "preset": preset_name, "label": label})
    (OUT / "examples.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {len(rows)} examples to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
