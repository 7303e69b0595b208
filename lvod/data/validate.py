"""The load report and the record checks behind ``lvod.data.cocovid``.

Holds:

- ``Issue`` / ``LoadReport``: every repair, skip, assumption and fatal problem found while
  reading an annotation file, with counts and a few example records, and ``format()``.
- Column helpers that turn a list of JSON records into typed numpy columns at scale
  (one C-speed pass per field; a slow scan runs only to name the first bad record).
- ``clip_boxes``: the pure box maths (empty / clipped / outside classification).

Record labels in messages are ``"<kind> <id>"`` (``"annotation 42"``) when the record has an
id, else ``"<kind> #<position>"`` (0-based position in its list).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lvod.errors import DataError

MAX_EXAMPLES = 5
_NUM = (int, float)


@dataclass
class Issue:
    """One kind of problem: what the loader did about it and which records it touched.

    ``kind``: stable key (e.g. ``"ann_unknown_category"``); ``action``: what was done
    (``"skipped"``, ``"clipped"``, ``"filled"``, ...); ``message``: one line with the fix;
    ``count``: records affected; ``examples``: up to ``MAX_EXAMPLES`` record labels.
    """

    kind: str
    action: str
    message: str
    count: int = 0
    examples: list = field(default_factory=list)


class LoadReport:
    """What happened while loading one annotation file.

    Attributes: ``path`` (str); ``counts`` (dict: videos, images, annotations, categories,
    key_frames, empty_frames, crowd_annotations, instances, tracks); ``repairs``
    (dict kind -> Issue: data the loader changed or dropped; ``strict`` turns these into
    errors); ``notes`` (dict kind -> Issue: documented defaults applied to format variations,
    e.g. LVIS without ``iscrowd``); ``missing_files`` (Issue or None); ``fatal``
    (list of DataError: problems that stop the load).
    """

    def __init__(self, path):
        self.path = str(path)
        self.counts: dict[str, int] = {}
        self.repairs: dict[str, Issue] = {}
        self.notes: dict[str, Issue] = {}
        self.missing_files: Issue | None = None
        self.fatal: list[DataError] = []

    def _add(self, table, kind, action, message, records, count):
        issue = table.setdefault(kind, Issue(kind, action, message))
        issue.count += len(records) if count is None else count
        room = MAX_EXAMPLES - len(issue.examples)
        if room > 0:
            issue.examples.extend(records[:room])
        return issue

    def repair(self, kind, action, message, records, count=None):
        """Record a tolerable problem that changed or dropped data (``records``: labels)."""
        if count or records:
            self._add(self.repairs, kind, action, message, list(records), count)

    def note(self, kind, action, message, records=(), count=None):
        """Record a documented default applied to a format variation."""
        if count or records:
            self._add(self.notes, kind, action, message, list(records), count)

    def set_missing_files(self, message, records, count):
        """Record image files that do not exist (kept; they make ``usable`` False)."""
        self.missing_files = Issue("missing_image_file", "missing", message, count, list(records[:MAX_EXAMPLES]))

    def add_fatal(self, record, problem, fix):
        """Record a problem that makes the file unusable; ``raise_if_fatal`` raises it."""
        self.fatal.append(DataError(self.path, record, problem, fix))

    def raise_if_fatal(self):
        """Raise the first fatal problem (with this report attached as ``err.report``)."""
        if not self.fatal:
            return
        first = self.fatal[0]
        more = len(self.fatal) - 1
        fix = first.fix + (f" ({more} more fatal problem(s): run `lvod data check` to list them)" if more else "")
        err = DataError(first.file, first.record, first.problem, fix)
        err.report = self
        raise err

    @property
    def usable(self) -> bool:
        """True when nothing is fatal, there is at least one image and no image file is missing."""
        return not self.fatal and self.counts.get("images", 0) > 0 and self.missing_files is None

    def format(self) -> str:
        """Human-readable multi-line report."""
        lines = [f"annotation file: {self.path}"]
        if self.counts:
            order = [
                "videos",
                "images",
                "key_frames",
                "empty_frames",
                "annotations",
                "crowd_annotations",
                "instances",
                "categories",
                "tracks",
            ]
            lines.append("counts: " + ", ".join(f"{k} {self.counts[k]:,}" for k in order if k in self.counts))
            if "tracks" in self.counts:
                lines.append(
                    "  (a track is one object followed through a video: a (video, instance_id, class) among "
                    "the non-crowd boxes, as lvod stats counts them"
                    + (
                        f"; the file's own TAO 'tracks' records: {self.counts['tao_tracks']:,})"
                        if "tao_tracks" in self.counts
                        else ")"
                    )
                )
        for title, table in (("repairs", self.repairs), ("notes", self.notes)):
            if table:
                lines.append(f"{title}:")
                lines.extend(_issue_line(i) for i in table.values())
        if self.missing_files is not None:
            lines.append("missing image files:")
            lines.append(_issue_line(self.missing_files))
        if self.fatal:
            lines.append(f"fatal ({len(self.fatal)}):")
            lines.extend(f"  - {e}" for e in self.fatal[:20])
            if len(self.fatal) > 20:
                lines.append(f"  ... and {len(self.fatal) - 20} more")
        if not self.repairs and not self.fatal and self.missing_files is None:
            lines.append("repairs: none")
        lines.append("usable: " + ("yes" if self.usable else "NO"))
        return "\n".join(lines)


def _issue_line(issue: Issue) -> str:
    ex = ", ".join(str(e) for e in issue.examples)
    ex = f" (e.g. {ex})" if ex else ""
    return f"  - {issue.kind}: {issue.count:,} {issue.action}; {issue.message}{ex}"


def record_label(kind: str, ids, pos: int) -> str:
    """``"annotation 42"`` when the record at ``pos`` has an integer id, else ``"annotation #17"``."""
    rid = ids[pos] if ids is not None and pos < len(ids) else None
    return f"{kind} {rid}" if type(rid) is int else f"{kind} #{pos}"


def check_records(report, records, section, kind) -> bool:
    """Fatal unless ``records`` is a list of dicts. Returns True when it is."""
    if not isinstance(records, list):
        report.add_fatal(
            f"'{section}'", f"is a {type(records).__name__}, not a list", f"make '{section}' a JSON array of objects"
        )
        return False
    if set(map(type, records)) <= {dict}:
        return True
    bad = [i for i, t in enumerate(map(type, records)) if t is not dict][:MAX_EXAMPLES]
    for i in bad:
        report.add_fatal(
            f"{kind} #{i}",
            f"is a {type(records[i]).__name__}, not an object",
            f"make every entry of '{section}' a JSON object",
        )
    return not bad


def take(records, key):
    """Values of ``key`` per record, ``None`` where absent (one C-speed pass)."""
    return [r.get(key) for r in records]


def typed_column(report, values, key, kind, ids, *, allowed, dtype, required, fix, default=None):
    """Convert ``values`` to a numpy array of ``dtype`` (``None``: check types, return the list).

    ``allowed``: tuple of accepted Python types (``bool`` must be listed to be accepted; a
    ``bool`` is never taken as an ``int``). ``None`` means absent: fatal when ``required``,
    else replaced by ``default``. Returns ``(array or None, n_absent)``; ``None`` when a
    fatal problem was recorded.
    """
    types = set(map(type, values))
    n_absent = values.count(None) if type(None) in types else 0
    if n_absent and required:
        for i in [i for i, v in enumerate(values) if v is None][:MAX_EXAMPLES]:
            report.add_fatal(record_label(kind, ids, i), f"has no '{key}'", fix)
        return None, n_absent
    types.discard(type(None))
    if not types <= set(allowed):
        bad = [i for i, v in enumerate(values) if v is not None and type(v) not in allowed]
        for i in bad[:MAX_EXAMPLES]:
            report.add_fatal(record_label(kind, ids, i), f"'{key}' is {values[i]!r} ({type(values[i]).__name__})", fix)
        return None, n_absent
    if n_absent:
        values = [default if v is None else v for v in values]
    if dtype is None:  # type check only
        return values, n_absent
    try:
        arr = np.array(values, dtype=dtype) if values else np.zeros(0, dtype)
    except OverflowError:
        report.add_fatal(f"{kind}s", f"a '{key}' value does not fit in {np.dtype(dtype).name}", fix)
        return None, n_absent
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        report.add_fatal(record_label(kind, ids, i), f"'{key}' is {values[i]!r}", fix)
        return None, n_absent
    return arr, n_absent


def flag_column(report, values, key, kind, ids, default: bool):
    """Booleans given as true/false, 0/1 (int or float) or absent (-> ``default``).

    Returns ``(bool array or None, n_absent)``; anything else is fatal.
    """
    fix = f"write '{key}' as true/false or 0/1"
    arr, n_absent = typed_column(
        report,
        values,
        key,
        kind,
        ids,
        allowed=(bool, int, float),
        dtype=np.float64,
        required=False,
        fix=fix,
        default=default,
    )
    if arr is None:
        return None, n_absent
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    for i in bad[:MAX_EXAMPLES]:
        report.add_fatal(record_label(kind, ids, int(i)), f"'{key}' is {values[i]!r}", fix)
    return (None if len(bad) else arr.astype(bool)), n_absent


def bbox_column(report, values, kind, ids):
    """``(A, 4)`` float64 ``[x, y, w, h]``; fatal for absent, non-list, wrong length, NaN/inf."""
    fix = "give 'bbox' as [x, y, width, height] in pixels (4 finite numbers)"
    n = len(values)
    try:  # numpy infers int/float only when every coordinate is a number (str -> "U")
        arr = np.array(values) if n else np.zeros((0, 4))
        ok = arr.shape == (n, 4) and arr.dtype.kind in "if" and set(map(type, values)) <= {list, tuple}
        arr = arr.astype(np.float64, copy=False)
        ok = ok and bool(np.isfinite(arr).all())
    except (TypeError, ValueError):
        ok = False
    if ok:
        return arr
    for i, b in enumerate(values):
        good = isinstance(b, (list, tuple)) and len(b) == 4 and all(type(x) in _NUM and math.isfinite(x) for x in b)
        if not good:
            problem = "has no 'bbox'" if b is None else f"'bbox' is {b!r}"
            report.add_fatal(record_label(kind, ids, i), problem, fix)
            if len(report.fatal) >= MAX_EXAMPLES:
                break
    return None


def clip_boxes(boxes, width, height):
    """Classify and clip COCO boxes to their images.

    boxes: ``(A, 4)`` ``[x, y, w, h]``; width, height: ``(A,)`` image size of each box.
    Returns ``(clipped (A, 4), empty (A,) bool, clipped_mask (A,) bool, outside (A,) bool)``:
    ``empty`` = w <= 0 or h <= 0 as given; ``outside`` = non-empty but no area left inside the
    image; ``clipped_mask`` = non-empty, partly outside, cut to the image.
    """
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    empty = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    cx1, cy1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
    cx2, cy2 = np.clip(x2, 0, width), np.clip(y2, 0, height)
    changed = (cx1 != x1) | (cy1 != y1) | (cx2 != x2) | (cy2 != y2)
    outside = ~empty & ((cx2 <= cx1) | (cy2 <= cy1))
    clipped_mask = ~empty & ~outside & changed
    out = np.stack([cx1, cy1, cx2 - cx1, cy2 - cy1], axis=1)
    out[~clipped_mask] = boxes[~clipped_mask]
    return out, empty, clipped_mask, outside


def duplicate_positions(ids: np.ndarray) -> np.ndarray:
    """Positions of every record whose id already appeared earlier in ``ids`` (file order)."""
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    later = np.zeros(len(ids), bool)
    later[1:] = s[1:] == s[:-1]
    return np.sort(order[later])


def first_position(ids: np.ndarray, value) -> int:
    """Position of the first record with id ``value``."""
    return int(np.flatnonzero(ids == value)[0])
