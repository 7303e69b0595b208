"""A long-tailed training split of a CocoVID file (lvod's long-tail ImageNet VID benchmark).

The recipe of ImageNet-LT / VideoLT / SSv2-LT applied to video detection (REFERENCE
section 8): the training items of each class are subsampled to a fixed profile with a
chosen imbalance ratio, with a fixed seed, and the list of kept items is published. Val is
never touched (only a train file is written).

What this module holds:

- the maths, pure functions in :mod:`lvod.data.longtail_select`: ``rank_classes``,
  ``profile_targets``, ``class_membership``, ``select_items``, ``explain_classes``;
- :func:`make_longtail_split` (``CocoVid`` in, :class:`LongtailSplit` out, nothing written);
- :func:`write_longtail_split`, the one function that writes files (atomically).

The unit is a whole training video: a video is kept or dropped, never frames of a kept
video. DET images (a plain COCO file: every image is a one-frame video) follow the same
per-class profile with their own ``n_max`` (the largest DET count of any class), the same
ratio and the VID class ranking; a class with fewer DET images than its DET target keeps
them all and is reported.

The maths (counting, ranking, the two profiles and the selection) is
:mod:`lvod.data.longtail_select`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvod.data.cocovid import CocoVid, load_cocovid
from lvod.data.longtail_select import (
    PROFILE_FORMULAS,
    check_parameters,
    class_membership,
    explain_classes,
    profile_targets,
    rank_classes,
    select_items,
)
from lvod.errors import DataError
from lvod.io import atomic_write, save_json

TABLE_COLUMNS = {  # class_table.csv (unit "video") and det_class_table.csv (unit "image")
    unit: ("cat_id", "name", "rank", f"{unit}s_before", "target", f"{unit}s_after")
    + ("boxes_before", "boxes_after", "met", "reason")
    for unit in ("video", "image")
}


# ----------------------------------------------------------------------------- one file's split


@dataclass
class LongtailPart:
    """The split of one file (the VID train file, or the DET file).

    Per-class arrays follow ``cat_ids`` (ascending). ``rank``: 0 = most frequent (by the
    VID counts for both parts); ``target``: -1 for a class outside the profile (no items);
    ``unit``: "video" (VID) or "image" (DET). ``kept_video_ids`` / ``kept_image_ids``: sorted.
    """

    source: Path
    unit: str
    cat_ids: np.ndarray
    cat_names: list
    rank: np.ndarray
    before: np.ndarray
    target: np.ndarray
    after: np.ndarray
    boxes_before: np.ndarray
    boxes_after: np.ndarray
    reasons: list
    kept_video_ids: np.ndarray
    kept_image_ids: np.ndarray
    video_names: dict = field(repr=False, default_factory=dict)
    image_names: dict = field(repr=False, default_factory=dict)
    counts: dict = field(default_factory=dict)

    @property
    def met(self) -> np.ndarray:
        """bool (C,): the class is within one item of its target."""
        return np.array([not r for r in self.reasons], bool)

    @property
    def achieved_ratio(self) -> float:
        """Items of the most / the least frequent class after the split (classes with items)."""
        have = self.after[self.before > 0]
        return float(have.max() / have.min()) if len(have) and have.min() > 0 else float("nan")

    @property
    def target_ratio(self) -> float:
        """The same ratio for the rounded targets (what the data could give at best)."""
        t = self.target[self.before > 0]
        return float(t.max() / t.min()) if len(t) else float("nan")

    def rows(self) -> list[dict]:
        """The per-class table (``TABLE_COLUMNS[unit]``), in rank order."""
        cols = TABLE_COLUMNS[self.unit]
        out = []
        for c in np.argsort(self.rank, kind="stable"):
            values = (
                int(self.cat_ids[c]),
                self.cat_names[c],
                int(self.rank[c]),
                int(self.before[c]),
                int(self.target[c]),
                int(self.after[c]),
                int(self.boxes_before[c]),
                int(self.boxes_after[c]),
                "no" if self.reasons[c] else "yes",
                self.reasons[c],
            )
            out.append(dict(zip(cols, values)))
        return out

    def summary(self) -> dict:
        """Counts, the achieved and target ratios and the classes not met (JSON-safe)."""
        return {
            "unit": self.unit,
            "n_max": int(self.before.max()) if len(self.before) else 0,
            "target_ratio": _round(self.target_ratio),
            "achieved_ratio": _round(self.achieved_ratio),
            "max_deviation": int(np.abs(self.after - self.target)[self.before > 0].max(initial=0)),
            "counts": self.counts,
            "classes_not_met": [
                {
                    "cat_id": r["cat_id"],
                    "name": r["name"],
                    "target": r["target"],
                    "after": r[f"{self.unit}s_after"],
                    "reason": r["reason"],
                }
                for r in self.rows()
                if r["met"] == "no"
            ],
        }


def _round(x: float, digits: int = 4):
    return None if math.isnan(x) else round(x, digits)


def split_part(cv: CocoVid, rank, n_profile: int, ratio: float, profile: str, rng, unit: str) -> LongtailPart:
    """Split one file: whole videos of ``cv`` are kept or dropped.

    ``rank``: int (C,), each class's rank (0 = most frequent); ``n_profile``: the number of
    ranked classes the profile spans (VID classes with videos). Targets use this file's own
    ``n_max``; a class ranked past the profile (no VID video) gets the tail target.
    """
    video_ids, members, boxes = class_membership(cv)
    before = members.sum(axis=0)
    rank = np.asarray(rank, np.int64)
    values = profile_targets(int(before.max(initial=0)), n_profile, ratio, profile)
    target = values[np.minimum(rank, n_profile - 1)]
    order = np.argsort(rank, kind="stable")[::-1]
    sel = select_items(members, target, order, rng)
    reasons = explain_classes(members, sel, target, before, cv.cat_names, unit)
    kept_videos = np.sort(video_ids[sel.kept])
    rows = [cv.frame_rows(v) for v in kept_videos.tolist()]
    kept_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    counts = {
        "images_before": cv.num_images,
        "images_after": len(kept_rows),
        "annotations_before": cv.num_anns,
        "annotations_after": int((cv.image_ann_ptr[kept_rows + 1] - cv.image_ann_ptr[kept_rows]).sum()),
        f"{unit}s_without_boxes": int((~members.any(axis=1)).sum()),
    }
    if unit == "video":
        counts = {"videos_before": len(video_ids), "videos_after": len(kept_videos), **counts}
    names = {int(v["id"]): str(v.get("name", "")) for v in cv.videos}
    return LongtailPart(
        source=Path(cv.path),
        unit=unit,
        cat_ids=cv.cat_ids.copy(),
        cat_names=list(cv.cat_names),
        rank=rank,
        before=before,
        target=target,
        after=sel.after,
        boxes_before=boxes.sum(axis=0),
        boxes_after=boxes[sel.kept].sum(axis=0),
        reasons=reasons,
        kept_video_ids=kept_videos,
        kept_image_ids=np.sort(cv.img_ids[kept_rows]),
        video_names={v: names[v] for v in kept_videos.tolist()},
        image_names={int(cv.img_ids[r]): cv.img_file_names[r] for r in kept_rows.tolist()},
        counts=counts,
    )


@dataclass
class LongtailSplit:
    """A long-tailed split: the parameters, the VID part and the DET part (or None)."""

    ratio: float
    profile: str
    seed: int
    vid: LongtailPart
    det: LongtailPart | None = None

    @property
    def achieved_ratio(self) -> float:
        """Videos of the most / the least frequent VID class after the split."""
        return self.vid.achieved_ratio

    def summary(self) -> dict:
        """JSON-safe: parameters, class ranking, per-part counts, ratios and classes not met."""
        order = np.argsort(self.vid.rank, kind="stable")
        return {
            "parameters": {
                "ratio": float(self.ratio),
                "profile": self.profile,
                "formula": PROFILE_FORMULAS[self.profile],
                "seed": int(self.seed),
                "rng": "numpy.random.default_rng((seed, 0)) for VID, ((seed, 1)) for DET",
                "unit": "whole training video (VID), image (DET)",
                "ranking": "videos per class in the VID train file, descending; ties by category id",
            },
            "ranking": [
                {"rank": int(self.vid.rank[c]), "cat_id": int(self.vid.cat_ids[c]), "name": self.vid.cat_names[c]}
                for c in order
            ],
            "achieved_ratio": _round(self.vid.achieved_ratio),
            "vid": self.vid.summary(),
            "det": self.det.summary() if self.det is not None else None,
        }


def make_longtail_split(
    train: CocoVid, *, ratio: float = 100, profile: str = "exp", seed: int = 0, det: CocoVid | None = None
) -> LongtailSplit:
    """Choose the long-tailed subset of ``train`` (and of the DET file ``det``); writes nothing.

    Classes are ranked by their VID training videos; each part keeps whole videos (DET:
    images) so that its per-class counts follow ``profile`` from its own ``n_max`` down to
    ``n_max / ratio`` (module docstring). Bad parameters or files raise ``DataError``.
    """
    check_parameters(ratio, profile, seed, train.path)
    if not train.videos or train.num_images == 0:
        raise DataError(
            train.path,
            "videos",
            "the file has no videos (nothing to subsample)",
            "pass the training annotation file (CocoVID with videos and images)",
        )
    _, members, _ = class_membership(train)
    before = members.sum(axis=0)
    if not before.any():
        raise DataError(
            train.path,
            "annotations",
            "no video has a non-crowd box, so no class can be counted",
            "pass a training file with annotations",
        )
    ranking = rank_classes(before, train.cat_ids)
    rank = np.empty(train.num_classes, np.int64)
    rank[ranking] = np.arange(train.num_classes)
    n_profile = int((before > 0).sum())
    vid = split_part(train, rank, n_profile, ratio, profile, np.random.default_rng((seed, 0)), "video")
    det_part = None
    if det is not None:
        if not np.array_equal(det.cat_ids, train.cat_ids):
            raise DataError(
                det.path,
                "categories",
                f"has category ids {det.cat_ids.tolist()}, the VID train file {train.cat_ids.tolist()}",
                "pass the DET file converted for the same classes",
            )
        if det.num_images == 0:
            raise DataError(det.path, "images", "the file has no images", "pass the DET training annotation file")
        det_part = split_part(det, rank, n_profile, ratio, profile, np.random.default_rng((seed, 1)), "image")
    return LongtailSplit(ratio=ratio, profile=profile, seed=seed, vid=vid, det=det_part)


# ----------------------------------------------------------------------------- writing


def output_name(source, ratio: float) -> str:
    """``imagenet_vid_train.json`` -> ``imagenet_vid_train_lt100.json``."""
    return f"{Path(source).stem}_lt{float(ratio):g}.json"


def subset_records(data: dict, part: LongtailPart) -> dict:
    """The original file's records of the kept videos/images, in file order, ids unchanged.

    ``videos`` and ``tracks`` are filtered by video id, ``images`` by image id,
    ``annotations`` by ``image_id``; every other top-level key is kept as it is.
    """
    videos = set(part.kept_video_ids.tolist())
    images = set(part.kept_image_ids.tolist())
    keep = {
        "videos": lambda r: r.get("id") in videos,
        "tracks": lambda r: r.get("video_id") in videos,
        "images": lambda r: r.get("id") in images,
        "annotations": lambda r: r.get("image_id") in images,
    }
    out = {}
    for key, value in data.items():
        if key in keep and isinstance(value, list):
            value = [r for r in value if isinstance(r, dict) and keep[key](r)]
        out[key] = value
    return out


def _write_table(part: LongtailPart, path: Path) -> Path:
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS[part.unit], lineterminator="\n")
        writer.writeheader()
        writer.writerows(part.rows())
    return path


def _write_list(names: dict, header: str, path: Path) -> Path:
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(header + "\n")
        for key in sorted(names):
            fh.write(f"{key}\t{names[key]}\n")
    return path


def _write_subset(source: Path, part: LongtailPart, out: Path) -> dict:
    """Filter ``source`` to ``part`` into ``out``; return the source's name and sha256."""
    raw = source.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    data = json.loads(raw)
    del raw
    save_json(subset_records(data, part), out, indent=None)
    return {"file": source.name, "sha256": digest}


def write_longtail_split(
    train_json, out_dir, *, ratio: float = 100, profile: str = "exp", seed: int = 0, det_json=None
) -> dict:
    """``lvod data longtail-split``: split ``train_json`` (and ``det_json``) into ``out_dir``.

    Writes (atomically; ``<stem>`` is the input file's name without ``.json``):

    - ``<stem>_lt<ratio>.json``: the train file restricted to the kept videos (records,
      ids, ``categories`` and top-level keys as in the input; compact JSON);
    - ``kept_videos.txt``: ``video_id<TAB>name`` of each kept video, by id, after a header;
    - ``class_table.csv``: per class, in rank order: ``TABLE_COLUMNS["video"]``;
    - with ``det_json``: ``<det stem>_lt<ratio>.json``, ``kept_det_images.txt``
      (``image_id<TAB>file_name``) and ``det_class_table.csv``;
    - ``split.json`` (last): the parameters, the ranking, the sources' names and sha256,
      the output names, counts, the achieved ratio and the classes not met.

    The same inputs and parameters give byte-identical files. Returns ``{"files": {key:
    Path}, "summary": the split.json dict, "split": LongtailSplit}``; prints nothing.
    """
    train_json, out_dir = Path(train_json), Path(out_dir)
    check_parameters(ratio, profile, seed, train_json)
    train = load_cocovid(train_json)
    det = load_cocovid(det_json) if det_json is not None else None
    split = make_longtail_split(train, ratio=ratio, profile=profile, seed=seed, det=det)
    del train, det
    parts = [("train", split.vid, train_json, "kept_videos.txt", "video_id\tname", "class_table.csv")]
    if split.det is not None:
        parts.append(
            ("det", split.det, Path(det_json), "kept_det_images.txt", "image_id\tfile_name", "det_class_table.csv")
        )
    names = [output_name(p[2], ratio) for p in parts]
    if len(set(names)) < len(names):
        raise DataError(
            det_json,
            "file name",
            f"gives the same output name as the train file ({names[0]})",
            "rename one of the two input files",
        )
    files, sources = {}, {}
    for (key, part, source, list_name, header, table_name), name in zip(parts, names):
        out = out_dir / name
        if out.resolve() == source.resolve():
            raise DataError(source, "output", f"{out} would overwrite the input", "pass another --out folder")
        sources[key] = _write_subset(source, part, out)
        files[f"{key}_json"] = out
        listed = part.video_names if part.unit == "video" else part.image_names
        files[list_name.removesuffix(".txt")] = _write_list(listed, header, out_dir / list_name)
        files[table_name.removesuffix(".csv")] = _write_table(part, out_dir / table_name)
    summary = {
        "lvod_longtail_split": 1,
        **split.summary(),
        "sources": sources,
        "outputs": {key: path.name for key, path in files.items()},
    }
    files["split"] = save_json(summary, out_dir / "split.json")
    return {"files": files, "summary": summary, "split": split}
