"""Post-hoc calibration in the engine: training counts, the held-out split, ``lvod calibrate``.

The maths is :mod:`lvod.models.calibration`; this module gives it its inputs and picks its
parameter:

- :func:`training_counts`: ``n_c`` per class from the config's training data (every
  ``data.train`` source, on the frames training uses as key frames: ``is_vid_train_frame``
  where ``key_frames_only``): non-crowd boxes (``"instances"``) or images holding the class
  (``"images"``).
- the calibration split (``val_held_out`` or a file): :mod:`lvod.engine.heldout`.
- :func:`calibrate_run` (``lvod calibrate RUN``): runs the detector **once** over the
  held-out videos; the RoI head's ``tap`` hands over every frame's raw logits and decoded
  boxes before NMS, and every grid value of every method re-scores them (calibration,
  score threshold, NMS, then the config's ``test.rescoring``), so a grid of G values costs
  one network pass plus G NMS and G evaluations. The identity value (0) is always in the
  grid and must reproduce the detector's own output exactly (checked on every frame).
  Writes ``RUN/calibration.json`` atomically (format below).
- :func:`resolve_calibration` / :func:`build_calibrator`: what ``lvod test`` / ``lvod
  infer`` do with ``--calibrate``: ``auto`` reads the checkpoint folder's
  ``calibration.json`` (refused when it was made for another checkpoint file or other
  training counts).

``calibration.json``: ``{"format": "lvod-calibration/1", "checkpoint": {"path", "sha256"},
"config", "head", "metric", "count", "rescale", "counts": {"cat_ids", "values", "sources"},
"held_out": {"split", "source", "fraction", "seed", "cover_classes", "in_training",
"videos": [{"id", "name"}], "frames", "boxes"}, "rescoring", "methods": {NAME: {"param",
"grid": [{"value", "bbox_mAP_50", "bbox_mAP", "groups": {name: ap50}}], "best",
"best_metric", "identity_metric"}}, "choice": {"method", "value", "spec", "metric",
"gain"}}``. ``choice.method`` is null when no grid value beats the identity (``auto`` then
calibrates nothing). Runs of other methods on the same checkpoint, held-out split, metric
and counts are merged into one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np

from lvod.errors import DataError

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
FORMAT = "lvod-calibration/1"
DEFAULT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
METRICS = ("bbox_mAP_50", "bbox_mAP", "mean_group_ap50")


# ----------------------------------------------------------------------------- counts


def training_counts(cfg, cat_ids, basis: str = "instances") -> tuple[np.ndarray, dict]:
    """``(counts int64 (C,) in cat_ids order, info)`` from ``cfg.data.train``.

    ``basis="instances"``: non-crowd boxes on the frames training samples as key frames;
    ``"images"``: such frames holding at least one box of the class. Sources are summed by
    category id (ids outside ``cat_ids`` are ignored). ``info``: ``{"basis", "sources"}``.
    A class without any training box warns (its count is then taken as 1).
    """
    from lvod.data.cocovid import load_cocovid

    if basis not in ("instances", "images"):
        raise ValueError(f"unknown count basis {basis!r}")
    if not cfg.data.train:
        raise DataError(
            cfg.name or "<config>",
            "data.train",
            "is empty: calibration needs the training class counts",
            "use the run's own config (its data.train lists the training files)",
        )
    cat_ids = np.asarray(cat_ids, np.int64)
    counts = np.zeros(len(cat_ids), np.int64)
    sources = []
    for src in cfg.data.train:
        path = Path(cfg.data.root) / src.ann_file
        ds = load_cocovid(path)
        rows = np.flatnonzero(~np.asarray(ds.ann_iscrowd, bool))
        img = np.asarray(ds.ann_image_idx, np.int64)[rows]
        if src.key_frames_only:
            on_key = np.asarray(ds.img_is_key, bool)[img]
            rows, img = rows[on_key], img[on_key]
        cats = np.asarray(ds.ann_cat_ids, np.int64)[rows]
        pos = np.searchsorted(cat_ids, cats)
        known = (pos < len(cat_ids)) & (cat_ids[np.minimum(pos, len(cat_ids) - 1)] == cats)
        pos, img = pos[known], img[known]
        if basis == "images":
            pairs = np.unique(pos * (int(img.max(initial=0)) + 1) + img)
            pos = pairs // (int(img.max(initial=0)) + 1)
        counts += np.bincount(pos, minlength=len(cat_ids))
        sources.append(str(path))
    if (counts == 0).any():
        warnings.warn(
            f"classes without training {basis} in {', '.join(sources)}: category ids "
            f"{cat_ids[counts == 0].tolist()}; their count is taken as 1",
            stacklevel=2,
        )
    return counts, {"basis": basis, "sources": sources}


# ----------------------------------------------------------------------------- test-time use


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_calibration_file(path) -> dict:
    """Read a ``calibration.json`` (``DataError`` when absent or of another format)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise DataError(
            path, "calibration file", "does not exist", "run `lvod calibrate RUN` first, or give NAME:PARAM=VALUE"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise DataError(path, "format", f"is {data.get('format')!r}, not {FORMAT!r}", "rerun lvod calibrate")
    return data


def resolve_calibration(calibration, checkpoint, where="--calibrate"):
    """An explicit :class:`~lvod.models.calibration.Calibration` (or None) and where it came
    from. ``auto`` / ``NAME:auto`` read ``calibration.json`` beside ``checkpoint``, which
    must be the file it was chosen for. Returns ``(calibration or None, info dict)``."""
    from lvod.models.calibration import Calibration

    if calibration is None or not calibration.auto:
        return calibration, {}
    if checkpoint is None:
        raise DataError(where, calibration.spec(), "'auto' needs a checkpoint", "pass --checkpoint RUN/latest.pth")
    path = Path(checkpoint).parent / CALIBRATION_FILE
    data = load_calibration_file(path)
    if data["checkpoint"]["sha256"] != sha256_file(checkpoint):
        raise DataError(
            path,
            "checkpoint",
            f"was chosen for {data['checkpoint']['path']}, whose contents differ from {checkpoint}",
            "rerun `lvod calibrate` for this checkpoint, or give NAME:PARAM=VALUE",
        )
    info = {"from": str(path), "asked": calibration.spec(), "counts": data["counts"]}
    if calibration.method is None:
        choice = data["choice"]
        if choice["method"] is None:
            return None, {**info, "note": "no grid value beat the uncalibrated detector on the held-out split"}
        method, value = choice["method"], choice["value"]
    else:
        method = calibration.method
        if method not in data["methods"]:
            raise DataError(
                path, f"methods.{method}", "was not calibrated", f"run `lvod calibrate RUN --method {method}`"
            )
        value = data["methods"][method]["best"]
    return Calibration(method, float(value), data["count"], bool(data["rescale"])), info


def build_calibrator(cfg, model, calibration, cat_ids, info=None):
    """Set ``model``'s RoI head ``score_fn`` for an explicit ``calibration`` (None: unset).

    Returns the record ``metrics.json`` keeps (None when off): the calibration, the head,
    the counts' basis and files, and ``info`` (where an ``auto`` came from). Counts stored
    by ``lvod calibrate`` must equal the ones computed now.
    """
    from lvod.models.calibration import ScoreCalibrator

    roi = model.detector.roi_head
    roi.score_fn = None
    if calibration is None:
        return {"method": None, **(info or {})} if info else None
    counts, cinfo = None, {}
    if calibration.method != "tau_norm":
        counts, cinfo = training_counts(cfg, cat_ids, calibration.count)
        stored = (info or {}).get("counts")
        if stored and (stored["values"] != counts.tolist() or stored["cat_ids"] != [int(c) for c in cat_ids]):
            raise DataError(
                info["from"],
                "counts",
                "the training counts differ from the ones the parameter was chosen with "
                f"({stored['values'][:5]}... vs {counts.tolist()[:5]}...)",
                "rerun `lvod calibrate` with this config, or give NAME:PARAM=VALUE",
            )
    calibrator = ScoreCalibrator(roi.predictor, calibration, counts)
    roi.score_fn = calibrator
    record = {**calibrator.describe(), **({"counts_from": cinfo["sources"]} if cinfo else {})}
    if info:
        record.update({k: v for k, v in info.items() if k != "counts"})
    return record


# ----------------------------------------------------------------------------- lvod calibrate


def parse_grid(text) -> list[float]:
    """``"0,0.25,0.5"`` (or a sequence) -> sorted distinct values, always with 0 (identity)."""
    if text is None:
        values = list(DEFAULT_GRID)
    elif isinstance(text, str):
        try:
            values = [float(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise DataError(
                "--grid", text, "is not a comma-separated list of numbers", "write e.g. 0,0.25,0.5"
            ) from None
    else:
        values = [float(v) for v in text]
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise DataError("--grid", str(text), "needs finite values >= 0", "write e.g. --grid 0,0.25,0.5,0.75,1")
    return sorted(set(values) | {0.0})


def metric_value(m: dict, metric: str) -> float:
    """The selection metric of an ``evaluate`` result (NaN when undefined)."""
    if metric == "mean_group_ap50":
        vals = [g["ap50"] for g in m.get("groups") or [] if g.get("num_classes_with_gt", 1) > 0]
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")
    return float(m[metric])


def _best(rows: list[dict], metric: str) -> dict:
    """The grid row with the highest metric; ties go to the value nearest the identity (0)."""
    finite = [r for r in rows if not math.isnan(r[metric])]
    if not finite:
        return next(r for r in rows if r["value"] == 0.0)
    top = max(r[metric] for r in finite)
    return min((r for r in finite if r[metric] >= top - 1e-12), key=lambda r: r["value"])


def _choose(methods: dict) -> dict:
    """The overall choice: the method whose best beats the identity by the most; none if
    no method beats it."""
    best_method, best_gain = None, 0.0
    for name, m in methods.items():
        gain = m["best_metric"] - m["identity_metric"]
        if gain > best_gain + 1e-12:
            best_method, best_gain = name, gain
    if best_method is None:
        any_m = next(iter(methods.values()))
        return {"method": None, "value": None, "spec": "none", "metric": any_m["identity_metric"], "gain": 0.0}
    m = methods[best_method]
    return {
        "method": best_method,
        "value": m["best"],
        "spec": f"{best_method}:{m['param']}={m['best']:g}",
        "metric": m["best_metric"],
        "gain": best_gain,
    }


def calibrate_run(
    run,
    *,
    config=None,
    checkpoint="latest.pth",
    methods=("norcal",),
    grid=None,
    split="val_held_out",
    fraction: float = 0.2,
    seed: int = 0,
    cover_classes: bool = True,
    images_root=None,
    metric: str = "bbox_mAP_50",
    count: str = "instances",
    rescale: bool = True,
    device="auto",
    overrides=(),
    progress: bool = True,
) -> dict:
    """``lvod calibrate RUN``: pick each method's parameter on held-out data, write
    ``RUN/calibration.json`` (module docstring) and return it plus ``"file"`` (its path),
    ``"table"`` (one row per method and grid value) and ``"seconds"``.

    ``config``: default ``RUN/config.resolved.json``; ``checkpoint``: a file name in ``RUN``
    or a path. ``methods``: names of :data:`lvod.models.calibration.METHODS` (each checked
    against the head before anything runs); ``grid``: values of each method's parameter
    (default 0, 0.25, 0.5, 0.75, 1; 0 is always added). ``metric``: :data:`METRICS`.
    """
    from lvod.config import load_config
    from lvod.engine.heldout import held_out_split
    from lvod.engine.inference import build_test_transform, load_model
    from lvod.engine.rescoring import rescoring_options
    from lvod.evaluation import ResultsWriter, evaluate, load_results
    from lvod.io import save_json
    from lvod.models import read_group_table
    from lvod.models.calibration import METHODS, Calibration, check_supported

    t_start = time.perf_counter()
    run = Path(run)
    if not run.is_dir():
        raise DataError(run, "run folder", "does not exist", "give the folder lvod train wrote")
    ckpt = Path(checkpoint) if Path(checkpoint).is_file() else run / checkpoint
    if not ckpt.is_file():
        raise DataError(ckpt, "checkpoint", "does not exist", "pass --checkpoint NAME of a .pth in the run folder")
    cfg_path = Path(config) if config is not None else run / "config.resolved.json"
    cfg = load_config(cfg_path, overrides)
    methods = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise DataError("--method", m, f"unknown calibration method; valid: {', '.join(METHODS)}", "pick one")
        check_supported(cfg.model.head, m, "--method")
    if metric not in METRICS:
        raise DataError("--metric", metric, f"is not one of {', '.join(METRICS)}", "pick one")
    values = parse_grid(grid)
    rescoring = rescoring_options(cfg.test)

    with tempfile.TemporaryDirectory(prefix=".calibration-", dir=run) as tmp:
        ds, held_root, held = held_out_split(
            cfg, tmp, split=split, fraction=fraction, seed=seed, cover_classes=cover_classes, images_root=images_root
        )
        if ds.num_classes != cfg.model.num_classes:
            raise DataError(
                ds.path,
                "categories",
                f"{ds.num_classes} classes, but the model has {cfg.model.num_classes}",
                "use the run's training data",
            )
        if held["in_training"]:
            logger.info(
                "calibration split: %d videos the detector was trained on (the parameter is chosen on seen data)",
                len(held["videos"]),
            )
        counts, cinfo = training_counts(cfg, ds.cat_ids, count)
        table = read_group_table(cfg.model, ds.cat_ids)
        model, _ = load_model(cfg, ckpt, device=device, cat_ids=ds.cat_ids, groups=table)
        variants = [("identity", 0.0)] + [(m, v) for m in methods for v in values if v != 0.0]
        calibrators = [
            _calibrator(model, Calibration(m if m != "identity" else methods[0], v, count, rescale), counts)
            for m, v in variants
        ]
        transform = build_test_transform(cfg.data, cfg.model.image_mean, cfg.model.image_std)
        paths = [Path(tmp) / f"variant_{i}.npz" for i in range(len(variants))]
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(ResultsWriter(p)) for p in paths]
            _grid_pass(model, ds, held_root, transform, calibrators, writers, cfg, device, progress, rescoring)
        evaluated = []
        for (m, v), p in zip(variants, paths):
            res = evaluate(ds, load_results(p), groups=table, motion=False, results_file=str(p))
            groups = {g["group"]: g["ap50"] for g in res.get("groups") or []}
            evaluated.append(
                {
                    "value": v,
                    "bbox_mAP_50": res["bbox_mAP_50"],
                    "bbox_mAP": res["bbox_mAP"],
                    "mean_group_ap50": metric_value(res, "mean_group_ap50"),
                    "groups": groups,
                    "_method": m,
                }
            )
            logger.info("%s %g: %s %.4f", m, v, metric, evaluated[-1][metric])
    identity = evaluated[0]
    per_method = {}
    for m in methods:
        rows = [{k: x for k, x in identity.items() if k != "_method"}] + [
            {k: x for k, x in r.items() if k != "_method"} for r in evaluated[1:] if r["_method"] == m
        ]
        best = _best(rows, metric)
        per_method[m] = {
            "param": METHODS[m].param,
            "grid": rows,
            "best": best["value"],
            "best_metric": best[metric],
            "identity_metric": identity[metric],
        }
    record = {
        "format": FORMAT,
        "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
        "config": str(cfg_path),
        "head": cfg.model.head,
        "metric": metric,
        "count": count,
        "rescale": rescale,
        "counts": {"cat_ids": [int(c) for c in ds.cat_ids], "values": counts.tolist(), "sources": cinfo["sources"]},
        "held_out": held,
        "rescoring": None if rescoring is None else rescoring.to_dict(),
        "methods": per_method,
    }
    out = run / CALIBRATION_FILE
    record["methods"] = _merge_methods(out, record)
    record["choice"] = _choose(record["methods"])
    save_json(record, out)
    table_rows = [
        {
            "method": m,
            "param": r["param"],
            **{k: v for k, v in g.items() if k != "groups"},
            "best": g["value"] == r["best"],
        }
        for m, r in record["methods"].items()
        for g in r["grid"]
    ]
    return {**record, "file": out, "table": table_rows, "seconds": time.perf_counter() - t_start}


def _merge_methods(path: Path, record: dict) -> dict:
    """Methods of an existing calibration.json made on the same checkpoint, held-out
    videos, metric, counts and rescoring, with this run's methods replacing theirs."""
    if not path.is_file():
        return record["methods"]
    try:
        old = load_calibration_file(path)
    except (DataError, ValueError):
        return record["methods"]
    same = old.get("checkpoint", {}).get("sha256") == record["checkpoint"]["sha256"]
    keys = ("metric", "count", "rescale", "counts", "rescoring", "held_out")
    same = same and all(old.get(k) == record[k] for k in keys)
    if not same:
        logger.info("%s: replaced (made for another checkpoint, split, metric or counts)", path)
        return record["methods"]
    return {**old["methods"], **record["methods"]}


def _calibrator(model, calibration, counts):
    from lvod.models.calibration import ScoreCalibrator

    return ScoreCalibrator(model.detector.roi_head.predictor, calibration, counts)


def _grid_pass(model, ds, images_root, transform, calibrators, writers, cfg, device, progress, rescoring) -> None:
    """One pass of the detector over ``ds``; every calibrator re-scores every frame's raw
    outputs (calibration, threshold, NMS, the config's rescoring) into its writer. The
    first calibrator is the identity: its detections must equal the detector's own."""
    from dataclasses import asdict

    import torch

    from lvod.engine.inference import frame_numpy, iter_detections, to_coco_columns
    from lvod.engine.rescoring import seq_nms
    from lvod.evaluation import Detections
    from lvod.models.detector import to_original
    from lvod.models.roi_head import multiclass_nms

    roi = model.detector.roi_head
    taps: deque = deque()
    roi.tap = lambda logits, boxes, size: taps.append((logits, boxes, size))
    roi.score_fn = None
    cat_ids = np.asarray(ds.cat_ids, np.int64)
    pending: list[list[dict]] = [[] for _ in calibrators]
    try:
        for vid, rows, k, det in iter_detections(
            model,
            ds,
            images_root,
            transform,
            device=device,
            progress=progress,
            workers=cfg.test.workers,
            as_video=True,
        ):
            if len(taps) != 1:
                raise RuntimeError(f"video {vid} frame {k}: the RoI head reported {len(taps)} images, expected 1")
            logits, boxes, size = taps.popleft()
            row = rows[k]
            meta = {"img_size": size, "orig_size": (int(ds.img_height[row]), int(ds.img_width[row]))}
            with torch.inference_mode():
                for g, cal in enumerate(calibrators):
                    d = multiclass_nms(boxes, cal(logits)[:, 1:], roi.score_thr, roi.nms_iou, roi.max_dets)
                    d = frame_numpy(to_original(d, meta))
                    if g == 0 and not _same(d, frame_numpy(det)):
                        raise RuntimeError(f"video {vid} frame {k}: re-scoring does not reproduce the detector")
                    pending[g].append(d)
            if k + 1 == len(rows):
                for g, frames in enumerate(pending):
                    if rescoring is not None:
                        frames = seq_nms(frames, **{k2: v for k2, v in asdict(rescoring).items()})
                    for i, f in enumerate(frames):
                        cats, xywh, scores = to_coco_columns(f, cat_ids)
                        writers[g].add(
                            Detections(np.full(len(cats), ds.img_ids[rows[i]], np.int64), cats, xywh, scores)
                        )
                pending = [[] for _ in calibrators]
    finally:
        roi.tap = None


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
