"""IoU of COCO ``[x, y, w, h]`` boxes (continuous coordinates, no +1 pixel), in the two
shapes lvod needs:

- :func:`pairwise_iou_xywh`: every box of ``a`` against every box of ``b`` -> ``(len(a), len(b))``
  (matching ground truth to detections in :mod:`lvod.analysis`);
- :func:`paired_iou_xywh`: row ``i`` of ``a`` against row ``i`` of ``b`` -> ``(P,)`` (an object's box
  against its own box some frames away, :mod:`lvod.evaluation.motion`).

A pair whose union is empty (two zero-area boxes) has IoU 0.
"""

from __future__ import annotations

import numpy as np


def pairwise_iou_xywh(a, b) -> np.ndarray:
    """IoU matrix float64 ``(len(a), len(b))`` of ``[x, y, w, h]`` boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return paired_iou_xywh(a[:, None, :], b[None, :, :])


def paired_iou_xywh(a, b) -> np.ndarray:
    """IoU float64 of row-paired boxes: ``a``, ``b`` ``(..., 4)`` broadcast against each other."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
