"""Pure loss and score maths of the classification heads (no modules, no state).

Everything here takes tensors and returns tensors, so each piece is testable with
hand-checkable numbers:

- ``box_regression_loss``: class-specific smooth-L1 on positive RoIs (mmdet normalisation).
- ``mean_over_rois``: the mmdet "avg_factor" reduction shared by the class losses.
- BAGS: ``remap_labels``, ``sample_others``, ``bags_loss``, ``bags_merge_scores``.
- Seesaw: ``seesaw_weights``, ``seesaw_class_loss``, ``seesaw_scores``.

Label convention everywhere: ``0 = background``, ``1..C`` objects (docs/DESIGN.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_over_rois(per_roi: Tensor, num_rois: int) -> Tensor:
    """Sum of ``per_roi`` divided by ``max(num_rois, 1)``: mmdet's ``avg_factor`` reduction.

    mmdet divides both the classification and the box loss by the number of sampled RoIs in
    the whole batch (not by the number of positives), so a batch with few positives gives a
    small box loss rather than a noisy one.
    """
    return per_roi.sum() / max(int(num_rois), 1)


def box_regression_loss(box_deltas: Tensor, labels: Tensor, box_targets: Tensor,
                        box_weights: Tensor, *, beta: float = 1.0) -> Tensor:
    """Smooth-L1 between the predicted deltas of each positive RoI's own class and its target.

    Args:
        box_deltas: ``(R, 4*C)`` class-specific deltas; label ``l`` owns columns
            ``4*(l-1) : 4*l`` (no background slot).
        labels: ``(R,)`` int64, 0 = background, 1..C objects.
        box_targets: ``(R, 4)`` encoded targets (already divided by the target stds by the
            box coder; rows of background RoIs are ignored).
        box_weights: ``(R,)`` per-RoI weight (1 for positives in the usual case); a
            positive with weight 0 is left out.
        beta: smooth-L1 transition point (1.0 for the RoI head).

    Returns:
        scalar: sum over positives and the 4 coordinates, divided by ``max(R, 1)``. A batch
        without positives returns an exact 0 that is still attached to the graph.
    """
    num_rois = labels.numel()
    if box_deltas.shape[0] != num_rois or box_deltas.shape[-1] % 4:
        raise ValueError(f"box_deltas {tuple(box_deltas.shape)} does not match labels ({num_rois},)")
    pos = (labels > 0) & (box_weights > 0)
    if not bool(pos.any()):
        return box_deltas.sum() * 0.0
    per_class = box_deltas.view(num_rois, -1, 4)  # (R, C, 4)
    pos_idx = pos.nonzero(as_tuple=True)[0]
    pred = per_class[pos_idx, labels[pos_idx] - 1]  # (P, 4)
    per_coord = F.smooth_l1_loss(pred, box_targets[pos_idx].to(pred.dtype), beta=beta,
                                 reduction="none")  # (P, 4)
    per_roi = per_coord.sum(dim=1) * box_weights[pos_idx].to(pred.dtype)  # (P,)
    return mean_over_rois(per_roi, num_rois)


def softmax_ce_loss(cls_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over ``C+1`` logits (column 0 background), averaged over the RoIs."""
    if labels.numel() == 0:
        return cls_logits.sum() * 0.0
    return mean_over_rois(F.cross_entropy(cls_logits, labels, reduction="none"), labels.numel())
