"""editkit.metrics: pixel, vision-task, edge and scene-reader metrics."""

import cv2
import numpy as np
import pytest
from PIL import Image

from editkit import metrics as M
from editkit.data import make_sample
from editkit.tasks import encode_boxes, encode_depth, encode_mask


def _img(value, size=32):
    return np.full((size, size, 3), value, np.uint8)


def test_psnr_known_values():
    a, b = _img(100), _img(110)
    assert M.psnr(a, b) == pytest.approx(20 * np.log10(255 / 10), abs=1e-6)
    assert M.psnr(a, a) == M.PSNR_CAP and M.psnr(a, a, cap=None) == float("inf")
    assert M.psnr(Image.fromarray(a), b) == pytest.approx(28.1308, abs=1e-3)
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    assert M.psnr(x, y) == pytest.approx(skm.peak_signal_noise_ratio(y, x, data_range=255))
    mask = np.zeros((32, 32), bool)
    mask[:8] = True
    c = b.copy()
    c[~mask] = 100  # differs only inside the mask
    loc = M.psnr_in_out(c, a, mask)
    assert loc["psnr_out"] == 100.0 and loc["psnr_in"] == pytest.approx(28.1308, abs=1e-3)
    assert np.isnan(M.psnr(a, b, np.zeros((32, 32), bool)))
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(a, _img(0, 16))
    with pytest.raises(ValueError, match="mask"):
        M.psnr(a, b, np.ones((4, 4), bool))


def test_ssim():
    pytest.importorskip("skimage")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert M.ssim(x, x) == pytest.approx(1.0)
    noisy = np.clip(x + rng.normal(0, 40, x.shape), 0, 255).astype(np.uint8)
    assert 0 < M.ssim(noisy, x) < 0.9
    assert M.ssim(_img(5, 5), _img(5, 5)) == pytest.approx(1.0)  # small images use a smaller window


def test_mask_iou_and_miou():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    assert M.mask_iou(a, b) == pytest.approx(25 / 75)
    assert M.mask_iou(a, a) == 1.0 and M.mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert M.mean_iou([a, a], [a, b]) == pytest.approx((1 + 1 / 3) / 2)
    assert M.segmentation_miou([encode_mask(a), encode_mask(b)], [a, b]) == 1.0
    with pytest.raises(ValueError):
        M.mean_iou([], [])


def test_box_metrics():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[5, 5, 15, 15]])]
    assert M.box_metrics(gt, gt) == {"precision": 1.0, "recall": 1.0, "ap50": 1.0}
    # one image misses a box: recall 2/3, AP50 2/3 (101-point interpolation)
    m = M.box_metrics([gt[0][:1], gt[1]], gt)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3)
    assert m["ap50"] == pytest.approx(67 / 101)
    # a false positive: precision 3/4
    fp = [np.vstack([gt[0], [[40, 40, 50, 50]]]), gt[1]]
    assert M.box_metrics(fp, gt)["precision"] == pytest.approx(0.75)
    # a shifted box with IoU < 0.5 is not a match; with scores, AP ranks the confident box first
    shifted = [np.array([[0, 0, 10, 10], [26, 26, 36, 36]]), gt[1]]
    assert M.box_metrics(shifted, gt)["recall"] == pytest.approx(2 / 3)
    scored = M.box_metrics([np.array([[40, 40, 50, 50], [0, 0, 10, 10]])], [gt[0][:1]], scores=[[0.1, 0.9]])
    assert scored["ap50"] == 1.0 and scored["precision"] == 0.5
    assert M.box_metrics([np.zeros((0, 4))], [np.zeros((0, 4))])["ap50"] == 1.0
    # decoded from drawn targets
    image = _img(200, 64)
    assert M.detection_metrics([encode_boxes(image, gt[0])], [gt[0]])["ap50"] == 1.0
    with pytest.raises(ValueError, match="images"):
        M.box_metrics(gt, gt[:1])


def test_depth_metrics():
    gt = np.full((8, 8), 2.0)
    m = M.depth_metrics(gt * 1.1, gt)
    assert m["rmse"] == pytest.approx(0.2) and m["absrel"] == pytest.approx(0.1) and m["delta1"] == 1.0
    m = M.depth_metrics(gt * 1.3, gt)
    assert m["delta1"] == 0.0 and m["delta2"] == 1.0
    pred = gt.copy()
    pred[0] = 0.0  # zero-depth pixels are excluded (InstructCV protocol)
    assert M.depth_metrics(pred, gt)["rmse"] == 0.0
    d = np.linspace(1, 10, 64).reshape(8, 8)
    assert M.decoded_depth_metrics(encode_depth(d), d)["rmse"] < 10 / 255
    with pytest.raises(ValueError, match="valid"):
        M.depth_metrics(np.zeros((2, 2)), np.zeros((2, 2)))


def test_classification_accuracy():
    assert M.classification_accuracy(["red", "green", "red"], ["red", "red", "red"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.classification_accuracy([], [])


def _canny(img):
    return cv2.Canny(img, 100, 200)


def test_edge_f1():
    img = _img(30, 64)
    cv2.rectangle(img, (10, 10), (40, 40), (240, 240, 240), -1)
    edges = _canny(img)
    assert M.edge_f1(img, edges, edge_fn=_canny)["f1"] == 1.0
    shifted = np.roll(img, 1, axis=1)
    assert M.edge_f1(shifted, edges, tolerance=1, edge_fn=_canny)["f1"] == 1.0
    assert M.edge_f1(shifted, edges, tolerance=0, edge_fn=_canny)["f1"] < 0.8
    blank = _img(30, 64)
    r = M.edge_f1(blank, edges, edge_fn=_canny)
    assert r["recall"] == 0.0 and r["f1"] == 0.0
    assert M.edge_f1(blank, np.zeros((64, 64), np.uint8), edge_fn=_canny)["f1"] == 1.0
    assert M.edge_f1(img, np.stack([edges] * 3, -1) > 0, edge_fn=_canny)["f1"] == 1.0
    with pytest.raises(ValueError, match="control_edges"):
        M.edge_f1(img, np.zeros((8, 8)), edge_fn=_canny)


def test_scene_scores_judge_edits():
    s = make_sample("recolor", "test", 0)
    assert M.scene_scores(s.target, s.ground_truth) == {
        "edit_success": 1.0, "presence": 1.0, "color_accuracy": 1.0, "background": 1.0}
    bad = M.scene_scores(s.source, s.ground_truth)  # the unedited image: wrong colour
    assert bad["edit_success"] == 0.0 and bad["color_accuracy"] < 1.0
    s = make_sample("change_background", "test", 1)
    bad = M.scene_scores(s.source, s.ground_truth)
    assert bad["edit_success"] == 0.0 and bad["background"] < 0.9 and bad["presence"] == 1.0
    s = make_sample("combine", "test", 2)
    assert M.objects_present(s.target, s.ground_truth["objects"]) == 1.0
    assert M.objects_present(s.references[0], s.ground_truth["objects"]) == 0.5
    s = make_sample("subject_driven", "test", 3)
    subj = s.ground_truth["subject"]
    assert M.subject_present(s.target, subj["color"], subj["shape"])
    acc = M.scene_accuracies([s.target, s.source], [s.ground_truth, s.ground_truth])
    assert acc["edit_accuracy"] == 0.5 and acc["subject_present"] == 1.0
    with pytest.raises(ValueError, match="target_scene"):
        M.scene_scores(s.target, {"scene": s.ground_truth["scene"]})


def test_scene_scores_tolerate_light_noise():
    rng = np.random.default_rng(0)
    ok = []
    for i in range(10):
        s = make_sample("move", "test", i)
        noisy = np.clip(np.asarray(s.target) + rng.normal(0, 6, (64, 64, 3)), 0, 255).astype(np.uint8)
        ok.append(M.scene_scores(noisy, s.ground_truth)["edit_success"])
    assert np.mean(ok) >= 0.9
