"""Bootstrap over videos: an interval on every AP, from one matching pass.

Frames of one video are not independent, so the unit of resampling is the video
(REFERENCE section 8): a resample draws the val videos with replacement, and every metric
is recomputed on that multiset. Matching is per image, so it does not change under
resampling: only the multiplicity ``w_v`` of each video does. A resample is therefore the
same score-ordered detection list with each detection of video ``v`` counted ``w_v``
times, and the same ground truth with each box of ``v`` counted ``w_v`` times. This module
recomputes AP under such weights without matching again.

Reduction (exact). COCO's 101-point interpolated AP and the VOC/ILSVRC area under the
precision envelope depend only on the points of the precision-recall curve where recall
rises, i.e. the true positives: a false positive never lowers the recall at which a
threshold is read, and its precision is at most that of the true positive ranked just
above it, so it never raises the envelope. What a true positive needs from the false
positives is their weighted count above it. Per (pass, IoU threshold, category) a curve is
kept as:

- ``tp_video (m,)``: the video of each true positive, in score order;
- the false positives ranked above the last true positive, grouped by
  ``(segment, video)``: ``segment`` = the number of true positives ranked above them.

Under weights ``W (B, V)``: ``cum_tp = cumsum(W[:, tp_video])``, ``cum_fp =
cumsum(segment sums)``, then COCO's or VOC's arithmetic on those ``m`` points. The counts
are integers in float64, so each resample's AP equals, to rounding of the same operations,
what the evaluator gives on the resampled ground truth written out video by video (the
copies of a video next to each other); a test holds it to 1e-9. Where two *different*
detections of one image and category have exactly the same score, the written-out
resample interleaves their copies, which this module counts as one block each.

Intervals are 95 % percentile intervals over the resamples where a metric is defined (a
class whose videos were all left out of a resample has no AP there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from lvod.evaluation import coco

DEFAULT_RESAMPLES = 1000
LARGE_RESAMPLES = 200  # for val sets of LARGE_IMAGES frames and more (ImageNet VID val: 176k)
LARGE_IMAGES = 10_000
CI_LEVEL = 0.95


def default_resamples(num_images: int) -> int:
    """1,000 resamples under 10k frames; 200 at ImageNet VID val scale (see benchmarks)."""
    return DEFAULT_RESAMPLES if num_images < LARGE_IMAGES else LARGE_RESAMPLES


def video_weights(num_videos: int, resamples: int, seed: int) -> np.ndarray:
    """``(B, V)`` float64 multiplicities: ``B`` draws of ``V`` videos with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_videos, np.full(num_videos, 1.0 / num_videos), size=resamples).astype(np.float64)


@dataclass
class Curve:
    """The part of one precision-recall curve that AP depends on (module docstring)."""

    tp_video: np.ndarray  # int64 (m,)
    fp: sparse.csr_matrix  # (m, V): false-positive counts per (segment, video)


@dataclass
class MatchTable:
    """One evaluation's matching, kept for resampling.

    ``curves[j][t][k]``: pass ``j`` (0 = all objects, then the motion buckets), IoU
    threshold ``t``, category ``k``. ``npig[j]`` float64 (K, V): non-ignored GT boxes per
    category and video. ``protocol``: ``"coco"`` (101-point AP, T thresholds) or
    ``"ilsvrc"`` (VOC area, one threshold).
    """

    protocol: str
    num_videos: int
    iou_thrs: list
    npig: list
    curves: list = field(default_factory=list)


def reduce_curve(
    rows: np.ndarray, matched: np.ndarray, ignored: np.ndarray, det_video: np.ndarray, num_videos: int
) -> Curve:
    """One category's curve at one threshold. ``rows``: its detections in score order;
    ``matched``/``ignored`` bool over all detections; ``det_video`` their video index."""
    rows = rows[~ignored[rows]]
    tp = matched[rows]
    m = int(tp.sum())
    seg = np.cumsum(tp) - tp  # true positives ranked above each detection
    fp = ~tp & (seg < m)  # false positives below the last true positive change nothing
    counts = sparse.csr_matrix((np.ones(int(fp.sum())), (seg[fp], det_video[rows[fp]])), shape=(m, num_videos))
    counts.sum_duplicates()
    return Curve(tp_video=det_video[rows[tp]].astype(np.int64), fp=counts)


def build_table(
    protocol: str,
    order: np.ndarray,
    bounds: np.ndarray,
    passes: list,
    det_video: np.ndarray,
    gt_video: np.ndarray,
    gt_cat: np.ndarray,
    num_videos: int,
) -> MatchTable:
    """A :class:`MatchTable` from the engine's accumulation inputs.

    ``order``/``bounds``: ``coco.score_order`` of the kept detections; ``passes``: per pass
    ``(matched (T, M), ignored (T, M), gt_counted bool (A,), iou_thrs)`` where
    ``gt_counted`` marks the GT boxes in that pass's denominator; ``det_video (M,)``,
    ``gt_video (A,)``, ``gt_cat (A,)`` dense video / category indices.
    """
    num_cats = len(bounds) - 1
    table = MatchTable(protocol=protocol, num_videos=num_videos, iou_thrs=[], npig=[])
    for matched, ignored, counted, thrs in passes:
        npig = np.zeros((num_cats, num_videos))
        np.add.at(npig, (gt_cat[counted], gt_video[counted]), 1.0)
        table.npig.append(npig)
        table.iou_thrs.append(np.asarray(thrs, np.float64))
        table.curves.append(
            [
                [
                    reduce_curve(order[bounds[k] : bounds[k + 1]], matched[t], ignored[t], det_video, num_videos)
                    for k in range(num_cats)
                ]
                for t in range(matched.shape[0])
            ]
        )
    return table


def _coco_ap(cum_tp: np.ndarray, cum_fp: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """COCO's 101-point AP per row of ``(B, m)`` cumulative counts (``npig (B,) > 0``).

    COCOeval reads recall threshold ``r`` at ``searchsorted(rc, r, "left")`` and 0 past the
    last point: one search per row (cheap, ``101 log m``), then every row's precision is
    read and summed at once.
    """
    b, m = cum_tp.shape
    rc = cum_tp / npig[:, None]
    pr = cum_tp / (cum_fp + cum_tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    inds = np.empty((b, len(coco.REC_THRS)), np.int64)
    for i in range(b):
        inds[i] = np.searchsorted(rc[i], coco.REC_THRS, side="left")
    read = pr[np.arange(b)[:, None], np.minimum(inds, m - 1)]
    return np.where(inds < m, read, 0.0).sum(axis=1) / len(coco.REC_THRS)


def _voc_ap(cum_tp: np.ndarray, cum_fp: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """The ILSVRC devkit's area under the precision envelope per row (the devkit sums only
    where recall changes; the other steps have width 0 and add nothing)."""
    rec = cum_tp / npig[:, None]
    prec = cum_tp / np.maximum(cum_tp + cum_fp, np.finfo(np.float64).eps)
    b = len(npig)
    mrec = np.concatenate([np.zeros((b, 1)), rec, np.ones((b, 1))], axis=1)
    mpre = np.concatenate([np.zeros((b, 1)), prec, np.zeros((b, 1))], axis=1)
    mpre = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
    return ((mrec[:, 1:] - mrec[:, :-1]) * mpre[:, 1:]).sum(axis=1)


def curve_ap(curve: Curve, weights: np.ndarray, npig: np.ndarray, protocol: str) -> np.ndarray:
    """AP ``(B,)`` of one curve under video weights ``(B, V)``; NaN where ``npig`` is 0."""
    out = np.full(len(weights), np.nan)
    has_gt = npig > 0
    if not has_gt.any():
        return out
    w, n = weights[has_gt], npig[has_gt]
    if len(curve.tp_video) == 0:
        out[has_gt] = 0.0
        return out
    cum_tp = np.cumsum(w[:, curve.tp_video], axis=1)
    cum_fp = np.cumsum(np.asarray((curve.fp @ w.T).T), axis=1)
    out[has_gt] = (_coco_ap if protocol == "coco" else _voc_ap)(cum_tp, cum_fp, n)
    return out


def resample_class_aps(table: MatchTable, weights: np.ndarray) -> list[np.ndarray]:
    """Per pass: AP ``(B, T, K)`` under each resample's weights (NaN: class without GT)."""
    out = []
    for npig, curves in zip(table.npig, table.curves):
        n_w = weights @ npig.T  # (B, K)
        aps = np.stack(
            [
                np.stack([curve_ap(c, weights, n_w[:, k], table.protocol) for k, c in enumerate(per_t)], axis=1)
                for per_t in curves
            ],
            axis=1,
        )
        out.append(aps)
    return out


def nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring NaN; NaN where every value is NaN (no warning)."""
    ok = ~np.isnan(x)
    n = ok.sum(axis=axis)
    s = np.where(ok, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def interval(samples: np.ndarray, level: float = CI_LEVEL) -> list | None:
    """``[lo, hi]`` percentile interval of the defined samples along axis 0, or None."""
    samples = np.asarray(samples, np.float64)
    ok = samples[~np.isnan(samples)]
    if len(ok) == 0:
        return None
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return [float(lo), float(hi)]
