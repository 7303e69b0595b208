"""The shared Faster R-CNN parts and the single-frame detector.

``FasterRCNN`` holds the parts every detector shares (``backbone``, ``neck``, ``rpn_head``,
``roi_head``), passed in built; ``SingleFrameDetector`` wraps one. ``lvod.models.build``
composes them from a ``ModelConfig`` (and ``lvod.models.fgfa`` / ``lvod.models.selsa``
reuse ``FasterRCNN``, ``check_inputs`` and ``to_original`` from here).

Every detector has a ``detector`` submodule (``FasterRCNN``) so parameter names follow
mmtracking's checkpoints (``detector.backbone.layer1.0.conv1.weight``,
``detector.rpn_head.rpn_cls.weight``, ``detector.roi_head.bbox_head.shared_fcs.0.weight``,
...). The classification/regression layers are the predictor's:
``detector.roi_head.bbox_head.predictor.fc_cls`` (mmtracking:
``detector.roi_head.bbox_head.fc_cls``). FGFA adds ``motion.*`` and ``aggregator.*``;
SELSA adds ``detector.roi_head.bbox_head.aggregator.{0,1}.*``.

Interface (docs/DESIGN.md, "Detectors"): ``forward(images (B,T,3,H,W), image_sizes,
targets) -> losses`` and ``detect_video(frames, num_frames) -> iterator of per-frame
results`` in original image pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from lvod.models.backbone import ChannelMapperNeck, ResNetDC5
from lvod.models.roi_head import RoIHead
from lvod.models.rpn import ProposalSettings, RPNHead


class FasterRCNN(nn.Module):
    """The shared parts: ``backbone``, ``neck``, ``rpn_head``, ``roi_head``, and the RPN's
    proposal settings for training and for test (pre/post-NMS counts, NMS IoU, min size)."""

    def __init__(
        self,
        backbone: ResNetDC5,
        neck: ChannelMapperNeck,
        rpn_head: RPNHead,
        roi_head: RoIHead,
        *,
        train_proposals: ProposalSettings,
        test_proposals: ProposalSettings,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.train_proposals = train_proposals
        self.test_proposals = test_proposals

    def extract_feat(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> ``(N, neck_channels, H/16, W/16)``."""
        return self.neck(self.backbone(images))

    def extract_clip_feats(self, images: Tensor, image_sizes, targets) -> Tensor:
        """Training input of the video detectors: check it, run every frame of every clip
        through backbone + neck in one batch. ``(B, T, 3, H, W)`` -> ``(B, T, C, h, w)``."""
        check_inputs(images, image_sizes, targets, min_frames=2)
        b, t = images.shape[:2]
        feats = self.extract_feat(images.flatten(0, 1))
        return feats.view(b, t, *feats.shape[1:])

    def rpn_train(self, feats: Tensor, image_sizes, gt_boxes: list[Tensor]) -> tuple[dict[str, Tensor], list[Tensor]]:
        """RPN losses of the batch and its training proposals (detached)."""
        logits, deltas = self.rpn_head(feats)
        anchors = self.rpn_head.anchors(feats)
        losses = self.rpn_head.losses(logits, deltas, anchors, image_sizes, gt_boxes)
        props = self.rpn_head.proposals(logits.detach(), deltas.detach(), anchors, image_sizes, self.train_proposals)
        return losses, props

    def rpn_test(self, feats: Tensor, image_sizes) -> list[Tensor]:
        """Test-time proposals (``rpn_test_post_nms`` per image at most)."""
        logits, deltas = self.rpn_head(feats)
        return self.rpn_head.proposals(logits, deltas, self.rpn_head.anchors(feats), image_sizes, self.test_proposals)


def check_inputs(images: Tensor, image_sizes, targets, min_frames: int = 1) -> None:
    """Raise ``ValueError`` when training inputs disagree in batch size or frame count."""
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be (B, T, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] < min_frames:
        raise ValueError(f"this detector needs T >= {min_frames} frames, got {images.shape[1]}")
    if len(image_sizes) != images.shape[0] or len(targets) != images.shape[0]:
        raise ValueError(f"batch of {images.shape[0]} images but {len(image_sizes)} sizes and {len(targets)} targets")


def to_original(det: dict, meta: dict) -> dict:
    """Scale detections from resized-image pixels to ``meta["orig_size"]`` pixels (clipped)."""
    h, w = meta["img_size"]
    h0, w0 = meta["orig_size"]
    boxes = det["boxes"].float().clone()
    boxes[:, 0::2] = (boxes[:, 0::2] * (w0 / w)).clamp(0, w0)
    boxes[:, 1::2] = (boxes[:, 1::2] * (h0 / h)).clamp(0, h0)
    return {"boxes": boxes.cpu(), "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()}


class SingleFrameDetector(nn.Module):
    """Faster R-CNN R50-DC5 on the key frame only (``T`` may be 1; extra frames are ignored)."""

    def __init__(self, detector: FasterRCNN):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict[str, Tensor]:
        """Training losses: ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``
        (+ head extras), each a scalar. ``images (B, T, 3, H, W)``, only ``[:, 0]`` used."""
        check_inputs(images, image_sizes, targets)
        feats = self.detector.extract_feat(images[:, 0])
        losses, props = self.detector.rpn_train(feats, image_sizes, [t["boxes"] for t in targets])
        losses.update(self.detector.roi_head.losses(feats, props, targets))
        return losses

    @torch.no_grad()
    def detect_video(self, frames: Iterable[tuple[Tensor, dict]], num_frames: int) -> Iterator[dict]:
        """Per frame ``{"boxes" (K,4) original pixels, "scores" (K,), "labels" (K,) 1..C}``."""
        for img, meta in frames:
            feats = self.detector.extract_feat(img[None])
            props = self.detector.rpn_test(feats, [meta["img_size"]])
            det = self.detector.roi_head.detect(feats, props, [meta["img_size"]])[0]
            yield to_original(det, meta)
