"""lvod's COCO AP against pycocotools: the official oracle, generated video data, edge cases.

Budget: about 15 s (pycocotools on ~2,000 generated frames dominates).
"""

import contextlib
import io
import json

import numpy as np
import pytest

from lvod.data.cocovid import load_cocovid
from lvod.evaluation import Detections, evaluate, write_coco_json
from lvod.evaluation.results import read_coco_json
from lvod.evaluation.synth import synthetic_cocovid, synthetic_detections

TOL = 1e-9


def _pycoco(gt_path, dt_path):
    """pycocotools stats and per-class (AP, AP50) dict, or None for classes without GT."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(gt_path))
        cd = cg.loadRes(str(dt_path))
        e = COCOeval(cg, cd, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    prec = e.eval["precision"][:, :, :, 0, -1]
    per = {}
    for k, cid in enumerate(e.params.catIds):
        p = prec[:, :, k]
        per[cid] = (p[p > -1].mean(), prec[0, :, k][prec[0, :, k] > -1].mean()) if (p > -1).any() else None
    return e.stats, per


def _check_against_pycoco(m, stats, per):
    assert abs(m["bbox_mAP"] - stats[0]) <= TOL
    assert abs(m["bbox_mAP_50"] - stats[1]) <= TOL
    for c in m["classwise"]:
        ref = per[c["category_id"]]
        if ref is None:
            assert c["ap"] is None and c["ap50"] is None and c["num_gt"] == 0
        else:
            assert abs(c["ap"] - ref[0]) <= TOL and abs(c["ap50"] - ref[1]) <= TOL, c


def test_official_fake_results_reproduce_expected_values(external_data):
    root = external_data / "coco-eval"
    exp = json.loads((root / "expected_values_computed_with_pycocotools-2.0.11.json").read_text())["fake100_bbox"]
    data = root / "MiXaiLL76_faster_coco_eval" / "tests" / "dataset" / "cocoapi"
    gt = load_cocovid(data / "instances_val2014_100.json")
    m = evaluate(gt, read_coco_json(data / "instances_val2014_fakebbox100_results.json"))
    assert abs(m["bbox_mAP"] - exp["stats"][0]) <= TOL
    assert abs(m["bbox_mAP_50"] - exp["stats"][1]) <= TOL
    by_id = {c["category_id"]: c for c in m["classwise"]}
    checked = 0
    for cid, ref in exp["per_category"].items():
        c = by_id[int(cid)]
        if ref["AP"] == -1 or ref["AP"] is None:
            assert c["ap"] is None
            continue
        assert abs(c["ap"] - ref["AP"]) <= TOL and abs(c["ap50"] - ref["AP50"]) <= TOL, (cid, c, ref)
        checked += 1
    assert checked == 70
    assert sum(c["ap"] is None for c in m["classwise"]) == 10


@pytest.mark.parametrize(
    "case",
    [
        # (videos, frames, classes, dets per frame, seed, chunk): ~2,000 frames, ties, small chunks
        (25, 80, 12, 20, 1, 3_000),
        # few classes, 250 detections per frame: more than maxDets=100 per (image, class)
        (4, 6, 3, 250, 5, 1_000_000),
    ],
)
def test_generated_video_data_matches_pycocotools_exactly(tmp_path, case):
    videos, frames, cats, per_frame, seed, chunk = case
    gtd = synthetic_cocovid(
        num_videos=videos,
        frames=frames,
        num_cats=cats,
        cats_unused=2 if cats > 3 else 1,
        seed=seed,
        crowd_frac=0.15,
        empty_frac=0.05,
    )
    assert gtd["annotations"][0]["id"] == 0  # pycocotools' id-0 quirk is exercised
    (tmp_path / "gt.json").write_text(json.dumps(gtd))
    gt = load_cocovid(tmp_path / "gt.json")
    assert gt.ann_iscrowd.any() and (np.bincount(gt.ann_image_idx, minlength=gt.num_images) == 0).any()
    dets = synthetic_detections(gt, per_frame=per_frame, seed=seed + 1, score_decimals=2)
    # a detection of a category the ground truth does not know: both evaluators skip it
    dets = Detections.concat([dets, Detections([gt.img_ids[0]], [999], [[1, 1, 5, 5]], [0.9])])
    write_coco_json(dets, tmp_path / "dt.json")
    m = evaluate(gt, read_coco_json(tmp_path / "dt.json"), chunk_dets=chunk)
    assert m["dropped_unknown_category"] == 1
    _check_against_pycoco(m, *_pycoco(tmp_path / "gt.json", tmp_path / "dt.json"))
    assert m["bbox_mAP_50"] > 0.1  # a real mixture of hits and misses, not a degenerate case
    # the float32 columns evaluate exactly like their JSON
    m32 = evaluate(gt, dets.subset(slice(0, len(dets))), chunk_dets=chunk)
    assert m32["bbox_mAP"] == m["bbox_mAP"]


def _tiny_gt(anns, n_img=1, cats=(1, 2)):
    return {
        "categories": [{"id": c, "name": f"c{c}"} for c in cats],
        "images": [{"id": i + 1, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(n_img)],
        "annotations": anns,
    }


def _ann(i, img, cat, box, crowd=0):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}


def test_edge_cases_match_pycocotools(tmp_path):
    """Crowd taking many detections, equal-IoU GTs, score ties across images, GT id 0."""
    anns = [
        _ann(0, 1, 1, [10, 10, 20, 20]),  # id 0: pycocotools counts its match as a miss
        _ann(1, 1, 1, [50, 50, 20, 20]),
        _ann(2, 1, 1, [50, 50, 20, 20]),  # identical GTs: IoU tie
        _ann(3, 2, 1, [0, 0, 60, 60], crowd=1),
        _ann(4, 2, 1, [70, 70, 10, 10]),
        _ann(5, 3, 2, [5, 5, 30, 30]),
    ]
    (tmp_path / "gt.json").write_text(json.dumps(_tiny_gt(anns, n_img=3)))
    dets = [
        (1, 1, [10, 10, 20, 20], 0.9),
        (1, 1, [51, 50, 20, 20], 0.8),
        (1, 1, [50, 51, 20, 20], 0.8),
        (1, 1, [52, 52, 20, 20], 0.8),
        (2, 1, [1, 1, 20, 20], 0.7),
        (2, 1, [30, 30, 20, 20], 0.7),
        (2, 1, [70, 70, 10, 11], 0.8),
        (3, 2, [5, 5, 30, 29], 0.5),
        (3, 2, [40, 40, 30, 30], 0.5),
        (2, 2, [5, 5, 30, 30], 0.5),
    ]
    d = Detections(*[np.array([x[i] for x in dets]) for i in range(4)])
    write_coco_json(d, tmp_path / "dt.json")
    gt = load_cocovid(tmp_path / "gt.json")
    m = evaluate(gt, read_coco_json(tmp_path / "dt.json"))
    _check_against_pycoco(m, *_pycoco(tmp_path / "gt.json", tmp_path / "dt.json"))


def test_ground_truth_as_detections_scores_one(tmp_path):
    gtd = synthetic_cocovid(num_videos=5, frames=20, num_cats=6, seed=3, crowd_frac=0.2)
    for a in gtd["annotations"]:
        a["id"] += 1  # avoid pycocotools' id-0 quirk: it would make a perfect match a miss
    (tmp_path / "gt.json").write_text(json.dumps(gtd))
    gt = load_cocovid(tmp_path / "gt.json")
    real = ~gt.ann_iscrowd
    d = Detections(
        gt.img_ids[gt.ann_image_idx[real]], gt.ann_cat_ids[real], gt.ann_boxes[real], np.linspace(1, 0.5, real.sum())
    )
    m = evaluate(gt, d)
    assert m["bbox_mAP"] == 1.0 and m["bbox_mAP_50"] == 1.0
    assert all(c["ap"] == 1.0 for c in m["classwise"] if c["num_gt"])
    defined = [v for v in m["motion"].values() if v is not None]
    assert len(defined) >= 2 and all(v == 1.0 for v in defined)
