"""Region proposal network on one stride-16 feature map (mmdet ``RPNHead`` layout).

Layers ``rpn_conv`` (3x3 + ReLU), ``rpn_cls`` (1x1, ``A`` sigmoid logits) and ``rpn_reg``
(1x1, ``4A`` deltas) carry mmtracking's names. ``RPNHead.forward`` returns raw maps;
``losses`` and ``proposals`` do the rest, all box maths in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from lvod.models import box_coder as bc


@dataclass(frozen=True)
class ProposalSettings:
    """Proposal generation: top ``pre_nms`` scores, NMS at ``nms_iou``, keep ``post_nms``."""

    pre_nms: int
    post_nms: int
    nms_iou: float = 0.7
    min_size: float = 0.0


class RPNHead(nn.Module):
    """Anchors of ``base_size * scales`` x ``ratios`` at ``stride``; mmdet losses and proposals.

    Args:
        in_channels, feat_channels: input / hidden width (512 / 512 in R50-DC5).
        anchor_base, anchor_scales, anchor_ratios, stride: anchor layout (16, [4,8,16,32],
            [0.5,1,2], 16: sides 64..512).
        pos_iou, neg_iou, min_pos_iou, num_samples, pos_fraction, allowed_border: training
            assignment (0.7, 0.3, 0.3, 256, 0.5, 0; ``allowed_border=-1`` uses all anchors).
        smooth_l1_beta: 1/9.
    """

    def __init__(
        self,
        in_channels: int = 512,
        feat_channels: int = 512,
        *,
        anchor_base: float = 16,
        anchor_scales=(4, 8, 16, 32),
        anchor_ratios=(0.5, 1.0, 2.0),
        stride: int = 16,
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        min_pos_iou: float = 0.3,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
        allowed_border: float = 0,
        smooth_l1_beta: float = 1.0 / 9,
    ):
        super().__init__()
        self.register_buffer(
            "base", bc.base_anchors(anchor_base, list(anchor_scales), list(anchor_ratios)), persistent=False
        )
        self.num_anchors = self.base.shape[0]
        self.stride = stride
        self.pos_iou, self.neg_iou, self.min_pos_iou = pos_iou, neg_iou, min_pos_iou
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        self.allowed_border, self.beta = allowed_border, smooth_l1_beta
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, 4 * self.num_anchors, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """``feats (B, C, h, w)`` -> ``(logits (B, h*w*A), deltas (B, h*w*A, 4))``, float32."""
        x = F.relu(self.rpn_conv(feats))
        b = feats.shape[0]
        logits = self.rpn_cls(x).permute(0, 2, 3, 1).reshape(b, -1).float()
        deltas = self.rpn_reg(x).permute(0, 2, 3, 1).reshape(b, -1, 4).float()
        return logits, deltas

    def anchors(self, feats: Tensor) -> Tensor:
        """``(h*w*A, 4)`` anchors of a feature map shaped like ``feats``."""
        return bc.grid_anchors(self.base.to(feats.device), feats.shape[-2], feats.shape[-1], self.stride)

    def losses(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor],
    ) -> dict[str, Tensor]:
        """``loss_rpn_cls`` (sigmoid CE) and ``loss_rpn_bbox`` (smooth-L1), both summed over the
        sampled anchors of the batch and divided by mmdet's ``num_total_samples``: per image
        ``max(positives, 1) + max(negatives, 1)`` (so an image without a positive counts one
        more than it sampled)."""
        cls_terms, box_terms, n_samples = [], [], 0.0
        for i, (h, w) in enumerate(image_sizes):
            valid = torch.nonzero(bc.inside_image(anchors, h, w, self.allowed_border)).flatten()
            va = anchors[valid]
            gt = gt_boxes[i].float()
            matched, _ = bc.assign(va, gt, self.pos_iou, self.neg_iou, self.min_pos_iou, True)
            pos, neg = bc.sample(matched, self.num_samples, self.pos_fraction)
            idx = torch.cat([pos, neg])
            target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).float()
            cls_terms.append(F.binary_cross_entropy_with_logits(logits[i, valid[idx]], target, reduction="sum"))
            if pos.numel():
                tgt = bc.encode(va[pos], gt[matched[pos] - 1], (1.0, 1.0, 1.0, 1.0))
                box_terms.append(F.smooth_l1_loss(deltas[i, valid[pos]], tgt, beta=self.beta, reduction="sum"))
            n_samples += max(pos.numel(), 1) + max(neg.numel(), 1)  # mmdet AnchorHead.get_targets
        loss_box = torch.stack(box_terms).sum() if box_terms else deltas.sum() * 0.0
        return {"loss_rpn_cls": torch.stack(cls_terms).sum() / n_samples, "loss_rpn_bbox": loss_box / n_samples}

    @torch.no_grad()
    def proposals(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: list[tuple[int, int]], cfg: ProposalSettings
    ) -> list[Tensor]:
        """Per image ``(P, 4)`` proposals (P <= cfg.post_nms), best first, detached."""
        out = []
        for i, size in enumerate(image_sizes):
            scores = logits[i].sigmoid()
            k = min(cfg.pre_nms, scores.numel())
            scores, order = scores.topk(k)
            boxes = bc.decode(anchors[order], deltas[i, order], (1.0, 1.0, 1.0, 1.0), size)
            w = boxes[:, 2] - boxes[:, 0]
            h = boxes[:, 3] - boxes[:, 1]
            keep = (w > cfg.min_size) & (h > cfg.min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), cfg.nms_iou)
            out.append(boxes[keep[: cfg.post_nms]])
        return out
