"""The Gradio Blocks of the editkit demo.

`build_app(engine)` lays out one page for every registered method: the
method picker and task presets, the source image, a mask painter, reference
images, the interleaved and auxiliary prompts (shown for the methods that
take them), an "Advanced settings" accordion, a before/after slider, the
decoded task result, a history gallery and examples from the shapes
benchmark. `launch(...)` serves it on 127.0.0.1 with a bounded queue.

Named API endpoints (gradio_client): "/edit" (the Run button) and "/methods".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr
import PIL.Image

from .engine import (
    EXAMPLES_DIR,
    GUIDANCE_RANGE,
    MAX_SEED,
    AppConfig,
    EditResult,
    Engine,
    UserError,
    check_readable_path,
    history_entry,
    load_user_image,
)
from .methods import FREE, METHODS, MethodSpec, get_method

log = logging.getLogger("editkit.app")

HOST = "127.0.0.1"  # the app never binds to any other address
TITLE = "editkit: instruction-driven image editing"

CSS = """
.gradio-container {max-width: 1280px !important; margin: auto;}
#status {font-size: 0.9em; min-height: 1.5em;}
#summary {min-height: 3em;}
"""


def _payload_paths(obj: Any) -> list[str]:
    """Every local file path inside a component's payload (FileData, editor layers, gallery items)."""
    from gradio.data_classes import FileData
    from pydantic import BaseModel

    if isinstance(obj, FileData):
        return [obj.path] if obj.path and not obj.path.startswith(("http://", "https://")) else []
    if isinstance(obj, BaseModel):
        return [p for name in type(obj).model_fields for p in _payload_paths(getattr(obj, name))]
    if isinstance(obj, (list, tuple)):
        return [p for item in obj for p in _payload_paths(item)]
    if isinstance(obj, dict):
        return [p for item in obj.values() for p in _payload_paths(item)]
    return []


def guard_paths(comp: gr.components.Component, roots: list[Path]) -> gr.components.Component:
    """Refuse, before the component opens anything, payload files outside `roots` (the upload folder, the examples).

    Defence in depth: Gradio already refuses API payload paths that were not
    uploaded; this repeats the engine's own rule inside the component, so a
    change in Gradio cannot silently widen what the app reads.
    """
    inner = comp.preprocess

    def preprocess(payload):
        for path in _payload_paths(payload):
            try:
                check_readable_path(path, roots, comp.label or "A file")
            except UserError as err:
                raise gr.Error(str(err)) from None
        return inner(payload)

    comp.preprocess = preprocess
    return comp


def checked_image(roots: list[Path] | None = None, **kwargs) -> gr.Image:
    """A `gr.Image` whose unreadable uploads reach the user as a clear message.

    (The check wraps the instance's `preprocess`; subclassing a Gradio
    component would make Gradio write a .pyi file next to this module.)
    """
    comp = gr.Image(**kwargs)
    inner = comp.preprocess

    def preprocess(payload):
        try:
            return inner(payload)
        except gr.Error:
            raise
        except PIL.Image.DecompressionBombError:
            raise gr.Error(f"{comp.label} is too large to decode safely; downscale it first.") from None
        except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise gr.Error(f"{comp.label}: the uploaded file is not an image (PNG, JPEG, WebP, ...).") from None

    comp.preprocess = preprocess
    return guard_paths(comp, roots) if roots is not None else comp


def _theme() -> gr.themes.Base:
    # System fonts only: the page must not need the network.
    local = [gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")]
    return gr.themes.Soft(primary_hue="indigo", font=local, font_mono=mono)


def _method_choices(engine: Engine) -> list[tuple[str, str]]:
    out = []
    for key, spec in METHODS.items():
        a = engine.availability(spec)
        out.append((spec.name if a.ok else f"{spec.name} (not available)", key))
    return out


def _status_line(engine: Engine, key: str) -> str:
    spec = get_method(key)
    a = engine.availability(spec)
    if a.ok:
        loaded = engine.is_loaded(spec)
        return f"**{spec.name}** ready: {a.message.split(': ', 1)[-1]}{' (loaded)' if loaded else ' (loads on first run)'}. {spec.description}"
    return f"⚠️ {a.message}"


def _hgs_info(spec: MethodSpec) -> str:
    if spec.hgs is None:
        return f"high-frequency guidance (not used by {spec.name})"
    return "high-frequency guidance: keeps the input's fine detail"


def _summary(r: EditResult) -> str:
    w, h = r.output.size
    masked = " · masked" if r.info.get("mask") else ""
    line = f"**{r.method}** · seed **{r.seed}** · {r.info['steps']} steps · {w}×{h}{masked} · {r.info['seconds']:.2f} s"
    parts = [line]
    if r.summary:
        parts.append(r.summary)
    parts += [f"_{n}_" for n in r.notes]
    return "\n\n".join(parts)


def _caption(r: EditResult) -> str:
    text = r.instruction if len(r.instruction) <= 60 else r.instruction[:57] + "..."
    return f"{r.method}: {text} (seed {r.seed})"


def load_examples() -> list[dict[str, Any]]:
    path = EXAMPLES_DIR / "examples.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    return [r for r in rows if (EXAMPLES_DIR / r["image"]).is_file() and r.get("method") in METHODS]


def examples_cache_dir(engine: Engine, base: str | os.PathLike | None = None) -> Path:
    """Where cached example outputs go: keyed by the checkpoints and steps, so a new model never shows stale outputs."""
    base = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "editkit" / "app"
    key = json.dumps({"sources": engine.config.sources, "steps": engine.config.steps}, sort_keys=True, default=str)
    return base / "examples" / hashlib.sha1(key.encode()).hexdigest()[:12]


def build_app(
    engine: Engine | None = None,
    *,
    cache_examples: bool = True,
    cache_dir: str | os.PathLike | None = None,
    concurrency: int = 1,
) -> gr.Blocks:
    """The demo's Blocks. Every event that runs a model shares one concurrency group ("model")."""
    engine = engine or Engine(AppConfig())
    cfg = engine.config
    # images reach the engine as paths in Gradio's upload folder; nothing else may be read
    upload_dir = Path(gr.utils.get_upload_folder())
    if all(Path(r) != upload_dir for r in cfg.allowed_roots):
        cfg.allowed_roots.append(upload_dir)
    first = engine.default_method()
    spec0 = get_method(first)
    scales0 = engine.scales(spec0)  # the model's own default guidance where it records one
    # the page (and so a gradio_client call that names no preset) starts at the free edit where the method has one
    pre0 = FREE if FREE in spec0.presets else spec0.presets[0]
    gr_cache = examples_cache_dir(engine, cache_dir)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nPick a method and a task preset (or type an instruction), upload an image, press **Run**.")
        with gr.Row(equal_height=False):
            # ------------------------------------------------------------------ inputs
            with gr.Column(scale=5):
                with gr.Row():
                    method = gr.Dropdown(_method_choices(engine), value=first, label="Method", scale=2, elem_id="method")
                    preset = gr.Dropdown(
                        [p.name for p in spec0.presets],
                        value=pre0.name,
                        label="Task preset",
                        allow_custom_value=True,
                        scale=2,
                        elem_id="preset",
                    )
                    label = gr.Textbox(
                        value=pre0.default_label,
                        label="Object / class",
                        visible=pre0.needs_label,
                        scale=2,
                        elem_id="label",
                    )
                status = gr.Markdown(_status_line(engine, first), elem_id="status")
                source = checked_image(
                    cfg.allowed_roots,
                    label="Source image",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=320,
                    format="png",
                    visible=spec0.takes("image"),
                    elem_id="source",
                )
                instruction = gr.Textbox(
                    value=pre0.instruction(),
                    label="Instruction",
                    placeholder="e.g. segment the red circle / make it snowy (Enter runs)",
                    lines=1,
                    max_lines=4,
                    visible=not spec0.takes("interleaved"),
                    elem_id="instruction",
                )
                interleaved = gr.Textbox(
                    value="",
                    label="Interleaved prompt",
                    placeholder="Put the object of <image1> on the background of <image2>",
                    info="Refer to reference images as <image1>, <image2>, ...",
                    visible=spec0.takes("interleaved"),
                    elem_id="interleaved",
                )
                with gr.Row(visible=spec0.takes("auxiliary_prompt")) as aux_row:
                    auxiliary = gr.Textbox(
                        value="",
                        label="Auxiliary prompt",
                        placeholder="What the image shows and what is wrong with it",
                        scale=4,
                        elem_id="auxiliary",
                    )
                    describe = gr.Button("Describe image", scale=1, visible=cfg.captioner is not None)
                references = guard_paths(gr.Gallery(
                    label=f"Reference images (up to {cfg.max_references})",
                    type="filepath",
                    file_types=["image"],
                    interactive=True,
                    columns=4,
                    height=160,
                    visible=spec0.takes("references"),
                    elem_id="references",
                ), cfg.allowed_roots)
                with gr.Accordion("Mask (optional): paint where the edit may happen", open=False, visible=spec0.takes("mask")) as mask_box:
                    mask = guard_paths(gr.ImageEditor(
                        label="Mask",
                        type="pil",
                        image_mode="RGBA",
                        sources=[],
                        transforms=[],
                        layers=False,
                        brush=gr.Brush(colors=["#ff3030"], color_mode="fixed"),
                        height=320,
                        elem_id="mask",
                    ), cfg.allowed_roots)
                run = gr.Button("Run", variant="primary", interactive=engine.availability(spec0).ok, elem_id="run")
                with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                    with gr.Row():
                        steps = gr.Slider(1, 200, value=cfg.default_steps(spec0), step=1, label="Steps", info="denoising steps", elem_id="steps")
                        max_side = gr.Slider(32, 1024, value=engine.working_side(spec0), step=32, label="Max side", info="bound on the working resolution", elem_id="max_side")
                    with gr.Row():
                        guidance = gr.Slider(*GUIDANCE_RANGE, value=scales0[0], step=0.1, label=spec0.guidance_labels[0], elem_id="guidance")
                        image_guidance = gr.Slider(
                            0.0,
                            10.0,
                            value=scales0[1] or 1.0,
                            step=0.05,
                            label=spec0.guidance_labels[1],
                            visible=spec0.image_guidance is not None,
                            elem_id="image_guidance",
                        )
                    with gr.Row():
                        seed = gr.Slider(0, MAX_SEED, value=0, step=1, label="Seed", info="shows the seed used after a run", scale=3, elem_id="seed")
                        randomize = gr.Checkbox(value=True, label="Randomise seed", scale=1, elem_id="randomize")
                    with gr.Row():
                        hgs = gr.Checkbox(
                            value=False,
                            label="HGS",
                            info=_hgs_info(spec0),
                            interactive=spec0.hgs is not None,
                            elem_id="hgs",
                        )
                        hgs_strength = gr.Slider(0.0, 5.0, value=spec0.hgs_strength, step=0.1, label="HGS strength", interactive=spec0.hgs is not None)
                    fast = gr.Checkbox(value=False, label="Fast", elem_id="fast",
                                       info="speed preset: fewer steps, guidance on part of the run, a multistep solver")
            # ------------------------------------------------------------------ outputs
            with gr.Column(scale=6):
                compare = gr.ImageSlider(label="Before / after", type="pil", format="png", max_height=420, elem_id="compare")
                with gr.Row():
                    output = gr.Image(label="Output", type="filepath", format="png", interactive=False, height=220, elem_id="output")
                    task_view = gr.Image(label="Task result", type="pil", format="png", interactive=False, height=220, visible=False, elem_id="task_view")
                summary = gr.Markdown(label="Summary", show_label=False, elem_id="summary")
                reuse = gr.Button("Use this output as input", elem_id="reuse")
                history_state = gr.State([])
                history = gr.Gallery(
                    label="History (click an image to use it as input)",
                    columns=6,
                    height=150,
                    allow_preview=False,
                    fit_columns=False,
                    object_fit="contain",
                    elem_id="history",
                )

        # ---------------------------------------------------------------------- events
        def on_method_layout(key: str, current_preset: str):
            spec = get_method(key)
            names = [p.name for p in spec.presets]
            keep = current_preset if current_preset in names else names[0]
            pre = spec.preset(keep)
            a = engine.availability(spec)
            scales = engine.scales(spec)
            return (
                gr.update(choices=names, value=keep),
                gr.update(visible=pre.needs_label),
                gr.update(visible=spec.takes("image")),
                gr.update(visible=not spec.takes("interleaved")),
                gr.update(visible=spec.takes("interleaved")),
                gr.update(visible=spec.takes("auxiliary_prompt")),
                gr.update(visible=spec.takes("references")),
                gr.update(visible=spec.takes("mask")),
                gr.update(value=cfg.default_steps(spec)),
                gr.update(value=engine.working_side(spec)),
                gr.update(value=scales[0], label=spec.guidance_labels[0]),
                gr.update(value=scales[1] or 1.0, label=spec.guidance_labels[1], visible=spec.image_guidance is not None),
                gr.update(interactive=spec.hgs is not None, value=False, info=_hgs_info(spec)),
                gr.update(interactive=spec.hgs is not None, value=spec.hgs_strength),
                _status_line(engine, key),
                gr.update(interactive=a.ok),
            )

        method.change(
            on_method_layout,
            [method, preset],
            [preset, label, source, instruction, interleaved, aux_row, references, mask_box, steps, max_side, guidance, image_guidance, hgs, hgs_strength, status, run],
            api_visibility="private",
            queue=False,
        )

        def fill(spec: MethodSpec, preset_name: str, label_text: str | None, reset_label: bool):
            try:
                pre = spec.preset(preset_name)
            except ValueError:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            lab = pre.default_label if reset_label else (label_text or "")
            text = pre.instruction(lab)
            text_update = gr.update(value=text) if pre.template else gr.update()
            to_interleaved = spec.takes("interleaved")
            return (
                gr.update(value=lab, visible=pre.needs_label) if reset_label else gr.update(visible=pre.needs_label),
                gr.update() if to_interleaved else text_update,
                text_update if to_interleaved else gr.update(),
                gr.update(value=pre.auxiliary) if (pre.auxiliary and spec.takes("auxiliary_prompt")) else gr.update(),
                gr.update(value=list(pre.scales)[0]) if pre.scales else gr.update(),
            )

        fill_outputs = [label, instruction, interleaved, auxiliary, guidance]
        # user actions only (.input), so loading an example never overwrites its instruction
        method.input(lambda k: fill(get_method(k), get_method(k).presets[0].name, None, True), [method], fill_outputs, api_visibility="private", queue=False)
        preset.input(lambda k, p: fill(get_method(k), p, None, True), [method, preset], fill_outputs, api_visibility="private", queue=False)
        label.input(lambda k, p, lab: fill(get_method(k), p, lab, False), [method, preset, label], fill_outputs, api_visibility="private", queue=False)

        def on_instruction_input(key: str, current: str, text: str):
            # typing a preset's sentence selects it; anything else is a free edit (no decoding)
            spec = get_method(key)
            m = spec.match_preset(text)
            if m:
                pre, lab = m
                return gr.update(value=pre.name), gr.update(value=lab or pre.default_label, visible=pre.needs_label)
            try:
                cur = spec.preset(current)
            except ValueError:
                cur = spec.presets[0]
            if not cur.template or cur.template.strip() == "{label}":
                return gr.update(), gr.update()
            free = next((p for p in spec.presets if not p.template), None)
            return gr.update(value=free.name if free else cur.name), gr.update(visible=False)

        instruction.input(
            on_instruction_input,
            [method, preset, instruction],
            [preset, label],
            api_visibility="private",
            queue=False,
            trigger_mode="always_last",
        )

        def mask_background(path):
            if not path:
                return None
            return {"background": path, "layers": [], "composite": path}

        source.change(mask_background, [source], [mask], api_visibility="private", queue=False)

        def edit(
            method: str,
            image: str | None,
            instruction: str,
            preset: str = "",
            label: str = "",
            mask: dict | None = None,
            references: list | None = None,
            auxiliary_prompt: str = "",
            interleaved: str = "",
            steps: float | None = None,
            guidance: float | None = None,
            image_guidance: float | None = None,
            seed: float = 0,
            randomize_seed: bool = False,
            hgs: bool = False,
            hgs_strength: float | None = None,
            max_side: float | None = None,
            fast: bool = False,
            history: list | None = None,
            progress=gr.Progress(),
        ):
            """Edit `image` following `instruction` with `method`; returns (before, after), the output,
            the decoded task result, a summary, the seed used and the history."""
            spec = get_method(method) if method in METHODS else None
            if spec is not None and preset == pre0.name and preset not in [p.name for p in spec.presets]:
                preset = ""  # the dropdown's initial value is what gradio_client sends when a call names no preset
            if spec is not None and engine.availability(spec).ok and not engine.is_loaded(spec):
                progress(0.0, desc=f"Loading {spec.name}")

            def on_step(i: int, n: int) -> None:
                progress((i, n), desc="Denoising", unit="steps")

            try:
                r = engine.run(
                    method,
                    image,
                    instruction,
                    preset=preset,
                    label=label,
                    mask=mask,
                    references=references,
                    auxiliary_prompt=auxiliary_prompt,
                    interleaved=interleaved,
                    steps=steps,
                    guidance=guidance,
                    image_guidance=image_guidance,
                    seed=seed,
                    randomize_seed=randomize_seed,
                    hgs=hgs,
                    hgs_strength=hgs_strength,
                    max_side=max_side,
                    fast=fast,
                    on_step=on_step,
                )
            except UserError as err:
                raise gr.Error(str(err), title="Cannot run this request") from None
            except Exception as err:  # the server keeps serving; the details go to its log
                log.exception("edit failed")
                raise gr.Error(f"The model failed on this request ({type(err).__name__}); the details are in the server log.") from None
            hist = history_entry(r, history, cfg.history_size, _caption(r))
            return (
                (r.source, r.output),
                r.output,
                r.task_image,
                _summary(r),
                r.seed,
                hist,
                hist,
            )

        run_event = gr.on(
            [run.click, instruction.submit, interleaved.submit],
            edit,
            [method, source, instruction, preset, label, mask, references, auxiliary, interleaved, steps, guidance, image_guidance, seed, randomize, hgs, hgs_strength, max_side, fast, history_state],
            [compare, output, task_view, summary, seed, history_state, history],
            api_name="edit",
            concurrency_limit=concurrency,
            concurrency_id="model",
            show_progress_on=[compare],  # one progress bar (per step), on the before/after view
        )
        # the task view shows only when the preset decodes something
        run_event.then(lambda v: gr.update(visible=v is not None), [task_view], [task_view], api_visibility="private", queue=False)

        def describe_image(image):
            if cfg.captioner is None:
                raise gr.Error("No captioner is configured.")
            if not image:
                raise gr.Error("Upload a source image first.")
            try:
                return cfg.captioner(load_user_image(image, "The source image", cfg))
            except UserError as err:
                raise gr.Error(str(err)) from None

        describe.click(describe_image, [source], [auxiliary], api_visibility="private", concurrency_id="model")

        def reuse_output(path):
            if not path:
                raise gr.Error("There is no output yet: run an edit first.")
            return path

        reuse.click(reuse_output, [output], [source], api_visibility="private", queue=False)

        def pick_history(hist, evt: gr.SelectData):
            if not hist or evt.index is None or evt.index >= len(hist):
                return gr.update()
            return hist[evt.index][0]

        history.select(pick_history, [history_state], [source], api_visibility="private", queue=False)

        def methods() -> list:
            """Every method: availability, request fields, default steps and scales, task presets."""
            return engine.describe()

        gr.api(methods, api_name="methods")

        # ---------------------------------------------------------------------- examples
        rows = load_examples()
        if rows:
            ex_method = rows[0]["method"]
            can_cache = cache_examples and engine.availability(get_method(ex_method)).ok
            if can_cache:
                os.environ["GRADIO_EXAMPLES_CACHE"] = str(gr_cache)

            def run_example(method_key, image, text, preset_name, label_text):
                r = edit(method_key, image, text, preset_name, label_text, randomize_seed=False, seed=0)
                return r[0], r[1], r[2], r[3]

            gr.Examples(
                examples=[[r["method"], str(EXAMPLES_DIR / r["image"]), r["instruction"], r["preset"], r.get("label", "")] for r in rows],
                inputs=[method, source, instruction, preset, label],
                outputs=[compare, output, task_view, summary],
                fn=run_example,
                cache_examples=can_cache,
                cache_mode="lazy" if can_cache else None,
                example_labels=[f"{r['preset']}: {r['instruction']}" for r in rows],
                label="Examples from the shapes benchmark (test split)",
                api_visibility="private",
            )
    return demo


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def launch(
    engine: Engine | None = None,
    *,
    port: int = 7860,
    queue_size: int = 20,
    concurrency: int = 1,
    cache_examples: bool = True,
    cache_dir: str | os.PathLike | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> gr.Blocks:
    """Serve the app on 127.0.0.1:`port` with a bounded queue; returns the running Blocks."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not port:
        port = free_port()
    engine = engine or Engine(AppConfig())
    demo = build_app(engine, cache_examples=cache_examples, cache_dir=cache_dir, concurrency=concurrency)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    demo.launch(
        server_name=HOST,
        server_port=port,
        share=False,
        max_file_size=int(engine.config.max_upload_bytes),
        allowed_paths=[str(EXAMPLES_DIR)],
        prevent_thread_lock=prevent_thread_lock,
        show_error=False,
        quiet=quiet,
        ssr_mode=False,
        mcp_server=False,
        theme=_theme(),
        css=CSS,
        footer_links=["api"],
    )
    return demo
