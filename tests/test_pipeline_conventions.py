"""diffusers' call-state conventions on all five pipelines (shipped tiny models): `num_timesteps` and the
guidance scales as properties a `callback_on_step_end` reads and changes for the steps after it."""

import numpy as np
import PIL.Image
import pytest
import torch

from editkit.conditioning import EditRequest
from editkit.loading import default_model, load_pipeline
from editkit.pipelines.promptfix import PROMPTFIX_GUIDANCE

METHODS = ["instructcv", "promptfix", "pixwizard", "unic", "dream"]
STEPS = 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=METHODS)
def pipe(request):
    p = load_pipeline(request.param, str(default_model(request.param)), "cpu", "fp32")
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, callback=None, **kw):
    import torch

    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = pipe.edit(EditRequest("make it red", image=image), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                    output_type="np", callback_on_step_end=callback, **kw)
    return out.images


def test_callback_reads_num_timesteps_and_can_raise_the_guidance_every_step(pipe):
    seen = []

    def bump(p, i, t, kwargs):
        seen.append(p.num_timesteps)
        p._guidance_scale += 1.0  # what diffusers' own test_callback_cfg does
        return kwargs

    _run(pipe, bump, guidance_scale=2.0)
    assert seen == [STEPS] * STEPS and pipe.num_timesteps == STEPS
    assert pipe.guidance_scale == pytest.approx(2.0 + STEPS)


def test_a_guidance_change_takes_effect_from_the_next_step(pipe):
    def set_at(step, value):
        def cb(p, i, t, kwargs):
            if i == step:
                p.guidance_scale = value
            return kwargs
        return cb

    base = _run(pipe, guidance_scale=2.0)
    assert np.array_equal(_run(pipe, set_at(0, 2.0), guidance_scale=2.0), base)  # same value: same output
    assert np.array_equal(_run(pipe, set_at(STEPS - 1, 6.0), guidance_scale=2.0), base)  # after the last step: no effect
    assert np.abs(_run(pipe, set_at(0, 6.0), guidance_scale=2.0) - base).max() > 1e-4  # steps 2.. ran at 6


def test_scales_cannot_be_set_outside_a_call(pipe):
    fresh = type(pipe)(**pipe.components)
    with pytest.raises(AttributeError, match="only during a call"):
        fresh.guidance_scale = 3.0


def test_instructcv_prompt_embeds_give_the_text_path_results():
    from editkit.loading import default_model, load_pipeline

    pipe = load_pipeline("instructcv", str(default_model("instructcv")), "cpu", "fp32")
    image = PIL.Image.new("RGB", (64, 64), (200, 40, 40))
    run = lambda **k: pipe(image=image, num_inference_steps=2, output_type="pt",  # noqa: E731
                           generator=torch.Generator().manual_seed(0), **k).images
    text = run(prompt=["make it blue", "segment the red circle"], negative_prompt="blurry")
    embeds = pipe.encode_prompt(["make it blue", "segment the red circle"])
    assert torch.equal(run(prompt_embeds=embeds, negative_prompt="blurry"), text)
    assert torch.equal(run(prompt_embeds=embeds, negative_prompt_embeds=pipe.encode_prompt("blurry")), text)
    assert not torch.equal(run(prompt_embeds=embeds), text)  # the negative prompt matters
    with pytest.raises(ValueError, match="not both"):
        run(prompt="make it blue", prompt_embeds=embeds)
    with pytest.raises(ValueError, match="3 rows for a batch of 2"):
        pipe(prompt=None, image=[image, image], prompt_embeds=embeds, negative_prompt_embeds=torch.cat([embeds, embeds[:1]]),
             num_inference_steps=1)


def test_promptfix_prompt_embeds_and_negative_prompt_give_the_text_path_results():
    from editkit.loading import default_model, load_pipeline

    pipe = load_pipeline("promptfix", str(default_model("promptfix")), "cpu", "fp32")
    image = PIL.Image.new("RGB", (64, 64), (120, 120, 160))
    run = lambda **k: pipe(image=image, num_inference_steps=2, output_type="pt", hgs_mode="off",  # noqa: E731
                           generator=torch.Generator().manual_seed(0), **k).images
    text = run(prompt="remove the haze", auxiliary_prompt="a hazy photo")
    embeds = {"prompt_embeds": pipe.encode_prompt("remove the haze"), "auxiliary_prompt_embeds": pipe.encode_prompt("a hazy photo")}
    torch.testing.assert_close(run(**embeds), text, rtol=0, atol=1e-5)
    torch.testing.assert_close(run(**embeds, negative_prompt_embeds=pipe.encode_prompt("")), text, rtol=0, atol=1e-5)
    negative = run(prompt="remove the haze", auxiliary_prompt="a hazy photo", negative_prompt="noise")
    assert (negative - text).abs().max() > 1e-4  # the null text is a real branch
    torch.testing.assert_close(run(**embeds, negative_prompt_embeds=pipe.encode_prompt("noise")), negative, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        run(prompt="remove the haze", **embeds)


def test_unic_prompt_embeds_give_the_text_path_results():
    from editkit.loading import default_model, load_pipeline

    pipe = load_pipeline("unic", str(default_model("unic")), "cpu", "fp32")
    cond = PIL.Image.new("RGB", (64, 64), (30, 30, 30))
    run = lambda **k: pipe(image=cond, num_inference_steps=2, output_type="pt",  # noqa: E731
                           generator=torch.Generator().manual_seed(0), **k).images
    text = run(prompt="a red circle", instruction="Generate image from canny edge", negative_prompt="blurry")
    n = pipe.default_max_sequence_length()
    p, pp = pipe.encode_text(["a red circle"], n)
    i, pi = pipe.encode_text(["Generate image from canny edge"], n)
    z, pz = pipe.encode_text(["blurry"], n)
    got = run(prompt_embeds=p, pooled_prompt_embeds=pp, instruction_embeds=i, pooled_instruction_embeds=pi,
              negative_prompt_embeds=z, negative_pooled_prompt_embeds=pz)
    torch.testing.assert_close(got, text, rtol=0, atol=1e-5)
    same = run(prompt="a red circle")  # no instruction: the caption is the instruction, embeddings likewise
    torch.testing.assert_close(run(prompt_embeds=p, pooled_prompt_embeds=pp), same, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs `pooled_prompt_embeds`"):
        run(prompt_embeds=p)


def test_pixwizard_prompt_embeds_give_the_text_path_results():
    pipe = load_pipeline("pixwizard", str(default_model("pixwizard")), "cpu", "fp32")
    image = PIL.Image.new("RGB", (64, 64), (40, 160, 40))
    run = lambda **k: pipe(image=image, num_inference_steps=2, output_type="pt", image_guidance_scale=1.5,  # noqa: E731
                           generator=torch.Generator().manual_seed(0), **k).images
    prompts = ["Make the green square red.", "Segment the square"]
    text = run(prompt=prompts, negative_prompt="blurry")
    embeds = pipe.encode_prompt(prompts, "blurry")
    assert embeds["prompt_embeds"].shape[:2] == embeds["prompt_attention_mask"].shape and embeds["pooled_prompt_embeds"].dim() == 2
    torch.testing.assert_close(run(**embeds), text, rtol=0, atol=1e-5)
    one = pipe.encode_prompt(prompts[0])  # a single negative row is broadcast; a shorter null is padded and masked
    single = run(prompt=prompts[0])
    torch.testing.assert_close(run(prompt_embeds=one["prompt_embeds"], prompt_attention_mask=one["prompt_attention_mask"],
                                   pooled_prompt_embeds=one["pooled_prompt_embeds"]), single, rtol=0, atol=1e-4)
    assert (run(prompt=prompts[0], negative_prompt="blurry") - single).abs().max() > 1e-4  # the null text matters
    with pytest.raises(ValueError, match="needs `pooled_prompt_embeds`"):
        run(prompt_embeds=one["prompt_embeds"])
    with pytest.raises(ValueError, match="not both"):
        run(prompt="x", prompt_embeds=one["prompt_embeds"], pooled_prompt_embeds=one["pooled_prompt_embeds"])


def test_guidance_interval_runs_one_branch_outside_it(pipe):
    backbone = getattr(pipe, "unet", None) or pipe.transformer
    batches: list[int] = []

    def record(module, args, kwargs):
        x = args[0] if args else next(v for k, v in kwargs.items() if k in ("sample", "hidden_states"))
        batches.append(int(x.shape[0]))

    handle = backbone.register_forward_pre_hook(record, with_kwargs=True)
    try:
        full = _run(pipe, guidance_scale=2.0)
        guided = batches[:]
        batches.clear()
        assert np.array_equal(_run(pipe, guidance_scale=2.0, guidance_interval=(0.0, 1.0)), full)
        batches.clear()
        half = _run(pipe, guidance_scale=2.0, guidance_interval=(0.5, 1.0))  # steps 0 (and 1 of 3) unguided
        assert batches[0] == 1 and batches[-1] == guided[-1] > 1  # the unguided step runs one branch
        batches.clear()
        never = _run(pipe, guidance_scale=2.0, guidance_interval=(0.99, 1.0))
    finally:
        handle.remove()
    assert set(batches) == {1} and np.abs(half - full).max() > 1e-5
    rule = getattr(pipe, "guidance", None) or PROMPTFIX_GUIDANCE  # PromptFix picks its rule per call (guidance_mode)
    neutral = rule.neutral_scales()
    assert np.array_equal(never, _run(pipe, **neutral))  # no guided step: the conditional branch alone
