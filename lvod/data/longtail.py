"""A long-tailed training split of a CocoVID file (lvod's long-tail ImageNet VID benchmark).

The recipe of ImageNet-LT / VideoLT / SSv2-LT applied to video detection (REFERENCE
section 8): the training items of each class are subsampled to a fixed profile with a
chosen imbalance ratio, with a fixed seed, and the list of kept items is published. Val is
never touched (only a train file is written).

What this module holds:

- pure functions for the maths: :func:`rank_classes`, :func:`profile_targets`,
  :func:`class_membership`, :func:`select_items`, :func:`explain_classes`;
- :func:`make_longtail_split` (``CocoVid`` in, :class:`LongtailSplit` out, nothing written);
- :func:`write_longtail_split`, the one function that writes files (atomically).

The unit is a whole training video: a video is kept or dropped, never frames of a kept
video. DET images (a plain COCO file: every image is a one-frame video) follow the same
per-class profile with their own ``n_max`` (the largest DET count of any class), the same
ratio and the VID class ranking; a class with fewer DET images than its DET target keeps
them all and is reported.

Counting. A video *contains* class c when it has at least one non-crowd box of c on any of
its frames (crowd/ignore boxes are not training targets); a video with several classes
counts once for each. Videos without any non-crowd box belong to no class and are dropped.

Ranking. Classes are ranked from the most to the least frequent by their number of
training videos, ties broken by the smaller category id; rank 0 is the head. A class with
no training video ranks last, outside the profile: it gets the tail target, which it
cannot meet (the report says so).

Profiles. With ``C`` ranked classes that have videos, ``n_max`` the head's count and
``r`` the ratio, the target of rank ``i`` (0-based) is

- ``exp``:    ``n_i = n_max * r ** (-i / (C - 1))`` (geometric: a straight line on a log
  axis against rank);
- ``pareto``: ``n_i = n_max * (i + 1) ** (-a)`` with ``a = ln(r) / ln(C)`` (Zipf's law:
  a straight line on log-log axes; the same as ``n_max * r ** (-ln(i + 1) / ln(C))``,
  so it lies below ``exp`` at every rank between the ends: it drops fast over the first
  ranks, then flattens, leaving many classes near the tail count).

Both give ``n_0 = n_max`` and ``n_{C-1} = n_max / r``. Targets are rounded half up and
never below 1 (a class never drops to zero videos); ``C = 1`` gives ``n_max``.

Selection (:func:`select_items`), in two steps.

1. Greedy draw. Classes are processed from the rarest to the most frequent. A class first
   counts the videos already kept for rarer classes; when that is below its target it
   draws the missing ones from its remaining videos in a random order
   (``numpy.random.default_rng`` seeded with ``(seed, 0)`` for VID, ``(seed, 1)`` for
   DET). Videos whose other classes are all still below their targets are taken first; a
   video that would push another class above its target is taken only when none is left
   (the one that overshoots least); a video that would push a rarer, already processed
   class more than one video above its target is never taken.
2. Repair by swaps. Multi-class videos kept for rare classes can leave a frequent class
   short (its remaining videos hold rare classes already at their targets) or above its
   target. For each class off its target, a move keeps (drops) one of its videos and, for
   every other class that video would push out of bounds, drops (keeps) one video of that
   class without the first class; a move is made only when no other class ends further
   beyond the one-video tolerance. A second pass does the same for classes within the
   tolerance but not exactly on target, with no other class moving away from its target.
   Every move shrinks the total miss, so the repair ends.

A class therefore ends within one video of its target unless the data prevent it: too few
videos in the input, or multi-class videos that tie it to classes already at their limits.
:func:`explain_classes` writes the reason into the per-class report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvod.data.cocovid import CocoVid, load_cocovid
from lvod.errors import DataError
from lvod.io import atomic_write, save_json

PROFILES = ("exp", "pareto")
PROFILE_FORMULAS = {
    "exp": "n_i = n_max * ratio ** (-i / (C - 1))",
    "pareto": "n_i = n_max * (i + 1) ** (-ln(ratio) / ln(C))",
}
TABLE_COLUMNS = {  # class_table.csv (unit "video") and det_class_table.csv (unit "image")
    unit: ("cat_id", "name", "rank", f"{unit}s_before", "target", f"{unit}s_after")
    + ("boxes_before", "boxes_after", "met", "reason")
    for unit in ("video", "image")
}


# ----------------------------------------------------------------------------- the maths


def rank_classes(counts, cat_ids) -> np.ndarray:
    """Class positions (indices into ``counts``) from the most to the least frequent.

    Ties are broken by the smaller category id, so the order is deterministic.
    """
    counts = np.asarray(counts, np.int64)
    cat_ids = np.asarray(cat_ids, np.int64)
    return np.lexsort((cat_ids, -counts)).astype(np.int64)


def profile_values(n_max: float, num_classes: int, ratio: float, profile: str = "exp") -> np.ndarray:
    """Unrounded targets of ranks ``0..num_classes-1`` (see the module docstring)."""
    check_parameters(ratio, profile)
    i = np.arange(num_classes, dtype=np.float64)
    if num_classes <= 1:
        return np.full(num_classes, float(n_max))
    if profile == "exp":
        return n_max * ratio ** (-i / (num_classes - 1))
    return n_max * (i + 1) ** (-math.log(ratio) / math.log(num_classes))


def profile_targets(n_max: int, num_classes: int, ratio: float, profile: str = "exp") -> np.ndarray:
    """Integer targets of ranks ``0..num_classes-1``: the profile rounded half up, at least 1."""
    values = profile_values(n_max, num_classes, ratio, profile)
    return np.maximum(np.floor(values + 0.5), 1).astype(np.int64)


def check_parameters(ratio, profile, seed=0, source="<longtail split>") -> None:
    """DataError for a ratio below 1 (or not finite), an unknown profile, a bad seed."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not math.isfinite(ratio) or ratio < 1:
        raise DataError(
            source,
            "ratio",
            f"is {ratio!r}; the imbalance ratio must be a finite number >= 1",
            "pass e.g. --ratio 100 (the head class keeps 100x the videos of the rarest)",
        )
    if profile not in PROFILES:
        raise DataError(
            source,
            "profile",
            f"is {profile!r}, not one of {', '.join(PROFILES)}",
            "pass --profile exp or --profile pareto",
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(source, "seed", f"is {seed!r}; it must be an integer >= 0", "pass e.g. --seed 0")


def class_membership(cv: CocoVid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which video contains which class, and its boxes.

    Returns ``video_ids`` (int64 (V,), in ``cv.videos`` order), ``members`` (bool (V, C):
    the video has a non-crowd box of class ``cv.cat_ids[c]``) and ``boxes`` (int64 (V, C):
    its non-crowd boxes of that class). Columns follow ``cv.cat_ids``.
    """
    video_ids = np.array([int(v["id"]) for v in cv.videos], np.int64)
    order = np.argsort(video_ids, kind="stable")
    boxes = np.zeros((len(video_ids), cv.num_classes), np.int64)
    target = ~np.asarray(cv.ann_iscrowd, bool)
    if target.any():
        vid = cv.img_video_ids[cv.ann_image_idx[target]]
        rows = order[np.searchsorted(video_ids, vid, sorter=order)]
        cols = np.asarray(cv.ann_labels, np.int64)[target] - 1
        np.add.at(boxes, (rows, cols), 1)
    return video_ids, boxes > 0, boxes


@dataclass
class Selection:
    """What :func:`select_items` chose: ``kept`` (bool (N,)), ``picked_for`` (int64 (N,): the
    class position each kept item was drawn for, -1 when dropped), ``after`` (int64 (C,))."""

    kept: np.ndarray
    picked_for: np.ndarray
    after: np.ndarray


class _Chooser:
    """The mutable state of one selection: per-class counts of kept items and who drew what.

    ``floor[c]`` is 1 for a class with items (a class never drops to zero), else 0.
    """

    def __init__(self, members, targets, rng):
        self.members = np.asarray(members, bool)
        self.targets = np.asarray(targets, np.int64)
        self.classes_of = [np.flatnonzero(row).tolist() for row in self.members]
        self.after = np.zeros(self.members.shape[1], np.int64)
        self.picked_for = np.full(self.members.shape[0], -1, np.int64)
        self.floor = np.minimum(self.members.sum(axis=0), 1)
        self.rng = rng

    def toggle(self, item, c):
        """Keep a dropped item (drawn for class ``c``) or drop a kept one."""
        step = -1 if self.picked_for[item] >= 0 else 1
        self.picked_for[item] = c if step > 0 else -1
        for d in self.classes_of[item]:
            self.after[d] += step

    def dev(self, d, extra=0) -> int:
        return abs(int(self.after[d]) + extra - int(self.targets[d]))

    def viol(self, d, extra=0) -> int:
        """How far class d is beyond the one-video tolerance (below the floor counts big)."""
        a = int(self.after[d]) + extra
        return max(0, self.dev(d, extra) - 1) + (10**6 if a < self.floor[d] else 0)

    def shuffled_items(self, c, kept: bool) -> list:
        """Items of class c that are (not) kept, in a random order, fewest classes first."""
        items = np.flatnonzero(self.members[:, c] & ((self.picked_for >= 0) == kept))
        items = items[self.rng.permutation(len(items))].tolist()
        return sorted(items, key=lambda n: len(self.classes_of[n]))


def _greedy(ch: _Chooser, order) -> None:
    """Rarest class first: keep what rarer classes kept, draw the rest (module docstring)."""
    closed = np.zeros(len(ch.targets), bool)
    t, after = ch.targets, ch.after

    def blocked(item, c):  # would push a processed class more than one above its target
        return any(closed[d] and after[d] > t[d] for d in ch.classes_of[item] if d != c)

    def overshoot(item, c):  # how far the item pushes other classes above their targets
        return sum(max(0, after[d] + 1 - t[d]) for d in ch.classes_of[item] if d != c)

    for c in (int(x) for x in order):
        if after[c] < t[c]:
            candidates = np.flatnonzero(ch.members[:, c] & (ch.picked_for < 0))
            deferred = []
            for item in candidates[ch.rng.permutation(len(candidates))].tolist():
                if after[c] >= t[c]:
                    break
                if blocked(item, c):
                    continue
                if overshoot(item, c):
                    deferred.append(item)
                else:
                    ch.toggle(item, c)
            while after[c] < t[c] and deferred:
                deferred = [item for item in deferred if not blocked(item, c)]
                if deferred:
                    costs = [overshoot(item, c) for item in deferred]
                    ch.toggle(deferred.pop(int(np.argmin(costs))), c)
        closed[c] = True


def _attempt(ch: _Chooser, c: int, strict: bool) -> bool:
    """Make one move that brings class c one item closer to its target; False when none exists.

    The move keeps (or drops) one item of c and, for each other class that item would push
    out of bounds, drops (keeps) one item of that class that does not hold c. Bounds: no
    other class may end further beyond the one-item tolerance (``strict``: further from its
    target) than it was.
    """
    step = 1 if ch.after[c] < ch.targets[c] else -1
    measure = ch.dev if strict else ch.viol

    def harmless(delta):
        return all(measure(d, k) <= measure(d) for d, k in delta.items() if d != c)

    for item in ch.shuffled_items(c, kept=step < 0):
        delta = dict.fromkeys(ch.classes_of[item], step)
        moves = [(item, c)]
        for d in ch.classes_of[item]:
            if d == c or measure(d, delta[d]) <= measure(d):
                continue
            for other in ch.shuffled_items(d, kept=step > 0):
                if ch.members[other, c] or any(other == n for n, _ in moves):
                    continue
                trial = dict(delta)
                for e in ch.classes_of[other]:
                    trial[e] = trial.get(e, 0) - step
                if all(measure(e, trial[e]) <= measure(e) for e in ch.classes_of[other] if e != d):
                    delta, moves = trial, moves + [(other, d)]
                    break
        if harmless(delta):
            for n, cls in moves:
                ch.toggle(n, cls)
            return True
    return False


def _repair(ch: _Chooser, order) -> None:
    """Swap items until no class can come closer to its target without another moving away.

    First pass: classes beyond the one-item tolerance; second pass: any class off its target.
    """
    for strict in (False, True):
        measure = ch.dev if strict else ch.viol
        changed = True
        while changed:
            changed = False
            for c in (int(x) for x in order):
                while measure(c) > 0 and _attempt(ch, c, strict):
                    changed = True


def select_items(members, targets, order, rng: np.random.Generator) -> Selection:
    """Choose items so each class's count of kept items meets its target (module docstring).

    ``members``: bool (N, C), item n contains class c; ``targets``: int (C,); ``order``:
    class positions in processing order (rarest first); ``rng``: the only randomness.
    A rarest-first greedy draw, then a repair by swaps (:func:`_repair`).
    """
    ch = _Chooser(members, targets, rng)
    _greedy(ch, order)
    _repair(ch, order)
    return Selection(kept=ch.picked_for >= 0, picked_for=ch.picked_for.copy(), after=ch.after.copy())


def explain_classes(members, selection: Selection, targets, before, names, unit="video") -> list[str]:
    """Per class: "" when its count of kept items is within one of its target, else why not.

    ``names``: the class names, used in the reasons.
    """
    members = np.asarray(members, bool)
    targets = np.asarray(targets, np.int64)
    over_target = selection.after > targets
    reasons = []
    for c in range(members.shape[1]):
        t, got, had = int(targets[c]), int(selection.after[c]), int(before[c])
        if had == 0:
            reasons.append(f"no training {unit}s in the input")
        elif abs(got - t) <= 1:
            reasons.append("")
        elif got < t and had < t - 1:
            reasons.append(f"the input has only {had} {unit}{'s' if had != 1 else ''}")
        elif got < t:
            left = np.flatnonzero(members[:, c] & ~selection.kept)
            full = np.flatnonzero(members[left].any(axis=0) & over_target)
            reasons.append(
                f"each of its other {len(left)} {unit}s also holds a class already above its target "
                f"({', '.join(names[d] for d in full if d != c)}) and no swap could make room"
            )
        else:
            mine = members[:, c] & selection.kept & (selection.picked_for != c)
            drawn = np.bincount(selection.picked_for[mine], minlength=members.shape[1])
            detail = ", ".join(f"{names[d]}: {int(drawn[d])}" for d in np.flatnonzero(drawn))
            reasons.append(
                f"{int(mine.sum())} of its kept {unit}s were kept for other classes ({detail}); dropping "
                "any of them would take those classes more than one below their targets"
            )
    return reasons


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
