import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from editkit import cli, loading
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    InstructCVPipeline(**tiny_instructcv_components(seed=0)).save_pretrained(path)
    return path


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 60, 3), dtype=np.uint8)).save(path)
    return path


def test_edit_writes_an_image_of_the_input_aspect(model_dir, photo, tmp_path, capsys):
    out = tmp_path / "out" / "edited.png"
    rc = cli.main(["edit", str(photo), "make it red", "-o", str(out), "--model", str(model_dir), "--steps", "2"])
    assert rc == 0
    assert PIL.Image.open(out).size == (60, 36)
    assert "wrote" in capsys.readouterr().out


def test_edit_runs_as_a_console_command(model_dir, photo, tmp_path):
    out = tmp_path / "cmd.png"
    proc = subprocess.run(
        [sys.executable, "-m", "editkit.cli", "edit", str(photo), "make it red", "-o", str(out), "--model", str(model_dir), "--steps", "1", "--max-side", "32"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert PIL.Image.open(out).size == (60, 36)


@pytest.mark.parametrize(
    "task,label,suffix",
    [("segment", "dog", "segment-dog.mask.png"), ("detect", "dog", "detect-dog.boxes.json"), ("depth", None, "depth.depth.png"), ("classify", "dog", "classify-dog.label.json")],
)
def test_task_writes_decoded_results_beside_the_image(model_dir, photo, task, label, suffix):
    args = ["task", task, str(photo), "--model", str(model_dir), "--steps", "1"]
    if label:
        args += ["--label", label]
    assert cli.main(args) == 0
    result = photo.parent / f"photo.{suffix}"
    assert result.is_file()
    if suffix.endswith(".json"):
        data = json.loads(result.read_text())
        assert "prompt" in data
    elif task == "depth":
        depth = PIL.Image.open(result)
        assert depth.mode.startswith("I") and depth.size == (60, 36)
    else:
        assert PIL.Image.open(result).size == (60, 36)


def test_clear_errors(model_dir, photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loading, "default_model", lambda method="instructcv": None)
    assert cli.main(["edit", str(photo), "x", "-o", str(tmp_path / "o.png")]) == 2
    assert "pass a model folder or hub id (`--model PATH_OR_ID`" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs --label"):
        cli.main(["task", "segment", str(photo), "--model", str(model_dir)])
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    assert cli.main(["edit", str(bad), "x", "-o", str(tmp_path / "o.png"), "--model", str(model_dir)]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert cli.main(["edit", str(photo), " ", "-o", str(tmp_path / "o.png"), "--model", str(model_dir)]) == 2
    assert "`instruction` is empty" in capsys.readouterr().err
    assert cli.main(["edit", str(photo), "x", "-o", str(tmp_path / "o.png"), "--model", str(tmp_path)]) == 2
    assert f"cannot load {tmp_path} with InstructCVPipeline.from_pretrained" in capsys.readouterr().err


def test_fast_runs_the_speed_preset_on_edit_and_eval(photo, tmp_path, capsys, monkeypatch):
    import json

    from editkit.speed import FAST_PRESETS

    seen = []
    monkeypatch.setattr("editkit.cli.run_plan", lambda pipe, kwargs: seen.append((type(pipe.scheduler).__name__, dict(kwargs))) or "plan")
    assert cli.main(["edit", str(photo), "make it red", "-o", str(tmp_path / "fast.png"), "--fast"]) == 0
    scheduler, kwargs = seen[-1]
    preset = FAST_PRESETS["instructcv"]
    assert scheduler == ("DPMSolverMultistepScheduler" if preset.solver else "EulerAncestralDiscreteScheduler")  # the model's own
    assert kwargs["num_inference_steps"] == preset.steps and kwargs["guidance_interval"] == preset.guidance_interval
    assert cli.main(["edit", str(photo), "make it red", "-o", str(tmp_path / "f3.png"), "--fast", "--steps", "3"]) == 0
    assert seen[-1][1]["num_inference_steps"] == 3  # an explicit flag wins over the preset
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--tasks", "recolor", "--n", "1", "--fast", "--no-progress", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    config = results["config"]
    assert config["steps"] == preset.steps and config["call_args"]["guidance_interval"] == list(preset.guidance_interval)
    assert config["speed_preset"]["solver"] == preset.solver
