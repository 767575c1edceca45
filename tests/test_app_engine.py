"""The app's engine without a browser: requests, decoding, the model cache, bad input, path safety."""

import dataclasses
import os
import threading

import numpy as np
import PIL.Image
import pytest

from editkit.app import methods as app_methods
from editkit.app.engine import (
    EXAMPLES_DIR,
    AppConfig,
    EditResult,
    Engine,
    RequestTimeout,
    Settings,
    UserError,
    availability,
    build_request,
    check_readable_path,
    history_entry,
    label_from_text,
    make_result,
    mask_from_editor,
    parse_interleaved,
    pipeline_kwargs,
    read_images,
    read_settings,
    read_text,
    step_callback,
)
from editkit.conditioning import EditRequest
from editkit.app.methods import METHODS, MethodSpec, get_method, parse_model_args
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("app_model") / "tiny"
    InstructCVPipeline(**tiny_instructcv_components(seed=0)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Stands in for Gradio's upload folder: the one place (besides the examples) the engine reads."""
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def engine(model_dir, uploads):
    cfg = AppConfig(sources={"instructcv": str(model_dir)}, allowed_roots=[EXAMPLES_DIR, uploads], steps=2)
    return Engine(cfg)


@pytest.fixture(scope="module")
def photo(uploads):
    path = uploads / "photo.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_run_returns_an_output_of_the_input_size_with_progress(engine, photo):
    seen = []
    r = engine.run("instructcv", str(photo), "make it red", preset="free edit", seed=3, on_step=lambda i, n: seen.append((i, n)))
    assert r.output.size == (48, 32)
    assert r.seed == 3 and r.info["steps"] == 2 and r.info["size"] == [48, 32]
    assert seen == [(1, 2), (2, 2)]
    assert r.task is None and r.task_image is None


def test_fixed_seed_reproduces_and_randomise_reports_the_seed_used(engine, photo):
    a = engine.run("instructcv", str(photo), "make it red", preset="free edit", seed=7, steps=1)
    b = engine.run("instructcv", str(photo), "make it red", preset="free edit", seed=7, steps=1)
    assert np.array_equal(np.asarray(a.output), np.asarray(b.output))
    c = engine.run("instructcv", str(photo), "make it red", preset="free edit", randomize_seed=True, steps=1)
    assert 0 <= c.seed <= 2**31 - 1 and c.info["seed"] == c.seed


@pytest.mark.parametrize("preset,label", [("segment", "circle"), ("detect", "star"), ("depth", ""), ("classify", "cross")])
def test_task_presets_are_decoded(engine, photo, preset, label):
    spec = get_method("instructcv")
    r = engine.run("instructcv", photo, spec.preset(preset).instruction(label), preset=preset, label=label, steps=1)
    assert r.task == preset and r.summary
    if preset == "classify":
        assert isinstance(r.task_value, str) and r.task_image is None
    else:
        assert r.task_image.size == (48, 32)
    if preset == "segment":
        assert r.task_value.shape == (32, 48) and r.task_value.dtype == bool
    if preset == "detect":
        assert r.task_value.shape[1:] == (4,)


def test_mask_limits_the_edit_to_the_painted_region(engine, photo):
    layer = np.zeros((32, 48, 4), dtype=np.uint8)
    layer[:, :24, 3] = 255  # left half painted
    editor = {"background": PIL.Image.open(photo), "layers": [PIL.Image.fromarray(layer, "RGBA")], "composite": None}
    r = engine.run("instructcv", str(photo), "make it red", preset="free edit", mask=editor, steps=1)
    assert r.info["mask"] is True
    src = np.asarray(PIL.Image.open(photo).convert("RGB"), dtype=int)
    out = np.asarray(r.output, dtype=int)
    assert np.abs(out[:, 24:] - src[:, 24:]).max() <= 1  # unpainted half kept
    assert np.abs(out[:, :24] - src[:, :24]).mean() > 5  # painted half changed


def test_mask_from_editor_reads_the_layer_alpha_not_the_composite():
    size = (8, 6)
    blank = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    stroke = blank.copy()
    stroke.putpixel((2, 3), (255, 0, 0, 200))
    cfg = AppConfig()
    assert mask_from_editor(None, size, cfg) is None
    assert mask_from_editor({"background": None, "layers": [], "composite": stroke}, size, cfg) is None
    assert mask_from_editor({"background": None, "layers": [blank], "composite": None}, size, cfg) is None
    m = mask_from_editor({"background": None, "layers": [stroke], "composite": blank}, size, cfg)
    assert m.size == size and np.asarray(m)[3, 2] == 255 and np.asarray(m).sum() == 255
    # a painted canvas of another size is scaled to the image
    assert mask_from_editor({"layers": [stroke.resize((16, 12))]}, size, cfg).size == size
    # a plain mask image works too (API callers)
    plain = PIL.Image.new("L", size, 0)
    plain.putpixel((0, 0), 255)
    assert np.asarray(mask_from_editor(plain, size, cfg))[0, 0] == 255


# ----------------------------------------------------------------------------- model cache


def test_models_load_once_and_switching_methods_does_not_reload(engine, photo, model_dir, monkeypatch):
    second = MethodSpec(
        key="instructcv2",
        name="InstructCV copy",
        pipeline="editkit.pipelines:InstructCVPipeline",
        fields=frozenset({"instruction", "image", "mask"}),
        steps=1,
        guidance=7.5,
        image_guidance=1.5,
    )
    monkeypatch.setitem(METHODS, second.key, second)
    monkeypatch.setitem(engine.config.sources, second.key, str(model_dir))
    for key in ("instructcv", "instructcv2", "instructcv", "promptfix", "instructcv2", "instructcv"):
        if key == "promptfix":
            with pytest.raises(UserError, match="not available"):
                engine.run(key, str(photo), "fix it", steps=1)
            continue
        engine.run(key, str(photo), "make it red", preset="free edit", steps=1)
    assert engine.cache.loads[("instructcv", str(model_dir))] == 1
    assert engine.cache.loads[("instructcv2", str(model_dir))] == 1
    assert engine.pipeline(get_method("instructcv")) is engine.pipeline(get_method("instructcv"))
    assert engine.pipeline(get_method("instructcv")) is not engine.pipeline(second)


def test_concurrent_first_requests_load_the_model_once(model_dir, uploads):
    eng = Engine(AppConfig(sources={"instructcv": str(model_dir)}, allowed_roots=[uploads]))
    pipes = []
    threads = [threading.Thread(target=lambda: pipes.append(eng.pipeline(get_method("instructcv")))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pipes) == 4 and all(p is pipes[0] for p in pipes)
    assert sum(eng.cache.loads.values()) == 1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_instruction_is_refused(engine, photo, text):
    with pytest.raises(UserError, match="instruction is empty"):
        engine.run("instructcv", str(photo), text)


def test_missing_image_is_refused(engine):
    with pytest.raises(UserError, match="Upload a source image"):
        engine.run("instructcv", None, "make it red")


def test_non_image_file_is_refused(engine, uploads):
    fake = uploads / "notes.png"
    fake.write_text("this is not a picture")
    with pytest.raises(UserError, match="not an image file"):
        engine.run("instructcv", str(fake), "make it red")


def test_upload_over_the_byte_limit_is_refused(model_dir, uploads, photo):
    eng = Engine(AppConfig(sources={"instructcv": str(model_dir)}, allowed_roots=[uploads], max_upload_bytes=100))
    with pytest.raises(UserError, match="MB; the limit is"):
        eng.run("instructcv", str(photo), "make it red")


def test_image_over_the_pixel_limit_is_refused(model_dir, uploads):
    big = uploads / "big.png"
    PIL.Image.new("RGB", (300, 200)).save(big)
    eng = Engine(AppConfig(sources={"instructcv": str(model_dir)}, allowed_roots=[uploads], max_pixels=10_000))
    with pytest.raises(UserError, match=r"too large \(300x200\)"):
        eng.run("instructcv", str(big), "make it red")
    with pytest.raises(UserError, match="too large"):
        eng.run("instructcv", PIL.Image.new("RGB", (300, 200)), "make it red")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "Steps must be between"),
        ({"steps": 2.5}, "whole number"),
        ({"guidance": "lots"}, "must be a number"),
        ({"image_guidance": float("nan")}, "between"),
        ({"max_side": 10}, "Max side must be between"),
        ({"seed": -1}, "Seed must be between"),
        ({"preset": "levitate"}, "no task preset"),
        ({"method": "photoshop"}, "unknown method"),
        ({"instruction": "x" * 3000}, "too long"),
    ],
)
def test_bad_settings_give_clear_messages(engine, photo, kwargs, match):
    args = {"method": "instructcv", "image": str(photo), "instruction": "make it red"} | kwargs
    with pytest.raises(UserError, match=match):
        engine.run(**args)


def test_methods_without_a_checkpoint_or_pipeline_say_so(model_dir, tmp_path):
    spec = get_method("instructcv")
    assert availability(spec, str(model_dir)).ok
    none = availability(spec, None)
    assert not none.ok and "no checkpoint is configured" in none.message and "--model instructcv=" in none.message
    missing = availability(spec, str(tmp_path / "nowhere"))
    assert not missing.ok and "not a diffusers pipeline folder" in missing.message
    assert availability(spec, "alaa-lab/InstructCV").ok  # hub id: tried when first used
    for key in ("promptfix", "pixwizard", "unic", "dreamengine"):  # every method has its pipeline now
        assert get_method(key).pipeline_class() is not None
        assert availability(get_method(key), "some/checkpoint").ok
    planned = dataclasses.replace(spec, key="future", name="Future", pipeline="editkit.pipelines:FuturePipeline")
    a = availability(planned, "some/checkpoint")
    assert not a.ok and "planned" in a.message
    eng = Engine(AppConfig(sources={"instructcv": None}))
    assert eng.available_methods() == []
    with pytest.raises(UserError, match="no checkpoint is configured"):
        eng.run("instructcv", PIL.Image.new("RGB", (8, 8)), "make it red")


def test_a_checkpoint_that_fails_to_load_is_a_user_error_and_not_cached(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    eng = Engine(AppConfig(sources={"instructcv": str(broken)}))
    for _ in range(2):
        with pytest.raises(UserError, match="cannot load the InstructCV checkpoint"):
            eng.pipeline(get_method("instructcv"))
    assert eng.cache.loaded() == []


def test_unused_fields_are_reported_not_silently_dropped(engine, photo):
    r = engine.run("instructcv", str(photo), "make it red", preset="free edit", references=[str(photo)], hgs=True, steps=1)
    assert any("reference" in n for n in r.notes) and any("HGS" in n for n in r.notes)


# ----------------------------------------------------------------------------- path safety


def test_paths_outside_the_app_folders_are_refused(engine, uploads, tmp_path):
    secret = tmp_path / "secret.png"
    PIL.Image.new("RGB", (8, 8)).save(secret)
    attempts = [
        "/etc/passwd",
        str(secret),
        str(uploads / ".." / secret.parent.name / "secret.png"),
        str(EXAMPLES_DIR / ".." / ".." / "README.md"),
        str(tmp_path / "does-not-exist.png"),
    ]
    link = uploads / "link.png"
    link.symlink_to(secret)
    attempts.append(str(link))
    messages = set()
    for path in attempts:
        with pytest.raises(UserError, match="cannot be read") as err:
            engine.run("instructcv", path, "make it red")
        messages.add(str(err.value))
    assert len(messages) == 1  # the same words whether or not the file exists
    # references and editor layers go through the same check
    with pytest.raises(UserError, match="cannot be read"):
        mask_from_editor({"layers": ["/etc/passwd"]}, (8, 8), engine.config)
    with pytest.raises(UserError, match="cannot be read"):
        check_readable_path(os.path.join(str(uploads), "..", "..", "etc", "passwd"), [uploads], "image")


def test_examples_can_be_read(engine):
    r = engine.run("instructcv", str(EXAMPLES_DIR / "depth_0.png"), "Estimate the depth of this image.", preset="depth", steps=1)
    assert r.output.size == (64, 64) and r.task_image.size == (64, 64)


# ----------------------------------------------------------------------------- specs and helpers


def test_parse_interleaved_maps_tags_to_references():
    a, b = PIL.Image.new("RGB", (4, 4)), PIL.Image.new("RGB", (4, 4), "red")
    parts = parse_interleaved("Put <image1> on <Image 2>.", [a, b])
    assert parts == ["Put ", a, " on ", b, "."]
    with pytest.raises(UserError, match="<image3>"):
        parse_interleaved("use <image3>", [a, b])


def test_method_registry_and_presets():
    assert list(METHODS)[0] == "instructcv"
    spec = get_method("InstructCV")
    assert spec.pipeline_class() is InstructCVPipeline
    assert spec.preset("segment").instruction("dog") == "Segment the dog."
    assert spec.match_preset("segment the red circle")[1] == "red circle"
    assert spec.match_preset("make it snowy") is None
    for s in METHODS.values():
        assert s.presets and all(p.name for p in s.presets) and s.steps >= 1
    with pytest.raises(ValueError, match="unknown request field"):
        MethodSpec("x", "X", "m:C", frozenset({"telepathy"}), 1, 1.0, None)


def test_model_arguments():
    assert parse_model_args(None) == {}
    assert parse_model_args(["./tiny"]) == {"instructcv": "./tiny"}
    assert parse_model_args(["promptfix=yeates/PromptFix", "/m"]) == {"promptfix": "yeates/PromptFix", "instructcv": "/m"}
    assert parse_model_args(["./odd=name"]) == {"instructcv": "./odd=name"}
    assert app_methods.default_sources({"instructcv": "/m"})["instructcv"] == "/m"


def test_describe_lists_every_method(engine):
    d = {m["key"]: m for m in engine.describe()}
    assert set(d) == set(METHODS)
    assert d["instructcv"]["available"] and d["instructcv"]["steps"] == 2
    assert not d["promptfix"]["available"] and d["promptfix"]["hgs"]


def test_cli_has_the_app_command():
    from editkit import cli

    args = cli.build_parser().parse_args(["app", "--model", "promptfix=x", "--model", "/m", "--port", "7999", "--steps", "3"])
    assert args.func is cli.cmd_app and args.port == 7999 and args.model == ["promptfix=x", "/m"]
    from editkit.app.__main__ import config_from_args

    cfg = config_from_args(args)
    assert cfg.sources["instructcv"] == "/m" and cfg.sources["promptfix"] == "x" and cfg.steps == 3


def test_the_ui_builds_without_any_checkpoint(tmp_path):
    pytest.importorskip("gradio", reason="the app needs the `app` extra (gradio)")
    from editkit.app.ui import build_app

    eng = Engine(AppConfig(sources={k: None for k in METHODS}))
    demo = build_app(eng, cache_dir=tmp_path)
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"edit", "methods"} <= names
    run = next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "run")
    assert run["props"]["interactive"] is False  # nothing to run: the button is off, the status says why
    status = next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "status")
    assert "no checkpoint is configured" in status["props"]["value"]
    assert not (EXAMPLES_DIR.parent / "ui.pyi").exists()  # Gradio writes no stub files into the package


def test_guidance_starts_from_the_models_own_defaults(tmp_path):
    from editkit.loading import default_model

    tuned = Engine(AppConfig(sources={"promptfix": str(default_model("promptfix")), "instructcv": None}))
    assert tuned.scales(get_method("promptfix")) == (2.0, 1.5)  # recorded in the shipped tiny model's model_index.json
    d = {m["key"]: m for m in tuned.describe()}
    assert (d["promptfix"]["guidance"], d["promptfix"]["image_guidance"]) == (2.0, 1.5)
    (tmp_path / "model_index.json").write_text('{"_class_name": "PromptFixPipeline"}')
    plain = Engine(AppConfig(sources={"promptfix": str(tmp_path), "instructcv": None}))
    spec = get_method("promptfix")
    assert plain.scales(get_method("promptfix")) == (spec.guidance, spec.image_guidance) == (6.5, 1.25)
    assert Engine(AppConfig(sources={"promptfix": "owner/name"})).scales(get_method("promptfix")) == (6.5, 1.25)  # hub ids are not read


# ----------------------------------------------------------------------------- the steps of Engine.run, one by one


def test_read_settings_checks_each_number_and_applies_preset_scales_only_over_defaults():
    spec = get_method("instructcv")
    cfg = AppConfig(steps=None)
    s, notes = read_settings(spec, spec.presets[0], cfg, (7.5, 1.5), steps="12", seed="5", guidance=None)
    assert (s.steps, s.seed, s.guidance, s.image_guidance, s.max_side) == (12, 5, 7.5, 1.5, spec.max_side)
    assert notes == []
    scaled = dataclasses.replace(spec.presets[0], scales=(3.0, 2.0))
    assert read_settings(spec, scaled, cfg, (7.5, 1.5))[0].guidance == 3.0
    assert read_settings(spec, scaled, cfg, (7.5, 1.5), guidance=4)[0].guidance == 4.0  # the user's value wins
    with pytest.raises(UserError, match="Steps must be a whole number"):
        read_settings(spec, spec.presets[0], cfg, (7.5, 1.5), steps=2.5)
    with pytest.raises(UserError, match="Text guidance must be between 0 and 30"):
        read_settings(spec, spec.presets[0], cfg, (7.5, 1.5), guidance=31)
    s, notes = read_settings(spec, spec.presets[0], cfg, (7.5, 1.5), hgs=True)
    assert s.extra == {} and notes == ["InstructCV has no high-frequency guidance; HGS was not applied."]
    pf = get_method("promptfix")
    assert read_settings(pf, pf.presets[0], cfg, (6.5, 1.25), hgs=False)[0].extra == {"hgs_mode": "off"}


def test_read_text_and_read_images_drop_what_the_method_does_not_take(photo):
    spec = get_method("instructcv")
    assert read_text(spec, "  make it red ", "ignored <image1>") == ("make it red", "")
    seg = spec.preset("segment")
    assert read_text(spec, "", None, seg, "blue star") == ("Segment the blue star.", "")  # as the page fills it
    dream = get_method("dreamengine")
    assert read_text(dream, None, "", dream.presets[0]) == ("", dream.presets[0].template)
    assert spec.preset(None).name == "free edit" and dream.preset("").name == "free edit"
    assert label_from_text(spec, seg, "Segment the dog.", "red circle") == "dog"  # the object the model was told
    assert label_from_text(spec, seg, "Highlight the dog.", "dog") == "dog"  # other words: the label given
    with pytest.raises(UserError, match="The instruction must be text"):
        read_text(spec, 3, None)
    cfg = AppConfig(allowed_roots=[photo.parent])
    src, mask, refs, notes = read_images(spec, cfg, str(photo), None, [str(photo)])
    assert src.size == (48, 32) and mask is None and refs == []
    assert notes == ["InstructCV does not take reference images; they were not used."]
    with pytest.raises(UserError, match="Upload a source image"):
        read_images(spec, cfg, None, None, None)


def test_build_request_parses_interleaved_prompts_against_the_references():
    spec = get_method("dreamengine")
    ref = PIL.Image.new("RGB", (16, 16), (200, 0, 0))
    request, notes = build_request(spec, spec.presets[0], AppConfig(), "", "put <image1> on grass", (None, None, [ref]), None)
    text0, image1, text2 = request.instruction
    assert (text0, text2) == ("put ", " on grass") and np.array_equal(np.asarray(image1), np.asarray(ref))
    assert request.references in (None, []) and notes == []  # inline, not passed twice
    other = PIL.Image.new("RGB", (16, 16), (0, 0, 200))
    _, notes = build_request(spec, spec.presets[0], AppConfig(), "", "put <image1> on grass", (None, None, [ref, other]), None)
    assert notes == ["1 reference image(s) not named by an <imageN> tag in the prompt were not used."]
    with pytest.raises(UserError, match="the prompt refers"):
        build_request(spec, spec.presets[0], AppConfig(), "", "put <image2> here", (None, None, [ref]), None)


def test_pipeline_kwargs_step_callback_and_history():
    spec = get_method("instructcv")
    s = Settings(steps=3, guidance=2.0, image_guidance=1.0, max_side=64, seed=9, extra={})
    kw = pipeline_kwargs(spec, s)
    assert (kw["num_inference_steps"], kw["guidance_scale"], kw["image_guidance_scale"], kw["max_side"]) == (3, 2.0, 1.0, 64)
    assert kw["generator"].initial_seed() == 9
    seen = []
    step_callback(3, lambda i, n: seen.append((i, n)), None, None)(None, 0, None, {})
    assert seen == [(1, 3)]
    with pytest.raises(RequestTimeout, match="stopped after step 2 of 3"):
        step_callback(3, None, 0.0, 5.0)(None, 1, None, {})
    result = EditResult(source=PIL.Image.new("RGB", (4, 4)), output=PIL.Image.new("RGB", (4, 4)), seed=0, method="m", instruction="i")
    hist = history_entry(result, [("a", "x"), ("b", "y")], 2, "new")
    assert hist == [(result.output, "new"), ("a", "x")]


def test_make_result_decodes_task_presets(photo):
    spec = get_method("instructcv")
    pre = next(p for p in spec.presets if p.decode == "segment")
    src = PIL.Image.new("RGB", (16, 16))
    out = PIL.Image.new("RGB", (16, 16), (255, 255, 255))
    request = EditRequest("segment the circle", image=src, task="segment").validated()
    s = Settings(steps=1, guidance=1.0, image_guidance=1.0, max_side=64, seed=0)
    r = make_result(spec, pre, request, out, s, instruction="segment the circle", seconds=0.5, label="circle", notes=[])
    assert r.task == "segment" and r.task_value.shape == (16, 16) and r.task_value.all()
    assert r.info["seconds"] == 0.5 and r.info["mask"] is False and r.summary.startswith("Mask of the circle: 100.0%")


def test_fast_runs_the_speed_preset_and_keeps_the_cached_pipeline(tmp_path):
    import numpy as np
    import PIL.Image

    from editkit.app.engine import AppConfig, Engine
    from editkit.speed import FAST_PRESETS

    PIL.Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "a.png")
    engine = Engine(AppConfig(allowed_roots=[tmp_path]))
    preset = FAST_PRESETS["instructcv"]
    seen = []
    r = engine.run("instructcv", str(tmp_path / "a.png"), "make it red", preset="free edit", fast=True,
                   on_step=lambda i, n: seen.append(n))
    assert r.info["fast"] and r.info["steps"] == preset.steps and seen[-1] == preset.steps
    cached = engine.pipeline(engine.spec("instructcv"))
    assert type(cached.scheduler).__name__ != "DPMSolverMultistepScheduler"  # the solver swap was a copy's
    r = engine.run("instructcv", str(tmp_path / "a.png"), "make it red", preset="free edit", fast=True, steps=3)
    assert r.info["steps"] == 3  # the user's steps win
    r = engine.run("dreamengine", None, "", interleaved="a red circle", fast=True)
    assert r.info["fast"] and r.info["steps"] == FAST_PRESETS["dream"].steps
