"""InstructCV (InstructPix2Pix-style) training: UNet (+ optionally the text encoder) on paired edits.

- target latents: VAE posterior sample x scaling factor; image condition: posterior mode, unscaled;
- conditioning built by the pipeline's own `build_conditioning`, dropped with IP2P's
  `ip2p_dropout` through `Conditioning.select`, exactly the nulls guidance uses;
- epsilon (or v) MSE under the SD DDPM schedule.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from editkit.encoders import encode_clip_text
from editkit.guidance import ip2p_dropout
from editkit.pipelines.instructcv import InstructCVPipeline, build_conditioning, unet_forward
from editkit.testing import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_unet, tiny_vae
from editkit.data.phrasings import slot_words
from editkit.training.prompts import noisy_instructions
from editkit.training.tokens import extend_embeddings, word_tokenizer

from .base import MethodTraining, randn_per_sample, scaled_target_latents, sd_noise_schedules

BYTE_VOCAB = 514  # editkit.testing.tiny_clip_tokenizer: 256 bytes, their word-final forms, start and end
WORD_CORPUS = 300  # training instructions per task that the word merges are learned on


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """IP2P surgery: a text-to-image UNet gets extra zero-initialised input channels."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


class InstructCVTraining(MethodTraining):
    name = "instructcv"

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        if m.pretrained:
            src = m.pretrained
            self.unet = widen_conv_in(UNet2DConditionModel.from_pretrained(src, subfolder="unet"), 8)
            self.vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
            self.text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
            self.tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
        else:
            t = m.tiny
            self.tokenizer = tiny_clip_tokenizer(model_max_length=t.text_max_length)
            self.text_encoder = tiny_clip_text_encoder(
                hidden_size=t.text_hidden, num_hidden_layers=t.text_layers, max_length=t.text_max_length, seed=cfg.seed + 2
            )
            self.vae = AutoencoderKL.from_pretrained(t.vae) if t.vae else tiny_vae(tuple(t.vae_channels), bool(t.vae_mid_attention), t.norm_groups, seed=cfg.seed + 1)
            self.unet = tiny_unet(
                block_out_channels=tuple(t.unet_channels),
                cross_attention_dim=t.text_hidden,
                layers_per_block=t.unet_layers_per_block,
                norm_num_groups=t.norm_groups,
                seed=cfg.seed,
            )
        if int(m.word_merges) > 0 and len(self.tokenizer) == BYTE_VOCAB:  # a model that has its words keeps them
            self.add_word_tokens(int(m.word_merges))
        self.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(bool(m.train_text_encoder))
        self.noise_scheduler, self.sampler = sd_noise_schedules(cfg.train)
        self.dropout = ip2p_dropout(float(cfg.train.conditioning_dropout))
        self.instruction_noise = float(cfg.train.instruction_noise)
        self.instruction_noise_drop = float(cfg.train.instruction_noise_drop)
        self.noise_keep_words = slot_words() if cfg.train.instruction_noise_keep_slots else frozenset()
        # default guidance scales for the exported pipeline; those not given keep the pipeline's (official)
        opts = dict(m.get("options") or {})
        self.guidance = {k: float(opts.pop(k)) for k in ("guidance_scale", "image_guidance_scale") if k in opts}
        if opts:
            raise ValueError(f"unknown model.options for instructcv: {sorted(opts)}; known: guidance_scale, image_guidance_scale")

    def add_word_tokens(self, num_merges: int) -> None:
        """Learn word merges on the training split's instructions and grow the text encoder to match."""
        from editkit.data import make_sample, parse_tasks

        d = self.cfg.data
        texts = [make_sample(task, "train", i, int(d.size)).instruction for task in parse_tasks(d.tasks) for i in range(WORD_CORPUS)]
        words = word_tokenizer(texts, self.tokenizer, num_merges)
        extend_embeddings(self.text_encoder, self.tokenizer, words)
        self.tokenizer = words

    def trainable(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.unet}
        if self.cfg.model.train_text_encoder:
            mods["text_encoder"] = self.text_encoder
        return mods

    def frozen(self) -> dict[str, torch.nn.Module]:
        mods = {"vae": self.vae}
        if not self.cfg.model.train_text_encoder:
            mods["text_encoder"] = self.text_encoder
        return mods

    def fingerprint_parts(self) -> dict:
        return {"method": self.name, "unet": dict(self.unet.config), "text": self.text_encoder.config.to_dict().get("hidden_size")}

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """What latent caching stores: the source's mode and the target's posterior mean/std."""
        with torch.no_grad():
            dist = self.vae.encode(target.to(self.vae.device, self.vae.dtype)).latent_dist
            return {
                "image_latents": self.vae.encode(source.to(self.vae.device, self.vae.dtype)).latent_dist.mode(),
                "target_mean": dist.mean,
                "target_std": dist.std,
            }

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        unet = models["unet"]
        text_encoder = models.get("text_encoder", self.text_encoder)
        device = batch["latents"]["image_latents"].device
        lat = batch["latents"]
        bsz = lat["image_latents"].shape[0]
        shape = lat["target_mean"].shape[1:]
        # everything random about a sample comes from its own generator
        eps_sample = randn_per_sample(generators, shape, device)
        noise = randn_per_sample(generators, shape, device)
        timesteps = torch.stack([torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (), generator=g) for g in generators]).to(device)
        r = torch.stack([torch.rand((), generator=g) for g in generators])

        latents = scaled_target_latents(lat, eps_sample, self.vae)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        instructions = list(batch["instruction"])
        if self.instruction_noise > 0:  # drawn after everything above, so runs without it keep their streams
            instructions = noisy_instructions(instructions, generators, self.instruction_noise, self.instruction_noise_drop,
                                              keep_words=self.noise_keep_words)
        prompts = instructions + [""]
        states = encode_clip_text(self.tokenizer, text_encoder, prompts, device)
        cond = build_conditioning(states[:bsz], states[bsz:], lat["image_latents"], noisy.dtype)
        selected = cond.select(self.dropout.masks(r, device))
        pred = unet_forward(unet, noisy, selected, timesteps)

        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())


    def pipeline(self, models: dict[str, torch.nn.Module]) -> InstructCVPipeline:
        scheduler = copy.deepcopy(self.sampler)  # predicts what the UNet was trained to, on its schedule
        pipe = InstructCVPipeline(
            vae=self.vae,
            text_encoder=models.get("text_encoder", self.text_encoder),
            tokenizer=self.tokenizer,
            unet=models["unet"],
            scheduler=scheduler,
            **self.guidance,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
