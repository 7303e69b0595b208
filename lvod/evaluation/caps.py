"""Detection caps of the long-tail protocols (REFERENCE section 8), as pure functions on
:class:`~lvod.evaluation.results.Detections`.

- :func:`top_per_image`: the LVIS rule, at most ``n`` (300) detections per image across
  categories, the highest scores (lvis-api's ``limit_dets_per_image``: a stable sort by
  descending score, so ties keep file order).
- :func:`top_per_class`: AP-fixed (Dave et al. 2021), no per-image cap and at most ``n``
  (10,000) detections per category over the whole set, the highest scores (ties: file
  order).

Both return the kept rows in their original file order, so the evaluator's tie-breaking
(image id, then file order) is unchanged.
"""

from __future__ import annotations

import numpy as np

from lvod.evaluation.results import Detections

AP_FIXED_PER_CLASS = 10_000
LVIS_PER_IMAGE = 300


def _top_per_key(key: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """Sorted row indices keeping, per value of ``key``, the ``n`` highest ``score`` s."""
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    order = order[np.argsort(key[order], kind="stable")]  # by key, then score desc, then file order
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    rank = np.arange(len(k)) - np.repeat(starts, np.diff(np.r_[starts, len(k)]))
    return np.sort(order[rank < n])


def subset(dets: Detections, rows: np.ndarray) -> Detections:
    return Detections(dets.image_id[rows], dets.category_id[rows], dets.bbox[rows], dets.score[rows])


def top_per_image(dets: Detections, n: int = LVIS_PER_IMAGE) -> Detections:
    """At most ``n`` detections per image (all categories together), the highest scores."""
    if len(dets) == 0:
        return dets
    return subset(dets, _top_per_key(dets.image_id, dets.score, n))


def top_per_class(dets: Detections, n: int = AP_FIXED_PER_CLASS) -> Detections:
    """At most ``n`` detections per category over the whole set, the highest scores."""
    if len(dets) == 0:
        return dets
    return subset(dets, _top_per_key(dets.category_id, dets.score, n))
