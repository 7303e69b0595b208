"""Per-image COCO matching by pycocotools' own ``COCOeval``, one chunk of images at a time.

This is the ``backend="pycocotools"`` of :func:`lvod.evaluation.evaluate`: the library does
the per-(image, category) work - IoU, maxDets cut, greedy matching, crowd and ignore
rules - on a small ``COCO`` ground truth and ``loadRes`` detections built from the columns
of one chunk of consecutive images; lvod only carries the result across chunks:

- :func:`match_chunk_passes` turns ``COCOeval.evalImgs`` (``dtIds``, ``dtMatches``,
  ``dtIgnore``, ``gtIgnore`` per image x category) into the compact per-detection arrays
  that lvod's own matcher (:func:`lvod.evaluation.coco.match_chunk`) returns, in the same
  row order.
- :mod:`lvod.evaluation.engine` then sorts all chunks' detections by score per category
  and computes precision exactly as ``COCOeval.accumulate`` does (same ordering: image id,
  then per-image score order, then a stable sort by score). ``COCOeval.accumulate``
  itself cannot do this step: it reads every image's ``evalImgs`` of one ``COCOeval``, so
  it would need all chunks' dicts alive at once - the memory the chunking avoids.

Why it is not the default, and why lvod has its own matcher: the library cannot be given
the whole ImageNet VID val set (17.6 M detections) at once - ``loadRes`` and ``evaluate``
keep a dict per detection and per (image, category), ~3 GB per million detections - and
chunking (250 k detections a chunk, ``engine.CHUNK_DETS["pycocotools"]``; 0.5-0.7 GB peak
RSS) fixes the memory but not the time:
``COCOeval.evaluate`` loops in Python over every (image, category, detection, GT) and
``loadRes`` builds a dict per detection. Measured (whole :func:`~lvod.evaluation.evaluate`,
motion buckets off) on the 2-core
development machine (shared, load 3-6; benchmarks/README.md, "Evaluation"), real VID val
GT, first 28 / 56 / 111 videos, 0.64 / 1.08 / 2.56 M generated detections: this backend
24-37 s per million detections over four runs (76 s for 2.56 M; ~430-650 s extrapolated
to VID val's 17.6 M), lvod's matcher 0.8-1.9 s per million (3.8 s for 2.56 M; 27-45 s
measured on all of val, motion buckets included). With the three motion-bucket passes
(generated videos with tracks, 0.3 M detections) COCOeval runs four times per chunk:
77-137 s per million in two runs (23-40 minutes for val) against lvod's 1.5-1.7. The target is 120 s, so full-scale runs
use lvod's matcher; this backend is the cross-check on real data and the reference in
``tests/test_eval_library.py`` (per-detection flags identical, AP equal to 1e-12).

Motion buckets are supported: a bucket pass must ignore the GT outside the bucket without
making it crowd (crowd changes the IoU's union). COCOeval's bbox mode reads a GT's
``area`` only for the area-range test, so those GTs get ``area = -1`` (below the "all"
range): ignored, matchable once, IoU unchanged - exactly lvod's ``ChunkGT.ignore``.
The ILSVRC protocol (devkit matching, +1-pixel IoU) is not COCO's; it stays lvod-only.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np


def _coco_objects(gt, dets, img_ids, cat_ids, chunk_ids):
    """(COCO ground truth, COCO detections or None, GT annotation dicts in chunk order).

    ``chunk_ids``: the image ids of the chunk. Detection ``id`` = row of ``dets`` + 1
    (``loadRes`` numbers them in list order).
    """
    from pycocotools.coco import COCO

    images = [{"id": int(i)} for i in chunk_ids]
    cats = [{"id": int(c)} for c in cat_ids]
    img_of = np.asarray(img_ids, np.int64)
    cat_of = np.asarray(cat_ids, np.int64)
    anns = [
        {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": ar, "iscrowd": cr}
        for a, i, c, b, ar, cr in zip(
            gt.ann_id.tolist(),
            img_of[gt.img].tolist(),
            cat_of[gt.cat].tolist(),
            np.asarray(gt.box, np.float64).tolist(),
            np.asarray(gt.area, np.float64).tolist(),
            gt.crowd.astype(int).tolist(),
        )
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": cats, "annotations": anns}
        coco_gt.createIndex()
        coco_dt = None
        if len(dets.img):
            res = [
                {"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(
                    img_of[dets.img].tolist(),
                    cat_of[dets.cat].tolist(),
                    np.asarray(dets.box, np.float64).tolist(),
                    np.asarray(dets.score, np.float64).tolist(),
                )
            ]
            coco_dt = coco_gt.loadRes(res)
    return coco_gt, coco_dt, anns


def _empty_dt(coco_gt):
    """A detections ``COCO`` with no annotations (``loadRes`` rejects an empty list)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": list(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        c.createIndex()
    return c


def _run_cocoeval(coco_gt, coco_dt, img_ids, cat_ids, iou_thrs, max_dets):
    """``COCOeval(iouType="bbox").evaluate()`` over the chunk; returns its ``evalImgs``."""
    from pycocotools.cocoeval import COCOeval

    e = COCOeval(coco_gt, coco_dt, "bbox")
    e.params.imgIds = [int(i) for i in img_ids]
    e.params.catIds = [int(c) for c in cat_ids]
    e.params.iouThrs = np.asarray(iou_thrs, np.float64)
    e.params.maxDets = [int(max_dets)]
    e.params.areaRng = [[0.0, 1e5**2]]
    e.params.areaRngLbl = ["all"]
    with contextlib.redirect_stdout(io.StringIO()):
        e.evaluate()
    return e.evalImgs


def _flags(eval_imgs, cat_ids, n_thr):
    """evalImgs -> ``(rows (M,), matched (T, M), ignored (T, M), npig (K,))``, rows ascending.

    ``matched`` is ``dtMatches != 0`` (COCOeval stores the matched GT's id and tests it for
    truth, so a match to GT id 0 counts as unmatched - ``accumulate`` does the same).
    """
    cat_index = {int(c): k for k, c in enumerate(cat_ids)}
    npig = np.zeros(len(cat_ids), np.int64)
    ids, m, ig = [], [], []
    for e in eval_imgs:
        if e is None:
            continue
        npig[cat_index[int(e["category_id"])]] += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if len(e["dtIds"]):
            ids.append(np.asarray(e["dtIds"], np.int64))
            m.append(np.asarray(e["dtMatches"]) != 0)
            ig.append(np.asarray(e["dtIgnore"], bool))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((n_thr, 0), bool), np.zeros((n_thr, 0), bool), npig
    rows = np.concatenate(ids) - 1
    o = np.argsort(rows, kind="stable")
    return rows[o], np.concatenate(m, axis=1)[:, o], np.concatenate(ig, axis=1)[:, o], npig


def match_chunk_passes(gt, dets, img_ids, cat_ids, passes, *, max_dets: int = 100) -> list:
    """COCOeval's matching of one chunk, for several passes over the same ``COCO`` objects.

    ``gt``: :class:`~lvod.evaluation.coco.ChunkGT` (its ``ignore`` is not read),
    ``dets``: :class:`~lvod.evaluation.coco.ChunkDets` sorted by (image, file order);
    their ``img``/``cat`` index ``img_ids`` (ascending image ids of the evaluation) and
    ``cat_ids`` (ascending). ``passes``: list of ``(extra_ignore bool (A,) or None,
    iou_thrs (T,))``. Returns per pass ``(keep int64 (M,), matched bool (T, M), ignored
    bool (T, M), npig int64 (K,))`` - the same as :func:`lvod.evaluation.coco.match_chunk`:
    ``keep`` are the rows of ``dets`` COCOeval kept (at most ``max_dets`` per image and
    category), ascending.
    """
    chunk_imgs = np.unique(gt.img) if len(dets.img) == 0 else np.unique(np.concatenate([gt.img, dets.img]))
    if len(chunk_imgs) == 0:
        return [
            (
                np.zeros(0, np.int64),
                np.zeros((len(t), 0), bool),
                np.zeros((len(t), 0), bool),
                np.zeros(len(cat_ids), np.int64),
            )
            for _, t in passes
        ]
    ids = np.asarray(img_ids, np.int64)[chunk_imgs]
    coco_gt, coco_dt, anns = _coco_objects(gt, dets, img_ids, cat_ids, ids)
    coco_dt = coco_dt if coco_dt is not None else _empty_dt(coco_gt)
    area = np.asarray(gt.area, np.float64).tolist()
    out = []
    for extra, thrs in passes:
        # outside the pass's GT: ignored but not crowd, via the area range (module docstring)
        ign = np.zeros(len(anns), bool) if extra is None else np.asarray(extra, bool)
        for a, ar, i in zip(anns, area, ign.tolist()):
            a["area"] = -1.0 if i else ar
        out.append(_flags(_run_cocoeval(coco_gt, coco_dt, ids, cat_ids, thrs, max_dets), cat_ids, len(thrs)))
    return out
