"""Pure loss and score maths of the sigmoid classification heads (no modules, no state).

Sigmoid heads score every class independently (no softmax over classes):
``bce_logit_grad`` (the analytic gradient of a weighted binary cross-entropy), EQLv2
(``eqlv2_targets``, ``eqlv2_weights``, ``eqlv2_loss``, ``eqlv2_grad_stats``,
``eqlv2_scores``) and the federated loss (``fed_class_weights``, ``fed_loss_classes``,
``fed_loss``, ``sigmoid_scores``). The softmax-family maths and the shared reductions are in
``lvod.models.losses``.

Label convention everywhere: ``0 = background``, ``1..C`` objects (docs/DESIGN.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lvod.models.losses import mean_over_rois

# Sigmoid classifiers score every class independently, so a class's logit gets its own
# binary cross-entropy and no softmax couples the classes. Neither sigmoid head has a
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
