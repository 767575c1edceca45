"""The Gradio app end to end: headless Chromium (Playwright) and gradio_client against a live server.

The app runs in this process on 127.0.0.1 at a free port, with a tiny
random InstructCV model. Set EDITKIT_APP_SCREENSHOTS=DIR to save
screenshots of the app there (docs/app_*.png are made this way).
"""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

gr = pytest.importorskip("gradio", reason="the app tests need the `app` extra (gradio)")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from editkit.app.engine import AppConfig, Engine  # noqa: E402
from editkit.app.methods import METHODS, default_sources, get_method  # noqa: E402
from editkit.app.ui import free_port, launch  # noqa: E402
from editkit.pipelines import InstructCVPipeline  # noqa: E402
from editkit.testing import tiny_instructcv_components  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = os.environ.get("EDITKIT_APP_SCREENSHOTS")
QUEUE_SIZE = 2
MAX_UPLOAD_BYTES = 100_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_server")
    model = root / "tiny"
    InstructCVPipeline(**tiny_instructcv_components(seed=0)).save_pretrained(model)
    engine = Engine(AppConfig(sources={"instructcv": str(model)}, steps=2, max_upload_bytes=MAX_UPLOAD_BYTES))
    port = free_port()
    demo = launch(engine, port=port, queue_size=QUEUE_SIZE, cache_dir=root / "cache", prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    yield {"url": url, "engine": engine, "root": root, "cache": root / "cache"}
    demo.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("app_files")
    rng = np.random.default_rng(0)
    examples = Path(__file__).resolve().parents[1] / "app" / "examples"
    PIL.Image.open(examples / "segment_0.png").convert("RGB").resize((48, 32)).save(d / "small.png")
    PIL.Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(d / "big.png")  # ~270 KB
    (d / "notes.png").write_text("not an image at all")
    return d


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the `playwright` package")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(server["url"], wait_until="domcontentloaded")
    pg.wait_for_selector("#run", timeout=30_000)
    yield pg
    pg.close()


def shot(pg, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(SHOTS) / f"app_{name}.png"), full_page=True)


def toasts(pg, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        texts = pg.locator(".toast-body").all_inner_texts()
        if texts:
            return " ".join(texts)
        time.sleep(0.1)
    return ""


def type_instruction(pg, text):
    box = pg.locator("#instruction textarea")
    box.fill("")
    box.press_sequentially(text)  # typed keys fire Gradio's input events (fill() does not)


def upload(pg, path):
    pg.locator("#source input[type=file]").set_input_files(str(path))


# ----------------------------------------------------------------------------- browser


def test_upload_type_run_shows_an_output_of_the_input_size(page, files):
    upload(page, files / "small.png")
    page.wait_for_selector("#source img", timeout=10_000)
    type_instruction(page, "Segment the red circle.")
    page.wait_for_function("() => document.querySelector('#preset input').value === 'segment'", timeout=10_000)
    page.locator("#run").click()
    page.wait_for_selector("#output img", timeout=60_000)
    size = page.eval_on_selector("#output img", "e => e.complete ? [e.naturalWidth, e.naturalHeight] : null")
    deadline = time.time() + 10
    while size is None and time.time() < deadline:
        time.sleep(0.1)
        size = page.eval_on_selector("#output img", "e => e.complete ? [e.naturalWidth, e.naturalHeight] : null")
    assert size == [48, 32]
    summary = page.locator("#summary").inner_text()
    assert "seed" in summary and "48×32" in summary and "Mask of the red circle" in summary
    # the decoded task result and the history appear; "use this output as input" fills the source
    page.wait_for_selector("#task_view img", timeout=10_000)
    page.wait_for_selector("#history img", timeout=10_000)
    page.locator("#advanced").click()
    shot(page, "edit")
    before = page.eval_on_selector("#source img", "e => e.src")
    page.locator("#reuse").click()
    page.wait_for_function("s => document.querySelector('#source img') && document.querySelector('#source img').src !== s", arg=before, timeout=10_000)


def test_a_painted_mask_is_used(page, files):
    # the upload also sets the mask editor's background (a server round trip); paint after it
    with page.expect_response(lambda r: r.url.endswith("/gradio_api/run/predict"), timeout=20_000):
        upload(page, files / "small.png")
    page.wait_for_selector("#source img", timeout=10_000)
    page.get_by_text("Mask (optional)").click()
    canvas = page.locator("#mask canvas").first
    canvas.wait_for(timeout=10_000)
    time.sleep(1.0)
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 20, cy)
    page.mouse.down()
    for dx in (-10, 0, 10, 20):
        page.mouse.move(cx + dx, cy)
    page.mouse.up()
    time.sleep(0.5)
    type_instruction(page, "make it red")
    # typing something that is no preset's sentence switches to a free edit (nothing to decode)
    page.wait_for_function("() => document.querySelector('#preset input').value === 'free edit'", timeout=10_000)
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('seed')", timeout=60_000)
    shot(page, "mask")
    summary = page.locator("#summary").inner_text()
    assert "masked" in summary and "Mask of" not in summary


def test_bad_input_shows_a_message_and_the_app_keeps_serving(page, files):
    page.locator("#instruction textarea").fill("")
    page.locator("#run").click()
    assert "instruction is empty" in toasts(page) or "Upload a source image" in toasts(page)

    upload(page, files / "big.png")
    assert "exceed the maximum allowed size" in toasts(page)

    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector("#run", timeout=30_000)
    upload(page, files / "notes.png")
    page.locator("#instruction textarea").fill("make it red")
    page.locator("#run").click()
    assert "not an image" in toasts(page)
    if SHOTS:
        time.sleep(0.6)  # let the message fade in
    shot(page, "error")

    # a method without a pipeline/checkpoint is marked, and says so instead of running
    page.locator("#method input").click()
    page.get_by_role("option", name="PromptFix (not available)").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('not available')", timeout=10_000)
    assert page.locator("#run").is_disabled()
    page.locator("#auxiliary").wait_for(state="visible", timeout=10_000)  # PromptFix's auxiliary prompt
    # Dream Engine: an interleaved prompt over reference images instead of a source image
    page.locator("#method input").click()
    page.get_by_role("option", name="Dream Engine (not available)").click()
    page.locator("#interleaved").wait_for(state="visible", timeout=10_000)
    page.locator("#references").wait_for(state="visible", timeout=10_000)
    assert not page.locator("#source").is_visible() and not page.locator("#auxiliary").is_visible()


def test_cached_example_fills_inputs_and_shows_outputs(page, server):
    page.get_by_text("depth: Create a depth map of this scene.").click()
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('Depth')", timeout=60_000)
    assert page.locator("#instruction textarea").input_value() == "Create a depth map of this scene."
    assert any(server["cache"].rglob("*")), "lazy example caching wrote nothing"


# ----------------------------------------------------------------------------- gradio_client and HTTP


def edit_args(path, **kw):
    args = {"method": "instructcv", "image": gradio_client.handle_file(str(path)), "instruction": "Detect the dog.", "preset": "detect", "label": "dog", "steps": 2, "seed": 5, "randomize_seed": False}
    args.update(kw)
    return args


def test_gradio_client_calls_the_named_endpoints(server, files):
    client = gradio_client.Client(server["url"], verbose=False)
    info = client.view_api(return_format="dict", print_info=False)
    assert {"/edit", "/methods"} <= set(info["named_endpoints"])
    out = client.predict(**edit_args(files / "small.png"), api_name="/edit")
    compare, output, task_image, summary, seed, history = out
    assert PIL.Image.open(output).size == (48, 32)
    assert PIL.Image.open(task_image).size == (48, 32)
    assert seed == 5 and "box(es) for the dog" in summary and len(history) == 1
    methods = client.predict(api_name="/methods")
    assert methods[0]["key"] == "instructcv" and methods[0]["available"] and methods[0]["loaded"]
    assert server["engine"].cache.loads[("instructcv", server["engine"].source(get_method("instructcv")))] == 1


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    """Every method with its shipped tiny model, as `editkit app` serves them."""
    root = tmp_path_factory.mktemp("app_shipped")
    engine = Engine(AppConfig(sources=default_sources(), steps=2))
    port = free_port()
    demo = launch(engine, port=port, queue_size=QUEUE_SIZE, cache_dir=root / "cache", prevent_thread_lock=True, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}/", "engine": engine}
    demo.close()


@pytest.mark.parametrize("key", list(METHODS))
def test_gradio_client_runs_every_method_with_the_api_defaults(shipped_server, files, key):
    client = gradio_client.Client(shipped_server["url"], verbose=False)
    args = {"method": key, "image": gradio_client.handle_file(str(files / "small.png")), "instruction": "make it red",
            "steps": 2, "seed": 1, "randomize_seed": False}
    compare, output, task_image, summary, seed, history = client.predict(**args, api_name="/edit")
    if get_method(key).takes("image"):
        assert PIL.Image.open(output).size == (48, 32)
    assert seed == 1
    assert history[-1]["caption"] == f"{get_method(key).name}: make it red (seed 1)"
    assert task_image is None  # no preset named: a free edit, nothing decoded (not the first preset's segment)


def test_the_readme_api_examples_run_for_every_method(shipped_server, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("one per method")[1].split("```python")[1].split("```")[0]
    assert block.count('method="') == 5
    code = block.replace("http://127.0.0.1:7860/", shipped_server["url"]).replace('api_name="/edit")', 'steps=2, api_name="/edit")')
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["task_image"] is not None and scope["seed"] >= 0  # the InstructCV call decoded its mask


def test_gradio_client_gets_clear_errors_and_the_server_keeps_serving(server, files):
    client = gradio_client.Client(server["url"], verbose=False)
    for kwargs, words in [
        ({"instruction": "  ", "preset": "free edit"}, "instruction is empty"),  # a templated preset fills it
        ({"method": "promptfix"}, "not available"),
        ({"image": gradio_client.handle_file(str(files / "notes.png"))}, "not an image"),
        ({"steps": 9999}, "greater than maximum"),
    ]:
        with pytest.raises(Exception, match=words):
            client.predict(**edit_args(files / "small.png", **kwargs), api_name="/edit")
    out = client.predict(**edit_args(files / "small.png"), api_name="/edit")
    assert PIL.Image.open(out[1]).size == (48, 32)


def test_many_requests_at_once_are_bounded_by_the_queue(server, files):
    client = gradio_client.Client(server["url"], verbose=False)
    jobs = [client.submit(**edit_args(files / "small.png", steps=40), api_name="/edit") for _ in range(8)]
    ok, refused = 0, []
    for job in jobs:
        try:
            job.result(timeout=120)
            ok += 1
        except Exception as err:  # noqa: BLE001 - the client raises its own error types
            refused.append(str(err))
    assert ok >= 1 and refused, (ok, refused)
    assert all("queue" in r.lower() for r in refused), refused
    out = client.predict(**edit_args(files / "small.png"), api_name="/edit")  # still serving
    assert PIL.Image.open(out[1]).size == (48, 32)


def test_no_file_outside_the_app_folders_can_be_read(server):
    base = server["url"].rstrip("/")
    repo_file = Path(__file__).resolve().parents[1] / "README.md"
    with httpx.Client(timeout=30) as http:
        examples = Path(__file__).resolve().parents[1] / "app" / "examples"
        assert http.get(f"{base}/gradio_api/file={examples / 'depth_0.png'}").status_code == 200  # the app's own folder
        for target in [
            "/etc/passwd",
            str(repo_file),
            "../../../../etc/passwd",
            f"{examples}/../engine.py",
            f"{examples}/%2e%2e/engine.py",
            str(server["root"] / "tiny" / "model_index.json"),
        ]:
            r = http.get(f"{base}/gradio_api/file={target}")
            assert r.status_code in (403, 404), (target, r.status_code)
            assert "root:" not in r.text and "_class_name" not in r.text
        # a request naming a server path instead of an upload is refused, and nothing of the file comes back
        payload = {
            "data": ["instructcv", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "make it red", "free edit", "", None, [], "", "", 1, 7.5, 1.5, 0, False, False, 1.0, 64],
        }
        r = http.post(f"{base}/gradio_api/call/edit", json=payload)
        if r.status_code == 200:
            event = r.json()["event_id"]
            stream = http.get(f"{base}/gradio_api/call/edit/{event}").text
            assert "event: error" in stream and "root:" not in stream
        else:
            assert r.status_code in (400, 403, 422) and "root:" not in r.text
        assert http.get(base + "/").status_code == 200
    client = gradio_client.Client(server["url"], verbose=False)
    assert json.dumps(client.predict(api_name="/methods"))  # still serving
