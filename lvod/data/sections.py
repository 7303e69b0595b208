"""Per-section readers for ``lvod.data.cocovid``: categories, videos, images, annotations.

Each reader takes the parsed JSON list of one section and the ``LoadReport``, applies the
decisions tabled in ``lvod.data.cocovid``'s docstring, and returns plain Python lists or
numpy columns. Fatal problems are collected in the report and raised at the end of the
reader (``report.raise_if_fatal``), so one run names several bad records at once.
"""

from __future__ import annotations

import numpy as np

from lvod.data.validate import (
    MAX_EXAMPLES,
    bbox_column,
    check_records,
    clip_boxes,
    duplicate_positions,
    flag_column,
    record_label,
    take,
    typed_column,
)

_EMPTY = ()


def _dedupe(report, records, ids, kind, section, *, renumber=False):
    """Handle repeated ids. Returns ``(keep mask, ids)``.

    Identical repeats are dropped (repair ``<kind>_duplicate``). Differing repeats are fatal,
    or, with ``renumber``, get fresh ids above the maximum (repair ``<kind>_duplicate_id``).
    """
    keep = np.ones(len(ids), bool)
    dup = duplicate_positions(ids)
    if not len(dup):
        return keep, ids
    uniq, first = np.unique(ids, return_index=True)
    first_of = first[np.searchsorted(uniq, ids[dup])]
    dropped, renamed = [], []
    next_id = int(ids.max()) + 1
    ids = ids.copy()
    for p, f in zip(dup.tolist(), first_of.tolist()):
        if records[p] == records[f]:
            keep[p] = False
            dropped.append(f"{kind} {ids[p]} (#{p})")
        elif renumber:
            renamed.append(f"{kind} {ids[p]} (#{p}) -> {next_id}")
            ids[p] = next_id
            next_id += 1
        else:
            report.add_fatal(
                f"{kind} {ids[p]}",
                f"appears at positions {f} and {p} with different content",
                f"give every {kind} in '{section}' a unique id",
            )
    report.repair(f"{kind}_duplicate", "dropped", f"identical {kind} listed twice; later copy dropped", dropped)
    report.repair(
        f"{kind}_duplicate_id",
        "renumbered",
        f"{kind}s sharing an id with different content; later ones get new ids above the maximum",
        renamed,
    )
    report.raise_if_fatal()
    return keep, ids


def _id_column(report, records, kind, section):
    raw = take(records, "id")
    ids, _ = typed_column(
        report,
        raw,
        "id",
        kind,
        raw,
        allowed=(int,),
        dtype=np.int64,
        required=True,
        fix=f"give every {kind} in '{section}' a unique integer 'id'",
    )
    report.raise_if_fatal()
    return raw, ids


def read_categories(records, report) -> list[dict]:
    """Validated category dicts sorted by id (each needs an integer id and a string name)."""
    if not check_records(report, records, "categories", "category"):
        report.raise_if_fatal()
    raw, ids = _id_column(report, records, "category", "categories")
    for i, r in enumerate(records):
        if type(r.get("name")) is not str:
            report.add_fatal(
                record_label("category", raw, i),
                "has no 'name'" if r.get("name") is None else f"'name' is {r['name']!r}",
                "give every category a string 'name'",
            )
    keep, ids = _dedupe(report, records, ids, "category", "categories")
    cats = [r for r, k in zip(records, keep) if k]
    return sorted(cats, key=lambda c: c["id"])


def _read_videos(records, report) -> dict[int, dict]:
    if not check_records(report, records, "videos", "video"):
        report.raise_if_fatal()
    raw, ids = _id_column(report, records, "video", "videos")
    keep, ids = _dedupe(report, records, ids, "video", "videos")
    videos, unnamed = {}, []
    for r, k in zip(records, keep):
        if k:
            if type(r.get("name")) is not str:
                unnamed.append(f"video {r['id']}")
                r = {**r, "name": f"video_{r['id']}"}
            videos[r["id"]] = r
    report.note("video_name_missing", "named video_<id>", "video without a 'name'", unnamed)
    return videos


def _id_lists(report, values, key, ids):
    """TAO neg/not-exhaustive category id lists -> tuples (None stays None)."""
    if values.count(None) == len(values):
        return values
    out = []
    for i, v in enumerate(values):
        if v is None or isinstance(v, list) and all(type(x) is int for x in v):
            out.append(None if v is None else tuple(v))
        else:
            report.add_fatal(
                record_label("image", ids, i), f"'{key}' is {v!r}", f"give '{key}' as a list of integer category ids"
            )
            out.append(None)
    return out


def read_images(records, video_records, report) -> dict:
    """Image columns and the video table.

    Returns dict: ``ids``, ``video_ids``, ``frame_ids`` (int64 (I,)), ``width``, ``height``
    (int32 (I,)), ``is_key`` (bool (I,)), ``file_names``, ``neg``, ``not_exhaustive``
    (lists, one entry per image), ``videos`` (list of video dicts: file videos in file order,
    then synthesised ones).
    """
    if not check_records(report, records, "images", "image"):
        report.raise_if_fatal()
    raw, ids = _id_column(report, records, "image", "images")
    keep, ids = _dedupe(report, records, ids, "image", "images")
    if not keep.all():
        records = [r for r, k in zip(records, keep) if k]
        ids = ids[keep]
        raw = ids.tolist()
    col = lambda key, **kw: typed_column(report, take(records, key), key, "image", raw, **kw)[0]
    names = take(records, "file_name")
    typed_column(
        report,
        names,
        "file_name",
        "image",
        raw,
        allowed=(str,),
        dtype=None,
        required=True,
        fix="give every image its 'file_name' relative to the image root",
    )
    size_fix = "give every image its pixel 'width' and 'height' (whole numbers > 0)"
    width = col("width", allowed=(int, float), dtype=np.float64, required=True, fix=size_fix)
    height = col("height", allowed=(int, float), dtype=np.float64, required=True, fix=size_fix)
    vid_raw = take(records, "video_id")
    vid = typed_column(
        report,
        vid_raw,
        "video_id",
        "image",
        raw,
        allowed=(int,),
        dtype=np.int64,
        required=False,
        fix="make 'video_id' an integer",
        default=-1,
    )[0]
    frame_raw = take(records, "frame_id")
    frame = typed_column(
        report,
        frame_raw,
        "frame_id",
        "image",
        raw,
        allowed=(int,),
        dtype=np.int64,
        required=False,
        fix="make 'frame_id' a 0-based integer",
        default=-1,
    )[0]
    is_key, n_key_absent = flag_column(
        report, take(records, "is_vid_train_frame"), "is_vid_train_frame", "image", raw, default=True
    )
    report.raise_if_fatal()
    for arr, key in ((width, "width"), (height, "height")):
        for i in np.flatnonzero((arr <= 0) | (arr != np.floor(arr)))[:MAX_EXAMPLES]:
            report.add_fatal(record_label("image", raw, int(i)), f"'{key}' is {arr[i]:g}", size_fix)
    has_vid, has_frame = _present(vid_raw), _present(frame_raw)
    for i in np.flatnonzero(has_frame & (frame < 0))[:MAX_EXAMPLES]:
        report.add_fatal(
            record_label("image", raw, int(i)),
            f"'frame_id' is {frame[i]}",
            "frame ids are 0-based frame indices (>= 0)",
        )
    report.raise_if_fatal()

    videos = _read_videos(video_records, report) if video_records is not None else {}
    file_has_videos = bool(videos) or video_records is not None or bool(has_vid.any())
    unknown = sorted(set(vid[has_vid].tolist()) - videos.keys())
    if unknown:
        made = [f"video {v}" for v in unknown]
        if video_records is None:
            report.note(
                "videos_missing",
                "synthesised",
                "the file has no 'videos'; a video record was made for each image video_id",
                made,
            )
        else:
            report.repair(
                "image_unknown_video",
                "synthesised",
                "image video_id not in 'videos'; a video record was made; add it to 'videos'",
                made,
            )
        for v in unknown:
            videos[v] = {"id": v, "name": f"video_{v}"}
    video_list = list(videos.values())

    # images in a real video without frame_id: renumber that whole video
    lacking = has_vid & ~has_frame
    if lacking.any():
        rows = np.flatnonzero(has_vid & np.isin(vid, vid[lacking]))
        fi = [records[r].get("frame_index") for r in rows.tolist()]
        key = np.array(fi, np.int64) if all(type(x) is int for x in fi) else rows
        order = rows[np.lexsort((key, vid[rows]))]
        frame[order] = _rank_in_group(vid[order])
        report.repair(
            "frame_id_missing",
            "renumbered",
            "image in a video has no 'frame_id'; its video was renumbered 0..n-1 by 'frame_index' or file order",
            [record_label("image", raw, int(i)) for i in np.flatnonzero(lacking)[:5]],
            int(lacking.sum()),
        )

    # plain COCO images: one synthetic one-frame video each, ids above every real one
    no_vid = np.flatnonzero(~has_vid)
    if len(no_vid):
        base = max([-1] + [int(v) for v in videos]) + 1
        vid[no_vid] = base + np.arange(len(no_vid))
        frame[no_vid] = 0
        video_list.extend({"id": base + k, "name": names[i], "synthetic": True} for k, i in enumerate(no_vid.tolist()))
        report.note(
            "image_without_video",
            "made one-frame videos",
            "image has no video_id (plain COCO / DET image); it became a one-frame "
            "video with frame_id 0" + (" in a file that has videos" if file_has_videos else ""),
            [record_label("image", raw, int(i)) for i in no_vid[:5]],
            len(no_vid),
        )
    _check_frames(report, vid, frame, raw)
    report.note(
        "key_flag_absent",
        "set True",
        "image has no 'is_vid_train_frame'; every such frame may be a training key frame",
        count=n_key_absent if has_vid.any() else 0,
    )

    neg = _id_lists(report, take(records, "neg_category_ids"), "neg_category_ids", raw)
    nex = _id_lists(report, take(records, "not_exhaustive_category_ids"), "not_exhaustive_category_ids", raw)
    report.raise_if_fatal()
    neg = _inherit(neg, vid, videos, "neg_category_ids")
    nex = _inherit(nex, vid, videos, "not_exhaustive_category_ids")
    return {
        "ids": ids,
        "video_ids": vid,
        "frame_ids": frame,
        "width": width.astype(np.int32),
        "height": height.astype(np.int32),
        "is_key": is_key,
        "file_names": names,
        "neg": neg,
        "not_exhaustive": nex,
        "videos": video_list,
    }


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """int64 (n,): 0, 1, 2, ... restarting wherever ``sorted_keys`` changes value."""
    n = len(sorted_keys)
    if not n:
        return np.zeros(0, np.int64)
    starts = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
    idx = np.arange(n)
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def _present(values) -> np.ndarray:
    """bool (n,): which values are not None (fast when none or all are)."""
    n_none = values.count(None)
    if n_none in (0, len(values)):
        return np.full(len(values), n_none == 0)
    return np.array([v is not None for v in values], bool)


def _inherit(values, vid, videos, key):
    """Per-image list: the image's own, else its video's, else the shared empty tuple."""
    from_video = {v: tuple(r[key]) for v, r in videos.items() if isinstance(r.get(key), list)}
    if not from_video:
        return [_EMPTY if v is None else v for v in values]
    return [v if v is not None else from_video.get(int(x), _EMPTY) for v, x in zip(values, vid.tolist())]


def _check_frames(report, vid, frame, raw):
    """Fatal when two images share a frame of a video; note videos whose frame ids have gaps."""
    order = np.lexsort((frame, vid))
    v, f = vid[order], frame[order]
    same = np.flatnonzero((v[1:] == v[:-1]) & (f[1:] == f[:-1]))
    for k in same[:MAX_EXAMPLES]:
        a, b = int(order[k]), int(order[k + 1])
        report.add_fatal(
            f"video {v[k]}",
            f"images {raw[a]} and {raw[b]} both have frame_id {f[k]}",
            "give each image of a video its own frame_id",
        )
    report.raise_if_fatal()
    if len(v):
        gap_vids = np.unique(v[f != _rank_in_group(v)])
        report.note(
            "frame_gaps",
            "kept",
            "video whose frame ids are not 0..n-1 (reference frames are sampled by frame_id)",
            [f"video {x}" for x in gap_vids[:5]],
            len(gap_vids),
        )


def read_annotations(records, img, cat_ids, report) -> dict:
    """Annotation columns after the documented skips and repairs.

    ``img``: the dict from ``read_images``. Returns dict: ``ids``, ``image_idx``, ``cat_ids``,
    ``instance_ids`` (int64 (A,)), ``boxes`` (float64 (A, 4) xywh), ``area`` (float64 (A,)),
    ``iscrowd`` (crowd or ignore), ``occluded``, ``generated`` (bool (A,)).
    """
    if not check_records(report, records, "annotations", "annotation"):
        report.raise_if_fatal()
    raw, ids = _id_column(report, records, "annotation", "annotations")
    keep, ids = _dedupe(report, records, ids, "annotation", "annotations", renumber=True)

    def col(key, **kw):
        return typed_column(report, take(records, key), key, "annotation", raw, **kw)

    ref_fix = "every annotation needs integer 'image_id' and 'category_id'"
    image_id = col("image_id", allowed=(int,), dtype=np.int64, required=True, fix=ref_fix)[0]
    cat = col("category_id", allowed=(int,), dtype=np.int64, required=True, fix=ref_fix)[0]
    boxes = bbox_column(report, take(records, "bbox"), "annotation", raw)
    area, n_area = col(
        "area", allowed=(int, float), dtype=np.float64, required=False, fix="make 'area' a number", default=-1.0
    )
    inst_raw = take(records, "instance_id")
    if inst_raw.count(None):
        tracks = take(records, "track_id")
        inst_raw = [t if i is None else i for i, t in zip(inst_raw, tracks)]
    inst, n_inst = typed_column(
        report,
        inst_raw,
        "instance_id",
        "annotation",
        raw,
        allowed=(int,),
        dtype=np.int64,
        required=False,
        fix="make 'instance_id' an integer track id",
        default=-1,
    )
    flags = {
        k: flag_column(report, take(records, k), k, "annotation", raw, default=False)
        for k in ("iscrowd", "ignore", "occluded", "generated")
    }
    vid_raw = take(records, "video_id")
    ann_vid = typed_column(
        report,
        vid_raw,
        "video_id",
        "annotation",
        raw,
        allowed=(int,),
        dtype=np.int64,
        required=False,
        fix="make 'video_id' an integer",
        default=-1,
    )[0]
    report.raise_if_fatal()
    n = len(ids)

    if len(img["ids"]):
        img_sorted = np.argsort(img["ids"], kind="stable")
        pos = np.searchsorted(img["ids"], image_id, sorter=img_sorted)
        row = img_sorted[np.minimum(pos, len(img_sorted) - 1)]
        found = img["ids"][row] == image_id
        at = lambda arr: arr[row]  # noqa: E731 - image column seen from each annotation
    else:  # no images at all: every annotation is dangling
        row, found = np.zeros(n, np.int64), np.zeros(n, bool)
        at = lambda arr: np.zeros(n, arr.dtype)  # noqa: E731
    _skip(
        report,
        keep,
        ~found,
        "ann_unknown_image",
        "image_id not in images; add the image or remove the annotation",
        raw,
        image_id,
        "image_id",
    )
    cpos = np.minimum(np.searchsorted(cat_ids, cat), max(len(cat_ids) - 1, 0))
    known = cat_ids[cpos] == cat if len(cat_ids) else np.zeros(n, bool)
    _skip(
        report,
        keep,
        found & ~known,
        "ann_unknown_category",
        "category_id not in categories; add it to 'categories' to keep these annotations",
        raw,
        cat,
        "category_id",
    )

    w = np.where(found, at(img["width"]), 0).astype(np.float64)
    h = np.where(found, at(img["height"]), 0).astype(np.float64)
    live = keep.copy()
    new_boxes, empty, clipped, outside = clip_boxes(boxes, w, h)
    _skip(report, keep, live & empty, "box_empty", "box width or height <= 0", raw)
    _skip(report, keep, live & outside, "box_outside", "box lies entirely outside its image", raw)
    report.repair(
        "box_clipped",
        "clipped",
        "box partly outside its image; clipped to it (the file's area is kept)",
        [record_label("annotation", raw, int(i)) for i in np.flatnonzero(live & clipped)[:5]],
        int((live & clipped).sum()),
    )
    mismatch = keep & _present(vid_raw) & (ann_vid != at(img["video_ids"]))
    report.repair(
        "ann_video_mismatch",
        "image's video used",
        "annotation video_id differs from its image's video_id",
        [record_label("annotation", raw, int(i)) for i in np.flatnonzero(mismatch)[:5]],
        int(mismatch.sum()),
    )
    crowd = flags["iscrowd"][0] | flags["ignore"][0]
    computed = new_boxes[:, 2] * new_boxes[:, 3]
    area = np.where(area < 0, computed, area) if n_area else area
    report.note("area_missing", "set to w*h", "annotation without 'area'", (), n_area)
    report.note("iscrowd_absent", "set False", "annotation without 'iscrowd' (LVIS has none)", (), flags["iscrowd"][1])
    report.note(
        "instance_id_absent",
        "set -1",
        "annotation without 'instance_id' or 'track_id' (no tracking identity)",
        (),
        n_inst,
    )
    return {
        "ids": ids[keep],
        "image_idx": row[keep].astype(np.int64),
        "cat_ids": cat[keep],
        "instance_ids": inst[keep],
        "boxes": new_boxes[keep],
        "area": area[keep],
        "iscrowd": crowd[keep],
        "occluded": flags["occluded"][0][keep],
        "generated": flags["generated"][0][keep],
    }


def _skip(report, keep, mask, kind, message, raw, values=None, key=None):
    """Drop the annotations in ``mask`` from ``keep`` and report them under ``kind``."""
    idx = np.flatnonzero(mask & keep)
    if not len(idx):
        return
    keep[idx] = False
    examples = [record_label("annotation", raw, int(i)) + (f" ({key} {values[i]})" if key else "") for i in idx[:5]]
    report.repair(kind, "skipped", message, examples, len(idx))
