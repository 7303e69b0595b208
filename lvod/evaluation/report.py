"""``evaluate`` (the metrics dict of ``lvod test`` / ``lvod eval``), group means, tables, files.

``metrics.json`` keys (values in 0..1; ``None`` where undefined):

- ``protocol``: ``"coco"``, ``"ilsvrc"`` or ``"lvis"``; ``backend``: ``"lvod"`` or ``"pycocotools"``.
- ``bbox_mAP_50``: mean AP@0.5 over classes with GT; ``bbox_mAP``: AP@[.5:.95] (COCO only).
- ``classwise``: list of ``{category_id, name, ap50, ap, num_gt}`` (``num_gt`` = non-crowd
  GT; ap values ``None`` for a class without GT).
- ``groups``: list of ``{group, bin, basis, category_ids, ap50, ap, num_classes_with_gt}``:
  the mean over the group's classes that have GT (classes without GT are left out, never
  counted as 0). ``group`` is the readable name (``rare``/``common``/``frequent`` for a
  three-group table, else ``g1..gk``), ``bin`` the count bin (``'[0, 90)'``) and ``basis``
  what was counted (``instances`` or ``images``); both None for a plain ``{name: ids}``
  mapping. :func:`group_label` is what tables show.
- ``motion``: ``{slow, medium, fast}`` AP@0.5 (mean over classes with GT in the bucket)
  plus ``motion_counts`` (GT objects per bucket, and ``unknown``) and ``motion_source``;
  ``None`` when the ground truth has no tracks and no motion file was given.
- ``num_images``, ``num_detections``, ``dropped_unknown_category``.
- lvis protocol only (:mod:`lvod.evaluation.lvis`): ``lvis``: ``{AP, AP50, AP75, APs, APm,
  APl, APr, APc, APf}`` (APr/c/f ``None`` unless the categories carry ``frequency``),
  ``lvis_per_image`` (the cap applied), ``dropped_per_image_cap`` and
  ``dropped_federated`` (detections of categories neither in the image's GT nor in its
  negative list); ``motion`` is not computed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import time
from pathlib import Path

import numpy as np

from lvod.evaluation import bootstrap as bs
from lvod.evaluation import coco, motion
from lvod.evaluation import lvis as lvis_rules
from lvod.evaluation.caps import AP_FIXED_PER_CLASS, LVIS_PER_IMAGE, top_per_class, top_per_image
from lvod.evaluation.engine import check_backend, prepare, run_passes
from lvod.io import atomic_write, save_json


def resolve_groups(groups, cat_ids) -> list:
    """Normalise ``groups`` to ``[(name, [category ids], bin, basis)]``.

    Accepts None, a ``lvod.groups.GroupTable``, a path to a groups JSON
    (``lvod.bags_io.load_groups``), or a mapping ``{name: [category ids]}`` (bin and basis
    None).
    """
    if groups is None:
        return []
    if isinstance(groups, (str, Path)):
        from lvod.bags_io import load_groups

        groups = load_groups(groups)
    if hasattr(groups, "groups") and hasattr(groups, "group_bins"):
        return [
            (str(n), [int(c) for c in g], b, groups.basis)
            for n, g, b in zip(groups.group_names, groups.groups, groups.group_bins)
        ]
    if isinstance(groups, dict):
        return [(str(n), [int(c) for c in g], None, None) for n, g in groups.items()]
    raise TypeError(f"groups: expected a GroupTable, a path or a dict, got {type(groups).__name__}")


def group_label(entry: dict) -> str:
    """How tables and plots name a ``groups`` entry: ``'rare [0, 90)'`` (name and count bin),
    or the name alone when there is no bin."""
    b = entry.get("bin")
    return f"{entry['group']} {b}" if b else str(entry["group"])


def group_means(cat_ids, ap50, ap, groups) -> list:
    """Per group: mean AP50 / AP over member classes whose value is defined (not None/-1/NaN).

    ``groups``: :func:`resolve_groups`' ``(name, members, bin, basis)``, or ``(name, members)``."""
    index = {int(c): i for i, c in enumerate(cat_ids)}
    out = []
    for name, members, *more in groups:
        bin_, basis = (*more, None, None)[:2]
        rows = [index[c] for c in members if c in index]

        def mean(values, rows=rows):
            vals = [values[i] for i in rows if values is not None and _defined(values[i])]
            return float(np.mean(vals)) if vals else None

        n = sum(1 for i in rows if _defined(ap50[i]))
        out.append(
            {
                "group": name,
                "bin": bin_,
                "basis": basis,
                "category_ids": list(members),
                "ap50": mean(ap50),
                "ap": mean(ap),
                "num_classes_with_gt": n,
            }
        )
    return out


def _defined(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v > -1


def _class_aps(res: dict, protocol: str):
    """(ap50 per class, ap per class or None) as lists with None where undefined."""
    if protocol == "coco":
        s = coco.summarize(res["precision"], res["iou_thrs"])
        return (
            [v if v > -1 else None for v in s["ap50_per_class"].tolist()],
            [v if v > -1 else None for v in s["ap_per_class"].tolist()],
            s,
        )
    return [v if v > -1 else None for v in res["ap_voc"].tolist()], None, None


def evaluate(
    gt,
    dets,
    *,
    groups=None,
    protocol="coco",
    motion_iou=None,
    class_names=None,
    motion: bool = True,
    max_dets: int = 100,
    chunk_dets: int | None = None,
    results_file="<detections>",
    backend: str = "lvod",
    bootstrap: int | str = 0,
    seed: int = 0,
    keep_samples: bool = False,
    ap_fixed: bool | int = False,
    per_image: int | None = None,
) -> dict:
    """Evaluate ``dets`` (``Detections``) against ``gt`` (``CocoVid``); returns the metrics dict.

    ``bootstrap=N`` (> 0; ``"auto"``: :func:`lvod.evaluation.bootstrap.default_resamples`
    of the number of frames) adds 95 % intervals from ``N`` resamples of the videos
    (:mod:`lvod.evaluation.bootstrap`, seeded by ``seed``): ``bbox_mAP_50_ci``,
    ``bbox_mAP_ci``, ``ap50_ci``/``ap_ci`` in every ``classwise`` and ``groups`` entry,
    ``motion_ci`` per bucket, and ``bootstrap`` (resamples, seed, level, unit, videos);
    ``keep_samples`` also keeps the per-resample values (``bootstrap["samples"]``, numpy
    arrays, not written to ``metrics.json``) for paired comparisons.

    ``ap_fixed`` adds ``ap_fixed`` (Dave et al. 2021, REFERENCE section 8): the same
    protocol without a per-image cap and with at most 10,000 detections per class over
    the set (an int: that cap instead): ``{"AP", "AP50", "per_class_cap", "classwise":
    [{category_id, name, ap50, ap}], "groups": [{group, ap50, ap}]}``.

    ``motion_iou``: None (from tracks when the GT has them), a path to FGFA's ``.mat``, or a
    float array (A,) per GT annotation (NaN = unknown). ``motion=False`` skips the buckets.
    ``groups``: GroupTable, groups JSON path or ``{name: [category ids]}``.
    ``backend``: ``"lvod"`` (own vectorised matcher, the full-scale default) or
    ``"pycocotools"`` (COCOeval per chunk of images; COCO protocol only, ~25x slower - see
    :mod:`lvod.evaluation.library`). ``chunk_dets``: detections per chunk (None: the
    backend's ``lvod.evaluation.engine.CHUNK_DETS``, 2 M for lvod, 250 k for pycocotools).

    ``protocol="lvis"``: the federated rules of :mod:`lvod.evaluation.lvis` (``max_dets`` and
    ``motion`` do not apply; ``per_image``: the per-image cap, None = 300, 0 = none, as in
    AP-fixed).
    """
    check_backend(backend, protocol)
    if bootstrap == "auto":
        bootstrap = bs.default_resamples(len(gt.img_ids))
    if protocol == "lvis":
        return _evaluate_lvis(
            gt,
            dets,
            groups=groups,
            class_names=class_names,
            chunk_dets=chunk_dets,
            results_file=results_file,
            bootstrap=bootstrap,
            seed=seed,
            keep_samples=keep_samples,
            ap_fixed=ap_fixed,
            per_image=per_image,
        )
    p = prepare(gt, dets, results_file=results_file)
    masks, mot = (
        _motion_masks(gt, p, motion_iou)
        if motion
        else ({}, {"motion": None, "motion_counts": None, "motion_source": "not requested"})
    )
    passes = [(None, None)] + [(~inside, [0.5]) for inside in masks.values()]
    results = run_passes(
        p,
        dets,
        passes,
        protocol=protocol,
        max_dets=max_dets,
        chunk_dets=chunk_dets,
        backend=backend,
        keep_matches=bootstrap > 0,
    )
    main = results[0]
    ap50, ap, summ = _class_aps(main, protocol)
    cat_ids = [int(c) for c in p.cat_ids]
    names = list(class_names) if class_names is not None else list(getattr(gt, "cat_names", map(str, cat_ids)))
    if protocol == "coco":
        m50, m = summ["ap50"], summ["ap"]
        m50, m = (m50 if m50 > -1 else None), (m if m > -1 else None)
    else:
        vals = [v for v in ap50 if v is not None]
        m50, m = (float(np.mean(vals)) if vals else None), None
    classwise = [
        {"category_id": c, "name": n, "ap50": a50, "ap": a, "num_gt": int(g)}
        for c, n, a50, a, g in zip(cat_ids, names, ap50, ap if ap else [None] * len(cat_ids), main["npig"])
    ]
    out = {
        "protocol": protocol,
        "backend": backend,
        "bbox_mAP_50": m50,
        "bbox_mAP": m,
        "classwise": classwise,
        "groups": group_means(cat_ids, ap50, ap, resolve_groups(groups, cat_ids)),
        "num_images": int(len(gt.img_ids)),
        "num_detections": int(len(dets)),
        "dropped_unknown_category": p.dropped_unknown_category,
    }
    out.update(mot)
    if masks:
        out["motion"] = {}
        for name, res in zip(masks, results[1:]):
            a50, _, summ = _class_aps(res, protocol)
            if protocol == "coco":
                out["motion"][name] = summ["ap50"] if summ["ap50"] > -1 else None
            else:
                vals = [v for v in a50 if v is not None]
                out["motion"][name] = float(np.mean(vals)) if vals else None
    out["ground_truth"] = ground_truth_id(gt)
    if ap_fixed:
        cap = AP_FIXED_PER_CLASS if ap_fixed is True else int(ap_fixed)
        fixed = evaluate(
            gt,
            top_per_class(dets, cap),
            groups=groups,
            protocol=protocol,
            class_names=names,
            motion=False,
            max_dets=np.iinfo(np.int64).max,
            chunk_dets=chunk_dets,
            results_file=results_file,
            backend=backend,
        )
        out["ap_fixed"] = ap_fixed_entry(fixed, cap)
    if bootstrap > 0:
        add_intervals(out, gt, p, [x for x, _ in passes], results, protocol, bootstrap, seed, keep_samples)
    return out


def _evaluate_lvis(
    gt, dets, *, groups, class_names, chunk_dets, results_file, bootstrap, seed, keep_samples, ap_fixed, per_image
) -> dict:
    """:func:`evaluate` for ``protocol="lvis"`` (lvis-api 0.5.3's LVISEval, bbox)."""
    cap = LVIS_PER_IMAGE if per_image is None else int(per_image)
    capped = top_per_image(dets, cap) if cap > 0 else dets
    p0 = prepare(gt, capped, results_file=results_file)
    p, dropped = lvis_rules.federate(gt, p0)
    results = run_passes(
        p, capped, lvis_rules.passes(), protocol="lvis", chunk_dets=chunk_dets, keep_matches=bootstrap > 0
    )
    main = results[0]
    ap50, ap, summ = _class_aps(main, "coco")
    cat_ids = [int(c) for c in p.cat_ids]
    names = list(class_names) if class_names is not None else list(getattr(gt, "cat_names", map(str, cat_ids)))
    summary = lvis_rules.summarize(
        [r["precision"] for r in results], main["iou_thrs"], lvis_rules.category_frequencies(gt, cat_ids)
    )
    out = {
        "protocol": "lvis",
        "backend": "lvod",
        "bbox_mAP_50": summary["AP50"],
        "bbox_mAP": summary["AP"],
        "lvis": summary,
        "classwise": [
            {"category_id": c, "name": n, "ap50": a50, "ap": a, "num_gt": int(g)}
            for c, n, a50, a, g in zip(cat_ids, names, ap50, ap, main["npig"])
        ],
        "groups": group_means(cat_ids, ap50, ap, resolve_groups(groups, cat_ids)),
        "num_images": int(len(gt.img_ids)),
        "num_detections": int(len(dets)),
        "dropped_unknown_category": p0.dropped_unknown_category,
        "lvis_per_image": cap if cap > 0 else None,
        "dropped_per_image_cap": int(len(dets) - len(capped)),
        "dropped_federated": dropped,
        "motion": None,
        "motion_counts": None,
        "motion_source": "not used by the lvis protocol (images, not videos)",
        "ground_truth": ground_truth_id(gt),
    }
    if ap_fixed:
        fixed_cap = AP_FIXED_PER_CLASS if ap_fixed is True else int(ap_fixed)
        fixed = _evaluate_lvis(
            gt,
            top_per_class(dets, fixed_cap),
            groups=groups,
            class_names=names,
            chunk_dets=chunk_dets,
            results_file=results_file,
            bootstrap=0,
            seed=seed,
            keep_samples=False,
            ap_fixed=False,
            per_image=0,
        )
        out["ap_fixed"] = {**ap_fixed_entry(fixed, fixed_cap), "lvis": fixed["lvis"]}
    if bootstrap > 0:
        # intervals on the area-all pass; its flags are COCO-shaped (101-point AP)
        add_intervals(out, gt, p, [None], [main], "coco", bootstrap, seed, keep_samples)
    return out


def ap_fixed_entry(fixed: dict, cap: int) -> dict:
    """The ``ap_fixed`` entry of a metrics dict from the evaluation of the capped detections."""
    return {
        "AP": fixed["bbox_mAP"],
        "AP50": fixed["bbox_mAP_50"],
        "per_class_cap": cap,
        "classwise": [{k: c[k] for k in ("category_id", "name", "ap50", "ap")} for c in fixed["classwise"]],
        "groups": [{k: g[k] for k in ("group", "bin", "ap50", "ap")} for g in fixed["groups"]],
    }


def ground_truth_id(gt) -> dict:
    """``{"file", "fingerprint"}``: the annotation file and a hash of what is scored (image,
    annotation and category ids, boxes, crowd flags), so runs on other files are told apart."""
    h = hashlib.sha256()
    for column in (gt.img_ids, gt.cat_ids, gt.ann_ids, gt.ann_image_idx, gt.ann_cat_ids, gt.ann_boxes, gt.ann_iscrowd):
        h.update(np.ascontiguousarray(column).tobytes())
    return {"file": str(getattr(gt, "path", "<in memory>")), "fingerprint": h.hexdigest()[:16]}


def add_intervals(out, gt, p, extras, results, protocol, resamples, seed, keep_samples) -> None:
    """Bootstrap intervals over videos into the metrics dict ``out`` (see :func:`evaluate`)."""
    t0 = time.perf_counter()
    by_id = np.argsort(gt.img_ids, kind="stable")  # image index (ascending id) -> row
    videos, video_of_img = np.unique(np.asarray(gt.img_video_ids)[by_id], return_inverse=True)
    base = p.g_crowd | (p.img_excluded[p.g_img] if protocol == "ilsvrc" else False)
    passes = []
    for extra, res in zip(extras, results):
        counted = ~(base | (False if extra is None else np.asarray(extra, bool)))
        if not np.array_equal(np.bincount(p.g_cat[counted], minlength=p.num_cats), res["npig"]):
            raise RuntimeError("lvod bug: the bootstrap's GT counts differ from the evaluator's")
        passes.append((res["matched"], res["ignored"], counted, res["iou_thrs"]))
    first = results[0]
    table = bs.build_table(
        protocol,
        first["order"],
        first["bounds"],
        passes,
        video_of_img[first["det_img"]],
        video_of_img[p.g_img],
        p.g_cat,
        len(videos),
    )
    weights = bs.video_weights(len(videos), resamples, seed)
    aps = bs.resample_class_aps(table, weights)  # per pass (B, T, K)
    t50 = int(np.flatnonzero(np.isclose(table.iou_thrs[0], 0.5))[0])
    ap50_k = aps[0][:, t50, :]
    ap_k = bs.nanmean(aps[0], axis=1) if protocol == "coco" else None
    samples = {"bbox_mAP_50": bs.nanmean(ap50_k, axis=1), "ap50_per_class": ap50_k}
    out["bbox_mAP_50_ci"] = bs.interval(samples["bbox_mAP_50"])
    if ap_k is not None:
        samples["bbox_mAP"] = bs.nanmean(ap_k, axis=1)
        samples["ap_per_class"] = ap_k
    out["bbox_mAP_ci"] = bs.interval(samples["bbox_mAP"]) if ap_k is not None else None
    for k, row in enumerate(out["classwise"]):
        row["ap50_ci"] = bs.interval(ap50_k[:, k])
        row["ap_ci"] = bs.interval(ap_k[:, k]) if ap_k is not None else None
    index = {c: i for i, c in enumerate(int(c) for c in p.cat_ids)}
    samples["groups_ap50"] = []
    for g in out["groups"]:
        cols = [index[c] for c in g["category_ids"] if c in index]
        g50 = bs.nanmean(ap50_k[:, cols], axis=1)
        samples["groups_ap50"].append(g50)
        g["ap50_ci"] = bs.interval(g50)
        g["ap_ci"] = bs.interval(bs.nanmean(ap_k[:, cols], axis=1)) if ap_k is not None else None
    samples["motion"] = {name: bs.nanmean(a[:, 0, :], axis=1) for name, a in zip(out.get("motion") or {}, aps[1:])}
    out["motion_ci"] = {name: bs.interval(v) for name, v in samples["motion"].items()} or None
    out["bootstrap"] = {
        "resamples": int(resamples),
        "seed": int(seed),
        "level": bs.CI_LEVEL,
        "unit": "video",
        "num_videos": int(len(videos)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if keep_samples:
        out["bootstrap"]["samples"] = samples


def _motion_masks(gt, p, motion_iou):
    """``({bucket: GT inside bool (A,)}, {motion_counts, motion_source, motion: None})``."""
    if motion_iou is None:
        inst = np.asarray(getattr(gt, "ann_instance_ids", np.full(len(p.g_img), -1)))
        if not (inst >= 0).any():
            return {}, {"motion": None, "motion_counts": None, "motion_source": "no tracks in the ground truth"}
        frames = np.asarray(gt.img_frame_ids)[gt.ann_image_idx]
        videos = np.asarray(gt.img_video_ids)[gt.ann_image_idx]
        miou, source = motion.motion_iou_from_tracks(videos, inst, frames, gt.ann_boxes), "instance tracks"
    elif isinstance(motion_iou, (str, Path)):
        miou, source = motion.load_official_motion_iou(motion_iou, gt), str(motion_iou)
    else:
        miou, source = np.asarray(motion_iou, np.float64), "given array"
    masks = motion.bucket_masks(miou)
    counts = {name: int((inside & ~p.g_crowd).sum()) for name, inside in masks.items()}
    counts["unknown"] = int(np.isnan(miou).sum())
    return masks, {"motion": None, "motion_counts": counts, "motion_source": source}


def _fmt(v, ci=None) -> str:
    text = "-" if v is None else f"{v:.3f}"
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_tables(m: dict) -> str:
    """Markdown: overall, per group, motion, per class. AP is a fraction in 0..1, as in
    ``metrics.json``, ``summary.md`` and the README (one unit for everything a user reads)."""
    lines = [
        f"## Detection AP ({m['protocol']} protocol; AP as a fraction, 0-1)",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| bbox_mAP_50 | {_fmt(m['bbox_mAP_50'], m.get('bbox_mAP_50_ci'))} |",
        f"| bbox_mAP | {_fmt(m['bbox_mAP'], m.get('bbox_mAP_ci'))} |",
    ]
    lv = m.get("lvis")
    if lv:
        lines += ["", "| LVIS | " + " | ".join(lv) + " |", "|---" * (len(lv) + 1) + "|"]
        lines.append("| value | " + " | ".join(_fmt(v) for v in lv.values()) + " |")
    fixed = m.get("ap_fixed")
    if fixed:
        lines += [
            "",
            f"AP-fixed (no per-image cap, {fixed['per_class_cap']} detections per class): "
            f"AP50 {_fmt(fixed['AP50'])}, AP {_fmt(fixed['AP'])}",
        ]
    b = m.get("bootstrap")
    if b:
        lines += [
            "",
            f"[lo, hi]: {int(100 * b['level'])} % interval from {b['resamples']} bootstrap resamples of the "
            f"{b['num_videos']} videos (seed {b['seed']}).",
        ]
    if m["groups"]:
        basis = m["groups"][0].get("basis")
        lines += [""] + ([f"Groups by {basis} per class (training counts)."] if basis else [])
        lines += ["| group | classes with GT | AP50 | AP |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {group_label(g)} | {g['num_classes_with_gt']}/{len(g['category_ids'])} "
            f"| {_fmt(g['ap50'], g.get('ap50_ci'))} | {_fmt(g['ap'], g.get('ap_ci'))} |"
            for g in m["groups"]
        ]
    if m.get("motion"):
        lines += ["", "| motion | GT objects | AP50 |", "| --- | --- | --- |"]
        ci = m.get("motion_ci") or {}
        lines += [f"| {k} | {m['motion_counts'][k]} | {_fmt(v, ci.get(k))} |" for k, v in m["motion"].items()]
    lines += ["", "| id | class | GT | AP50 | AP |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {c['category_id']} | {c['name']} | {c['num_gt']} | {_fmt(c['ap50'], c.get('ap50_ci'))} "
        f"| {_fmt(c['ap'], c.get('ap_ci'))} |"
        for c in m["classwise"]
    ]
    return "\n".join(lines) + "\n"


def _csv_text(rows: list, fields: list) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: (" ".join(map(str, r[k])) if isinstance(r[k], list) else ("" if r[k] is None else r[k]))
                for k in fields
            }
        )
    return buf.getvalue()


CI_COLUMNS = ["ap50_ci_lo", "ap50_ci_hi", "ap_ci_lo", "ap_ci_hi"]


def _with_ci_columns(row: dict) -> dict:
    """A CSV row: the ``[lo, hi]`` intervals as ``*_ci_lo`` / ``*_ci_hi`` columns."""
    out = dict(row)
    for key in ("ap50_ci", "ap_ci"):
        ci = row.get(key)
        out[f"{key}_lo"], out[f"{key}_hi"] = (None, None) if ci is None else ci
    return out


def write_metrics(m: dict, out) -> dict:
    """Write ``metrics.json`` plus ``<stem>_classwise.csv`` and ``<stem>_groups.csv``
    atomically (bootstrap samples, if kept, stay out of the files)."""
    out = Path(out)
    if "samples" in (m.get("bootstrap") or {}):
        m = {**m, "bootstrap": {k: v for k, v in m["bootstrap"].items() if k != "samples"}}
    save_json(m, out)
    paths = {"metrics": out}
    ci = CI_COLUMNS if m.get("bootstrap") else []
    for kind, fields in (
        ("classwise", ["category_id", "name", "num_gt", "ap50", "ap", *ci]),
        ("groups", ["group", "bin", "basis", "category_ids", "num_classes_with_gt", "ap50", "ap", *ci]),
    ):
        path = out.with_name(f"{out.stem}_{kind}.csv")
        with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(_csv_text([_with_ci_columns(r) for r in m[kind]], fields))
        paths[kind] = path
    return paths


def evaluate_files(
    ann,
    results,
    *,
    groups=None,
    protocol="coco",
    motion_iou=None,
    backend="lvod",
    bootstrap: int | str = 0,
    seed: int = 0,
    ap_fixed: bool = False,
) -> dict:
    """``lvod eval``: read the ground truth ``ann`` and the detections ``results`` (COCO
    results JSON or lvod ``.npz``) and return :func:`evaluate`'s metrics dict.

    ``backend``/``protocol`` are checked before anything is read (``ValueError``); bad files
    raise ``DataError``. Write the dict with :func:`write_metrics`.
    """
    from lvod.data.cocovid import load_cocovid
    from lvod.evaluation.results import load_results

    check_backend(backend, protocol)
    gt = load_cocovid(ann)
    dets = load_results(results)
    return evaluate(
        gt,
        dets,
        groups=groups,
        protocol=protocol,
        motion_iou=motion_iou,
        results_file=str(results),
        backend=backend,
        bootstrap=bootstrap,
        seed=seed,
        ap_fixed=ap_fixed,
    )
