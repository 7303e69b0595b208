"""Classification heads ("box predictors"): softmax, BAGS, Seesaw, EQLv2 and federated loss.

A head owns its two linear layers, its loss and its inference scores; the RoI head calls
only ``forward``, ``losses`` and ``scores`` (docs/DESIGN.md, "Models"). The maths lives in
``lvod.models.losses`` as pure functions; this module holds the stateful wrappers and the
one explicit name -> class mapping used by ``build_head``.

Conventions shared with the RoI head (lvod/models/roi_head.py):

- Labels: ``0 = background``, ``1..C`` objects.
- ``fc_reg`` is class-specific with ``4*C`` outputs (no background slot); label ``l`` owns
  columns ``4*(l-1):4*l``, the same order as mmdet's ``fc_reg`` (class ``l-1`` there), so
  checkpoints import without permuting the regression rows.
- Box target stds (0.2, 0.2, 0.2, 0.2) belong to the **box coder**, not to the head: the
  RoI head encodes targets as ``delta / std`` before calling ``losses`` and multiplies the
  predicted deltas by ``std`` before decoding. The head never sees boxes or stds.
- Losses are mmdet-normalised: summed over RoIs, divided by the number of sampled RoIs in
  the batch (``max(R, 1)``).
- Layer names ``fc_cls`` / ``fc_reg`` mirror mmdet's ``ConvFCBBoxHead`` so the mmtracking
  checkpoint mapping is one-to-one; ``freeze_all_but_classifier`` keeps ``fc_cls``.
- ``losses`` returns the optimised terms under ``loss_*`` names and a head's diagnostics
  (per-group BAGS losses, kept RoIs, Seesaw's two parts) as detached scalars under other
  names; the training loop optimises only ``loss_*`` and logs the rest.
- A head's settings and their defaults are its typed config section (``lvod.config``:
  ``BagsConfig``, ``SeesawConfig``, ``EqlV2Config``, ``FedLossConfig``); a head that needs
  the frequency-group table says so with ``uses_groups = True`` and gets it as
  ``groups=`` from ``build_head`` (BAGS: its logit layout; fedloss: its class counts).
- ``scores`` always returns ``(R, C+1)`` with column 0 = background and column ``l`` =
  label ``l``. The sigmoid heads (EQLv2, fedloss) score classes independently, so their
  rows do not sum to 1; what their column 0 holds is in each head's docstring. The RoI
  head reads columns ``1:`` only (score threshold, per-class NMS).

Adding a head = one ``BoxPredictor`` subclass + one entry in ``HEADS`` (+ its settings
section in ``lvod.config.HEAD_SETTINGS``).
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from lvod.config import BagsConfig, EqlV2Config, FedLossConfig, SeesawConfig
from lvod.errors import DataError
from lvod.models import losses as L

log = logging.getLogger(__name__)


class BoxPredictor(nn.Module):
    """Base class: a classification layer with ``num_logits`` outputs and class-specific
    box regression with ``4*num_classes`` outputs.

    Subclasses define ``num_logits`` through the constructor and implement
    ``cls_loss(cls_logits, labels) -> dict`` and ``scores(cls_logits) -> (R, C+1)``.
    """

    uses_groups = False  # True: build_head passes the frequency-group table as groups=

    def __init__(self, in_channels: int, num_classes: int, num_logits: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.num_logits = int(num_logits)
        self.fc_cls = nn.Linear(in_channels, num_logits)
        self.fc_reg = nn.Linear(in_channels, 4 * num_classes)
        # mmdet's ConvFCBBoxHead initialisation (fc_cls first: the random draws keep their order).
        self.reset_classifier()
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_reg.bias)

    def reset_classifier(self) -> None:
        """(Re-)initialise ``fc_cls`` as a new head starts it: weights N(0, 0.01), bias 0
        (heads with another bias start override this, e.g. the federated loss's prior)."""
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (R, D)`` -> ``(cls_logits (R, num_logits), box_deltas (R, 4*C))``."""
        if x.dim() > 2:
            x = x.flatten(1)
        return self.fc_cls(x), self.fc_reg(x)

    def losses(
        self, cls_logits: Tensor, box_deltas: Tensor, labels: Tensor, box_targets: Tensor, box_weights: Tensor
    ) -> dict[str, Tensor]:
        """Training losses of one batch of sampled RoIs (all images concatenated).

        Args:
            cls_logits: ``(R, num_logits)``; box_deltas: ``(R, 4*C)``.
            labels: ``(R,)`` int64 in ``0..C`` (0 = background).
            box_targets: ``(R, 4)`` targets already divided by the box coder's stds.
            box_weights: ``(R,)`` box-loss weight per RoI (0 for background).

        Returns:
            dict: ``loss_cls`` scalar, ``loss_bbox`` scalar, plus the head's detached
            diagnostics under names that do not start with ``loss_`` (see the subclass).
        """
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes} (0 = background); got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        out = self.cls_loss(cls_logits, labels)
        out["loss_bbox"] = L.box_regression_loss(box_deltas, labels, box_targets, box_weights)
        return out

    def cls_loss(self, cls_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def scores(self, cls_logits: Tensor) -> Tensor:
        raise NotImplementedError


class SoftmaxHead(BoxPredictor):
    """Plain softmax classifier: ``C+1`` logits (column 0 background), cross-entropy."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes, num_classes + 1)

    def cls_loss(self, cls_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"loss_cls": scalar}``: cross-entropy averaged over the sampled RoIs."""
        return {"loss_cls": L.softmax_ce_loss(cls_logits, labels)}

    def scores(self, cls_logits: Tensor) -> Tensor:
        """``(R, C+1)`` softmax probabilities, column 0 = background."""
        return torch.softmax(cls_logits, dim=-1)


class BagsHead(BoxPredictor):
    """Balanced Group Softmax (Li et al., CVPR 2020): ``(C+1) + (G+1)`` logits (G object
    groups) in the group slice layout of ``pred_slice``; loss = sum of per-group
    cross-entropies; scores = in-group probability x P(object)
    (``lvod.models.losses.bags_merge_scores``).

    Build it from a ``lvod.groups.GroupTable`` (``groups=``) or from the two tensors
    directly (``label2binlabel=``, ``pred_slice=``); whether the table fits the dataset is
    the builder's check (``lvod.models.build.check_group_table``). ``seed`` makes the
    "others" sampling reproducible with a private generator; ``None`` uses torch's global
    one.

    ``losses`` returns ``loss_cls`` (all groups summed), ``loss_bbox`` and, detached,
    ``bags_group{k}_loss`` and ``bags_group{k}_kept`` for k = 0..G (group 0: bg/object).
    """

    uses_groups = True

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        groups=None,
        label2binlabel: Tensor | None = None,
        pred_slice: Tensor | None = None,
        others_sample_ratio: float = BagsConfig.others_sample_ratio,
        seed: int | None = BagsConfig.seed,
    ):
        source = "group tensors"
        if groups is not None:
            if label2binlabel is not None or pred_slice is not None:
                raise ValueError("pass either groups= or label2binlabel=/pred_slice=, not both")
            source = str(getattr(groups, "dataset", None) or "group table")
            label2binlabel, pred_slice = groups.label2binlabel, groups.pred_slice
        if label2binlabel is None or pred_slice is None:
            raise ValueError("the bags head needs groups= (a GroupTable) or both label2binlabel= and pred_slice=")
        label2binlabel = torch.as_tensor(label2binlabel).long()
        pred_slice = torch.as_tensor(pred_slice).long()
        try:
            L.validate_bags_tables(label2binlabel, pred_slice, num_classes)
        except ValueError as err:
            raise DataError(
                source,
                "label2binlabel/pred_slice",
                str(err),
                "rebuild the group table from this dataset's class list and counts (lvod.groups.build_groups)",
            ) from None
        if others_sample_ratio <= 0:
            raise ValueError(f"others_sample_ratio must be > 0, got {others_sample_ratio}")
        super().__init__(in_channels, num_classes, L.bags_num_logits(pred_slice))
        self.register_buffer("label2binlabel", label2binlabel, persistent=False)
        self.register_buffer("pred_slice", pred_slice, persistent=False)
        self.num_groups = pred_slice.shape[0] - 1
        self.others_sample_ratio = float(others_sample_ratio)
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        if self.num_groups == 1:
            warnings.warn(
                "BAGS with a single object group: only the bg/object split differs "
                "from a softmax head; check that the group edges fit this dataset",
                stacklevel=2,
            )

    def cls_loss(self, cls_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``loss_cls``: sum over groups of each group's mean CE over its kept RoIs; plus
        ``bags_group{k}_loss`` / ``bags_group{k}_kept`` (detached)."""
        total, per_group, kept = L.bags_loss(
            cls_logits,
            labels,
            self.label2binlabel,
            self.pred_slice,
            others_sample_ratio=self.others_sample_ratio,
            generator=self._generator,
        )
        out = {"loss_cls": total}
        per_group = per_group.detach()
        for k in range(per_group.shape[0]):
            out[f"bags_group{k}_loss"] = per_group[k]
            out[f"bags_group{k}_kept"] = kept[k].to(per_group)
        return out

    def scores(self, cls_logits: Tensor) -> Tensor:
        """``(R, C+1)`` merged group scores, column 0 = background (the inference path)."""
        return L.bags_merge_scores(cls_logits, self.pred_slice, self.label2binlabel)


class SeesawHead(BoxPredictor):
    """Seesaw Loss (Wang et al., CVPR 2021), mmdetection's ``use_sigmoid=False`` form.

    ``C+2`` logits: columns ``0..C-1`` classes 1..C, ``C`` object, ``C+1`` background (the
    mmdet order, so mmdet seesaw checkpoints load unpermuted). The class logits get the
    seesaw cross-entropy on positive RoIs only (mitigation exponent ``p``, compensation
    exponent ``q``); the 2-way objectness branch gets plain CE on every RoI; both are summed
    over RoIs and divided by the number of sampled RoIs, then added into ``loss_cls``
    (the two parts also come back detached as ``seesaw_classes_loss`` /
    ``seesaw_objectness_loss``).

    ``cum_samples (C+1,)`` (index = label, 0 = background) accumulates the labels seen in
    training mode; it is a persistent buffer, so a resumed run keeps its counts.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        p: float = SeesawConfig.p,
        q: float = SeesawConfig.q,
        eps: float = SeesawConfig.eps,
    ):
        super().__init__(in_channels, num_classes, num_classes + 2)
        if p < 0 or q < 0:
            raise ValueError(f"seesaw p and q must be >= 0, got p={p}, q={q}")
        self.p, self.q, self.eps = float(p), float(q), float(eps)
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.long))

    def cls_loss(self, cls_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``loss_cls`` = seesaw class term + objectness term; the two parts detached as
        ``seesaw_classes_loss`` / ``seesaw_objectness_loss``."""
        C, R = self.num_classes, labels.numel()
        if self.training:
            self.cum_samples += torch.bincount(labels, minlength=C + 1).to(self.cum_samples)
        pos = labels > 0
        if bool(pos.any()):
            per_pos = L.seesaw_class_loss(
                cls_logits[pos, :C], labels[pos] - 1, self.cum_samples[1:], p=self.p, q=self.q, eps=self.eps
            )
            loss_classes = L.mean_over_rois(per_pos, R)
        else:
            loss_classes = cls_logits.sum() * 0.0
        obj_target = (labels == 0).long()  # 0 = object column, 1 = background column
        loss_obj = (
            L.mean_over_rois(F.cross_entropy(cls_logits[:, C:], obj_target, reduction="none"), R)
            if R
            else cls_logits.sum() * 0.0
        )
        return {
            "loss_cls": loss_classes + loss_obj,
            "seesaw_classes_loss": loss_classes.detach(),
            "seesaw_objectness_loss": loss_obj.detach(),
        }

    def scores(self, cls_logits: Tensor) -> Tensor:
        """``(R, C+1)``: ``[P(bg), softmax(classes) * P(object)]``."""
        return L.seesaw_scores(cls_logits, self.num_classes)


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
    (``lvod.models.losses.eqlv2_weights``: negatives ``f(g)``, positives
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
    (``lvod.models.losses.fed_loss_classes``; torch's global RNG, so seeds and resumes
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


HEADS: dict[str, type[BoxPredictor]] = {
    "softmax": SoftmaxHead,
    "bags": BagsHead,
    "seesaw": SeesawHead,
    "eqlv2": EqlV2Head,
    "fedloss": FedLossHead,
}


def build_head(name: str, in_channels: int, num_classes: int, *, groups=None, **settings) -> BoxPredictor:
    """Build the head called ``name`` (one of ``HEADS``) with its settings.

    ``settings`` are the head's keyword arguments (``ModelConfig.head_settings()``: bags
    ``others_sample_ratio``, ``seed``; seesaw ``p``, ``q``, ``eps``; eqlv2 ``gamma``,
    ``mu``, ``alpha``, ``test_with_obj``; fedloss ``num_classes_sampled``,
    ``weight_power``, ``prior_prob``). ``groups`` (a
    ``GroupTable``) goes to the heads with ``uses_groups``; the others do not use it.
    Unknown names raise ``ValueError`` listing the valid ones.
    """
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(sorted(HEADS))}") from None
    if cls.uses_groups and groups is not None:
        settings["groups"] = groups
    return cls(in_channels, num_classes, **settings)
