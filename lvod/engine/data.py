"""Training data pipeline: key/ref frame sampling, transforms, collation, resumable sampler.

- :func:`sample_refs`: reference frames of a key frame (``bilateral_uniform``,
  ``uniform``, ``key_copy``), a pure function of the key's position and a numpy Generator.
- :func:`rescale_size`, :func:`resize`, :func:`flip_boxes`, :func:`normalize`,
  :func:`pad_batch`: the transforms (mmdet ``keep_ratio`` resize, horizontal flip,
  ImageNet normalisation, zero padding to a multiple of ``size_divisor``).
- :class:`TrainDataset`: key frames of one or more CocoVid files (e.g. ImageNet VID +
  DET), each item a key frame, its refs and its targets.
- :func:`collate`: a list of items -> one batch in the detector's input layout.
- :func:`build_sampler`: the ``data.sampler`` choice (``uniform``, ``repeat_factor``,
  ``class_balanced``; the samplers are in ``lvod.engine.samplers``): shuffled per epoch,
  split across ranks, able to start mid-epoch at a given batch; every sample carries its
  own seed so that ref choice and flip do not depend on workers, ranks or where the run
  was resumed.

Edge decisions (mmtracking 0.x ``CocoVideoDataset.ref_img_sampling`` returns fewer refs
when one side of the key is outside the video; lvod keeps T fixed instead): a slot that
cannot be filled from the video is filled with a copy of the key frame. One-frame videos
(ImageNet DET, ``load_as_video = false``) get key copies for every ref. Key frames with
no non-crowd box are skipped in training (mmdet/mmtracking ``filter_empty_gt``): with no
positive the RoI head learns only background from them, and the original skipped them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lvod.config import ModelConfig
from lvod.engine.samplers import (
    ClassBalancedSampler,
    RepeatFactorSampler,
    ResumableSampler,
    class_frame_table,
    repeat_factors,
)
from lvod.errors import DataError

REF_SAMPLERS = ("bilateral_uniform", "uniform", "key_copy")


# ----------------------------------------------------------------------------- refs


def sample_refs(
    pos: int, num_frames: int, method: str, frame_range, num_refs: int, rng: np.random.Generator
) -> list[int]:
    """Positions (0-based, in the video's frame order) of the reference frames of ``pos``.

    ``bilateral_uniform``: ``num_refs // 2`` distinct frames uniformly from
    ``[pos + frame_range[0], pos - 1]`` and as many from ``[pos + 1, pos + frame_range[1]]``,
    both clipped to the video. ``uniform``: ``num_refs`` distinct frames from
    ``[pos + frame_range[0], pos + frame_range[1]]`` minus the key. ``key_copy``: the key.
    Each side is returned in frame order; a slot with no frame left is the key (``pos``).
    """
    lo, hi = int(frame_range[0]), int(frame_range[1])
    if lo > 0 or hi < 0:
        raise ValueError(f"frame_range {list(frame_range)} must contain 0 (e.g. [-9, 9])")
    if method not in REF_SAMPLERS:
        raise ValueError(f"unknown ref sampler {method!r}; valid: {', '.join(REF_SAMPLERS)}")
    if method == "key_copy" or num_frames == 1:
        return [pos] * num_refs

    def draw(cands: np.ndarray, k: int) -> list[int]:
        take = min(k, len(cands))
        chosen = sorted(int(c) for c in rng.choice(cands, size=take, replace=False)) if take else []
        return chosen + [pos] * (k - take)

    first, last = max(0, pos + lo), min(num_frames - 1, pos + hi)
    if method == "uniform":
        cands = np.array([p for p in range(first, last + 1) if p != pos], dtype=np.int64)
        return draw(cands, num_refs)
    if num_refs % 2:
        raise ValueError(f"bilateral_uniform needs an even number of refs, got {num_refs}")
    left = np.arange(first, pos, dtype=np.int64)
    right = np.arange(pos + 1, last + 1, dtype=np.int64)
    return draw(left, num_refs // 2) + draw(right, num_refs // 2)


# ----------------------------------------------------------------------------- transforms


def rescale_size(width: int, height: int, scale=(1000, 600)) -> tuple[int, int]:
    """mmdet keep-ratio size: the largest ``(w, h)`` with long side <= max(scale) and
    short side <= min(scale), aspect ratio kept, each side rounded to the nearest pixel."""
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def sample_scale(scales, mode: str, rng: np.random.Generator) -> tuple[int, int]:
    """One training scale of mmdet's multi-scale ``Resize`` (``img_scale`` list of
    ``(long, short)`` bounds, in either order within a pair):

    - ``"range"`` (mmdet ``random_sample``): two scales; the long bound is drawn uniformly
      from the whole pixels between the pairs' long sides, the short bound likewise;
    - ``"value"`` (mmdet ``random_select``): one of the listed scales, uniformly.

    A single scale is returned as it is, whatever the mode.
    """
    pairs = [(max(sc), min(sc)) for sc in scales]
    if len(pairs) == 1:
        return pairs[0]
    if mode == "value":
        return pairs[int(rng.integers(len(pairs)))]
    (la, sa), (lb, sb) = pairs
    long_edge = int(rng.integers(min(la, lb), max(la, lb) + 1))
    short_edge = int(rng.integers(min(sa, sb), max(sa, sb) + 1))
    return long_edge, short_edge


def resize(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[3, H, W]`` -> float32 ``[3, h, w]``.

    A uint8 image (what ``load_image`` and the video readers give) goes through
    ``cv2.resize(INTER_LINEAR)`` and stays on the uint8 grid, exactly as mmcv's ``imresize``
    in mmdet's ``Resize``, so lvod's network input is bit-identical to mmtracking's. A float
    image uses ``F.interpolate`` (bilinear, half-pixel centres, no antialias: the same
    sampling, without cv2's fixed-point rounding).
    """
    h, w = size_hw
    if image.dtype == torch.uint8:
        if tuple(image.shape[-2:]) == (h, w):
            return image.float()
        import cv2

        arr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        out = cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(out.reshape(h, w, -1)).permute(2, 0, 1).float()
    out = F.interpolate(image[None].float(), size=size_hw, mode="bilinear", align_corners=False)
    return out[0]


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror x1y1x2y2 boxes ``[N, 4]`` in an image ``width`` pixels wide (x -> width - x)."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """``(image - mean) / std`` per RGB channel of a float ``[3, H, W]`` image."""
    mean = torch.as_tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def pad_batch(images: list[torch.Tensor], size_divisor: int = 16) -> torch.Tensor:
    """Zero-pad (bottom/right) ``[..., H_i, W_i]`` tensors to one shape whose sides are the
    maxima rounded up to a multiple of ``size_divisor``; returns them stacked."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    h, w = (math.ceil(v / size_divisor) * size_divisor for v in (h, w))
    out = images[0].new_zeros((len(images), *images[0].shape[:-2], h, w))
    for i, im in enumerate(images):
        out[i, ..., : im.shape[-2], : im.shape[-1]] = im
    return out


def load_image(path: Path) -> torch.Tensor:
    """Read an image file as a uint8 RGB tensor ``[3, H, W]``."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(path, "image", f"cannot be read ({exc})", "check data.root / images_root and the file") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


# ----------------------------------------------------------------------------- dataset


class TrainDataset(torch.utils.data.Dataset):
    """Key frames (with refs and targets) of one or more CocoVid files.

    ``sources``: list of ``(CocoVid, load_as_video, key_frames_only)``. Every file must
    have the same ``cat_ids``. ``data`` is the ``DataConfig`` (ref sampling and transforms);
    ``mean``/``std`` the model's pixel normalisation (``model.image_mean/image_std``).
    An item is addressed by ``(index, sample_seed)`` (an int means seed 0). It returns:

    - ``frames``: list of T float32 ``[3, h, w]`` normalised unpadded images, key first;
    - ``img_size``: ``(h, w)`` of the resized key frame;
    - ``boxes``: FloatTensor ``[N, 4]`` x1y1x2y2 in resized (flipped) key-frame pixels;
    - ``labels``: LongTensor ``[N]`` in 1..C; ``img_id`` (int); ``flip`` (bool);
    - ``frame_rows``: the T image rows used (key first), for tests and debugging.
    """

    def __init__(self, sources, data, *, mean=ModelConfig.image_mean, std=ModelConfig.image_std):
        if not sources:
            raise DataError("<config>", "data.train", "is empty", "list at least one ann file")
        self.sources = [s[0] for s in sources]
        self.cat_ids = self.sources[0].cat_ids
        for coco in self.sources[1:]:
            if not np.array_equal(coco.cat_ids, self.cat_ids):
                raise DataError(
                    coco.path,
                    "categories",
                    f"differ from those of {self.sources[0].path}",
                    "use one category list for all training files (same ids, e.g. the 30 VID classes)",
                )
        self.cfg = data
        self.mean, self.std = tuple(mean), tuple(std)
        self.videos: list[np.ndarray] = []  # frame rows of each clip
        keys = []  # (source, clip, position of the key in the clip)
        self.num_skipped_empty = 0
        for s, (coco, as_video, key_only) in enumerate(sources):
            good = self._has_targets(coco)
            clips = (
                coco.video_frames.values() if as_video else (np.array([r], np.int64) for r in range(coco.num_images))
            )
            for rows in clips:
                clip = len(self.videos)
                self.videos.append(np.asarray(rows, np.int64))
                for pos, row in enumerate(rows):
                    if key_only and not coco.img_is_key[row]:
                        continue
                    if data.filter_empty_gt and not good[row]:
                        self.num_skipped_empty += 1
                        continue
                    keys.append((s, clip, pos))
        self.keys = np.array(keys, dtype=np.int64).reshape(-1, 3)
        if len(self.keys) == 0:
            raise DataError(
                self.sources[0].path,
                "key frames",
                "none left (no frame is a flagged key frame with a non-crowd box)",
                "check is_vid_train_frame and the annotations",
            )

    @staticmethod
    def _has_targets(coco) -> np.ndarray:
        """bool (I,): the image has at least one non-crowd box of positive size."""
        ok = ~coco.ann_iscrowd & (coco.ann_boxes[:, 2] > 0) & (coco.ann_boxes[:, 3] > 0)
        return np.bincount(coco.ann_image_idx[ok], minlength=coco.num_images) > 0

    def __len__(self) -> int:
        return len(self.keys)

    def num_classes(self) -> int:
        return len(self.cat_ids)

    def key_labels(self) -> list[np.ndarray]:
        """The classes of each key frame (item order): int64 arrays of the distinct labels
        (1..C) of its training targets (non-crowd boxes of positive size), what the
        class-aware samplers count."""
        per_source = []
        for coco in self.sources:
            ok = ~coco.ann_iscrowd & (coco.ann_boxes[:, 2] > 0) & (coco.ann_boxes[:, 3] > 0)
            per_source.append(ok)
        out = []
        for s, clip, pos in self.keys:
            coco, ok = self.sources[s], per_source[s]
            anns = coco.anns_of_image(int(self.videos[clip][pos]))
            out.append(np.unique(coco.ann_labels[anns[ok[anns]]]).astype(np.int64))
        return out

    def _targets(self, coco, row: int):
        anns = coco.anns_of_image(row)
        anns = anns[~coco.ann_iscrowd[anns]]
        xywh = coco.ann_boxes[anns]
        keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        xywh, anns = xywh[keep], anns[keep]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return (
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.as_tensor(coco.ann_labels[anns], dtype=torch.int64),
        )

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        s, clip, pos = (int(v) for v in self.keys[index])
        coco, rows, cfg = self.sources[s], self.videos[clip], self.cfg
        rng = np.random.default_rng(seed)
        ref_pos = sample_refs(pos, len(rows), cfg.ref_sampler, cfg.ref_frame_range, cfg.num_ref_frames, rng)
        flip = bool(rng.random() < cfg.flip_prob)
        # drawn after the flip, so a config without train_scales keeps its random stream
        scale = sample_scale(cfg.train_scales, cfg.scale_mode, rng) if cfg.train_scales else cfg.img_scale
        frame_rows = [int(rows[pos])] + [int(rows[p]) for p in ref_pos]
        cache: dict[int, torch.Tensor] = {}
        frames = []
        for row in frame_rows:
            if row not in cache:  # key copies are decoded once
                img = load_image(coco.image_path(row))
                w, h = rescale_size(img.shape[2], img.shape[1], scale)
                img = resize(img, (h, w))
                if flip:
                    img = img.flip(-1)
                cache[row] = normalize(img, self.mean, self.std)
            frames.append(cache[row])
        key_row = frame_rows[0]
        h0, w0 = int(coco.img_height[key_row]), int(coco.img_width[key_row])
        h, w = frames[0].shape[-2:]
        boxes, labels = self._targets(coco, key_row)
        boxes = boxes * torch.tensor([w / w0, h / h0, w / w0, h / h0])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        if flip:
            boxes = flip_boxes(boxes, w)
        return {
            "frames": frames,
            "img_size": (int(h), int(w)),
            "boxes": boxes,
            "labels": labels,
            "img_id": int(coco.img_ids[key_row]),
            "flip": flip,
            "frame_rows": frame_rows,
        }


def collate(batch: list[dict], size_divisor: int = 16) -> dict:
    """Items of :class:`TrainDataset` -> a batch for the detector's ``forward``.

    Returns ``images`` FloatTensor ``[B, T, 3, H, W]`` (H, W multiples of
    ``size_divisor``, zero padded bottom/right), ``image_sizes`` list of ``(h, w)``,
    ``targets`` list of ``{"boxes": [N, 4], "labels": [N]}``, ``img_ids`` LongTensor ``[B]``.
    """
    frames = [pad_batch(item["frames"], 1) for item in batch]  # each [T, 3, h_max, w_max]
    return {
        "images": pad_batch(frames, size_divisor),
        "image_sizes": [item["img_size"] for item in batch],
        "targets": [{"boxes": item["boxes"], "labels": item["labels"]} for item in batch],
        "img_ids": torch.tensor([item["img_id"] for item in batch], dtype=torch.int64),
    }


def build_sampler(dataset: TrainDataset, data, rank: int = 0, world_size: int = 1, seed: int = 0):
    """The sampler ``data.sampler`` names over ``dataset``'s key frames (``uniform``: every
    key frame once per epoch; ``repeat_factor``: LVIS repeat factor sampling with threshold
    ``data.repeat_threshold``; ``class_balanced``: a class uniformly, then one of its key
    frames; ``lvod.engine.samplers``)."""
    batch = data.imgs_per_gpu
    if data.sampler == "uniform":
        return ResumableSampler(len(dataset), batch, seed=seed, rank=rank, world_size=world_size)
    if data.sampler == "repeat_factor":
        factors = repeat_factors(dataset.key_labels(), dataset.num_classes(), data.repeat_threshold)
        return RepeatFactorSampler(factors, batch, seed=seed, rank=rank, world_size=world_size)
    if data.sampler == "class_balanced":
        table = class_frame_table(dataset.key_labels(), dataset.num_classes())
        if len(table[0]) == 0:
            raise DataError(
                dataset.sources[0].path,
                "key frames",
                "have no training boxes, so no class can be sampled (data.sampler = 'class_balanced')",
                "check the annotations, or use data.sampler = 'uniform'",
            )
        return ClassBalancedSampler(len(dataset), table, batch, seed=seed, rank=rank, world_size=world_size)
    raise AssertionError(f"lvod bug: data.sampler={data.sampler!r} has no implementation")  # config checks it


def build_train_loader(
    data,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    sources=None,
    *,
    mean=ModelConfig.image_mean,
    std=ModelConfig.image_std,
):
    """``(dataset, sampler, loader)`` for ``data`` (a ``DataConfig``), normalising with the
    model's ``mean``/``std``.

    ``sources`` overrides reading ``data.train`` (a list as :class:`TrainDataset` takes).
    Relative ``ann_file``/``images_root`` are taken relative to ``data.root``.
    """
    if sources is None:
        from lvod.data.cocovid import load_cocovid

        root = Path(data.root)
        sources = []
        for src in data.train:
            images_root = root / src.images_root if src.images_root else None
            coco = load_cocovid(root / src.ann_file, images_root=images_root)
            sources.append((coco, src.load_as_video, src.key_frames_only))
    dataset = TrainDataset(sources, data, mean=mean, std=std)
    sampler = build_sampler(dataset, data, rank, world_size, seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=data.imgs_per_gpu,
        sampler=sampler,
        drop_last=False,
        num_workers=data.workers_per_gpu,
        persistent_workers=False,
        collate_fn=_Collate(data.size_divisor),
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )  # keeps the global torch RNG untouched
    return dataset, sampler, loader


class _Collate:
    """Picklable ``collate`` with a fixed ``size_divisor`` (for worker processes)."""

    def __init__(self, size_divisor: int):
        self.size_divisor = size_divisor

    def __call__(self, batch):
        return collate(batch, self.size_divisor)
