"""The box predictor seam: ``BoxPredictor``, the base class every classification head
subclasses (``lvod.models.heads`` has the softmax-family heads and the head table,
``lvod.models.sigmoid_heads`` the sigmoid ones).

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
"""

from __future__ import annotations

from torch import Tensor, nn

from lvod.models import losses as L


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
