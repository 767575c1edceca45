"""Training throughput: editkit's trainer against diffusers' own examples/instruct_pix2pix/train_instruct_pix2pix.py.

    git clone https://github.com/huggingface/diffusers   # the script is run from there, never copied here
    OMP_NUM_THREADS=1 python benchmarks/train_vs_diffusers.py --script diffusers/examples/instruct_pix2pix/train_instruct_pix2pix.py

Both fine-tune the same model on
the same pairs: the shipped instructcv-tiny folder (CLIP text encoder, VAE, scheduler) with its UNet cut
back to a 4-channel text-to-image UNet, since the script always widens conv_in from 4 to 8 channels, as
editkit's trainer does for such a UNet; the pairs are the shapes train split (64 x 64, written once as a folder with metadata.jsonl for editkit and
as parquet for the script's `load_dataset`), at the same batch, learning rate, conditioning dropout and
precision (fp32 on CPU), the same objective (the model folder's prediction type and zero-SNR betas, which the
script reads from its scheduler config and editkit is given as `train.prediction_type` / `train.zero_terminal_snr`), the UNet trained and the text encoder and VAE frozen, no EMA, no latent cache
(the script has none). Each is run as its own process twice, for `--steps` S1 and S2, interleaved
(script S1, editkit S1, script S2, editkit S2); throughput is batch * (S2 - S1) / (t(S2) - t(S1)), which
cancels start-up, data loading and the final save. Writes benchmarks/results/train_vs_diffusers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import _common as C  # noqa: E402

import torch  # noqa: E402

from editkit.data.shapes import generate  # noqa: E402

SHIPPED = REPO / "editkit" / "models" / "instructcv-tiny"


def text_to_image_model(root: Path) -> Path:
    """The shipped model with a 4-channel UNet (conv_in keeps its first four input channels)."""
    import shutil

    from diffusers import UNet2DConditionModel

    out = root / "model"
    shutil.copytree(SHIPPED, out, ignore=shutil.ignore_patterns("unet"))
    unet = UNet2DConditionModel.from_pretrained(SHIPPED, subfolder="unet")
    conv = torch.nn.Conv2d(4, unet.conv_in.out_channels, unet.conv_in.kernel_size, unet.conv_in.stride, unet.conv_in.padding)
    with torch.no_grad():
        conv.weight.copy_(unet.conv_in.weight[:, :4])
        conv.bias.copy_(unet.conv_in.bias)
    unet.conv_in = conv
    unet.register_to_config(in_channels=4)
    unet.save_pretrained(out / "unet")
    return out


def write_pairs(root: Path, n: int) -> tuple[Path, Path]:
    """The same n pairs as a metadata.jsonl folder (editkit) and a parquet folder (`load_dataset`)."""
    import datasets

    folder, parquet = root / "folder", root / "parquet" / "data"
    folder.mkdir(parents=True)
    parquet.mkdir(parents=True)
    rows = []
    for i, s in enumerate(generate("cv,edit", n, 64, "train")):
        s.source.save(folder / f"{i}_in.png")
        s.target.save(folder / f"{i}_out.png")
        rows.append({"input_image": f"{i}_in.png", "edited_image": f"{i}_out.png", "edit_prompt": s.instruction})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    features = datasets.Features({"input_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                                  "edited_image": datasets.Image()})
    ds = datasets.Dataset.from_dict({"input_image": [str(folder / r["input_image"]) for r in rows],
                                     "edit_prompt": [r["edit_prompt"] for r in rows],
                                     "edited_image": [str(folder / r["edited_image"]) for r in rows]}, features=features)
    ds.to_parquet(str(parquet / "train-00000-of-00001.parquet"))
    return folder, parquet.parent


def diffusers_cmd(script: str, model: Path, data: Path, out: Path, steps: int, batch: int, lr: float) -> list[str]:
    return [sys.executable, script, f"--pretrained_model_name_or_path={model}", f"--dataset_name={data}",
            "--original_image_column=input_image", "--edit_prompt_column=edit_prompt", "--edited_image_column=edited_image",
            "--resolution=64", f"--train_batch_size={batch}", f"--max_train_steps={steps}", f"--learning_rate={lr}",
            "--lr_scheduler=constant", "--lr_warmup_steps=0", "--conditioning_dropout_prob=0.05", "--mixed_precision=no",
            "--dataloader_num_workers=0", "--seed=0", "--checkpointing_steps=1000000", f"--output_dir={out}"]


def objective(model: Path) -> list[str]:
    """The script trains with the model folder's scheduler (prediction type, zero-SNR betas); editkit is told the same."""
    cfg = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    zero_snr = bool(cfg.get("rescale_betas_zero_snr", False))
    return [f"train.prediction_type={cfg.get('prediction_type', 'epsilon')}", f"train.zero_terminal_snr={str(zero_snr).lower()}"]


def logged_losses(log: Path, key: str) -> list[float]:
    """Every per-step loss a run printed in its progress bar (`step_loss=` for the script, `loss=` for editkit)."""
    return [float(v) for v in re.findall(rf"[ ,]{key}=([0-9.]+(?:e-?[0-9]+)?)", log.read_text())]


def editkit_cmd(model: Path, data: Path, out: Path, steps: int, batch: int, lr: float) -> list[str]:
    return [sys.executable, str(REPO / "train" / "train.py"), "--config", str(REPO / "configs" / "train" / "instructcv_shapes.yaml"),
            f"output_dir={out}", f"model.pretrained={model}", "model.train_text_encoder=false", "data.source=folder",
            f"data.path={data}", "data.cache=false", f"train.batch_size={batch}", f"train.max_steps={steps}", f"train.lr={lr}",
            "train.lr_scheduler=constant", "train.lr_warmup_steps=0", "train.conditioning_dropout=0.05", "train.ema=false",
            "train.mixed_precision=no", "checkpoint.every=0", "validation.every=0", "log.tensorboard=false", "log.every=1", *objective(model)]


def timed(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    elapsed = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text()[-2000:]
        if "Steps: 100%" not in tail and "train_summary" not in tail:  # the script's final save may fail after training
            raise SystemExit(f"{cmd[1]} failed (exit {rc}); see {log}:\n{tail}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py")
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 45), metavar=("S1", "S2"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--n", type=int, default=512, help="pairs in the data set")
    args = parser.parse_args(argv)
    s1, s2 = args.steps
    times: dict[str, dict[int, float]] = {"diffusers": {}, "editkit": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, parquet = write_pairs(root, args.n)
        model = text_to_image_model(root)
        for steps in (s1, s2):
            times["diffusers"][steps] = timed(diffusers_cmd(args.script, model, parquet, root / f"d{steps}", steps, args.batch, args.lr),
                                              REPO / "outputs" / f"train_vs_diffusers_d{steps}.log")
            times["editkit"][steps] = timed(editkit_cmd(model, folder, root / f"e{steps}", steps, args.batch, args.lr),
                                            REPO / "outputs" / f"train_vs_diffusers_e{steps}.log")
    rate = {k: args.batch * (s2 - s1) / (t[s2] - t[s1]) for k, t in times.items()}
    logs = {"diffusers": (REPO / "outputs" / f"train_vs_diffusers_d{s2}.log", "step_loss"),
            "editkit": (REPO / "outputs" / f"train_vs_diffusers_e{s2}.log", "loss")}
    losses = {k: logged_losses(path, key) for k, (path, key) in logs.items()}
    result = {"steps": [s1, s2], "batch": args.batch, "wall_s": times, "samples_per_s": rate,
              "editkit_over_diffusers": rate["editkit"] / rate["diffusers"], "machine": C.machine(),
              "objective": objective(SHIPPED),
              "logged_loss_mean": {k: sum(v) / len(v) if v else None for k, v in losses.items()},
              "logged_loss_count": {k: len(v) for k, v in losses.items()}}
    for k in ("diffusers", "editkit"):
        print(f"{k:<10} {rate[k]:6.2f} samples/s  (wall {times[k][s1]:.1f} s at {s1} steps, {times[k][s2]:.1f} s at {s2})")
    print(f"editkit / diffusers: {result['editkit_over_diffusers']:.2f}x; mean logged loss at {s2} steps: "
          + ", ".join(f"{k} {v:.4f} (n={result['logged_loss_count'][k]})" for k, v in result["logged_loss_mean"].items() if v is not None))
    C.write_json(REPO / "benchmarks" / "results" / "train_vs_diffusers.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
