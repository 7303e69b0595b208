"""The one path from a ``ModelConfig`` to a detector: ``build_model(cfg, cat_ids)``.

Training, test, inference and analysis all build their detector here. The builder is the
only code that reads the model config: it reads the frequency-group table once
(:func:`read_group_table`), checks it against the data (:func:`check_group_table`), and
passes explicit arguments down to parts that take their parts::

    predictor = build_head(cfg.head, ..., groups=table, **cfg.head_settings())
    detector  = FasterRCNN(backbone, neck, rpn_head, roi_head, ...)
    model     = DETECTORS[cfg.kind](cfg, detector parts)   # SingleFrameDetector, FGFA, SELSA, DFF, SelsaTRoIAlign

Adding a detector is one module plus one entry in :data:`DETECTORS` (and its name in
``lvod.config.DETECTOR_KINDS``); adding a head is one class plus one entry in
``lvod.models.heads.HEADS`` (and its settings section in ``lvod.config.HEAD_SETTINGS``).

Parts are created in a fixed order (backbone, neck, RPN, predictor, box head, RoI head,
then the video parts), so the same seed gives the same initial weights as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from lvod import bags_io
from lvod.config import DETECTOR_KINDS, ModelConfig
from lvod.errors import DataError
from lvod.groups import GroupTable
from lvod.models.backbone import ChannelMapperNeck, ResNetDC5
from lvod.models.checkpoint import load_flownet_weights, load_torchvision_resnet
from lvod.models.detector import FasterRCNN, SingleFrameDetector
from lvod.models.dff import DFF
from lvod.models.fgfa import FGFA, EmbedAggregator
from lvod.models.flownet import FlowNetSimple
from lvod.models.heads import HEADS, build_head
from lvod.models.roi_head import BBoxHead, RoIHead
from lvod.models.rpn import ProposalSettings, RPNHead
from lvod.models.selsa import SELSA, SelsaAggregator
from lvod.models.temporal_roi_align import SelsaBBoxHead, SelsaTRoIAlign, TemporalRoIAlign, TemporalRoIHead

# A predictor factory: called where the old code built the head (after the RPN), so the
# random initialisation order of every part stays what it was.
PredictorFactory = Callable[[], nn.Module]


def read_group_table(cfg: ModelConfig, cat_ids: Sequence[int] | None = None) -> GroupTable | None:
    """The frequency-group table of ``cfg.groups_file`` (checked against ``cat_ids`` when
    given), or None when no file is set. A head with ``uses_groups`` (``bags``: its logit
    layout, ``fedloss``: its class counts) without a file is a DataError."""
    if not cfg.groups_file:
        if HEADS[cfg.head].uses_groups:
            raise DataError(
                "<config>",
                "model.groups_file",
                f"is empty but model.head = {cfg.head!r} needs the frequency-group table",
                "run `lvod groups` and set model.groups_file to its groups.json",
            )
        return None
    table = bags_io.load_groups(cfg.groups_file)
    check_group_table(table, cfg.num_classes, cat_ids, source=cfg.groups_file)
    return table


def check_group_table(groups, num_classes: int, cat_ids=None, *, source: str | None = None) -> None:
    """Refuse a group table that cannot belong to this detector / dataset.

    - its class list must have ``num_classes`` entries and equal ``cat_ids`` when given;
    - when it carries ``counts`` and ``edges``, binning the counts by the edges must give
      exactly its groups (a table claiming LVIS's 10/100/1000 edges for classes that all
      have >20k boxes fails here: the edges put every class in one bin).
    """
    source = source or str(getattr(groups, "dataset", None) or "group table")
    table_ids = [int(c) for c in getattr(groups, "cat_ids", [])]
    fix = "rebuild the table for this dataset with lvod.groups.build_groups(dataset counts)"
    if len(table_ids) != num_classes:
        raise DataError(source, "cat_ids", f"group table has {len(table_ids)} classes, the detector {num_classes}", fix)
    if cat_ids is not None and [int(c) for c in cat_ids] != table_ids:
        diff = sorted(set(map(int, cat_ids)) ^ set(table_ids))[:5]
        raise DataError(
            source,
            "cat_ids",
            f"group table's category ids differ from the dataset's (first differences {diff} or a different order)",
            fix,
        )
    counts, edges = getattr(groups, "counts", None), getattr(groups, "edges", None)
    if counts is None or edges is None or len(edges) == 0:
        return
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(counts, dtype=np.float64), side="right")
    from_edges: dict[int, list[int]] = {}
    for cid, b in zip(table_ids, bins):
        from_edges.setdefault(int(b), []).append(cid)
    derived = [sorted(v) for _, v in sorted(from_edges.items())]
    claimed = [sorted(int(c) for c in g) for g in groups.groups]
    if derived != claimed:
        raise DataError(
            source,
            "edges",
            f"the table's edges {list(edges)} put this dataset's "
            f"classes into {len(derived)} group(s) of sizes "
            f"{[len(g) for g in derived]}, but it claims {len(claimed)} group(s) of "
            f"sizes {[len(g) for g in claimed]}: its groups cannot come from these "
            "counts",
            "derive the edges from the data (method='quantiles' or 'log') and rebuild the table",
        )


def build_faster_rcnn(
    cfg: ModelConfig,
    predictor: PredictorFactory,
    aggregators: list[nn.Module] | None = None,
    *,
    bbox_head_type: Callable[..., nn.Module] = BBoxHead,
    roi_head_type: Callable[..., nn.Module] = RoIHead,
) -> FasterRCNN:
    """The shared parts, with the ResNet weights of ``cfg.backbone_weights`` when set.
    ``predictor()`` makes the box predictor (the head) once the RPN exists.
    ``bbox_head_type`` / ``roi_head_type``: called as ``BBoxHead`` / ``RoIHead`` are
    (Temporal RoI Align's heads)."""
    backbone = ResNetDC5(cfg.depth, cfg.frozen_stages, cfg.backbone_norm, cfg.backbone_stages)
    if cfg.backbone_weights:  # a path, or torchvision://IMAGENET1K_V1 where online
        load_torchvision_resnet(backbone, cfg.backbone_weights)
    neck = ChannelMapperNeck(backbone.out_channels, cfg.neck_channels)
    rpn_head = RPNHead(
        cfg.neck_channels,
        cfg.rpn_channels,
        anchor_base=cfg.anchor_base,
        anchor_scales=cfg.anchor_scales,
        anchor_ratios=cfg.anchor_ratios,
        pos_iou=cfg.rpn_pos_iou,
        neg_iou=cfg.rpn_neg_iou,
        min_pos_iou=cfg.rpn_min_pos_iou,
        num_samples=cfg.rpn_num_samples,
        pos_fraction=cfg.rpn_pos_fraction,
        allowed_border=cfg.rpn_allowed_border,
    )
    bbox_head = bbox_head_type(cfg.neck_channels * cfg.roi_size**2, cfg.fc_channels, predictor(), aggregators)
    roi_head = roi_head_type(
        bbox_head,
        roi_size=cfg.roi_size,
        sampling_ratio=cfg.roi_sampling_ratio,
        pos_iou=cfg.roi_pos_iou,
        neg_iou=cfg.roi_neg_iou,
        min_pos_iou=cfg.roi_pos_iou,
        low_quality=cfg.roi_match_low_quality,
        num_samples=cfg.roi_num_samples,
        pos_fraction=cfg.roi_pos_fraction,
        add_gt_as_proposals=cfg.roi_add_gt,
        target_stds=cfg.roi_target_stds,
        score_thr=cfg.test_score_thr,
        nms_iou=cfg.test_nms_iou,
        max_dets=cfg.test_max_dets,
    )
    return FasterRCNN(
        backbone,
        neck,
        rpn_head,
        roi_head,
        train_proposals=ProposalSettings(
            cfg.rpn_train_pre_nms, cfg.rpn_train_post_nms, cfg.rpn_nms_iou, cfg.rpn_min_size
        ),
        test_proposals=ProposalSettings(cfg.rpn_test_pre_nms, cfg.rpn_test_post_nms, cfg.rpn_nms_iou, cfg.rpn_min_size),
    )


def _single(cfg: ModelConfig, predictor: PredictorFactory) -> nn.Module:
    return SingleFrameDetector(build_faster_rcnn(cfg, predictor))


def _motion(cfg: ModelConfig) -> FlowNetSimple:
    """FGFA's and DFF's FlowNetSimple, with the weights of ``cfg.flownet_weights`` when set."""
    motion = FlowNetSimple(cfg.flow_img_scale, cfg.flow_scale_factor, cfg.image_mean, cfg.image_std, cfg.flownet_width)
    if cfg.flownet_weights:
        load_flownet_weights(motion, cfg.flownet_weights)
    return motion


def _fgfa(cfg: ModelConfig, predictor: PredictorFactory) -> nn.Module:
    detector = build_faster_rcnn(cfg, predictor)
    motion = _motion(cfg)
    return FGFA(detector, motion, EmbedAggregator(cfg.neck_channels), window=cfg.fgfa_window, warp_grid=cfg.flow_warp)


def _selsa(cfg: ModelConfig, predictor: PredictorFactory) -> nn.Module:
    aggregators = [SelsaAggregator(cfg.fc_channels, cfg.selsa_attention_blocks) for _ in range(2)]
    return SELSA(build_faster_rcnn(cfg, predictor, aggregators), test_refs=cfg.selsa_test_refs)


def _dff(cfg: ModelConfig, predictor: PredictorFactory) -> nn.Module:
    detector = build_faster_rcnn(cfg, predictor)
    return DFF(detector, _motion(cfg), key_frame_interval=cfg.dff_key_frame_interval, warp_grid=cfg.flow_warp)


def _temporal_roi_align(cfg: ModelConfig, predictor: PredictorFactory) -> nn.Module:
    n = cfg.troi_shared_fcs
    aggregators = [SelsaAggregator(cfg.fc_channels, cfg.selsa_attention_blocks) for _ in range(n)]

    def bbox_head(*args) -> nn.Module:
        return SelsaBBoxHead(*args, num_shared_fcs=n)

    def roi_head(bbox_head: nn.Module, **settings) -> nn.Module:
        extractor = TemporalRoIAlign(cfg.neck_channels, cfg.troi_most_similar_points, cfg.troi_attention_blocks)
        return TemporalRoIHead(bbox_head, extractor, **settings)

    detector = build_faster_rcnn(cfg, predictor, aggregators, bbox_head_type=bbox_head, roi_head_type=roi_head)
    return SelsaTRoIAlign(detector, test_refs=cfg.selsa_test_refs)


DETECTORS: dict[str, Callable[[ModelConfig, PredictorFactory], nn.Module]] = {
    "single": _single,
    "fgfa": _fgfa,
    "selsa": _selsa,
    "dff": _dff,
    "temporal_roi_align": _temporal_roi_align,
}
assert tuple(DETECTORS) == DETECTOR_KINDS, "lvod.config.DETECTOR_KINDS and DETECTORS disagree"


def build_model(
    cfg: ModelConfig, cat_ids: Sequence[int] | None = None, *, groups: GroupTable | None = None
) -> nn.Module:
    """The detector of ``cfg`` (``SingleFrameDetector``, ``FGFA``, ``SELSA``, ``DFF`` or ``SelsaTRoIAlign``).

    ``cat_ids``: the data's sorted category ids (None where there is no annotation file,
    e.g. ``lvod infer`` on a user's video); ``model.num_classes`` must equal their number.
    ``groups``: an already read group table (e.g. the one evaluation also uses), else it
    is read from ``cfg.groups_file`` when the head needs it (``uses_groups``). Either way
    it is checked against ``cat_ids`` once, here.
    """
    if cat_ids is not None and cfg.num_classes != len(cat_ids):
        raise DataError(
            "<config>",
            "model.num_classes",
            f"is {cfg.num_classes} but the data has {len(cat_ids)} categories",
            f"set model.num_classes={len(cat_ids)}",
        )
    if HEADS[cfg.head].uses_groups:
        if groups is None:
            groups = read_group_table(cfg, cat_ids)
        else:
            check_group_table(groups, cfg.num_classes, cat_ids)
    settings = cfg.head_settings()

    def predictor() -> nn.Module:
        return build_head(cfg.head, cfg.fc_channels, cfg.num_classes, groups=groups, **settings)

    return DETECTORS[cfg.kind](cfg, predictor)
