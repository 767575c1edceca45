"""The shipped tiny models keep the results their notes report, on a few benchmark samples.

Each claim is a task where the trained model clearly beats the identity baseline (output = input) in
`editkit eval` (docs/tiny_models.md). A regression in loading, sampling, guidance or the weights drops
the model to or below identity and fails here.
"""

from __future__ import annotations

import pytest

from editkit.loading import default_model
from editkit.evaluation import evaluate
from editkit.pipelines import pipeline_class

# method, task, margin over identity on the headline metric (PSNR in dB, RMSE in metres), n samples
CLAIMS = [
    ("promptfix", "lowlight", 3.0, 4),
    ("pixwizard", "lowlight", 3.0, 4),
    ("pixwizard", "depth", 1.0, 4),
]
# Dream Engine with its images against its text-only run, on "combine" (4 samples, 10 steps: the shipped
# model gave PSNR 18.3 vs 6.3 dB and background match 0.97 vs 0.13)
DREAM_PSNR_GAIN, DREAM_BACKGROUND_GAIN = 5.0, 0.4


@pytest.mark.parametrize("method,task,margin,n", CLAIMS, ids=[f"{m}-{t}" for m, t, _, _ in CLAIMS])
def test_shipped_model_beats_identity(method, task, margin, n, one_torch_thread):
    path = default_model(method)
    assert path is not None, f"the package ships editkit/models/{method}-tiny"
    pipe = pipeline_class(method).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    res = evaluate(pipe, method, task, n=n, steps=10, batch_size=n, progress=False)["tasks"][task]
    key, scores = res["headline"], res["scores"]
    model, identity = scores["model"][key], scores["identity"][key]
    gain = model - identity if res["higher_is_better"] else identity - model
    assert gain > margin, f"{method} {task}: {key} {model:.3f} vs identity {identity:.3f}"


def _with_and_without(method: str, task: str, ablation: dict) -> tuple[dict, dict]:
    """The shipped model's scores on 4 samples (10 steps) as is, and with its ablation call args."""
    path = default_model(method)
    assert path is not None, f"the package ships editkit/models/{method}-tiny"
    pipe = pipeline_class(method).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    full, ablated = (evaluate(pipe, method, task, n=4, steps=10, batch_size=4, progress=False, call_args=args)["tasks"][task]["scores"]["model"]
                     for args in (None, ablation))
    return full, ablated


def test_shipped_unic_follows_its_condition(one_torch_thread):
    """The UNIC-Adapter claim is against its own control-free run (`control_scale=0`), not identity: on canny maps
    the adapter must raise both PSNR to the target and edge F1 to the map (docs/tiny_models.md)."""
    cond, free = _with_and_without("unic", "canny_to_image", {"control_scale": 0})
    assert cond["psnr"] - free["psnr"] > 0.5, (cond["psnr"], free["psnr"])
    assert cond["edge_f1"] - free["edge_f1"] > 0.05, (cond["edge_f1"], free["edge_f1"])


def test_shipped_dream_uses_its_images(one_torch_thread):
    """The Dream Engine claim is against its own text-only run (`drop_images=True`): on "combine" the
    reference images must lift PSNR to the target and the white-background match (docs/tiny_models.md)."""
    images, text_only = _with_and_without("dream", "combine", {"drop_images": True})
    assert images["psnr"] - text_only["psnr"] > DREAM_PSNR_GAIN, (images["psnr"], text_only["psnr"])
    assert images["background"] - text_only["background"] > DREAM_BACKGROUND_GAIN, (images["background"], text_only["background"])


def test_make_edit_turns_the_purple_diamond_yellow(tmp_path, one_torch_thread):
    """`make edit` (the README's first command) on the shipped default model, read back with the scene reader:
    the diamond is yellow, still a diamond at its place, and the cyan square beside it is unchanged."""
    from PIL import Image

    from editkit.cli import main
    from editkit.data.reader import read_scene

    def box_iou(a, b) -> float:
        inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    source = "docs/examples/shapes.png"
    assert main(["edit", source, "Turn the purple diamond yellow.", "-o", str(tmp_path / "edit.png")]) == 0
    before = {(d.color, d.shape): d for d in read_scene(Image.open(source).convert("RGB"))}
    after = {(d.color, d.shape): d for d in read_scene(Image.open(tmp_path / "edit.png").convert("RGB"))}
    assert set(before) == {("purple", "diamond"), ("cyan", "square")}
    assert set(after) == {("yellow", "diamond"), ("cyan", "square")}
    assert box_iou(after["yellow", "diamond"].box, before["purple", "diamond"].box) >= 0.8
    assert box_iou(after["cyan", "square"].box, before["cyan", "square"].box) >= 0.8


# the first two test-split scenes of object removal (indices 0 and 1, not picked), the one edit task other than
# recolor the model passes on test (edit success 0.81, n = 100); resize's first test scene fails (0.31 on test)
MORE_EDITS = [("remove", 0), ("remove", 1)]


@pytest.mark.parametrize("task,index", MORE_EDITS, ids=[f"{t}-{i}" for t, i in MORE_EDITS])
def test_editkit_edit_carries_out_other_edit_tasks_on_test_scenes(task, index, tmp_path, one_torch_thread):
    """`editkit edit` with the shipped default model on a test-split scene and its instruction, read back with
    the scene reader: every object matches the target scene in colour, shape, place and size class (the edited
    one changed, the others kept), and the background is intact (`edit_success`)."""
    import numpy as np
    from PIL import Image

    from editkit.cli import main
    from editkit.data.reader import read_scene
    from editkit.data.scene import Scene
    from editkit.data.shapes import make_sample
    from editkit.metrics import scene_scores

    sample = make_sample(task, "test", index)
    source = tmp_path / "source.png"
    Image.fromarray(np.asarray(sample.source)).save(source)
    assert main(["edit", str(source), sample.instruction, "-o", str(tmp_path / "edit.png")]) == 0
    output = np.asarray(Image.open(tmp_path / "edit.png").convert("RGB"))
    target = Scene.from_dict(sample.ground_truth["target_scene"])
    found = sorted((d.color, d.shape) for d in read_scene(output))
    assert found == sorted((o.color, o.shape) for o in target.objects), (sample.instruction, found)
    assert scene_scores(output, sample.ground_truth)["edit_success"] == 1.0, sample.instruction
