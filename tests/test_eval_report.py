"""Group means, motion buckets, ILSVRC rules, the official motion file, ``lvod eval`` files.

Hand-checkable cases. Budget ~5 s (one read of the devkit cache).
"""

import json

import numpy as np
import pytest
from scipy.io import savemat

from lvod.bags_io import save_groups
from lvod.data.cocovid import load_cocovid
from lvod.errors import DataError
from lvod.evaluation import Detections, evaluate, evaluate_files, save_results_npz
from lvod.evaluation.ilsvrc import small_object_thr, voc_ap
from lvod.evaluation.motion import load_official_motion_iou, motion_iou_from_tracks
from lvod.evaluation.report import group_means
from lvod.groups import build_groups


def _gt_file(tmp_path, anns, n_img=1, cats=(1, 2), videos=False):
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(n_img)]
    d = {"categories": [{"id": c, "name": f"c{c}"} for c in cats], "images": images, "annotations": anns}
    if videos:
        d["videos"] = [{"id": 1, "name": "v"}]
        for i, im in enumerate(images):
            im.update(video_id=1, frame_id=i)
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(d))
    return load_cocovid(p), p


def _ann(i, img, cat, box, **kw):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0, **kw}


def _dets(rows):
    return Detections(*[np.array([r[i] for r in rows]) for i in range(4)])


def test_group_means_leave_out_classes_without_gt():
    g = group_means(
        [1, 2, 3, 4],
        [0.5, None, 0.9, 0.2],
        [0.3, None, 0.6, 0.1],
        [("rare", [1, 2]), ("frequent", [3, 4]), ("no_gt", [2])],
    )
    assert g[0]["ap50"] == 0.5 and g[0]["ap"] == 0.3 and g[0]["num_classes_with_gt"] == 1  # not (0.5 + 0) / 2
    assert g[1]["ap50"] == pytest.approx(0.55) and g[1]["ap"] == pytest.approx(0.35)
    assert g[2]["ap50"] is None and g[2]["num_classes_with_gt"] == 0


def test_motion_iou_from_tracks_by_hand():
    boxes = [[0, 0, 10, 10], [5, 0, 10, 10], [5, 0, 10, 10], [50, 50, 10, 10], [0, 0, 4, 4]]
    m = motion_iou_from_tracks([1, 1, 1, 1, 1], [7, 7, 7, 8, -1], [0, 10, 20, 5, 0], boxes)
    assert m[0] == pytest.approx(1 / 3) and m[1] == pytest.approx(2 / 3) and m[2] == 1.0
    assert np.isnan(m[3]) and np.isnan(m[4])  # no neighbour 10 frames away; no track


@pytest.mark.parametrize("fp_score, expect", [(0.7, 1.0), (0.95, 0.5)])
def test_motion_bucket_treats_other_buckets_as_ignore_regions(tmp_path, fp_score, expect):
    gt, _ = _gt_file(tmp_path, [_ann(1, 1, 1, [10, 10, 40, 40]), _ann(2, 1, 1, [100, 100, 40, 40])])
    dets = _dets([(1, 1, [100, 100, 40, 40], 0.9), (1, 1, [10, 10, 40, 40], 0.8), (1, 1, [150, 10, 30, 30], fp_score)])
    m = evaluate(gt, dets, motion_iou=np.array([0.95, 0.5]))
    # slow: the detection on the fast object is neither TP nor FP (else slow AP50 would be 1/3 or 0.5)
    assert m["motion"]["slow"] == pytest.approx(expect) and m["motion"]["fast"] == pytest.approx(expect)
    assert m["motion"]["medium"] is None and m["motion_counts"] == {"slow": 1, "medium": 0, "fast": 1, "unknown": 0}


def test_ilsvrc_small_objects_generated_frames_and_voc_ap(tmp_path):
    anns = [
        _ann(1, 1, 1, [10, 10, 9, 9]),  # 10x10 pixels: threshold 100/400
        _ann(2, 2, 1, [50, 50, 40, 40], generated=True),
    ]  # frame 2: all boxes generated -> not scored
    gt, _ = _gt_file(tmp_path, anns, n_img=3)
    assert small_object_thr([10], [10])[0] == 0.25
    dets = _dets(
        [
            (1, 1, [13, 10, 9, 9], 0.9),  # +1-pixel IoU 7*10/(200-70) = 0.538; COCO IoU 6*9/(162-54) = 0.5
            (1, 1, [15, 10, 9, 9], 0.8),  # IoU 5*10/150 = 0.33 >= 0.25 but the object is taken: FP
            (2, 1, [0, 0, 5, 5], 0.95),  # on the unscored frame: not counted
            (3, 1, [0, 0, 5, 5], 0.85),
        ]
    )  # FP on an empty frame
    m = evaluate(gt, dets, protocol="ilsvrc")
    # ranked: TP(.9) FP(.85) FP(.8); rec [1,1,1], prec [1, .5, .33] -> VOC AP 1
    assert m["bbox_mAP_50"] == 1.0 and m["bbox_mAP"] is None and m["classwise"][0]["num_gt"] == 1
    dets2 = _dets([(1, 1, [15, 10, 9, 9], 0.8), (3, 1, [0, 0, 5, 5], 0.85)])
    assert evaluate(gt, dets2, protocol="ilsvrc")["bbox_mAP_50"] == pytest.approx(0.5)  # 0.33 IoU is a hit
    coco = evaluate(gt, dets2)
    assert coco["bbox_mAP_50"] == 0.0  # COCO: 0.5 threshold, and frame 2's object counts
    assert voc_ap(np.array([0.5, 0.5, 1]), np.array([1, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_official_motion_file_is_matched_by_frame_and_object_order(tmp_path):
    anns = [_ann(1, 2, 1, [0, 0, 5, 5]), _ann(2, 1, 1, [0, 0, 5, 5]), _ann(3, 2, 2, [9, 9, 5, 5])]
    gt, _ = _gt_file(tmp_path, anns, n_img=3)
    cells = np.empty((3, 1), dtype=object)
    cells[0, 0], cells[1, 0], cells[2, 0] = np.array([[0.95]]), np.array([[0.5, 0.8]]), np.zeros((1, 0))
    savemat(tmp_path / "m.mat", {"motion_iou": cells})
    assert load_official_motion_iou(tmp_path / "m.mat", gt).tolist() == [0.5, 0.95, 0.8]
    cells[2, 0] = np.array([[0.1]])
    savemat(tmp_path / "bad.mat", {"motion_iou": cells})
    with pytest.raises(DataError, match="frame 2"):
        load_official_motion_iou(tmp_path / "bad.mat", gt)


def test_lvod_eval_prints_tables_and_writes_json_and_csv(tmp_path, capsys):
    from lvod.cli import main

    anns = [
        _ann(1, 1, 1, [10, 10, 40, 40], instance_id=1),
        _ann(2, 2, 1, [12, 10, 40, 40], instance_id=1),
        _ann(3, 2, 2, [100, 100, 30, 30], instance_id=2),
    ]
    gt, gt_path = _gt_file(tmp_path, anns, n_img=2, cats=(1, 2, 3), videos=True)
    save_results_npz(_dets([(1, 1, [10, 10, 40, 40], 0.9), (2, 2, [100, 100, 30, 30], 0.8)]), tmp_path / "r.npz")
    groups = tmp_path / "groups.json"
    save_groups(build_groups([1, 2, 3], [5, 50, 6], method="edges", edges=[10], names=["c1", "c2", "c3"]), groups)
    returned = evaluate_files(gt_path, tmp_path / "r.npz", groups={"a": [1, 3], "b": [2]})
    assert (
        main(
            [
                "eval",
                "--ann",
                str(gt_path),
                "--results",
                str(tmp_path / "r.npz"),
                "--groups",
                str(groups),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # class 1: one of two objects found -> precision 1 up to recall 0.5: 51 of 101 recall points
    # one unit everywhere: fractions as in metrics.json, labelled
    assert "| bbox_mAP_50 | 0.752 |" in out and "| g1 [0, 10) | 1/2 | 0.505 | 0.505 |" in out
    assert "AP as a fraction, 0-1" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert [(g["group"], g["bin"], g["basis"]) for g in m["groups"]] == [
        ("g1", "[0, 10)", "instances"),
        ("g2", "[10, inf)", "instances"),
    ]
    assert "Groups by instances per class" in out
    assert m["groups"][0]["ap50"] == returned["groups"][0]["ap50"] and m["classwise"] == returned["classwise"]
    assert m["bbox_mAP_50"] == pytest.approx((51 / 101 + 1) / 2) and m["groups"][1]["ap50"] == pytest.approx(1.0)
    assert [c["num_gt"] for c in m["classwise"]] == [2, 1, 0]
    assert m["motion_source"] == "instance tracks"
    rows = (tmp_path / "m_classwise.csv").read_text().splitlines()
    assert rows[0] == "category_id,name,num_gt,ap50,ap" and rows[3] == "3,c3,0,,"
    assert (tmp_path / "m_groups.csv").read_text().splitlines()[1].startswith('g1,"[0, 10)",instances,1 3,1,0.50495')


def test_vid_val_builder_reproduces_the_devkit_thresholds(external_data):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mk", Path(__file__).parents[1] / "benchmarks" / "make_vid_val_gt.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    cache = (
        external_data
        / "imagenet-vid"
        / "fanyix_STMN"
        / "external"
        / "VID_devkit_data"
        / "ILSVRC2015_vid_validation_ground_truth_whole.mat"
    )
    root = external_data / "imagenet-vid"
    d = mk.build(cache, root / mk.VIDEOS.relative_to(mk.DATA), root / mk.MAP.relative_to(mk.DATA), num_videos=3)
    assert len(d["images"]) == 464 * 3 and d["images"][464]["id"] == 465
    from scipy.io import loadmat

    thr = loadmat(cache)["gt_obj_thr"].reshape(-1)
    ref = np.concatenate([np.asarray(t, np.float64).reshape(-1) for t in thr[: 464 * 3]])
    b = np.array([a["bbox"] for a in d["annotations"]], np.float64)
    assert len(b) == len(ref) and np.array_equal(small_object_thr(b[:, 2] + 1, b[:, 3] + 1), ref)
