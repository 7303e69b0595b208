"""``lvod infer``: run a trained detector on your own video file, frame folder or image.

``infer_video(config, checkpoint, input, out_dir, ...) -> dict`` streams the input through the
detector's ``detect_video`` (with its test-time window and feature cache) and writes into
``out_dir``:

- ``detections.json`` (always), written as a stream and renamed into place at the end::

      {"input": str, "kind": "video" | "frames" | "image", "num_frames": int,
       "total_frames": int, "fps": float, "score_thr": float, "config": str,
       "checkpoint": str | null, "random_weights": bool,
       "classes": [{"label": 1..C, "category_id": int, "name": str}, ...],
       "frames": [{"index": 0-based frame, "file": frame file or "<video>#<index>",
                   "width": W0, "height": H0,
                   "boxes": [[x1, y1, x2, y2], ...] in original pixels,
                   "scores": [...], "labels": [1..C], "names": [...]}, ...]}

  Only detections with ``score >= score_thr`` are listed (``--score-thr 0`` keeps the
  detector's full output, up to ``model.test_max_dets`` per frame).
- ``frames/%06d.jpg`` with the boxes drawn (``draw=True``) and/or ``video.mp4``
  (``video=True``, mp4v codec, the input's frame rate; 25 fps for frame folders).

Class names: a checkpoint's ``"classes"`` entry (``{"cat_ids": [...], "names": [...]}``)
when it has one, an mmtracking checkpoint's ``meta.CLASSES``, else the categories of the
config's ``data.val.ann_file`` when that file exists, else ``class_1..class_C``.

Post-processing as ``lvod test``: ``calibrate`` (``--calibrate`` / ``test.calibrate``,
:mod:`lvod.models.calibration`; ``auto`` reads ``calibration.json`` beside the checkpoint)
changes the classifier's scores before NMS; ``rescoring`` (``--rescoring`` /
``test.rescoring = "seq_nms"``) rescores the input's detections with Seq-NMS, for which the
whole input's detections are kept until its last frame (drawing and ``detections.json``
follow then). Both are recorded in the header (``"calibration"``, ``"rescoring"``).

Without ``--checkpoint`` the detector keeps its random initialisation, which only makes
sense for smoke tests; it therefore needs an explicit ``random_weights=True``
(``--random-weights``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import torch

from lvod.engine import video_io
from lvod.engine.inference import build_test_transform, frame_numpy, load_model, prefetch, resolve_device
from lvod.io import atomic_write

logger = logging.getLogger(__name__)


def class_table(cfg, ckpt: dict) -> tuple[list[int], list[str], str]:
    """``(cat_ids, names, source)`` of the detector's C classes (label = index + 1)."""
    num = int(cfg.model.num_classes)
    classes = ckpt.get("classes") if isinstance(ckpt, dict) else None
    if isinstance(classes, dict) and len(classes.get("names", ())) == num:
        return [int(c) for c in classes["cat_ids"]], [str(n) for n in classes["names"]], "checkpoint"
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None  # mmtracking checkpoints
    if isinstance(meta, dict) and len(meta.get("CLASSES") or ()) == num:
        return list(range(1, num + 1)), [str(n) for n in meta["CLASSES"]], "checkpoint meta"
    ann = cfg.data.val.ann_file
    if ann:
        path = Path(cfg.data.root) / ann
        if path.is_file():
            with open(path, "rb") as fh:
                cats = sorted(json.load(fh).get("categories", []), key=lambda c: c["id"])
            if len(cats) == num:
                return [int(c["id"]) for c in cats], [str(c["name"]) for c in cats], str(path)
    return list(range(1, num + 1)), [f"class_{k}" for k in range(1, num + 1)], "none"


def _frame_record(index: int, name: str, size_hw, det: dict, names: list[str], score_thr: float) -> dict:
    """One ``frames`` entry of detections.json (detections at or above ``score_thr``);
    ``det`` as :func:`lvod.engine.inference.frame_numpy` returns it."""
    scores = det["scores"]
    keep = scores >= score_thr
    boxes = det["boxes"][keep]
    labels = det["labels"][keep]
    return {
        "index": index,
        "file": name,
        "width": int(size_hw[1]),
        "height": int(size_hw[0]),
        "boxes": np.round(boxes.astype(np.float64), 2).tolist(),
        "scores": np.round(scores[keep].astype(np.float64), 4).tolist(),
        "labels": labels.astype(int).tolist(),
        "names": [names[int(lb) - 1] for lb in labels],
    }


def infer_video(
    config,
    checkpoint,
    input,
    out_dir,
    *,
    draw: bool = False,
    video: bool = False,
    score_thr: float = 0.3,
    device: str = "auto",
    random_weights: bool = False,
    max_frames: int | None = None,
    overrides=(),
    progress: bool = True,
    calibrate=None,
    rescoring: str | None = None,
) -> dict:
    """Detect objects in ``input`` and write ``out_dir/detections.json`` (+ drawings).

    ``calibrate`` / ``rescoring``: as :func:`lvod.engine.test.test_model` (None: the
    config's ``test.calibrate`` / ``test.rescoring``).

    Returns a summary: ``{"input": str, "kind": "video" | "frames" | "image",
    "frames": frames processed, "total_frames": frames in the input, "detections":
    detections listed (score >= score_thr), "score_thr", "class_names_from": where the
    class names came from, "calibration": record or None, "rescoring": its options,
    "files": {"detections": Path, "frames": Path or None,
    "video": Path or None}}``. Bad inputs raise ``DataError``; running without a
    checkpoint warns (``UserWarning``) that the boxes mean nothing.
    """
    from tqdm import tqdm

    from lvod.config import load_config
    from lvod.engine.calibrate import build_calibrator, resolve_calibration
    from lvod.engine.rescoring import rescorer, rescoring_options
    from lvod.models.calibration import check_supported, parse_calibration

    cfg = load_config(config, overrides)
    where = "--calibrate" if calibrate is not None else f"{cfg.name}: test.calibrate"
    calibration = parse_calibration(calibrate if calibrate is not None else cfg.test.calibrate, where)
    calibration, calib_info = resolve_calibration(calibration, checkpoint, where)
    if calibration is not None:
        check_supported(cfg.model.head, calibration.method, where)
    seq_options = rescoring_options(cfg.test, rescoring)
    source = video_io.open_source(input, max_frames=max_frames)
    dev = resolve_device(device)
    model, ckpt = load_model(cfg, checkpoint, random_weights=random_weights, device=dev)
    cat_ids, names, names_from = class_table(cfg, ckpt)
    calib_record = build_calibrator(cfg, model, calibration, cat_ids, calib_info)
    if random_weights and checkpoint is None:
        warnings.warn("--random-weights: the detector is untrained, its boxes mean nothing", stacklevel=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = build_test_transform(cfg.data, cfg.model.image_mean, cfg.model.image_std)
    fed: deque = deque()  # (index, name, (H0, W0)) of frames given to the detector

    def prepare(frame):
        tensor, meta = transform(frame.image)
        return frame, tensor, meta

    def frames():
        for frame, tensor, meta in prefetch(prepare, source.frames(), cfg.test.workers):
            fed.append((frame.index, frame.name, meta["orig_size"]))
            yield tensor.to(dev, non_blocking=True), meta

    drawn = source.frames() if (draw or video) else None
    frame_writer = video_io.FrameDirWriter(out / "frames") if draw else None
    mp4 = None
    header = {
        "input": str(source.path),
        "kind": source.kind,
        "num_frames": source.num_frames,
        "total_frames": source.total_frames,
        "fps": source.fps,
        "score_thr": score_thr,
        "config": str(config),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "random_weights": checkpoint is None,
        "classes": [{"label": i + 1, "category_id": c, "name": n} for i, (c, n) in enumerate(zip(cat_ids, names))],
        "calibration": calib_record,
        "rescoring": {"method": "none"} if seq_options is None else seq_options.to_dict(),
    }
    count = kept = 0

    def detections():
        """``(index, name, (H0, W0), det)`` per frame, in order (rescored at the end)."""
        done = []
        with torch.inference_mode():
            for det in model.detect_video(frames(), source.num_frames):
                if not fed:
                    raise RuntimeError("the detector yielded a result before reading its frame")
                item = (*fed.popleft(), frame_numpy(det))
                bar.update(1)
                if seq_options is None:
                    yield item
                else:
                    done.append(item)
        if seq_options is not None:
            rescored = rescorer(seq_options)([item[3] for item in done])
            yield from ((*item[:3], d) for item, d in zip(done, rescored))

    bar = tqdm(
        total=source.num_frames, unit="frame", desc="infer", disable=not progress, leave=False, dynamic_ncols=True
    )
    try:
        with atomic_write(out / "detections.json", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(header)[:-1] + ', "frames": [\n')
            for index, name, size, det in detections():
                rec = _frame_record(index, name, size, det, names, score_thr)
                fh.write(("" if count == 0 else ",\n") + json.dumps(rec))
                count += 1
                kept += len(rec["scores"])
                if drawn is not None:
                    image = video_io.draw_detections(
                        next(drawn).image, rec["boxes"], rec["scores"], rec["labels"], names
                    )
                    if frame_writer is not None:
                        frame_writer.write(index, image)
                    if video:
                        if mp4 is None:
                            mp4 = video_io.Mp4Writer(out / "video.mp4", source.fps, (image.shape[1], image.shape[0]))
                        mp4.write(image)
            if count != source.num_frames:
                raise RuntimeError(
                    f"the detector yielded {count} results for {source.num_frames} frames; it must yield one per frame"
                )
            fh.write("\n]}\n")
        if mp4 is not None:
            mp4.close()
            mp4 = None
    finally:
        bar.close()
        if mp4 is not None:
            mp4.abort()
        if drawn is not None:
            drawn.close()
    logger.info("%s %s: %d frames, %d detections with score >= %s", source.kind, source.path, count, kept, score_thr)
    return {
        "input": str(source.path),
        "kind": source.kind,
        "frames": count,
        "total_frames": source.total_frames,
        "detections": kept,
        "score_thr": score_thr,
        "class_names_from": names_from,
        "calibration": calib_record,
        "rescoring": header["rescoring"],
        "files": {
            "detections": out / "detections.json",
            "frames": out / "frames" if draw else None,
            "video": out / "video.mp4" if video else None,
        },
    }
