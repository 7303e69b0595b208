"""Motion IoU of ground-truth objects and the FGFA speed buckets (slow / medium / fast).

An object's motion IoU (FGFA, Zhu et al. 2017) is the mean IoU of its box with the same
instance's boxes in the frames 10 before and 10 after, where those exist. lvod computes it
from instance tracks (``ann_instance_ids``) or takes the official per-object values of
ImageNet VID val (``imagenet_vid_groundtruth_motion_iou.mat``, FGFA's repository).

Buckets follow FGFA's ``motion_ranges`` with inclusive ends: fast [0, 0.7], medium
[0.7, 0.9], slow [0.9, 1]. An object without a value (no track id, or no box of its track
10 frames away) is in no bucket: it is an ignore region in every bucket's AP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvod.errors import DataError
from lvod.evaluation.boxes import paired_iou_xywh

BUCKETS = {"slow": (0.9, 1.0), "medium": (0.7, 0.9), "fast": (0.0, 0.7)}
OFFSET = 10


def motion_iou_from_tracks(video_ids, instance_ids, frame_ids, boxes, *, offset: int = OFFSET) -> np.ndarray:
    """Motion IoU per object (A,) float64; NaN where it is undefined.

    ``video_ids``, ``instance_ids`` (-1 = no track), ``frame_ids`` int (A,), ``boxes``
    float (A, 4) xywh. If an instance has two boxes on one frame the first is used.
    """
    video_ids = np.asarray(video_ids, np.int64)
    inst = np.asarray(instance_ids, np.int64)
    frame = np.asarray(frame_ids, np.int64)
    boxes = np.asarray(boxes, np.float64)
    out = np.full(len(inst), np.nan)
    has = np.flatnonzero(inst >= 0)
    if len(has) == 0:
        return out
    _, track = np.unique(np.stack([video_ids[has], inst[has]], 1), axis=0, return_inverse=True)
    track = track.reshape(-1)
    span = int(frame[has].max()) + 2 * offset + 2
    key = track * span + (frame[has] + offset)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    total = np.zeros(len(has))
    count = np.zeros(len(has))
    for step in (-offset, offset):
        want = key + step
        pos = np.searchsorted(skey, want)
        found = (pos < len(skey)) & (skey[np.minimum(pos, len(skey) - 1)] == want)
        src = np.flatnonzero(found)
        other = has[order[pos[src]]]
        total[src] += paired_iou_xywh(boxes[has[src]], boxes[other])
        count[src] += 1
    with np.errstate(invalid="ignore"):
        out[has] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def bucket_masks(miou: np.ndarray) -> dict:
    """``{bucket: bool (A,)}`` membership per bucket (NaN is in none)."""
    return {name: (miou >= lo) & (miou <= hi) for name, (lo, hi) in BUCKETS.items()}


def load_official_motion_iou(path, gt) -> np.ndarray:
    """Per-object motion IoU (A,) for ``gt`` from FGFA's ``.mat`` file.

    The file has one cell per val frame in ``VID_val_videos.txt`` order, one value per object
    in XML order. The i-th cell is matched to the image with the i-th smallest id (the order
    of mmtracking's converter and of ``benchmarks/make_vid_val_gt.py``), objects in file
    order. Raises DataError unless the frame count and every frame's object count agree.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        cells = loadmat(path)["motion_iou"].reshape(-1)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            path, "variable motion_iou", f"cannot read it ({e})", "pass FGFA's imagenet_vid_groundtruth_motion_iou.mat"
        ) from None
    n_img = len(gt.img_ids)
    if len(cells) != n_img:
        raise DataError(
            path,
            "motion_iou",
            f"has {len(cells)} frames, the annotation file {n_img}",
            "use the full ImageNet VID val annotation file, or compute motion IoU from tracks",
        )
    img_rank = np.empty(n_img, np.int64)
    img_rank[np.argsort(gt.img_ids, kind="stable")] = np.arange(n_img)
    counts = np.array([np.asarray(c).size for c in cells], np.int64)
    rank_of_ann = img_rank[gt.ann_image_idx]
    gt_counts = np.bincount(rank_of_ann, minlength=n_img)
    if not np.array_equal(counts, gt_counts):
        i = int(np.flatnonzero(counts != gt_counts)[0])
        raise DataError(
            path,
            f"frame {i} (0-based, image id {int(np.sort(gt.img_ids)[i])})",
            f"has {counts[i]} objects, the annotation file {gt_counts[i]}",
            "annotations must be in XML order with image ids in VID_val_videos.txt order",
        )
    flat = np.concatenate([np.asarray(c, np.float64).reshape(-1) for c in cells]) if len(cells) else np.zeros(0)
    # ann j is the k-th object of its frame, k = position among that frame's anns in file order
    order = np.argsort(rank_of_ann, kind="stable")
    out = np.empty(len(order))
    out[order] = flat
    return out
