"""Bootstrap over videos: intervals from one matching pass equal re-running the evaluator
on each resampled ground truth; a perfect detector is certain; a run equals itself."""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_eval_case as make_case

from lvod.evaluation import bootstrap as bs
from lvod.evaluation import evaluate
from lvod.evaluation.results import Detections


def resampled(gt, dets, counts):
    """The ground truth and detections written out for one resample: video ``v`` (dense
    index) appears ``counts[v]`` times, its copies next to each other (image id
    ``id * 100 + copy``), with new video, annotation and instance ids."""
    img_of_video = {}
    for row, v in enumerate(gt.img_video_ids):
        img_of_video.setdefault(int(v), []).append(row)
    videos = sorted(img_of_video)
    img_ids, img_video, img_frame, new_row = [], [], [], {}
    anns = {k: [] for k in ("rows", "cats", "boxes", "inst")}
    ann_of_img = {}
    for a, r in enumerate(gt.ann_image_idx):
        ann_of_img.setdefault(int(r), []).append(a)
    det_of_img = {}
    for d, i in enumerate(dets.image_id):
        det_of_img.setdefault(int(i), []).append(d)
    di, dc, db, ds = [], [], [], []
    for vi, v in enumerate(videos):
        for c in range(int(counts[vi])):
            for r in img_of_video[v]:
                new_id = int(gt.img_ids[r]) * 100 + c
                new_row[(r, c)] = len(img_ids)
                img_ids.append(new_id)
                img_video.append(v * 100 + c)
                img_frame.append(int(gt.img_frame_ids[r]))
                for a in ann_of_img.get(r, []):
                    anns["rows"].append(new_row[(r, c)])
                    anns["cats"].append(int(gt.ann_cat_ids[a]))
                    anns["boxes"].append(gt.ann_boxes[a])
                    anns["inst"].append(int(gt.ann_instance_ids[a]) * 100 + c)
                for d in det_of_img.get(int(gt.img_ids[r]), []):
                    di.append(new_id)
                    dc.append(int(dets.category_id[d]))
                    db.append(dets.bbox[d])
                    ds.append(dets.score[d])
    boxes = np.array(anns["boxes"], np.float64).reshape(-1, 4)
    order = np.argsort(np.array(img_ids), kind="stable")  # file order: ascending image id
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    g = SimpleNamespace(
        img_ids=np.array(img_ids, np.int64)[order],
        img_video_ids=np.array(img_video, np.int64)[order],
        img_frame_ids=np.array(img_frame, np.int64)[order],
        cat_ids=gt.cat_ids,
        cat_names=gt.cat_names,
        ann_image_idx=rank[np.array(anns["rows"], np.int64)],
        ann_cat_ids=np.array(anns["cats"], np.int64),
        ann_boxes=boxes,
        ann_area=boxes[:, 2] * boxes[:, 3],
        ann_iscrowd=np.zeros(len(boxes), bool),
        ann_ids=np.arange(1, len(boxes) + 1, dtype=np.int64),
        ann_instance_ids=np.array(anns["inst"], np.int64),
    )
    d = Detections(
        image_id=np.array(di, np.int64),
        category_id=np.array(dc, np.int64),
        bbox=np.array(db, np.float32).reshape(-1, 4),
        score=np.array(ds, np.float32),
    )
    return g, d


@pytest.mark.parametrize("protocol", ["coco", "ilsvrc"])
def test_resamples_equal_the_evaluator_on_the_resampled_ground_truth(protocol):
    gt, dets = make_case()
    n, seed = 24, 3
    m = evaluate(gt, dets, protocol=protocol, bootstrap=n, seed=seed, keep_samples=True)
    samples = m["bootstrap"]["samples"]
    weights = bs.video_weights(len(np.unique(gt.img_video_ids)), n, seed)
    for b in range(n):
        g, d = resampled(gt, dets, weights[b])
        ref = evaluate(g, d, protocol=protocol)
        assert samples["bbox_mAP_50"][b] == pytest.approx(ref["bbox_mAP_50"], abs=1e-9)
        per_class = [np.nan if c["ap50"] is None else c["ap50"] for c in ref["classwise"]]
        np.testing.assert_allclose(samples["ap50_per_class"][b], per_class, atol=1e-9, equal_nan=True)
        if protocol == "coco":
            assert samples["bbox_mAP"][b] == pytest.approx(ref["bbox_mAP"], abs=1e-9)
            for bucket, value in ref["motion"].items():
                ref_value = np.nan if value is None else value
                np.testing.assert_allclose(samples["motion"][bucket][b], ref_value, atol=1e-9, equal_nan=True)


def test_perfect_detector_interval_is_one_one():
    gt, _ = make_case(seed=1)
    perfect = Detections(
        image_id=gt.img_ids[gt.ann_image_idx],
        category_id=gt.ann_cat_ids,
        bbox=gt.ann_boxes.astype(np.float32),
        score=np.linspace(1, 0.5, len(gt.ann_ids), dtype=np.float32),
    )
    m = evaluate(gt, perfect, bootstrap=200, seed=0)
    assert m["bbox_mAP_50"] == 1.0 and m["bbox_mAP_50_ci"] == [1.0, 1.0] and m["bbox_mAP_ci"] == [1.0, 1.0]
    assert all(c["ap50_ci"] == [1.0, 1.0] for c in m["classwise"] if c["num_gt"])


def test_intervals_are_reproducible_with_a_seed_and_contain_the_estimate():
    gt, dets = make_case(seed=2)
    a = evaluate(gt, dets, bootstrap=300, seed=7)
    b = evaluate(gt, dets, bootstrap=300, seed=7)
    c = evaluate(gt, dets, bootstrap=300, seed=8)
    assert a["bbox_mAP_50_ci"] == b["bbox_mAP_50_ci"] and a["classwise"] == b["classwise"]
    assert a["bbox_mAP_50_ci"] != c["bbox_mAP_50_ci"]
    lo, hi = a["bbox_mAP_50_ci"]
    assert lo < a["bbox_mAP_50"] < hi and hi - lo > 0.01
    assert a["bootstrap"]["resamples"] == 300 and a["bootstrap"]["unit"] == "video"


def test_interval_helpers():
    assert bs.interval(np.array([np.nan, np.nan])) is None
    assert bs.interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    w = bs.video_weights(7, 50, 0)
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all()
    assert bs.default_resamples(5_000) == 1000 and bs.default_resamples(176_126) == 200
