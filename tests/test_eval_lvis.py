"""The LVIS / TAO federated protocol (``evaluate(..., protocol="lvis")``).

Agreement with lvis-api 0.5.3 (``pip install --no-deps lvis==0.5.3``; the oracle, never
called by lvod) on LVIS v0.5 val cut to 100 images, and one hand-made test per rule.
"""

import copy
import json
import time

import numpy as np
import pytest

from lvod.data.cocovid import load_cocovid
from lvod.evaluation.report import evaluate
from lvod.evaluation.results import Detections

LVIS_100 = "bags/FishYuLi_BalancedGroupSoftmax/lvis-api/data/lvis_val_100.json"
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _f32(x):
    """float64 values exactly representable in float32 (so every path reads the same)."""
    return np.asarray(x, np.float32).astype(np.float64)


def _make_dets(data: dict, seed: int = 0) -> list:
    """TPs (jittered, some duplicated), FPs on negative / not-exhaustive / unannotated /
    present categories, tied scores, and > 300 detections on a few images."""
    rng = np.random.default_rng(seed)
    cat_ids = np.array(sorted(c["id"] for c in data["categories"]))
    pos = {}
    for a in data["annotations"]:
        pos.setdefault(a["image_id"], set()).add(a["category_id"])
    out = []

    def add(img, cat, box, score):
        out.append({"image_id": int(img), "category_id": int(cat), "bbox": box, "score": float(score)})

    def rand_box(im):
        w = _f32(rng.uniform(2, im["width"] / 2))
        h = _f32(rng.uniform(2, im["height"] / 2))
        x = _f32(rng.uniform(0, im["width"] - w))
        y = _f32(rng.uniform(0, im["height"] - h))
        return [float(x), float(y), float(w), float(h)]

    def score():  # coarse scores: many ties
        return _f32(rng.integers(1, 64) / 64.0) if rng.random() < 0.3 else _f32(rng.random())

    images = {im["id"]: im for im in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(rng.integers(0, 3)):
            j = rng.normal(0, 0.08, 4) * np.array([w, h, w, h])
            box = _f32([x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)])
            add(a["image_id"], a["category_id"], [float(v) for v in box], score())
    for img, im in images.items():
        for c in im["neg_category_ids"][:5]:
            add(img, c, rand_box(im), score())
        for c in im["not_exhaustive_category_ids"]:
            for _ in range(3):
                add(img, c, rand_box(im), score())
        for c in rng.choice(cat_ids, 5, replace=False):  # mostly unannotated
            add(img, c, rand_box(im), score())
        for c in pos.get(img, ()):
            add(img, c, rand_box(im), score())
    for img in sorted(images)[::17]:  # > 300 on some images
        im = images[img]
        cats = sorted(pos.get(img, set()) | set(im["neg_category_ids"])) or [int(cat_ids[0])]
        for _ in range(320):
            add(img, rng.choice(cats), rand_box(im), score())
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _to_columns(dets: list) -> Detections:
    return Detections(
        np.array([d["image_id"] for d in dets], np.int64),
        np.array([d["category_id"] for d in dets], np.int64),
        np.array([d["bbox"] for d in dets], np.float64),
        np.array([d["score"] for d in dets], np.float64),
    )


def _lvis_api():
    np.float = float  # lvis 0.5.3 uses np.float (removed in numpy 2)
    return pytest.importorskip("lvis", reason="lvis-api not installed: pip install --no-deps lvis==0.5.3")


def test_agrees_with_lvis_api(external_data):
    lvis = _lvis_api()
    path = external_data / LVIS_100
    data = json.loads(path.read_text())
    dets = _make_dets(data)
    per_img = np.bincount(np.unique([d["image_id"] for d in dets], return_inverse=True)[1])
    assert per_img.max() > 300

    t0 = time.perf_counter()
    gt = load_cocovid(path)
    m = evaluate(gt, _to_columns(dets), protocol="lvis")
    t_lvod = time.perf_counter() - t0

    t0 = time.perf_counter()
    lgt = lvis.LVIS(str(path))
    ev = lvis.LVISEval(lgt, lvis.LVISResults(lgt, copy.deepcopy(dets)), iou_type="bbox")
    ev.run()
    t_api = time.perf_counter() - t0
    print(f"\nlvod {t_lvod:.2f} s, lvis-api {t_api:.2f} s, {len(dets)} detections")

    assert m["dropped_per_image_cap"] > 0 and m["dropped_federated"] > 0
    for k in KEYS:
        ref = float(ev.results[k])
        got = m["lvis"][k]
        assert got is not None and abs(got - ref) <= 1e-9, (k, got, ref)
    assert abs(m["bbox_mAP"] - ev.results["AP"]) <= 1e-9
    assert abs(m["bbox_mAP_50"] - ev.results["AP50"]) <= 1e-9

    prec = ev.eval["precision"][:, :, :, 0]  # (T, R, K), area all
    t50 = int(np.flatnonzero(ev.params.iou_thrs == 0.5)[0])
    assert [c["category_id"] for c in m["classwise"]] == list(ev.params.cat_ids)
    n_defined = 0
    for k, row in enumerate(m["classwise"]):
        s, s50 = prec[:, :, k], prec[t50, :, k]
        ref = float(np.mean(s[s > -1])) if (s > -1).any() else None
        ref50 = float(np.mean(s50[s50 > -1])) if (s50 > -1).any() else None
        for got, want in ((row["ap"], ref), (row["ap50"], ref50)):
            assert (got is None) == (want is None), (row, want)
            if want is not None:
                assert abs(got - want) <= 1e-9, (row, want)
                n_defined += 1
    assert n_defined > 200


# --- one hand-made test per federated rule -------------------------------------------


def _tiny(tmp_path, images):
    """One category-1 GT box in image 1; ``images``: {id: (neg ids, not-exhaustive ids,
    [GT category ids])} for the other images (each GT at the same box)."""
    box = [10.0, 10.0, 40.0, 40.0]
    imgs = [{"id": 1, "width": 100, "height": 100, "file_name": "1.jpg", "neg_category_ids": [],
             "not_exhaustive_category_ids": []}]  # fmt: skip
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1600.0}]
    for i, (neg, nex, cats) in images.items():
        imgs.append({"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg", "neg_category_ids": neg,
                     "not_exhaustive_category_ids": nex})  # fmt: skip
        for c in cats:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": box, "area": 1600.0})
    cats = [{"id": c, "name": f"c{c}", "frequency": f} for c, f in ((1, "r"), (2, "c"), (3, "f"))]
    p = tmp_path / "ann.json"
    p.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return load_cocovid(p)


def _dets(rows):
    """rows: (image, category, box, score)."""
    return Detections(
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float64),
        np.array([r[3] for r in rows], np.float64),
    )


HIT = [10.0, 10.0, 40.0, 40.0]
MISS = [60.0, 60.0, 30.0, 30.0]


def _ap50(m, cat=1):
    return next(c["ap50"] for c in m["classwise"] if c["category_id"] == cat)


def test_unlisted_category_is_ignored(tmp_path):
    gt = _tiny(tmp_path, {2: ([], [], [2])})  # image 2 says nothing about category 1
    m = evaluate(gt, _dets([(2, 1, MISS, 0.9), (1, 1, HIT, 0.5)]), protocol="lvis")
    assert m["dropped_federated"] == 1
    assert _ap50(m) == pytest.approx(1.0)
    # r: category 1; c: category 2 has GT and no detections (0); f: category 3 has no GT
    assert m["lvis"]["APr"] == pytest.approx(1.0) and m["lvis"]["APc"] == 0.0 and m["lvis"]["APf"] is None


def test_negative_category_detection_is_a_false_positive(tmp_path):
    gt = _tiny(tmp_path, {2: ([1], [], [2])})  # category 1 verified absent from image 2
    m = evaluate(gt, _dets([(2, 1, MISS, 0.9), (1, 1, HIT, 0.5)]), protocol="lvis")
    assert m["dropped_federated"] == 0
    assert _ap50(m) == pytest.approx(0.5, abs=1e-6)


def test_not_exhaustive_unmatched_detection_is_not_a_false_positive(tmp_path):
    dets = _dets([(2, 1, MISS, 0.9), (2, 1, HIT, 0.8), (1, 1, HIT, 0.5)])
    exhaustive = evaluate(_tiny(tmp_path, {2: ([], [], [1])}), dets, protocol="lvis")
    assert _ap50(exhaustive) < 0.99  # the miss is a false positive ...
    m = evaluate(_tiny(tmp_path, {2: ([], [1], [1])}), dets, protocol="lvis")
    assert _ap50(m) == pytest.approx(1.0)  # ... unless category 1 is not exhaustive there
    assert m["classwise"][0]["num_gt"] == 2


def test_per_image_cap_and_no_per_category_cap(tmp_path):
    gt = _tiny(tmp_path, {})
    # 301 misses above the hit: the hit is the 302nd by score and falls to the cap
    rows = [(1, 1, MISS, 0.9)] * 301 + [(1, 1, HIT, 0.5)]
    m = evaluate(gt, _dets(rows), protocol="lvis")
    assert m["dropped_per_image_cap"] == 2 and _ap50(m) == 0.0
    # 150 misses of one category (more than COCO's 100): the hit still counts
    m = evaluate(gt, _dets(rows[150:]), protocol="lvis")
    assert _ap50(m) == pytest.approx(1 / 152, abs=1e-4)
