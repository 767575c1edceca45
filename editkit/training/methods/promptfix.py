"""PromptFix training: the UNet (with its auxiliary cross-attention) on restoration pairs.

- target latents: VAE posterior sample x scaling factor; image condition: posterior mode, unscaled;
- instruction and auxiliary prompt encoded separately by the same CLIP; conditions built by the
  pipeline's own `build_conditioning` (with the two texts in separate groups, so they drop independently);
- dropout (spec §8), `model.options.dropout`:
    "independent" (default): instruction 0.2, auxiliary 0.075, image 0.075, each drawn on its own
      (probabilities overridable with `model.options.{instruction,auxiliary,image}_dropout`);
    "official": the released code's joint pattern from one uniform r per sample
      (r < 0.075: both texts null; < 0.15: instruction null + image zeroed; < 0.2: instruction null);
- epsilon (or v) MSE under the SD DDPM schedule.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from editkit.encoders import encode_clip_text
from editkit.guidance import ConditionDropout
from editkit.modeling.promptfix_unet import PromptFixUNet2DConditionModel
from editkit.pipelines.promptfix import PromptFixPipeline, build_conditioning, unet_forward
from editkit.testing import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_unet, tiny_vae
from editkit.data.phrasings import slot_words
from editkit.training.prompts import noisy_instructions

from .base import MethodTraining, randn_per_sample, scaled_target_latents, sd_noise_schedules
from .instructcv import widen_conv_in

INDEPENDENT_DROPOUT = {"instruction": 0.2, "auxiliary": 0.075, "image": 0.075}
# the official joint pattern over one uniform r (spec §8)
OFFICIAL_DROPOUT = ConditionDropout(
    patterns=(frozenset({"instruction", "auxiliary"}), frozenset({"instruction", "image"}), frozenset({"instruction"})),
    probs=(0.075, 0.075, 0.05),
)
TRAIN_GROUPS = {"encoder_hidden_states": "instruction", "auxiliary_hidden_states": "auxiliary", "image_latents": "image"}


def split_text_groups(cond):
    """The pipeline's conditioning with instruction and auxiliary states in their own groups."""
    from editkit.conditioning import Condition, Conditioning

    return Conditioning({k: Condition(c.value, c.null, TRAIN_GROUPS[k]) for k, c in cond.items()})


class PromptFixTraining(MethodTraining):
    name = "promptfix"

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        opts = dict(m.get("options") or {})
        self.dropout_mode = opts.pop("dropout", "independent")
        if self.dropout_mode not in ("independent", "official"):
            raise ValueError(f"model.options.dropout must be 'independent' or 'official', got {self.dropout_mode!r}")
        self.dropout_p = {g: float(opts.pop(f"{g}_dropout", p)) for g, p in INDEPENDENT_DROPOUT.items()}
        for g, p in self.dropout_p.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"model.options.{g}_dropout must be in [0, 1], got {p}")
        self.resize_side = opts.pop("resize_side", int(cfg.data.size))  # the exported pipeline's working size
        self.instruction_noise = float(cfg.train.instruction_noise)
        self.instruction_noise_drop = float(cfg.train.instruction_noise_drop)
        self.noise_keep_words = slot_words() if cfg.train.instruction_noise_keep_slots else frozenset()
        # default guidance scales for the exported pipeline; those not given keep the pipeline's (official)
        self.guidance = {k: float(opts.pop(k)) for k in ("guidance_scale", "image_guidance_scale") if k in opts}
        if opts:
            raise ValueError(
                f"unknown model.options for promptfix: {sorted(opts)}; known: dropout, *_dropout, resize_side, guidance_scale, image_guidance_scale"
            )
        if m.pretrained:
            src = m.pretrained
            unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
            if not getattr(unet.config, "auxiliary_cross_attention_dim", None):
                # SD1.5 (or IP2P) start: widen conv_in (IP2P rule), add fresh auxiliary layers
                unet = widen_conv_in(unet, 2 * unet.config.out_channels)
                self.unet = PromptFixUNet2DConditionModel.from_unet(unet, unet.config.cross_attention_dim)
            else:
                self.unet = PromptFixUNet2DConditionModel.from_pretrained(src, subfolder="unet")
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
            base = tiny_unet(
                block_out_channels=tuple(t.unet_channels),
                cross_attention_dim=t.text_hidden,
                layers_per_block=t.unet_layers_per_block,
                norm_num_groups=t.norm_groups,
                seed=cfg.seed,
            )
            torch.manual_seed(cfg.seed + 3)  # the auxiliary layers' initialisation
            self.unet = PromptFixUNet2DConditionModel.from_unet(base, t.text_hidden)
        self.vae.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(bool(m.train_text_encoder))
        self.noise_scheduler, self.sampler = sd_noise_schedules(cfg.train)

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
        return {
            "method": self.name,
            "unet": dict(self.unet.config),
            "text": self.text_encoder.config.to_dict().get("hidden_size"),
            "dropout": [self.dropout_mode, self.dropout_p],
        }

    def collate(self, items: list[dict]) -> dict:
        return {**super().collate(items), "auxiliary_prompt": [it.get("auxiliary_prompt") or "" for it in items]}

    def encode_images(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            dist = self.vae.encode(target.to(self.vae.device, self.vae.dtype)).latent_dist
            return {
                "image_latents": self.vae.encode(source.to(self.vae.device, self.vae.dtype)).latent_dist.mode(),
                "target_mean": dist.mean,
                "target_std": dist.std,
            }

    def dropout_masks(self, generators: list[torch.Generator], device) -> dict[str, torch.Tensor]:
        """Per-group (B,) bool masks, drawn from each sample's own generator."""
        if self.dropout_mode == "official":
            r = torch.stack([torch.rand((), generator=g) for g in generators])
            return OFFICIAL_DROPOUT.masks(r, device)
        r = torch.stack([torch.rand(3, generator=g) for g in generators])  # one draw per group
        return {g: (r[:, k] < self.dropout_p[g]).to(device) for k, g in enumerate(INDEPENDENT_DROPOUT)}

    def loss(self, models: dict[str, torch.nn.Module], batch: dict, generators: list[torch.Generator]) -> torch.Tensor:
        unet = models["unet"]
        text_encoder = models.get("text_encoder", self.text_encoder)
        lat = batch["latents"]
        device = lat["image_latents"].device
        bsz = lat["image_latents"].shape[0]
        shape = lat["target_mean"].shape[1:]
        eps_sample = randn_per_sample(generators, shape, device)
        noise = randn_per_sample(generators, shape, device)
        timesteps = torch.stack([torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (), generator=g) for g in generators]).to(device)
        drop = self.dropout_masks(generators, device)

        latents = scaled_target_latents(lat, eps_sample, self.vae)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        auxiliary = batch.get("auxiliary_prompt")
        if auxiliary is None:
            raise ValueError("PromptFix training needs auxiliary prompts in the batch (collate/cache provide `auxiliary_prompt`).")
        instructions = list(batch["instruction"])
        if self.instruction_noise > 0:  # drawn after everything above, so runs without it keep their streams
            instructions = noisy_instructions(instructions, generators, self.instruction_noise, self.instruction_noise_drop,
                                              keep_words=self.noise_keep_words)
        states = encode_clip_text(self.tokenizer, text_encoder, instructions + list(auxiliary) + [""], device)
        cond = build_conditioning(states[:bsz], states[-1:], lat["image_latents"], noisy.dtype, states[bsz : 2 * bsz])
        selected = split_text_groups(cond).select(drop)
        pred = unet_forward(unet, noisy, selected, timesteps)

        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def pipeline(self, models: dict[str, torch.nn.Module]) -> PromptFixPipeline:
        scheduler = copy.deepcopy(self.sampler)  # predicts what the UNet was trained to, on its schedule
        pipe = PromptFixPipeline(
            vae=self.vae,
            text_encoder=models.get("text_encoder", self.text_encoder),
            tokenizer=self.tokenizer,
            unet=models["unet"],
            scheduler=scheduler,
            resize_side=self.resize_side,
            **self.guidance,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
