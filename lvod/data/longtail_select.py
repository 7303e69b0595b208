"""The maths of lvod's long-tailed training split (:mod:`lvod.data.longtail`): pure
functions, nothing read or written.

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

import math
import numbers
from dataclasses import dataclass

import numpy as np

from lvod.data.cocovid import CocoVid
from lvod.errors import DataError

PROFILES = ("exp", "pareto")
PROFILE_FORMULAS = {
    "exp": "n_i = n_max * ratio ** (-i / (C - 1))",
    "pareto": "n_i = n_max * (i + 1) ** (-ln(ratio) / ln(C))",
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
