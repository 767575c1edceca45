"""Checkpoints that lose nothing.

A checkpoint is written to `checkpoint-N.tmp-<pid>` and renamed to
`checkpoint-N` only once complete, so a crash mid-write never leaves a folder
that looks complete. `meta.json` records the step and a fingerprint of the
model setup, so a resume into a different model fails before any step runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

_NAME = re.compile(r"^checkpoint-(\d+)$")
META = "meta.json"


def fingerprint(parts: dict) -> str:
    """A short hash of what must match for a resume to make sense (method, model sizes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("checkpoint-*.tmp-*"):
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
