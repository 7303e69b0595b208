"""Pure loss and score maths of the classification heads (no modules, no state).

Everything here takes tensors and returns tensors, so each piece is testable with
hand-checkable numbers:

- ``box_regression_loss``: class-specific smooth-L1 on positive RoIs (mmdet normalisation).
- ``mean_over_rois``: the mmdet "avg_factor" reduction shared by the class losses.
- BAGS: ``remap_labels``, ``sample_others``, ``bags_loss``, ``bags_merge_scores``.
- Seesaw: ``seesaw_weights``, ``seesaw_class_loss``, ``seesaw_scores``.
- Sigmoid heads (no softmax over classes): ``bce_logit_grad`` (the analytic gradient of a
  weighted binary cross-entropy), EQLv2 (``eqlv2_targets``, ``eqlv2_weights``,
  ``eqlv2_loss``, ``eqlv2_grad_stats``, ``eqlv2_scores``) and the federated loss
  (``fed_class_weights``, ``fed_loss_classes``, ``fed_loss``, ``sigmoid_scores``).

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


# ------------------------------------------------------------------------ sigmoid heads
# Sigmoid classifiers score every class independently, so a class's logit gets its own
# binary cross-entropy and no softmax couples the classes. Neither head below has a
# background *class*: EQLv2 keeps mmdetection's extra "objectness" logit (its last column,
# trained as one more binary target that is 1 for background RoIs); the federated loss,
# like detectron2, has C class logits only, and a background RoI is a negative for every
# class it is trained on.


def bce_logit_grad(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Gradient of ``sum(weights * BCE_with_logits(logits, targets))`` w.r.t. ``logits``.

    ``d/dz [-t log s(z) - (1-t) log(1-s(z))] = s(z) - t``, so the gradient is
    ``weights * (sigmoid(logits) - targets)``, element-wise (all three ``(R, K)``). Exact
    (autograd gives the same numbers, a test checks it) and free of the loss's
    normalisation and of AMP's loss scaling, which is why EQLv2 collects its statistics
    from it rather than from a backward hook.
    """
    return weights * (torch.sigmoid(logits) - targets)


# -------------------------------------------------------------------------------- EQLv2
# Equalization Loss v2 (Tan et al., CVPR 2021) as mmdetection's ``EQLV2Loss`` computes it.
# Logit layout (mmdetection's, so its EQLv2 ``fc_cls`` rows import unpermuted): columns
# ``0..C-1`` = classes 1..C, column ``C`` = background ("objectness"). Every RoI has C+1
# binary targets: its class column for an object, the background column for background.


def eqlv2_targets(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot ``(R, C+1)`` float targets in the EQLv2 layout: label ``l`` in 1..C -> column
    ``l-1``, background (0) -> column ``C``."""
    cols = torch.where(labels > 0, labels - 1, torch.full_like(labels, num_classes))
    return F.one_hot(cols, num_classes + 1).float()


def eqlv2_weights(
    pos_grad: Tensor, neg_grad: Tensor, *, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Per-class positive and negative weights ``(C,)`` from the accumulated gradients.

    ``g_j = pos_grad_j / neg_grad_j`` (the ratio of class j's accumulated positive to
    negative gradient magnitudes), ``f(x) = 1 / (1 + exp(-gamma (x - mu)))``; negatives of
    class j are weighted ``f(g_j)``, positives ``1 + alpha (1 - f(g_j))``. A class without
    any negative gradient yet (before the first update) gets 1 and 1, as mmdetection's
    initial ratio of 100 gives; after that a class never seen as a positive has ``g = 0``:
    its negatives are all but switched off (``f(0) = 6.8e-5`` at the defaults) and its
    positives weighted ``1 + alpha``.
    """
    ratio = pos_grad / (neg_grad + 1e-10)
    neg_w = torch.where(neg_grad > 0, torch.sigmoid(gamma * (ratio - mu)), torch.ones_like(ratio))
    pos_w = 1 + alpha * (1 - neg_w)
    return pos_w, neg_w


def eqlv2_loss(cls_logits: Tensor, targets: Tensor, pos_w: Tensor, neg_w: Tensor) -> tuple[Tensor, Tensor]:
    """EQLv2's weighted sigmoid cross-entropy.

    Args:
        cls_logits: ``(R, C+1)``; targets: ``(R, C+1)`` from ``eqlv2_targets``.
        pos_w, neg_w: ``(C,)`` from ``eqlv2_weights``; the background column keeps weight 1.

    Returns:
        ``(loss, weights)``: the weighted binary cross-entropy summed over RoIs and
        columns and divided by ``max(R, 1)`` (mmdetection divides by the number of RoIs),
        and the element weights ``(R, C+1)`` it used.
    """
    one = pos_w.new_ones(1)
    pos_w, neg_w = torch.cat([pos_w, one]).to(cls_logits), torch.cat([neg_w, one]).to(cls_logits)
    weights = targets * pos_w + (1 - targets) * neg_w  # (R, C+1)
    per_elem = F.binary_cross_entropy_with_logits(cls_logits, targets, reduction="none")
    return mean_over_rois(per_elem * weights, targets.shape[0]), weights


def eqlv2_grad_stats(logit_grad: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column sums ``(K,)`` of the gradient magnitudes on positives and on negatives.

    ``logit_grad (R, K)`` is the gradient of the (unnormalised) weighted loss w.r.t. the
    logits (``bce_logit_grad``); ``targets (R, K)`` are 0/1. EQLv2 passes the C class
    columns only (the objectness column has no statistics).
    """
    mag = logit_grad.abs()
    return (mag * targets).sum(0), (mag * (1 - targets)).sum(0)


def eqlv2_scores(cls_logits: Tensor, num_classes: int, *, with_obj: bool = True) -> Tensor:
    """``(R, C+1)`` EQLv2 logits -> ``(R, C+1)`` scores, column 0 = background.

    ``score[:, 0] = sigmoid(background logit)``; ``score[:, c] = sigmoid(class c logit)``,
    times ``1 - score[:, 0]`` when ``with_obj`` (mmdetection's ``EQLV2Loss.get_activation``
    with its default ``test_with_obj=True``, also the EQLv2 authors' test setting). The
    class scores are independent sigmoids: a row does not sum to 1.
    """
    if cls_logits.shape[-1] != num_classes + 1:
        raise ValueError(f"eqlv2 logits must have C+1 = {num_classes + 1} columns, got {cls_logits.shape[-1]}")
    probs = torch.sigmoid(cls_logits)
    bg = probs[:, num_classes:]  # (R, 1)
    cls = probs[:, :num_classes] * (1 - bg) if with_obj else probs[:, :num_classes]
    return torch.cat([bg, cls], dim=1)


# ---------------------------------------------------------------------- federated loss
# Federated loss (Zhou et al., "Probabilistic two-stage detection", 2021; detectron2's
# ``USE_FED_LOSS`` with ``USE_SIGMOID_CE``): sigmoid cross-entropy over C class logits
# (columns 0..C-1 = classes 1..C, no background logit), computed only on the classes of the
# batch plus negatives sampled by frequency.


def fed_class_weights(counts, power: float = 0.5) -> Tensor:
    """Negative-sampling weights ``(C,)`` float: ``counts ** power`` (the paper: image count
    per class, power 0.5). A class with count 0 is never sampled as a negative."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or bool((counts < 0).any()):
        raise ValueError(f"class counts must be a 1-d list of non-negative numbers, got {counts.tolist()}")
    return torch.where(counts > 0, counts.pow(power), torch.zeros_like(counts)).float()


def fed_loss_classes(
    labels: Tensor, class_weights: Tensor, num_sampled: int, generator: torch.Generator | None = None
) -> Tensor:
    """The classes (0-based logit columns, int64 ``(K,)``, CPU) the federated loss trains on.

    Every class among the object ``labels`` (1..C; background 0 is not a class here) comes
    first, ascending; when they are fewer than ``num_sampled``, negatives are drawn without
    replacement from the other classes with probability proportional to ``class_weights``
    until ``num_sampled`` classes (or every class of non-zero weight) are in. More batch
    classes than ``num_sampled`` are all kept, nothing is sampled (detectron2's rule; unlike
    detectron2, which counts background among the batch's classes, ``num_sampled`` counts
    object classes only). The draw uses ``torch.multinomial`` on the CPU with
    ``generator`` (``None``: torch's global CPU generator, saved in lvod checkpoints), so
    a seed, and a resume, give the same classes.
    """
    present = torch.unique(labels[labels > 0].cpu()) - 1  # (P,) ascending
    n_neg = int(num_sampled) - present.numel()
    if n_neg <= 0:
        return present
    prob = class_weights.detach().cpu().double().clone()
    prob[present] = 0
    n_neg = min(n_neg, int((prob > 0).sum()))
    if n_neg == 0:
        return present
    negatives = torch.multinomial(prob, n_neg, replacement=False, generator=generator)
    return torch.cat([present, negatives])


def fed_loss(cls_logits: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """Sigmoid cross-entropy over the columns ``classes`` only.

    Args:
        cls_logits: ``(R, C)`` class logits; labels: ``(R,)`` in 0..C (a background RoI is
            a negative for every class); classes: int64 ``(K,)`` 0-based columns.

    Returns:
        scalar: the binary cross-entropies of the kept columns summed over RoIs, divided by
        ``max(R, 1)`` (detectron2's normalisation).
    """
    num_rois, num_classes = cls_logits.shape
    targets = F.one_hot(labels, num_classes + 1)[:, 1:].to(cls_logits)  # (R, C); background: all 0
    mask = cls_logits.new_zeros(num_classes)
    mask[classes.to(cls_logits.device)] = 1.0
    per_elem = F.binary_cross_entropy_with_logits(cls_logits, targets, reduction="none")
    return mean_over_rois(per_elem * mask, num_rois)


def sigmoid_scores(cls_logits: Tensor) -> Tensor:
    """``(R, C)`` class logits without a background logit -> ``(R, C+1)`` scores.

    ``score[:, 1:] = sigmoid(logits)`` (detectron2's sigmoid inference, which drops the
    background column); ``score[:, 0] = 1 - max_c score[:, c]``, so column 0 is the largest
    score only when no class reaches 0.5, the sigmoid decision threshold. The RoI head
    reads columns ``1:`` only.
    """
    probs = torch.sigmoid(cls_logits)
    bg = 1 - probs.max(dim=1, keepdim=True).values if probs.shape[1] else probs.new_ones(probs.shape[0], 1)
    return torch.cat([bg, probs], dim=1)
