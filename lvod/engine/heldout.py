"""The calibration split: whole held-out training videos, never frames of the reported split.

- :func:`select_held_out` / :func:`held_out_split`: the ``val_held_out`` split, whole videos
  of the first video training source (else the first source), a ``fraction`` (0.2) chosen
  by a seeded hash of each video's name (``sha256("<seed>:<name>")``, lowest first: a
  video's rank does not depend on the other videos, so adding some moves the cut-off, not
  the order), plus, with ``cover_classes``, for every class in two or more videos but in
  none of the chosen ones, its lowest-ranked video. Every frame of a chosen video is evaluated. It must share no
  frame with the reported split (``data.val``; checked). The detector was trained on these
  videos unless they were left out of training: a parameter picked on them is picked on
  seen data, and ``calibration.json`` says so (``held_out.in_training``).
- :func:`write_held_out_files` (``lvod calibrate --write-split DIR``): the held-out videos
  and the rest as two CocoVID files, for a protocol where the detector never sees the
  calibration videos (train on the rest, calibrate with ``--split DIR/held_out.json``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lvod.errors import DataError


def _rank_key(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}:{name}".encode()).digest()


def select_held_out(names, video_labels, fraction: float, seed: int = 0, *, cover_classes: bool = True) -> np.ndarray:
    """Indices (sorted) of the held-out videos among ``names`` (one per video, unique).

    ``video_labels[i]``: the classes in video i (any ints). A ``fraction`` of the videos
    (at least one) with the lowest ``sha256("<seed>:<name>")``; ``cover_classes`` adds, for
    each class in >= 2 videos and in none chosen, its lowest-ranked video.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the held-out fraction must be in (0, 1], got {fraction}")
    n = len(names)
    if n == 0:
        return np.zeros(0, np.int64)
    order = sorted(range(n), key=lambda i: (_rank_key(seed, str(names[i])), i))
    chosen = set(order[: min(n, max(1, round(fraction * n)))])
    if cover_classes:
        sets = [set(np.asarray(v).tolist()) for v in video_labels]
        for c in sorted(set().union(*sets)):
            having = [i for i in order if c in sets[i]]
            if len(having) >= 2 and not chosen.intersection(having):
                chosen.add(having[0])
    return np.array(sorted(chosen), np.int64)


def subset_records(ds, video_ids) -> dict:
    """A CocoVID dict of ``ds``'s videos ``video_ids`` (all their frames and boxes)."""
    video_ids = set(int(v) for v in video_ids)
    rows = [r for v in sorted(video_ids) for r in ds.frame_rows(v).tolist()]
    images, anns = [], []
    for r in rows:
        images.append(
            {
                "id": int(ds.img_ids[r]),
                "file_name": ds.img_file_names[r],
                "width": int(ds.img_width[r]),
                "height": int(ds.img_height[r]),
                "video_id": int(ds.img_video_ids[r]),
                "frame_id": int(ds.img_frame_ids[r]),
                "is_vid_train_frame": bool(ds.img_is_key[r]),
            }
        )
        for a in ds.anns_of_image(r).tolist():
            x, y, w, h = (float(v) for v in ds.ann_boxes[a])
            anns.append(
                {
                    "id": int(ds.ann_ids[a]),
                    "image_id": int(ds.img_ids[r]),
                    "video_id": int(ds.img_video_ids[r]),
                    "category_id": int(ds.ann_cat_ids[a]),
                    "bbox": [x, y, w, h],
                    "area": float(ds.ann_area[a]),
                    "iscrowd": int(bool(ds.ann_iscrowd[a])),
                    "instance_id": int(ds.ann_instance_ids[a]),
                    "occluded": bool(ds.ann_occluded[a]),
                    "generated": bool(ds.ann_generated[a]),
                }
            )
    videos = [{"id": int(v["id"]), "name": str(v.get("name", v["id"]))} for v in ds.videos if v["id"] in video_ids]
    return {"categories": ds.categories, "videos": videos, "images": images, "annotations": anns}


def choose_videos(ds, fraction: float, seed: int = 0, *, cover_classes: bool = True) -> np.ndarray:
    """Video ids of ``ds`` held out by :func:`select_held_out` (keys: the video names)."""
    vids = np.array([int(v["id"]) for v in ds.videos], np.int64)
    names = [str(v.get("name") or v["id"]) for v in ds.videos]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for n, i in zip(names, vids.tolist())]
    real = ~np.asarray(ds.ann_iscrowd, bool)
    pairs = np.stack([ds.ann_video_ids[real], np.asarray(ds.ann_labels, np.int64)[real]], 1).reshape(-1, 2)
    pairs = np.unique(pairs, axis=0)  # (video, label) sorted by video
    starts = np.searchsorted(pairs[:, 0], vids)
    ends = np.searchsorted(pairs[:, 0], vids, side="right")
    video_labels = [pairs[a:b, 1] for a, b in zip(starts, ends)]
    return vids[select_held_out(names, video_labels, fraction, seed, cover_classes=cover_classes)]


def write_held_out_files(cfg, out_dir, *, fraction=0.2, seed=0, cover_classes=True) -> dict:
    """For a clean protocol (the detector never sees the calibration videos): write
    ``held_out.json`` (the ``val_held_out`` videos of the first video training source) and
    ``train_without_held_out.json`` (the rest) into ``out_dir``. Train on the second
    (``data.train`` pointing at it), then ``lvod calibrate RUN --split held_out.json
    --images-root <the source's images>``. Returns ``{"held_out", "train", "videos",
    "images_root"}``."""
    from lvod.data.cocovid import load_cocovid
    from lvod.io import save_json

    src = _train_source(cfg)
    root = Path(cfg.data.root)
    images_root = root / src.images_root if src.images_root else (root / src.ann_file).parent
    train = load_cocovid(root / src.ann_file)
    chosen = choose_videos(train, fraction, seed, cover_classes=cover_classes)
    rest = sorted(set(int(v["id"]) for v in train.videos) - set(chosen.tolist()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held = save_json(subset_records(train, chosen), out / "held_out.json", indent=None)
    kept = save_json(subset_records(train, rest), out / "train_without_held_out.json", indent=None)
    return {"held_out": held, "train": kept, "videos": chosen.tolist(), "images_root": images_root}


def _train_source(cfg):
    if not cfg.data.train:
        raise DataError(cfg.name or "<config>", "data.train", "is empty", "use the run's own config")
    return next((s for s in cfg.data.train if s.load_as_video), cfg.data.train[0])


def _image_paths(ds, images_root) -> set[str]:
    root = Path(images_root) if images_root is not None else ds.path.parent
    return {str((root / n).resolve()) for n in ds.img_file_names}


def held_out_split(cfg, folder, *, split="val_held_out", fraction=0.2, seed=0, cover_classes=True, images_root=None):
    """The calibration split as ``(CocoVid, images_root, info)``; its annotation file is
    written into ``folder`` (a temporary folder of the caller).

    ``split="val_held_out"``: :func:`select_held_out` over the first video training source;
    any other value is an annotation file used whole (``images_root`` relative to nothing:
    default the training source's). Refused (``DataError``) when it shares a frame with
    ``data.val``, the reported split.
    """
    from lvod.data.cocovid import load_cocovid
    from lvod.io import save_json

    src = _train_source(cfg)
    root = Path(cfg.data.root)
    train_root = root / src.images_root if src.images_root else None
    if split == "val_held_out":
        train = load_cocovid(root / src.ann_file, images_root=train_root)
        chosen = choose_videos(train, fraction, seed, cover_classes=cover_classes)
        path = Path(folder) / "held_out.json"
        save_json(subset_records(train, chosen), path, indent=None)
        ds = load_cocovid(path, images_root=train_root if train_root is not None else train.path.parent)
        held_root = train_root if train_root is not None else train.path.parent
        info = {
            "split": split,
            "source": str(root / src.ann_file),
            "fraction": fraction,
            "seed": seed,
            "cover_classes": cover_classes,
            "in_training": True,
        }
    else:
        held_root = Path(images_root) if images_root is not None else train_root
        ds = load_cocovid(split, images_root=held_root)
        train = load_cocovid(root / src.ann_file, images_root=train_root)
        seen = len(_image_paths(ds, held_root) & _image_paths(train, train_root))
        info = {"split": "file", "source": str(split), "in_training": seen > 0}
    val_root = root / cfg.data.val.images_root if cfg.data.val.images_root else None
    val = load_cocovid(root / cfg.data.val.ann_file, images_root=val_root)
    shared = _image_paths(ds, held_root) & _image_paths(val, val_root)
    if shared:
        raise DataError(
            val.path,
            "images",
            f"{len(shared)} frames of the calibration split are in the reported split (data.val), "
            f"e.g. {sorted(shared)[0]}; a parameter chosen on them would be chosen on the test data",
            "calibrate on held-out training videos (--split val_held_out) or on a file disjoint from data.val",
        )
    info.update(
        videos=[{"id": int(v["id"]), "name": str(v.get("name", v["id"]))} for v in ds.videos],
        frames=int(ds.num_images),
        boxes=int((~np.asarray(ds.ann_iscrowd, bool)).sum()),
    )
    return ds, held_root, info
