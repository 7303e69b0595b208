"""COCO bbox AP, exactly as pycocotools' COCOeval computes it, on columns and in chunks.

Why not call pycocotools (or faster-coco-eval) directly: both build one Python dict per
detection and loop in Python (or keep all per-image results) per (image, category); on
ImageNet VID val with 100 detections per frame (17.6 M detections) that needs more than
24 GB and 20 minutes (see benchmarks/README.md). COCO AP decomposes, so lvod does:

1. :func:`match_chunk` - per (image, category) greedy matching for a chunk of images,
   vectorised over all pairs of the chunk at once. Output per kept detection: one
   matched bit and one ignored bit per IoU threshold. Memory is bounded by the chunk.
2. :func:`accumulate` - per category, sort all detections by score and compute COCO's
   101-point interpolated precision.

Exactness (the tests check <= 1e-9 against pycocotools 2.0.11; in practice bit-equal):

- IoU is maskApi's ``bbIou`` with the same float64 operations in the same order; for a
  crowd GT the union is the detection's area.
- Per (image, category) at most ``max_dets`` detections, taken in (score desc, file order)
  order (COCOeval's stable mergesort). GTs are ordered non-ignored first, file order.
- Greedy matching per threshold ``t`` (iou >= min(t, 1 - 1e-10)): a detection takes the
  unmatched non-ignored GT of highest IoU, ties going to the later GT; only when there is
  none, an ignored GT (crowd GTs can take any number of detections). A detection matched
  to an ignored GT is ignored; an unmatched detection outside the area range is ignored.
- COCOeval stores the matched GT's *id* and tests it for truth, so a match to a GT whose
  annotation id is 0 counts as unmatched. Replicated (``gt_ann_id``).
- Accumulation order: images in ascending image id, per image the (score desc, file order)
  order, then a stable sort by descending score: ties break by (image id, file order).
- Precision/recall arithmetic is COCOeval's (``np.spacing(1)``, envelope from the right,
  ``searchsorted(..., side="left")``, recall thresholds past the last recall get 0).

The matching is vectorised over "pairs" (detection, GT of the same image and category)
whose IoU reaches the lowest threshold; the greedy order is kept by stepping over the
detection rank within (image, category) - at most ``max_dets`` steps per chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
AREA_ALL = (0.0, 1e5 ** 2)


@dataclass
class ChunkGT:
    """Ground truth of one chunk of images (A rows, any order; file order matters for ties).

    ``img`` int64 (A,) image index (ascending image id), ``cat`` int64 (A,) category index
    0..K-1, ``box`` float64 (A, 4) xywh, ``area`` float64 (A,), ``crowd`` bool (A,),
    ``ignore`` bool (A,) extra ignore (outside a motion bucket, say; crowd is added to it),
    ``ann_id`` int64 (A,) annotation ids (only ``== 0`` matters, see module docstring),
    ``thr`` float64 (A,) or None: per-GT IoU threshold overriding the global thresholds
    (ILSVRC small objects).
    """

    img: np.ndarray
    cat: np.ndarray
    box: np.ndarray
    area: np.ndarray
    crowd: np.ndarray
    ignore: np.ndarray
    ann_id: np.ndarray
    thr: np.ndarray | None = None


@dataclass
class ChunkDets:
    """Detections of one chunk, sorted by (``img``, file order): ``img`` int64 (N,),
    ``cat`` int64 (N,), ``box`` float (N, 4) xywh, ``score`` float (N,)."""

    img: np.ndarray
    cat: np.ndarray
    box: np.ndarray
    score: np.ndarray


def pair_iou(db: np.ndarray, gb: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of row-paired boxes (P, 4) xywh as pycocotools' C ``bbIou`` computes it (float64)."""
    db = db.astype(np.float64, copy=False)
    gb = gb.astype(np.float64, copy=False)
    w = np.minimum(db[:, 2] + db[:, 0], gb[:, 2] + gb[:, 0]) - np.maximum(db[:, 0], gb[:, 0])
    h = np.minimum(db[:, 3] + db[:, 1], gb[:, 3] + gb[:, 1]) - np.maximum(db[:, 1], gb[:, 1])
    da = db[:, 2] * db[:, 3]
    ga = gb[:, 2] * gb[:, 3]
    ok = (w > 0) & (h > 0)
    i = np.where(ok, w * h, 0.0)
    u = np.where(crowd, da, da + ga - i)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ok, i / np.where(ok, u, 1.0), 0.0)
    return out


def _segments(keys: np.ndarray):
    """Start index of each run of equal values in sorted ``keys`` and the run id of each row."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.empty(len(keys), bool)
    new[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return starts, np.cumsum(new) - 1


def match_chunk(gt: ChunkGT, dets: ChunkDets, num_cats: int, *, iou_thrs=IOU_THRS, max_dets: int = 100,
                area_rng=AREA_ALL, iou_fn=pair_iou, ties: str = "last",
                prefer_unignored: bool = True):
    """Greedy COCO matching for one chunk of images.

    Returns ``(keep, matched, ignored, npig)``: ``keep`` int64 (M,) rows of ``dets`` kept
    (at most ``max_dets`` per image and category), in input order; ``matched`` and
    ``ignored`` bool (T, M) per IoU threshold; ``npig`` int64 (K,) non-ignored GT per
    category. ``iou_fn(det_boxes, gt_boxes, crowd)`` computes row-paired IoU (ILSVRC swaps
    in its +1-pixel variant). ``ties``: which of several GTs with the same best IoU a
    detection takes - ``"last"`` in GT order (COCOeval's ``>=`` scan) or ``"first"`` (the
    ILSVRC devkit's strict ``>``). ``prefer_unignored=False`` drops COCO's preference for
    non-ignored GTs (FGFA's motion evaluation takes the best GT whatever its bucket).
    """
    thrs = np.minimum(np.asarray(iou_thrs, np.float64), 1 - 1e-10)
    T = len(thrs)
    # ground truth: group key, ignore flag; sort by (key, ignore, file order) = COCOeval's gtind
    g_ign = gt.ignore | gt.crowd | (gt.area < area_rng[0]) | (gt.area > area_rng[1])
    npig = np.bincount(gt.cat[~g_ign], minlength=num_cats).astype(np.int64)
    g_key = gt.img * num_cats + gt.cat
    g_ord = np.lexsort((g_ign, g_key)) if prefer_unignored else np.argsort(g_key, kind="stable")
    g_key, g_ign = g_key[g_ord], g_ign[g_ord]
    g_box, g_crowd, g_id0 = gt.box[g_ord], gt.crowd[g_ord], gt.ann_id[g_ord] == 0
    g_thr = None if gt.thr is None else np.minimum(gt.thr[g_ord], 1 - 1e-10)

    # detections: rank within (image, category) by (score desc, file order); keep < max_dets
    d_key = dets.img * num_cats + dets.cat
    order = np.lexsort((-dets.score.astype(np.float64), d_key))
    starts, seg = _segments(d_key[order])
    rank_sorted = np.arange(len(order)) - starts[seg] if len(order) else np.zeros(0, np.int64)
    rank = np.empty(len(order), np.int64)
    rank[order] = rank_sorted
    keep = np.flatnonzero(rank < max_dets)
    d_key, rank = d_key[keep], rank[keep]
    M = len(keep)
    matched = np.zeros((T, M), bool)
    ignored = np.zeros((T, M), bool)

    # pairs (detection, GT of the same key) whose IoU reaches the lowest threshold
    lo = np.searchsorted(g_key, d_key, side="left")
    hi = np.searchsorted(g_key, d_key, side="right")
    cnt = hi - lo
    P = int(cnt.sum())
    if P:
        p_det = np.repeat(np.arange(M), cnt)
        first = np.cumsum(cnt) - cnt
        p_gt = lo[p_det] + (np.arange(P) - first[p_det])
        p_iou = iou_fn(dets.box[keep[p_det]], g_box[p_gt], g_crowd[p_gt])
        need = thrs.min() if g_thr is None else np.minimum(g_thr[p_gt], thrs.min())
        ok = p_iou >= need
        p_det, p_gt, p_iou = p_det[ok], p_gt[ok], p_iou[ok]
        _greedy(p_det, p_gt, p_iou, rank[p_det], thrs, g_thr, g_ign, g_crowd, g_id0, matched, ignored,
                len(g_key), ties == "first", prefer_unignored)

    d_area = dets.box[keep, 2].astype(np.float64) * dets.box[keep, 3]
    out = (d_area < area_rng[0]) | (d_area > area_rng[1])
    ignored |= ~matched & out[None, :]
    return keep, matched, ignored, npig


def _greedy(p_det, p_gt, p_iou, p_rank, thrs, g_thr, g_ign, g_crowd, g_id0, matched, ignored, n_gt, first,
            prefer_unignored=True):
    """Sequential greedy matching, vectorised over all (image, category) groups at once.

    Pairs are sorted by (detection, GT order). Step r handles every group's r-th detection;
    the state (which GT is taken at each threshold) carries between steps.
    """
    T = len(thrs)
    taken = np.zeros((T, n_gt), bool)
    by_rank = np.argsort(p_rank, kind="stable")
    bounds = np.searchsorted(p_rank[by_rank], np.arange(p_rank.max() + 2 if len(p_rank) else 1))
    cls_of_gt = np.where(g_ign & prefer_unignored, 1, 2).astype(np.int8)
    for r in range(len(bounds) - 1):
        idx = by_rank[bounds[r]:bounds[r + 1]]
        if len(idx) == 0:
            continue
        det, g, iou = p_det[idx], p_gt[idx], p_iou[idx]
        starts, seg = _segments(det)
        thr = thrs[:, None] if g_thr is None else g_thr[g][None, :]
        elig = (iou[None, :] >= thr) & (~taken[:, g] | g_crowd[g][None, :])     # (T, P_r)
        cls = np.where(elig, cls_of_gt[g][None, :], 0).astype(np.int8)
        best_cls = np.maximum.reduceat(cls, starts, axis=1)                      # (T, S)
        top = (cls == best_cls[:, seg]) & (cls > 0)
        val = np.where(top, iou[None, :], -1.0)
        best_iou = np.maximum.reduceat(val, starts, axis=1)
        at_best = top & (val == best_iou[:, seg])
        if first:  # lowest position among the best; none -> -1
            pos = np.where(at_best, np.arange(len(idx))[None, :], len(idx))
            best = np.minimum.reduceat(pos, starts, axis=1)
            best[best == len(idx)] = -1
        else:
            pos = np.where(at_best, np.arange(len(idx))[None, :], -1)
            best = np.maximum.reduceat(pos, starts, axis=1)                      # (T, S), -1 none
        t_i, s_i = np.nonzero(best >= 0)
        if len(t_i) == 0:
            continue
        bp = best[t_i, s_i]
        gg, dd = g[bp], det[bp]
        taken[t_i, gg] = True
        matched[t_i, dd] = ~g_id0[gg]
        ignored[t_i, dd] = g_ign[gg]


def accumulate(cat: np.ndarray, score: np.ndarray, matched: np.ndarray, ignored: np.ndarray,
               npig: np.ndarray, num_cats: int) -> np.ndarray:
    """COCOeval.accumulate for one area range and one maxDets.

    Inputs cover every kept detection, concatenated in (image id, per-image COCO order)
    order: ``cat`` int (M,), ``score`` float (M,), ``matched``/``ignored`` bool (T, M);
    ``npig`` int64 (K,). Returns ``precision`` float64 (T, R, K), -1 for categories without
    non-ignored GT (R = 101 recall thresholds).
    """
    T = matched.shape[0]
    precision = -np.ones((T, len(REC_THRS), num_cats))
    by_cat = np.argsort(cat, kind="stable")
    bounds = np.searchsorted(cat[by_cat], np.arange(num_cats + 1))
    for k in range(num_cats):
        if npig[k] == 0:
            continue
        rows = by_cat[bounds[k]:bounds[k + 1]]
        inds = np.argsort(-score[rows].astype(np.float64), kind="mergesort")
        rows = rows[inds]
        precision[:, :, k] = precision_table(matched[:, rows], ignored[:, rows], int(npig[k]))
    return precision


def precision_table(dtm: np.ndarray, dtig: np.ndarray, npig: int) -> np.ndarray:
    """101-point precision (T, R) of one category from score-sorted flags (T, D)."""
    tps = np.logical_and(dtm, np.logical_not(dtig))
    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
    nd = tp_sum.shape[1]
    out = np.zeros((tp_sum.shape[0], len(REC_THRS)))
    if nd == 0:
        return out
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(tp_sum.shape[0]):
        inds = np.searchsorted(rc[t], REC_THRS, side="left")
        ok = inds < nd
        out[t, ok] = pr[t, inds[ok]]
    return out


def summarize(precision: np.ndarray, iou_thrs=IOU_THRS) -> dict:
    """COCO summary numbers from ``precision`` (T, R, K).

    Returns ``{"ap": AP@[.5:.95], "ap50": AP@.5 (or NaN if .5 is not a threshold),
    "ap_per_class": (K,), "ap50_per_class": (K,)}``; -1 where nothing has GT, as COCOeval.
    """
    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) if len(s) else -1.0

    t50 = np.flatnonzero(np.isclose(iou_thrs, 0.5))
    K = precision.shape[2]
    ap_k = np.array([mean(precision[:, :, k]) for k in range(K)])
    ap50_k = (np.array([mean(precision[t50[0], :, k]) for k in range(K)]) if len(t50)
              else np.full(K, np.nan))
    return {"ap": mean(precision), "ap50": mean(precision[t50[0]]) if len(t50) else float("nan"),
            "ap_per_class": ap_k, "ap50_per_class": ap50_k}
