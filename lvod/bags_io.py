"""Group table files: lvod's ``groups.json``, the reference BAGS formats, and the
``lvod groups`` job that writes them. The table maths is :mod:`lvod.groups` (imported
here; it imports nothing from this module).

``groups.json`` (:func:`save_groups` / :func:`load_groups`): format ``lvod-groups``
version 1, one line per class and per group, with the label convention spelled out in the
file; loading checks every invariant of the table and raises DataError naming the record.

:func:`make_groups` is the ``lvod groups`` job: per-class counts from an annotation file
or a stats CSV (:func:`counts_from_source`), a table built from them (or imported from
BAGS files and checked against them), written as ``groups.json`` (+ the BAGS files).

The BAGS code (Li et al. 2020) keeps a group table in three files:

- ``label2binlabel.pt``: int64 tensor ``(G+1, W)``, W >= C+1, the label map of each group
  (same meaning as :attr:`lvod.groups.GroupTable.label2binlabel`);
- ``pred_slice_with0.pt``: int64 tensor ``(G+1, 2)``, ``(start, length)`` per group;
- ``valsplit.pkl``: a pickled dict of int64 numpy arrays: one entry per count bin named
  ``'(0, 10)'``, ``'[10, 100)'``, ..., ``'[1000, ~)'`` holding that bin's labels
  (ascending), plus ``'normal'`` (1..C), ``'background'`` ([0]) and ``'all'`` (0..C).

Labels are contiguous (0 = background, i = i-th class in ascending category id); for
LVIS the labels equal the category ids. Tensors are read with ``weights_only=True``;
pickles through :class:`SafeUnpickler`, which can rebuild numpy integer arrays and plain
containers and refuses every other global before anything runs.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from lvod.errors import DataError
from lvod.groups import LABEL_CONVENTION, GroupTable, build_groups, plain_number
from lvod.io import atomic_write

FORMAT = "lvod-groups"
FORMAT_VERSION = 1
FILES = ("label2binlabel.pt", "pred_slice_with0.pt", "valsplit.pkl")
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}
_BIN = re.compile(r"^[\(\[]\s*([0-9.eE+]+)\s*,\s*([0-9.eE+]+|~|inf)\s*\)$")


# ----------------------------------------------------------------------------- lvod groups.json


def _scalar(o) -> bool:
    return o is None or isinstance(o, (str, int, float, bool))


def _dumps(o, indent: int = 0) -> str:
    """JSON with one line per record: containers of scalars stay on one line."""
    if _scalar(o) or not o or all(_scalar(v) for v in (o.values() if isinstance(o, dict) else o)):
        return json.dumps(o)
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(o, dict):
        body = ",\n".join(f"{inner}{json.dumps(str(k))}: {_dumps(v, indent + 2)}" for k, v in o.items())
        return "{\n" + body + "\n" + pad + "}"
    return "[\n" + ",\n".join(inner + _dumps(v, indent + 2) for v in o) + "\n" + pad + "]"


def groups_to_dict(t: GroupTable) -> dict:
    """The JSON structure :func:`save_groups` writes (see ``LABEL_CONVENTION``)."""
    table, sl = t.label2binlabel.tolist(), t.pred_slice.tolist()
    classes = [
        {
            "label": i + 1,
            "category_id": c,
            "name": n,
            "count": None if t.counts is None else t.counts[i],
            "group": int(t.group_of_label[i + 1]),
            "rank": int(t.rank_of_label[i + 1]),
        }
        for i, (c, n) in enumerate(zip(t.cat_ids, t.cat_names))
    ]
    groups = [
        {
            "group": 0,
            "name": "background",
            "lo": None,
            "hi": None,
            "num_classes": 0,
            "slice": sl[0],
            "category_ids": [],
            "label_map": table[0],
        }
    ]
    for g, (members, (lo, hi)) in enumerate(zip(t.groups, t.bounds), start=1):
        cnt = None if t.counts is None else [t.counts[i - 1] for i in t.labels_of_group(g)]
        groups.append(
            {
                "group": g,
                "name": t.group_names[g - 1],
                "bin": t.group_bins[g - 1],
                "lo": lo,
                "hi": None if math.isinf(hi) else hi,
                "num_classes": len(members),
                "min_count": cnt and min(cnt),
                "max_count": cnt and max(cnt),
                "slice": sl[g],
                "category_ids": list(members),
                "label_map": table[g],
            }
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "label_convention": LABEL_CONVENTION,
        "dataset": t.dataset,
        "method": t.method,
        "k": t.k,
        "basis": t.basis,
        "counts_are": t.basis_description,
        "edges": list(t.edges),
        "num_classes": t.num_classes,
        "num_groups": t.num_groups,
        "num_logits": t.num_logits,
        "notes": list(t.notes),
        "classes": classes,
        "groups": groups,
    }


def save_groups(table: GroupTable, path) -> Path:
    """Write ``table`` as readable JSON (atomically); return the path."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(_dumps(groups_to_dict(table)) + "\n")
    return Path(path)


def _get(d, key, kind, file, record):
    if not isinstance(d, dict) or key not in d:
        raise DataError(file, record, f"missing key {key!r}", "write the file with lvod groups")
    v = d[key]
    if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise DataError(file, f"{record}.{key}", f"{v!r} is not an integer", "write the file with lvod groups")
    if kind is not int and not isinstance(v, kind):
        raise DataError(
            file,
            f"{record}.{key}",
            f"{v!r} is not a {getattr(kind, '__name__', kind)}",
            "write the file with lvod groups",
        )
    return v


def groups_from_dict(d: dict, file="<dict>") -> GroupTable:
    """Rebuild a table from :func:`groups_to_dict` output, checking every invariant.

    Checks: format and version; labels run 1..C in ascending id order; group 0 is the
    2-way background group; every class is in exactly one object group and its stored
    group/rank agree; each label map gives members ranks 1..n_k in id order and 0 to the
    rest; slices have lengths 2 and n_k + 1 and are contiguous from 0; the logit total is
    (C + 1) + (G + 1); counts lie in their group's bin (and reproduce quantile/log edges).
    """
    if _get(d, "format", str, file, "file") != FORMAT or _get(d, "format_version", int, file, "file") != FORMAT_VERSION:
        raise DataError(file, "format", f"not an {FORMAT} v{FORMAT_VERSION} file", "write the file with lvod groups")
    classes = _get(d, "classes", list, file, "file")
    groups = _get(d, "groups", list, file, "file")
    ids = [_get(c, "category_id", int, file, f"classes[{i}]") for i, c in enumerate(classes)]
    for i, c in enumerate(classes):
        if _get(c, "label", int, file, f"classes[{i}]") != i + 1:
            raise DataError(
                file,
                f"classes[{i}].label",
                f"label {c['label']} should be {i + 1}",
                "list classes in ascending category_id order with labels 1..C",
            )
    counts = [c.get("count") for c in classes]
    if any(x is None for x in counts):
        if any(x is not None for x in counts):
            raise DataError(file, "classes", "some classes have a count and some do not", "give every class a count")
        counts = None
    C, G = len(classes), len(groups) - 1
    for key, want in (("num_classes", C), ("num_groups", G), ("num_logits", C + 2 + G)):
        if _get(d, key, int, file, "file") != want:
            raise DataError(file, key, f"{d[key]} but the file holds {want}", "write the file with lvod groups")
    g0 = groups[0] if groups else {}
    if (
        _get(g0, "slice", list, file, "groups[0]") != [0, 2]
        or _get(g0, "label_map", list, file, "groups[0]") != [0] + [1] * C
        or _get(g0, "category_ids", list, file, "groups[0]")
    ):
        raise DataError(
            file,
            "groups[0]",
            "the background group must be 2-way: slice [0, 2], label_map [0, 1, ..., 1], no category_ids",
            "write the file with lvod groups",
        )
    label_of = {c: i + 1 for i, c in enumerate(ids)}
    end, members, bounds = 2, [], []
    for g in range(1, G + 1):
        rec = f"groups[{g}]"
        m = _get(groups[g], "category_ids", list, file, rec)
        lm = _get(groups[g], "label_map", list, file, rec)
        want = [0] * (C + 1)
        for r, c in enumerate(m, start=1):
            if c not in label_of:
                raise DataError(file, f"{rec}.category_ids", f"category id {c!r} is not a class", "list only class ids")
            want[label_of[c]] = r
        if lm != want:
            bad = next((i for i in range(C + 1) if i >= len(lm) or lm[i] != want[i]), len(want))
            raise DataError(
                file,
                f"{rec}.label_map[{bad}]",
                f"should be {want[bad] if bad < len(want) else 'absent'}: "
                "members get ranks 1..n_k in ascending id order, other labels 0",
                "write the file with lvod groups",
            )
        sl = _get(groups[g], "slice", list, file, rec)
        if sl != [end, len(m) + 1]:
            raise DataError(
                file,
                f"{rec}.slice",
                f"{sl} should be {[end, len(m) + 1]} (contiguous, n_k + 1 logits)",
                "write the file with lvod groups",
            )
        end += len(m) + 1
        hi = groups[g].get("hi")
        bounds.append((_get(groups[g], "lo", (int, float), file, rec), math.inf if hi is None else hi))
        members.append(m)
    try:
        t = GroupTable(
            dataset=d.get("dataset", ""),
            cat_ids=ids,
            cat_names=[c.get("name", "") for c in classes],
            counts=counts,
            method=d.get("method"),
            k=d.get("k"),
            basis=d.get("basis", "instances"),  # files before the basis field counted instances
            edges=d.get("edges", []),
            groups=members,
            bounds=bounds,
            notes=d.get("notes", []),
        )
    except DataError as e:
        raise DataError(file, e.record, e.problem, e.fix) from None
    except (TypeError, ValueError) as e:
        raise DataError(
            file, "file", f"bad method, k, edges or bounds ({e})", "write the file with lvod groups"
        ) from None
    for i, c in enumerate(classes):
        if (c.get("group"), c.get("rank")) != (int(t.group_of_label[i + 1]), int(t.rank_of_label[i + 1])):
            raise DataError(
                file,
                f"classes[{i}]",
                f"group/rank {c.get('group')}/{c.get('rank')} disagree with the "
                f"groups ({t.group_of_label[i + 1]}/{t.rank_of_label[i + 1]})",
                "write the file with lvod groups",
            )
    return t


def load_groups(path) -> GroupTable:
    """Read a groups JSON written by :func:`save_groups`; raise DataError on any broken invariant."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(path, "file", f"cannot read JSON ({e})", "pass a groups.json written by lvod groups") from None
    return groups_from_dict(d, path)


# ----------------------------------------------------------------------------- reference BAGS files


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals numpy needs to rebuild an array.

    With ``allow_numpy=False`` no global at all is allowed (plain dict/list/int/str
    pickles). A refused global raises :class:`DataError` before any object is called.
    """

    def __init__(self, fh, file, *, allow_numpy: bool = True):
        super().__init__(fh)
        self.file, self.allow_numpy = file, allow_numpy

    def find_class(self, module, name):
        target = _NUMPY_GLOBALS.get((module, name)) if self.allow_numpy else None
        if target is None:
            raise DataError(
                self.file,
                f"global {module}.{name}",
                "the pickle asks for a callable outside the numpy array rebuild; refused, nothing ran",
                "use a file from a trusted source, or re-export it with lvod (lvod groups)",
            )
        import importlib

        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid):
        raise DataError(self.file, "persistent id", "the pickle uses persistent ids; refused", "re-export the file")


def safe_unpickle(path, *, allow_numpy: bool = True):
    """Load a pickle through :class:`SafeUnpickler`; unreadable data raises DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return SafeUnpickler(fh, path, allow_numpy=allow_numpy).load()
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            path, "file", f"not a readable pickle ({type(e).__name__}: {e})", "pass the original file"
        ) from None


def read_valsplit(path) -> dict[str, np.ndarray]:
    """``valsplit.pkl`` as ``{name: int64 array (n,)}``; anything else raises DataError."""
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise DataError(path, "file", f"holds a {type(d).__name__}, not a dict", "pass a BAGS valsplit.pkl")
    out = {}
    for k, v in d.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind not in "iu":
            raise DataError(path, f"key {k!r}", "is not a name -> 1-D integer array entry", "pass a BAGS valsplit.pkl")
        out[k] = v.astype(np.int64)
    return out


class _LegacyNumpyPickler(pickle._Pickler):
    """Pickler naming numpy's array rebuild ``numpy.core.multiarray._reconstruct``.

    numpy 2 writes ``numpy._core...``, which the numpy 1.x of the BAGS code cannot
    import; the old name still resolves in numpy 2, so both can read the file.
    """

    def save_global(self, obj, name=None):
        from numpy._core.multiarray import _reconstruct

        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def bags_bin_name(lo, hi) -> str:
    """Bin key as the reference spells it: ``'(0, 10)'``, ``'[10, 100)'``, ``'[1000, ~)'``."""
    close = "~" if math.isinf(hi) else str(plain_number(hi))
    return f"{'(' if lo == 0 else '['}{plain_number(lo)}, {close})"


def valsplit_dict(table: GroupTable) -> dict[str, np.ndarray]:
    """The ``valsplit.pkl`` dict of a table: bins (labels, ascending), normal, background, all."""
    d = {
        bags_bin_name(lo, hi): table.labels_of_group(g).astype(np.int64)
        for g, (lo, hi) in enumerate(table.bounds, start=1)
    }
    C = table.num_classes
    d.update(
        normal=np.arange(1, C + 1, dtype=np.int64),
        background=np.zeros(1, dtype=np.int64),
        all=np.arange(0, C + 1, dtype=np.int64),
    )
    return d


def export_bags(table: GroupTable, out_dir) -> dict[str, Path]:
    """Write the three reference files into ``out_dir``; return ``{file name: path}``.

    The files use the formats of the reference ones (legacy torch serialisation, pickle
    protocol 3 with numpy 1.x global names), so the original BAGS code can read them.
    """
    out = Path(out_dir)
    paths = {n: out / n for n in FILES}
    for name, t in (("label2binlabel.pt", table.label2binlabel), ("pred_slice_with0.pt", table.pred_slice)):
        with atomic_write(paths[name], "wb") as fh:  # legacy (pre-zip) format, as the reference files:
            torch.save(t.clone(), fh, _use_new_zipfile_serialization=False)  # torch < 1.6 reads it too
    buf = io.BytesIO()
    _LegacyNumpyPickler(buf, protocol=3).dump(valsplit_dict(table))
    with atomic_write(paths["valsplit.pkl"], "wb") as fh:
        fh.write(buf.getvalue())
    return paths


def _load_tensor(path) -> torch.Tensor:
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad or unsafe file
        raise DataError(
            path,
            "file",
            f"not loadable with weights_only=True ({type(e).__name__}: {e})",
            "pass the original BAGS file",
        ) from None
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in (torch.int64, torch.int32):
        raise DataError(path, "file", "is not a 2-D integer tensor", "pass the original BAGS file")
    return t.long()


def import_bags(bags_dir, cat_ids=None, names=None, *, counts=None, dataset="") -> GroupTable:
    """Read the three reference files in ``bags_dir`` into a :class:`GroupTable`.

    The bins of ``valsplit.pkl`` define the groups and must hold the labels 1..C once
    each. ``cat_ids`` (C ids, any order; default: the labels themselves, as in LVIS)
    give the category id of each label in ascending order; ``names`` and ``counts`` are
    parallel to ``cat_ids``. The tensors must equal the tables the groups imply.
    Tolerated and recorded in ``table.notes``: a ``label2binlabel`` wider than C+1 whose
    extra columns are unused (row 0 = 1, other rows 0), and stale ``'normal'``/``'all'``
    entries (the LVIS v1 files carry v0.5's). Everything else raises DataError.
    """
    d = Path(bags_dir)
    paths = {n: d / n for n in FILES}
    for p in paths.values():
        if not p.is_file():
            raise DataError(p, "file", "is missing", f"put {', '.join(FILES)} in {d}")
    split = read_valsplit(paths["valsplit.pkl"])
    vp = paths["valsplit.pkl"]
    bins = []
    for key, labels in split.items():
        if key in ("normal", "background", "all"):
            continue
        m = _BIN.match(key)
        if not m:
            raise DataError(
                vp,
                f"key {key!r}",
                "is not a count bin like '[10, 100)' nor normal/background/all",
                "rename or drop the entry",
            )
        hi = math.inf if m.group(2) in ("~", "inf") else float(m.group(2))
        if np.any(np.diff(labels) <= 0) or labels.size == 0:
            raise DataError(vp, f"key {key!r}", "labels are empty or not strictly ascending", "sort the bin's labels")
        bins.append((float(m.group(1)), hi, labels))
    bins.sort(key=lambda b: b[0])
    allc = np.sort(np.concatenate([b[2] for b in bins])) if bins else np.zeros(0, np.int64)
    C = allc.size
    if C == 0 or not np.array_equal(allc, np.arange(1, C + 1)):
        raise DataError(
            vp,
            "bins",
            "the bins do not hold the labels 1..C exactly once each",
            "give every class label to exactly one bin",
        )
    ids = np.arange(1, C + 1) if cat_ids is None else np.asarray(cat_ids, dtype=np.int64)
    if ids.size != C:
        raise DataError(vp, "bins", f"hold {C} classes but {ids.size} cat_ids were given", "pass the dataset's ids")
    order = np.argsort(ids, kind="stable")
    nm = [str(i) for i in ids] if names is None else list(names)
    edges = sorted({b[1] for b in bins if not math.isinf(b[1])} | {b[0] for b in bins if b[0] > 0})
    try:
        table = GroupTable(
            dataset=dataset,
            cat_ids=ids[order],
            cat_names=[nm[i] for i in order],
            counts=None if counts is None else np.asarray(counts)[order],
            method="edges",
            edges=edges,
            groups=[ids[order][b[2] - 1] for b in bins],
            bounds=[(b[0], b[1]) for b in bins],
        )
    except DataError as e:
        raise DataError(vp, e.record, e.problem, e.fix) from None
    notes = _compare_tensors(table, paths) + _compare_extras(table, split, vp)
    object.__setattr__(table, "notes", tuple(notes))
    return table


def _compare_tensors(table: GroupTable, paths) -> list[str]:
    notes = []
    C, rows = table.num_classes, table.num_groups + 1
    lp, sp = paths["label2binlabel.pt"], paths["pred_slice_with0.pt"]
    l2b = _load_tensor(lp)
    if l2b.shape[0] != rows or l2b.shape[1] < C + 1:
        raise DataError(
            lp,
            "shape",
            f"{tuple(l2b.shape)}, expected ({rows}, >= {C + 1})",
            "use the label2binlabel.pt made with this valsplit.pkl",
        )
    diff = (l2b[:, : C + 1] != table.label2binlabel).nonzero()
    if diff.numel():
        g, c = diff[0].tolist()
        raise DataError(
            lp,
            f"row {g} column {c}",
            f"is {int(l2b[g, c])}, the bins imply {int(table.label2binlabel[g, c])}",
            "use the label2binlabel.pt made with this valsplit.pkl",
        )
    if l2b.shape[1] > C + 1:
        extra = l2b[:, C + 1 :]
        if not (bool((extra[0] == 1).all()) and bool((extra[1:] == 0).all())):
            raise DataError(
                lp,
                f"columns {C + 1}..{l2b.shape[1] - 1}",
                "beyond the bins' classes but in a group",
                "use the label2binlabel.pt made with this valsplit.pkl",
            )
        notes.append(
            f"{lp.name}: {l2b.shape[1]} columns for {C} classes; columns {C + 1}..{l2b.shape[1] - 1} "
            "belong to no object group (row 0 marks them foreground) and were dropped"
        )
    ps = _load_tensor(sp)
    if ps.shape != table.pred_slice.shape or not torch.equal(ps, table.pred_slice):
        raise DataError(
            sp,
            "table",
            f"{ps.tolist()} but the bins imply {table.pred_slice.tolist()}",
            "use the pred_slice_with0.pt made with this valsplit.pkl",
        )
    return notes


def _compare_extras(table: GroupTable, split: dict, vp: Path) -> list[str]:
    notes, C = [], table.num_classes
    want = {"normal": np.arange(1, C + 1), "background": np.zeros(1, np.int64), "all": np.arange(0, C + 1)}
    for key, w in want.items():
        if key not in split:
            notes.append(f"{vp.name}: no {key!r} entry")
        elif not np.array_equal(split[key], w):
            if key == "background":
                raise DataError(vp, "key 'background'", f"is {split[key].tolist()}, not [0]", "background is label 0")
            notes.append(
                f"{vp.name}: {key!r} holds {split[key].size} labels ({split[key].min()}..{split[key].max()}), "
                f"not {w[0]}..{w[-1]} for these {C} classes: stale, ignored"
            )
    return notes


def read_bags_counts(path) -> tuple[np.ndarray, np.ndarray]:
    """Per-class instance counts from BAGS' ``class_to_imageid_and_inscount.pt``.

    That file is a plain pickle (no torch) of ``{label: {'category_id', 'isntance_count',
    'img_id', 'image_info_id'}}``; key 0 is background and is skipped. Returns
    ``(cat_ids int64 (C,), counts int64 (C,))`` in ascending id order.
    """
    d = safe_unpickle(path, allow_numpy=False)
    try:
        rows = sorted((int(v["category_id"]), int(v["isntance_count"])) for k, v in d.items() if k != 0)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DataError(
            path,
            "entries",
            f"not {{label: {{'category_id', 'isntance_count'}}}} ({e})",
            "pass BAGS' class_to_imageid_and_inscount.pt",
        ) from None
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


# ----------------------------------------------------------------------------- the lvod groups job


_CSV_COLUMN = {"instances": "boxes", "images": "key_frames"}


def counts_description(source, basis: str = "instances") -> str:
    """What :func:`counts_from_source` counts in ``source`` (for the command's summary)."""
    if basis not in _CSV_COLUMN:
        raise ValueError(f"unknown basis {basis!r}; use one of {', '.join(_CSV_COLUMN)}")
    if Path(source).suffix.lower() == ".csv":
        return f"{_CSV_COLUMN[basis]} column of the stats CSV"
    if basis == "images":
        return "training images (key frames) holding a non-crowd box of the class"
    return "non-crowd boxes per class"


def counts_from_source(source, basis: str = "instances") -> tuple[np.ndarray, list, np.ndarray, str]:
    """``(cat_ids, names, counts, what)`` from an annotation JSON or a stats CSV.

    ``basis="instances"``: non-crowd boxes per class; ``"images"``: training images per
    class, i.e. key frames (the frames training samples: every image of a COCO/DET file,
    the marked frames of a video file) holding at least one non-crowd box of the class,
    the count LVIS's rare/common/frequent split uses. JSON is read with
    :func:`lvod.data.cocovid.load_cocovid`; a CSV needs ``category_id, name`` and
    ``boxes`` / ``key_frames`` (as ``lvod stats`` writes ``class_stats.csv``). ``what``:
    :func:`counts_description`.
    """
    what = counts_description(source, basis)
    source = Path(source)
    if source.suffix.lower() == ".csv":
        import pandas as pd

        df = pd.read_csv(source)
        missing = {"category_id", "name", _CSV_COLUMN[basis]} - set(df.columns)
        if missing:
            raise DataError(
                source,
                "header",
                f"missing columns {sorted(missing)} (counting {basis})",
                "pass class_stats.csv from lvod stats (category_id,name,boxes,...,key_frames)",
            )
        return (
            df["category_id"].to_numpy(np.int64),
            df["name"].astype(str).tolist(),
            df[_CSV_COLUMN[basis]].to_numpy(np.int64),
            what,
        )
    from lvod.data.cocovid import load_cocovid
    from lvod.stats import class_stats

    ds = load_cocovid(source)
    df = class_stats(ds)  # the same numbers lvod stats writes
    return np.asarray(ds.cat_ids, dtype=np.int64), list(ds.cat_names), df[_CSV_COLUMN[basis]].to_numpy(np.int64), what


def make_groups(
    source=None,
    out=None,
    *,
    method="quantiles",
    edges=None,
    k=3,
    dataset="",
    bags_dir=None,
    from_bags=None,
    basis=None,
) -> tuple[GroupTable, dict[str, Path]]:
    """``lvod groups``: build (or import) a group table and write ``groups.json``.

    ``source``: annotation JSON or stats CSV (see :func:`counts_from_source`); ``edges``:
    count edges (method "edges"); ``k``: groups for "quantiles"/"log"; method "lvis" uses
    LVIS's fixed 1-10 / 11-100 / >100 edges. ``basis``: count ``"instances"`` or
    ``"images"`` (default: images for method "lvis", as LVIS does, else instances).
    ``out`` defaults to
    ``intermediate_files/<dataset>/groups.json`` (``dataset`` defaults to the source's file
    stem, or the folder name of ``from_bags``). ``bags_dir``: also write the three
    reference BAGS files there. ``from_bags``: read the table from the reference BAGS
    files in that folder (:func:`import_bags`) instead of building it; ``method``/``edges``/
    ``k`` are then unused, and ``source`` (optional) gives the category ids, names and
    counts, so the imported bins are checked against the dataset (every count must fall
    in its group's bin). Without ``source`` the labels 1..C are taken as the category ids
    (as in LVIS).

    Returns ``(table, paths)`` with ``paths = {"groups": groups.json, **{BAGS file name:
    path}}`` (the BAGS entries only with ``bags_dir``). Nothing is written when the table
    cannot be made. Raises DataError for a bad file, ValueError for bad ``method``/
    ``edges``/``k`` or when neither ``source`` nor ``from_bags`` is given.
    """
    if source is None and from_bags is None:
        raise ValueError("give an annotation json or stats CSV, or --from-bags DIR")
    basis = basis or ("images" if method == "lvis" else "instances")
    ids = names = counts = None
    if source is not None:
        ids, names, counts, _ = counts_from_source(source, basis)
    dataset = dataset or (Path(source).stem if source is not None else Path(from_bags).name)
    if from_bags is not None:
        table = import_bags(from_bags, ids, names, counts=counts, dataset=dataset)
    else:
        table = build_groups(
            ids,
            counts,
            method=method,
            edges=edges if method == "edges" else None,
            k=None if method in ("edges", "lvis") else k,
            names=names,
            dataset=dataset,
            basis=basis,
        )
    out = Path(out) if out else Path("intermediate_files") / dataset / "groups.json"
    paths = {"groups": save_groups(table, out)}
    if bags_dir:
        paths.update(export_bags(table, bags_dir))
    return table, paths
