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

Also here: ``load_model(cfg, checkpoint)`` (lvod and mmtracking checkpoints, strict; the
detector is built with the classes and group table the checkpoint carries, so no data or
groups file is needed), ``checkpoint_classes`` / ``checkpoint_group_table`` /
``check_checkpoint_classes`` (what a checkpoint says it detects, and the refusal of an
annotation file that disagrees), ``build_test_transform(DataConfig, mean, std)`` (the
training pipeline's resize, normalisation and padding), ``prefetch`` (decode frames ahead
on threads) and ``resolve_device("auto" | "cpu" | "cuda[:i]")``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lvod.config import ModelConfig
from lvod.errors import DataError
from lvod.evaluation.results import Detections

# transform(uint8 RGB frame Tensor[3, H0, W0]) -> (normalised padded Tensor[3, Hp, Wp],
#                                        {"img_size": (h, w), "orig_size": (H0, W0)})
Transform = Callable[[Tensor], tuple[Tensor, dict]]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA device when one is usable, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device", device, "CUDA is not available on this machine", "pass --device cpu (or auto)")
    return dev


MM_CLS_KEY = "detector.roi_head.bbox_head.fc_cls.weight"  # only mmtracking checkpoints have it


def checkpoint_classes(ckpt: dict) -> tuple[list[int], list[str]] | None:
    """``(cat_ids, names)`` of the classes an lvod checkpoint was trained on (label =
    index + 1; its ``classes`` entry, ``lvod.engine.train.model_identity``), or None for a
    checkpoint without one (written before lvod stored it, a bare state dict, mmtracking)."""
    classes = ckpt.get("classes") if isinstance(ckpt, dict) else None
    if not isinstance(classes, dict):
        return None
    ids, names = classes.get("cat_ids"), classes.get("names")
    if not isinstance(ids, (list, tuple)) or not isinstance(names, (list, tuple)) or len(ids) != len(names):
        return None
    return [int(c) for c in ids], [str(n) for n in names]


def checkpoint_group_table(ckpt: dict, checkpoint=None):
    """The frequency-group table a checkpoint carries (``groups``, as
    ``lvod.bags_io.groups_to_dict`` writes it), rebuilt and checked by
    ``lvod.bags_io.groups_from_dict``; None when it carries none."""
    from lvod.bags_io import groups_from_dict

    data = ckpt.get("groups") if isinstance(ckpt, dict) else None
    if not isinstance(data, dict):
        return None
    return groups_from_dict(data, f"{checkpoint or '<checkpoint>'} (its group table)")


def check_checkpoint_classes(ann_file, cat_ids, names, ckpt: dict, checkpoint) -> bool:
    """Refuse an annotation file whose categories are not the checkpoint's classes.

    ``cat_ids`` / ``names``: the file's categories in ascending id order. A ``DataError``
    names the file, the checkpoint and the first category that differs (id or name, or
    the first one only one side has). Returns False, after a log line, when the
    checkpoint carries no class list (nothing to compare: today's behaviour), else True.
    """
    classes = checkpoint_classes(ckpt)
    if classes is None:
        logger.info(
            "%s carries no class list (written before lvod stored one, or not by lvod train): "
            "assuming it was trained on the categories of %s",
            checkpoint,
            ann_file,
        )
        return False
    mine = list(zip((int(c) for c in cat_ids), (str(n) for n in names)))
    theirs = list(zip(*classes))
    if mine == theirs:
        return True
    k = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))

    def show(side, i):
        return f"id {side[i][0]} '{side[i][1]}'" if i < len(side) else "nothing"

    raise DataError(
        ann_file,
        "categories",
        f"disagree with the classes of checkpoint {checkpoint} ({len(mine)} vs {len(theirs)} classes): "
        f"category {k + 1} in ascending id order is {show(mine, k)} here but {show(theirs, k)} in the checkpoint",
        "evaluate on a split of the dataset the checkpoint was trained on "
        f"({len(theirs)} classes: {', '.join(n for _, n in theirs[:5])}{', ...' if len(theirs) > 5 else ''}), "
        "or pass the checkpoint trained on this file's categories",
    )


def load_model(cfg, checkpoint, *, random_weights: bool = False, device="cpu", cat_ids=None, groups=None, ckpt=None):
    """Build ``cfg.model`` and load ``checkpoint`` into it; every weight must find its place.

    ``checkpoint``: an lvod checkpoint (``{"model": state dict, "config", ...}``), a bare
    state dict, or an mmtracking 0.x FGFA/SELSA/DFF/TRoI model-zoo file (``{"state_dict": ...}`` with
    mmdet key names), which goes through ``lvod.models.checkpoint.import_mmtracking``. All
    are read with ``torch.load(weights_only=True)``; ``ckpt``: the file already read (its
    dict), so that it is read once.

    Returns ``(model in eval mode on device, checkpoint dict or {})``. Without a
    checkpoint ``random_weights`` must be True (initialised with seed 0, so runs repeat).
    The detector is built as training builds it (``lvod.models.build_model``), checked
    against ``cat_ids`` (default: the checkpoint's classes) and built with ``groups``, the
    group table the caller already read, else the one the checkpoint carries, else
    ``model.groups_file`` when the head needs a table. A checkpoint trained on another
    number of classes than ``model.num_classes`` is refused naming both.
    """
    from lvod.engine.checkpointing import load_checkpoint, state_dict_of
    from lvod.models import build_model
    from lvod.models.heads import HEADS

    if checkpoint is None and not random_weights:
        raise DataError(
            "--checkpoint",
            "model weights",
            "no checkpoint given",
            "pass --checkpoint CKPT (a .pth written by lvod train), or "
            "--random-weights to smoke-test with an untrained detector",
        )
    if ckpt is None:
        ckpt = load_checkpoint(checkpoint) if checkpoint is not None else {}
    classes = checkpoint_classes(ckpt)
    if classes is not None:
        if len(classes[0]) != cfg.model.num_classes:
            raise DataError(
                checkpoint,
                "classes",
                f"the checkpoint was trained on {len(classes[0])} classes, the config's "
                f"model.num_classes is {cfg.model.num_classes}",
                "use the config the checkpoint was trained with (<run>/config.resolved.json)",
            )
        if cat_ids is None:
            cat_ids = classes[0]
    if groups is None and HEADS[cfg.model.head].uses_groups:
        groups = checkpoint_group_table(ckpt, checkpoint)
    torch.manual_seed(0)
    model = build_model(cfg.model, cat_ids, groups=groups)
    if checkpoint is not None:
        weights = state_dict_of(ckpt, use_ema=cfg.test.use_ema)
        if isinstance(ckpt.get("state_dict"), dict) and MM_CLS_KEY in weights:
            from lvod.models.checkpoint import KIND_SIGNATURE, import_mmtracking

            if cfg.model.kind not in KIND_SIGNATURE:
                raise DataError(
                    checkpoint,
                    "state_dict",
                    "is an mmtracking checkpoint, which lvod imports into "
                    f"{', '.join(KIND_SIGNATURE)} detectors only, not model.kind = {cfg.model.kind!r}",
                    "use the config of the checkpoint's detector",
                )
            report = import_mmtracking(ckpt, model, kind=cfg.model.kind)
            missing, unexpected = report.missing, report.unexpected
            if cfg.model.kind in ("fgfa", "dff") and cfg.model.flow_warp != "mmtracking":
                warnings.warn(
                    f"{checkpoint}: mmtracking {cfg.model.kind.upper()} weights were trained with mmtracking's "
                    "warp grid, which lvod's default 'aligned' grid corrects (up to one "
                    "feature cell apart at the right and bottom edges); set "
                    "model.flow_warp=mmtracking to reproduce mmtracking's detections",
                    stacklevel=2,
                )
        else:
            own = model.state_dict()
            wrong = [
                f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                for k, v in weights.items()
                if k in own and torch.is_tensor(v) and v.shape != own[k].shape
            ]
            if wrong:
                raise DataError(
                    checkpoint,
                    "model weights",
                    f"{len(wrong)} tensors have another "
                    f"shape than the config's model (checkpoint vs model: {wrong[:3]})",
                    "use the config the checkpoint was trained with",
                )
            result = model.load_state_dict(weights, strict=False)
            missing, unexpected = result.missing_keys, result.unexpected_keys
        if missing or unexpected:
            raise DataError(
                checkpoint,
                "model weights",
                f"do not fit the config's model ({len(missing)} missing, e.g. "
                f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})",
                "use the config the checkpoint was trained with",
            )
    return model.to(resolve_device(device)).eval(), ckpt


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
        raise ValueError(
            f"detector output has {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; they must match"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > len(cat_ids)):
        raise ValueError(
            f"detector label {int(labels.max() if labels.max() > len(cat_ids) else labels.min())} "
            f"is outside 1..{len(cat_ids)}: the model's class count does not match "
            "the dataset's categories"
        )
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return np.asarray(cat_ids, np.int64)[labels - 1], xywh.astype(np.float32), scores


def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x, dtype=dtype)


def build_test_transform(data, mean=ModelConfig.image_mean, std=ModelConfig.image_std) -> Transform:
    """The test-time transform of a ``DataConfig`` (``lvod.config``), from the training
    pipeline's own pieces (``lvod.engine.data``), so train and test preprocess alike:
    keep-ratio resize to ``data.img_scale`` (1000x600), normalisation by the model's
    ``mean``/``std`` (``model.image_mean/image_std``), zero padding to a multiple of
    ``data.size_divisor``.

    The transform takes a uint8 RGB frame, ``Tensor[3, H0, W0]`` or ``ndarray (H0, W0, 3)``,
    and returns ``(Tensor[3, Hp, Wp] float32, {"img_size": (h, w), "orig_size": (H0, W0)})``.
    """
    from lvod.engine.data import normalize, pad_batch, rescale_size, resize

    scale, divisor = tuple(data.img_scale), data.size_divisor

    def transform(image) -> tuple[Tensor, dict]:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        h0, w0 = int(image.shape[-2]), int(image.shape[-1])
        w, h = rescale_size(w0, h0, scale)
        x = normalize(resize(image, (h, w)), mean, std)
        return pad_batch([x], divisor)[0], {"img_size": (h, w), "orig_size": (h0, w0)}

    return transform


def prefetch(fn: Callable, items, workers: int = 0, depth: int | None = None) -> Iterator:
    """``map(fn, items)`` in order, computed ``depth`` items ahead on ``workers`` threads.

    JPEG decoding and resizing release the GIL, so threads overlap them with the model.
    ``workers = 0`` is plain lazy ``map`` (an item is read only when asked for).
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    depth = depth or 2 * workers
    it = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="lvod-frames") as pool:
        pending = deque(pool.submit(fn, x) for x in itertools.islice(it, depth))
        try:
            while pending:
                result = pending.popleft().result()
                for x in itertools.islice(it, 1):
                    pending.append(pool.submit(fn, x))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


def _video_frames(
    ds, rows: np.ndarray, images_root: Path | None, transform: Transform, device: torch.device, workers: int
) -> Iterator[tuple[Tensor, dict]]:
    """Read, check and transform the frames ``rows`` of one video, lazily and in order."""
    from lvod.engine.data import load_image

    def load(row: int) -> tuple[Tensor, dict]:
        path = Path(images_root) / ds.img_file_names[row] if images_root is not None else ds.image_path(row)
        image = load_image(path)  # uint8 [3, H0, W0], the decoder training uses
        h0, w0 = int(image.shape[1]), int(image.shape[2])
        want = (int(ds.img_height[row]), int(ds.img_width[row]))
        if (h0, w0) != want:
            raise DataError(
                ds.path,
                f"image {int(ds.img_ids[row])} ({ds.img_file_names[row]})",
                f"the file is {w0}x{h0} but the annotation says {want[1]}x{want[0]}; "
                "detections would not line up with the ground truth",
                "fix width/height in the annotation file or use the matching images",
            )
        return transform(image)

    for tensor, meta in prefetch(load, (int(r) for r in rows), workers):
        yield tensor.to(device, non_blocking=True), meta


def frame_numpy(det: dict) -> dict:
    """One frame's detections as numpy: ``boxes`` float32 (K, 4), ``scores`` float32 (K,),
    ``labels`` int64 (K,) (what rescoring functions take)."""
    return {
        "boxes": _numpy(det["boxes"], np.float32).reshape(-1, 4),
        "scores": _numpy(det["scores"], np.float32).reshape(-1),
        "labels": _numpy(det["labels"], np.int64).reshape(-1),
    }


def iter_detections(
    model,
    ds,
    images_root,
    transform: Transform,
    *,
    device="auto",
    progress: bool = True,
    video_ids=None,
    workers: int = 0,
    as_video: bool = True,
) -> Iterator[tuple[int, np.ndarray, int, dict]]:
    """The detector's output frame by frame: ``(video_id, rows, k, det)`` for frame ``k`` of
    the clip whose image rows are ``rows`` (``det`` as ``detect_video`` yields it). The
    arguments are :func:`run_inference`'s; so are the checks (one result per frame)."""
    from tqdm import tqdm

    device = resolve_device(device)
    model.eval()
    order = [v["id"] for v in ds.videos] if video_ids is None else list(video_ids)
    clips = [(v, ds.frame_rows(v)) for v in order]
    if not as_video:
        clips = [(v, rows[i : i + 1]) for v, rows in clips for i in range(len(rows))]
    total = int(sum(len(rows) for _, rows in clips))
    bar = tqdm(total=total, unit="frame", desc="inference", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for vid, rows in clips:
            if len(rows) == 0:
                continue
            frames = _video_frames(ds, rows, images_root, transform, device, workers)
            k = -1
            with torch.inference_mode(), contextlib.closing(frames):
                for k, det in enumerate(model.detect_video(frames, len(rows))):
                    if k >= len(rows):
                        raise RuntimeError(f"detector yielded more than {len(rows)} frames for video {vid}")
                    yield vid, rows, k, det
                    bar.update(1)
            if k + 1 != len(rows):
                raise RuntimeError(
                    f"detector yielded {k + 1} results for video {vid} with "
                    f"{len(rows)} frames; it must yield one per frame"
                )
    finally:
        bar.close()


def run_inference(
    model,
    ds,
    images_root,
    transform: Transform,
    *,
    writer,
    device="auto",
    progress: bool = True,
    video_ids=None,
    workers: int = 0,
    as_video: bool = True,
    rescore: Callable[[list[dict]], list[dict]] | None = None,
) -> dict:
    """Detect every frame of ``ds`` video by video and stream the results into ``writer``.

    Args:
        model: a detector with ``detect_video(frames, num_frames)`` (docs/DESIGN.md).
        ds: the ``CocoVid`` split; its ``cat_ids`` map labels to category ids.
        images_root: folder the ``file_name`` entries are relative to; ``None`` uses
            ``ds.image_path`` (the loader's ``images_root`` or the annotation's folder).
        transform: the test-time transform (``build_test_transform``), called on each
            uint8 RGB ``Tensor[3, H0, W0]`` frame; returns ``(Tensor[3, Hp, Wp], meta)``
            with ``meta["img_size"]`` and ``meta["orig_size"]``.
        writer: ``lvod.evaluation.results.ResultsWriter`` (or anything with its ``add``):
            ``writer.add(Detections)`` is called once per frame, also for frames without
            detections, with the columns ``image_id int64 (K,)``, ``category_id int64
            (K,)``, ``bbox float32 (K, 4)`` xywh, ``score float32 (K,)``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        progress: show a tqdm bar over frames on stderr.
        video_ids: optional subset of video ids, run in the order given.
        workers: threads decoding and transforming frames ahead of the model (0 = none).
        as_video: False runs every frame as a one-frame video (``load_as_video = false``
            sources such as ImageNet DET: no temporal context).
        rescore: optional per-video post-processing (``lvod.engine.rescoring.seq_nms``):
            called with the video's frames (:func:`frame_numpy` dicts, in order) once the
            detector has yielded its last frame, returns the frames to write. The video's
            detections wait in memory until then (one video's, never the split's).

    Returns:
        ``{"videos": int, "frames": int, "detections": int, "seconds": float,
        "frames_per_second": float, "rescoring_seconds": float}``.

    Raises:
        RuntimeError: the detector yields a different number of frames than it was given.
        DataError: a frame file is missing, undecodable or of another size than annotated.
    """
    cat_ids = np.asarray(ds.cat_ids, np.int64)
    n_frames = n_dets = n_videos = 0
    rescore_seconds = 0.0
    start = time.perf_counter()
    pending: list[dict] = []

    def write(rows, k, det) -> int:
        cats, xywh, scores = to_coco_columns(det, cat_ids)
        writer.add(Detections(np.full(len(cats), ds.img_ids[rows[k]], np.int64), cats, xywh, scores))
        return len(cats)

    for _vid, rows, k, det in iter_detections(
        model,
        ds,
        images_root,
        transform,
        device=device,
        progress=progress,
        video_ids=video_ids,
        workers=workers,
        as_video=as_video,
    ):
        if rescore is None:
            n_dets += write(rows, k, det)
        else:
            pending.append(frame_numpy(det))
        if k + 1 == len(rows):
            if rescore is not None:
                t0 = time.perf_counter()
                done = rescore(pending)
                rescore_seconds += time.perf_counter() - t0
                n_dets += sum(write(rows, i, d) for i, d in enumerate(done))
                pending = []
            n_frames += len(rows)
            n_videos += 1
    seconds = time.perf_counter() - start
    return {
        "videos": n_videos,
        "frames": n_frames,
        "detections": n_dets,
        "seconds": seconds,
        "frames_per_second": n_frames / seconds if seconds > 0 else 0.0,
        "rescoring_seconds": rescore_seconds,
    }
