"""BAGS class-frequency groups: the group table, its builders, and its JSON file.

A :class:`GroupTable` splits the C object classes into G frequency groups by their
training instance counts (Balanced Group Softmax, Li et al. 2020) and derives the two
tables a group-softmax head needs:

- ``label2binlabel`` ``LongTensor (G+1, C+1)``: row 0 is the background-vs-object group
  (background -> 0, every object -> 1); row k (1..G) maps a member class to its 1-based
  rank inside group k (members in ascending ``category_id`` order) and every other label,
  background included, to 0 ("others"). Columns are contiguous labels: 0 = background,
  label i = the i-th class in ascending ``category_id`` order (see ``docs/DESIGN.md``).
- ``pred_slice`` ``LongTensor (G+1, 2)``: ``(start, length)`` of each group's logits;
  group 0 has 2, group k has ``n_k + 1``; total ``(C + 1) + (G + 1)`` logits (LVIS v0.5:
  1231 + 5 = 1236, as the reference ``pred_slice_with0.pt``).

Builders (:func:`build_groups`): explicit edges (BAGS: 10, 100, 1000 give the bins
[0, 10), [10, 100), [100, 1000), [1000, inf)), count quantiles, or log-spaced edges. Every
method ends in integer-or-real edges and half-open bins ``[lo, hi)``; empty bins are
dropped. :func:`format_groups` is the table as text.

This module is the maths only (no files). The files live in :mod:`lvod.bags_io`, which
imports this module (never the other way): ``save_groups`` / ``load_groups`` (the
readable ``groups.json``, every invariant checked on load), ``import_bags`` /
``export_bags`` (the reference BAGS files ``label2binlabel.pt``, ``pred_slice_with0.pt``,
``valsplit.pkl``) and ``make_groups`` (the ``lvod groups`` job: counts from a file, table,
files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from lvod.errors import DataError

METHODS = ("edges", "quantiles", "log", "lvis")
LVIS_EDGES = (11, 101)  # LVIS: rare 1-10, common 11-100, frequent > 100 training images
BASES = {
    "instances": "training instances (non-crowd boxes) per class",
    "images": "training images (key frames holding the class) per class",
}
THREE_NAMES = ("rare", "common", "frequent")
LABEL_CONVENTION = (
    "contiguous labels: 0 = background, label i (1..C) = classes[i-1], the i-th class in "
    "ascending category_id order. Group 0 is background vs object: label_map sends "
    "background to 0 and every object to 1. In object group k (1..G, ascending count "
    "bins [lo, hi)) label_map sends a member to its 1-based rank among the members in "
    "ascending category_id order and every other label, background included, to 0 "
    "('others'). slice = [start, length] of the group's logits: group 0 has 2, group k "
    "has n_k + 1, slices are contiguous from 0, total logits = (C + 1) + (G + 1) = C + G + 2."
)


def plain_number(x):
    """A count edge as int when integral, else float (keeps the JSON readable)."""
    x = float(x)
    return int(x) if x.is_integer() else x


def bin_bounds(edges, b: int) -> tuple[float, float]:
    """``(lo, hi)`` of bin ``b`` for inner ``edges``: bin 0 is [0, e1), the last [e_n, inf)."""
    lo = 0 if b == 0 else edges[b - 1]
    hi = edges[b] if b < len(edges) else math.inf
    return lo, hi


def group_names_for(num_groups: int) -> tuple:
    """Readable group names: ``rare, common, frequent`` for three groups, else ``g1..gk``."""
    return THREE_NAMES if num_groups == 3 else tuple(f"g{g}" for g in range(1, num_groups + 1))


def bin_name(lo, hi) -> str:
    """Readable bin name, e.g. ``'[10, 100)'`` or ``'[1000, inf)'``."""
    return f"[{plain_number(lo)}, {'inf' if math.isinf(hi) else plain_number(hi)})"


def assign_bins(counts, edges) -> np.ndarray:
    """Bin index of each count: number of edges <= count (so ``count < e1`` -> bin 0)."""
    return np.searchsorted(
        np.asarray(edges, dtype=np.float64), np.asarray(counts, dtype=np.float64), side="right"
    ).astype(np.int64)


def quantile_edges(counts, k: int) -> tuple:
    """Edges giving about ``k`` groups of equal class count, never splitting a count value.

    Sort the counts; the j-th cut aims at position ``round(j * C / k)`` and moves to the
    nearest position where the sorted count changes (on a tie of distance, the lower one),
    so classes with equal counts always share a group. The edge is the count just above
    the cut. Repeated edges collapse, so fewer than ``k`` groups can come back.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"quantile groups need an integer k >= 1, got {k!r}")
    s = np.sort(np.asarray(counts, dtype=np.int64))
    valid = np.flatnonzero(s[1:] > s[:-1]) + 1  # cut positions between different counts
    edges = set()
    for j in range(1, k):
        if valid.size == 0:
            break
        p = math.floor(j * s.size / k + 0.5)
        q = valid[np.argmin(np.abs(valid - p))]  # argmin takes the first = lower on ties
        edges.add(int(s[q]))
    return tuple(sorted(edges))


def log_edges(counts, k: int) -> tuple:
    """Inner edges of ``k`` bins equally spaced in log(count) between min and max count.

    Edges are rounded up to integers, which leaves the bins of integer counts unchanged
    (``n < e`` iff ``n < ceil(e)``); a relative 1e-9 slack stops float noise turning an
    exact 10.0 into 11. A minimum of 0 is treated as 1.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"log groups need an integer k >= 1, got {k!r}")
    c = np.asarray(counts, dtype=np.float64)
    lo, hi = max(float(c.min()), 1.0), float(c.max())
    if hi <= lo:
        return ()
    raw = lo * (hi / lo) ** (np.arange(1, k) / k)
    return tuple(sorted({int(math.ceil(e * (1 - 1e-9))) for e in raw}))


def label_maps(group_of_label: np.ndarray, num_groups: int) -> np.ndarray:
    """``label2binlabel`` as int64 ``(G+1, C+1)`` from each label's group (0 for background).

    Ranks follow label order, which is ascending category-id order.
    """
    gol = np.asarray(group_of_label, dtype=np.int64)
    table = np.zeros((num_groups + 1, gol.size), dtype=np.int64)
    table[0, 1:] = 1
    for g in range(1, num_groups + 1):
        members = np.flatnonzero(gol == g)
        table[g, members] = np.arange(1, members.size + 1)
    return table


def logit_slices(group_sizes) -> np.ndarray:
    """``pred_slice`` as int64 ``(G+1, 2)``: lengths ``[2, n_1 + 1, ...]``, contiguous starts."""
    lengths = np.array([2] + [int(n) + 1 for n in group_sizes], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.stack([starts, lengths], axis=1)


@dataclass(frozen=True)
class GroupTable:
    """Frequency groups of one dataset's classes (see the module docstring for the tables).

    Fields: ``dataset``; ``cat_ids`` (ascending); ``cat_names``; ``counts`` (training
    instances per class in ``cat_ids`` order, or None for a table imported without
    counts); ``method`` (one of :data:`METHODS`); ``k`` (requested groups for quantiles /
    log, else None); ``edges`` (inner count edges, ascending); ``groups`` (category ids per
    object group, ascending within a group, groups in ascending bin order); ``bounds``
    (``(lo, hi)`` count bin of each group, ``hi = inf`` for the open bin); ``basis`` (what
    was counted, a key of :data:`BASES`: ``"instances"`` or ``"images"``); ``notes`` (what
    an import tolerated; not compared).

    Names: ``group_names`` are readable (``rare, common, frequent`` for three groups, else
    ``g1..gk``), ``group_bins`` the count bins (``'[0, 10)'``) and ``group_labels`` both
    (``'rare [0, 10)'``), which every table and plot shows.

    Derived, set on construction: ``label2binlabel`` LongTensor (G+1, C+1), ``pred_slice``
    LongTensor (G+1, 2), ``group_of_label`` int64 (C+1,) (0 for background),
    ``rank_of_label`` int64 (C+1,), ``num_classes`` C, ``num_groups`` G, ``num_logits``.
    """

    dataset: str
    cat_ids: tuple
    cat_names: tuple
    counts: tuple | None
    method: str
    edges: tuple
    groups: tuple
    bounds: tuple
    k: int | None = None
    basis: str = "instances"
    notes: tuple = field(default=(), compare=False)

    def __post_init__(self):
        put = object.__setattr__
        put(self, "basis", str(self.basis))
        put(self, "cat_ids", tuple(int(c) for c in self.cat_ids))
        put(self, "cat_names", tuple(str(n) for n in self.cat_names))
        if self.counts is not None:
            put(self, "counts", tuple(int(c) for c in self.counts))
        put(self, "edges", tuple(plain_number(e) for e in self.edges))
        put(self, "groups", tuple(tuple(int(c) for c in g) for g in self.groups))
        put(
            self,
            "bounds",
            tuple(
                (plain_number(lo), math.inf if hi is None or math.isinf(hi) else plain_number(hi))
                for lo, hi in self.bounds
            ),
        )
        put(self, "notes", tuple(self.notes))
        gol = _check_table(self, f"<GroupTable {self.dataset or 'unnamed'}>")
        table = label_maps(gol, len(self.groups))
        put(self, "group_of_label", gol)
        put(self, "rank_of_label", table.max(axis=0) * (gol > 0))
        put(self, "label2binlabel", torch.from_numpy(table))
        put(self, "pred_slice", torch.from_numpy(logit_slices([len(g) for g in self.groups])))

    def __repr__(self) -> str:
        return (
            f"GroupTable(dataset={self.dataset!r}, classes={self.num_classes}, method={self.method!r}, "
            f"basis={self.basis!r}, edges={list(self.edges)}, "
            f"groups={dict(zip(self.group_labels, map(len, self.groups)))})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1 + self.num_groups + 1  # sum of pred_slice lengths

    @property
    def group_names(self) -> tuple:
        """Readable name of each object group: ``('rare', 'common', 'frequent')`` for three
        groups, else ``('g1', ..., 'gk')``."""
        return group_names_for(self.num_groups)

    @property
    def group_bins(self) -> tuple:
        """Count bin of each object group, e.g. ``('[0, 10)', '[10, 100)')``."""
        return tuple(bin_name(lo, hi) for lo, hi in self.bounds)

    @property
    def group_labels(self) -> tuple:
        """Name and bin of each object group, e.g. ``('rare [0, 11)', ...)``: what tables show."""
        return tuple(f"{n} {b}" for n, b in zip(self.group_names, self.group_bins))

    @property
    def basis_description(self) -> str:
        """What the counts are, e.g. ``'training instances (non-crowd boxes) per class'``."""
        return BASES[self.basis]

    def labels_of_group(self, g: int) -> np.ndarray:
        """Contiguous labels (1..C) of object group ``g`` (1..G), ascending."""
        return np.flatnonzero(self.group_of_label == g)


def _check_table(t: GroupTable, file: str) -> np.ndarray:
    """Check a table's invariants; return ``group_of_label`` (C+1,). Raises DataError."""
    ids = np.asarray(t.cat_ids, dtype=np.int64)
    if ids.size == 0:
        raise DataError(file, "cat_ids", "there are no classes", "give at least one class")
    if np.any(np.diff(ids) <= 0):
        raise DataError(
            file,
            "cat_ids",
            "category ids are not strictly ascending (duplicate or unsorted)",
            "list every class once, sorted by id",
        )
    if len(t.cat_names) != ids.size:
        raise DataError(
            file, "cat_names", f"{len(t.cat_names)} names for {ids.size} classes", "give one name per class"
        )
    if t.counts is not None and (len(t.counts) != ids.size or min(t.counts) < 0):
        raise DataError(file, "counts", "need one count >= 0 per class", "give one non-negative count per class")
    if t.method not in METHODS:
        raise DataError(file, "method", f"unknown method {t.method!r}", f"use one of {', '.join(METHODS)}")
    if t.basis not in BASES:
        raise DataError(file, "basis", f"unknown basis {t.basis!r}", f"use one of {', '.join(BASES)}")
    if t.method == "lvis" and tuple(t.edges) != LVIS_EDGES:
        raise DataError(
            file,
            "edges",
            f"method 'lvis' has the fixed edges {list(LVIS_EDGES)}, not {list(t.edges)}",
            "use method 'edges' for other thresholds",
        )
    edges = np.asarray(t.edges, dtype=np.float64)
    if np.any(edges <= 0) or np.any(np.diff(edges) <= 0):
        raise DataError(
            file,
            "edges",
            f"edges {list(t.edges)} are not positive and strictly ascending",
            "give increasing positive count thresholds",
        )
    if len(t.bounds) != len(t.groups):
        raise DataError(file, "bounds", f"{len(t.bounds)} bounds for {len(t.groups)} groups", "give one bin per group")
    bins = [bin_bounds(t.edges, b) for b in range(len(t.edges) + 1)]
    pos = [bins.index(bd) if bd in bins else -1 for bd in t.bounds]
    for g, p in enumerate(pos, start=1):
        if p < 0:
            raise DataError(
                file,
                f"group {g}",
                f"bin {bin_name(*t.bounds[g - 1])} is not a bin of edges {list(t.edges)}",
                "use bins [0, e1), [e1, e2), ..., [en, inf) of the edges",
            )
    if pos != sorted(set(pos)):
        raise DataError(file, "groups", "groups are not in ascending, distinct count bins", "order groups by bin")
    gol = np.zeros(ids.size + 1, dtype=np.int64)
    for g, members in enumerate(t.groups, start=1):
        m = np.asarray(members, dtype=np.int64)
        if m.size == 0:
            raise DataError(file, f"group {g}", "the group is empty", "drop empty groups")
        if np.any(np.diff(m) <= 0):
            raise DataError(file, f"group {g}", "category ids are not strictly ascending", "sort each group's ids")
        rows = np.searchsorted(ids, m)
        bad = (rows >= ids.size) | (ids[np.minimum(rows, ids.size - 1)] != m)
        if bad.any():
            raise DataError(
                file, f"group {g}", f"category id {int(m[bad][0])} is not a class", "only list ids from cat_ids"
            )
        twice = rows[gol[rows + 1] != 0]
        if twice.size:
            raise DataError(
                file,
                f"category_id {int(ids[twice[0]])}",
                f"is in groups {int(gol[twice[0] + 1])} and {g}",
                "put every class in exactly one group",
            )
        gol[rows + 1] = g
    missing = np.flatnonzero(gol[1:] == 0)
    if missing.size:
        raise DataError(
            file,
            f"category_id {int(ids[missing[0]])}",
            f"is in no group ({missing.size} classes are)",
            "put every class in exactly one group",
        )
    if t.counts is not None:
        _check_counts(t, gol, file)
    return gol


def _check_counts(t: GroupTable, gol: np.ndarray, file: str) -> None:
    counts = np.asarray(t.counts, dtype=np.float64)
    lo = np.array([b[0] for b in t.bounds], dtype=np.float64)[gol[1:] - 1]
    hi = np.array([b[1] for b in t.bounds], dtype=np.float64)[gol[1:] - 1]
    bad = np.flatnonzero((counts < lo) | (counts >= hi))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            file,
            f"category_id {t.cat_ids[i]}",
            f"count {t.counts[i]} is outside its group's bin {bin_name(lo[i], hi[i])}",
            "rebuild the groups from the counts (lvod groups)",
        )
    if t.method in ("quantiles", "log"):
        redo = (quantile_edges if t.method == "quantiles" else log_edges)(t.counts, t.k)
        if tuple(redo) != t.edges:
            raise DataError(
                file,
                "edges",
                f"edges {list(t.edges)} are not the {t.method} edges {list(redo)} of the counts with k={t.k}",
                "rebuild the groups from the counts (lvod groups)",
            )


def build_groups(
    cat_ids, counts, *, method="edges", edges=None, k=None, names=None, dataset="", basis="instances"
) -> GroupTable:
    """Group classes by count. ``cat_ids``/``counts``/``names`` are parallel, any order.

    ``method="edges"`` needs ``edges`` (ascending positive thresholds; BAGS uses
    ``(10, 100, 1000)``); ``"quantiles"`` and ``"log"`` need ``k`` (see
    :func:`quantile_edges`, :func:`log_edges`); ``"lvis"`` uses LVIS's fixed edges
    :data:`LVIS_EDGES` (rare 1-10, common 11-100, frequent > 100; LVIS counts training
    images, so use it with ``basis="images"``). Bins are ``[0, e1), [e1, e2), ...,
    [e_n, inf)``; empty bins are dropped. ``basis`` records what the counts are
    (:data:`BASES`).
    """
    ids = np.asarray(cat_ids, dtype=np.int64).ravel()
    cnt = np.asarray(counts, dtype=np.int64).ravel()
    nm = [str(c) for c in ids] if names is None else [str(n) for n in names]
    if cnt.size != ids.size or len(nm) != ids.size:
        raise ValueError(f"{ids.size} cat_ids, {cnt.size} counts and {len(nm)} names: give one each per class")
    if method == "edges":
        if edges is None:
            raise ValueError("method 'edges' needs edges, e.g. (10, 100, 1000) as in BAGS")
        edges, k = tuple(edges), None
    elif method in ("quantiles", "log"):
        if edges is not None:
            raise ValueError(f"method {method!r} computes its edges; do not pass edges")
        edges = (quantile_edges if method == "quantiles" else log_edges)(cnt, k)
    elif method == "lvis":
        if edges is not None:
            raise ValueError("method 'lvis' has fixed edges (11, 101); do not pass edges")
        edges, k = LVIS_EDGES, None
    else:
        raise ValueError(f"unknown group method {method!r}; use one of {', '.join(METHODS)}")
    order = np.argsort(ids, kind="stable")
    ids, cnt, nm = ids[order], cnt[order], [nm[i] for i in order]
    b = assign_bins(cnt, edges)
    kept = np.unique(b)
    return GroupTable(
        dataset=dataset,
        cat_ids=ids,
        cat_names=nm,
        counts=cnt,
        method=method,
        k=k,
        basis=basis,
        edges=edges,
        groups=[ids[b == i] for i in kept],
        bounds=[bin_bounds(tuple(edges), int(i)) for i in kept],
    )


# ----------------------------------------------------------------------------- text


def format_groups(t: GroupTable, max_names: int = 8) -> str:
    """A plain-text table: group, bin, #classes, min/max count, class names."""
    lines = [
        f"{t.dataset or 'groups'}: {t.num_classes} classes in {t.num_groups} groups "
        f"(method {t.method}{'' if t.k is None else f', k={t.k}'}, edges {list(t.edges)}), "
        f"{t.num_logits} logits",
        f"counts: {t.basis_description}",
        f"{'group':<9} {'bin':<18} {'classes':>7} {'min':>9} {'max':>9}  names",
    ]
    for g in range(1, t.num_groups + 1):
        labels = t.labels_of_group(g)
        c = [t.counts[i - 1] for i in labels] if t.counts is not None else None
        names = [t.cat_names[i - 1] for i in labels]
        shown = ", ".join(names[:max_names]) + (f", ... (+{len(names) - max_names})" if len(names) > max_names else "")
        lines.append(
            f"{t.group_names[g - 1]:<9} {t.group_bins[g - 1]:<18} {len(labels):>7} {min(c) if c else '-':>9} "
            f"{max(c) if c else '-':>9}  {shown}"
        )
    lines += [f"note: {n}" for n in t.notes]
    return "\n".join(lines)
