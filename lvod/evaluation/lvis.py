"""The LVIS / TAO federated protocol (REFERENCE section 8) on lvod's vectorised engine.

lvis-api 0.5.3 (``lvis`` on PyPI, ``LVISEval`` with ``iou_type="bbox"``) is the reference;
``tests/test_eval_lvis.py`` checks agreement to 1e-9 on LVIS v0.5 val cut to 100 images.
The rules, as lvod applies them:

1. At most 300 detections per image over all categories, the highest scores, ties in
   file order (:func:`lvod.evaluation.caps.top_per_image`; lvis-api applies it before
   anything else, so detections of unknown categories count towards the 300).
2. Federated filter (:func:`federate`): a detection of category c in image i is evaluated
   only if c has ground truth in i (any GT, ignored ones included) or c is in i's
   ``neg_category_ids``; otherwise it is dropped, never a false positive.
3. No cap per (image, category); matching is COCOeval's greedy matching on bbox IoU with
   no crowd: a GT flagged ``ignore`` (lvod's loader folds ``iscrowd`` into the same flag)
   is an ignored GT that can take one detection, with plain IoU.
4. Not-exhaustive: an unmatched detection of a category in the image's
   ``not_exhaustive_category_ids`` is ignored (:attr:`Prepared.d_unmatched_ignored`).
5. Four area ranges (all, small < 32^2, medium < 96^2, large), one matching pass each over
   shared pairs; 101-point precision as COCOeval; AP over .50:.95, AP50, AP75, APs/m/l on
   area all..large; APr/APc/APf: the mean per-class AP (area all) over the categories whose
   ``frequency`` is r / c / f (LVIS bins by training-image count).

The neg / not-exhaustive lists are :class:`~lvod.data.cocovid.CocoVid`'s per-image tuples
(the image's own, else its video's: TAO), so TAO and LVIS files go through the same code.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lvod.evaluation.engine import Prepared

AREA_RANGES = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
FREQUENCIES = ("r", "c", "f")
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _image_lists(gt, p: Prepared, lists) -> np.ndarray:
    """Sorted unique keys ``image index * K + category index`` of per-image id lists
    (``lists`` in ``gt``'s image row order; None or ids not in the categories: nothing)."""
    img_sorted = np.argsort(gt.img_ids, kind="stable")
    img_index = np.empty(len(img_sorted), np.int64)
    img_index[img_sorted] = np.arange(len(img_sorted))
    lens = np.array([0 if v is None else len(v) for v in lists], np.int64)
    if lens.sum() == 0:
        return np.zeros(0, np.int64)
    ids = np.fromiter((c for v in lists if v for c in v), np.int64, int(lens.sum()))
    img = np.repeat(img_index[: len(lists)], lens)
    cat = np.searchsorted(p.cat_ids, ids)
    known = (cat < p.num_cats) & (p.cat_ids[np.minimum(cat, p.num_cats - 1)] == ids)
    return np.unique(img[known] * p.num_cats + cat[known])


def federate(gt, p: Prepared) -> tuple[Prepared, int]:
    """Apply rules 2 and 4 to prepared detections: returns ``(p', dropped)`` where ``p'``
    keeps only the evaluated detections and flags not-exhaustive ones."""
    K = p.num_cats
    d_key = p.d_img * K + p.d_cat
    pos = np.unique(p.g_img * K + p.g_cat)
    neg = _image_lists(gt, p, gt.img_neg_cat_ids)
    nel = _image_lists(gt, p, gt.img_not_exhaustive_cat_ids)
    keep = np.isin(d_key, pos) | np.isin(d_key, neg)
    n_img = len(p.det_ptr) - 1
    d_img = p.d_img[keep]
    q = replace(
        p,
        d_rows=p.d_rows[keep],
        d_img=d_img,
        d_cat=p.d_cat[keep],
        det_ptr=np.concatenate([[0], np.cumsum(np.bincount(d_img, minlength=n_img))]),
        d_unmatched_ignored=np.isin(d_key[keep], nel),
    )
    return q, int((~keep).sum())


def passes() -> list:
    """``run_passes`` passes: one per area range, all IoU thresholds."""
    return [(None, None, rng) for rng in AREA_RANGES.values()]


def _mean(s: np.ndarray) -> float | None:
    s = s[s > -1]
    return float(np.mean(s)) if len(s) else None


def summarize(precisions: list, iou_thrs, frequencies=None) -> dict:
    """LVISEval's summary from the four (T, R, K) precision tables (area order of
    :data:`AREA_RANGES`); ``frequencies``: per category "r"/"c"/"f" or None (then
    APr/APc/APf are None). Undefined values (nothing with GT) are None."""
    iou_thrs = np.asarray(iou_thrs, np.float64)
    pa = precisions[0]
    out = {
        "AP": _mean(pa),
        "AP50": _mean(pa[iou_thrs == 0.5]),
        "AP75": _mean(pa[iou_thrs == 0.75]),
        "APs": _mean(precisions[1]),
        "APm": _mean(precisions[2]),
        "APl": _mean(precisions[3]),
    }
    for f in FREQUENCIES:
        out[f"AP{f}"] = None
        if frequencies is not None:
            cols = [k for k, v in enumerate(frequencies) if v == f]
            out[f"AP{f}"] = _mean(pa[:, :, cols])
    return out


def category_frequencies(gt, cat_ids) -> list | None:
    """Per category of ``cat_ids`` its ``frequency`` ("r"/"c"/"f"), or None unless every
    category of ``gt`` carries one."""
    cats = {int(c["id"]): c for c in getattr(gt, "categories", None) or []}
    freq = [cats.get(int(c), {}).get("frequency") for c in cat_ids]
    return freq if freq and all(f in FREQUENCIES for f in freq) else None
