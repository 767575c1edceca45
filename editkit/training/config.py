"""Training configuration: one YAML recipe + `key=value` overrides, checked before any step runs."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Every key a recipe may set, with its default. A recipe or an override naming
# anything else is an error (with the nearest valid key), not a silent no-op.
DEFAULTS: dict = {
    "method": "instructcv",
    "seed": 0,
    "output_dir": "outputs/run",
    "model": {
        "pretrained": None,  # diffusers pipeline folder or hub id to fine-tune
        "tiny": {  # used when `pretrained` is null: build components from these sizes
            "unet_channels": [32, 64],
            "unet_layers_per_block": 2,
            "text_hidden": 32,
            "text_layers": 5,
            "text_max_length": 77,  # the byte-level tokenizer spends one token per character
            "vae_channels": [32, 64],
            "vae_mid_attention": True,
            "norm_groups": None,  # GroupNorm groups for the tiny UNet and VAE (null: one channel per group up to 32)
            "vae": None,  # a trained VAE folder (e.g. from the vae recipe) to use frozen
        },
        "train_text_encoder": False,
        "word_merges": 0,  # >0: add that many BPE merges, learned on the training instructions, to a byte-level tokenizer
        "train_vae": False,
        "options": {},  # method-specific settings, read by the method's plugin (free-form)
    },
    "data": {
        "source": "shapes",  # shapes | folder | datasets
        "path": None,  # folder with metadata.jsonl, or a `datasets` save_to_disk folder / hub name
        "tasks": "cv,edit",
        "size": 64,
        "num_samples": 20000,  # shapes: samples per epoch drawn on the fly
        "heldout_phrasings": False,
        "paraphrases": False,  # shapes: also train on phrasings.PARAPHRASES (more verbs per task; never evaluated)
        "task_weights": None,  # shapes: {task: whole number}, e.g. {colorize: 3}; unlisted tasks weigh 1
        "buckets": False,  # aspect-ratio buckets for mixed sizes
        "bucket_sizes": [[64, 64]],
        "cache": False,  # encode latents and text states once
        "num_workers": 0,
        "random_flip": False,
    },
    "train": {
        "max_steps": 1000,
        "max_seconds": None,  # wall-clock cap: stop early (checkpoint + export); pair with a constant LR schedule
        "batch_size": 16,
        "grad_accum": 1,
        "lr": 1e-4,
        "text_encoder_lr": None,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "weight_decay": 1e-2,
        "adam_eps": 1e-8,
        "use_8bit_adam": False,
        "max_grad_norm": 1.0,
        "mixed_precision": "no",  # no | fp16 | bf16
        "gradient_checkpointing": False,
        "conditioning_dropout": 0.05,
        "instruction_noise": 0.0,  # share of instructions rewritten with dropped and made-up words (InstructCV, PixWizard, PromptFix)
        "instruction_noise_drop": 0.25,  # in a rewritten instruction, the probability each word is dropped (prompts.WORD_DROP)
        "instruction_noise_keep_slots": False,  # never drop the argument words (colours, shapes, sizes, places): phrasings.slot_words
        "prediction_type": None,  # epsilon | v_prediction; null = the scheduler's
        "zero_terminal_snr": False,  # UNet methods: rescaled betas, pure noise at the last step (needs v_prediction)
        "ema": False,
        "ema_decay": 0.9999,
        "attention": "sdpa",  # sdpa | xformers
        "lora": {"rank": 0, "alpha": None, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
    },
    "checkpoint": {"every": 500, "keep": 3, "resume": None},  # resume: null | latest | path
    "log": {"every": 10, "tensorboard": True},
    "validation": {"every": 0, "num_images": 4, "steps": 20},
}


def _flat_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, full + "."))
    return keys


def _check_keys(cfg: DictConfig, where: str) -> None:
    valid = _flat_keys(DEFAULTS)
    free = ("train.lora.target_modules", "data.bucket_sizes", "data.task_weights", "model.options")  # lists, a free-form {task: weight} map, plugin-owned options
    for key in _flat_keys(OmegaConf.to_container(cfg)):
        if key in valid or any(key.startswith(f + ".") for f in free):
            continue
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"unknown config key '{key}' in {where}{hint}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults <- recipe file (after its `base:` recipe, if it names one) <- `key=value` overrides (dotted keys)."""
    cfg = OmegaConf.create(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        cfg = OmegaConf.merge(cfg, _load_recipe(path))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
    if overrides:
        dotlist = OmegaConf.from_dotlist(list(overrides))
        _check_keys(dotlist, "the command line")
        cfg = OmegaConf.merge(cfg, dotlist)
    _check_values(cfg)
    return cfg


def _load_recipe(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe file; `base: other.yaml` (relative to the file) loads that recipe first and overrides it."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"recipe {path} names itself as a base through {[p.name for p in seen]}")
    recipe = OmegaConf.load(path)
    base = recipe.pop("base", None)
    _check_keys(recipe, str(path))
    if base is None:
        return recipe
    parent = path.parent / str(base)
    if not parent.is_file():
        raise FileNotFoundError(f"`base: {base}` in {path}: no such recipe ({parent})")
    return OmegaConf.merge(_load_recipe(parent, seen + (path,)), recipe)


def _check_values(cfg: DictConfig) -> None:
    t = cfg.train
    if t.mixed_precision is False:  # YAML 1.1 reads a bare `no` (train.mixed_precision=no) as false
        t.mixed_precision = "no"
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision must be no, fp16 or bf16, got {t.mixed_precision!r}")
    if t.attention not in ("sdpa", "xformers"):
        raise ValueError(f"train.attention must be sdpa or xformers, got {t.attention!r}")
    for key in ("max_steps", "batch_size", "grad_accum"):
        if int(t[key]) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {t[key]}")
    if not 0.0 <= float(t.conditioning_dropout) <= 1.0 / 3.0:
        raise ValueError(f"train.conditioning_dropout must be in [0, 1/3], got {t.conditioning_dropout}")
    if not 0.0 <= float(t.instruction_noise) <= 1.0:
        raise ValueError(f"train.instruction_noise must be in [0, 1], got {t.instruction_noise}")
    if not 0.0 <= float(t.instruction_noise_drop) < 1.0:
        raise ValueError(f"train.instruction_noise_drop must be in [0, 1), got {t.instruction_noise_drop}")
    if float(t.instruction_noise) > 0 and cfg.method not in ("instructcv", "pixwizard", "promptfix"):
        raise ValueError(f"train.instruction_noise is implemented for methods instructcv, pixwizard and promptfix, not {cfg.method!r}")
    if cfg.data.source not in ("shapes", "folder", "datasets"):
        raise ValueError(f"data.source must be shapes, folder or datasets, got {cfg.data.source!r}")
    if cfg.data.source != "shapes" and not cfg.data.path:
        raise ValueError(f"data.source={cfg.data.source} needs data.path")
    if int(cfg.checkpoint.keep) < 1:
        raise ValueError(f"checkpoint.keep must be >= 1, got {cfg.checkpoint.keep}")
