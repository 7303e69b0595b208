"""CocoVID / plain COCO / TAO annotation files -> one columnar, indexed ``CocoVid``.

``load_cocovid(path)`` reads the JSON once (stdlib ``json``; see ``_loads``),
turns each section into numpy columns, drops the Python dicts, and builds the indices:
video -> frames in frame order, image -> annotations (CSR), contiguous labels. Every
defect is decided below; tolerable ones are repaired or skipped and *always* counted in
``CocoVid.report`` (``LoadReport``, see ``lvod.data.validate``); ``strict=True`` makes any
repair an error. Fatal ones raise ``lvod.errors.DataError`` naming file, record and fix.

=========================================================  ==================================  =========================
defect                                                     decision                            reported as
=========================================================  ==================================  =========================
file missing, not JSON, top level not an object            fatal                               DataError
top level is a list (a detection results file)             fatal, says "results file"          DataError
none of images/annotations/categories (VIS results, ...)   fatal, lists the keys found         DataError
no ``categories``; ``annotations`` without ``images``      fatal                               DataError
only ``categories`` (TAO test_categories.json)             loads: 0 images, ``usable`` False   note category_only
``images`` without ``annotations`` (a test-set file)       loads with 0 annotations            note no_annotations
section not a list, record not an object                   fatal                               DataError
required key absent or of the wrong type (category         fatal                               DataError
id/name, video id, image id/file_name/width/height,
annotation id/image_id/category_id/bbox), bbox not 4
finite numbers, image size <= 0, frame_id < 0
same id twice, identical records                           later copy dropped                  repair *_duplicate
same category/video/image id twice, records differ         fatal (ambiguous references)        DataError
same annotation id twice, records differ                   later ones renumbered above max id  repair ann_duplicate_id
image without ``video_id`` (plain COCO, DET images)        own one-frame video, id above every note image_without_video
                                                           real video id, frame_id 0
image ``video_id`` not in ``videos``                       video record synthesised            repair image_unknown_video
                                                                                               (note when the file has
                                                                                               no ``videos`` at all)
video image without ``frame_id``                           that video renumbered 0..n-1 by     repair frame_id_missing
                                                           TAO ``frame_index``, else file order
two images on the same frame of a video                    fatal                               DataError
frame ids with gaps                                        kept as given                       note frame_gaps
video without ``name``; video without images               ``video_<id>``; empty frame list    note
annotation ``image_id`` not in images                      skipped                             repair ann_unknown_image
annotation ``category_id`` not in categories (TAO)         skipped                             repair ann_unknown_category
box w <= 0 or h <= 0                                       skipped                             repair box_empty
box partly outside its image                               clipped to the image                repair box_clipped
box entirely outside its image                             skipped                             repair box_outside
flags (iscrowd, ignore, occluded, generated,               accepted; other values fatal        -
is_vid_train_frame) as true/false or 0/1
flag absent (LVIS has no ``iscrowd``)                      False; ``is_vid_train_frame`` True  note *_absent
``ignore`` true                                            crowd: not a target, ignored in eval -
``area`` absent                                            w*h of the (clipped) box            note area_missing
``instance_id`` absent                                     TAO ``track_id``, else -1           note instance_id_absent
annotation ``video_id`` differs from its image's           the image's video is used           repair ann_video_mismatch
frame with no annotations                                  kept                                counts.empty_frames
image file missing (``check_images`` or ``images_root``)   kept; ``report.usable`` False       missing image files
=========================================================  ==================================  =========================

A file's ``area`` is kept even when its box is clipped (it may come from a mask).
TAO extras are kept: ``CocoVid.tracks`` (raw list) and per-image ``img_neg_cat_ids`` /
``img_not_exhaustive_cat_ids`` (tuples; the image's own list, else its video's, else empty).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvod.data.sections import read_annotations, read_categories, read_images
from lvod.data.validate import LoadReport
from lvod.errors import DataError


@dataclass(eq=False)
class CocoVid:
    """An annotation file as columns plus indices (see docs/DESIGN.md "Data layer").

    Image arrays have one row per image (I), annotation arrays one row per annotation (A),
    both in file order after repairs. ``video_frames``: video id -> int64 image rows in frame
    order. CSR ``image_ann_ptr (I+1,)`` / ``ann_order (A,)``: annotation rows of image row i
    are ``ann_order[image_ann_ptr[i]:image_ann_ptr[i+1]]``.
    """

    path: Path
    categories: list
    cat_ids: np.ndarray
    cat_names: list
    videos: list
    img_ids: np.ndarray
    img_video_ids: np.ndarray
    img_frame_ids: np.ndarray
    img_width: np.ndarray
    img_height: np.ndarray
    img_is_key: np.ndarray
    img_file_names: list
    img_neg_cat_ids: list
    img_not_exhaustive_cat_ids: list
    ann_ids: np.ndarray
    ann_image_idx: np.ndarray
    ann_cat_ids: np.ndarray
    ann_labels: np.ndarray
    ann_boxes: np.ndarray
    ann_area: np.ndarray
    ann_iscrowd: np.ndarray
    ann_instance_ids: np.ndarray
    ann_occluded: np.ndarray
    ann_generated: np.ndarray
    video_frames: dict
    image_ann_ptr: np.ndarray
    ann_order: np.ndarray
    tracks: list
    images_root: Path | None
    report: LoadReport

    @property
    def num_images(self) -> int:
        return len(self.img_ids)

    @property
    def num_anns(self) -> int:
        return len(self.ann_ids)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def image_anns(self) -> tuple[np.ndarray, np.ndarray]:
        """The CSR pair ``(image_ann_ptr, ann_order)``."""
        return self.image_ann_ptr, self.ann_order

    @property
    def ann_video_ids(self) -> np.ndarray:
        """int64 (A,): video id of each annotation (through its image)."""
        return self.img_video_ids[self.ann_image_idx]

    def anns_of_image(self, row: int) -> np.ndarray:
        """Annotation rows of image row ``row`` (file order)."""
        return self.ann_order[self.image_ann_ptr[row] : self.image_ann_ptr[row + 1]]

    def frame_rows(self, video_id: int) -> np.ndarray:
        """Image rows of video ``video_id`` in frame order."""
        try:
            return self.video_frames[int(video_id)]
        except KeyError:
            raise DataError(
                self.path, f"video {video_id}", "is not in this file", "use one of the ids in CocoVid.videos"
            ) from None

    def labels_of(self, cat_ids) -> np.ndarray:
        """Contiguous labels (1..C) of category ids; DataError for an unknown id."""
        cat_ids = np.asarray(cat_ids, np.int64)
        pos = np.searchsorted(self.cat_ids, cat_ids)
        ok = (
            (pos < len(self.cat_ids)) & (self.cat_ids[np.minimum(pos, len(self.cat_ids) - 1)] == cat_ids)
            if len(self.cat_ids)
            else pos < 0
        )
        if not np.all(ok):
            bad = int(cat_ids[~ok].ravel()[0])
            raise DataError(self.path, f"category_id {bad}", "is not in categories", "map it to one of CocoVid.cat_ids")
        return pos + 1

    def image_path(self, row: int) -> Path:
        """Where image row ``row`` lives: ``images_root`` (or the file's folder) / file_name."""
        root = self.images_root if self.images_root is not None else self.path.parent
        return root / self.img_file_names[row]


def _loads(raw: bytes):
    """Parse JSON bytes (UTF-8/16/32, BOM allowed). The stdlib parser is used on purpose:
    on a 467 MB ImageNet-VID-sized file it was as fast as orjson 3.8 and peaked 1.1 GB lower
    (benchmarks/README.md)."""
    return json.loads(raw)


def _read_json(path: Path):
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file", "does not exist", "check the path") from None
    except IsADirectoryError:
        raise DataError(path, "file", "is a directory", "pass the annotation .json file") from None
    try:
        return _loads(raw)
    except ValueError as e:
        raise DataError(
            path, "file", f"is not valid JSON ({e})", "re-export it (a truncated download is the usual cause)"
        ) from None


def _check_top(data, report: LoadReport) -> None:
    if isinstance(data, list):
        looks = bool(data) and isinstance(data[0], dict) and "score" in data[0]
        report.add_fatal(
            "top level",
            "is a JSON array, not an object" + (" (it looks like a detection results file)" if looks else ""),
            "pass a COCO/CocoVID annotation file with images, annotations and "
            "categories" + ("; give results files to evaluation instead" if looks else ""),
        )
    elif not isinstance(data, dict):
        report.add_fatal("top level", f"is a {type(data).__name__}", "pass a COCO/CocoVID annotation file")
    elif not {"images", "annotations", "categories"} & data.keys():
        keys = ", ".join(sorted(data)[:8]) or "none"
        report.add_fatal(
            "top level",
            f"has none of images/annotations/categories (keys: {keys}); this is not a COCO/CocoVID/TAO annotation file",
            "pass the annotation json (mmtracking/TAO/COCO format)",
        )
    elif "categories" not in data:
        report.add_fatal("top level", "has no 'categories'", "add the category list [{id, name}, ...]")
    elif "annotations" in data and "images" not in data:
        report.add_fatal(
            "top level", "has 'annotations' but no 'images'", "add the image list the annotations refer to"
        )
    report.raise_if_fatal()
    if "images" not in data:
        report.note(
            "category_only",
            "loaded with 0 images",
            "the file holds only categories, so it cannot be trained or evaluated on",
            ["top level"],
        )
    elif "annotations" not in data:
        report.note(
            "no_annotations", "loaded with 0 annotations", "no 'annotations' key (a test-set file?)", ["top level"]
        )
    if "tracks" in data and not isinstance(data["tracks"], list):
        report.add_fatal("'tracks'", "is not a list", "make 'tracks' a JSON array (TAO format)")
        report.raise_if_fatal()


def _video_index(video_ids: np.ndarray, frame_ids: np.ndarray, all_videos) -> dict:
    order = np.lexsort((frame_ids, video_ids))
    vids = video_ids[order]
    cuts = np.flatnonzero(vids[1:] != vids[:-1]) + 1
    starts = np.concatenate([[0], cuts]) if len(vids) else np.zeros(0, np.int64)
    index = {int(v["id"]): np.zeros(0, np.int64) for v in all_videos}
    for vid, rows in zip(vids[starts].tolist(), np.split(order, cuts) if len(vids) else []):
        index[vid] = rows
    return index


def _check_files(report, root: Path, names, ids) -> None:
    root_s = os.fspath(root)
    missing = [i for i, n in enumerate(names) if not os.path.isfile(os.path.join(root_s, n))]
    if missing:
        report.set_missing_files(
            f"not found under {root}; {_images_hint(root, names, missing)}",
            [f"image {ids[i]} ({names[i]})" for i in missing[:5]],
            len(missing),
        )


def _images_hint(root: Path, names, missing) -> str:
    """The fix for missing image files: the real flag, and a well-known sub-folder of
    ``root`` that does hold the files, when there is one (ImageNet VID's ``Data/VID``,
    ``Data/DET``, as the demo data and the converter lay them out)."""
    probe = [names[i] for i in missing[:20]]
    for sub in ("Data/VID", "Data/DET", "Data", "images", "frames"):
        if all(os.path.isfile(os.path.join(os.fspath(root), sub, n)) for n in probe):
            return f"they are under {root / sub}: pass --images {root / sub}"
    return "pass the folder the file_name entries are relative to as --images (lvod data check), or data.root"


def load_cocovid(path, *, images_root=None, check_images=False, strict=False) -> CocoVid:
    """Read a CocoVID, plain COCO or TAO annotation file (see the module docstring table).

    images_root: folder that ``file_name`` is relative to (default: the file's folder);
    giving it, or ``check_images=True``, checks that every image file exists.
    strict: raise ``DataError`` on any repair instead of repairing.
    """
    path = Path(path)
    report = LoadReport(path)
    data = _read_json(path)
    _check_top(data, report)
    categories = read_categories(data["categories"], report)
    cat_ids = np.array([c["id"] for c in categories], np.int64)
    img = read_images(data.get("images", []), data.get("videos"), report)
    data["images"] = None  # let the image dicts go before the annotations are converted
    ann = read_annotations(data.get("annotations", []), img, cat_ids, report)
    data["annotations"] = None
    tracks = data.get("tracks") or []
    del data

    n_img = len(img["ids"])
    counts = np.bincount(ann["image_idx"], minlength=n_img)
    ptr = np.zeros(n_img + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    ann_order = np.argsort(ann["image_idx"], kind="stable").astype(np.int64)
    inst = ann["instance_ids"]
    # a track: one (video, instance_id, class) among the non-crowd boxes with an instance id,
    # the definition lvod stats uses (lvod.stats); a TAO file's own "tracks" records are
    # counted apart as tao_tracks
    has_track = (inst >= 0) & ~ann["iscrowd"].astype(bool)
    track_keys = np.stack(
        [img["video_ids"][ann["image_idx"][has_track]], inst[has_track], ann["cat_ids"][has_track]], axis=1
    )
    report.counts = {
        "videos": len(img["videos"]),
        "images": n_img,
        "key_frames": int(img["is_key"].sum()),
        "empty_frames": int((counts == 0).sum()),
        "annotations": len(ann["ids"]),
        "crowd_annotations": int(ann["iscrowd"].sum()),
        "instances": int(len(np.unique(inst[inst >= 0]))),
        "categories": len(categories),
        "tracks": int(len(np.unique(track_keys, axis=0))) if len(track_keys) else 0,
    }
    if tracks:
        report.counts["tao_tracks"] = len(tracks)

    root = Path(images_root) if images_root is not None else None
    if check_images or root is not None:
        _check_files(report, root if root is not None else path.parent, img["file_names"], img["ids"])
    if strict and report.repairs:
        issue = next(iter(report.repairs.values()))
        err = DataError(
            path,
            issue.examples[0],
            f"{issue.kind}: {issue.message} ({issue.count} record(s))",
            "fix the file, or load without strict to let lvod repair it as documented",
        )
        err.report = report
        raise err
    return CocoVid(
        path=path,
        categories=categories,
        cat_ids=cat_ids,
        cat_names=[c["name"] for c in categories],
        videos=img["videos"],
        img_ids=img["ids"],
        img_video_ids=img["video_ids"],
        img_frame_ids=img["frame_ids"],
        img_width=img["width"],
        img_height=img["height"],
        img_is_key=img["is_key"],
        img_file_names=img["file_names"],
        img_neg_cat_ids=img["neg"],
        img_not_exhaustive_cat_ids=img["not_exhaustive"],
        ann_ids=ann["ids"],
        ann_image_idx=ann["image_idx"],
        ann_cat_ids=ann["cat_ids"],
        ann_labels=np.searchsorted(cat_ids, ann["cat_ids"]).astype(np.int64) + 1,
        ann_boxes=ann["boxes"],
        ann_area=ann["area"],
        ann_iscrowd=ann["iscrowd"],
        ann_instance_ids=inst,
        ann_occluded=ann["occluded"],
        ann_generated=ann["generated"],
        video_frames=_video_index(img["video_ids"], img["frame_ids"], img["videos"]),
        image_ann_ptr=ptr,
        ann_order=ann_order,
        tracks=tracks,
        images_root=root,
        report=report,
    )


def check_file(ann_path, images_root=None) -> LoadReport:
    """``lvod data check``: load ``ann_path`` and return its :class:`LoadReport`.

    Image files are checked when ``images_root`` is given. A fatal defect found while the
    file is being read gives the partial report (``report.fatal`` holds the DataError,
    ``report.usable`` is False); a file that cannot be read at all (missing, not JSON)
    raises the DataError.
    """
    try:
        cv = load_cocovid(ann_path, images_root=images_root, check_images=images_root is not None)
    except DataError as e:
        report = getattr(e, "report", None)
        if report is None:
            raise
        return report
    return cv.report
