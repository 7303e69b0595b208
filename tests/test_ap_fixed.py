"""AP-fixed (Dave et al. 2021): no per-image cap, at most N detections per class over the
set; checked against a brute-force per-class computation."""

import numpy as np
import pytest
from conftest import make_eval_case

from lvod.evaluation import evaluate
from lvod.evaluation.caps import top_per_class, top_per_image
from lvod.evaluation.coco import REC_THRS
from lvod.evaluation.results import Detections


def iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def brute_force_ap(gt, dets, cat, thr, cap):
    """COCO 101-point AP of one class at one IoU threshold, keeping the ``cap`` best
    detections of the class over the whole set and no per-image limit; plain loops."""
    rows = [i for i in range(len(dets)) if dets.category_id[i] == cat]
    rows = sorted(rows, key=lambda i: (-float(dets.score[i]), i))[:cap]
    gts = {}
    for a in range(len(gt.ann_ids)):
        if gt.ann_cat_ids[a] == cat:
            gts.setdefault(int(gt.img_ids[gt.ann_image_idx[a]]), []).append(gt.ann_boxes[a])
    n_gt = sum(len(v) for v in gts.values())
    if n_gt == 0:
        return None
    taken = {img: [False] * len(v) for img, v in gts.items()}
    flags = []  # (score, image id, file row, tp)
    for i in sorted(rows, key=lambda i: (-float(dets.score[i]), i)):
        img = int(dets.image_id[i])
        best, best_iou = -1, min(thr, 1 - 1e-10)
        for j, g in enumerate(gts.get(img, [])):
            v = iou(dets.bbox[i].astype(np.float64), g)
            if not taken[img][j] and v >= best_iou:
                best, best_iou = j, v
        if best >= 0:
            taken[img][best] = True
        flags.append((-float(dets.score[i]), img, i, best >= 0))
    flags.sort()  # score desc, then image id, then file order (COCOeval's accumulation order)
    tp = np.cumsum([f[3] for f in flags], dtype=float)
    fp = np.cumsum([not f[3] for f in flags], dtype=float)
    if len(flags) == 0:
        return 0.0
    rc, pr = tp / n_gt, tp / (tp + fp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    idx = np.searchsorted(rc, REC_THRS, side="left")
    return float(np.sum(pr[idx[idx < len(pr)]]) / len(REC_THRS))


def crowded_case():
    """``make_case`` plus one image with 150 detections of one class (beyond COCO's 100)."""
    gt, dets = make_eval_case(seed=4, num_fp=400)
    rng = np.random.default_rng(5)
    img = int(gt.img_ids[0])
    a = int(np.flatnonzero(gt.ann_image_idx == 0)[0])
    cat = int(gt.ann_cat_ids[a])
    extra_boxes = gt.ann_boxes[a] + rng.normal(0, 4, (150, 4))
    extra = Detections(
        np.full(150, img), np.full(150, cat), extra_boxes.astype(np.float32), rng.random(150).astype(np.float32)
    )
    both = Detections(
        np.r_[dets.image_id, extra.image_id],
        np.r_[dets.category_id, extra.category_id],
        np.r_[dets.bbox, extra.bbox],
        np.r_[dets.score, extra.score],
    )
    both.bbox[:, 2:] = np.maximum(both.bbox[:, 2:], 1.0)  # no negative areas (COCO ignores those)
    return gt, both


@pytest.mark.parametrize("cap", [40, 10_000])
def test_ap_fixed_equals_brute_force(cap):
    gt, dets = crowded_case()
    m = evaluate(gt, dets, ap_fixed=cap, motion=False)
    fixed = m["ap_fixed"]
    assert fixed["per_class_cap"] == cap
    thrs = np.linspace(0.5, 0.95, 10)
    aps = []
    for row in fixed["classwise"]:
        per_t = [brute_force_ap(gt, dets, row["category_id"], t, cap) for t in thrs]
        if per_t[0] is None:
            assert row["ap50"] is None
            continue
        assert row["ap50"] == pytest.approx(per_t[0], abs=1e-12)
        assert row["ap"] == pytest.approx(np.mean(per_t), abs=1e-12)
        aps.append(np.mean(per_t))
    assert fixed["AP"] == pytest.approx(np.mean(aps), abs=1e-12)


def test_ap_fixed_lifts_the_per_image_cap():
    gt, dets = crowded_case()
    m = evaluate(gt, dets, ap_fixed=True, motion=False)
    # 150 + detections in one image of one class: the standard protocol keeps 100 of them
    assert m["ap_fixed"]["AP50"] != m["bbox_mAP_50"]


def test_caps_keep_the_highest_scores_in_file_order():
    d = Detections([1, 1, 2, 2, 2], [1, 2, 1, 1, 2], np.zeros((5, 4)), [0.5, 0.9, 0.7, 0.5, 0.1])
    kept = top_per_class(d, 2)
    assert kept.score.tolist() == [0.5, 0.9, 0.7, 0.1]  # class 1: 0.7 and the first 0.5
    assert top_per_image(d, 1).score.tolist() == [0.9, 0.7]
