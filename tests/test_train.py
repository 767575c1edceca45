"""The shared trainer: config checks, exact resume, data-parallel equivalence, LoRA export, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train" / "train.py"

sys.path.insert(0, str(REPO / "train"))
import train as trainer  # noqa: E402

from editkit.training.config import load_config  # noqa: E402

TINY = [
    "method=instructcv",
    "data.size=48",
    "data.num_samples=64",
    "data.tasks=segment,recolor",
    "train.batch_size=4",
    "train.lr=1e-3",
    "log.tensorboard=false",
    "log.every=1",
    "model.tiny.unet_channels=[16,32]",
    "model.tiny.unet_layers_per_block=1",
    "model.tiny.text_hidden=32",
    "model.tiny.text_layers=1",
    "model.tiny.vae_channels=[16,32]",
    "model.tiny.vae_mid_attention=false",
    "model.train_text_encoder=true",
]


def _run(out: Path, *extra: str) -> None:
    assert trainer.main([f"output_dir={out}", *TINY, *extra]) == 0


def _state(out: Path, step: int) -> dict:
    ckpt = out / f"checkpoint-{step}"
    weights = load_file(ckpt / "model.safetensors")
    text = load_file(ckpt / "model_1.safetensors")
    optim = torch.load(ckpt / "optimizer.bin", weights_only=True)
    return {"unet": weights, "text": text, "optim": optim}


def _assert_same(a, b, atol=1e-6):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k], atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y, atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    else:
        assert a == b


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown config key 'train.max_step'.*did you mean 'train.max_steps'"):
        load_config(None, ["train.max_step=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ValueError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=fp8"])
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML would read `no` as false
    cfg = load_config(REPO / "configs/train/instructcv_shapes.yaml", ["train.max_steps=7"])
    assert cfg.train.max_steps == 7 and cfg.method == "instructcv"


def test_recipe_base_is_loaded_first_and_overridden(tmp_path):
    (tmp_path / "parent.yaml").write_text("method: pixwizard\ntrain:\n  batch_size: 32\n  lr: 3.0e-4\ndata:\n  tasks: cv\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  lr: 1.0e-3\ndata:\n  tasks: restore\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.batch_size=8"])
    assert (cfg.method, cfg.train.lr, cfg.data.tasks, cfg.train.batch_size) == ("pixwizard", 1.0e-3, "restore", 8)
    assert "base" not in cfg
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="names itself as a base"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="base: missing.yaml"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "typo.yaml").write_text("base: parent.yaml\ntrain:\n  max_step: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'train.max_step'"):
        load_config(tmp_path / "typo.yaml")


def test_resume_continues_exactly(tmp_path):
    _run(tmp_path / "full", "train.max_steps=4", "checkpoint.every=4", "train.ema=true", "train.ema_decay=0.9")
    _run(tmp_path / "split", "train.max_steps=2", "checkpoint.every=2", "train.ema=true", "train.ema_decay=0.9")
    _run(tmp_path / "split", "train.max_steps=4", "checkpoint.every=2", "train.ema=true", "train.ema_decay=0.9", "checkpoint.resume=latest")
    full, split = _state(tmp_path / "full", 4), _state(tmp_path / "split", 4)
    _assert_same(full, split)
    # the run really trained: weights moved from the step-2 checkpoint
    early = _state(tmp_path / "split", 2)
    assert max((full["unet"][k] - early["unet"][k]).abs().max().item() for k in full["unet"]) > 1e-4
    # the export loads as a pipeline
    from editkit.pipelines import InstructCVPipeline

    pipe = InstructCVPipeline.from_pretrained(tmp_path / "full" / "final")
    assert pipe.unet.config.block_out_channels == [16, 32]


def test_latent_cache_gives_the_same_training(tmp_path):
    # encoding in chunks of 64 instead of batches of 4 changes float rounding; a large
    # Adam eps keeps updates linear in the gradient so that cannot flip near-zero updates
    linear = ("train.max_steps=2", "checkpoint.every=2", "train.adam_eps=1e-2", "train.lr=1e-2")
    _run(tmp_path / "plain", *linear)
    _run(tmp_path / "cached", *linear, "data.cache=true")
    _assert_same(_state(tmp_path / "plain", 2)["unet"], _state(tmp_path / "cached", 2)["unet"], atol=1e-5)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # a large Adam eps keeps updates linear in the gradient, so float reassociation in the
    # all-reduce cannot flip the sign of near-zero updates (plain Adam amplifies that to ~lr)
    common = [*TINY, "train.max_steps=2", "checkpoint.every=2", "train.adam_eps=1e-2", "train.lr=1e-2"]
    one = subprocess.run(
        [sys.executable, str(TRAIN), f"output_dir={tmp_path / 'one'}", *common, "train.batch_size=4"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(TRAIN),
         f"output_dir={tmp_path / 'two'}", *common, "train.batch_size=2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one_w, two_w = _state(tmp_path / "one", 2), _state(tmp_path / "two", 2)
    _assert_same(one_w["unet"], two_w["unet"], atol=1e-5)
    _assert_same(one_w["text"], two_w["text"], atol=1e-5)


def test_lora_export_loads_with_load_lora_weights(tmp_path):
    _run(tmp_path / "lora", "train.max_steps=2", "checkpoint.every=0", "train.lora.rank=4", "model.train_text_encoder=false")
    from editkit.pipelines import InstructCVPipeline

    final = tmp_path / "lora" / "final"
    assert (final / "lora" / "pytorch_lora_weights.safetensors").is_file()
    pipe = InstructCVPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    img = PIL.Image.new("RGB", (32, 32), (200, 30, 30))
    base = pipe("x", image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    pipe.load_lora_weights(final / "lora")
    lora_keys = [k for k, _ in pipe.unet.named_parameters() if "lora" in k]
    assert lora_keys
    with_lora = pipe("x", image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert base.shape == with_lora.shape and np.isfinite(with_lora).all()


def _folder(root: Path, sizes, missing=False) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i, (w, h) in enumerate(sizes):
        PIL.Image.new("RGB", (w, h), (i * 10, 0, 0)).save(root / f"in{i}.png")
        if not (missing and i == 0):
            PIL.Image.new("RGB", (w, h), (0, i * 10, 0)).save(root / f"out{i}.png")
        rows.append({"input_image": f"in{i}.png", "edited_image": f"out{i}.png", "edit_prompt": "make it green"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def test_bad_data_and_resume_fail_before_any_step(tmp_path):
    folder = ["data.source=folder", "train.max_steps=1", "checkpoint.every=0"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metadata.jsonl"):
        _run(tmp_path / "o1", *folder, f"data.path={tmp_path / 'empty'}")
    with pytest.raises(ValueError, match=r"1 image file\(s\) listed .* missing, e.g. \['out0.png'\]"):
        _run(tmp_path / "o2", *folder, f"data.path={_folder(tmp_path / 'miss', [(32, 32)] * 4, missing=True)}")
    mixed = _folder(tmp_path / "mixed", [(32, 32), (32, 32), (64, 32), (64, 32)])
    with pytest.raises(ValueError, match="different sizes.*data.buckets=true"):
        _run(tmp_path / "o3", *folder, f"data.path={mixed}")
    # with buckets the same folder trains (batch 2 per bucket)
    _run(tmp_path / "o4", *folder, f"data.path={mixed}", "data.buckets=true", "data.bucket_sizes=[[32,32],[64,32]]", "train.batch_size=2")
    # resuming into a different model is refused
    _run(tmp_path / "o5", "train.max_steps=1", "checkpoint.every=1")
    with pytest.raises(ValueError, match="different model setup"):
        _run(tmp_path / "o5", "train.max_steps=2", "checkpoint.resume=latest", "model.tiny.unet_channels=[32,32]")


def test_vae_scaling_is_calibrated_to_unit_latent_std():
    from editkit.testing import tiny_vae
    from editkit.images import pil_to_tensor
    from editkit.training.methods.vae import calibrate_scaling

    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    pixels = pil_to_tensor(images)
    vae = tiny_vae((16, 32), mid_attention=False, norm_num_groups=4)
    factor = calibrate_scaling(vae, pixels, chunk=3)
    with torch.no_grad():
        scaled = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    assert vae.config.scaling_factor == factor
    assert abs(scaled.std().item() - 1.0) < 1e-4


def test_zero_terminal_snr_trains_v_prediction_and_exports_its_sampler(tmp_path):
    """train.zero_terminal_snr: pure noise at t = 999 in training, and the exported sampler matches it."""
    from editkit.training.methods.base import sd_noise_schedules

    noise, sampler = sd_noise_schedules(load_config(None, ["train.zero_terminal_snr=true", "train.prediction_type=v_prediction"]).train)
    assert float(noise.alphas_cumprod[-1]) == 0.0 and float(noise.alphas_cumprod[0]) > 0.99
    plain, _ = sd_noise_schedules(load_config(None, []).train)
    assert float(plain.alphas_cumprod[-1]) == pytest.approx(0.0047, abs=5e-4)  # SD's leak the option removes
    assert sampler.config.rescale_betas_zero_snr and sampler.config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="needs train.prediction_type=v_prediction"):
        sd_noise_schedules(load_config(None, ["train.zero_terminal_snr=true"]).train)
    out = tmp_path / "zsnr"
    _run(out, "train.max_steps=2", "checkpoint.every=0", "train.zero_terminal_snr=true", "train.prediction_type=v_prediction")
    exported = json.loads((out / "final" / "scheduler" / "scheduler_config.json").read_text())
    assert exported["prediction_type"] == "v_prediction" and exported["rescale_betas_zero_snr"] is True
    assert exported["timestep_spacing"] == "trailing"


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs/train").glob("*.yaml")))
def test_every_recipe_loads_and_stage_twos_resume_their_stage_one(recipe):
    cfg = load_config(REPO / "configs/train" / recipe)
    resume = cfg.checkpoint.resume
    if resume not in (None, "latest"):  # a stage-2 recipe: resumes from the last step of another recipe's run
        stage1 = [load_config(p) for p in (REPO / "configs/train").glob("*.yaml")]
        owner = [c for c in stage1 if resume == f"{c.output_dir}/checkpoint-{c.train.max_steps}"]
        assert owner and owner[0].method == cfg.method and owner[0].train.max_steps < cfg.train.max_steps
