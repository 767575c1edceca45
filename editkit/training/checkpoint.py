"""Checkpoints that lose nothing.

A checkpoint is written to `checkpoint-N.tmp-<pid>` and renamed to
`checkpoint-N` only once complete, so a crash mid-write never leaves a folder
that looks complete. `meta.json` records the step and a fingerprint of the
model setup, so a resume into a different model fails before any step runs.

Crash safety (tests/test_crash_resume.py kills the trainer with SIGKILL):
- `meta.json` is written last, inside the temporary folder; only folders named
  exactly `checkpoint-N` *with* a `meta.json` count, so a half-written one is
  never picked as latest.
- a folder being replaced or pruned is first renamed to `*.trash-<pid>`
  (atomic), then deleted: a crash mid-delete leaves no half-deleted folder
  that still looks complete.
- leftovers (`*.tmp-*`, `*.trash-*`) are removed by the next save.

`EDITKIT_TEST_PAUSE=<where>:<step>` (tests only; where = "checkpoint" or
"step") makes the trainer stop at that point, write `paused-<where>-<step>`
into the output folder and sleep, so a test can kill it at a known place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

_NAME = re.compile(r"^checkpoint-(\d+)$")
META = "meta.json"


def _public(obj):
    """Drop private keys such as diffusers' `_use_default_values`: a list built from a set, whose
    order changes with the interpreter's hash seed, so it would differ between the run and its resume."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    return obj


def fingerprint(parts: dict) -> str:
    """A short hash of what must match for a resume to make sense (method, model sizes)."""
    return hashlib.sha256(json.dumps(_public(parts), sort_keys=True, default=str).encode()).hexdigest()[:16]


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / META).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`None` -> no resume; "latest" -> newest complete checkpoint (or None); else a checkpoint path."""
    if resume in (None, "", "none", "None"):
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / META).is_file():
        raise ValueError(f"checkpoint.resume={resume}: not a complete editkit checkpoint (no {META}).")
    return path


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META).read_text())


def check_compatible(path: Path, expected_fingerprint: str) -> dict:
    meta = read_meta(path)
    if meta.get("fingerprint") != expected_fingerprint:
        raise ValueError(
            f"checkpoint {path} was written for a different model setup "
            f"(method {meta.get('method')!r}, fingerprint {meta.get('fingerprint')}); this run has fingerprint "
            f"{expected_fingerprint}. Point checkpoint.resume elsewhere or use a new output_dir."
        )
    return meta


def pause_for_test(where: str, step: int, output_dir: str | Path) -> None:
    """Stop here when `EDITKIT_TEST_PAUSE` is "<where>:<step>" (crash tests); a no-op otherwise."""
    if os.environ.get("EDITKIT_TEST_PAUSE") != f"{where}:{step}":
        return
    marker = Path(output_dir) / f"paused-{where}-{step}"
    marker.write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("EDITKIT_TEST_PAUSE_SECONDS", "600")))


def _discard(path: Path) -> None:
    """Delete a folder so that no crash can leave it half-deleted under its own name."""
    trash = path.with_name(f"{path.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)  # a leftover of an earlier crash with the same pid
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, meta: dict, keep: int) -> Path:
    """Write accelerate state + meta atomically, then prune to the newest `keep`."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp-{os.getpid()}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        pause_for_test("checkpoint", step, root)
        (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(root)[:-keep]:
            _discard(old)
        for stale in [*root.glob("checkpoint-*.tmp-*"), *root.glob("checkpoint-*.trash-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
