"""Second stage: RoIAlign, two shared FCs, the box predictor, target sampling and inference.

``RoIHead`` owns the sampling (mmdet ``MaxIoUAssigner`` 0.5/0.5 with low-quality matching on
the proposals, then GT boxes added as proposals assigned to themselves, + ``RandomSampler``
256 at 25 % positives), the box coding (target stds 0.2) and the
per-class NMS at test. Everything that differs between classification heads lives in the
predictor (``lvod.models.heads``), of which only ``forward``, ``losses`` and ``scores`` are
called.

``BBoxHead`` (``roi_head.bbox_head``: ``shared_fcs.0/1`` + ``predictor`` + optional
``aggregator.0/1`` for SELSA) turns pooled RoI features into the predictor's input. With an
aggregator, after each shared FC the key RoIs attend to reference RoIs
(``x = x + aggregator[i](x, ref_i)``), then ReLU, as mmtracking's ``SelsaBBoxHead``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align

from lvod.models import box_coder as bc


class BBoxHead(nn.Module):
    """``(R, C*7*7)`` pooled features -> ``(R, fc_channels)`` -> predictor.

    ``aggregators`` (optional): one module per shared FC, called as ``agg(x (R, D),
    ref (M, D)) -> (R, D)``.
    """

    def __init__(
        self, in_features: int, fc_channels: int, predictor: nn.Module, aggregators: list[nn.Module] | None = None
    ):
        super().__init__()
        self.shared_fcs = nn.ModuleList([nn.Linear(in_features, fc_channels), nn.Linear(fc_channels, fc_channels)])
        for fc in self.shared_fcs:  # mmdet ConvFCBBoxHead: xavier uniform, zero bias
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.aggregator = nn.ModuleList(aggregators) if aggregators else None
        self.predictor = predictor

    def ref_embeddings(self, ref_feats: Tensor, fcs_done: int = 0) -> list[Tensor]:
        """Reference RoI features after each shared FC (before ReLU): list of ``(M, D)``.

        They do not depend on the key frame, so a video can compute them once.
        ``fcs_done=1``: ``ref_feats (M, D)`` is already ``shared_fcs[0]``'s output.
        """
        out, x = [], ref_feats if fcs_done else ref_feats.flatten(1)
        for i, fc in enumerate(self.shared_fcs):
            if i >= fcs_done:
                x = fc(x)
            out.append(x)
            x = torch.relu(x)
        return out

    def embed(self, x: Tensor, refs: list[Tensor] | None = None, fcs_done: int = 0) -> Tensor:
        """``x (R, C*7*7)`` -> ``(R, D)``; ``refs`` from ``ref_embeddings`` (SELSA only).

        ``fcs_done=1``: ``x (R, D)`` is already ``shared_fcs[0]``'s output, before its
        aggregation (SELSA inference keeps that while it waits for the reference frames).
        """
        if fcs_done == 0:
            x = x.flatten(1)
        for i, fc in enumerate(self.shared_fcs):
            if i >= fcs_done:
                x = fc(x)
            if self.aggregator is not None:
                if refs is None:
                    raise ValueError("this head aggregates reference RoIs: pass refs")
                x = x + self.aggregator[i](x, refs[i])
            x = torch.relu(x)
        return x


class RoIHead(nn.Module):
    """RoIAlign + ``BBoxHead`` + sampling / NMS (see the module docstring for the defaults)."""

    def __init__(
        self,
        bbox_head: BBoxHead,
        *,
        roi_size: int = 7,
        sampling_ratio: int = 2,
        stride: int = 16,
        pos_iou: float = 0.5,
        neg_iou: float = 0.5,
        min_pos_iou: float = 0.5,
        low_quality: bool = True,
        num_samples: int = 256,
        pos_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        target_stds=(0.2, 0.2, 0.2, 0.2),
        score_thr: float = 1e-4,
        nms_iou: float = 0.5,
        max_dets: int = 100,
    ):
        super().__init__()
        self.bbox_head = bbox_head
        self.roi_size, self.sampling_ratio, self.scale = roi_size, sampling_ratio, 1.0 / stride
        self.pos_iou, self.neg_iou, self.min_pos_iou = pos_iou, neg_iou, min_pos_iou
        self.low_quality = low_quality
        self.num_samples, self.pos_fraction, self.add_gt = num_samples, pos_fraction, add_gt_as_proposals
        self.stds = tuple(float(s) for s in target_stds)
        self.score_thr, self.nms_iou, self.max_dets = score_thr, nms_iou, max_dets
        # Test-time hooks, unset by default: ``score_fn(cls_logits (R, L) float) -> (R, C+1)``
        # replaces ``predictor.scores`` (post-hoc calibration, lvod.models.calibration);
        # ``tap(cls_logits, boxes (R, C, 4), img_size)`` sees every image's raw outputs
        # before the score threshold and NMS (lvod calibrate re-scores a grid from them).
        self.score_fn = None
        self.tap = None

    @property
    def predictor(self) -> nn.Module:
        return self.bbox_head.predictor

    def pool(self, feats: Tensor, boxes: list[Tensor]) -> Tensor:
        """``feats (B, C, h, w)``, per-image boxes -> ``(sum R_b, C, 7, 7)`` (RoIAlign aligned)."""
        rois = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b.float()], dim=1) for i, b in enumerate(boxes)]
        rois = torch.cat(rois) if rois else feats.new_zeros((0, 5), dtype=torch.float32)
        # box coordinates stay float32 (half precision would round them to 0.5 px at 1000 px)
        out = roi_align(feats.float(), rois.float(), self.roi_size, self.scale, self.sampling_ratio, aligned=True)
        return out.to(feats.dtype)

    @torch.no_grad()
    def sample(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One image: ``(rois (S, 4), labels (S,), box_targets (S, 4), box_weights (S,))``.

        Positives first. ``box_targets`` are encoded deltas divided by the target stds.
        """
        gt_boxes, proposals = gt_boxes.float(), proposals.float()
        # mmdet order: assign the proposals alone (MaxIoUAssigner with match_low_quality,
        # mmtracking's rcnn default: each GT's best proposals go to that GT, the last GT
        # winning a shared one), then prepend the GT boxes, each assigned to itself
        matched, _ = bc.assign(proposals, gt_boxes, self.pos_iou, self.neg_iou, self.min_pos_iou, self.low_quality)
        if self.add_gt and gt_boxes.numel():
            proposals = torch.cat([gt_boxes, proposals])
            own = torch.arange(1, gt_boxes.shape[0] + 1, dtype=matched.dtype, device=matched.device)
            matched = torch.cat([own, matched])
        pos, neg = bc.sample(matched, self.num_samples, self.pos_fraction)
        rois = torch.cat([proposals[pos], proposals[neg]])
        labels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        targets = rois.new_zeros(rois.shape)
        weights = rois.new_zeros(rois.shape[0])
        if pos.numel():
            gt_idx = matched[pos] - 1
            labels[: pos.numel()] = gt_labels[gt_idx].long()
            targets[: pos.numel()] = bc.encode(proposals[pos], gt_boxes[gt_idx], self.stds)
            weights[: pos.numel()] = 1.0
        return rois, labels, targets, weights

    def losses(
        self, feats: Tensor, proposals: list[Tensor], targets: list[dict], refs: list[list[Tensor]] | None = None
    ) -> dict[str, Tensor]:
        """Predictor losses on the sampled RoIs of the batch (``loss_cls``, ``loss_bbox``, ...).

        ``refs[b]``: SELSA reference embeddings of image ``b`` (``BBoxHead.ref_embeddings``).
        """
        samples = [self.sample(p, t["boxes"], t["labels"]) for p, t in zip(proposals, targets)]
        pooled = self.pool(feats, [s[0] for s in samples])
        sizes = [s[0].shape[0] for s in samples]
        if refs is None:
            x = self.bbox_head.embed(pooled)
        else:
            x = torch.cat([self.bbox_head.embed(p, r) for p, r in zip(pooled.split(sizes), refs)])
        cls_logits, box_deltas = self.predictor(x)
        return self.predictor.losses(
            cls_logits.float(),
            box_deltas.float(),
            torch.cat([s[1] for s in samples]),
            torch.cat([s[2] for s in samples]),
            torch.cat([s[3] for s in samples]),
        )

    @torch.no_grad()
    def detect(
        self,
        feats: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        refs: list[list[Tensor]] | None = None,
    ) -> list[dict]:
        """Per image ``{"boxes" (K, 4), "scores" (K,), "labels" (K,) in 1..C}``, input pixels,
        K <= max_dets, after the score threshold and per-class NMS."""
        pooled = self.pool(feats, proposals)
        out = []
        for i, (p, x) in enumerate(zip(proposals, pooled.split([len(q) for q in proposals]))):
            if p.shape[0] == 0:
                out.append(self._no_proposals(feats.device, image_sizes[i]))
                continue
            emb = self.bbox_head.embed(x, None if refs is None else refs[i])
            out.append(self.predict(emb, p, image_sizes[i]))
        return out

    @torch.no_grad()
    def predict(self, emb: Tensor, proposals: Tensor, img_size: tuple[int, int]) -> dict:
        """One image: ``emb (R, D)`` of ``proposals (R, 4)`` -> scored, decoded, NMS-ed boxes."""
        if proposals.shape[0] == 0:
            return self._no_proposals(emb.device, img_size)
        cls_logits, box_deltas = self.predictor(emb)
        cls_logits = cls_logits.float()
        boxes = bc.decode(proposals.float(), box_deltas.float(), self.stds, img_size)
        boxes = boxes.reshape(proposals.shape[0], -1, 4)  # (R, C, 4)
        if self.tap is not None:
            self.tap(cls_logits, boxes, img_size)
        scores = (self.score_fn or self.predictor.scores)(cls_logits)[:, 1:]  # (R, C)
        return multiclass_nms(boxes, scores, self.score_thr, self.nms_iou, self.max_dets)

    def _no_proposals(self, device, img_size) -> dict:
        """The empty result of an image without proposals (the tap sees it too)."""
        if self.tap is not None:
            logits = torch.zeros((0, self.predictor.num_logits), device=device)
            self.tap(logits, torch.zeros((0, self.predictor.num_classes, 4), device=device), img_size)
        return _empty(device)


def multiclass_nms(boxes: Tensor, scores: Tensor, score_thr: float, nms_iou: float, max_dets: int) -> dict:
    """``boxes (R, C, 4)``, ``scores (R, C)`` -> top ``max_dets`` after per-class NMS.

    Returns ``{"boxes" (K, 4), "scores" (K,), "labels" (K,) int64 in 1..C}``, best first.
    """
    r, c = scores.shape
    mask = scores > score_thr
    idx_r, idx_c = torch.nonzero(mask, as_tuple=True)
    b, s = boxes[idx_r, idx_c], scores[idx_r, idx_c]
    keep = batched_nms(b, s, idx_c, nms_iou)[:max_dets]
    return {"boxes": b[keep], "scores": s[keep], "labels": idx_c[keep] + 1}


def _empty(device) -> dict:
    return {
        "boxes": torch.zeros((0, 4), device=device),
        "scores": torch.zeros(0, device=device),
        "labels": torch.zeros(0, dtype=torch.int64, device=device),
    }
