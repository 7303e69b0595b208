"""Detections as columns: the compact on-disk results file, a streaming writer, COCO JSON I/O.

ImageNet VID val with 100 detections per frame is 17.6 M detections. As Python dicts (what
``json.load`` or pycocotools' ``loadRes`` build) that is tens of GB; as columns it is
about 0.5 GB. lvod therefore never holds detections as dicts:

- :class:`Detections` holds four columns: ``image_id`` int64 (N,), ``category_id`` int64
  (N,), ``bbox`` float32 or float64 (N, 4) COCO ``[x, y, w, h]``, ``score`` float32 or
  float64 (N,). Row order is file order; it matters (COCO breaks score ties by it).
- ``.npz`` results file (uncompressed, one ``.npy`` member per column, loadable with
  ``numpy.load``). :class:`ResultsWriter` appends per frame to raw column files in a
  hidden temporary folder beside the target and assembles the ``.npz`` atomically on
  :meth:`ResultsWriter.close`: a killed run leaves no half-written results file.
- COCO results JSON (``[{"image_id", "category_id", "bbox", "score"}, ...]``) for exchange:
  :func:`write_coco_json` streams it out in blocks; :func:`read_coco_json` parses it in
  blocks of records and turns each block into columns at once, so at most one block of
  dicts exists at a time. Limit: records must be flat objects (a ``segmentation`` RLE dict
  is fine, a string value containing ``"},{"`` is not).

Precision: JSON numbers are read as float64 and kept so, so lvod sees the same numbers as
pycocotools does. Float32 columns written to JSON are written as the exact decimal of the
float32 value, so a float32 file and its JSON evaluate identically.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvod.errors import DataError
from lvod.io import atomic_write

COLUMNS = ("image_id", "category_id", "bbox", "score")
_JSON_BLOCK = 64 << 20  # bytes of JSON text parsed at a time (about 0.5 M records)
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")


@dataclass
class Detections:
    """Columnar detections. ``bbox`` is ``[x, y, w, h]`` (N, 4); see the module docstring."""

    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    def __post_init__(self):
        self.image_id = np.asarray(self.image_id, dtype=np.int64).reshape(-1)
        self.category_id = np.asarray(self.category_id, dtype=np.int64).reshape(-1)
        bbox, score = np.asarray(self.bbox), np.asarray(self.score)
        float_dt = np.float64 if np.float64 in (bbox.dtype, score.dtype) else np.float32
        self.bbox = bbox.astype(float_dt, copy=False).reshape(-1, 4)
        self.score = score.astype(float_dt, copy=False).reshape(-1)
        n = len(self.image_id)
        if not (len(self.category_id) == len(self.bbox) == len(self.score) == n):
            raise ValueError(
                f"Detections columns differ in length: image_id {n}, category_id "
                f"{len(self.category_id)}, bbox {len(self.bbox)}, score {len(self.score)}"
            )

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts) -> Detections:
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, c) for p in parts]) for c in COLUMNS))

    def subset(self, mask_or_index) -> Detections:
        return Detections(*(getattr(self, c)[mask_or_index] for c in COLUMNS))

    def check(self, file="<detections>") -> Detections:
        """Raise DataError on NaN/inf scores or boxes, or negative widths/heights."""
        bad = ~np.isfinite(self.score)
        bad |= ~np.isfinite(self.bbox).all(axis=1)
        bad |= (self.bbox[:, 2] < 0) | (self.bbox[:, 3] < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                file,
                f"detection {i} (image_id {self.image_id[i]})",
                f"{int(bad.sum())} detections have a non-finite score/box or a negative "
                f"width or height (first: bbox {self.bbox[i].tolist()}, score {self.score[i]})",
                "write boxes as finite [x, y, w, h] with w, h >= 0 and finite scores",
            )
        return self

    @classmethod
    def from_xyxy(cls, image_id, boxes_xyxy, scores, category_ids) -> Detections:
        """Build from corner boxes (K, 4) ``[x1, y1, x2, y2]``; ``image_id`` scalar or (K,)."""
        b = np.asarray(boxes_xyxy).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        return cls(np.broadcast_to(np.asarray(image_id, np.int64), (len(b),)), category_ids, xywh, scores)


def save_results_npz(dets: Detections, path) -> Path:
    """Write ``dets`` as an lvod ``.npz`` results file, atomically."""
    with ResultsWriter(path, float_dtype=dets.bbox.dtype) as w:
        w.add(dets)
    return Path(path)


class ResultsWriter:
    """Append detections frame by frame; :meth:`close` writes the ``.npz`` atomically.

    Columns go to raw binary files in a hidden folder next to ``path`` while appending, so
    memory stays flat however many frames are written. Use as a context manager: an
    exception discards everything and leaves an existing ``path`` untouched.
    """

    def __init__(self, path, *, float_dtype=np.float32):
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise ValueError(f"{self.path}: ResultsWriter writes .npz files")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.float_dtype = np.dtype(float_dtype)
        self.dtypes = {
            "image_id": np.dtype(np.int64),
            "category_id": np.dtype(np.int64),
            "bbox": self.float_dtype,
            "score": self.float_dtype,
        }
        self.tmpdir = self.path.parent / f".{self.path.name}.parts"
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir.mkdir()
        self.files = {c: open(self.tmpdir / c, "wb") for c in COLUMNS}
        self.count = 0

    def add(self, dets: Detections) -> None:
        for c in COLUMNS:
            self.files[c].write(np.ascontiguousarray(getattr(dets, c), dtype=self.dtypes[c]).tobytes())
        self.count += len(dets)

    def add_xyxy(self, image_id: int, boxes_xyxy, scores, category_ids) -> None:
        """Append one frame's detections given as corner boxes (what detectors output)."""
        self.add(Detections.from_xyxy(image_id, boxes_xyxy, scores, category_ids))

    def close(self) -> Path:
        for fh in self.files.values():
            fh.close()
        try:
            with atomic_write(self.path, "wb") as raw:
                with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for c in COLUMNS:
                        shape = (self.count, 4) if c == "bbox" else (self.count,)
                        header = {
                            "descr": np.lib.format.dtype_to_descr(self.dtypes[c]),
                            "fortran_order": False,
                            "shape": shape,
                        }
                        with zf.open(f"{c}.npy", "w", force_zip64=True) as member:
                            np.lib.format.write_array_header_2_0(member, header)
                            with open(self.tmpdir / c, "rb") as src:
                                shutil.copyfileobj(src, member, 16 << 20)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        for fh in self.files.values():
            fh.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


_NPZ_FIX = "pass the results.npz that `lvod test` (or lvod.evaluation.results.ResultsWriter) wrote"
_NPZ_KINDS = {"image_id": "iu", "category_id": "iu", "bbox": "f", "score": "f"}


def load_npz(path) -> Detections:
    """Read an lvod ``.npz`` results file; anything else is a DataError naming the file,
    the column and the fix (never a traceback; nothing is unpickled)."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(path, "file", f"is not an .npz archive of arrays ({e})", _NPZ_FIX) from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a single .npy array saved under an .npz name
        raise DataError(path, "file", "holds one array, not lvod's columns", _NPZ_FIX)
    with z:
        missing = [c for c in COLUMNS if c not in z.files]
        if missing:
            raise DataError(path, "columns", f"missing {missing} (has {z.files})", _NPZ_FIX)
        cols = {}
        for c in COLUMNS:
            try:
                cols[c] = z[c]
            except (ValueError, OSError, zipfile.BadZipFile) as e:  # object arrays, truncated members
                raise DataError(path, f"column {c}", f"cannot be read as a plain array ({e})", _NPZ_FIX) from None
            if cols[c].dtype.kind not in _NPZ_KINDS[c]:
                want = "integers" if _NPZ_KINDS[c] == "iu" else "floats"
                raise DataError(path, f"column {c}", f"has dtype {cols[c].dtype}, lvod writes {want}", _NPZ_FIX)
        if cols["bbox"].ndim != 2 or cols["bbox"].shape[1:] != (4,):
            raise DataError(path, "column bbox", f"has shape {cols['bbox'].shape}, not (N, 4)", _NPZ_FIX)
        try:
            dets = Detections(*(cols[c] for c in COLUMNS))
        except ValueError as e:  # columns of different lengths
            raise DataError(path, "columns", str(e), _NPZ_FIX) from None
        return dets.check(path)


def _bad_record(recs: list) -> int:
    for k, r in enumerate(recs):
        if not (
            isinstance(r, dict) and all(c in r for c in COLUMNS) and isinstance(r["bbox"], list) and len(r["bbox"]) == 4
        ):
            return k
    return 0


def _records_to_columns(recs: list, path, first: int) -> Detections:
    try:
        img = np.fromiter((r["image_id"] for r in recs), np.int64, len(recs))
        cat = np.fromiter((r["category_id"] for r in recs), np.int64, len(recs))
        score = np.fromiter((r["score"] for r in recs), np.float64, len(recs))
        bbox = np.array([r["bbox"] for r in recs], dtype=np.float64)
        if bbox.shape != (len(recs), 4):
            raise ValueError(f"bbox column has shape {bbox.shape}")
    except (KeyError, TypeError, ValueError) as e:
        i = _bad_record(recs)
        raise DataError(
            path,
            f"record {first + i}",
            f"not a COCO bbox result ({e}): {str(recs[i])[:200]}",
            "each record needs image_id, category_id, bbox [x, y, w, h] and score",
        ) from None
    return Detections(img, cat, bbox, score)


def read_coco_json(path, *, block_bytes: int = _JSON_BLOCK) -> Detections:
    """Read a COCO results JSON list into columns, one block of records at a time."""
    try:
        import orjson

        loads = orjson.loads
    except ImportError:  # pragma: no cover - orjson is a dependency; json is the slow fallback
        import json

        loads = json.loads
    path = Path(path)
    parts, carry, n, started = [], b"", 0, False
    with open(path, "rb") as fh:
        while True:
            block = fh.read(block_bytes)
            text = carry + block
            if not started:
                text = text.lstrip()
                if not text:
                    raise DataError(path, "file", "is empty", "write a JSON list of detections")
                if text[:1] != b"[":
                    raise DataError(
                        path,
                        "top level",
                        "is not a JSON list",
                        "write COCO results: [{image_id, category_id, bbox, score}, ...]",
                    )
                text, started = text[1:], True
            if block:
                cut = None
                for cut in _BOUNDARY.finditer(text):  # noqa: B007 - keeps the last boundary
                    pass
                if cut is None:
                    carry = text
                    continue
                body, carry = text[: cut.start() + 1], text[cut.end() - 1 :]
            else:
                body, carry = text.rstrip(), b""
                if not body.endswith(b"]"):
                    raise DataError(
                        path, "end of file", "the JSON list is not closed", "the file is truncated; write it again"
                    )
                body = body[:-1]
            if not body.strip():
                if not block:
                    break
                continue
            try:
                recs = loads(b"[" + body + b"]")
            except ValueError as e:
                raise DataError(
                    path, f"records from {n}", f"invalid JSON ({e})", "write a valid COCO results JSON list"
                ) from None
            parts.append(_records_to_columns(recs, path, n))
            n += len(recs)
            del recs
            if not block:
                break
    return Detections.concat(parts).check(path)


def _fmt_block(d: Detections) -> str:
    rows = zip(d.image_id.tolist(), d.category_id.tolist(), d.bbox.tolist(), d.score.tolist())
    return ",\n".join(
        f'{{"image_id": {i}, "category_id": {c}, "bbox": [{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}], "score": {s!r}}}'
        for i, c, b, s in rows
    )


def write_coco_json(dets: Detections, path, *, block: int = 200_000) -> Path:
    """Stream ``dets`` out as a COCO results JSON list, atomically. Floats round-trip exactly."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write("[")
        for s in range(0, len(dets), block):
            if s:
                fh.write(",\n")
            fh.write(_fmt_block(dets.subset(slice(s, s + block))))
        fh.write("]\n")
    return Path(path)


def load_results(path) -> Detections:
    """Load detections from an lvod ``.npz`` or a COCO results ``.json``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "does not exist", "pass the results file `lvod test --out` wrote")
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".json":
        return read_coco_json(path)
    raise DataError(
        path, "file name", f"unknown results format {path.suffix!r}", "use .npz (lvod columns) or .json (COCO results)"
    )
