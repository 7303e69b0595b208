"""The ``pycocotools`` backend (COCOeval per chunk) against lvod's own matcher and the oracle.

Budget: about 10 s (COCOeval's Python loops over ~1,000 generated frames dominate).
"""

import json

import numpy as np
import pytest

from lvod.data.cocovid import load_cocovid
from lvod.evaluation import Detections, engine, evaluate, evaluate_files, library, write_coco_json
from lvod.evaluation.coco import ChunkDets, ChunkGT, match_chunk
from lvod.evaluation.results import read_coco_json
from lvod.evaluation.synth import synthetic_cocovid, synthetic_detections

TOL = 1e-12


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """Generated videos: tracks (motion buckets), crowd, empty frames, 2 classes without GT,
    score ties, GT annotation id 0, and one detection of an unknown category."""
    d = tmp_path_factory.mktemp("vid")
    gtd = synthetic_cocovid(
        num_videos=12, frames=40, num_cats=10, cats_unused=2, seed=7, crowd_frac=0.2, empty_frac=0.1
    )
    (d / "gt.json").write_text(json.dumps(gtd))
    gt = load_cocovid(d / "gt.json")
    assert gt.ann_iscrowd.any() and (np.bincount(gt.ann_image_idx, minlength=gt.num_images) == 0).any()
    assert gtd["annotations"][0]["id"] == 0
    dets = synthetic_detections(gt, per_frame=30, seed=8, score_decimals=2)
    dets = Detections.concat([dets, Detections([gt.img_ids[3]], [999], [[1, 1, 5, 5]], [0.9])])
    return gt, dets, d


def _assert_same(a, b):
    assert abs(a["bbox_mAP"] - b["bbox_mAP"]) <= TOL and abs(a["bbox_mAP_50"] - b["bbox_mAP_50"]) <= TOL
    for x, y in zip(a["classwise"], b["classwise"], strict=True):
        assert x["num_gt"] == y["num_gt"], (x, y)
        for k in ("ap", "ap50"):
            assert (x[k] is None) == (y[k] is None), (x, y)
            if x[k] is not None:
                assert abs(x[k] - y[k]) <= TOL, (x, y)


@pytest.mark.parametrize("chunk", [700, 5_000, 10**9])
def test_backends_agree_on_generated_video_data(video, chunk):
    gt, dets, _ = video
    ref = evaluate(gt, dets, chunk_dets=10**9, backend="lvod")
    lib = evaluate(gt, dets, chunk_dets=chunk, backend="pycocotools")
    assert lib["backend"] == "pycocotools" and ref["backend"] == "lvod"
    _assert_same(ref, lib)
    assert ref["bbox_mAP_50"] > 0.1 and lib["dropped_unknown_category"] == 1
    assert sum(c["ap"] is None for c in lib["classwise"]) == 2  # classes without GT stay undefined
    assert set(lib["motion"]) == {"slow", "medium", "fast"}
    for name, v in ref["motion"].items():
        assert (v is None) == (lib["motion"][name] is None)
        if v is not None:
            assert abs(v - lib["motion"][name]) <= TOL, name


def test_chunk_flags_equal_lvod_matcher(video):
    """Stronger than equal AP: the per-detection flags of one chunk are identical."""
    gt, dets, _ = video
    p = engine.prepare(gt, dets)
    n_img = len(p.img_ids) // 3
    g = p.g_order[: p.img_ptr[n_img]]
    d = slice(0, p.det_ptr[n_img])
    rows = p.d_rows[d]
    cg = ChunkGT(
        img=p.g_img[g],
        cat=p.g_cat[g],
        box=p.g_box[g],
        area=p.g_area[g],
        crowd=p.g_crowd[g],
        ignore=np.zeros(len(g), bool),
        ann_id=p.g_ann_id[g],
    )
    cd = ChunkDets(img=p.d_img[d], cat=p.d_cat[d], box=dets.bbox[rows], score=dets.score[rows])
    extra = np.arange(len(g)) % 3 == 0  # a motion-like pass: every third GT outside the bucket
    thr = np.array([0.5, 0.75])
    out = library.match_chunk_passes(cg, cd, p.img_ids, p.cat_ids, [(None, thr), (extra, thr)], max_dets=7)
    for (keep, m, ig, npig), ign in zip(out, [np.zeros(len(g), bool), extra]):
        cg.ignore = ign
        ref = match_chunk(cg, cd, p.num_cats, iou_thrs=thr, max_dets=7)
        assert len(keep) < len(cd.img)  # max_dets=7 really cut detections
        for x, y in zip((keep, m, ig, npig), ref):
            np.testing.assert_array_equal(x, y)
    assert out[1][3].sum() < out[0][3].sum() and out[0][2].any() and out[0][1].any()


def test_real_coco_oracle(external_data):
    root = external_data / "coco-eval"
    exp = json.loads((root / "expected_values_computed_with_pycocotools-2.0.11.json").read_text())["fake100_bbox"]
    data = root / "MiXaiLL76_faster_coco_eval" / "tests" / "dataset" / "cocoapi"
    gt = load_cocovid(data / "instances_val2014_100.json")
    dets = read_coco_json(data / "instances_val2014_fakebbox100_results.json")
    lib = evaluate(gt, dets, backend="pycocotools", chunk_dets=200)  # several chunks of images
    _assert_same(evaluate(gt, dets), lib)
    assert abs(lib["bbox_mAP"] - exp["stats"][0]) <= TOL and abs(lib["bbox_mAP_50"] - exp["stats"][1]) <= TOL
    by_id = {c["category_id"]: c for c in lib["classwise"]}
    for cid, ref in exp["per_category"].items():
        c = by_id[int(cid)]
        if ref["AP"] is None or ref["AP"] == -1:
            assert c["ap"] is None
        else:
            assert abs(c["ap"] - ref["AP"]) <= TOL and abs(c["ap50"] - ref["AP50"]) <= TOL, (cid, c, ref)


def test_backend_really_runs_cocoeval(video, monkeypatch):
    """The pycocotools backend must get its matches from COCOeval, not from lvod's matcher."""
    from pycocotools.cocoeval import COCOeval

    gt, dets, _ = video
    calls = []
    orig = COCOeval.evaluateImg

    def spy(self, *a):
        calls.append(1)
        return orig(self, *a)

    monkeypatch.setattr(COCOeval, "evaluateImg", spy)
    monkeypatch.setattr("lvod.evaluation.coco.greedy_pass", lambda *a, **k: pytest.fail("lvod matcher used"))
    evaluate(gt, dets, backend="pycocotools", motion=False)
    assert len(calls) >= gt.num_images * 8  # every image x category of the main pass


def test_unsupported_combinations_raise(video, tmp_path, capsys):
    gt, dets, d = video
    with pytest.raises(ValueError, match="ilsvrc"):
        evaluate(gt, dets, protocol="ilsvrc", backend="pycocotools")
    with pytest.raises(ValueError, match="backend 'faster'"):
        evaluate(gt, dets, backend="faster")
    # lvod eval: refused before anything is loaded (the results path does not exist); a usage error, 2
    with pytest.raises(ValueError, match="backend 'pycocotools'"):
        evaluate_files(d / "gt.json", tmp_path / "missing.json", protocol="ilsvrc", backend="pycocotools")
    from lvod.cli import main

    assert (
        main(
            [
                "eval",
                "--ann",
                str(d / "gt.json"),
                "--results",
                str(tmp_path / "missing.json"),
                "--protocol",
                "ilsvrc",
                "--backend",
                "pycocotools",
            ]
        )
        == 2
    )
    assert "backend 'pycocotools'" in capsys.readouterr().err


def test_lvod_eval_backend(video, tmp_path, capsys):
    from lvod.cli import main

    gt, dets, d = video
    small = dets.subset(np.isin(dets.image_id, gt.img_ids[:40]))
    write_coco_json(small, tmp_path / "dt.json")
    assert (
        main(
            [
                "eval",
                "--ann",
                str(d / "gt.json"),
                "--results",
                str(tmp_path / "dt.json"),
                "--out",
                str(tmp_path / "m.json"),
                "--backend",
                "pycocotools",
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["backend"] == "pycocotools"
    _assert_same(evaluate(gt, small), m)
    assert "bbox_mAP_50" in capsys.readouterr().out
