"""Pure loss and score maths of the classification heads (no modules, no state).

Everything here takes tensors and returns tensors, so each piece is testable with
hand-checkable numbers:

- ``box_regression_loss``: class-specific smooth-L1 on positive RoIs (mmdet normalisation).
- ``mean_over_rois``: the mmdet "avg_factor" reduction shared by the class losses.
- BAGS: ``remap_labels``, ``sample_others``, ``bags_loss``, ``bags_merge_scores``.
- Seesaw: ``seesaw_weights``, ``seesaw_class_loss``, ``seesaw_scores``.

The sigmoid heads' maths (EQLv2, the federated loss) is in ``lvod.models.sigmoid_losses``.

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


def box_regression_loss(
    box_deltas: Tensor, labels: Tensor, box_targets: Tensor, box_weights: Tensor, *, beta: float = 1.0
) -> Tensor:
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
    per_coord = F.smooth_l1_loss(pred, box_targets[pos_idx].to(pred.dtype), beta=beta, reduction="none")  # (P, 4)
    per_roi = per_coord.sum(dim=1) * box_weights[pos_idx].to(pred.dtype)  # (P,)
    return mean_over_rois(per_roi, num_rois)


def softmax_ce_loss(cls_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over ``C+1`` logits (column 0 background), averaged over the RoIs."""
    if labels.numel() == 0:
        return cls_logits.sum() * 0.0
    return mean_over_rois(F.cross_entropy(cls_logits, labels, reduction="none"), labels.numel())


# ---------------------------------------------------------------------------------- BAGS
# Layout (docs/DESIGN.md, lvod.groups): ``label2binlabel (G+1, C+1)`` maps a contiguous
# label (column; 0 = background) to its slot inside each group (row; 0 = bg/fg group).
# ``pred_slice (G+1, 2)`` holds ``(start, length)`` of each group's logits.


def validate_bags_tables(label2binlabel: Tensor, pred_slice: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` naming the broken invariant unless the two BAGS tables agree with
    each other and with a detector of ``num_classes`` objects and background = label 0.

    Checked: shapes; row 0 is ``[0, 1, ..., 1]`` (background -> 0, every object -> 1);
    background maps to 0 ("others") in every group; every object class is a member (value
    > 0) of exactly one object group; inside group k the members carry the ranks
    ``1..n_k`` in ascending label order (rank 0 is reserved for "others"); group 0 has 2
    logits, group k ``n_k + 1``; the slices are contiguous from 0.
    """
    if label2binlabel.dim() != 2 or pred_slice.dim() != 2 or pred_slice.shape[1] != 2:
        raise ValueError(
            f"label2binlabel must be (G+1, C+1) and pred_slice (G+1, 2); got "
            f"{tuple(label2binlabel.shape)} and {tuple(pred_slice.shape)}"
        )
    n_rows, n_cols = label2binlabel.shape
    if n_cols != num_classes + 1:
        raise ValueError(
            f"label2binlabel has {n_cols} columns but the detector has "
            f"{num_classes} classes + background = {num_classes + 1}; the group "
            "table was built for another class list"
        )
    if n_rows < 2 or pred_slice.shape[0] != n_rows:
        raise ValueError(
            f"need the bg/fg group plus >= 1 object group with one pred_slice row "
            f"each; got label2binlabel rows {n_rows}, pred_slice rows "
            f"{pred_slice.shape[0]}"
        )
    l2b = label2binlabel.long().cpu()
    expected_row0 = torch.ones(n_cols, dtype=torch.long)
    expected_row0[0] = 0
    if not torch.equal(l2b[0], expected_row0):
        raise ValueError(
            "label2binlabel row 0 must be [0, 1, ..., 1] (column 0 = background); "
            "a table built with background as the last label does not fit lvod"
        )
    if bool((l2b[:, 0] != 0).any()):
        raise ValueError(f"background (column 0) must map to slot 0 in every group, got {l2b[:, 0].tolist()}")
    member = l2b[1:, 1:] > 0  # (G, C)
    per_class = member.sum(0)
    if bool((per_class != 1).any()):
        bad = (per_class != 1).nonzero(as_tuple=True)[0][:5] + 1
        raise ValueError(
            f"every class must belong to exactly one object group; labels "
            f"{bad.tolist()} belong to {per_class[bad - 1].tolist()} groups"
        )
    lengths = [2]
    for k in range(1, n_rows):
        ranks = l2b[k, 1:][member[k - 1]]  # ascending label order
        n_k = ranks.numel()
        if n_k == 0:
            raise ValueError(f"object group {k} has no member class; drop empty groups")
        if not torch.equal(ranks, torch.arange(1, n_k + 1)):
            raise ValueError(
                f"group {k}: member ranks must be 1..{n_k} in label order (0 is "
                f"the 'others' slot); got {ranks[:8].tolist()}"
            )
        lengths.append(n_k + 1)
    ps = pred_slice.long().cpu()
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    if ps[:, 1].tolist() != lengths or not torch.equal(ps[:, 0], starts):
        raise ValueError(
            f"pred_slice {ps.tolist()} does not match the group sizes: expected "
            f"lengths {lengths} starting at {starts.tolist()}"
        )


def bags_num_logits(pred_slice: Tensor) -> int:
    """Total classifier outputs: ``(C + 1) + (G + 1)`` for G object groups (LVIS v0.5: 1231 + 5)."""
    return int(pred_slice[-1, 0] + pred_slice[-1, 1])


def remap_labels(labels: Tensor, label2binlabel: Tensor) -> Tensor:
    """``labels (R,)`` (0 = bg) -> ``(G+1, R)`` label of every RoI inside every group.

    Row 0: 0 for background, 1 for objects. Row k: the in-group rank of a member class,
    0 ("others") for background and for classes of other groups.
    """
    return label2binlabel.to(labels.device)[:, labels]


def sample_others(group_labels: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """Which RoIs an object group trains on: ``(R,)`` bool.

    Every member RoI (``group_labels > 0``) is kept, plus ``int(ratio * n_members)``
    "others" RoIs drawn without replacement (all of them when there are fewer). A group
    with no member keeps nothing. ``generator`` (a CPU ``torch.Generator``) makes the draw
    reproducible; ``None`` uses torch's global generator.
    """
    members = group_labels > 0
    n_members = int(members.sum())
    if n_members == 0:
        return torch.zeros_like(members)
    others = (~members).nonzero(as_tuple=True)[0]
    n_keep = int(n_members * ratio)
    if n_keep >= others.numel():
        return torch.ones_like(members)
    order = torch.randperm(others.numel(), generator=generator)[:n_keep].to(others.device)
    keep = members.clone()
    keep[others[order]] = True
    return keep


def bags_loss(
    cls_logits: Tensor,
    labels: Tensor,
    label2binlabel: Tensor,
    pred_slice: Tensor,
    *,
    others_sample_ratio: float = 8.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced group softmax loss.

    Args:
        cls_logits: ``(R, (C+1)+(G+1))``; labels: ``(R,)`` in ``0..C``.
        label2binlabel, pred_slice: the group tables (see ``validate_bags_tables``).

    Returns:
        ``(total, per_group, kept)``: ``per_group (G+1,)`` holds each group's cross-entropy,
        summed over the RoIs the group keeps and divided by ``max(kept, 1)`` (the reference
        implementation's ``avg_factor``); group 0 keeps every RoI, object groups use
        ``sample_others``, and a group with no member RoI contributes exactly 0.
        ``total = per_group.sum()`` (groups are not averaged, as in the reference).
        ``kept (G+1,)`` int64: the RoIs each group kept (its positives + sampled others).
    """
    group_labels = remap_labels(labels, label2binlabel)  # (G+1, R)
    per_group, kept = [], []
    slices = pred_slice.tolist()  # one host read (pred_slice is a buffer on the model's device)
    for k in range(group_labels.shape[0]):
        start, length = slices[k]
        logits_k = cls_logits[:, start : start + length]  # (R, n_k+1)
        if k == 0:
            keep = torch.ones_like(group_labels[0], dtype=torch.bool)
        else:
            keep = sample_others(group_labels[k], others_sample_ratio, generator)
        ce = F.cross_entropy(logits_k[keep], group_labels[k][keep], reduction="sum")
        n_keep = int(keep.sum())
        per_group.append(ce / n_keep if n_keep else logits_k.sum() * 0.0)
        kept.append(n_keep)
    per_group = torch.stack(per_group)
    return per_group.sum(), per_group, torch.tensor(kept, dtype=torch.int64)


def bags_group_probs(cls_logits: Tensor, pred_slice: Tensor) -> Tensor:
    """Softmax inside every group, laid out like the logits: ``(R, (C+1)+(G+1))``; each group's
    slice sums to 1."""
    parts = [torch.softmax(cls_logits[:, s : s + n], dim=-1) for s, n in pred_slice.tolist()]
    return torch.cat(parts, dim=-1)


def bags_class_slots(pred_slice: Tensor, label2binlabel: Tensor) -> Tensor:
    """``(C,)`` logit column of every class 1..C: its group's start + its in-group rank."""
    member = label2binlabel[1:, 1:] > 0  # (G, C)
    group = member.long().argmax(0) + 1  # (C,) object group of each class
    cls = torch.arange(label2binlabel.shape[1] - 1, device=label2binlabel.device)
    return pred_slice[group, 0] + label2binlabel[group, cls + 1]


def bags_merge_scores(cls_logits: Tensor, pred_slice: Tensor, label2binlabel: Tensor) -> Tensor:
    """Inference scores ``(R, C+1)``, column 0 = background.

    ``score[:, 0] = P(bg)`` from group 0; ``score[:, c] = P(c | its group) * P(object)``
    where the in-group softmax includes the "others" slot (which is then dropped).
    """
    probs = bags_group_probs(cls_logits, pred_slice)  # (R, L)
    slots = bags_class_slots(pred_slice.to(cls_logits.device), label2binlabel.to(cls_logits.device))
    p_obj = probs[:, 1:2]  # (R, 1)
    return torch.cat([probs[:, 0:1], probs[:, slots] * p_obj], dim=1)


# -------------------------------------------------------------------------------- Seesaw
# Seesaw Loss (Wang et al., CVPR 2021) as mmdetection implements it (``SeesawLoss`` with
# ``use_sigmoid=False``): C class logits trained on positives only, plus a separate 2-way
# objectness branch trained on every RoI. Logit layout (same as mmdet, so its checkpoints
# import without permutation): columns ``0..C-1`` = classes 1..C, ``C`` = object,
# ``C+1`` = background.


def seesaw_weights(
    class_logits: Tensor, targets: Tensor, class_counts: Tensor, *, p: float, q: float, eps: float = 1e-2
) -> Tensor:
    """Seesaw factors ``S (P, C)`` that scale the negative-class exponentials.

    For a sample of class i and another class j:
    - mitigation ``M_ij = (N_j / N_i) ** p`` when ``N_j < N_i``, else 1 (``N`` = accumulated
      counts, clamped to >= 1);
    - compensation ``C_ij = (σ_j / σ_i) ** q`` when ``σ_j > σ_i``, else 1 (``σ`` = softmax of
      the detached logits; ``σ_i`` clamped to >= eps).
    ``S = M * C``; p = 0 and q = 0 give all ones. ``targets`` are 0-based class indices.
    """
    weights = class_logits.new_ones(class_logits.shape)
    if p > 0:
        counts = class_counts.to(class_logits).clamp(min=1)
        ratio = counts[None, :] / counts[:, None]  # (C, C): N_j / N_i
        mitigation = torch.where(ratio < 1.0, ratio.pow(p), torch.ones_like(ratio))
        weights = weights * mitigation[targets]
    if q > 0:
        probs = torch.softmax(class_logits.detach(), dim=1)
        own = probs.gather(1, targets[:, None]).clamp(min=eps)  # (P, 1)
        ratio = probs / own
        weights = weights * torch.where(ratio > 1.0, ratio.pow(q), torch.ones_like(ratio))
    return weights


def seesaw_class_loss(
    class_logits: Tensor, targets: Tensor, class_counts: Tensor, *, p: float = 0.8, q: float = 2.0, eps: float = 1e-2
) -> Tensor:
    """Per-sample seesaw cross-entropy ``(P,)`` over the C class logits.

    ``-log( e^{z_i} / (e^{z_i} + Σ_{j≠i} S_ij e^{z_j}) )``, computed as a cross-entropy on
    logits shifted by ``log S`` off the target column.
    """
    weights = seesaw_weights(class_logits, targets, class_counts, p=p, q=q, eps=eps)
    onehot = F.one_hot(targets, class_logits.shape[1]).to(class_logits)
    adjusted = class_logits + weights.log() * (1 - onehot)
    return F.cross_entropy(adjusted, targets, reduction="none")


def seesaw_scores(cls_logits: Tensor, num_classes: int) -> Tensor:
    """``(R, C+2)`` seesaw logits -> ``(R, C+1)`` scores, column 0 = background.

    ``score[:, 0] = P(bg)`` from the objectness branch, ``score[:, c] = softmax(classes)_c *
    P(object)``.
    """
    if cls_logits.shape[-1] != num_classes + 2:
        raise ValueError(f"seesaw logits must have C+2 = {num_classes + 2} columns, got {cls_logits.shape[-1]}")
    cls_prob = torch.softmax(cls_logits[:, :num_classes], dim=-1)
    obj_prob = torch.softmax(cls_logits[:, num_classes:], dim=-1)  # (R, 2): object, background
    return torch.cat([obj_prob[:, 1:2], cls_prob * obj_prob[:, 0:1]], dim=1)
