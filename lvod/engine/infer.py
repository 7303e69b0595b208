"""``lvod infer``: run a trained detector on your own video file, frame folder or image.

``infer_video(config, checkpoint, input, out_dir, ...) -> dict`` streams the input through the
detector's ``detect_video`` (with its test-time window and feature cache) and writes into
``out_dir``:

- ``detections.json`` (always), written as a stream and renamed into place at the end::

      {"input": str, "kind": "video" | "frames" | "image", "num_frames": int,
       "total_frames": int, "fps": float, "min_score": float, "draw_score_thr": float,
       "config": str, "checkpoint": str | null, "random_weights": bool,
       "classes": [{"label": 1..C, "category_id": int, "name": str}, ...],
       "class_names_from": str,
       "frames": [{"index": 0-based frame, "file": frame file or "<video>#<index>",
                   "width": W0, "height": H0,
                   "boxes": [[x1, y1, x2, y2], ...] in original pixels,
                   "scores": [...], "labels": [1..C], "names": [...]}, ...]}

  Every detection the detector outputs is listed: those with ``score >= min_score``
  (the model's own test threshold, ``model.test_score_thr``), at most
  ``model.test_max_dets`` per frame, highest score first. ``score_thr`` (``--score-thr``)
  only chooses what is drawn (``draw_score_thr``); to keep a smaller file, raise the
  model's threshold (``model.test_score_thr=0.05`` as an override).
- ``frames/%06d.jpg`` with the boxes at or above ``score_thr`` drawn (``draw=True``) and/or
  ``video.mp4`` (``video=True``, mp4v codec, the input's frame rate; 25 fps for frame
  folders).

Class names (:func:`class_table`): the checkpoint's ``"classes"`` entry (every checkpoint
``lvod train`` writes carries one, ``lvod.engine.train.model_identity``), so the names do not
depend on the folder ``lvod infer`` runs in; an mmtracking checkpoint's ``meta.CLASSES``;
for a checkpoint without either (written before lvod stored its classes) the categories of
the config's ``data.val.ann_file`` when that file is reachable, else ``class_1..class_C``,
with a warning that says so. The detector is built with the group table the checkpoint
carries (BAGS, federated loss), so no ``groups.json`` needs to be reachable either.

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
from lvod.engine.inference import (
    build_test_transform,
    checkpoint_classes,
    frame_numpy,
    load_model,
    prefetch,
    resolve_device,
)
from lvod.io import atomic_write

logger = logging.getLogger(__name__)


def class_table(cfg, ckpt: dict, checkpoint=None) -> tuple[list[int], list[str], str]:
    """``(cat_ids, names, source)`` of the detector's C classes (label = index + 1);
    ``source`` says where they came from, in words (the CLI prints it).

    The checkpoint's class list when it has one; an mmtracking checkpoint's
    ``meta.CLASSES``; else (a checkpoint written before lvod stored its classes, or no
    checkpoint) the categories of ``data.val.ann_file`` when reachable from here, else
    ``class_1..class_C``. The last two warn when there is a checkpoint (``UserWarning``):
    the names then depend on the folder the command runs in.
    """
    num = int(cfg.model.num_classes)
    classes = checkpoint_classes(ckpt)
    if classes is not None and len(classes[0]) == num:
        return classes[0], classes[1], "checkpoint"
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None  # mmtracking checkpoints
    if isinstance(meta, dict) and len(meta.get("CLASSES") or ()) == num:
        return list(range(1, num + 1)), [str(n) for n in meta["CLASSES"]], "checkpoint meta (mmtracking CLASSES)"
    old = f"{checkpoint} carries no class list (written before lvod stored one)" if checkpoint is not None else None
    ann = cfg.data.val.ann_file
    path = Path(cfg.data.root) / ann if ann else None
    if path is not None and path.is_file():
        with open(path, "rb") as fh:
            cats = sorted(json.load(fh).get("categories", []), key=lambda c: c["id"])
        if len(cats) == num:
            if old:
                warnings.warn(f"{old}: class names from data.val.ann_file {path}", UserWarning, stacklevel=3)
            return [int(c["id"]) for c in cats], [str(c["name"]) for c in cats], f"{path} (data.val.ann_file)"
    where = (
        f"data.val.ann_file {path} is not reachable from {Path.cwd()}"
        if path is not None and not path.is_file()
        else f"data.val.ann_file {path} has another number of categories"
        if path is not None
        else "data.val.ann_file is not set"
    )
    if old:
        warnings.warn(
            f"{old} and {where}: the classes are named class_1..class_{num}; retrain with this lvod, or set "
            "data.root so that data.val.ann_file is the annotation file of the training data",
            UserWarning,
            stacklevel=3,
        )
    return list(range(1, num + 1)), [f"class_{k}" for k in range(1, num + 1)], f"none ({where})"


def _frame_record(index: int, name: str, size_hw, det: dict, names: list[str]) -> dict:
    """One ``frames`` entry of detections.json: every detection of the frame; ``det`` as
    :func:`lvod.engine.inference.frame_numpy` returns it."""
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    return {
        "index": index,
        "file": name,
        "width": int(size_hw[1]),
        "height": int(size_hw[0]),
        "boxes": np.round(boxes.astype(np.float64), 2).tolist(),
        "scores": np.round(scores.astype(np.float64), 4).tolist(),
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

    ``score_thr``: the score from which a box is drawn (``draw``/``video``);
    ``detections.json`` lists every detection above the model's own threshold
    (``model.test_score_thr``). ``calibrate`` / ``rescoring``: as
    :func:`lvod.engine.test.test_model` (None: the config's ``test.calibrate`` /
    ``test.rescoring``).

    Returns a summary: ``{"input": str, "kind": "video" | "frames" | "image",
    "frames": frames processed, "total_frames": frames in the input, "detections":
    detections written to detections.json, "min_score": the model's threshold they are
    above, "above_score_thr": how many of them have ``score >= score_thr``, "drawn": how
    many boxes were drawn (``above_score_thr`` when drawing, else 0), "score_thr",
    "class_names_from": where the class names came from, "calibration": record or None,
    "rescoring": its options, "files": {"detections": Path, "frames": Path or None,
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
    cat_ids, names, names_from = class_table(cfg, ckpt, checkpoint)
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
        "min_score": cfg.model.test_score_thr,
        "draw_score_thr": score_thr,
        "config": str(config),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "random_weights": checkpoint is None,
        "classes": [{"label": i + 1, "category_id": c, "name": n} for i, (c, n) in enumerate(zip(cat_ids, names))],
        "class_names_from": names_from,
        "calibration": calib_record,
        "rescoring": {"method": "none"} if seq_options is None else seq_options.to_dict(),
    }
    count = written = above = 0

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
                rec = _frame_record(index, name, size, det, names)
                fh.write(("" if count == 0 else ",\n") + json.dumps(rec))
                count += 1
                written += len(rec["scores"])
                show = det["scores"] >= score_thr
                above += int(show.sum())
                if drawn is not None:
                    image = video_io.draw_detections(
                        next(drawn).image, det["boxes"][show], det["scores"][show], det["labels"][show], names
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
    drew = above if drawn is not None else 0
    logger.info(
        "%s %s: %d frames, %d detections written (score >= %s), %d drawn (score >= %s)",
        source.kind,
        source.path,
        count,
        written,
        cfg.model.test_score_thr,
        drew,
        score_thr,
    )
    return {
        "input": str(source.path),
        "kind": source.kind,
        "frames": count,
        "total_frames": source.total_frames,
        "detections": written,
        "min_score": cfg.model.test_score_thr,
        "above_score_thr": above,
        "drawn": drew,
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
