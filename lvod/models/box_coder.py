"""Box maths of the two-stage detector: anchors, delta coding, IoU assignment, sampling.

Pure functions on float32 tensors (callers cast out of autocast before calling), written
to follow mmdet 2.x conventions so that mmtracking checkpoints behave the same here:

- ``base_anchors`` / ``grid_anchors``: mmdet ``AnchorGenerator`` with ``center_offset=0``:
  base anchors are centred on (0, 0), ratios outer / scales inner, positions row-major,
  the ``A`` anchors of one position contiguous. Output ``(H*W*A, 4)`` x1y1x2y2.
- ``encode`` / ``decode``: mmdet ``DeltaXYWHBBoxCoder`` (width = x2 - x1, no ``+1``),
  targets divided by ``stds``; decoding clamps ``dw, dh`` to ``|log(1000/16)|`` and clips
  to the image.
- ``assign``: mmdet ``MaxIoUAssigner`` (positives at ``>= pos_iou``, negatives in
  ``[0, neg_iou)``, optional low-quality matches: each GT also takes every box that ties
  its best IoU when that IoU ``>= min_pos_iou``).
- ``sample``: mmdet ``RandomSampler`` (at most ``num * pos_fraction`` positives, negatives
  fill the rest).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

MAX_LOG_RATIO = abs(math.log(1000.0 / 16))


def base_anchors(base_size: float, scales: list[float], ratios: list[float]) -> Tensor:
    """``(len(ratios) * len(scales), 4)`` anchors centred on (0, 0), ratio-major order."""
    scales_t = torch.tensor(scales, dtype=torch.float32)
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1.0 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales_t[None, :]).reshape(-1)
    hs = (base_size * h_ratios[:, None] * scales_t[None, :]).reshape(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)


def grid_anchors(base: Tensor, feat_h: int, feat_w: int, stride: int) -> Tensor:
    """Anchors of every feature-map position: ``(feat_h * feat_w * A, 4)``.

    Row ``(y * feat_w + x) * A + a`` is base anchor ``a`` shifted to ``(x*stride, y*stride)``,
    matching the RPN outputs permuted to ``(H, W, A)``.
    """
    device = base.device
    sx = torch.arange(feat_w, device=device, dtype=torch.float32) * stride
    sy = torch.arange(feat_h, device=device, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (HW, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def inside_image(anchors: Tensor, img_h: int, img_w: int, border: float) -> Tensor:
    """``(N,)`` bool: anchors fully inside the (unpadded) image, ``border`` pixels of slack.

    ``border < 0`` keeps every anchor (mmdet ``allowed_border=-1``).
    """
    if border < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    return (
        (anchors[:, 0] >= -border)
        & (anchors[:, 1] >= -border)
        & (anchors[:, 2] < img_w + border)
        & (anchors[:, 3] < img_h + border)
    )


def encode(boxes: Tensor, gt: Tensor, stds: tuple[float, ...]) -> Tensor:
    """Deltas ``(N, 4)`` taking ``boxes (N, 4)`` to ``gt (N, 4)``, divided by ``stds``."""
    pw = boxes[:, 2] - boxes[:, 0]
    ph = boxes[:, 3] - boxes[:, 1]
    px = boxes[:, 0] + 0.5 * pw
    py = boxes[:, 1] + 0.5 * ph
    gw = gt[:, 2] - gt[:, 0]
    gh = gt[:, 3] - gt[:, 1]
    gx = gt[:, 0] + 0.5 * gw
    gy = gt[:, 1] + 0.5 * gh
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
    return deltas / deltas.new_tensor(stds)


def decode(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], img_size: tuple[int, int] | None = None) -> Tensor:
    """Apply ``deltas (N, 4k)`` (times ``stds``) to ``boxes (N, 4)``: ``(N, 4k)`` x1y1x2y2.

    ``k`` > 1 decodes class-specific deltas of one box at once. ``img_size = (h, w)`` clips
    the result to ``[0, w] x [0, h]``.
    """
    n = boxes.shape[0]
    d = deltas.reshape(n, -1, 4) * deltas.new_tensor(stds)
    pw = (boxes[:, 2] - boxes[:, 0])[:, None]
    ph = (boxes[:, 3] - boxes[:, 1])[:, None]
    px = boxes[:, 0][:, None] + 0.5 * pw
    py = boxes[:, 1][:, None] + 0.5 * ph
    dw = d[..., 2].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    dh = d[..., 3].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    cx = px + d[..., 0] * pw
    cy = py + d[..., 1] * ph
    w = pw * dw.exp()
    h = ph * dh.exp()
    out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    if img_size is not None:
        h_img, w_img = img_size
        out[..., 0::2] = out[..., 0::2].clamp(0, w_img)
        out[..., 1::2] = out[..., 1::2].clamp(0, h_img)
    return out.reshape(n, -1)


def assign(
    boxes: Tensor, gt: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float, low_quality: bool
) -> tuple[Tensor, Tensor]:
    """Match ``boxes (N, 4)`` to ``gt (M, 4)``.

    Returns ``(matched (N,) int64, max_iou (N,))``: ``matched`` is ``-1`` ignore,
    ``0`` negative, ``j + 1`` positive for GT ``j``.
    """
    n = boxes.shape[0]
    matched = torch.full((n,), -1, dtype=torch.int64, device=boxes.device)
    if gt.numel() == 0:
        matched.zero_()
        return matched, boxes.new_zeros(n)
    iou = box_iou(gt, boxes)  # (M, N)
    max_iou, argmax = iou.max(dim=0)
    # torch.where, not boolean-mask writes: no host-device sync on an accelerator
    matched = torch.where((max_iou >= 0) & (max_iou < neg_iou), 0, matched)
    matched = torch.where(max_iou >= pos_iou, argmax + 1, matched)
    if low_quality:
        # GT j takes every box tying its best IoU when that is >= min_pos_iou; a box that is
        # the best of several GTs goes to the last of them (mmdet's loop over GTs), all GTs
        # at once rather than one host sync per GT
        gt_max = iou.max(dim=1, keepdim=True).values  # (M, 1)
        best = (iou == gt_max) & (gt_max >= min_pos_iou)  # (M, N)
        order = torch.arange(1, gt.shape[0] + 1, dtype=torch.int32, device=matched.device)[:, None]
        last = torch.where(best, order, 0).amax(dim=0).long()  # (N,) 1-based GT, 0 = none
        matched = torch.where(last > 0, last, matched)
    return matched, max_iou


def sample(
    matched: Tensor, num: int, pos_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Random positive/negative subsets of an assignment: ``(pos_idx, neg_idx)`` int64."""
    pos_all = torch.nonzero(matched > 0).flatten()
    neg_all = torch.nonzero(matched == 0).flatten()
    num_pos = min(int(num * pos_fraction), pos_all.numel())
    pos = pos_all[torch.randperm(pos_all.numel(), generator=generator)[:num_pos].to(pos_all.device)]
    num_neg = min(num - num_pos, neg_all.numel())
    neg = neg_all[torch.randperm(neg_all.numel(), generator=generator)[:num_neg].to(neg_all.device)]
    return pos, neg
