"""Crash-safe training: SIGKILL mid-checkpoint and mid-step, then resume.

The trainer is stopped at a known place with `EDITKIT_TEST_PAUSE=<where>:<step>`
(editkit/training/checkpoint.py: it writes `paused-<where>-<step>` and sleeps),
then killed with SIGKILL, so every kill lands exactly where the test says.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editkit.training.checkpoint import latest_checkpoint, list_checkpoints, resolve_resume

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train" / "train.py"

TINY = [
    "method=instructcv",
    "data.size=48",
    "data.num_samples=16",
    "data.tasks=segment,recolor",
    "train.batch_size=2",
    "train.lr=1e-3",
    "train.max_steps=6",
    "checkpoint.every=2",
    "checkpoint.keep=2",
    "log.tensorboard=false",
    "log.every=1",
    "model.tiny.unet_channels=[8,16]",
    "model.tiny.unet_layers_per_block=1",
    "model.tiny.text_hidden=16",
    "model.tiny.text_layers=1",
    "model.tiny.vae_channels=[8,16]",
    "model.tiny.vae_mid_attention=false",
    "model.tiny.norm_groups=4",
    "model.train_text_encoder=true",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _train(out: Path, *extra: str, pause: str | None = None) -> subprocess.Popen:
    env = dict(ENV)
    env.pop("EDITKIT_TEST_PAUSE", None)
    if pause:
        env["EDITKIT_TEST_PAUSE"] = pause
    log = open(out.parent / f"{out.name}-{pause or 'run'}.log", "w")
    return subprocess.Popen([sys.executable, str(TRAIN), f"output_dir={out}", *TINY, *extra], env=env, stdout=log, stderr=subprocess.STDOUT)


def _kill_when_paused(proc: subprocess.Popen, marker: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode} before reaching {marker.name}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"trainer never reached {marker.name}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {**load_file(ckpt / "model.safetensors"), **{f"text.{k}": v for k, v in load_file(ckpt / "model_1.safetensors").items()}}


def _same(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_sigkill_during_checkpoint_and_step_then_resume(tmp_path):
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    reference = _train(ref)

    # 1. killed while checkpoint-4 is being written (state saved, meta not yet, not renamed)
    proc = _train(crash, pause="checkpoint:4")
    _kill_when_paused(proc, crash / "paused-checkpoint-4")
    half = list(crash.glob("checkpoint-4.tmp-*"))
    assert len(half) == 1 and (half[0] / "model.safetensors").is_file()  # the kill really hit mid-write
    assert not (half[0] / "meta.json").exists() and not (crash / "checkpoint-4").exists()
    assert [s for s, _ in list_checkpoints(crash)] == [2]
    assert latest_checkpoint(crash) == crash / "checkpoint-2"
    # a half-written folder is refused even when named explicitly, and even under the final name
    with pytest.raises(ValueError, match="not a complete editkit checkpoint"):
        resolve_resume(str(half[0]), crash)
    fake = crash / "checkpoint-9"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"\0" * 16)
    assert latest_checkpoint(crash) == crash / "checkpoint-2"
    fake.rename(crash / "ignored-checkpoint-9")

    # 2. resumed from checkpoint-2, killed in the middle of step 5 (after backward, before the update)
    proc = _train(crash, "checkpoint.resume=latest", pause="step:5")
    _kill_when_paused(proc, crash / "paused-step-5")
    assert [s for s, _ in list_checkpoints(crash)] == [2, 4]
    assert not list(crash.glob("checkpoint-*.tmp-*")), "the next save cleans up the half-written folder"

    # 3. resumed from checkpoint-4 to the end
    proc = _train(crash, "checkpoint.resume=latest")
    assert proc.wait(timeout=300) == 0, (crash.parent / "crash-run.log").read_text()[-3000:]
    log = (crash.parent / "crash-run.log").read_text()
    assert "resumed from" in log and "checkpoint-4 at step 4" in log
    assert reference.wait(timeout=300) == 0, (ref.parent / "ref-run.log").read_text()[-3000:]

    # nothing was lost: every checkpoint and the export equal the uninterrupted run's
    assert [s for s, _ in list_checkpoints(crash)] == [4, 6] == [s for s, _ in list_checkpoints(ref)]
    for step in (4, 6):
        diff = _same(_weights(ref / f"checkpoint-{step}"), _weights(crash / f"checkpoint-{step}"))
        assert diff <= 1e-6, f"checkpoint-{step} differs from the uninterrupted run by {diff}"
    final_ref = load_file(ref / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    final_crash = load_file(crash / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    assert _same(final_ref, final_crash) <= 1e-6
    # and training really moved the weights between the checkpoints
    assert _same(_weights(crash / "checkpoint-4"), _weights(crash / "checkpoint-6")) > 1e-5
    assert not list(crash.glob("checkpoint-*.t*-*"))


def test_replacing_a_checkpoint_never_leaves_a_half_deleted_one(tmp_path):
    from accelerate import Accelerator

    from editkit.training.checkpoint import save_checkpoint

    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(3, 3))
    for step in (1, 2, 2, 3):  # step 2 written twice: the old one is moved aside, then deleted
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(acc, tmp_path, step, {"fingerprint": "x"}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    w = load_file(tmp_path / "checkpoint-2" / "model.safetensors")["weight"]
    assert torch.equal(w, torch.full((3, 3), 2.0))


def test_fingerprint_ignores_private_config_keys():
    # diffusers' `_use_default_values` is built from a set: its order changes with PYTHONHASHSEED,
    # which made every resume in a new process fail with "different model setup"
    from editkit.training.checkpoint import fingerprint

    a = {"method": "m", "unet": {"_use_default_values": ["x", "y"], "block_out_channels": [8, 16]}}
    b = {"method": "m", "unet": {"_use_default_values": ["y", "x"], "block_out_channels": [8, 16]}}
    c = {"method": "m", "unet": {"_use_default_values": ["x", "y"], "block_out_channels": [16, 8]}}
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
