"""Dream Engine training, both stages, on the shared trainer.

Stage 1 (alignment): text-to-image ("Generate Image: " + caption) and image
reconstruction ("Copy Image: <V>") on the target images; the LMM is frozen,
the two adapters train.
Stage 2 (editing / fusion): interleaved prompts (references placed inline
where the instruction says "image k") and instruction edits
("Edit image <V> following:" + instruction); LoRA on the DiT's attention
(the paper's r = 32 on every attention projection) plus the adapters.

Loss: rectified flow with SD3's schedule: sigma from a logit-normal density
(mean 0, std 1) then the static shift 3; x_sigma = (1 - sigma) x0 + sigma eps;
the DiT gets sigma * 1000 and predicts eps - x0. With `precondition_outputs`
(the official default) the loss compares x0_hat = x_sigma - sigma v with x0,
otherwise v with eps - x0. CFG dropout is per sample (Dream Engine drops whole
batches) and uses the pipeline's own `build_conditioning` nulls.

Tiny models: `model.options.sd3` may name any folder with an SD3-family
`transformer/` and `vae/`; the tiny recipes (dream_*_from_unic.yaml) use the
shipped unic-tiny, editkit's own shapes-trained MM-DiT (its UNIC control
branch is dropped on load). With `model.pretrained` and `sd3` both unset the
tiny MM-DiT starts from random weights, and stage 1 must train it whole
(`model.options.train_transformer: true`); that never learned to generate in
our budgets (docs/tiny_models.md). The tiny Qwen2-VL stays frozen at its
seeded random weights, as the paper freezes the LMM: a random ViT and LLM
still carry the colours and shapes of the input, and the adapters and DiT
learn to read them. Stage 2 loads the stage-1 folder (`model.pretrained`) and
trains LoRA + adapters as in the paper, or the whole DiT with
`train_transformer: true`.

`model.options` keys (all optional): stage (1|2), sd3, lmm (folders for a
real init), lmm_hidden, lmm_layers, vision_dim, vision_depth, image_pixels,
dit_layers, dit_heads, dit_head_dim, adapter_hidden, train_transformer,
lora_rank, lora_alpha, copy_prob, random_vit_ratio, precondition_outputs, shift.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from editkit import flow
from editkit.guidance import ConditionDropout
from editkit.modeling.dream_adapter import DreamTransformer2DModel
from editkit.modeling.dream_encoder import Qwen2VLImageProcessorOnly, attach_patches, encode_prompts, interleave_references, task_prompts
from editkit.pipelines.dream import DreamEnginePipeline, build_conditioning, transformer_forward
from editkit.testing import tiny_vae
from editkit.testing.dream import tiny_dream_transformer, tiny_qwen2_tokenizer, tiny_qwen2_vl, tiny_qwen2_vl_image_processor

from .base import MethodTraining, randn_per_sample, scaled_target_latents

OPTION_DEFAULTS = {
    "stage": 1,
    "sd3": None,
    "lmm": None,
    "lmm_hidden": 64,
    "lmm_layers": 2,
    "vision_dim": 64,
    "vision_depth": 2,
    "image_pixels": 112,
    "dit_layers": 4,
    "dit_heads": 4,
    "dit_head_dim": 24,
    "adapter_hidden": 128,
    "train_transformer": False,
    "lora_rank": 32,
    "lora_alpha": None,
    "copy_prob": 0.5,
    "random_vit_ratio": False,
    "precondition_outputs": True,
    "shift": 3.0,
}
DIT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
INTERLEAVED_TASKS = ("combine", "put_on_background")


class DreamTraining(MethodTraining):
    name = "dream"

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = dict(OPTION_DEFAULTS)
        given = dict(cfg.model.options or {})
        unknown = set(given) - set(opts)
        if unknown:
            raise ValueError(f"unknown model.options {sorted(unknown)} for method 'dream'; valid: {sorted(opts)}")
        opts.update(given)
        self.opts = opts
        if int(opts["stage"]) not in (1, 2):
            raise ValueError(f"model.options.stage must be 1 or 2, got {opts['stage']!r}")
        if cfg.data.cache:
            raise ValueError("method 'dream' encodes its prompts (with the reference images) every step; set data.cache=false.")
        if int(cfg.train.lora.rank) > 0:
            raise ValueError("method 'dream' takes its LoRA settings from model.options.lora_rank / lora_alpha; leave train.lora.rank at 0.")
        self.stage = int(opts["stage"])
        m, seed = cfg.model, cfg.seed

        if m.pretrained:  # a Dream Engine folder (e.g. the stage-1 output, or a converted release)
            pipe = DreamEnginePipeline.from_pretrained(m.pretrained)
            self.vae, self.lmm, self.transformer = pipe.vae, pipe.lmm, pipe.transformer
            self.tokenizer, self.image_processor = pipe.tokenizer, pipe.image_processor
        else:
            if opts["lmm"]:
                from transformers import AutoModel, AutoTokenizer
                from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

                self.lmm = AutoModel.from_pretrained(opts["lmm"])
                self.tokenizer = AutoTokenizer.from_pretrained(opts["lmm"])
                self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(opts["lmm"])
            else:
                self.tokenizer = tiny_qwen2_tokenizer()
                self.image_processor = tiny_qwen2_vl_image_processor(int(opts["image_pixels"]))
                self.lmm = tiny_qwen2_vl(int(opts["lmm_hidden"]), int(opts["lmm_layers"]), int(opts["vision_depth"]),
                                         int(opts["vision_dim"]), tokenizer=self.tokenizer, seed=seed + 3)
            width = self.lmm.config.text_config.hidden_size
            if opts["sd3"]:
                base = SD3Transformer2DModel.from_pretrained(opts["sd3"], subfolder="transformer")
                self.transformer = DreamTransformer2DModel.from_sd3(base, width, int(opts["adapter_hidden"]))
                self.vae = AutoencoderKL.from_pretrained(opts["sd3"], subfolder="vae")
            else:
                t = m.tiny
                self.vae = AutoencoderKL.from_pretrained(t.vae) if t.vae else tiny_vae(tuple(t.vae_channels), bool(t.vae_mid_attention), t.norm_groups, seed=seed + 1)
                latent = cfg.data.size // 2 ** (len(self.vae.config.block_out_channels) - 1)
                self.transformer = tiny_dream_transformer(
                    lmm_hidden_size=width, in_channels=self.vae.config.latent_channels, num_layers=int(opts["dit_layers"]),
                    heads=int(opts["dit_heads"]), head_dim=int(opts["dit_head_dim"]), adapter_hidden_dim=int(opts["adapter_hidden"]),
                    sample_size=latent, pos_embed_max_size=max(latent, 16), seed=seed,
                )
        self.processor = Qwen2VLImageProcessorOnly(image_processor=self.image_processor, tokenizer=self.tokenizer)
        self.vae.requires_grad_(False).eval()
        self.lmm.requires_grad_(False).eval()  # frozen, as in the paper

        tr = self.transformer
        tr.requires_grad_(bool(opts["train_transformer"]))
        self.lora = self.stage == 2 and not opts["train_transformer"] and int(opts["lora_rank"]) > 0
        if self.lora:
            from peft import LoraConfig

            rank = int(opts["lora_rank"])
            tr.add_adapter(LoraConfig(r=rank, lora_alpha=int(opts["lora_alpha"] or rank), init_lora_weights="gaussian",
                                      target_modules=DIT_LORA_TARGETS))
            for name, p in tr.named_parameters():
                p.requires_grad_("lora_" in name)
        for mod in tr.adapter_modules().values():  # the adapters train in both stages
            mod.requires_grad_(True)
        self.dropout = ConditionDropout((frozenset({"text"}),), (float(cfg.train.conditioning_dropout),))

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer}

    def frozen(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "lmm": self.lmm}

    def fingerprint_parts(self) -> dict:
        return {"method": self.name, "stage": self.stage, "lora": self.lora, "transformer": dict(self.transformer.config),
                "lmm": self.lmm.config.text_config.hidden_size}

    def collate(self, items: list[dict]) -> dict:
        batch = super().collate(items)
        batch["source_image"] = [it["source"] for it in items]
        batch["target_image"] = [it["target"] for it in items]
        batch["references"] = [list(it.get("references") or []) for it in items]
        batch["caption"] = [it.get("auxiliary_prompt") or "" for it in items]
        batch["task"] = [it.get("task") or "" for it in items]
        # the images this stage's prompts can use, resized and patched here, in the DataLoader workers
        if self.stage == 1:
            used = batch["target_image"]
        else:
            used = [im for refs, src in zip(batch["references"], batch["source_image"]) for im in (refs or [src])]
        attach_patches(self.processor, used)
        return batch

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the target goes through the VAE: Dream Engine sees inputs through the LMM alone."""
        with torch.no_grad():
            dist = self.vae.encode(target.to(self.vae.device, self.vae.dtype)).latent_dist
            return {"target_mean": dist.mean, "target_std": dist.std}

    def sample_prompts(self, batch: dict, r_task: torch.Tensor):
        """Each sample's (cond, null) in its stage's task format."""
        conds, nulls = [], []
        for k in range(len(batch["index"])):
            if self.stage == 1:
                caption = batch["caption"][k].strip()
                if float(r_task[k]) < float(self.opts["copy_prob"]) or not caption:
                    c, n = task_prompts("copy", image=batch["target_image"][k])
                else:
                    c, n = task_prompts("generate", text=caption)
            elif batch["references"][k]:
                c, n = task_prompts("interleaved", parts=interleave_references(batch["instruction"][k], batch["references"][k]))
            else:
                c, n = task_prompts("edit", image=batch["source_image"][k], text=batch["instruction"][k])
            conds.append(c)
            nulls.append(n)
        return conds, nulls

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        if "target_image" not in batch:
            raise ValueError("method 'dream' needs the images in every batch; set data.cache=false.")
        transformer = models["transformer"]
        lat = batch["latents"]
        device = lat["target_mean"].device
        shape = lat["target_mean"].shape[1:]
        # everything random about a sample comes from its own generator, in a fixed order
        eps_sample = randn_per_sample(generators, shape, device)
        noise = randn_per_sample(generators, shape, device)
        sigmas = flow.sample_sigmas(generators, "logit_normal", shift=float(self.opts["shift"])).to(device)
        r_drop = torch.stack([torch.rand((), generator=g) for g in generators])
        r_task = torch.stack([torch.rand((), generator=g) for g in generators])
        r_vit = torch.stack([torch.rand((), generator=g) for g in generators])

        x0 = scaled_target_latents(lat, eps_sample, self.vae)
        x_t = flow.noisy(x0, noise, sigmas)

        conds, nulls = self.sample_prompts(batch, r_task)
        with torch.no_grad():
            states, _ = encode_prompts(self.lmm, self.processor, conds + nulls, device=device,
                                       vit_ratio=r_vit.repeat(2) if self.opts["random_vit_ratio"] else None)
        n = len(conds)
        cond = build_conditioning(states[:n], states[n:], x_t.dtype)
        selected = cond.select(self.dropout.masks(r_drop, device))
        v = transformer_forward(transformer, x_t, selected, flow.timesteps(sigmas).to(x_t.dtype))
        if self.opts["precondition_outputs"]:
            return F.mse_loss(flow.x0_from_velocity(x_t, v, sigmas).float(), x0.float())
        return F.mse_loss(v.float(), flow.velocity_target(x0, noise).float())

    def pipeline(self, models: dict[str, torch.nn.Module]) -> DreamEnginePipeline:
        pipe = DreamEnginePipeline(
            vae=self.vae, lmm=self.lmm, tokenizer=self.tokenizer, image_processor=self.image_processor,
            transformer=models["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(self.opts["shift"])),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export(self, path, models: dict[str, torch.nn.Module]) -> None:
        """Write a folder `DreamEnginePipeline.from_pretrained` loads; stage-2 LoRA is merged into the DiT."""
        transformer = models["transformer"]
        if self.lora:
            transformer = copy.deepcopy(transformer)
            transformer.fuse_lora()
            transformer.unload_lora()
        self.pipeline({**models, "transformer": transformer}).save_pretrained(path, safe_serialization=True)
