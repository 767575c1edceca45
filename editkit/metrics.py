"""Metrics for instruction-driven editing, with the shapes benchmark in mind.

Pixel metrics
    `psnr`, `ssim` (scikit-image's structural_similarity), `psnr_in_out` (PSNR inside / outside an edit
    region: edit locality).
Vision-task metrics (InstructCV encodings, decoded with `editkit.tasks`)
    `mask_iou` / `mean_iou` / `segmentation_miou`; `box_metrics` (precision,
    recall, AP50 from decoded boxes); `depth_metrics` (RMSE, AbsRel,
    delta<1.25^k); `classification_accuracy`; `edge_f1` (an output's Canny edges
    against a control edge map, with a pixel tolerance).
Semantic metrics (the shapes scene reader, `editkit.data.reader`)
    `scene_scores(output, ground_truth)`: was the edit right (`edit_success`:
    the output holds exactly the target's objects, by colour, shape, place and
    size class, plus the background where the task changes it), what fraction
    of the wanted objects is present (`presence`), and of those found by shape
    and place, what fraction has the right colour (`color_accuracy`);
    `subject_present` / `objects_present` for subject-driven and interleaved
    tasks. `scene_accuracies` averages them over many outputs.

Images may be PIL images or HxWx3 uint8 arrays. Conventions: PSNR of identical
images is capped at `PSNR_CAP` (100 dB) so averages stay finite; an empty
ground-truth mask scored against an empty prediction has IoU 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

PSNR_CAP = 100.0


def as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3); got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0 + 1e-6:
            arr = np.rint(np.clip(arr, 0, 1) * 255)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_rgb(pred), as_rgb(target)
    if p.shape != t.shape:
        raise ValueError(f"`pred` {p.shape} and `target` {t.shape} must have the same shape.")
    return p, t


# --------------------------------------------------------------------------- pixel metrics


def _psnr_from_mse(mse: float, cap: float | None) -> float:
    if mse <= 0:
        return float("inf") if cap is None else float(cap)
    v = 10.0 * np.log10(255.0**2 / mse)
    return float(v if cap is None else min(v, cap))


def psnr(pred, target, mask: np.ndarray | None = None, cap: float | None = PSNR_CAP) -> float:
    """PSNR in dB (data range 255), over the whole image or the pixels where `mask` is True.

    NaN when the mask is empty.
    """
    p, t = _pair(pred, target)
    if mask is None:
        d = p.astype(np.float64) - t.astype(np.float64)
        return _psnr_from_mse(float(np.mean(d * d)), cap)
    m = np.asarray(mask, dtype=bool)
    if m.shape != p.shape[:2]:
        raise ValueError(f"`mask` {m.shape} must match the image size {p.shape[:2]}.")
    if not m.any():
        return float("nan")
    d = p[m].astype(np.float64) - t[m].astype(np.float64)
    return _psnr_from_mse(float(np.mean(d * d)), cap)


def psnr_in_out(pred, target, region: np.ndarray, cap: float | None = PSNR_CAP) -> dict[str, float]:
    """Edit locality: PSNR inside the edited region and outside it (NaN where a part is empty)."""
    m = np.asarray(region, dtype=bool)
    return {"psnr_in": psnr(pred, target, m, cap), "psnr_out": psnr(pred, target, ~m, cap)}


def ssim(pred, target) -> float:
    """Mean SSIM over RGB (scikit-image, uniform 7x7 window; 5x5 or 3x3 for images under 14 px)."""
    from skimage.metrics import structural_similarity

    p, t = _pair(pred, target)
    win = min(7, min(p.shape[:2]) // 2 * 2 - 1)
    if win < 3:
        raise ValueError(f"images of size {p.shape[:2]} are too small for SSIM (need at least 3x3).")
    return float(structural_similarity(t, p, data_range=255, channel_axis=-1, win_size=win))


# --------------------------------------------------------------------------- segmentation


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"`pred` {p.shape} and `gt` {g.shape} masks must have the same shape.")
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else float(np.count_nonzero(p & g)) / union


def mean_iou(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> float:
    """Mean over queries of the per-query mask IoU (InstructCV's referring-style mIoU)."""
    vals = [mask_iou(p, g) for p, g in zip(preds, gts, strict=True)]
    if not vals:
        raise ValueError("`preds` and `gts` are empty; expected at least one mask pair.")
    return float(np.mean(vals))


def segmentation_miou(outputs: Iterable, gt_masks: Iterable[np.ndarray], threshold: int | None = None) -> float:
    """Decode predicted segmentation images (white on black) and score them against masks."""
    from editkit.tasks.segmentation import EVAL_THRESHOLD, decode_mask

    th = EVAL_THRESHOLD if threshold is None else threshold
    return mean_iou((decode_mask(as_rgb(o), th) for o in outputs), gt_masks)


# --------------------------------------------------------------------------- detection


def box_metrics(pred_boxes: Sequence, gt_boxes: Sequence, iou_threshold: float = 0.5,
                scores: Sequence | None = None) -> dict[str, float]:
    """Precision, recall and AP at one IoU threshold over a set of images.

    `pred_boxes[i]` / `gt_boxes[i]`: (N, 4) [x1, y1, x2, y2] boxes of image i
    (x2/y2 exclusive). Predictions are matched greedily, highest score first
    (decoded boxes have no score: all count as 1, in decoder order), each to
    the unmatched ground-truth box of highest IoU >= `iou_threshold`. AP is the
    101-point interpolated area under the precision-recall curve (COCO style).
    """
    from editkit.tasks.detection import box_iou

    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"`pred_boxes` has {len(pred_boxes)} images but `gt_boxes` has {len(gt_boxes)}.")
    records: list[tuple[float, int, bool]] = []  # (score, order, is_tp)
    n_gt = 0
    order = 0
    for i, (pb, gb) in enumerate(zip(pred_boxes, gt_boxes)):
        pb = np.asarray(pb, dtype=np.float64).reshape(-1, 4)
        gb = np.asarray(gb, dtype=np.float64).reshape(-1, 4)
        sc = np.ones(len(pb)) if scores is None else np.asarray(scores[i], dtype=np.float64).reshape(-1)
        n_gt += len(gb)
        taken = np.zeros(len(gb), dtype=bool)
        ious = box_iou(pb, gb) if len(pb) and len(gb) else np.zeros((len(pb), len(gb)))
        for j in np.argsort(-sc, kind="stable"):
            tp = False
            if len(gb):
                cand = np.where(taken, -1.0, ious[j])
                k = int(cand.argmax())
                if cand[k] >= iou_threshold:
                    taken[k] = True
                    tp = True
            records.append((float(sc[j]), order, tp))
            order += 1
    n_pred = len(records)
    n_tp = sum(r[2] for r in records)
    precision = n_tp / n_pred if n_pred else (1.0 if n_gt == 0 else 0.0)
    recall = n_tp / n_gt if n_gt else 1.0
    if n_gt == 0:
        ap = 1.0 if n_pred == 0 else 0.0
    elif n_pred == 0:
        ap = 0.0
    else:
        records.sort(key=lambda r: (-r[0], r[1]))
        tp = np.cumsum([r[2] for r in records], dtype=np.float64)
        fp = np.cumsum([not r[2] for r in records], dtype=np.float64)
        rec = tp / n_gt
        prec = tp / np.maximum(tp + fp, 1e-12)
        prec = np.maximum.accumulate(prec[::-1])[::-1]  # precision envelope
        levels = np.linspace(0, 1, 101)
        idx = np.searchsorted(rec, levels, side="left")
        ap = float(np.mean([prec[k] if k < len(prec) else 0.0 for k in idx]))
    return {"precision": float(precision), "recall": float(recall), "ap50" if iou_threshold == 0.5 else "ap": ap}


def detection_metrics(outputs: Iterable, gt_boxes: Sequence) -> dict[str, float]:
    """Decode blue boxes from predicted images (`editkit.tasks.decode_boxes`) and score them."""
    from editkit.tasks.detection import decode_boxes

    return box_metrics([decode_boxes(as_rgb(o)) for o in outputs], gt_boxes)


# --------------------------------------------------------------------------- depth


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """RMSE (m), AbsRel and delta < 1.25, 1.25^2, 1.25^3 over pixels where both depths are > 0
    (InstructCV's protocol) and `valid` is True."""
    p = np.asarray(pred_m, dtype=np.float64)
    g = np.asarray(gt_m, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"`pred_m` {p.shape} and `gt_m` {g.shape} must have the same shape.")
    m = (p > 0) & (g > 0) & np.isfinite(p) & np.isfinite(g)
    if valid is not None:
        m &= np.asarray(valid, dtype=bool)
    if not m.any():
        raise ValueError("no valid pixels: both depths must be > 0 somewhere (inside `valid`).")
    p, g = p[m], g[m]
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
        "absrel": float(np.mean(np.abs(p - g) / g)),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def decoded_depth_metrics(output, gt_m: np.ndarray) -> dict[str, float]:
    """Decode a predicted grey depth image (0-10 m) and score it."""
    from editkit.tasks.depth import decode_depth

    return depth_metrics(decode_depth(as_rgb(output)), gt_m)


# --------------------------------------------------------------------------- classification


def classification_accuracy(preds: Sequence, labels: Sequence) -> float:
    """Fraction of predictions equal to their labels."""
    if len(preds) != len(labels):
        raise ValueError(f"`preds` has {len(preds)} items but `labels` has {len(labels)}.")
    if not len(preds):
        raise ValueError("`preds` is empty; expected at least one prediction.")
    return float(np.mean([p == l for p, l in zip(preds, labels)]))


# --------------------------------------------------------------------------- edges


def edge_f1(output, control_edges, tolerance: int = 1,
            edge_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """F1 between the edges of `output` and a control edge map, counting matches within `tolerance` px.

    `control_edges`: an edge image (white edges on black, any channel count) or
    boolean map. The output's edges come from `edge_fn` (default: the
    controlnet-aux CannyDetector used to make the benchmark's control maps).
    Empty vs empty scores 1.
    """
    import cv2

    if edge_fn is None:
        from editkit.data.families import canny_edges as edge_fn
    out_e = np.asarray(edge_fn(as_rgb(output)))
    out_e = (out_e.max(axis=2) if out_e.ndim == 3 else out_e) > 127
    ce = np.asarray(control_edges.convert("L") if isinstance(control_edges, Image.Image) else control_edges)
    ce = (ce.max(axis=2) if ce.ndim == 3 else ce)
    ce = ce.astype(bool) if ce.dtype == bool else ce > 127
    if ce.shape != out_e.shape:
        raise ValueError(f"`control_edges` {ce.shape} must match the output size {out_e.shape}.")
    k = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_c = cv2.dilate(ce.astype(np.uint8), k) > 0
    near_o = cv2.dilate(out_e.astype(np.uint8), k) > 0
    n_o, n_c = int(out_e.sum()), int(ce.sum())
    precision = float((out_e & near_c).sum()) / n_o if n_o else (1.0 if n_c == 0 else 0.0)
    recall = float((ce & near_o).sum()) / n_c if n_c else (1.0 if n_o == 0 else 0.0)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


# --------------------------------------------------------------------------- semantic (scene reader)

BACKGROUND_TOLERANCE = 28.0  # RGB distance for a background pixel to count as right (half the closest pair of background colours)
BACKGROUND_MIN_FRACTION = 0.9


def background_match(output, target_scene, detections=None) -> float:
    """Fraction of the target's background pixels (outside any detected object) whose colour is
    within BACKGROUND_TOLERANCE of the target background there (pattern and colours both count)."""
    from editkit.data.reader import read_scene

    img = as_rgb(output)
    r = target_scene.render()
    if img.shape != r.image.shape:
        raise ValueError(f"output {img.shape} must have the target's size {r.image.shape} to compare backgrounds.")
    if detections is None:
        detections = read_scene(img)
    bg = r.labels == -1
    for d in detections:
        bg &= ~d.mask
    if not bg.any():
        return 1.0
    want = target_scene.background.render(target_scene.canvas)
    dist = np.linalg.norm(img[bg].astype(np.float32) - want[bg].astype(np.float32), axis=1)
    return float(np.mean(dist <= BACKGROUND_TOLERANCE))


def scene_scores(output, ground_truth: dict[str, Any]) -> dict[str, float]:
    """Reader-based scores of one output against a sample's ground truth.

    Needs `ground_truth["target_scene"]` (edit, control, interleaved and
    object-removal tasks). Returns `edit_success` (1.0/0.0: the objects match
    the target by colour, shape, place and size class, and `background` >= 0.9),
    `presence`, `color_accuracy`, `background` (see `background_match`), and
    `subject_present` for subject-driven samples.
    """
    from editkit.data.reader import KEYS_ALL, compare, read_scene
    from editkit.data.scene import Scene

    if "target_scene" not in ground_truth:
        raise ValueError("`ground_truth` has no 'target_scene'; scene scores apply to tasks that produce a scene.")
    target = Scene.from_dict(ground_truth["target_scene"])
    img = as_rgb(output)
    colors = [o.color for o in target.objects]
    split = len(set(colors)) < len(colors)  # same-coloured objects (style transfer)
    dets = read_scene(img, split_components=split)
    if split:
        # Same-coloured objects may touch and merge; judge colour and background only.
        ink = set(colors)
        found = {d.color for d in dets}
        match = compare(dets, target, keys=("color", "shape"))
        ok = found == ink
        presence = match.presence
        color_acc = float(np.mean([d.color in ink for d in dets])) if dets else 0.0
    else:
        match = compare(dets, target, keys=KEYS_ALL)
        ok = match.exact
        presence = match.presence
        color_acc = compare(dets, target, keys=("color", "shape", "place")).color_accuracy
    bg = background_match(img, target, dets)
    ok = ok and bg >= BACKGROUND_MIN_FRACTION
    out = {"edit_success": float(ok), "presence": float(presence), "color_accuracy": float(color_acc),
           "background": bg}
    if "subject" in ground_truth:
        s = ground_truth["subject"]
        out["subject_present"] = float(any(d.color == s["color"] and d.shape == s["shape"] for d in dets))
    return out


def subject_present(output, color: str, shape: str) -> bool:
    """Is an object of this colour and shape in the output?"""
    from editkit.data.reader import read_scene

    return any(d.color == color and d.shape == shape for d in read_scene(as_rgb(output)))


def objects_present(output, names: Sequence[str]) -> float:
    """Fraction of objects ("red circle", ...) found in the output with the right colour and shape."""
    from editkit.data.reader import read_scene

    found = {d.name for d in read_scene(as_rgb(output))}
    if not names:
        raise ValueError("`names` is empty; expected at least one object name.")
    return float(np.mean([n in found for n in names]))


def scene_accuracies(outputs: Iterable, ground_truths: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean of `scene_scores` over outputs: edit, presence and colour accuracies (and subject presence)."""
    rows = [scene_scores(o, g) for o, g in zip(outputs, ground_truths, strict=True)]
    if not rows:
        raise ValueError("`outputs` is empty; expected at least one output.")
    keys = sorted({k for r in rows for k in r})
    res = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        res[{"edit_success": "edit_accuracy", "presence": "presence_accuracy"}.get(k, k)] = float(np.mean(vals))
    return res
