"""Chunked evaluation driver: ground truth + detection columns -> per-class AP tables.

:func:`prepare` turns a ``CocoVid`` (or any object with the same columns) and
:class:`~lvod.evaluation.results.Detections` into index arrays once; :func:`run_protocol`
matches chunk by chunk (chunks of consecutive images in ascending image-id order, at most
``chunk_dets`` detections each, so memory stays bounded) and accumulates per category.

Protocols:
- ``"coco"``: pycocotools' COCOeval (bbox, area all, maxDets 100); thresholds .50:.05:.95.
- ``"ilsvrc"``: the ImageNet VID devkit (see :mod:`lvod.evaluation.ilsvrc`), one threshold.
- ``"lvis"``: lvis-api 0.5.3's LVISEval (bbox; see :mod:`lvod.evaluation.lvis`): no
  per-(image, category) cap, no crowd (a GT flagged ``ignore``/``iscrowd`` is an ignored GT
  that takes one detection at most), unmatched detections flagged in
  :attr:`Prepared.d_unmatched_ignored` (not-exhaustive categories) ignored.

Backends (who matches detections to GT inside a chunk; accumulation is always lvod's):
- ``"lvod"`` (default): :mod:`lvod.evaluation.coco`'s vectorised matcher, 0.8-1.9 s per
  million detections here - the one that meets 120 s for VID val's 17.6 M detections.
- ``"pycocotools"``: the library's own ``COCOeval.evaluate`` per chunk
  (:mod:`lvod.evaluation.library`), 24-37 s per million detections; COCO protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvod.errors import DataError
from lvod.evaluation import coco, ilsvrc, library

BACKENDS = ("lvod", "pycocotools")
# Detections per chunk of images, the default of each backend: one knob (the memory a
# chunk may take) with one value per backend, because their memory per detection differs:
# lvod's matcher keeps a few numpy columns per detection, pycocotools a dict per detection
# (~3 GB per million; 250 k keeps a chunk well under 1 GB, see lvod.evaluation.library).
CHUNK_DETS = {"lvod": 2_000_000, "pycocotools": 250_000}


@dataclass
class Prepared:
    """Index arrays shared by every pass.

    GT (A rows, file order): ``g_img`` image index (ascending image id), ``g_cat`` category
    index, ``g_box`` float64 (A, 4) xywh, ``g_area``, ``g_crowd``, ``g_ann_id``,
    ``g_thr`` (ILSVRC per-object threshold), ``g_excl`` bool (A,) GT on frames the protocol
    does not score; ``g_order`` rows sorted by image (stable). Detections: ``d_rows`` rows
    of ``dets`` sorted by image (stable; dropped rows left out), ``d_img``/``d_cat`` for
    those rows. ``img_ptr``/``det_ptr`` (I+1,) CSR offsets by image index.
    ``num_cats``, ``cat_ids``, ``dropped_unknown_category``, ``img_ids`` (I,) ascending
    image ids (image index -> id).
    """

    num_cats: int
    cat_ids: np.ndarray
    g_img: np.ndarray
    g_cat: np.ndarray
    g_box: np.ndarray
    g_area: np.ndarray
    g_crowd: np.ndarray
    g_ann_id: np.ndarray
    g_thr: np.ndarray
    g_order: np.ndarray
    img_ptr: np.ndarray
    d_rows: np.ndarray
    d_img: np.ndarray
    d_cat: np.ndarray
    det_ptr: np.ndarray
    img_excluded: np.ndarray
    dropped_unknown_category: int
    img_ids: np.ndarray | None = None
    # lvis: bool (len(d_rows),), an unmatched detection here is ignored (not a false positive)
    d_unmatched_ignored: np.ndarray | None = None


def prepare(gt, dets, *, results_file="<detections>") -> Prepared:
    """Map image and category ids of ``gt`` (CocoVid) and ``dets`` to dense indices."""
    img_sorted = np.argsort(gt.img_ids, kind="stable")
    sorted_ids = gt.img_ids[img_sorted]
    img_index = np.empty(len(img_sorted), np.int64)
    img_index[img_sorted] = np.arange(len(img_sorted))
    n_img = len(sorted_ids)
    cat_ids = np.asarray(gt.cat_ids, np.int64)
    g_img = img_index[gt.ann_image_idx]
    g_cat = np.searchsorted(cat_ids, gt.ann_cat_ids)
    g_order = np.argsort(g_img, kind="stable")
    img_ptr = np.concatenate([[0], np.cumsum(np.bincount(g_img, minlength=n_img))])

    d_img = np.searchsorted(sorted_ids, dets.image_id)
    bad = (
        (d_img >= n_img) | (sorted_ids[np.minimum(d_img, n_img - 1)] != dets.image_id)
        if n_img
        else np.ones(len(dets), bool)
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            results_file,
            f"detection {i}",
            f"{int(bad.sum())} detections name image ids not in the "
            f"ground truth (first: image_id {int(dets.image_id[i])})",
            "evaluate against the annotation file the detections were made for",
        )
    d_cat = np.searchsorted(cat_ids, dets.category_id)
    known = (d_cat < len(cat_ids)) & (cat_ids[np.minimum(d_cat, len(cat_ids) - 1)] == dets.category_id)
    rows = np.flatnonzero(known)
    rows = rows[np.argsort(d_img[rows], kind="stable")]
    det_ptr = np.concatenate([[0], np.cumsum(np.bincount(d_img[rows], minlength=n_img))])
    box = np.asarray(gt.ann_boxes, np.float64)
    w, h = box[:, 2] + 1.0, box[:, 3] + 1.0
    generated = np.asarray(getattr(gt, "ann_generated", np.zeros(len(box), bool)), bool)
    # ILSVRC: a frame whose boxes are all generated (interpolated) is not scored
    n_gen = np.bincount(g_img[generated], minlength=n_img)
    n_all = np.bincount(g_img, minlength=n_img)
    return Prepared(
        num_cats=len(cat_ids),
        cat_ids=cat_ids,
        g_img=g_img,
        g_cat=g_cat,
        g_box=box,
        g_area=np.asarray(gt.ann_area, np.float64),
        g_crowd=np.asarray(gt.ann_iscrowd, bool),
        g_ann_id=np.asarray(gt.ann_ids, np.int64),
        g_thr=ilsvrc.small_object_thr(w, h),
        g_order=g_order,
        img_ptr=img_ptr,
        d_rows=rows,
        d_img=d_img[rows],
        d_cat=d_cat[rows],
        det_ptr=det_ptr,
        img_excluded=(n_all > 0) & (n_gen == n_all),
        dropped_unknown_category=int(len(dets) - len(rows)),
        img_ids=np.asarray(sorted_ids, np.int64),
    )


def _chunks(det_ptr: np.ndarray, chunk_dets: int):
    """Consecutive image ranges [i0, i1) holding about ``chunk_dets`` detections each."""
    n_img = len(det_ptr) - 1
    i0 = 0
    while i0 < n_img:
        i1 = int(np.searchsorted(det_ptr, det_ptr[i0] + chunk_dets, side="right")) - 1
        i1 = min(max(i1, i0 + 1), n_img)
        yield i0, i1
        i0 = i1


def run_protocol(
    p: Prepared,
    dets,
    *,
    protocol="coco",
    gt_ignore=None,
    iou_thrs=None,
    max_dets=100,
    chunk_dets: int | None = None,
    backend="lvod",
) -> dict:
    """One pass of :func:`run_passes`."""
    return run_passes(
        p, dets, [(gt_ignore, iou_thrs)], protocol=protocol, max_dets=max_dets, chunk_dets=chunk_dets, backend=backend
    )[0]


def check_backend(backend: str, protocol: str) -> None:
    """Raise ``ValueError`` for an unknown backend or one that cannot run ``protocol``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "pycocotools" and protocol != "coco":
        why = (
            "ILSVRC devkit matching and +1-pixel IoU"
            if protocol == "ilsvrc"
            else "federated negative / not-exhaustive rules"
        )
        raise ValueError(
            f"backend 'pycocotools' runs COCOeval, which has no {protocol!r} protocol ({why}); "
            "use backend='lvod' for it"
        )


def run_passes(
    p: Prepared,
    dets,
    passes,
    *,
    protocol="coco",
    max_dets=100,
    chunk_dets: int | None = None,
    backend="lvod",
    keep_matches: bool = False,
) -> list:
    """Match and accumulate several passes that differ only in GT ignore flags / thresholds.

    ``passes``: list of ``(gt_ignore bool (A,) or None, iou_thrs or None)``, optionally with
    a third item ``area_rng`` (lo, hi) (default all areas; the lvod backend only);
    ``gt_ignore`` marks extra ignore regions (motion buckets). Detection ranking, pairs and IoU are
    computed once per chunk and shared. ``backend``: who matches within a chunk (module
    docstring); ``"pycocotools"`` shares the chunk's ``COCO`` objects between passes instead.
    ``chunk_dets``: detections per chunk (None: the backend's :data:`CHUNK_DETS`).
    Returns per pass ``{"precision": (T, R, K)`` (coco) or ``"ap_voc": (K,)`` (ilsvrc),
    ``"npig": (K,), "iou_thrs": (T,)}``. ``keep_matches`` adds what the bootstrap
    (:mod:`lvod.evaluation.bootstrap`) resamples: ``"matched"``/``"ignored"`` bool (T, M)
    per kept detection, and, shared by all passes, ``"order"``/``"bounds"``
    (``coco.score_order``) and ``"det_img"`` (M,) image index of each kept detection.
    """
    if protocol not in ("coco", "ilsvrc", "lvis"):
        raise ValueError(f"protocol {protocol!r}: use 'coco', 'ilsvrc' or 'lvis'")
    check_backend(backend, protocol)
    if chunk_dets is None:
        chunk_dets = CHUNK_DETS[backend]
    il = protocol == "ilsvrc"
    default = [0.5] if il else coco.IOU_THRS
    lv = protocol == "lvis"
    thrs = [np.asarray(q[1] if q[1] is not None else default, np.float64) for q in passes]
    extras = [np.zeros(len(p.g_img), bool) if q[0] is None else np.asarray(q[0], bool) for q in passes]
    areas = [q[2] if len(q) > 2 and q[2] is not None else coco.AREA_ALL for q in passes]
    if lv:  # no crowd: a GT flagged crowd/ignore is an ignored GT like any other
        extras = [x | p.g_crowd for x in extras]
    if backend == "pycocotools" and any(a != coco.AREA_ALL for a in areas):
        raise ValueError("area ranges per pass need backend='lvod'")
    if il and any(len(t) != 1 for t in thrs):
        raise ValueError("the ilsvrc protocol has one IoU threshold per object; pass iou_thrs=None or [0.5]")
    min_iou = float(min(t.min() for t in thrs))
    cats, scores, imgs = [], [], []
    flags = [([], []) for _ in passes]
    npig = [np.zeros(p.num_cats, np.int64) for _ in passes]
    for i0, i1 in _chunks(p.det_ptr, chunk_dets):
        g = p.g_order[p.img_ptr[i0] : p.img_ptr[i1]]
        d = slice(p.det_ptr[i0], p.det_ptr[i1])
        rows = p.d_rows[d]
        cg = coco.ChunkGT(
            img=p.g_img[g],
            cat=p.g_cat[g],
            box=p.g_box[g],
            area=p.g_area[g],
            crowd=np.zeros(len(g), bool) if lv else p.g_crowd[g],
            ignore=extras[0][g],
            ann_id=p.g_ann_id[g],
            thr=p.g_thr[g] if il else None,
        )
        cd = coco.ChunkDets(img=p.d_img[d], cat=p.d_cat[d], box=dets.bbox[rows], score=dets.score[rows])
        if backend == "pycocotools":
            lib_passes = [(x[g], t) for x, t in zip(extras, thrs)]
            res = library.match_chunk_passes(cg, cd, p.img_ids, p.cat_ids, lib_passes, max_dets=max_dets)
            cats.append(cd.cat[res[0][0]])
            scores.append(cd.score[res[0][0]])
            imgs.append(cd.img[res[0][0]])
            for j, (keep, m, ig, n) in enumerate(res):
                if not np.array_equal(keep, res[0][0]):
                    raise RuntimeError("COCOeval kept different detections in two passes of one chunk")
                flags[j][0].append(m)
                flags[j][1].append(ig)
                npig[j] += n
            continue
        kept = None
        if il:
            kept = ~p.img_excluded[cg.img]
            cg, cd = ilsvrc.drop_unscored(cg, cd, p.img_excluded)
        cp = coco.chunk_pairs(
            cg,
            cd,
            p.num_cats,
            max_dets=np.iinfo(np.int64).max if il or lv else max_dets,
            min_iou=min_iou,
            iou_fn=ilsvrc.pair_iou_plus1 if il else coco.pair_iou,
        )
        cats.append(cd.cat[cp.keep])
        scores.append(cd.score[cp.keep])
        imgs.append(cd.img[cp.keep])
        unmatched_ignored = None
        if p.d_unmatched_ignored is not None:
            unmatched_ignored = p.d_unmatched_ignored[d][cp.keep]
        for j, (extra, t, a) in enumerate(zip(extras, thrs, areas)):
            cg.ignore = extra[g][kept] if il else extra[g]
            m, ig, n = coco.greedy_pass(
                cp,
                cg,
                p.num_cats,
                iou_thrs=t,
                area_rng=a,
                ties="first" if il else "last",
                prefer_unignored=not il,
                unmatched_ignored=unmatched_ignored,
            )
            flags[j][0].append(m)
            flags[j][1].append(ig)
            npig[j] += n
    cat = np.concatenate(cats) if cats else np.zeros(0, np.int64)
    score = np.concatenate(scores) if scores else np.zeros(0)
    order, bounds = coco.score_order(cat, score, p.num_cats)
    det_img = np.concatenate(imgs) if imgs else np.zeros(0, np.int64)
    out = []
    for j, t in enumerate(thrs):
        m = np.concatenate(flags[j][0], axis=1) if cats else np.zeros((len(t), 0), bool)
        ig = np.concatenate(flags[j][1], axis=1) if cats else np.zeros((len(t), 0), bool)
        flags[j] = None  # free as we go
        res = {"npig": npig[j], "iou_thrs": t}
        if keep_matches:
            res.update(matched=m, ignored=ig, order=order, bounds=bounds, det_img=det_img)
        if il:
            res["ap_voc"] = ilsvrc.accumulate_voc(order, bounds, m[0], ig[0], npig[j])
        else:
            res["precision"] = coco.accumulate(order, bounds, m, ig, npig[j])
        out.append(res)
    return out
