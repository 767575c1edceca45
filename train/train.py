"""Train an editkit method.

    accelerate launch train/train.py --config configs/train/instructcv_shapes.yaml [key=value ...]
    python train/train.py --config ... (single process)

One loop for every method; a method plugin (editkit/training/methods/) says
which modules train, how a batch becomes its conditioning, and the loss.
Everything random about a sample at a step comes from (seed, micro-step,
sample index), so runs resume exactly and N processes match one process
with N times the batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from editkit.training.checkpoint import check_compatible, fingerprint, pause_for_test, read_meta, resolve_resume, save_checkpoint
from editkit.training.config import load_config
from editkit.training.data import BatchPlan, RankBatches, assign_buckets, build_dataset, fit_to, sample_generators
from editkit.training.methods import get_method


class LatentCache:
    """Frozen encodings (and instructions) of every sample, computed once."""

    def __init__(self, dataset, method, collate, device, chunk: int = 64, num_workers: int = 0):
        self.instructions: list[str] = []
        self.auxiliary: list[str] = []  # auxiliary prompts, for methods whose collate returns them (PromptFix)
        parts: dict[str, list[torch.Tensor]] = {}
        # in index order; workers only generate and collate (a sample depends on its index alone)
        chunks = DataLoader(dataset, batch_size=chunk, shuffle=False, collate_fn=collate, num_workers=num_workers)
        for batch in tqdm(chunks, desc="caching latents", leave=False):
            enc = method.encode_images(batch["source"].to(device), batch["target"].to(device))
            for k, v in enc.items():
                parts.setdefault(k, []).append(v.cpu())
            self.instructions += list(batch["instruction"])
            self.auxiliary += list(batch.get("auxiliary_prompt", []))
        self.tensors = {k: torch.cat(v) for k, v in parts.items()}

    def batch(self, indices: list[int], device) -> dict:
        idx = torch.tensor(indices)
        return {
            "index": idx,
            "instruction": [self.instructions[i] for i in indices],
            **({"auxiliary_prompt": [self.auxiliary[i] for i in indices]} if self.auxiliary else {}),
            "latents": {k: v[idx].to(device) for k, v in self.tensors.items()},
        }


class Resized(torch.utils.data.Dataset):
    """Fits every pair to its bucket's size (one size per bucket), with an optional joint flip."""

    def __init__(self, dataset, bucket_ids, bucket_sizes, flip_seed: int | None):
        self.dataset, self.bucket_ids, self.bucket_sizes, self.flip_seed = dataset, bucket_ids, bucket_sizes, flip_seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        size = self.bucket_sizes[self.bucket_ids[i]]
        flip = self.flip_seed is not None and np.random.default_rng([self.flip_seed, i]).random() < 0.5
        for key in ("source", "target"):
            im = fit_to(item[key], size)
            item[key] = im.transpose(0) if flip else im  # 0 = FLIP_LEFT_RIGHT
        return item


def build_optimizer(cfg, params):
    t = cfg.train
    kwargs = dict(lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay, eps=t.adam_eps)
    if t.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise SystemExit("train.use_8bit_adam=true needs bitsandbytes (pip install bitsandbytes; CUDA only).") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def apply_model_options(cfg, models: dict[str, torch.nn.Module]) -> None:
    t = cfg.train
    for m in models.values():
        if t.gradient_checkpointing:
            if hasattr(m, "enable_gradient_checkpointing"):
                m.enable_gradient_checkpointing()
            else:
                m.gradient_checkpointing_enable()
        if t.attention == "xformers":
            if not hasattr(m, "enable_xformers_memory_efficient_attention"):
                continue
            try:
                m.enable_xformers_memory_efficient_attention()
            except (ImportError, ValueError, ModuleNotFoundError) as err:
                raise SystemExit(f"train.attention=xformers is not available here: {err}") from None
    if int(t.lora.rank) > 0:
        from peft import LoraConfig

        unet = models.get("unet")
        if unet is None:
            raise SystemExit("train.lora.rank > 0 needs a method whose backbone is a UNet.")
        unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(
                r=int(t.lora.rank),
                lora_alpha=int(t.lora.alpha or t.lora.rank),
                init_lora_weights="gaussian",
                target_modules=list(t.lora.target_modules),
            )
        )


def export(cfg, method, accelerator, models, path: Path) -> None:
    """Final diffusers folder, written next to its final name and renamed when complete."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = {k: accelerator.unwrap_model(m) for k, m in models.items()}
    if int(cfg.train.lora.rank) > 0:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        from editkit.pipelines import InstructCVPipeline

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrapped["unet"]))
        InstructCVPipeline.save_lora_weights(str(tmp / "lora"), unet_lora_layers=layers, safe_serialization=True)
        # the pipeline folder keeps the untouched base weights; users add the LoRA with load_lora_weights
        base = copy.deepcopy(unwrapped["unet"])
        base.unload_lora()
        unwrapped = {**unwrapped, "unet": base}
    method.export(tmp, unwrapped)
    (tmp / "editkit_train.json").write_text(json.dumps(OmegaConf.to_container(cfg), indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _all_agree(accelerator, flag: bool) -> bool:
    """True when any process says so (every rank then takes the same branch)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([float(flag)], device=accelerator.device)).max() > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML recipe (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = Path(cfg.output_dir)
    t = cfg.train

    accelerator = Accelerator(
        # without CUDA, several processes (torchrun / accelerate launch) train data-parallel over gloo
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=int(t.grad_accum),
        mixed_precision=t.mixed_precision,
        log_with="tensorboard" if cfg.log.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.seed)

    # -- model ------------------------------------------------------------------
    method = get_method(cfg.method)(cfg)
    if world > 1 and not method.distributed:
        raise SystemExit(f"method {cfg.method!r} trains in a single process; launch it without multiple processes.")
    models = method.trainable()
    apply_model_options(cfg, models)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[t.mixed_precision]
    for m in method.frozen().values():
        m.to(accelerator.device)
        if weight_dtype != torch.float32:  # frozen parts run in the mixed-precision dtype
            m.to(dtype=weight_dtype)
    fp = fingerprint(method.fingerprint_parts())

    # -- data (checked before any step) -----------------------------------------
    dataset = build_dataset(cfg.data, cfg.seed)
    bucket_ids, bucket_sizes = assign_buckets(dataset, bool(cfg.data.buckets), list(cfg.data.bucket_sizes))
    if cfg.data.cache and cfg.data.random_flip:
        raise SystemExit("data.cache=true stores one encoding per sample; it cannot be combined with data.random_flip=true.")
    data = Resized(dataset, bucket_ids, bucket_sizes, cfg.seed if cfg.data.random_flip else None)
    plan = BatchPlan(bucket_ids, int(t.batch_size) * world, cfg.seed)

    # -- optimiser, resume --------------------------------------------------------
    params = [p for m in models.values() for p in m.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    lr_scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=int(t.lr_warmup_steps) * world, num_training_steps=int(t.max_steps) * world
    )
    ema = None
    if t.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([p for p in models[next(iter(models))].parameters() if p.requires_grad], decay=float(t.ema_decay))
    names = list(models)
    prepared = accelerator.prepare(*models.values(), optimizer, lr_scheduler)
    models = dict(zip(names, prepared[: len(names)]))
    optimizer, lr_scheduler = prepared[len(names) :]
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    resume = resolve_resume(cfg.checkpoint.resume, out)
    start_step = 0
    if resume is not None:
        check_compatible(resume, fp)
        accelerator.load_state(str(resume))
        start_step = int(read_meta(resume)["step"])
        accelerator.print(f"resumed from {resume} at step {start_step}")
    elif cfg.checkpoint.resume == "latest":
        accelerator.print(f"no checkpoint in {out} yet; starting from scratch")

    accum, max_steps = int(t.grad_accum), int(t.max_steps)
    batches = RankBatches(plan, start_step * accum, max_steps * accum, rank, world)
    cache = LatentCache(data, method, method.collate, accelerator.device, num_workers=int(cfg.data.num_workers)) if cfg.data.cache else None
    if cache is None:
        loader = iter(DataLoader(data, batch_sampler=batches, collate_fn=method.collate, num_workers=int(cfg.data.num_workers)))
    else:
        index_batches = iter(batches)

    if accelerator.is_main_process:
        accelerator.init_trackers("editkit", config={k: str(v) for k, v in OmegaConf.to_container(cfg).items()})
    meta = {"method": cfg.method, "fingerprint": fp, "config": OmegaConf.to_container(cfg)}

    # -- loop -----------------------------------------------------------------------
    progress = tqdm(total=max_steps, initial=start_step, disable=not accelerator.is_main_process, desc=f"train {cfg.method}")
    step, seen, t0 = start_step, 0, time.perf_counter()
    for m in models.values():
        m.train()
    deadline = t0 + float(t.max_seconds) if t.max_seconds else None
    while step < max_steps:
        if deadline is not None and _all_agree(accelerator, time.perf_counter() > deadline):
            accelerator.print(f"train.max_seconds={t.max_seconds} reached at step {step}; exporting")
            if int(cfg.checkpoint.every) > 0:
                save_checkpoint(accelerator, out, step, meta, int(cfg.checkpoint.keep))
            break
        for micro in range(accum):
            if cache is None:
                batch = next(loader)
                batch["latents"] = method.encode_images(batch["source"].to(accelerator.device), batch["target"].to(accelerator.device))
            else:
                batch = cache.batch(next(index_batches), accelerator.device)
            gens = sample_generators(cfg.seed, step * accum + micro, batch["index"])
            with accelerator.accumulate(*models.values()):
                loss = method.loss(models, batch, gens)
                if not torch.isfinite(loss):
                    raise SystemExit(f"loss is {loss.item()} at step {step}; lower train.lr or use bf16 instead of fp16.")
                accelerator.backward(loss)
                pause_for_test("step", step + 1, out)  # crash tests: EDITKIT_TEST_PAUSE=step:N
                if accelerator.sync_gradients and t.max_grad_norm:
                    accelerator.clip_grad_norm_(params, float(t.max_grad_norm))
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += len(batch["index"]) * world
        step += 1
        if ema is not None:
            ema.step([p for p in accelerator.unwrap_model(models[names[0]]).parameters() if p.requires_grad])
        progress.update()

        if step % int(cfg.log.every) == 0 or step == max_steps:
            loss_avg = accelerator.gather(loss.detach().reshape(1)).mean().item()
            rate = seen / (time.perf_counter() - t0)
            progress.set_postfix(loss=f"{loss_avg:.4f}", samples_s=f"{rate:.1f}")
            accelerator.log({"loss": loss_avg, "lr": lr_scheduler.get_last_lr()[0], "samples_per_s": rate}, step=step)
        if int(cfg.checkpoint.every) > 0 and (step % int(cfg.checkpoint.every) == 0 or step == max_steps):
            save_checkpoint(accelerator, out, step, meta, int(cfg.checkpoint.keep))
        if int(cfg.validation.every) > 0 and step % int(cfg.validation.every) == 0 and accelerator.is_main_process:
            validate(cfg, method, accelerator, models, step, out)
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to([p for p in accelerator.unwrap_model(models[names[0]]).parameters() if p.requires_grad])
        export(cfg, method, accelerator, models, out / "final")
        elapsed = time.perf_counter() - t0
        summary = {"steps": step - start_step, "final_step": step, "seconds": round(elapsed, 2), "samples_per_s": round(seen / max(elapsed, 1e-9), 2)}
        (out / "train_summary.json").write_text(json.dumps(summary))
        accelerator.print(f"exported {out / 'final'}  {summary}")
    accelerator.end_training()
    return 0


@torch.no_grad()
def validate(cfg, method, accelerator, models, step: int, out: Path) -> None:
    """Edit a few held-out samples and log source | output | target to TensorBoard and a PNG."""
    from editkit.data.shapes import make_sample, parse_tasks

    if not method.has_pipeline or cfg.data.source != "shapes":
        return
    pipe = method.pipeline({k: accelerator.unwrap_model(m) for k, m in models.items()})
    tasks = parse_tasks(cfg.data.tasks)
    rows = []
    for i in range(int(cfg.validation.num_images)):
        s = make_sample(tasks[i % len(tasks)], "val", i // len(tasks), int(cfg.data.size), seed=cfg.seed)
        got = pipe(s.instruction, image=s.source, num_inference_steps=int(cfg.validation.steps), generator=torch.Generator().manual_seed(i)).images[0]
        rows.append(np.concatenate([np.asarray(s.source), np.asarray(got), np.asarray(s.target)], axis=1))
    grid = np.concatenate(rows, axis=0)
    (out / "validation").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(out / "validation" / f"step-{step}.png")
    if cfg.log.tensorboard:
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("validation", grid, step, dataformats="HWC")
    for m in models.values():
        m.train()


if __name__ == "__main__":
    sys.exit(main())
