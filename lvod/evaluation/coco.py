"""COCO bbox AP, exactly as pycocotools' COCOeval computes it, on columns and in chunks.

Why not call pycocotools (or faster-coco-eval) directly: both build one Python dict per
detection and loop in Python (or keep all per-image results) per (image, category); on
ImageNet VID val with 100 detections per frame (17.6 M detections) that needs more than
24 GB and 20 minutes (see benchmarks/README.md). Run per chunk of images, pycocotools'
own COCOeval fits in memory (that is the ``backend="pycocotools"`` of
:mod:`lvod.evaluation.library`, kept as the cross-check), but its per-detection Python
loops cost 24-37 s per million detections on the development machine (7-11 minutes for
VID val, ~4x that with the three motion-bucket passes), against 0.8-1.9 s per million
here; the target is 120 s. So the default matches with this module, which must and does
give COCOeval's per-detection flags bit for bit. COCO AP decomposes, so lvod does:

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

Where lvod's input differs from what pycocotools reads, the numbers can differ: the
``CocoVid`` loader treats ``ignore: true`` as crowd (pycocotools' bbox mode looks only at
``iscrowd``) and repairs defective files (drops empty boxes, clips boxes to the image) and
says so in its load report.

The matching is vectorised over "pairs" (detection, GT of the same image and category)
whose IoU reaches the lowest threshold; the greedy order is kept by stepping over the
detection rank within (image, category) - at most ``max_dets`` steps per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_ALL = (0.0, 1e5**2)


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


@dataclass
class ChunkPairs:
    """What every pass over a chunk shares: the kept detections and their candidate pairs.

    ``keep`` int64 (M,) rows of the chunk's detections kept (at most ``max_dets`` per image
    and category), in input order; ``rank`` int64 (M,) their rank in (score desc, file
    order) within (image, category); ``det_area`` float64 (M,); pairs (P,): ``p_det`` (row
    of ``keep``), ``p_gt`` (GT row of the chunk), ``p_iou`` float64, only pairs of the same
    image and category whose IoU reaches ``min_iou`` (or the GT's own lower threshold).
    """

    keep: np.ndarray
    rank: np.ndarray
    det_area: np.ndarray
    p_det: np.ndarray
    p_gt: np.ndarray
    p_iou: np.ndarray


def chunk_pairs(
    gt: ChunkGT, dets: ChunkDets, num_cats: int, *, max_dets: int = 100, min_iou: float = 0.5, iou_fn=pair_iou
) -> ChunkPairs:
    """Rank detections per (image, category), cap at ``max_dets``, list candidate pairs.

    ``iou_fn(det_boxes, gt_boxes, crowd)`` computes row-paired IoU (ILSVRC swaps in its
    +1-pixel variant).
    """
    d_key = dets.img * num_cats + dets.cat
    order = np.lexsort((-dets.score.astype(np.float64), d_key))
    starts, seg = _segments(d_key[order])
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - starts[seg] if len(order) else 0
    keep = np.flatnonzero(rank < max_dets)
    d_key, rank = d_key[keep], rank[keep]
    g_key = gt.img * num_cats + gt.cat
    g_sorted = np.argsort(g_key, kind="stable")
    sk = g_key[g_sorted]
    lo = np.searchsorted(sk, d_key, side="left")
    cnt = np.searchsorted(sk, d_key, side="right") - lo
    P = int(cnt.sum())
    p_det = np.repeat(np.arange(len(keep)), cnt)
    p_gt = g_sorted[lo[p_det] + (np.arange(P) - (np.cumsum(cnt) - cnt)[p_det])]
    p_iou = iou_fn(dets.box[keep[p_det]], gt.box[p_gt], gt.crowd[p_gt])
    need = min_iou if gt.thr is None else np.minimum(gt.thr[p_gt], min_iou)
    ok = p_iou >= need
    det_area = dets.box[keep, 2].astype(np.float64) * dets.box[keep, 3]
    return ChunkPairs(keep, rank, det_area, p_det[ok], p_gt[ok], p_iou[ok])


def greedy_pass(
    cp: ChunkPairs,
    gt: ChunkGT,
    num_cats: int,
    *,
    iou_thrs=IOU_THRS,
    area_rng=AREA_ALL,
    ties: str = "last",
    prefer_unignored: bool = True,
    unmatched_ignored: np.ndarray | None = None,
):
    """Greedy COCO matching of one chunk for one set of GT ignore flags (``gt.ignore``).

    Returns ``(matched, ignored, npig)``: bool (T, M) per IoU threshold for the kept
    detections, and int64 (K,) non-ignored GT per category. ``ties``: which of several GTs
    with the same best IoU a detection takes - ``"last"`` in GT order (COCOeval's ``>=``
    scan) or ``"first"`` (the ILSVRC devkit's strict ``>``). ``prefer_unignored=False``
    drops COCO's preference for non-ignored GTs (FGFA's motion evaluation takes the best
    GT whatever its bucket). ``gt.thr`` (per-GT threshold) replaces ``iou_thrs`` (T = 1).
    ``unmatched_ignored``: bool (M,) or None, kept detections that are ignored when they
    match nothing (LVIS: a category not exhaustively annotated in the detection's image).
    """
    thrs = np.minimum(np.asarray(iou_thrs, np.float64), 1 - 1e-10)
    T, M = len(thrs), len(cp.keep)
    g_ign = gt.ignore | gt.crowd | (gt.area < area_rng[0]) | (gt.area > area_rng[1])
    npig = np.bincount(gt.cat[~g_ign], minlength=num_cats).astype(np.int64)
    matched = np.zeros((T, M), bool)
    ignored = np.zeros((T, M), bool)
    if len(cp.p_det):
        # COCOeval scans a detection's GTs non-ignored first, then file order (gtind)
        g_pos = np.empty(len(g_ign), np.int64)
        g_pos[np.lexsort((g_ign,)) if prefer_unignored else np.arange(len(g_ign))] = np.arange(len(g_ign))
        o = np.lexsort((g_pos[cp.p_gt], cp.p_det))
        g_thr = None if gt.thr is None else np.minimum(gt.thr, 1 - 1e-10)
        _greedy(
            cp.p_det[o],
            cp.p_gt[o],
            cp.p_iou[o],
            cp.rank[cp.p_det[o]],
            thrs,
            g_thr,
            g_ign,
            gt.crowd,
            gt.ann_id == 0,
            matched,
            ignored,
            len(g_ign),
            ties == "first",
            prefer_unignored,
        )
    out = (cp.det_area < area_rng[0]) | (cp.det_area > area_rng[1])
    if unmatched_ignored is not None:
        out = out | np.asarray(unmatched_ignored, bool)
    ignored |= ~matched & out[None, :]
    return matched, ignored, npig


def match_chunk(
    gt: ChunkGT,
    dets: ChunkDets,
    num_cats: int,
    *,
    iou_thrs=IOU_THRS,
    max_dets: int = 100,
    area_rng=AREA_ALL,
    iou_fn=pair_iou,
    ties: str = "last",
    prefer_unignored: bool = True,
):
    """:func:`chunk_pairs` then :func:`greedy_pass`; returns ``(keep, matched, ignored, npig)``."""
    cp = chunk_pairs(gt, dets, num_cats, max_dets=max_dets, min_iou=float(np.min(iou_thrs)), iou_fn=iou_fn)
    m, ig, npig = greedy_pass(
        cp, gt, num_cats, iou_thrs=iou_thrs, area_rng=area_rng, ties=ties, prefer_unignored=prefer_unignored
    )
    return cp.keep, m, ig, npig


def _greedy(
    p_det, p_gt, p_iou, p_rank, thrs, g_thr, g_ign, g_crowd, g_id0, matched, ignored, n_gt, first, prefer_unignored=True
):
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
        idx = by_rank[bounds[r] : bounds[r + 1]]
        if len(idx) == 0:
            continue
        det, g, iou = p_det[idx], p_gt[idx], p_iou[idx]
        starts, seg = _segments(det)
        thr = thrs[:, None] if g_thr is None else g_thr[g][None, :]
        elig = (iou[None, :] >= thr) & (~taken[:, g] | g_crowd[g][None, :])  # (T, P_r)
        cls = np.where(elig, cls_of_gt[g][None, :], 0).astype(np.int8)
        best_cls = np.maximum.reduceat(cls, starts, axis=1)  # (T, S)
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
            best = np.maximum.reduceat(pos, starts, axis=1)  # (T, S), -1 none
        t_i, s_i = np.nonzero(best >= 0)
        if len(t_i) == 0:
            continue
        bp = best[t_i, s_i]
        gg, dd = g[bp], det[bp]
        taken[t_i, gg] = True
        matched[t_i, dd] = ~g_id0[gg]
        ignored[t_i, dd] = g_ign[gg]


def score_order(cat: np.ndarray, score: np.ndarray, num_cats: int):
    """Rows grouped by category, each group by descending score, ties in input order.

    Input order must be (image id, per-image COCO order); then this is COCOeval's stable
    mergesort per category. Returns ``(order int64 (M,), bounds int64 (K+1,))``.
    """
    o = np.argsort(-np.asarray(score, np.float64), kind="stable")
    small = np.asarray(cat)[o].astype(np.int16 if num_cats < 2**15 else np.int64)
    o = o[np.argsort(small, kind="stable")]  # int16: radix sort
    bounds = np.searchsorted(np.asarray(cat)[o], np.arange(num_cats + 1))
    return o, bounds


def accumulate(
    order: np.ndarray, bounds: np.ndarray, matched: np.ndarray, ignored: np.ndarray, npig: np.ndarray
) -> np.ndarray:
    """COCOeval.accumulate for one area range and one maxDets.

    ``order``/``bounds`` from :func:`score_order`; ``matched``/``ignored`` bool (T, M) over
    the same rows; ``npig`` int64 (K,). Returns ``precision`` float64 (T, R, K), -1 for
    categories without non-ignored GT (R = 101 recall thresholds).
    """
    T, K = matched.shape[0], len(npig)
    precision = -np.ones((T, len(REC_THRS), K))
    for k in range(K):
        if npig[k] == 0:
            continue
        rows = order[bounds[k] : bounds[k + 1]]
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
    ap50_k = np.array([mean(precision[t50[0], :, k]) for k in range(K)]) if len(t50) else np.full(K, np.nan)
    return {
        "ap": mean(precision),
        "ap50": mean(precision[t50[0]]) if len(t50) else float("nan"),
        "ap_per_class": ap_k,
        "ap50_per_class": ap50_k,
    }
