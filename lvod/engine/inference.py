"""Streaming per-video inference over a CocoVid split, feeding a compact results writer.

``run_inference(model, ds, images_root, transform, writer=..., device=...)`` walks the
videos of a ``CocoVid`` in file order. For each video it hands the detector a *lazy*
iterator of transformed frames (each frame is read from disk only when the detector's
test-time window asks for it) together with the video's frame count, and appends every
frame's detections to ``writer`` as soon as the detector yields them. Nothing grows with
the split: at ImageNet VID val scale (176k frames x 100 detections) the only large object
is the writer's on-disk columnar file (``lvod.evaluation.results``), never a list of
per-detection dicts.

Per frame the detector yields ``{"boxes" (K, 4) x1y1x2y2 original pixels, "scores" (K,),
"labels" (K,) in 1..C}`` (docs/DESIGN.md "Detectors"); ``to_coco_columns`` turns that into
the results columns: category ids ``ds.cat_ids[label - 1]`` and boxes ``[x, y, w, h]``.

Also here: ``resolve_device("auto" | "cpu" | "cuda[:i]")``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lvod.engine.video_io import read_image
from lvod.errors import DataError
from lvod.evaluation.results import Detections

# transform(image RGB uint8 (H, W, 3)) -> (normalised padded Tensor[3, Hp, Wp],
#                                         {"img_size": (h, w), "orig_size": (H0, W0)})
Transform = Callable[[np.ndarray], tuple[Tensor, dict]]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA device when one is usable, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device", device, "CUDA is not available on this machine",
                        "pass --device cpu (or auto)")
    return dev


def to_coco_columns(det: dict, cat_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's detector output as results columns.

    Args:
        det: ``{"boxes": (K, 4) x1y1x2y2, "scores": (K,), "labels": (K,) int in 1..C}``
            (tensors or arrays).
        cat_ids: ``(C,)`` sorted category ids (``CocoVid.cat_ids``): label ``l`` is
            category ``cat_ids[l - 1]``.

    Returns:
        ``category_ids int64 (K,)``, ``bboxes float32 (K, 4)`` as ``[x, y, w, h]``,
        ``scores float32 (K,)``.

    Raises:
        ValueError: shapes disagree or a label is outside 1..C (a detector built for
        another class count than the dataset's).
    """
    boxes = _numpy(det["boxes"], np.float64).reshape(-1, 4)
    scores = _numpy(det["scores"], np.float32).reshape(-1)
    labels = _numpy(det["labels"], np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"detector output has {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(labels)} labels; they must match")
    if len(labels) and (labels.min() < 1 or labels.max() > len(cat_ids)):
        raise ValueError(f"detector label {int(labels.max() if labels.max() > len(cat_ids) else labels.min())} "
                         f"is outside 1..{len(cat_ids)}: the model's class count does not match "
                         "the dataset's categories")
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return np.asarray(cat_ids, np.int64)[labels - 1], xywh.astype(np.float32), scores


def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x, dtype=dtype)


def _video_frames(ds, rows: np.ndarray, images_root: Path | None, transform: Transform,
                  device: torch.device) -> Iterator[tuple[Tensor, dict]]:
    """Lazily read, check and transform the frames ``rows`` of one video."""
    for row in rows:
        row = int(row)
        path = (Path(images_root) / ds.img_file_names[row] if images_root is not None
                else ds.image_path(row))
        image = read_image(path)
        h0, w0 = image.shape[:2]
        want = (int(ds.img_height[row]), int(ds.img_width[row]))
        if (h0, w0) != want:
            raise DataError(ds.path, f"image {int(ds.img_ids[row])} ({ds.img_file_names[row]})",
                            f"the file is {w0}x{h0} but the annotation says {want[1]}x{want[0]}; "
                            "detections would not line up with the ground truth",
                            "fix width/height in the annotation file or use the matching images")
        tensor, meta = transform(image)
        yield tensor.to(device, non_blocking=True), meta


def run_inference(model, ds, images_root, transform: Transform, *, writer, device="auto",
                  progress: bool = True, video_ids=None) -> dict:
    """Detect every frame of ``ds`` video by video and stream the results into ``writer``.

    Args:
        model: a detector with ``detect_video(frames, num_frames)`` (docs/DESIGN.md).
        ds: the ``CocoVid`` split; its ``cat_ids`` map labels to category ids.
        images_root: folder the ``file_name`` entries are relative to; ``None`` uses
            ``ds.image_path`` (the loader's ``images_root`` or the annotation's folder).
        transform: the test-time transform (resize keep-ratio, normalise, pad), called on
            each RGB ``uint8 (H, W, 3)`` frame; returns ``(Tensor[3, H, W], meta)`` with
            ``meta["img_size"]`` and ``meta["orig_size"]``.
        writer: ``lvod.evaluation.results.ResultsWriter`` (or anything with its ``add``):
            ``writer.add(Detections)`` is called once per frame, also for frames without
            detections, with the columns ``image_id int64 (K,)``, ``category_id int64
            (K,)``, ``bbox float32 (K, 4)`` xywh, ``score float32 (K,)``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        progress: show a tqdm bar over frames on stderr.
        video_ids: optional subset of video ids, run in the order given.

    Returns:
        ``{"videos": int, "frames": int, "detections": int, "seconds": float,
        "frames_per_second": float}``.

    Raises:
        RuntimeError: the detector yields a different number of frames than it was given.
        DataError: a frame file is missing, undecodable or of another size than annotated.
    """
    from tqdm import tqdm

    device = resolve_device(device)
    model.eval()
    order = ([v["id"] for v in ds.videos] if video_ids is None else list(video_ids))
    total = int(sum(len(ds.frame_rows(v)) for v in order))
    cat_ids = np.asarray(ds.cat_ids, np.int64)
    n_frames = n_dets = n_videos = 0
    start = time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc="inference", disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        for vid in order:
            rows = ds.frame_rows(vid)
            if len(rows) == 0:
                continue
            frames = _video_frames(ds, rows, images_root, transform, device)
            k = -1
            with torch.inference_mode():
                for k, det in enumerate(model.detect_video(frames, len(rows))):
                    if k >= len(rows):
                        raise RuntimeError(f"detector yielded more than {len(rows)} frames for "
                                           f"video {vid}")
                    cats, xywh, scores = to_coco_columns(det, cat_ids)
                    image_ids = np.full(len(cats), ds.img_ids[rows[k]], np.int64)
                    writer.add(Detections(image_ids, cats, xywh, scores))
                    n_dets += len(cats)
                    bar.update(1)
            if k + 1 != len(rows):
                raise RuntimeError(f"detector yielded {k + 1} results for video {vid} with "
                                   f"{len(rows)} frames; it must yield one per frame")
            n_frames += len(rows)
            n_videos += 1
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {"videos": n_videos, "frames": n_frames, "detections": n_dets,
            "seconds": seconds, "frames_per_second": n_frames / seconds if seconds > 0 else 0.0}
