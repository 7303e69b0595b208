"""Classification heads ("box predictors"): softmax, BAGS, Seesaw, EQLv2 and federated loss.

A head owns its two linear layers, its loss and its inference scores; the RoI head calls
only ``forward``, ``losses`` and ``scores`` (docs/DESIGN.md, "Models"). The maths lives in
``lvod.models.losses`` as pure functions; this module holds the softmax-family wrappers
(softmax, BAGS, Seesaw) and the one explicit name -> class mapping used by
``build_head``.

The conventions every head keeps (labels, ``fc_reg`` layout, loss normalisation, the
``(R, C+1)`` scores) are in ``lvod.models.predictor``, with the ``BoxPredictor`` base class.
The sigmoid heads (EQLv2, fedloss) are in ``lvod.models.sigmoid_heads``.

Adding a head = one ``BoxPredictor`` subclass + one entry in ``HEADS`` (+ its settings
section in ``lvod.config.HEAD_SETTINGS``).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor
from torch.nn import functional as F

from lvod.config import BagsConfig, SeesawConfig
from lvod.errors import DataError
from lvod.models import losses as L
from lvod.models.predictor import BoxPredictor
from lvod.models.sigmoid_heads import EqlV2Head, FedLossHead

__all__ = ["HEADS", "BagsHead", "BoxPredictor", "EqlV2Head", "FedLossHead", "SeesawHead", "SoftmaxHead", "build_head"]

log = logging.getLogger(__name__)


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
