"""Dream Engine: adapter swap, interleaved prompts, CFG nulls, pipeline parity, converter, training."""

from __future__ import annotations

import copy
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from torch import nn

from editkit.convert.dream import convert_checkpoint, merge_lora
from editkit.data import make_sample
from editkit.modeling.dream_adapter import DreamTransformer2DModel, attach_adapters, pool_states
from editkit.modeling.dream_encoder import (
    IMAGE_PLACEHOLDER,
    encode_prompts,
    interleave_references,
    task_prompts,
    tokenize_prompts,
)
from editkit.evaluation.adapters import dream as evaluate_adapter
from editkit.pipelines.dream import DreamEnginePipeline, sample_prompts
from editkit.testing import tiny_vae
from editkit.testing.dream import tiny_dream_transformer, tiny_qwen2_vl, tiny_qwen2_vl_processor
from editkit.testing.sd3 import sd3_flow_scheduler

RED = PIL.Image.new("RGB", (64, 64), (230, 20, 20))
BLUE = PIL.Image.new("RGB", (64, 64), (20, 20, 230))


@pytest.fixture(scope="module")
def parts():
    proc = tiny_qwen2_vl_processor()
    lmm = tiny_qwen2_vl(tokenizer=proc.tokenizer)
    vae = tiny_vae(seed=1)
    vae.register_to_config(shift_factor=0.0)  # StableDiffusion3Pipeline decodes with the shift
    return {"proc": proc, "lmm": lmm, "vae": vae, "transformer": tiny_dream_transformer(seed=2)}


@pytest.fixture(scope="module")
def pipe(parts):
    p = DreamEnginePipeline(vae=parts["vae"], lmm=parts["lmm"], tokenizer=parts["proc"].tokenizer,
                            image_processor=parts["proc"].image_processor, transformer=parts["transformer"],
                            scheduler=sd3_flow_scheduler())  # = tiny_dream_components(seed=0), parts kept for the tests
    p.set_progress_bar_config(disable=True)
    return p


def _stock_config(tr: DreamTransformer2DModel) -> dict:
    return tr.sd3_config()


def _dit_inputs(tr, n_tokens=11, batch=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    states = torch.randn(batch, n_tokens, tr.config.joint_attention_dim, generator=g)
    return x, states, torch.tensor([700.0, 30.0][:batch])


# -- 2: the adapter -------------------------------------------------------------------------


def test_adapter_swap_on_stock_sd3_is_identical(parts):
    tr = parts["transformer"]
    stock = SD3Transformer2DModel(**_stock_config(tr)).eval()
    attach_adapters(stock, copy.deepcopy(tr.context_embedder), copy.deepcopy(tr.time_text_embed.text_embedder))
    stock.load_state_dict(tr.state_dict(), strict=True)
    x, states, t = _dit_inputs(tr)
    with torch.no_grad():
        ours = tr(x, encoder_hidden_states=states, pooled_projections=pool_states(states), timestep=t).sample
        ref = stock(x, encoder_hidden_states=states, pooled_projections=states.mean(1), timestep=t).sample
        # the adapters kept outside a stock DiT whose own embedders are identities: same numbers
        outside = SD3Transformer2DModel(**_stock_config(tr)).eval()
        outside.context_embedder, outside.time_text_embed.text_embedder = nn.Identity(), nn.Identity()
        outside.load_state_dict({k: v for k, v in tr.state_dict().items()
                                 if not k.startswith(("context_embedder.", "time_text_embed.text_embedder."))}, strict=True)
        out2 = outside(x, encoder_hidden_states=tr.context_embedder(states),
                       pooled_projections=tr.time_text_embed.text_embedder(states.mean(1)), timestep=t).sample
        other_pool = tr(x, encoder_hidden_states=states, pooled_projections=states[:, 0], timestep=t).sample
    assert (ours - ref).abs().max().item() == 0.0
    assert (ours - out2).abs().max().item() == 0.0
    assert (ours - other_pool).abs().max().item() > 1e-4  # the pooled path matters
    # official sizes: 1536 -> 4096 -> 2432 for both MLPs
    assert tr.context_embedder.linear_1.in_features == tr.config.joint_attention_dim == 32
    assert tr.time_text_embed.text_embedder.linear_2.out_features == 32


def test_from_sd3_keeps_the_dit_and_round_trips(parts, tmp_path):
    base = SD3Transformer2DModel(**{**_stock_config(parts["transformer"]), "joint_attention_dim": 24, "pooled_projection_dim": 16}).eval()
    dream = DreamTransformer2DModel.from_sd3(base, lmm_hidden_size=32, adapter_hidden_dim=48)
    assert torch.equal(dream.transformer_blocks[0].attn.to_q.weight, base.transformer_blocks[0].attn.to_q.weight)
    assert dream.context_embedder.linear_1.weight.shape == (48, 32)
    dream.save_pretrained(tmp_path)
    again = DreamTransformer2DModel.from_pretrained(tmp_path)
    for (k, a), (_, b) in zip(dream.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="pooled_projection_dim"):
        DreamTransformer2DModel(joint_attention_dim=32, pooled_projection_dim=16, num_layers=1, num_attention_heads=1,
                                attention_head_dim=8, caption_projection_dim=8, adapter_hidden_dim=8)


# -- 1: the encoder side ---------------------------------------------------------------------


def test_interleaved_prompt_places_each_image_where_the_text_says(parts):
    proc, lmm = parts["proc"], parts["lmm"]
    text = "Put the object of image 2 on the background of image 1."
    seq = interleave_references(text, [RED, BLUE])
    assert seq[0] == "Put the object of image 2" and seq[1] is BLUE
    assert seq[2] == " on the background of image 1" and seq[3] is RED and seq[4] == "."
    cond, null = task_prompts("interleaved", parts=seq)
    assert cond.text == f"Generate Image: Put the object of image 2{IMAGE_PLACEHOLDER} on the background of image 1{IMAGE_PLACEHOLDER}."
    inputs = tokenize_prompts(proc, [cond])
    ids = inputs["input_ids"][0]
    image_id = proc.image_token_id
    runs = torch.nonzero(ids == image_id).flatten().tolist()
    assert len(runs) == 32  # 16 merged tokens per 112 x 112 image
    first, second = runs[:16], runs[16:]
    assert first == list(range(first[0], first[0] + 16)) and second == list(range(second[0], second[0] + 16))
    before = proc.tokenizer.decode(ids[: first[0]])
    assert before.endswith("Put the object of image 2<|vision_start|>")
    between = proc.tokenizer.decode(ids[first[-1] + 1 : second[0]])
    assert between == "<|vision_end|> on the background of image 1<|vision_start|>"
    assert inputs["mm_token_type_ids"][0, first[0]].item() == 1 and inputs["mm_token_type_ids"][0, 0].item() == 0
    # the first run carries image 2 (blue): with the full ViT blend its rows are blue's merged ViT features
    with torch.no_grad():
        states, _ = encode_prompts(lmm, proc, [cond], vit_ratio=1.0)
        blue = proc.image_processor(images=[BLUE], return_tensors="pt")
        red = proc.image_processor(images=[RED], return_tensors="pt")
        vit_blue = lmm.get_image_features(blue["pixel_values"], blue["image_grid_thw"]).pooler_output[0]
        vit_red = lmm.get_image_features(red["pixel_values"], red["image_grid_thw"]).pooler_output[0]
    torch.testing.assert_close(states[0, first], vit_blue, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[0, second], vit_red, atol=1e-5, rtol=1e-5)
    # an image the text never mentions follows the text; a mention without its image is an error
    assert interleave_references("Combine them.", [RED])[-1] is RED
    with pytest.raises(ValueError, match="image 3"):
        interleave_references("Put image 3 here.", [RED, BLUE])


def _official_positions(ids: torch.Tensor, mask: torch.Tensor, image_id: int, grids: list[tuple[int, int]]) -> torch.Tensor:
    """Qwen2-VL M-RoPE positions by hand, as transformers 4.x (the official runtime) gives them: text counts on,
    an image's merged h x w tokens take (t, row, col) offsets from where it starts, padding sits at 1."""
    out = torch.ones(3, len(ids), ids.shape[1], dtype=torch.long)
    grid_iter = iter(grids)
    for b in range(len(ids)):
        pos, j, rows = 0, 0, []
        live = ids[b][mask[b].bool()].tolist()
        while j < len(live):
            if live[j] == image_id:
                h, w = next(grid_iter)
                rows += [(pos, pos + r, pos + c) for r in range(h) for c in range(w)]
                pos, j = pos + max(h, w), j + h * w
            else:
                rows.append((pos, pos, pos))
                pos, j = pos + 1, j + 1
        out[:, b, mask[b].bool()] = torch.tensor(rows).T
    return out


def test_position_ids_follow_the_official_runtime_on_every_transformers_version(parts):
    from editkit.modeling.dream_encoder import DreamPrompt, official_position_ids

    proc, lmm = parts["proc"], parts["lmm"]
    cond, _ = task_prompts("interleaved", parts=["A small", RED, "picture"])
    prompts = [DreamPrompt("Generate Image: a cat"), cond, DreamPrompt("Generate Image: a much longer prompt with many words")]
    inputs = tokenize_prompts(proc, prompts)
    assert (inputs["attention_mask"] == 0).any()  # the short prompts are padded
    positions = official_position_ids(lmm, inputs)
    expected = _official_positions(inputs["input_ids"], inputs["attention_mask"], proc.image_token_id, [(4, 4)])
    assert torch.equal(positions, expected)
    # the states come from exactly these positions, and a prompt's own tokens do not depend on the batch
    with torch.no_grad():
        states, used = encode_prompts(lmm, proc, prompts)
        direct = lmm(**used, position_ids=expected, output_hidden_states=True).hidden_states[-1]
        alone, _ = encode_prompts(lmm, proc, prompts[:1])
    torch.testing.assert_close(states, direct, rtol=0, atol=0)
    n = int(inputs["attention_mask"][0].sum())
    torch.testing.assert_close(states[0, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_vit_blend_ratio(parts):
    proc, lmm = parts["proc"], parts["lmm"]
    cond, _ = task_prompts("edit", image=RED, text="make it blue")
    with torch.no_grad():
        plain, inputs = encode_prompts(lmm, proc, [cond, cond])
        zero, _ = encode_prompts(lmm, proc, [cond, cond], vit_ratio=0.0)
        half, _ = encode_prompts(lmm, proc, [cond, cond], vit_ratio=torch.tensor([0.5, 0.0]))
        full, _ = encode_prompts(lmm, proc, [cond, cond], vit_ratio=1.0)
    img = inputs["input_ids"][0] == proc.image_token_id
    assert torch.equal(plain, zero)
    torch.testing.assert_close(half[0, img], 0.5 * plain[0, img] + 0.5 * full[0, img])
    assert torch.equal(half[1], plain[1])  # per-sample ratio (fixes the official batch > 1 crash)
    assert torch.equal(half[0, ~img], plain[0, ~img])  # text positions untouched
    with pytest.raises(ValueError, match="vit_ratio"):
        encode_prompts(lmm, proc, [cond], vit_ratio=1.5)
    with torch.no_grad():  # fixed-length padding (official parity option): content states unchanged
        fixed, _ = encode_prompts(lmm, proc, [cond], max_sequence_length=80)
    assert fixed.shape[1] == 80
    torch.testing.assert_close(fixed[:, : plain.shape[1]], plain[:1], atol=1e-5, rtol=1e-5)


def test_cfg_null_keeps_the_image_tokens(parts, pipe):
    proc, lmm = parts["proc"], parts["lmm"]
    for task, kw in (("edit", {"image": RED, "text": "make it blue"}),
                     ("interleaved", {"parts": interleave_references("Put image 1 on image 2.", [RED, BLUE])})):
        cond, null = task_prompts(task, **kw)
        assert null.images == cond.images
        ids = tokenize_prompts(proc, [cond, null])["input_ids"]
        n_img = (ids == proc.image_token_id).sum(1)
        assert n_img[0] == n_img[1] == 16 * len(cond.images)
        assert "blue" not in null.text and "Put" not in null.text
    assert task_prompts("edit", image=RED, text="x")[1].text.endswith("following: ")
    assert task_prompts("edit", image=RED, text="x", official_null=True)[1].text.endswith("following:")
    copy_null = task_prompts("copy", image=RED)[1]
    assert copy_null.text == "Copy Image: " and copy_null.images == ()
    # the pipeline's null branch is exactly the null prompt encoded (padding to the cond length aside)
    _, cond, null = sample_prompts("Put image 1 on image 2.", None, [RED, BLUE], [], None)
    conditioning = pipe.encode_conditioning([cond], [null])
    dropped = conditioning.select({"text"})["encoder_hidden_states"]
    with torch.no_grad():
        alone, _ = encode_prompts(lmm, proc, [null])
        other, _ = encode_prompts(lmm, proc, [task_prompts("interleaved", parts=["x", BLUE, "y", BLUE])[1]])
    assert dropped.shape[1] > alone.shape[1]  # padded to the longer (cond) length, nothing truncated
    torch.testing.assert_close(dropped[:, : alone.shape[1]], alone, atol=1e-5, rtol=1e-5)
    assert (alone - other).abs().max() > 1e-3  # the null still sees the images


def test_shared_images_are_processed_once_with_the_same_outputs(parts, monkeypatch):
    """cond and null prompts share image objects; the processor resizes each distinct one once."""
    proc = parts["proc"]
    wide = PIL.Image.new("RGB", (96, 48), (20, 200, 20))
    cond, null = task_prompts("interleaved", parts=interleave_references("Put image 1 on image 2.", [wide, BLUE]))
    edit, edit_null = task_prompts("edit", image=RED, text="make it blue")
    shared = tokenize_prompts(proc, [cond, null, edit, edit_null])
    copies = [task_prompts("interleaved", parts=interleave_references("Put image 1 on image 2.", [wide.copy(), BLUE.copy()]))[1],
              task_prompts("edit", image=RED.copy(), text="make it blue")[1]]
    separate = tokenize_prompts(proc, [cond, copies[0], edit, copies[1]])
    assert shared.keys() == separate.keys()
    for key in shared:
        assert torch.equal(shared[key], separate[key]), key
    assert shared["image_grid_thw"].shape[0] == 6  # one row per image occurrence, duplicates included
    calls = []
    original = type(proc.image_processor).__call__
    monkeypatch.setattr(type(proc.image_processor), "__call__",
                        lambda self, images, **kw: calls.append(len(images)) or original(self, images, **kw))
    tokenize_prompts(proc, [cond, null, edit, edit_null])
    assert calls == [3]  # wide, BLUE, RED


def test_patches_attached_in_workers_are_reused(parts, monkeypatch):
    """`attach_patches` (the training collate, in the DataLoader workers) leaves the processor nothing to redo;
    the outputs equal a fresh processing, survive pickling, and a processor with other settings ignores them."""
    import pickle

    from editkit.modeling.dream_encoder import attach_patches
    from editkit.testing.dream import tiny_qwen2_vl_processor

    proc = parts["proc"]
    wide = PIL.Image.new("RGB", (96, 48), (20, 200, 20))
    def prompts(images):  # as the trainer builds them: the interleaved prompt holds RGB copies of the references
        return [*task_prompts("interleaved", parts=interleave_references("Put image 1 on image 2.", images[:2])),
                *task_prompts("edit", image=images[2], text="make it blue")]

    fresh = tokenize_prompts(proc, prompts([wide.copy(), RED.copy(), BLUE.copy()]))
    calls = []
    original = type(proc.image_processor).__call__
    monkeypatch.setattr(type(proc.image_processor), "__call__",
                        lambda self, images, **kw: calls.append(len(images)) or original(self, images, **kw))
    images = [wide.copy(), RED.copy(), BLUE.copy()]
    attach_patches(proc, images[:2])  # the edit image is left to the processor
    assert calls == [2]
    reused = tokenize_prompts(proc, prompts(images))
    assert calls == [2, 1]  # only the image without patches
    for key in fresh:
        assert torch.equal(reused[key], fresh[key]), key
    attach_patches(proc, images)
    assert calls == [2, 1, 1]  # images that carry patches are skipped
    moved = [pickle.loads(pickle.dumps(im)) for im in images]  # what a DataLoader worker hands back
    tokenize_prompts(proc, prompts(moved))
    assert calls == [2, 1, 1]  # nothing recomputed
    other = tiny_qwen2_vl_processor(pixels=56)  # other settings: the stored patches do not apply
    assert other.patch_signature != proc.patch_signature
    tokenize_prompts(other, prompts(images))
    assert calls[-1] == 3
    changed = images[0].resize((48, 96))  # PIL copies `info` into derived images; other pixels, other key
    assert changed.info and tokenize_prompts(proc, prompts([changed, *images[1:]]))["image_grid_thw"][0].tolist() != fresh["image_grid_thw"][0].tolist()
    assert calls[-1] == 1


# -- 3: the pipeline ---------------------------------------------------------------------------


def test_pipeline_matches_diffusers_sd3_pipeline_with_embeddings(parts, pipe):
    tr = parts["transformer"]
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = pipe("Put image 1 on image 2.", references=[RED, BLUE], num_inference_steps=3, guidance_scale=3.5,
                latents=latents, output_type="np").images
    _, cond, null = sample_prompts("Put image 1 on image 2.", None, [RED, BLUE], [], None)
    c = pipe.encode_conditioning([cond], [null])
    stock = SD3Transformer2DModel(**_stock_config(tr)).eval()
    stock.context_embedder, stock.time_text_embed.text_embedder = nn.Identity(), nn.Identity()
    stock.load_state_dict({k: v for k, v in tr.state_dict().items()
                           if not k.startswith(("context_embedder.", "time_text_embed.text_embedder."))})
    ref_pipe = StableDiffusion3Pipeline(transformer=stock, scheduler=sd3_flow_scheduler(), vae=parts["vae"],
                                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                        text_encoder_3=None, tokenizer_3=None)
    ref_pipe.set_progress_bar_config(disable=True)
    e, p = c["encoder_hidden_states"], c["pooled_projections"]
    with torch.no_grad():
        ref = ref_pipe(prompt_embeds=tr.context_embedder(e.value), negative_prompt_embeds=tr.context_embedder(e.null),
                       pooled_prompt_embeds=tr.time_text_embed.text_embedder(p.value),
                       negative_pooled_prompt_embeds=tr.time_text_embed.text_embedder(p.null),
                       guidance_scale=3.5, num_inference_steps=3, latents=latents, height=64, width=64, output_type="np").images
    assert ours.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_pipeline_tasks_batches_and_errors(pipe):
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t2i = pipe("a red circle", num_inference_steps=2, generator=g(), output_type="np").images
    assert t2i.shape == (1, 64, 64, 3)  # default size: sample size x VAE factor
    one = pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, generator=g(), output_type="pt").images
    assert one.shape == (1, 3, 64, 64)
    rec = pipe(task="copy", image=RED, num_inference_steps=2, height=32, width=48, output_type="np").images
    assert rec.shape == (1, 32, 48, 3)
    batch = pipe(["make it blue", ["Put ", RED, " next to ", BLUE]], image=[RED, None], num_inference_steps=2,
                 num_images_per_prompt=2, output_type="np").images
    assert batch.shape == (4, 64, 64, 3)
    fused = pipe("a red and a blue square", objects=[("square", RED), ("square", BLUE)], num_inference_steps=1, output_type="np").images
    assert fused.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="task"):
        pipe("x", task="segment")
    with pytest.raises(ValueError, match="not both"):
        pipe("x", image=RED, references=[BLUE])
    with pytest.raises(ValueError, match="image"):
        pipe(task="copy")
    with pytest.raises(ValueError, match="max_sequence_length"):
        pipe("make it blue", image=RED, max_sequence_length=8, num_inference_steps=1)
    with pytest.raises(TypeError, match="prompt"):
        pipe(prompt=3)


def test_edit_request_and_eval_adapter(pipe):
    from editkit.conditioning import EditRequest
    from editkit.data.shapes import make_sample

    out = pipe.edit(EditRequest("Put image 1 on image 2.", references=[RED, BLUE]), num_inference_steps=1, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    samples = [make_sample("combine", "val", 0, 64), make_sample("put_on_background", "val", 0, 64)]
    images = evaluate_adapter(pipe, samples, seeds=[0, 1], steps=2, guidance=3.5, image_guidance=None)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    again = evaluate_adapter(pipe, samples[:1], seeds=[0], steps=2, guidance=3.5, image_guidance=None)
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))  # per-sample seeds, batch-independent
    with pytest.raises(ValueError, match="image_guidance"):
        evaluate_adapter(pipe, samples, seeds=[0, 1], steps=1, guidance=None, image_guidance=1.5)


def test_text_only_baseline_is_the_prompt_without_its_images(pipe):
    """`drop_images=True` (the note's text-only baseline) equals calling the pipeline on the text alone."""
    s = make_sample("combine", "val", 0, 64)
    text_only = evaluate_adapter(pipe, [s], seeds=[4], steps=2, guidance=3.5, image_guidance=None, drop_images=True)[0]
    direct = pipe(prompt=s.instruction, height=64, width=64, generator=torch.Generator().manual_seed(4),
                  num_inference_steps=2, guidance_scale=3.5, output_type="pil").images[0]
    assert np.array_equal(np.asarray(text_only), np.asarray(direct))
    with_images = evaluate_adapter(pipe, [s], seeds=[4], steps=2, guidance=3.5, image_guidance=None)[0]
    assert not np.array_equal(np.asarray(text_only), np.asarray(with_images))


# -- 5: the converter ----------------------------------------------------------------------------


def test_converter_round_trip_from_official_keys(parts, tmp_path):
    tr, lmm = parts["transformer"], parts["lmm"]
    official: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(0)
    for k, v in tr.state_dict().items():
        if k.startswith("context_embedder."):
            layer, param = k.split(".")[1:]
            official[f"input_embeds_align_mlp.{ {'linear_1': 0, 'linear_2': 2}[layer] }.{param}"] = v.clone()
        elif k.startswith("time_text_embed.text_embedder."):
            layer, param = k.split(".")[2:]
            official[f"condition_embeds_align_mlp.{ {'linear_1': 0, 'linear_2': 2}[layer] }.{param}"] = v.clone()
        else:
            official["dit." + k] = v.clone()
    official["dit.context_embedder.weight"] = torch.randn(32, 4096 // 128)  # the unused stock embedders
    official["dit.time_text_embed.text_embedder.linear_1.weight"] = torch.randn(32, 16)
    for k, v in lmm.state_dict().items():  # transformers 4.4x tree: lmm.visual.*, lmm.model.*
        official["lmm." + (k if k.startswith("visual.") else k.replace("language_model.", "model.", 1))] = v.clone()
    official["lmm.lm_head.weight"] = torch.randn(320, 32)
    official["norm_lmm_out.weight"] = torch.ones(32)
    official["pooled_proj.weight"] = torch.randn(16, 64)
    # a LoRA on one DiT projection (PEFT names), merged with alpha = r by default
    q = "dit.transformer_blocks.0.attn.to_q"
    w0 = official.pop(q + ".weight")
    official[q + ".base_layer.weight"] = w0
    official[q + ".base_layer.bias"] = official.pop(q + ".bias")
    a, b = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    official[q + ".lora_A.default.weight"], official[q + ".lora_B.default.weight"] = a, b
    keys = sorted(official)
    torch.save({k: official[k] for k in keys[: len(keys) // 2]}, tmp_path / "diffusion_pytorch_model-00001-of-00002.bin")
    torch.save({k: official[k] for k in keys[len(keys) // 2 :]}, tmp_path / "diffusion_pytorch_model-00002-of-00002.bin")

    paths = convert_checkpoint(sorted(tmp_path.glob("*.bin")), tmp_path / "out", sample_size=32, attention_head_dim=8)
    from safetensors.torch import load_file

    written = DreamTransformer2DModel.load_config(tmp_path / "out" / "transformer")  # read off the weights' shapes
    assert {k: written[k] for k in tr.sd3_config()} == {**tr.sd3_config(), "dual_attention_layers": []}
    assert written["adapter_hidden_dim"] == 64 and written["official_sampling"] is True

    t_sd, l_sd = load_file(str(paths["transformer"])), load_file(str(paths["lmm"]))
    rebuilt = tiny_dream_transformer(seed=99)
    rebuilt.load_state_dict(t_sd, strict=True)
    expected = tr.state_dict()
    expected["transformer_blocks.0.attn.to_q.weight"] = w0 + b @ a
    for k, v in rebuilt.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0, msg=k)
    lmm2 = tiny_qwen2_vl(seed=99)
    lmm2.load_state_dict(l_sd, strict=True)
    for (k, v), (_, w) in zip(lmm.state_dict().items(), lmm2.state_dict().items()):
        assert torch.equal(v, w), k
    # the training alpha (2r) doubles the delta
    merged = merge_lora({"m.base_layer.weight": w0, "m.lora_A.default.weight": a, "m.lora_B.default.weight": b}, lora_alpha=8)
    torch.testing.assert_close(merged["m.weight"], w0 + 2 * (b @ a))
    (tmp_path / "bad.bin").write_bytes(b"not a pickle")
    with pytest.raises(Exception):
        convert_checkpoint([tmp_path / "bad.bin"], tmp_path / "x")
    torch.save({"mystery.weight": torch.ones(1)}, tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="fit no part"):
        convert_checkpoint([tmp_path / "odd.bin"], tmp_path / "x")
    _release_folder_with_index(tmp_path / "release", official, keys)


def _release_folder_with_index(folder, official, keys):
    """The release as train.py saves it (shards + index) goes through the CLI; a missing shard, a shard short of
    its listed keys and a post-norm checkpoint are refused by name."""
    import json

    from editkit.convert.dream import main

    folder.mkdir()
    names = ["diffusion_pytorch_model-00001-of-00002.bin", "diffusion_pytorch_model-00002-of-00002.bin"]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    for name, ks in zip(names, halves):
        torch.save({k: official[k] for k in ks}, folder / name)
    weight_map = {k: name for name, ks in zip(names, halves) for k in ks}
    (folder / "diffusion_pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert main([str(folder), str(folder / "out"), "--attention-head-dim", "8"]) == 0
    assert (folder / "out" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ValueError, match="attention_head_dim"):  # this DiT has no qk norm: 32 wide, SD3's 64 cannot fit
        main([str(folder), str(folder / "x")])
    with pytest.raises(ValueError, match="00002-of-00002.bin.*not"):
        main([str(folder / names[0]), str(folder / "x")])
    torch.save({k: official[k] for k in halves[1][1:]}, folder / names[1])
    with pytest.raises(ValueError, match=f"{names[1]} lacks 1 key"):
        main([str(folder), str(folder / "x")])
    torch.save({k: official[k] for k in halves[1]}, folder / names[1])
    holder = names[0] if "norm_lmm_out.weight" in halves[0] else names[1]
    part = torch.load(folder / holder, weights_only=True)
    part["norm_lmm_out.weight"] = torch.full((32,), 0.9)
    torch.save(part, folder / holder)
    with pytest.raises(ValueError, match="do_lmm_post_norm"):
        main([str(folder), str(folder / "x")])


# -- 4: training -----------------------------------------------------------------------------------


def test_training_both_stages_smoke(tmp_path):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "train"))
    import train as trainer

    from editkit.training.config import load_config
    from editkit.training.methods.dream import DreamTraining

    vae = str(root / "editkit/models/instructcv-tiny/vae")
    tiny = ["train.batch_size=4", "data.num_samples=16", "data.num_workers=0", "log.tensorboard=false",
            "checkpoint.every=0", f"model.tiny.vae={vae}", "model.options.dit_layers=1", "model.options.lmm_layers=1"]
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    assert trainer.main(["--config", str(root / "configs/train/dream_stage1_shapes.yaml"), f"output_dir={s1}", "train.max_steps=2", *tiny]) == 0
    assert trainer.main(["--config", str(root / "configs/train/dream_stage2_shapes.yaml"), f"output_dir={s2}",
                         f"model.pretrained={s1 / 'final'}", "train.max_steps=2", "model.options.lora_rank=4", *tiny]) == 0
    pipe = DreamEnginePipeline.from_pretrained(s2 / "final")
    assert not any("lora" in k for k in pipe.transformer.state_dict())
    img = pipe("Put image 1 on image 2.", references=[RED, BLUE], num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    assert json.loads((s2 / "final" / "editkit_train.json").read_text())["model"]["options"]["stage"] == 2

    # stage 1 trains the adapters (+ the whole tiny DiT); stage 2 LoRA + adapters only, merged exactly on export
    cfg = load_config(root / "configs/train/dream_stage2_shapes.yaml",
                      [f"model.pretrained={s1 / 'final'}", "model.options.lora_rank=4", f"model.tiny.vae={vae}"])
    method = DreamTraining(cfg)
    trainable = {n for n, p in method.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("context_embedder.", "time_text_embed.text_embedder.")) for n in trainable)
    with torch.no_grad():
        for n, p in method.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(3)
    x, states, t = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 11, 64, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        live = method.transformer(x, encoder_hidden_states=states, pooled_projections=states.mean(1), timestep=t).sample
    method.export(tmp_path / "exp", {"transformer": method.transformer})
    merged = DreamTransformer2DModel.from_pretrained(tmp_path / "exp" / "transformer")
    with torch.no_grad():
        after = merged(x, encoder_hidden_states=states, pooled_projections=states.mean(1), timestep=t).sample
    torch.testing.assert_close(after, live, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="cache"):
        DreamTraining(load_config(root / "configs/train/dream_stage1_shapes.yaml", ["data.cache=true"]))


def test_each_prompt_is_conditioned_as_if_alone_whatever_its_batch(pipe):
    short = sample_prompts("make it red", RED, [], [], None)
    long = sample_prompts("a much longer instruction that makes the whole picture very blue and bright", BLUE, [], [], None)
    alone = pipe.encode_conditioning([short[1]], [short[2]])
    batch = pipe.encode_conditioning([short[1], long[1]], [short[2], long[2]])
    n = alone["encoder_hidden_states"].value.shape[1]  # the prompt and its null padded to the longer of the two
    assert int(batch["text_length"].value[0]) == n < batch["encoder_hidden_states"].value.shape[1]
    for key in ("encoder_hidden_states", "pooled_projections"):
        got, ref = batch[key], alone[key]
        cut = (lambda x: x[:1, :n]) if key == "encoder_hidden_states" else (lambda x: x[:1])
        torch.testing.assert_close(cut(got.value), ref.value, rtol=0, atol=1e-5)
        torch.testing.assert_close(cut(got.null), ref.null, rtol=0, atol=1e-5)
    # alone, the pool is the official mean over every position (padding to the null's length included)
    torch.testing.assert_close(alone["pooled_projections"].value, pool_states(alone["encoder_hidden_states"].value))


def test_prompt_embeds_and_negative_prompt_give_the_text_path_results(pipe):
    run = lambda **k: pipe(num_inference_steps=2, guidance_scale=3.5, output_type="pt",  # noqa: E731
                           generator=torch.Generator().manual_seed(0), **k).images
    text = run(prompt="make it red", image=RED)
    embeds = pipe.encode_prompt("make it red", image=RED)
    torch.testing.assert_close(run(image=RED, **embeds), text, rtol=0, atol=1e-5)
    negative = run(prompt="make it red", image=RED, negative_prompt="blurry, dark")
    assert (negative - text).abs().max() > 1e-4  # the negative text reaches the null branch
    torch.testing.assert_close(run(image=RED, **pipe.encode_prompt("make it red", image=RED, negative_prompt="blurry, dark")),
                               negative, rtol=0, atol=1e-5)
    _, _, null = sample_prompts("make it red", RED, [], [], None)
    routed, _ = pipe.route_prompts("make it red", RED, None, None, None, False, "blurry, dark")
    assert routed[0][2].text == null.text + "blurry, dark" and routed[0][2].images == null.images
    with pytest.raises(ValueError, match="pass both `prompt_embeds` and `negative_prompt_embeds`"):
        run(prompt_embeds=embeds["prompt_embeds"])
    with pytest.raises(ValueError, match="not both"):
        run(prompt="make it red", **embeds)
