"""The official ImageNet VID (ILSVRC2015 devkit) detection protocol, on lvod's matcher.

What differs from COCO (``eval_vid_detection.m`` of the devkit):

- boxes are inclusive pixel boxes: with COCO ``[x, y, w, h]`` from mmtracking's converter
  (``w = xmax - xmin``) a box spans ``w + 1`` pixels, and IoU uses ``+1`` widths;
- each GT has its own IoU threshold ``min(0.5, w*h / ((w+10) * (h+10)))`` with
  ``w = x2 - x1 + 1``, so small objects are easier to hit;
- a detection takes the not-yet-detected GT of highest IoU, the first one on ties
  (``ov > ovmax``); there is no detections-per-image cap;
- frames whose boxes are all ``generated`` (interpolated) are not scored;
- AP is VOC's area under the interpolated precision envelope (all recall points), not
  COCO's 101-point sampling.

Motion buckets (FGFA ``vid_eval_motion``) use this protocol with GTs outside the bucket as
ignore regions: a detection matched to one is neither TP nor FP. FGFA additionally weights
*unmatched* detections by which bucket they overlap most (fractional false positives);
lvod counts them as plain false positives, as COCO ignore regions do.
"""

from __future__ import annotations

import numpy as np

from lvod.evaluation.coco import ChunkDets, ChunkGT

PIXEL_TOLERANCE = 10.0


def small_object_thr(w, h, *, default=0.5, tol=PIXEL_TOLERANCE):
    """Per-object IoU threshold (float64) from inclusive pixel widths/heights ``w``, ``h``."""
    w = np.asarray(w, np.float64)
    h = np.asarray(h, np.float64)
    return np.minimum(default, (w * h) / ((w + tol) * (h + tol)))


def pair_iou_plus1(db, gb, crowd):
    """Row-paired IoU (P,) of xywh boxes with the devkit's inclusive ``+1`` pixel widths."""
    db = db.astype(np.float64, copy=False)
    gb = gb.astype(np.float64, copy=False)
    iw = np.minimum(db[:, 0] + db[:, 2], gb[:, 0] + gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0]) + 1
    ih = np.minimum(db[:, 1] + db[:, 3], gb[:, 1] + gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1]) + 1
    ok = (iw > 0) & (ih > 0)
    inter = np.where(ok, iw * ih, 0.0)
    da = (db[:, 2] + 1.0) * (db[:, 3] + 1.0)
    ga = (gb[:, 2] + 1.0) * (gb[:, 3] + 1.0)
    ua = np.where(crowd, da, da + ga - inter)
    return np.where(ok, inter / np.where(ok, ua, 1.0), 0.0)


def drop_unscored(gt: ChunkGT, dets: ChunkDets, img_excluded: np.ndarray):
    """Remove GT and detections on frames the devkit does not score (all boxes generated)."""
    g = ~img_excluded[gt.img]
    d = ~img_excluded[dets.img]
    gt2 = ChunkGT(
        img=gt.img[g],
        cat=gt.cat[g],
        box=gt.box[g],
        area=gt.area[g],
        crowd=gt.crowd[g],
        ignore=gt.ignore[g],
        ann_id=gt.ann_id[g],
        thr=None if gt.thr is None else gt.thr[g],
    )
    return gt2, ChunkDets(img=dets.img[d], cat=dets.cat[d], box=dets.box[d], score=dets.score[d])


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ / ILSVRC devkit ``VOCap``)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def accumulate_voc(order, bounds, matched, ignored, npig) -> np.ndarray:
    """VOC AP per category (K,); -1 without GT.

    ``order``/``bounds`` from ``coco.score_order`` (per category, score descending, ties in
    (image, file) order as MATLAB's stable sort); ``matched``/``ignored`` bool (M,).
    Ignored detections (matched to an ignore region) are dropped before the curve.
    """
    ap = -np.ones(len(npig))
    for k in range(len(npig)):
        if npig[k] == 0:
            continue
        rows = order[bounds[k] : bounds[k + 1]]
        rows = rows[~ignored[rows]]
        tp = matched[rows]
        t = np.cumsum(tp).astype(np.float64)
        f = np.cumsum(~tp).astype(np.float64)
        rec = t / npig[k]
        prec = t / np.maximum(t + f, np.finfo(np.float64).eps)
        ap[k] = voc_ap(rec, prec)
    return ap
