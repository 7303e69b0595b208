"""Detector assembly: the typed ``ModelConfig``, the shared Faster R-CNN parts and the
single-frame detector; ``build_detector(cfg)`` returns any of the three kinds.

Every detector has a ``detector`` submodule (``FasterRCNN``: ``backbone``, ``neck``,
``rpn_head``, ``roi_head``) so parameter names follow mmtracking's checkpoints
(``detector.backbone.layer1.0.conv1.weight``, ``detector.rpn_head.rpn_cls.weight``,
``detector.roi_head.bbox_head.shared_fcs.0.weight``, ...). The classification/regression
layers are the predictor's: ``detector.roi_head.bbox_head.predictor.fc_cls`` (mmtracking:
``detector.roi_head.bbox_head.fc_cls``). FGFA adds ``motion.*`` and ``aggregator.*``;
SELSA adds ``detector.roi_head.bbox_head.aggregator.{0,1}.*``.

Interface (docs/DESIGN.md, "Detectors"): ``forward(images (B,T,3,H,W), image_sizes,
targets) -> losses`` and ``detect_video(frames, num_frames) -> iterator of per-frame
results`` in original image pixels.

mmtracking config key -> ``ModelConfig`` field: ``backbone.depth`` -> ``depth``;
``backbone.frozen_stages`` -> ``frozen_stages``; ``neck.out_channels`` -> ``neck_channels``;
``rpn_head.feat_channels`` -> ``rpn_channels``; ``anchor_generator.{scales,ratios,strides}``
-> ``anchor_{scales,ratios}`` / stride 16; ``train_cfg.rpn.assigner.*`` -> ``rpn_{pos,neg,
min_pos}_iou``; ``train_cfg.rpn.sampler.{num,pos_fraction}`` -> ``rpn_{num_samples,
pos_fraction}``; ``train_cfg.rpn.allowed_border`` -> ``rpn_allowed_border``;
``train_cfg.rpn_proposal.{nms_pre,max_per_img}`` -> ``rpn_train_{pre,post}_nms``;
``test_cfg.rpn.*`` -> ``rpn_test_{pre,post}_nms``, ``rpn_nms_iou``, ``rpn_min_size``;
``bbox_roi_extractor.roi_layer`` -> ``roi_size``, ``roi_sampling_ratio``;
``bbox_head.fc_out_channels`` -> ``fc_channels``; ``train_cfg.rcnn.*`` -> ``roi_*``;
``bbox_coder.target_stds`` -> ``roi_target_stds``; ``test_cfg.rcnn.{score_thr, nms,
max_per_img}`` -> ``test_{score_thr, nms_iou, max_dets}``; FGFA test ``frame_range`` ->
``fgfa_window``; SELSA test ``num_ref_imgs`` -> ``selsa_test_refs``;
``aggregator.num_attention_blocks`` -> ``selsa_attention_blocks``; ``bbox_head.num_classes``
-> ``num_classes``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from lvod.errors import DataError
from lvod.models.backbone import ChannelMapperNeck, ResNetDC5
from lvod.models.flownet import WARP_GRIDS
from lvod.models.heads import build_head
from lvod.models.roi_head import BBoxHead, RoIHead
from lvod.models.rpn import ProposalSettings, RPNHead

KINDS = ("single", "fgfa", "selsa")


@dataclass
class ModelConfig:
    """Every setting of a detector; defaults = mmtracking's R50-DC5 ImageNet VID configs."""
    kind: str = "single"
    depth: int = 50
    num_classes: int = 30
    head: str = "softmax"
    head_kwargs: dict = field(default_factory=dict)
    backbone_weights: str | None = None     # torchvision ResNet state dict (.pth)
    flownet_weights: str | None = None      # mmtracking FlowNetSimple state dict (FGFA)
    frozen_stages: int = 1          # -1: nothing frozen (training from scratch)
    backbone_norm: str = "eval"     # eval (mmtracking norm_eval) | frozen (FrozenBN) | group (from scratch)
    neck_channels: int = 512
    rpn_channels: int = 512
    anchor_base: float = 16.0
    anchor_scales: tuple = (4, 8, 16, 32)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_num_samples: int = 256
    rpn_pos_fraction: float = 0.5
    rpn_allowed_border: float = 0.0
    rpn_train_pre_nms: int = 6000
    rpn_train_post_nms: int = 600
    rpn_test_pre_nms: int = 6000
    rpn_test_post_nms: int = 300
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 0.0
    roi_size: int = 7
    roi_sampling_ratio: int = 2
    fc_channels: int = 1024
    roi_pos_iou: float = 0.5
    roi_neg_iou: float = 0.5
    roi_match_low_quality: bool = True   # mmdet MaxIoUAssigner default, kept by mmtracking's rcnn
    roi_num_samples: int = 256
    roi_pos_fraction: float = 0.25
    roi_add_gt: bool = True
    roi_target_stds: tuple = (0.2, 0.2, 0.2, 0.2)
    test_score_thr: float = 1e-4
    test_nms_iou: float = 0.5
    test_max_dets: int = 100
    fgfa_window: int = 31
    flownet_width: float = 1.0
    flow_img_scale: float = 0.5
    flow_scale_factor: float = 5.0
    flow_warp: str = "aligned"      # aligned (zero flow = identity) | mmtracking (its zoo weights' grid)
    image_mean: tuple = (123.675, 116.28, 103.53)   # RGB, 0..255, as the data pipeline
    image_std: tuple = (58.395, 57.12, 57.375)
    selsa_test_refs: int = 14
    selsa_attention_blocks: int = 16

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                setattr(self, f.name, tuple(v))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.flow_warp not in WARP_GRIDS:
            raise ValueError(f"flow_warp must be one of {WARP_GRIDS}, got {self.flow_warp!r}")
        if self.fgfa_window < 1 or self.fgfa_window % 2 == 0:
            raise ValueError(f"fgfa_window must be odd and >= 1, got {self.fgfa_window}")
        if self.fc_channels % self.selsa_attention_blocks:
            raise ValueError(f"fc_channels {self.fc_channels} must be divisible by "
                             f"selsa_attention_blocks {self.selsa_attention_blocks}")

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """A CPU demo/test preset: ResNet-18 with FrozenBatchNorm2d, 32-channel neck/RPN,
        128-wide FCs, anchors 16..128 px, a few proposals, FlowNet at 1/16 width (random
        weights), window 5, 4 SELSA refs. ``overrides`` replace any field."""
        base = dict(depth=18, backbone_norm="frozen", neck_channels=32, rpn_channels=32, fc_channels=128,
                    anchor_base=4.0, rpn_allowed_border=-1.0, rpn_num_samples=64, rpn_train_pre_nms=300,
                    rpn_train_post_nms=64, rpn_test_pre_nms=300, rpn_test_post_nms=32,
                    roi_num_samples=64, test_max_dets=20, flownet_width=1 / 16, fgfa_window=5,
                    selsa_test_refs=4, selsa_attention_blocks=4)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "ModelConfig":
        """Build from plain values; unknown keys and wrong types raise ``DataError``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        defaults = cls()
        for k, v in d.items():
            if k not in fields:
                raise DataError(source, f"model.{k}", "unknown key", f"use one of {', '.join(fields)}")
            want = type(getattr(defaults, k))
            ok = (v is None and getattr(defaults, k) is None) or isinstance(v, want) \
                or (want is float and isinstance(v, int) and not isinstance(v, bool)) \
                or (want is tuple and isinstance(v, list)) \
                or (getattr(defaults, k) is None and isinstance(v, str))
            if not ok or (want is int and isinstance(v, bool)):
                raise DataError(source, f"model.{k}", f"expected {want.__name__}, got {type(v).__name__}",
                                f"give {k} a {want.__name__} value")
        return cls(**d)


class FasterRCNN(nn.Module):
    """The shared parts: ``backbone``, ``neck``, ``rpn_head``, ``roi_head``."""

    def __init__(self, cfg: ModelConfig, aggregators: list[nn.Module] | None = None):
        super().__init__()
        self.backbone = ResNetDC5(cfg.depth, cfg.frozen_stages, cfg.backbone_norm)
        if cfg.backbone_weights:  # a path, or torchvision://IMAGENET1K_V1 where online
            from lvod.models.checkpoint import load_torchvision_resnet

            load_torchvision_resnet(self.backbone, cfg.backbone_weights)
        self.neck = ChannelMapperNeck(self.backbone.out_channels, cfg.neck_channels)
        self.rpn_head = RPNHead(
            cfg.neck_channels, cfg.rpn_channels, anchor_base=cfg.anchor_base,
            anchor_scales=cfg.anchor_scales, anchor_ratios=cfg.anchor_ratios,
            pos_iou=cfg.rpn_pos_iou, neg_iou=cfg.rpn_neg_iou, min_pos_iou=cfg.rpn_min_pos_iou,
            num_samples=cfg.rpn_num_samples, pos_fraction=cfg.rpn_pos_fraction,
            allowed_border=cfg.rpn_allowed_border)
        predictor = build_head(cfg.head, cfg.fc_channels, cfg.num_classes, **cfg.head_kwargs)
        bbox_head = BBoxHead(cfg.neck_channels * cfg.roi_size ** 2, cfg.fc_channels, predictor, aggregators)
        self.roi_head = RoIHead(
            bbox_head, roi_size=cfg.roi_size, sampling_ratio=cfg.roi_sampling_ratio,
            pos_iou=cfg.roi_pos_iou, neg_iou=cfg.roi_neg_iou, min_pos_iou=cfg.roi_pos_iou,
            low_quality=cfg.roi_match_low_quality,
            num_samples=cfg.roi_num_samples, pos_fraction=cfg.roi_pos_fraction,
            add_gt_as_proposals=cfg.roi_add_gt, target_stds=cfg.roi_target_stds,
            score_thr=cfg.test_score_thr, nms_iou=cfg.test_nms_iou, max_dets=cfg.test_max_dets)
        self.train_proposals = ProposalSettings(cfg.rpn_train_pre_nms, cfg.rpn_train_post_nms,
                                                cfg.rpn_nms_iou, cfg.rpn_min_size)
        self.test_proposals = ProposalSettings(cfg.rpn_test_pre_nms, cfg.rpn_test_post_nms,
                                               cfg.rpn_nms_iou, cfg.rpn_min_size)

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

    def rpn_train(self, feats: Tensor, image_sizes, gt_boxes: list[Tensor]
                  ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """RPN losses of the batch and its training proposals (detached)."""
        logits, deltas = self.rpn_head(feats)
        anchors = self.rpn_head.anchors(feats)
        losses = self.rpn_head.losses(logits, deltas, anchors, image_sizes, gt_boxes)
        props = self.rpn_head.proposals(logits.detach(), deltas.detach(), anchors, image_sizes,
                                        self.train_proposals)
        return losses, props

    def rpn_test(self, feats: Tensor, image_sizes) -> list[Tensor]:
        """Test-time proposals (``rpn_test_post_nms`` per image at most)."""
        logits, deltas = self.rpn_head(feats)
        return self.rpn_head.proposals(logits, deltas, self.rpn_head.anchors(feats), image_sizes,
                                       self.test_proposals)


def check_inputs(images: Tensor, image_sizes, targets, min_frames: int = 1) -> None:
    """Raise ``ValueError`` when training inputs disagree in batch size or frame count."""
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be (B, T, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] < min_frames:
        raise ValueError(f"this detector needs T >= {min_frames} frames, got {images.shape[1]}")
    if len(image_sizes) != images.shape[0] or len(targets) != images.shape[0]:
        raise ValueError(f"batch of {images.shape[0]} images but {len(image_sizes)} sizes "
                         f"and {len(targets)} targets")


def to_original(det: dict, meta: dict) -> dict:
    """Scale detections from resized-image pixels to ``meta["orig_size"]`` pixels (clipped)."""
    h, w = meta["img_size"]
    h0, w0 = meta["orig_size"]
    boxes = det["boxes"].float().clone()
    boxes[:, 0::2] = (boxes[:, 0::2] * (w0 / w)).clamp(0, w0)
    boxes[:, 1::2] = (boxes[:, 1::2] * (h0 / h)).clamp(0, h0)
    return {"boxes": boxes.cpu(), "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()}


class SingleFrameDetector(nn.Module):
    """Faster R-CNN R50-DC5 on the key frame only (``T`` must be 1; extra frames are ignored)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.detector = FasterRCNN(cfg)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]],
                targets: list[dict]) -> dict[str, Tensor]:
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


def build_detector(cfg: ModelConfig) -> nn.Module:
    """The detector of ``cfg.kind``: ``SingleFrameDetector``, ``FGFA`` or ``SELSA``."""
    if cfg.kind == "single":
        return SingleFrameDetector(cfg)
    if cfg.kind == "fgfa":
        from lvod.models.fgfa import FGFA
        return FGFA(cfg)
    if cfg.kind == "selsa":
        from lvod.models.selsa import SELSA
        return SELSA(cfg)
    raise ValueError(f"kind must be one of {KINDS}, got {cfg.kind!r}")
