"""The sigmoid classification heads: EQLv2 and the federated loss.

They score every class independently (no softmax over classes); their maths is in
``lvod.models.sigmoid_losses``. ``scores`` keeps the RoI head's ``(R, C+1)`` contract
(``lvod.models.predictor``); what column 0 holds is in each head's docstring. Both are
entries of ``lvod.models.heads.HEADS``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lvod.config import EqlV2Config, FedLossConfig
from lvod.errors import DataError
from lvod.models import sigmoid_losses as L
from lvod.models.predictor import BoxPredictor

log = logging.getLogger(__name__)


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over the ranks in place when ``torch.distributed`` is initialised (every
    rank must call it, the same number of times); unchanged otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EqlV2Head(BoxPredictor):
    """Equalization Loss v2 (Tan et al., CVPR 2021), mmdetection's ``EQLV2Loss``.

    ``C+1`` logits in mmdetection's layout: columns ``0..C-1`` classes 1..C, column ``C``
    the background ("objectness") logit, so mmdet EQLv2 ``fc_cls`` rows load unpermuted.
    Loss: binary cross-entropy on every column (a background RoI's target is its
    background column), each class column weighted by the class's gradient-guided weights
    (``lvod.models.sigmoid_losses.eqlv2_weights``: negatives ``f(g)``, positives
    ``1 + alpha (1 - f(g))``), the background column by 1; summed and divided by the
    number of sampled RoIs.

    Gradient statistics: ``pos_grad`` / ``neg_grad`` ``(C,)`` float64 accumulate, per
    class, the magnitudes of the loss's gradient w.r.t. the class logits on positives /
    negatives. The gradient is the analytic one of the summed weighted loss
    (``bce_logit_grad``: ``w * (sigmoid(z) - t)``, what mmdetection collects), computed in
    ``losses`` from the detached logits with the weights of this step, so AMP scaling and
    the 1/R normalisation never enter it. They are updated in training mode only, after
    the weights of the step were taken (so a step's weights depend on the batches before
    it); under ``torch.distributed`` every rank's sums are all-reduced before they are
    added, so all ranks hold the same statistics. They are persistent buffers: a
    checkpoint carries them and a resumed run continues with the same weights.

    ``scores``: ``(R, C+1)`` = ``[P(bg), sigmoid(class) * (1 - P(bg))]`` with
    ``P(bg) = sigmoid(background logit)`` (mmdetection's inference, ``test_with_obj``;
    without it the class scores are the plain sigmoids).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        gamma: float = EqlV2Config.gamma,
        mu: float = EqlV2Config.mu,
        alpha: float = EqlV2Config.alpha,
        test_with_obj: bool = EqlV2Config.test_with_obj,
    ):
        super().__init__(in_channels, num_classes, num_classes + 1)
        if gamma <= 0 or alpha < 0:
            raise ValueError(f"eqlv2 needs gamma > 0 and alpha >= 0, got gamma={gamma}, alpha={alpha}")
        self.gamma, self.mu, self.alpha = float(gamma), float(mu), float(alpha)
        self.test_with_obj = bool(test_with_obj)
        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float64))

    def class_weights(self) -> tuple[Tensor, Tensor]:
        """The current ``(pos_w, neg_w)`` per class ``(C,)`` from the accumulated statistics."""
        return L.eqlv2_weights(self.pos_grad, self.neg_grad, gamma=self.gamma, mu=self.mu, alpha=self.alpha)

    def cls_loss(self, cls_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"loss_cls": scalar}``; in training mode also updates ``pos_grad`` / ``neg_grad``."""
        C = self.num_classes
        targets = L.eqlv2_targets(labels, C).to(cls_logits)  # (R, C+1)
        pos_w, neg_w = self.class_weights()
        loss, weights = L.eqlv2_loss(cls_logits, targets, pos_w, neg_w)
        if self.training:
            grad = L.bce_logit_grad(cls_logits.detach(), targets, weights)[:, :C]  # (R, C)
            pos, neg = L.eqlv2_grad_stats(grad, targets[:, :C])
            stats = all_reduce_sum(torch.stack([pos, neg]).to(self.pos_grad))  # (2, C), summed over ranks
            self.pos_grad += stats[0]
            self.neg_grad += stats[1]
        return {"loss_cls": loss}

    def scores(self, cls_logits: Tensor) -> Tensor:
        """``(R, C+1)``: ``[sigmoid(bg logit), sigmoid(classes) * (1 - sigmoid(bg logit))]``."""
        return L.eqlv2_scores(cls_logits, self.num_classes, with_obj=self.test_with_obj)


class FedLossHead(BoxPredictor):
    """Federated loss (Zhou et al., "Probabilistic two-stage detection", 2021), detectron2's
    ``USE_FED_LOSS`` + ``USE_SIGMOID_CE`` classifier.

    ``C`` logits (classes 1..C; no background logit, a background RoI is a negative for
    every class). Each batch trains the sigmoid cross-entropy only on the classes of its
    sampled RoIs plus negative classes drawn with probability proportional to
    ``count ** weight_power`` until ``num_classes_sampled`` classes are in
    (``lvod.models.sigmoid_losses.fed_loss_classes``; torch's global RNG, so seeds and resumes
    repeat the draw); summed and divided by the number of sampled RoIs. The class logits
    start at the bias of ``prior_prob``.

    The counts come from the frequency-group table (``groups=``, its ``counts``: training
    instances per class, or images per class for a table built with
    ``lvod groups --basis images``; the paper uses LVIS image counts), or directly as
    ``class_counts=``. ``losses`` also returns ``fedloss_classes`` (detached): how many
    classes the batch trained on.

    ``scores``: ``(R, C+1)`` = ``[1 - max_c sigmoid, sigmoid(classes)]`` (detectron2 scores
    with the sigmoids and has no background score; column 0 is the complement of the best
    class, the largest entry exactly when no class reaches 0.5).
    """

    uses_groups = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        groups=None,
        class_counts=None,
        num_classes_sampled: int = FedLossConfig.num_classes_sampled,
        weight_power: float = FedLossConfig.weight_power,
        prior_prob: float = FedLossConfig.prior_prob,
    ):
        if num_classes_sampled < 1 or weight_power < 0 or not 0 < prior_prob < 1:
            raise ValueError(
                "fedloss needs num_classes_sampled >= 1, weight_power >= 0 and 0 < prior_prob < 1; got "
                f"{num_classes_sampled}, {weight_power}, {prior_prob}"
            )
        self.prior_prob = float(prior_prob)
        source, basis = "class_counts", "given"
        if groups is not None:
            if class_counts is not None:
                raise ValueError("pass either groups= or class_counts=, not both")
            source = str(getattr(groups, "dataset", None) or "group table")
            class_counts = getattr(groups, "counts", None)
            basis = str(getattr(groups, "basis", "instances"))
        fix = "build the table with `lvod groups` from the training annotations (it records the counts)"
        if class_counts is None:
            if groups is None:
                raise ValueError("the fedloss head needs groups= (a GroupTable with counts) or class_counts=")
            raise DataError(source, "counts", "the group table has no per-class counts", fix)
        if len(class_counts) != num_classes:
            raise DataError(source, "counts", f"{len(class_counts)} class counts for {num_classes} classes", fix)
        super().__init__(in_channels, num_classes, num_classes)
        self.num_classes_sampled = int(num_classes_sampled)
        self.weight_power = float(weight_power)
        weights = L.fed_class_weights(class_counts, self.weight_power)
        self.register_buffer("sample_weights", weights, persistent=False)  # (C,) negative sampling weights
        self.counts_basis = basis  # "images" (the paper's), "instances" or "given"
        log.info(
            "fedloss head: negatives sampled by %s counts ** %g (%s), %d classes per batch",
            basis,
            self.weight_power,
            source,
            self.num_classes_sampled,
        )

    def reset_classifier(self) -> None:
        """``fc_cls`` weights N(0, 0.01), bias ``-log((1 - prior_prob) / prior_prob)``."""
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - self.prior_prob) / self.prior_prob))

    def cls_loss(self, cls_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``loss_cls`` and, detached, ``fedloss_classes`` (classes in this batch's loss)."""
        classes = L.fed_loss_classes(labels, self.sample_weights, self.num_classes_sampled)
        loss = L.fed_loss(cls_logits, labels, classes)
        return {"loss_cls": loss, "fedloss_classes": loss.new_tensor(float(classes.numel()))}

    def scores(self, cls_logits: Tensor) -> Tensor:
        """``(R, C+1)``: ``[1 - max sigmoid, sigmoid(classes)]``."""
        return L.sigmoid_scores(cls_logits)
