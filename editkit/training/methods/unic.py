"""UNIC-Adapter training: the adapter on a frozen SD3 base (optionally LoRA on the adapter; optionally the base
jointly, for the tiny shapes model whose base does not exist yet).

- data: the condition is the sample's first reference image (subject / style) or else its source (canny, depth,
  segmentation map); the prompt is the target caption (`auxiliary_prompt`), the instruction the sample's instruction;
- targets: VAE posterior sample, (z - shift) x scaling; condition: posterior mode, same scaling (the pipeline's
  `vae_encode_scaled`);
- SD3's flow-matching loss: logit-normal sigmas (mean 0, std 1) under the sampler's shift (3.0), target noise - x0;
- conditioning built by the pipeline's own `build_conditioning`, dropped per sample with 5 % prompt, 5 % control
  (instruction + image jointly), 5 % both, so every guidance branch is trained with the sampling nulls;
- the adapter starts as a copy of the base modules it twins with a zero gate (identity at init; spec §8).

Tiny recipe (`model.options.train_base: true`): no SD3 base exists for the shapes VAE, so a seeded random base is
trained *jointly* with the adapter, and `base_only_prob` of the samples run with control_scale 0 (the base alone,
prompt -> image), so the shipped base is a working text-to-image model and the control-free baseline is meaningful.

Method-specific settings live under `model.options` (see OPTION_DEFAULTS).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

from editkit.encoders import vae_encode_scaled
from editkit.flow import noisy, sample_sigmas, velocity_target
from editkit.guidance import ConditionDropout
from editkit.images import pil_to_tensor, resize_input
from editkit.modeling.unic_adapter import UNICSD3Transformer2DModel, is_adapter_key
from editkit.pipelines.unic import UNICAdapterPipeline, build_conditioning, encode_sd3_text, transformer_forward
from editkit.testing import tiny_vae
from editkit.testing.sd3 import sd3_flow_scheduler, tiny_sd3_transformer
from editkit.testing.unic import tiny_sd3_text_stack

from ..tokens import MemoTokenizer
from .base import MethodTraining, randn_per_sample, scaled_target_latents

OPTION_DEFAULTS = {
    "num_layers": 4,  # tiny SD3 base
    "num_attention_heads": 4,
    "attention_head_dim": 16,  # 2D RoPE: two axes of head_dim / 2
    "clip_hidden": 32,  # each of CLIP-L / CLIP-G
    "clip_layers": 2,
    "projection_dim": 32,  # pooled = 2 x projection_dim
    "t5_dim": 64,  # = joint_attention_dim
    "t5_layers": 2,
    "t5_max_length": 256,  # tiny T5 tokens (one per character; shapes captions reach ~220, instructions ~260)
    "train_base": False,  # tiny recipe: train the (random) base jointly
    "base_only_prob": 0.0,  # with train_base: share of samples run with control_scale 0
    "use_control_gate": True,  # zero-initialised injection gate (identity at init)
    "init_from_base": True,  # adapter modules start as copies of their base twins
    "lora_rank": 0,  # > 0: LoRA on the adapter's linear layers (base-initialised), only those train
    "lora_alpha": None,
    "shift": 3.0,  # flow shift for training sigmas and the exported sampler
}

LORA_TARGETS = r".*(attn_control\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_out\.0|to_add_out)|to_q_control|context_embedder_control)$"


def unic_options(cfg) -> dict:
    given = dict(cfg.model.get("options") or {})
    unknown = set(given) - set(OPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model.options {sorted(unknown)} for unic; valid: {sorted(OPTION_DEFAULTS)}")
    return {**OPTION_DEFAULTS, **given}


def unic_dropout(p: float) -> ConditionDropout:
    """5 % prompt, 5 % control (instruction + image), 5 % both at p = 0.05."""
    return ConditionDropout(patterns=(frozenset({"prompt"}), frozenset({"control"}), frozenset({"prompt", "control"})), probs=(p, p, p))


def inert_adapter_parameters(model: UNICSD3Transformer2DModel) -> list[str]:
    """Adapter weights that feed nothing: the last block's control stream is cut after its keys/values
    (the official checkpoint still has them). Frozen so distributed training sees no unused parameters."""
    last = len(model.transformer_blocks) - 1
    dead = (f"transformer_blocks.{last}.attn_control.to_q.", f"transformer_blocks.{last}.attn_control.add_q_proj.",
            f"transformer_blocks.{last}.attn_control.to_out.", f"transformer_blocks.{last}.attn_control.norm_q.",
            f"transformer_blocks.{last}.attn_control.norm_added_q.")
    return [n for n, _ in model.named_parameters() if n.startswith(dead)]


class UNICTraining(MethodTraining):
    name = "unic"

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        self.options = o = unic_options(cfg)
        t = m.tiny
        self.max_length = int(t.text_max_length)  # CLIP tokens
        if m.pretrained:
            self._load_pretrained(str(m.pretrained), o)
        else:
            self.vae = AutoencoderKL.from_pretrained(t.vae) if t.vae else tiny_vae(tuple(t.vae_channels), bool(t.vae_mid_attention), t.norm_groups, seed=cfg.seed + 1)
            text = tiny_sd3_text_stack(clip_hidden=int(o["clip_hidden"]), clip_layers=int(o["clip_layers"]), projection_dim=int(o["projection_dim"]),
                                       t5_dim=int(o["t5_dim"]), t5_layers=int(o["t5_layers"]), max_length=self.max_length,
                                       t5_max_length=int(o["t5_max_length"]), seed=cfg.seed + 2)
            self.text_encoders = [text["text_encoder"], text["text_encoder_2"], text["text_encoder_3"]]
            self.tokenizers = [text["tokenizer"], text["tokenizer_2"], text["tokenizer_3"]]
            vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            latent = int(cfg.data.size) // vae_factor
            base = tiny_sd3_transformer(
                in_channels=self.vae.config.latent_channels, num_layers=int(o["num_layers"]), heads=int(o["num_attention_heads"]),
                head_dim=int(o["attention_head_dim"]), joint_attention_dim=int(o["t5_dim"]), pooled_projection_dim=2 * int(o["projection_dim"]),
                sample_size=latent, pos_embed_max_size=2 * latent, seed=cfg.seed,
            )
            torch.manual_seed(cfg.seed + 5)
            self.transformer = UNICSD3Transformer2DModel.from_sd3(base, init_from_base=bool(o["init_from_base"]), use_control_gate=bool(o["use_control_gate"]))
        # T5 tokens: what the pipeline uses by default, min(256, tokenizer_3 max length)
        self.t5_length = min(256, int(self.tokenizers[2].model_max_length)) if self.tokenizers[2] is not None else 256
        self.vae.requires_grad_(False).eval()
        for enc in self.text_encoders:
            if enc is not None:
                enc.requires_grad_(bool(m.train_text_encoder))
        self._set_trainable(o)
        self.dropout = unic_dropout(float(cfg.train.conditioning_dropout))
        # the loss re-tokenizes the same captions every epoch; the export keeps the plain tokenizers
        self.train_tokenizers = [MemoTokenizer(t) if t is not None else None for t in self.tokenizers]

    def _load_pretrained(self, src: str, o: dict) -> None:
        """A UNIC pipeline folder, or an SD3 pipeline folder whose transformer gets a fresh adapter."""
        index = json.loads((Path(src) / "model_index.json").read_text()) if (Path(src) / "model_index.json").is_file() else {}
        self.vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
        self.tokenizers = [CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"), CLIPTokenizer.from_pretrained(src, subfolder="tokenizer_2"), None]
        self.text_encoders = [CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder"),
                              CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder_2"), None]
        if index.get("text_encoder_3", [None, None])[1]:
            from transformers import AutoTokenizer

            self.tokenizers[2] = AutoTokenizer.from_pretrained(src, subfolder="tokenizer_3")
            self.text_encoders[2] = T5EncoderModel.from_pretrained(src, subfolder="text_encoder_3")
        if index.get("transformer", [None, None])[1] == "UNICSD3Transformer2DModel":
            self.transformer = UNICSD3Transformer2DModel.from_pretrained(src, subfolder="transformer")
        else:
            base = SD3Transformer2DModel.from_pretrained(src, subfolder="transformer")
            self.transformer = UNICSD3Transformer2DModel.from_sd3(base, init_from_base=bool(o["init_from_base"]), use_control_gate=bool(o["use_control_gate"]))
        self.max_length = int(self.tokenizers[0].model_max_length)  # what the pipeline pads CLIP to

    def _set_trainable(self, o: dict) -> None:
        tr = self.transformer
        tr.requires_grad_(False)
        if int(o["lora_rank"]) > 0:
            from peft import LoraConfig

            rank = int(o["lora_rank"])
            tr.add_adapter(LoraConfig(r=rank, lora_alpha=int(o["lora_alpha"] or rank), init_lora_weights="gaussian", target_modules=LORA_TARGETS))
            if tr.config.use_control_gate:
                for block in tr.transformer_blocks:
                    block.control_gate.requires_grad_(True)
        else:
            for p in tr.adapter_parameters():
                p.requires_grad_(True)
        if o["train_base"]:
            for name, p in tr.named_parameters():
                if not is_adapter_key(name) and "lora_" not in name:
                    p.requires_grad_(True)
        dead = set(inert_adapter_parameters(tr))
        for name, p in tr.named_parameters():
            if name in dead:
                p.requires_grad_(False)

    # -- plugin API -----------------------------------------------------------------

    def trainable(self) -> dict[str, torch.nn.Module]:
        mods = {"transformer": self.transformer}
        if self.cfg.model.train_text_encoder:
            for key, enc in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), self.text_encoders):
                if enc is not None:
                    mods[key] = enc
        return mods

    def frozen(self) -> dict[str, torch.nn.Module]:
        mods: dict[str, torch.nn.Module] = {"vae": self.vae}
        if not self.cfg.model.train_text_encoder:
            for key, enc in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), self.text_encoders):
                if enc is not None:
                    mods[key] = enc
        return mods

    def fingerprint_parts(self) -> dict:
        return {"method": self.name, "transformer": {k: v for k, v in self.transformer.config.items() if not k.startswith("_")},
                "options": self.options, "text_max_length": self.max_length}

    def collate(self, items: list[dict]) -> dict:
        """The condition is the first reference (subject / style) or the source map, at the target's size."""
        conds = []
        for it in items:
            cond = (it.get("references") or [it["source"]])[0]
            w, h = it["target"].size
            conds.append(cond if cond.size == (w, h) else resize_input(cond, w, h))
        return {
            "index": torch.tensor([it["index"] for it in items]),
            "source": pil_to_tensor(conds),
            "target": pil_to_tensor([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items],
            "auxiliary_prompt": [it.get("auxiliary_prompt") or it["instruction"] for it in items],
        }

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            dist = self.vae.encode(target.to(self.vae.device, self.vae.dtype)).latent_dist
            return {"control_latents": vae_encode_scaled(self.vae, source.to(self.vae.device)), "target_mean": dist.mean, "target_std": dist.std}

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        transformer = models["transformer"]
        encoders = [models.get(k, e) for k, e in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), self.text_encoders)]
        lat = batch["latents"]
        device = lat["control_latents"].device
        bsz = lat["control_latents"].shape[0]
        shape = lat["target_mean"].shape[1:]
        if "auxiliary_prompt" not in batch:
            raise ValueError("the unic plugin needs each batch's `auxiliary_prompt` (the target caption) from its collate.")
        # everything random about a sample comes from its own generator, in a fixed order
        eps_sample = randn_per_sample(generators, shape, device)
        noise = randn_per_sample(generators, shape, device)
        r = torch.stack([torch.rand((), generator=g) for g in generators])
        r_base = torch.stack([torch.rand((), generator=g) for g in generators])
        sigmas = sample_sigmas(generators, "logit_normal", shift=float(self.options["shift"])).to(device)

        x0 = scaled_target_latents(lat, eps_sample, self.vae)
        x_t = noisy(x0, noise, sigmas)

        texts = list(batch["auxiliary_prompt"]) + list(batch["instruction"]) + [""]
        states, pooled = encode_sd3_text(self.train_tokenizers, encoders, texts, self.t5_length,
                                         self.transformer.config.joint_attention_dim, device, clip_max_length=self.max_length)
        cond = build_conditioning(states[:bsz], pooled[:bsz], states[bsz:2 * bsz], pooled[bsz:2 * bsz], states[-1:], pooled[-1:],
                                  lat["control_latents"], x_t.dtype)
        selected = cond.select(self.dropout.masks(r, device))
        scale = None
        if self.options["train_base"] and float(self.options["base_only_prob"]) > 0:
            scale = (r_base >= float(self.options["base_only_prob"])).to(device=device, dtype=x_t.dtype)
        pred = transformer_forward(transformer, x_t, selected, sigmas * 1000.0, control_scale=scale)
        return F.mse_loss(pred.float(), velocity_target(x0, noise).float())

    def pipeline(self, models: dict[str, torch.nn.Module]) -> UNICAdapterPipeline:
        encoders = [models.get(k, e) for k, e in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), self.text_encoders)]
        pipe = UNICAdapterPipeline(
            transformer=models["transformer"], scheduler=sd3_flow_scheduler(float(self.options["shift"])), vae=self.vae,
            text_encoder=encoders[0], tokenizer=self.tokenizers[0], text_encoder_2=encoders[1], tokenizer_2=self.tokenizers[1],
            text_encoder_3=encoders[2], tokenizer_3=self.tokenizers[2],
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export(self, path, models: dict[str, torch.nn.Module]) -> None:
        """A UNICAdapterPipeline folder; LoRA weights are merged into the adapter first."""
        transformer = models["transformer"]
        if int(self.options["lora_rank"]) > 0:
            import copy

            transformer = copy.deepcopy(transformer)
            transformer.fuse_lora()
            transformer.unload_lora()
        self.pipeline({**models, "transformer": transformer}).save_pretrained(path, safe_serialization=True)
