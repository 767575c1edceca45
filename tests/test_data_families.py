"""Shapes benchmark task families: exact ground truth, determinism, splits, phrasings, bad input."""

import io
import json
import random
import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from editkit.data import FAMILIES, SPLITS, TASKS, arrays_from_ground_truth, generate, make_sample, parse_tasks
from editkit.data.families import FLAWS, MARK_OPACITY, MARKERS, SEG_PALETTE, TASK_IDS, Sample
from editkit.data.phrasings import heldout_phrasings, phrase, train_phrasings
from editkit.data.scene import BACKGROUND_DEPTH_M, Scene
from editkit.metrics import box_metrics, depth_metrics, mask_iou, psnr_in_out, scene_scores
from editkit.tasks import decode_boxes, decode_class, decode_depth, decode_mask, encode_depth

N_CV = 120  # samples per cv task in the exactness tests
NO_CANNY = [t for t in TASKS if t != "canny_to_image"]  # canny (controlnet-aux import, ~6 s) is tested once


@lru_cache(maxsize=None)
def sample(task: str, index: int, split: str = "val", size: int = 64) -> Sample:
    return make_sample(task, split, index, size)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_families_cover_the_issue():
    assert set(FAMILIES) == {"edit", "cv", "restore", "control", "grounding", "interleaved"}
    assert len(FAMILIES["edit"]) == 6 and len(FAMILIES["cv"]) == 4 and len(FAMILIES["restore"]) == 10
    assert len(FAMILIES["control"]) == 5 and len(FAMILIES["interleaved"]) == 2
    assert len(TASKS) == len(set(TASKS)) == len(TASK_IDS) == len(set(TASK_IDS.values()))


@pytest.mark.parametrize("task", NO_CANNY)
def test_every_task_builds_a_complete_sample(task):
    for i in range(3):
        s = sample(task, i)
        assert s.task == task and s.family in FAMILIES and task in FAMILIES[s.family]
        for im in [s.source, s.target, *s.references]:
            assert im.mode == "RGB" and im.size == (64, 64)
        assert s.mask is None or (s.mask.mode == "L" and s.mask.size == (64, 64))
        assert s.instruction and "{" not in s.instruction and "}" not in s.instruction
        assert "{" not in s.auxiliary_prompt
        gt = json.loads(json.dumps(s.ground_truth))  # json-serialisable
        assert gt["sample"] == {"task": task, "split": "val", "index": i, "seed": 0, "size": 64,
                                "heldout_phrasing": False}
        rebuilt = arrays_from_ground_truth(gt)
        for key, arr in s.arrays.items():
            if key in rebuilt:
                assert np.array_equal(rebuilt[key], arr), key
        if task in ("subject_driven", "combine", "put_on_background", "style_driven"):
            assert s.references
        if s.references and task != "style_driven":
            assert np.array_equal(np.asarray(s.source), np.asarray(s.references[0]))


def test_identical_seeds_give_identical_bytes():
    for task in NO_CANNY:
        a = make_sample(task, "train", 7)
        b = make_sample(task, "train", 7)
        assert _png(a.source) == _png(b.source) and _png(a.target) == _png(b.target)
        assert [_png(r) for r in a.references] == [_png(r) for r in b.references]
        assert a.instruction == b.instruction and a.auxiliary_prompt == b.auxiliary_prompt
        assert json.dumps(a.ground_truth, sort_keys=True) == json.dumps(b.ground_truth, sort_keys=True)
    c = make_sample("recolor", "train", 7, seed=1)
    assert c.ground_truth["scene"] != make_sample("recolor", "train", 7).ground_truth["scene"]


def test_sample_does_not_depend_on_other_tasks():
    alone = list(generate("segment", 4))
    mixed = list(generate("recolor,segment,depth", 12))
    assert [s.task for s in mixed[:3]] == ["recolor", "segment", "depth"]
    seg = [s for s in mixed if s.task == "segment"]
    assert [s.index for s in seg] == [0, 1, 2, 3]
    for a, b in zip(alone, seg):
        assert _png(a.source) == _png(b.source) and a.instruction == b.instruction
    # sharding: start continues the same sequence
    assert [s.index for s in generate("cv", 4, start=8)] == [2, 2, 2, 2]


def test_splits_use_disjoint_seed_ranges():
    ranges = list(SPLITS.values())
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop <= b.start
    scenes = {split: {json.dumps(make_sample("segment", split, i).ground_truth["scene"]) for i in range(40)}
              for split in SPLITS}
    assert not scenes["train"] & scenes["val"] and not scenes["train"] & scenes["test"]
    assert not scenes["val"] & scenes["test"]


# ----------------------------------------------------------------------------- cv ground truth is exact


def test_segment_targets_decode_to_the_exact_masks():
    ious = []
    for i in range(N_CV):
        s = sample("segment", i)
        gt = arrays_from_ground_truth(s.ground_truth)
        assert gt["mask"].any()
        ious.append(mask_iou(decode_mask(s.target), gt["mask"]))
        # the mask is exactly the visible pixels of the objects the label names
        q = s.ground_truth["query"]
        scene = Scene.from_dict(s.ground_truth["scene"])
        names = [o.shape if q["kind"] == "shape" else o.name for o in scene.objects]
        assert q["objects"] == [k for k, n in enumerate(names) if n == q["label"]]
    assert np.mean(ious) == 1.0


def test_detect_targets_decode_to_the_exact_boxes():
    preds, gts, worst = [], [], 0.0
    for i in range(N_CV):
        s = sample("detect", i)
        gt = np.asarray(s.ground_truth["boxes"], float)
        labels = arrays_from_ground_truth(s.ground_truth)["labels"]
        for b, k in zip(gt, s.ground_truth["query"]["objects"]):  # boxes are the visible extents
            ys, xs = np.nonzero(labels == k)
            assert list(b) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        p = decode_boxes(s.target)
        assert len(p) == len(gt), i
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        err = np.abs(order(p) - order(gt)).max() if len(gt) else 0.0
        # exact, except that decode_boxes closes a 1 px gap to the image border (x1 = 1 -> 0)
        border_gap = np.any((gt[:, :2] == 1) | (gt[:, 2:] == 63))
        assert err == 0 or (border_gap and err <= 1), (i, gt, p)
        worst = max(worst, err)
        preds.append(p)
        gts.append(gt)
    m = box_metrics(preds, gts)
    assert m == {"precision": 1.0, "recall": 1.0, "ap50": 1.0}
    assert worst <= 1


def test_depth_targets_decode_within_quantisation():
    step = 10.0 / 255.0
    for i in range(N_CV):
        s = sample("depth", i)
        gt = arrays_from_ground_truth(s.ground_truth)
        d = decode_depth(s.target)
        assert np.abs(d - gt["depth"]).max() <= step / 2 + 1e-6
        m = depth_metrics(d, gt["depth"])
        assert m["rmse"] < step and m["delta1"] == 1.0
        scene = Scene.from_dict(s.ground_truth["scene"])
        assert np.all(gt["depth"][gt["labels"] == -1] == BACKGROUND_DEPTH_M)  # background farthest
        for k, o in enumerate(scene.objects):
            assert np.all(gt["depth"][gt["labels"] == k] == o.depth) and o.depth < BACKGROUND_DEPTH_M


def test_classify_targets_decode_to_the_labels():
    answers = []
    for i in range(N_CV):
        s = sample("classify", i)
        q = s.ground_truth["query"]
        scene = Scene.from_dict(s.ground_truth["scene"])
        names = {o.shape for o in scene.objects} | {o.name for o in scene.objects}
        assert s.ground_truth["present"] == (q["label"] in names)
        assert decode_class(s.target) == s.ground_truth["answer"]
        assert q["positive_color"] in s.instruction and q["negative_color"] in s.instruction
        answers.append(s.ground_truth["present"])
    assert 0.3 < np.mean(answers) < 0.7  # balanced


# ----------------------------------------------------------------------------- edits


@pytest.mark.parametrize("task", FAMILIES["edit"] + ("remove_object",))
def test_edits_change_only_the_edit_region(task):
    for i in range(25):
        s = sample(task, i)
        src, tgt = np.asarray(s.source), np.asarray(s.target)
        region = s.arrays["edit_region"]
        assert np.array_equal(np.asarray(s.mask) > 0, region)
        assert np.array_equal(src[~region], tgt[~region])  # nothing outside the region changes
        assert np.any(src[region] != tgt[region])
        loc = psnr_in_out(s.target, s.target, region)
        assert loc["psnr_out"] == 100.0
        assert psnr_in_out(s.source, s.target, region)["psnr_out"] == 100.0


@pytest.mark.parametrize("task", FAMILIES["edit"] + ("remove_object", "subject_driven", "combine",
                                                     "put_on_background", "style_driven", "seg_to_image"))
def test_reader_scores_targets_right_and_sources_wrong(task):
    tgt_ok, src_ok = [], []
    for i in range(15):
        s = sample(task, i)
        tgt_ok.append(scene_scores(s.target, s.ground_truth)["edit_success"])
        src_ok.append(scene_scores(s.source, s.ground_truth)["edit_success"])
    assert np.mean(tgt_ok) == 1.0
    assert np.mean(src_ok) <= 0.1


def test_edit_instructions_name_the_edit():
    s = sample("recolor", 0)
    assert s.ground_truth["object"].split()[1] in s.instruction.lower()
    assert s.ground_truth["new_color"] in s.instruction
    s = sample("move", 1)
    assert s.ground_truth["place"] in s.instruction
    tgt = Scene.from_dict(s.ground_truth["target_scene"])
    moved = tgt.objects[s.ground_truth["edit"]["target_object"]]
    assert moved.place(64) == s.ground_truth["place"] and moved.name == s.ground_truth["object"]
    s = sample("add", 2)
    assert s.ground_truth["place"] in s.instruction
    assert len(Scene.from_dict(s.ground_truth["target_scene"]).objects) == \
        len(Scene.from_dict(s.ground_truth["scene"]).objects) + 1
    s = sample("resize", 3)
    assert ("bigger" in s.instruction or "smaller" in s.instruction or "nlarge" in s.instruction
            or "hrink" in s.instruction)


# ----------------------------------------------------------------------------- restore, control, grounding


def test_restore_targets_are_the_clean_scene():
    for task in FAMILIES["restore"]:
        for i in range(4):
            s = sample(task, i)
            scene = Scene.from_dict(s.ground_truth.get("target_scene", s.ground_truth["scene"]))
            assert np.array_equal(np.asarray(s.target), scene.render().image)
            assert not np.array_equal(np.asarray(s.source), np.asarray(s.target)), (task, i)
            if task == "remove_object":
                assert s.auxiliary_prompt == ""  # PromptFix: object removal has no auxiliary prompt
            else:
                flaw = s.auxiliary_prompt.split(". The image shows a")[0] + "."
                assert flaw == FLAWS[task] or task == "super_resolve", (flaw, task)
                assert ". The image shows a" in s.auxiliary_prompt  # defect first, then the caption
    s = sample("colorize", 0)
    src = np.asarray(s.source)
    assert np.array_equal(src[..., 0], src[..., 1]) and np.array_equal(src[..., 1], src[..., 2])
    s = sample("inpaint", 0)
    hole = arrays_from_ground_truth(s.ground_truth)["hole"]
    assert np.array_equal(np.asarray(s.mask) > 0, hole) and np.all(np.asarray(s.source)[hole] == 0)
    assert np.array_equal(np.asarray(s.source)[~hole], np.asarray(s.target)[~hole])
    s = sample("dehaze", 0)  # haze grows with depth: the background is hazier than the nearest object
    gt = arrays_from_ground_truth(s.ground_truth)
    diff = np.abs(np.asarray(s.source, float) - np.asarray(s.target, float)).sum(-1)
    near = gt["labels"] == len(Scene.from_dict(s.ground_truth["scene"]).objects) - 1
    assert diff[gt["labels"] == -1].mean() > diff[near].mean()


def test_control_maps():
    s = sample("depth_to_image", 0)
    r = Scene.from_dict(s.ground_truth["target_scene"]).render()
    assert np.array_equal(np.asarray(s.source), encode_depth(r.depth))
    assert np.array_equal(np.asarray(s.target), r.image)
    s = sample("seg_to_image", 0)
    scene = Scene.from_dict(s.ground_truth["target_scene"])
    r = scene.render()
    src = np.asarray(s.source)
    assert np.all(src[r.labels == -1] == 0)
    for k, o in enumerate(scene.objects):
        assert np.all(src[r.labels == k] == SEG_PALETTE[o.shape])
    s = sample("subject_driven", 0)
    subj = s.ground_truth["subject"]
    assert scene_scores(s.target, s.ground_truth)["subject_present"] == 1.0
    assert s.ground_truth["place"] in s.instruction
    assert subj["color"] not in s.instruction  # the subject is only shown, never named


def test_canny_control_uses_controlnet_aux():
    CannyDetector = pytest.importorskip("controlnet_aux").CannyDetector

    s = make_sample("canny_to_image", "val", 0)
    target = np.asarray(s.target)
    ref = CannyDetector()(target, low_threshold=100, high_threshold=200, detect_resolution=64,
                          image_resolution=64, output_type="np")
    assert np.array_equal(np.asarray(s.source), ref)
    assert set(np.unique(ref)) <= {0, 255} and ref.any()
    assert s.ground_truth["target_scene"]["background"]["colors"][0] in s.instruction


def test_mark_overlays_half_the_marker_colour():
    for i in range(10):
        s = sample("mark", i)
        m = s.arrays["mask"]
        src, tgt = np.asarray(s.source, float), np.asarray(s.target, float)
        want = np.rint((1 - MARK_OPACITY) * src[m] + MARK_OPACITY * np.array(MARKERS[s.ground_truth["marker"]]))
        assert np.array_equal(tgt[m], want) and np.array_equal(tgt[~m], src[~m])
        assert s.ground_truth["marker"] in s.instruction and s.ground_truth["query"]["label"] in s.instruction


def test_interleaved_targets_hold_both_references():
    for i in range(10):
        s = sample("combine", i)
        assert len(s.references) == 2
        names = s.ground_truth["objects"]
        tgt = Scene.from_dict(s.ground_truth["target_scene"])
        assert [o.name for o in tgt.objects] == names
        assert tgt.objects[0].place(64) in ("left", "top left", "bottom left")
        s = sample("put_on_background", i)
        ref2 = Scene.from_dict(s.ground_truth["reference_scenes"][1])
        assert ref2.objects == () and tgt.canvas == 64
        assert Scene.from_dict(s.ground_truth["target_scene"]).background == ref2.background


# ----------------------------------------------------------------------------- phrasings


@pytest.mark.parametrize("task", TASKS)
def test_phrasings(task):
    train, held = train_phrasings(task), heldout_phrasings(task)
    assert len(train) >= 6 and len(held) >= 3
    assert not set(train) & set(held)
    fields = {"obj": "red circle", "new": "small green star", "color": "green", "place": "top left",
              "adj": "bigger", "verb": "enlarge", "bg": "plain white", "caption": "a red circle",
              "marker": "blue", "label": "circle", "pos": "red", "neg": "green"}
    rng = random.Random(0)
    seen = {phrase(task, rng, False, **fields) for _ in range(200)}
    seen_held = {phrase(task, rng, True, **fields) for _ in range(200)}
    assert not seen & seen_held and len(seen) >= 6 and len(seen_held) >= 3
    assert not any(re.search(r"[{}]", t) for t in seen | seen_held)


def _words(templates) -> set[str]:
    return {w for t in templates for w in re.findall(r"[a-z']+", re.sub(r"\{[a-z]+\}", " ", t).lower())}


def test_paraphrases_use_no_word_only_the_heldout_phrasings_use():
    """phrasings.PARAPHRASES (training only) may add new verbs, but none that only a held-out phrasing has,
    so `--heldout-phrasings` stays a test of unseen wording."""
    from editkit.data.phrasings import CV_TASKS, HELDOUT, PARAPHRASES, TRAIN
    from editkit.tasks.templates import HELDOUT_PROMPTS, RP_PROMPTS

    seen = _words(t for pool in (*TRAIN.values(), *RP_PROMPTS.values()) for t in pool)
    heldout_only = _words(t for pool in (*HELDOUT.values(), *HELDOUT_PROMPTS.values()) for t in pool) - seen
    assert {"wipe", "backdrop", "hue", "switch", "rescale"} <= heldout_only
    for task, pool in PARAPHRASES.items():
        assert not _words(pool) & heldout_only, task
        assert not set(pool) & set(heldout_phrasings(task)), task
        assert len(set(pool) - set(train_phrasings(task))) >= 5, task
        assert len(pool) >= 6 and (task in CV_TASKS or task in TRAIN)


def test_heldout_generation_uses_heldout_phrasings():
    for task in ("recolor", "segment", "denoise", "combine"):
        held = {s.instruction for s in generate(task, 20, heldout=True)}
        train = {s.instruction for s in generate(task, 20)}
        templates = [t.split("{")[0][:12] for t in heldout_phrasings(task)]
        assert all(any(h.startswith(p[:8]) for p in templates) for h in held), task
        assert not held & train


# ----------------------------------------------------------------------------- bad input


def test_task_parsing():
    assert parse_tasks("cv,edit") == list(FAMILIES["cv"] + FAMILIES["edit"])
    assert parse_tasks("all") == list(TASKS)
    assert parse_tasks(["recolour", "Segmentation", "segment"]) == ["recolor", "segment"]
    assert parse_tasks("super-resolve") == ["super_resolve"]
    with pytest.raises(ValueError, match="tasks.*unknown task 'paint'.*expected"):
        parse_tasks("cv,paint")
    with pytest.raises(ValueError, match="tasks"):
        parse_tasks("")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"n": 0}, "`n`"),
        ({"n": -3}, "`n`"),
        ({"n": 5, "size": 16}, "`size`=16 is too small"),
        ({"n": 5, "size": 1024}, "`size`"),
        ({"n": 5, "split": "dev"}, "`split`"),
        ({"n": 5, "tasks": "cv,nope"}, "`tasks`"),
        ({"n": 5, "start": -1}, "`start`"),
    ],
)
def test_generate_rejects_bad_arguments_eagerly(kwargs, pattern):
    args = {"tasks": "cv", **kwargs}
    with pytest.raises(ValueError, match=pattern):
        generate(**args)  # raises before iteration


def test_other_sizes():
    for size in (48, 100, 128):
        for task in ("segment", "detect", "move", "dehaze", "combine"):
            s = make_sample(task, "val", 1, size)
            assert s.source.size == (size, size) and s.target.size == (size, size)
    s = make_sample("segment", "val", 2, 128)
    assert mask_iou(decode_mask(s.target), s.arrays["mask"]) == 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 10**8), size=st.sampled_from([48, 64, 96, 160]),
       split=st.sampled_from(["train", "val", "test"]))
def test_cv_ground_truth_is_exact_for_any_index_and_size(index, size, split):
    s = make_sample("segment", split, index, size)
    assert mask_iou(decode_mask(s.target), s.arrays["mask"]) == 1.0
    s = make_sample("depth", split, index, size)
    assert np.abs(decode_depth(s.target) - s.arrays["depth"]).max() <= 5 / 255 + 1e-6
    s = make_sample("detect", split, index, size)
    gt = np.asarray(s.ground_truth["boxes"], float)
    p = decode_boxes(s.target)
    assert len(p) == len(gt)
    assert box_metrics([p], [gt])["ap50"] == 1.0
    s = make_sample("classify", split, index, size)
    assert decode_class(s.target) == s.ground_truth["answer"]
