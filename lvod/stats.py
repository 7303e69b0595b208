"""Dataset statistics of a CocoVid: per class, per track, per box, and a summary.

Everything is computed with numpy on the columnar :class:`lvod.data.cocovid.CocoVid`
(no per-box Python loops; ImageNet VID train's 1.7 M boxes take about a second).

Definitions used throughout:

- a *box* is a non-crowd annotation (crowd and ``ignore`` boxes are not training
  targets); crowd annotations are counted separately (``crowd``);
- a *track* is one (video, instance_id, class) with ``instance_id >= 0`` among the boxes;
  its *length* is its number of boxes (annotated frames), its *span* last - first frame + 1;
- a class is on a *frame* / *video* / *key frame* when at least one of its boxes is there;
- size buckets follow COCO on the box ``w * h``: small < 32², medium < 96², else large.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

SMALL, MEDIUM = 32.0**2, 96.0**2
CLASS_COLUMNS = (
    "category_id",
    "name",
    "boxes",
    "boxes_manual",
    "boxes_generated",
    "crowd",
    "tracks",
    "videos",
    "frames",
    "key_frames",
    "small",
    "medium",
    "large",
    "mean_track_length",
)


def _codes(values) -> np.ndarray:
    """Dense int64 codes 0..n-1 of ``values`` (equal values share a code)."""
    return np.unique(np.asarray(values), return_inverse=True)[1].astype(np.int64).ravel()


def _distinct_per_label(labels: np.ndarray, other: np.ndarray, num_classes: int) -> np.ndarray:
    """For each label 0..C: how many distinct ``other`` values its rows hold."""
    if labels.size == 0:
        return np.zeros(num_classes + 1, np.int64)
    other = _codes(other)
    n = int(other.max()) + 1
    pairs = np.sort(labels.astype(np.int64) * n + other)  # a sort beats numpy 2's hash unique here
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    return np.bincount(pairs // n, minlength=num_classes + 1)


def _targets(ds) -> np.ndarray:
    """Row indices of the non-crowd annotations."""
    return np.flatnonzero(~np.asarray(ds.ann_iscrowd, dtype=bool))


def _tracks(ds):
    """``(keys int64 (T, 3) [video_id, instance_id, label], length, first_frame, last_frame)``,
    tracks sorted by (video, instance, label)."""
    rows = _targets(ds)
    rows = rows[np.asarray(ds.ann_instance_ids)[rows] >= 0]
    img = np.asarray(ds.ann_image_idx, dtype=np.int64)[rows]
    frame = np.asarray(ds.img_frame_ids, dtype=np.int64)[img]
    vid = np.asarray(ds.img_video_ids, dtype=np.int64)[img]
    inst = np.asarray(ds.ann_instance_ids, dtype=np.int64)[rows]
    lab = np.asarray(ds.ann_labels, dtype=np.int64)[rows]
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros((0, 3), np.int64), empty, empty, empty
    # dense codes keep the combined key small: (video, instance) pairs <= A, times C + 1
    pair = _codes(_codes(vid) * (int(inst.max()) - int(inst.min()) + 1) + (inst - inst.min()))
    key = pair * (int(ds.num_classes) + 1) + lab
    order = np.lexsort((frame, key))  # by track, then frame
    k_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    f_sorted = frame[order]
    first = f_sorted[starts]
    last = f_sorted[np.r_[starts[1:], k_sorted.size] - 1]
    length = np.diff(np.r_[starts, k_sorted.size])
    head = order[starts]
    keys = np.stack([vid[head], inst[head], lab[head]], axis=1)
    resort = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    return keys[resort], length[resort], first[resort], last[resort]


def track_lengths(ds) -> pd.DataFrame:
    """One row per track: ``category_id, name, video_id, instance_id, length, first_frame,
    last_frame, span`` (see the module docstring), sorted by video, instance, class."""
    keys, length, first, last = _tracks(ds)
    lab = keys[:, 2] - 1
    return pd.DataFrame(
        {
            "category_id": np.asarray(ds.cat_ids, dtype=np.int64)[lab],
            "name": np.asarray(ds.cat_names, dtype=object)[lab],
            "video_id": keys[:, 0],
            "instance_id": keys[:, 1],
            "length": length,
            "first_frame": first,
            "last_frame": last,
            "span": last - first + 1,
        }
    )


def box_sizes(ds) -> pd.DataFrame:
    """One row per box (non-crowd annotation): ``category_id, width, height, area`` (w*h),
    ``sqrt_area`` and ``size`` ('small' / 'medium' / 'large', COCO buckets on w*h)."""
    rows = _targets(ds)
    wh = np.asarray(ds.ann_boxes, dtype=np.float64).reshape(-1, 4)[rows, 2:4]
    area = wh[:, 0] * wh[:, 1]
    size = pd.Categorical.from_codes(
        (area >= SMALL).astype(np.int8) + (area >= MEDIUM), categories=["small", "medium", "large"]
    )
    return pd.DataFrame(
        {
            "category_id": np.asarray(ds.ann_cat_ids)[rows],
            "width": wh[:, 0],
            "height": wh[:, 1],
            "area": area,
            "sqrt_area": np.sqrt(area),
            "size": size,
        }
    )


def class_stats(ds) -> pd.DataFrame:
    """One row per class in ``cat_ids`` order, columns :data:`CLASS_COLUMNS`.

    ``boxes`` non-crowd annotations (``boxes_manual`` + ``boxes_generated``, the latter
    flagged ``generated``, i.e. interpolated); ``crowd`` crowd/ignore annotations;
    ``tracks``, ``videos``, ``frames``, ``key_frames`` distinct ones holding a box;
    ``small/medium/large`` boxes per COCO size bucket; ``mean_track_length`` boxes per
    track (NaN for a class without tracks).
    """
    C = int(ds.num_classes)
    labels = np.asarray(ds.ann_labels, dtype=np.int64)
    crowd = np.asarray(ds.ann_iscrowd, dtype=bool)
    rows = np.flatnonzero(~crowd)
    lab = labels[rows]
    count = lambda mask=None: np.bincount(lab if mask is None else lab[mask], minlength=C + 1)[1:]  # noqa: E731
    img = np.asarray(ds.ann_image_idx, dtype=np.int64)[rows]
    generated = np.asarray(ds.ann_generated, dtype=bool)[rows]
    area = np.asarray(ds.ann_boxes, dtype=np.float64).reshape(-1, 4)[rows, 2:4].prod(axis=1)
    key = np.asarray(ds.img_is_key, dtype=bool)[img]
    keys, length, _, _ = _tracks(ds)
    tracks = np.bincount(keys[:, 2], minlength=C + 1)[1:]
    track_boxes = np.bincount(keys[:, 2], weights=length, minlength=C + 1)[1:]
    mean_len = np.where(tracks > 0, track_boxes / np.maximum(tracks, 1), np.nan)
    return pd.DataFrame(
        {
            "category_id": np.asarray(ds.cat_ids, dtype=np.int64),
            "name": list(ds.cat_names),
            "boxes": count(),
            "boxes_manual": count(~generated),
            "boxes_generated": count(generated),
            "crowd": np.bincount(labels[crowd], minlength=C + 1)[1:],
            "tracks": tracks,
            "videos": _distinct_per_label(lab, np.asarray(ds.img_video_ids)[img], C)[1:],
            "frames": _distinct_per_label(lab, img, C)[1:],
            "key_frames": _distinct_per_label(lab[key], img[key], C)[1:],
            "small": count(area < SMALL),
            "medium": count((area >= SMALL) & (area < MEDIUM)),
            "large": count(area >= MEDIUM),
            "mean_track_length": mean_len,
        },
        columns=list(CLASS_COLUMNS),
    )


def dataset_summary(ds, stats: pd.DataFrame | None = None) -> dict:
    """Whole-dataset numbers as plain Python values (JSON-ready).

    Keys: ``file``, ``classes``, ``classes_with_boxes``, ``videos``, ``frames``,
    ``key_frames``, ``empty_frames`` (no annotation at all), ``frames_without_boxes`` (no
    non-crowd box), ``boxes``, ``boxes_generated``, ``crowd``, ``tracks``,
    ``boxes_per_frame``, ``mean_track_length``, ``median_track_length``,
    ``boxes_per_class`` ({min, median, max}), ``head_tail_ratio`` (max / min boxes over
    classes with boxes; None without boxes), ``head_class``, ``tail_class``,
    ``top10pct_box_share`` (share of boxes held by the 10% largest classes, at least one).
    """
    stats = class_stats(ds) if stats is None else stats
    n_img = int(ds.num_images)
    crowd = np.asarray(ds.ann_iscrowd, dtype=bool)
    per_img = np.bincount(np.asarray(ds.ann_image_idx, dtype=np.int64), minlength=n_img)
    per_img_boxes = np.bincount(np.asarray(ds.ann_image_idx, dtype=np.int64)[~crowd], minlength=n_img)
    length = _tracks(ds)[1]
    boxes = stats["boxes"].to_numpy(np.int64)
    have = stats[boxes > 0]
    hb = have["boxes"].to_numpy(np.int64)
    top = np.sort(boxes)[::-1][: max(1, math.ceil(0.1 * len(boxes)))]
    return {
        "file": str(getattr(ds, "path", "")),
        "classes": int(ds.num_classes),
        "classes_with_boxes": int(len(have)),
        "videos": int(len(ds.videos)),
        "frames": n_img,
        "key_frames": int(np.asarray(ds.img_is_key, bool).sum()),
        "empty_frames": int((per_img == 0).sum()),
        "frames_without_boxes": int((per_img_boxes == 0).sum()),
        "boxes": int(boxes.sum()),
        "boxes_generated": int(stats["boxes_generated"].sum()),
        "crowd": int(crowd.sum()),
        "tracks": int(length.size),
        "boxes_per_frame": float(boxes.sum() / n_img) if n_img else None,
        "mean_track_length": float(length.mean()) if length.size else None,
        "median_track_length": float(np.median(length)) if length.size else None,
        "boxes_per_class": {"min": int(boxes.min()), "median": float(np.median(boxes)), "max": int(boxes.max())}
        if len(boxes)
        else None,
        "head_tail_ratio": float(hb.max() / hb.min()) if len(hb) else None,
        "head_class": str(have["name"].iloc[int(np.argmax(hb))]) if len(hb) else None,
        "tail_class": str(have["name"].iloc[int(np.argmin(hb))]) if len(hb) else None,
        "top10pct_box_share": float(top.sum() / boxes.sum()) if boxes.sum() else None,
    }


def format_stats(stats: pd.DataFrame, summary: dict, max_rows: int = 40) -> str:
    """Short text: the summary line and classes by boxes (head and tail when many)."""
    s = summary
    lines = [
        f"{s['videos']} videos, {s['frames']} frames ({s['key_frames']} key, {s['empty_frames']} empty), "
        f"{s['boxes']} boxes ({s['crowd']} crowd), {s['tracks']} tracks, {s['classes']} classes; "
        f"head/tail ratio {s['head_tail_ratio'] and round(s['head_tail_ratio'], 1)}"
    ]
    df = stats.sort_values(["boxes", "category_id"], ascending=[False, True])[
        ["category_id", "name", "boxes", "tracks", "videos", "frames"]
    ]
    if len(df) > max_rows:
        half = max_rows // 2
        text = (
            df.head(half).to_string(index=False)
            + f"\n  ... {len(df) - 2 * half} classes ...\n"
            + df.tail(half).to_string(index=False, header=False)
        )
    else:
        text = df.to_string(index=False)
    return "\n".join(lines + [text])


def write_stats(ann, out) -> dict:
    """``lvod stats``: read ``ann``, write ``class_stats.csv``, ``class_stats.json`` and
    ``summary.json`` into ``out`` (atomically).

    Returns ``{"stats": class_stats DataFrame, "summary": dataset_summary dict,
    "paths": {"class_stats_csv", "class_stats_json", "summary_json": Path}}``. A bad
    annotation file raises DataError.
    """
    from lvod.data.cocovid import load_cocovid
    from lvod.io import atomic_write, save_json

    ds = load_cocovid(ann)
    stats = class_stats(ds)
    summary = dataset_summary(ds, stats)
    out = Path(out)
    paths = {
        "class_stats_csv": out / "class_stats.csv",
        "class_stats_json": out / "class_stats.json",
        "summary_json": out / "summary.json",
    }
    with atomic_write(paths["class_stats_csv"], "w", encoding="utf-8", newline="") as fh:
        stats.to_csv(fh, index=False)
    save_json(json.loads(stats.to_json(orient="records")), paths["class_stats_json"])  # NaN -> null
    save_json(summary, paths["summary_json"])
    return {"stats": stats, "summary": summary, "paths": paths}
