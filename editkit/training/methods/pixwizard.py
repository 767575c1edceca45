"""PixWizard training: the DiT (+ optionally the LLM text encoder) on paired image-to-image tasks.

- rectified flow as in the official code: t ~ U(0, 1), x_t = t x1 + (1 - t) x0 with x1 the
  data latent and x0 noise, target u = x1 - x0; the model is fed t (editkit.flow's sigma = 1 - t);
- targets: VAE posterior sample x scaling factor; source: posterior mode x scaling factor;
- conditioning built by the pipeline's own `build_conditioning`, dropped with the paper's
  5 % text / 5 % both / 5 % image (`pixwizard_dropout`; dropped VAE latents become Gaussian
  noise, dropped CLIP tokens zeros), the nulls guidance uses;
- the token sampler draws its Gumbel noise from each sample's generator (straight-through top-K);
- any bucket size: every batch holds one size (data.buckets / data.bucket_sizes), RoPE follows it.

Method-specific sizes live under `model.options` (see OPTION_DEFAULTS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from editkit.flow import noisy, sample_sigmas
from editkit.pipelines.pixwizard import (
    PixWizardPipeline,
    build_conditioning,
    clip_image_tokens,
    encode_clip_pooled,
    encode_llm_text,
    pixwizard_dropout,
    transformer_forward,
)
from editkit.testing import tiny_clip_tokenizer, tiny_vae
from editkit.testing.pixwizard import (
    pixwizard_flow_scheduler,
    tiny_clip_text_with_projection,
    tiny_clip_vision,
    tiny_llm_text_encoder,
    tiny_llm_tokenizer,
    tiny_pixwizard_transformer,
)

from editkit.data.phrasings import slot_words
from editkit.training.prompts import noisy_instructions

from .base import MethodTraining, scaled_target_latents

OPTION_DEFAULTS = {
    "hidden_size": 128,  # DiT width
    "num_layers": 4,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "sample_tokens": 32,  # CLIP tokens kept per block
    "learn_sigma": False,
    "llm_hidden": 64,  # tiny Gemma
    "llm_layers": 2,
    "llm_max_length": 128,
    "clip_text_hidden": 32,
    "clip_text_layers": 2,
    "vision_hidden": 32,
    "vision_layers": 2,
    "vision_image_size": 32,
    "vision_patch": 4,
    "time_shift": 1.0,  # the sampler's shift (scheduler `shift`)
}


def pixwizard_options(cfg) -> dict:
    """`model.options` merged over the defaults; unknown keys are an error naming the valid ones."""
    given = dict(cfg.model.get("options") or {})
    unknown = set(given) - set(OPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model.options {sorted(unknown)} for pixwizard; valid: {sorted(OPTION_DEFAULTS)}")
    return {**OPTION_DEFAULTS, **given}


class PixWizardTraining(MethodTraining):
    name = "pixwizard"

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        self.options = o = pixwizard_options(cfg)
        if m.pretrained:
            pipe = PixWizardPipeline.from_pretrained(m.pretrained)
            self.transformer, self.vae = pipe.transformer, pipe.vae
            self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
            self.clip_text_encoder, self.clip_tokenizer = pipe.clip_text_encoder, pipe.clip_tokenizer
            self.image_encoder = pipe.image_encoder
        else:
            t = m.tiny
            self.vae = AutoencoderKL.from_pretrained(t.vae) if t.vae else tiny_vae(tuple(t.vae_channels), bool(t.vae_mid_attention), t.norm_groups, seed=cfg.seed + 1)
            vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.tokenizer = tiny_llm_tokenizer(model_max_length=int(o["llm_max_length"]))
            self.text_encoder = tiny_llm_text_encoder(hidden_size=int(o["llm_hidden"]), num_hidden_layers=int(o["llm_layers"]), seed=cfg.seed + 2)
            self.clip_tokenizer = tiny_clip_tokenizer(model_max_length=t.text_max_length)
            self.clip_text_encoder = tiny_clip_text_with_projection(
                hidden_size=int(o["clip_text_hidden"]), projection_dim=int(o["clip_text_hidden"]),
                num_hidden_layers=int(o["clip_text_layers"]), max_length=t.text_max_length, seed=cfg.seed + 3,
            )
            self.image_encoder = tiny_clip_vision(
                hidden_size=int(o["vision_hidden"]), image_size=int(o["vision_image_size"]), patch_size=int(o["vision_patch"]),
                num_hidden_layers=int(o["vision_layers"]), seed=cfg.seed + 4,
            )
            self.transformer = tiny_pixwizard_transformer(
                hidden_size=int(o["hidden_size"]), num_layers=int(o["num_layers"]), num_attention_heads=int(o["num_attention_heads"]),
                num_kv_heads=int(o["num_kv_heads"]), cross_attention_dim=int(o["llm_hidden"]),
                pooled_text_dim=int(o["clip_text_hidden"]), image_embed_dim=int(o["vision_hidden"]),
                sample_tokens=int(o["sample_tokens"]), sample_size=int(cfg.data.size) // vae_factor,
                learn_sigma=bool(o["learn_sigma"]), seed=cfg.seed,
            )
        self.vae.requires_grad_(False).eval()
        self.clip_text_encoder.requires_grad_(False).eval()
        self.image_encoder.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(bool(m.train_text_encoder))
        self.dropout = pixwizard_dropout(float(cfg.train.conditioning_dropout))
        self.instruction_noise = float(cfg.train.instruction_noise)
        self.instruction_noise_drop = float(cfg.train.instruction_noise_drop)
        self.noise_keep_words = slot_words() if cfg.train.instruction_noise_keep_slots else frozenset()

    def trainable(self) -> dict[str, torch.nn.Module]:
        mods = {"transformer": self.transformer}
        if self.cfg.model.train_text_encoder:
            mods["text_encoder"] = self.text_encoder
        return mods

    def frozen(self) -> dict[str, torch.nn.Module]:
        mods = {"vae": self.vae, "clip_text_encoder": self.clip_text_encoder, "image_encoder": self.image_encoder}
        if not self.cfg.model.train_text_encoder:
            mods["text_encoder"] = self.text_encoder
        return mods

    def fingerprint_parts(self) -> dict:
        return {"method": self.name, "transformer": dict(self.transformer.config), "options": self.options,
                "text": self.text_encoder.config.get_text_config().hidden_size}

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """What latent caching stores: the source's mode, the target's posterior mean/std, the source's CLIP tokens."""
        with torch.no_grad():
            dist = self.vae.encode(target.to(self.vae.device, self.vae.dtype)).latent_dist
            src = self.vae.encode(source.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
            return {
                "image_latents": (src - self._shift()) * self.vae.config.scaling_factor,
                "target_mean": dist.mean,
                "target_std": dist.std,
                "image_embeds": clip_image_tokens(self.image_encoder, source),
            }

    def _shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        transformer = models["transformer"]
        text_encoder = models.get("text_encoder", self.text_encoder)
        lat = batch["latents"]
        device = lat["image_latents"].device
        bsz = lat["image_latents"].shape[0]
        shape = lat["target_mean"].shape[1:]
        n_layers = len(self.transformer.layers)
        n_tokens = lat["image_embeds"].shape[1]
        # everything random about a sample comes from its own generator, in a fixed order
        eps_sample, noise, null_noise, gumbel, r = [], [], [], [], []
        for g in generators:
            eps_sample.append(torch.randn(shape, generator=g))
            noise.append(torch.randn(shape, generator=g))
            null_noise.append(torch.randn(shape, generator=g))
            u = torch.rand((n_layers, n_tokens), generator=g).clamp(1e-20, 1.0 - 1e-7)
            gumbel.append(-torch.log(-torch.log(u)))
            r.append(torch.rand((), generator=g))
        sigmas = sample_sigmas(generators, "uniform").to(device)  # sigma = 1 - t, t ~ U(0, 1)
        eps_sample, noise, null_noise = (torch.stack(x).to(device) for x in (eps_sample, noise, null_noise))
        gumbel = torch.stack(gumbel, dim=1).to(device)
        r = torch.stack(r)

        data = scaled_target_latents(lat, eps_sample, self.vae)
        x_t = noisy(data, noise, sigmas)
        target = data - noise  # PixWizard's velocity u = x1 - x0

        instructions = batch["instruction"]
        if self.instruction_noise > 0:  # drawn after everything above, so runs without it keep their streams
            instructions = noisy_instructions(instructions, generators, self.instruction_noise, self.instruction_noise_drop,
                                              keep_words=self.noise_keep_words)
        prompts = instructions + [""]
        states, mask = encode_llm_text(self.tokenizer, text_encoder, prompts, device, max_length=int(self.options["llm_max_length"]))
        with torch.no_grad():
            pooled = encode_clip_pooled(self.clip_tokenizer, self.clip_text_encoder, prompts, device)
        dtype = x_t.dtype
        cond = build_conditioning(states[:bsz], mask[:bsz], pooled[:bsz], states[bsz:], mask[bsz:], pooled[bsz:],
                                  lat["image_latents"], null_noise, lat["image_embeds"], dtype)
        selected = cond.select(self.dropout.masks(r, device))
        pred = transformer_forward(transformer, x_t, selected, 1.0 - sigmas, token_selection="gumbel", token_noise=gumbel)
        return F.mse_loss(pred.float(), target.float())

    def pipeline(self, models: dict[str, torch.nn.Module]) -> PixWizardPipeline:
        pipe = PixWizardPipeline(
            transformer=models["transformer"],
            vae=self.vae,
            text_encoder=models.get("text_encoder", self.text_encoder),
            tokenizer=self.tokenizer,
            clip_text_encoder=self.clip_text_encoder,
            clip_tokenizer=self.clip_tokenizer,
            image_encoder=self.image_encoder,
            scheduler=pixwizard_flow_scheduler(float(self.options["time_shift"])),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
