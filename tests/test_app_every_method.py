"""Every method through the app's engine with its shipped tiny model: every preset runs end to end."""

import inspect

import numpy as np
import PIL.Image
import pytest
import torch

from editkit.app.engine import EXAMPLES_DIR, AppConfig, Engine, Settings, pipeline_kwargs, step_callback
from editkit.app.methods import METHODS, MethodSpec


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _call_params(spec: MethodSpec) -> set[str]:
    cls = spec.pipeline_class()
    assert cls is not None, f"{spec.key}: {spec.pipeline} does not import"
    return set(inspect.signature(cls.__call__).parameters)


@pytest.mark.parametrize("key", list(METHODS))
def test_every_kwarg_the_engine_builds_is_in_the_pipelines_signature(key):
    spec = METHODS[key]
    extras = [{}] + ([spec.hgs(True, 1.0), spec.hgs(False, 1.0)] if spec.hgs else [])
    for extra in extras:
        settings = Settings(steps=2, guidance=spec.guidance, image_guidance=spec.image_guidance, max_side=64, seed=0, extra=extra)
        kwargs = pipeline_kwargs(spec, settings)
        kwargs["callback_on_step_end"] = step_callback(2, None, None, None)
        assert set(kwargs) - _call_params(spec) == set()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("every_method")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        PIL.Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(d / f"{name}.png")
    return d


@pytest.fixture(scope="module")
def shipped_engine(folder):
    # no sources given: every method serves its shipped tiny model
    return Engine(AppConfig(allowed_roots=[EXAMPLES_DIR, folder], steps=2))


CASES = [(k, p.name) for k, spec in METHODS.items() for p in spec.presets]


@pytest.mark.parametrize("key,preset", CASES)
def test_every_preset_of_every_method_runs_with_the_shipped_model(shipped_engine, folder, key, preset):
    spec = METHODS[key]
    assert shipped_engine.availability(spec).ok, shipped_engine.availability(spec).message
    pre = spec.preset(preset)
    text = pre.instruction() if pre.template else "make it red"
    args: dict = {"preset": preset, "label": pre.default_label, "seed": 0}
    image = str(folder / "a.png") if spec.takes("image") else None
    refs = [str(folder / "a.png"), str(folder / "b.png")]
    if spec.takes("interleaved"):
        args["interleaved"] = text if "<image1>" in text else "Combine image 1<image1> with image 2<image2>."
        args["references"] = refs
        text = ""
    elif spec.takes("references") and "reference" in preset:
        args["references"] = refs[:1]
    seen: list[tuple[int, int]] = []
    r = shipped_engine.run(key, image, text, on_step=lambda i, n: seen.append((i, n)), **args)
    assert seen[-1] == (2, 2) and r.info["steps"] == 2
    out = np.asarray(r.output)
    assert out.ndim == 3 and out.shape[2] == 3 and np.isfinite(out).all()
    if image is not None:
        assert r.output.size == (56, 40)  # back at the input's size


@pytest.mark.parametrize("key", ["promptfix", "dreamengine"])
def test_max_side_bounds_the_working_size_of_promptfix_and_dream(key, folder):
    from editkit.loading import default_model, load_pipeline

    method = {"dreamengine": "dream"}.get(key, key)
    pipe = load_pipeline(method, str(default_model(method)), "cpu", "fp32")
    image = PIL.Image.open(folder / "a.png").resize((200, 120))
    kwargs = {"prompt": "make it red", "image": image, "num_inference_steps": 1, "generator": None}
    latents = pipe(**kwargs, max_side=128, output_type="latent").images
    f = pipe.vae_scale_factor
    assert max(latents.shape[-2:]) * f <= 128 and latents.shape[-1] > latents.shape[-2]  # long side <= 128, aspect kept
    assert pipe(**kwargs, max_side=128).images[0].size == (200, 120)  # the output is back at the input's size


PIPELINE_METHODS = {"instructcv": "instructcv", "promptfix": "promptfix", "pixwizard": "pixwizard", "unic": "unic",
                    "dreamengine": "dream"}


@pytest.mark.parametrize("key", sorted(PIPELINE_METHODS))
def test_the_working_size_follows_the_shipped_model_on_a_600x400_photo(key):
    from editkit.loading import default_model, load_pipeline, trained_side

    method = PIPELINE_METHODS[key]
    folder = default_model(method)
    pipe = load_pipeline(method, str(folder), "cpu", "fp32")
    assert pipe.trained_side == trained_side(folder) == 64  # 32 latent px x VAE factor 2, read two ways
    photo = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (400, 600, 3), dtype=np.uint8))
    kwargs = {"prompt": "make it red", "image": photo, "num_inference_steps": 1, "generator": torch.Generator().manual_seed(0)}
    h, w = (s * pipe.vae_scale_factor for s in pipe(**kwargs, output_type="latent").images.shape[-2:])
    if key == "promptfix":  # the model's resize_side (64) is the short side, each side floored to 64 (official)
        assert (w, h) == (64, 64)
    elif key == "pixwizard":  # the bucket around the model's resolution: area <= 64^2
        assert w * h <= 64 * 64 and w > h
    else:
        assert w <= 64 and w > h
    engine = Engine(AppConfig(steps=1))
    assert engine.working_side(METHODS[key]) == 64 and engine.describe_one(METHODS[key])["max_side"] == 64
