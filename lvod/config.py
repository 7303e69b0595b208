"""Typed run configuration: dataclass sections with defaults, TOML/JSON files, overrides.

A config file is TOML (or JSON) with the sections ``[data]``, ``[model]``, ``[train]``,
``[test]``. A top-level ``include = ["../_base_/...toml", ...]`` pulls base files in first
(paths relative to the including file, later files win, tables merge key by key, any
other value is replaced whole), so one base file sets the data root and experiments hold
only what differs. Command-line overrides ``key.sub=value`` are applied last; the value is
read as a TOML value (``train.lr=0.02``, ``data.img_scale=[800, 480]``) and, when it is not
one, as a bare string (``data.root=/data/vid``).

Every key is checked against the dataclasses below: an unknown key or a value of the
wrong type raises :class:`lvod.errors.DataError` naming the key and the file that set it.
The resolved config (every field, defaults included) is what :func:`config_to_dict`
returns; the engine writes it into the run folder and every checkpoint.

This module is the schema and imports no torch and no model code: the defaults of every
part live here, and the builders (``lvod.models.build_model``, ``lvod.engine.data``) read
them and pass plain arguments down.

The classification head is a checked choice (``model.head``, one of :data:`HEAD_SETTINGS`)
and each head with settings has its own typed section (``[model.bags]``,
``[model.seesaw]``, ``[model.eqlv2]``, ``[model.fedloss]``); a section for a head that is
not chosen is refused, naming the file.
The frequency-group table is a model setting (``model.groups_file``): the BAGS head needs
it, and evaluation uses it for per-group AP with any head.

Files and checkpoints written before these names (``data.groups_file``, ``data.mean`` /
``data.std``, ``model.head_kwargs``) are migrated on load by :func:`migrate_legacy_keys`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lvod.errors import DataError

CMDLINE = "<command line>"


def choice(default, choices):
    """A string field restricted to ``choices`` (checked when the config is built)."""
    return field(default=default, metadata={"choices": tuple(choices)})


@dataclass
class SourceConfig:
    """One annotation file and the folder its ``file_name`` paths are relative to.

    Relative paths are taken relative to ``data.root``. ``load_as_video = false`` treats
    every image as a one-frame video (ImageNet DET): its refs are copies of the key frame.
    ``key_frames_only`` keeps only frames flagged ``is_vid_train_frame`` as key frames.
    """

    ann_file: str = ""
    images_root: str = ""
    load_as_video: bool = True
    key_frames_only: bool = True


@dataclass
class DataConfig:
    """Datasets, reference-frame sampling and the training transforms.

    The pixel normalisation is the model's (``model.image_mean`` / ``model.image_std``):
    the pipeline reads it from there, so training and inference cannot disagree.

    ``sampler``: which key frames an epoch visits (``lvod.engine.samplers``): ``uniform``
    (each once, shuffled), ``repeat_factor`` (LVIS repeat factor sampling, class factor
    ``max(1, sqrt(repeat_threshold / f))`` with ``f`` the fraction of training key frames
    holding the class), ``class_balanced`` (a class uniformly, then one of its key frames;
    cRT's sampling; an epoch = as many draws as there are key frames).

    ``img_scale``: the keep-ratio resize of training and test frames (mmdet ``Resize``,
    ``(long, short)`` bounds). ``train_scales``: multi-scale training, mmdet's
    ``img_scale=[...]`` list of the training ``Resize`` with ``multiscale_mode``
    (``scale_mode``): ``"range"`` (two scales: the long and the short bound are drawn
    uniformly between theirs, whole pixels, per sample) or ``"value"`` (one listed scale
    per sample). A key frame and its reference frames share the drawn scale (mmtracking's
    ``SeqResize``, ``share_params=True``). Empty (the default, as mmtracking's VID
    configs): every training frame uses ``img_scale``. Testing always uses ``img_scale``.
    """

    root: str = "data/ILSVRC2015"
    train: list[SourceConfig] = field(default_factory=list)
    val: SourceConfig = field(default_factory=SourceConfig)
    ref_sampler: str = choice("bilateral_uniform", ("bilateral_uniform", "uniform", "key_copy"))
    ref_frame_range: list[int] = field(default_factory=lambda: [-9, 9])
    num_ref_frames: int = 2
    img_scale: list[int] = field(default_factory=lambda: [1000, 600])
    train_scales: list[list[int]] = field(default_factory=list)
    scale_mode: str = choice("range", ("range", "value"))
    flip_prob: float = 0.5
    size_divisor: int = 16
    filter_empty_gt: bool = True
    imgs_per_gpu: int = 1
    workers_per_gpu: int = 2
    sampler: str = choice("uniform", ("uniform", "repeat_factor", "class_balanced"))
    repeat_threshold: float = 0.001

    def __post_init__(self):
        if not self.repeat_threshold > 0:
            raise ValueError(f"repeat_threshold must be > 0 (LVIS uses 0.001), got {self.repeat_threshold}")
        scales = [list(sc) for sc in self.train_scales]
        if any(len(sc) != 2 or min(sc) < 1 for sc in scales):
            raise ValueError(f"train_scales must be [long, short] pairs of positive sizes, got {self.train_scales}")
        if self.train_scales and self.scale_mode == "range" and len(scales) != 2:
            raise ValueError(
                f"train_scales with scale_mode 'range' needs exactly two scales (the bounds), got {len(scales)}; "
                "list more with scale_mode = 'value'"
            )


@dataclass
class TrainConfig:
    """Optimiser, schedule, precision, checkpointing and logging of a training run.

    ``lr`` is the learning rate for a total batch of ``lr_base_batch`` images; the engine
    scales it linearly to world_size x imgs_per_gpu. ``lr_steps`` are epochs (0-based
    count of finished epochs) after which the lr is multiplied by ``lr_gamma``.
    ``stop_after_iters`` (> 0) ends the run early at that global iteration, with a
    checkpoint there, without changing the schedule (a later run resumes from it).
    Checkpoints: ``iter_N.pth`` every ``checkpoint_interval`` iterations and
    ``epoch_N.pth`` at each epoch end; a run keeps only its newest one (``latest.pth``
    points at it; all a resume needs) plus the epoch ends listed in ``keep_checkpoints``
    (e.g. ``[4, 7]``).

    Decoupled protocols (cRT, BAGS stage 2): ``init_from`` (a checkpoint; weights only,
    fresh optimiser and schedule; skipped when the run resumes) loads every matching
    weight and skips a classifier of another shape; ``reinit_classifier`` re-initialises
    the classifier (``fc_cls``; ``fc_reg`` stays); ``freeze = "all_but_classifier"`` trains
    ``fc_cls`` alone (everything else ``requires_grad=False``, BatchNorm in eval).

    Precision: ``amp`` (default on) trains under float16 autocast with a grad scaler on
    CUDA, as mmtracking's fp16 configs; it does nothing on a CPU. ``cpu_amp`` (default
    off) trains under bfloat16 autocast on a CPU: about a quarter faster per step for
    the demo FGFA on a CPU with native bfloat16 (AVX512-BF16 or AMX; benchmarks/README.md),
    slower where the CPU has none. Weights, gradients and the optimiser stay float32.

    ``ema_decay`` (> 0, e.g. 0.995): also keep an exponential moving average of the
    trainable weights (``lvod.engine.ema``); checkpoints carry it beside the raw weights,
    and testing, inference, calibration and ``init_from`` use it (``test.use_ema = false``:
    the raw weights). 0 (default): off.
    """

    lr: float = 0.01
    lr_base_batch: int = 8
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 7
    lr_steps: list[int] = field(default_factory=lambda: [2, 5])
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    grad_clip: float = 35.0
    amp: bool = True
    cpu_amp: bool = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_interval: int = 5000
    keep_checkpoints: list[int] = field(default_factory=list)  # epoch ends kept besides the newest checkpoint
    log_interval: int = 50
    init_from: str = ""
    reinit_classifier: bool = False
    freeze: str = choice("none", ("none", "all_but_classifier"))
    find_unused_parameters: bool = False
    tensorboard: bool = False  # on: pip install -e ".[tensorboard]" (README command 1 does not install it)
    progress_bar: bool = True
    stop_after_iters: int = 0
    ema_decay: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0: off; e.g. 0.995), got {self.ema_decay}")


@dataclass
class TestConfig:
    """Video inference settings owned by the engine.

    Which frames are aggregated at test time is the detector's business and lives in the
    model section (``model.fgfa_window``: FGFA's sliding window; ``model.selsa_test_refs``:
    SELSA's refs spread over the whole video; ``model.dff_key_frame_interval``: DFF's key
    frames), next to the code that uses it.

    ``use_ema``: a checkpoint that carries a moving average of its weights
    (``train.ema_decay``) is tested with the average; false tests the raw weights.

    Post-processing of the detections (``lvod test`` and ``lvod infer``):

    - ``calibrate``: post-hoc calibration of the classifier before NMS, ``""`` / ``"none"``
      (off), ``"NAME:PARAM=VALUE"`` (``tau_norm:tau=1``, ``logit_adjust:tau=1``,
      ``norcal:gamma=0.5``; options ``count=images``, ``rescale=false``), ``"NAME:auto"`` or
      ``"auto"`` (the choice ``lvod calibrate`` stored beside the checkpoint);
      ``lvod.models.calibration`` has the maths and which head takes which.
    - ``rescoring``: ``"seq_nms"`` rescores each video's detections with Seq-NMS
      (``lvod.engine.rescoring``): links of IoU > ``seq_nms_link_iou`` between consecutive
      frames, ``seq_nms_rescore`` ``"avg"`` or ``"max"`` along the chosen sequence, and
      (``seq_nms_suppress``) same-class boxes overlapping it by IoU > ``seq_nms_suppress_iou``
      removed.
    """

    workers: int = 2
    use_ema: bool = True
    calibrate: str = ""
    rescoring: str = choice("none", ("none", "seq_nms"))
    seq_nms_link_iou: float = 0.5
    seq_nms_rescore: str = choice("avg", ("avg", "max"))
    seq_nms_suppress: bool = True
    seq_nms_suppress_iou: float = 0.3

    def __post_init__(self):
        for name in ("seq_nms_link_iou", "seq_nms_suppress_iou"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


# ----------------------------------------------------------------------------- model


@dataclass
class BagsConfig:
    """``[model.bags]``: Balanced Group Softmax (Li et al., CVPR 2020).

    ``others_sample_ratio``: background ("others") RoIs kept per group, as a multiple of
    the group's positives (the paper's 8). ``seed``: a private generator for that sampling
    (reproducible per head); unset uses torch's global generator. The group table is
    ``model.groups_file``.
    """

    others_sample_ratio: float = 8.0
    seed: int | None = None

    def __post_init__(self):
        if self.others_sample_ratio <= 0:
            raise ValueError(f"others_sample_ratio must be > 0, got {self.others_sample_ratio}")


@dataclass
class SeesawConfig:
    """``[model.seesaw]``: Seesaw Loss (Wang et al., CVPR 2021), mmdetection's defaults.

    ``p``: mitigation exponent, ``q``: compensation exponent, ``eps``: the compensation
    term's floor.
    """

    p: float = 0.8
    q: float = 2.0
    eps: float = 1e-2

    def __post_init__(self):
        if self.p < 0 or self.q < 0:
            raise ValueError(f"seesaw p and q must be >= 0, got p={self.p}, q={self.q}")


@dataclass
class EqlV2Config:
    """``[model.eqlv2]``: Equalization Loss v2 (Tan et al., CVPR 2021), the paper's and
    mmdetection's defaults.

    A class's accumulated positive/negative gradient ratio ``g`` is mapped by
    ``f(g) = 1 / (1 + exp(-gamma (g - mu)))``; its negatives are weighted ``f(g)``, its
    positives ``1 + alpha (1 - f(g))``. ``test_with_obj``: at inference the class scores
    are multiplied by ``1 - P(background)`` from the objectness logit (mmdetection's
    default).
    """

    gamma: float = 12.0
    mu: float = 0.8
    alpha: float = 4.0
    test_with_obj: bool = True

    def __post_init__(self):
        if self.gamma <= 0 or self.alpha < 0:
            raise ValueError(f"eqlv2 needs gamma > 0 and alpha >= 0, got gamma={self.gamma}, alpha={self.alpha}")


@dataclass
class FedLossConfig:
    """``[model.fedloss]``: Federated loss (Zhou et al., 2021; detectron2's defaults).

    Sigmoid cross-entropy over the classes of the batch plus negative classes sampled with
    probability proportional to ``count ** weight_power``, ``num_classes_sampled`` object
    classes in all (with fewer classes than that, every class is in every batch: plain
    sigmoid cross-entropy). The counts are the group table's (``model.groups_file``):
    training instances per class, or images per class for a table built with
    ``lvod groups --basis images`` (the paper's image counts). ``prior_prob``: the class
    logits' initial bias ``-log((1 - p) / p)`` (CenterNet2's 0.01), so a class never seen
    in training does not start at score 0.5.
    """

    num_classes_sampled: int = 50
    weight_power: float = 0.5
    prior_prob: float = 0.01

    def __post_init__(self):
        if self.num_classes_sampled < 1 or self.weight_power < 0 or not 0 < self.prior_prob < 1:
            raise ValueError(
                "fedloss needs num_classes_sampled >= 1, weight_power >= 0 and 0 < prior_prob < 1; got "
                f"{self.num_classes_sampled}, {self.weight_power}, {self.prior_prob}"
            )


# Each head and its settings section (None: no settings). The model side of the same
# choice is ``lvod.models.heads.HEADS``; a test holds the two tables to the same names.
HEAD_SETTINGS: dict[str, type | None] = {
    "softmax": None,
    "bags": BagsConfig,
    "seesaw": SeesawConfig,
    "eqlv2": EqlV2Config,
    "fedloss": FedLossConfig,
}
# The detectors (``lvod.models.build.DETECTORS`` builds them; a test holds the names equal).
DETECTOR_KINDS = ("single", "fgfa", "selsa", "dff", "temporal_roi_align")
# FGFA's feature-warp grid: "aligned" (zero flow = identity) or "mmtracking" (its zoo
# weights' grid, one feature cell towards the top-left; docs/checkpoint_mapping.md).
WARP_GRIDS = ("aligned", "mmtracking")
# Backbone BatchNorm: eval (mmtracking norm_eval: statistics fixed, affine trained),
# frozen (FrozenBatchNorm2d), group (GroupNorm) and batch (BatchNorm in training mode, mmdet
# norm_eval=False), the last two for training from scratch.
BACKBONE_NORMS = ("eval", "frozen", "group", "batch")


@dataclass
class ModelConfig:
    """Every setting of a detector; defaults = mmtracking's R50-DC5 ImageNet VID configs.

    mmtracking config key -> field: ``backbone.depth`` -> ``depth``;
    ``backbone.frozen_stages`` -> ``frozen_stages``; ``neck.out_channels`` ->
    ``neck_channels``; ``rpn_head.feat_channels`` -> ``rpn_channels``;
    ``anchor_generator.{scales,ratios}`` -> ``anchor_{scales,ratios}`` (stride 16);
    ``train_cfg.rpn.assigner.*`` -> ``rpn_{pos,neg,min_pos}_iou``;
    ``train_cfg.rpn.sampler.{num,pos_fraction}`` -> ``rpn_{num_samples,pos_fraction}``;
    ``train_cfg.rpn.allowed_border`` -> ``rpn_allowed_border``;
    ``train_cfg.rpn_proposal.{nms_pre,max_per_img}`` -> ``rpn_train_{pre,post}_nms``;
    ``test_cfg.rpn.*`` -> ``rpn_test_{pre,post}_nms``, ``rpn_nms_iou``, ``rpn_min_size``;
    ``bbox_roi_extractor.roi_layer`` -> ``roi_size``, ``roi_sampling_ratio``;
    ``bbox_head.fc_out_channels`` -> ``fc_channels``; ``train_cfg.rcnn.*`` -> ``roi_*``;
    ``bbox_coder.target_stds`` -> ``roi_target_stds``; ``test_cfg.rcnn.{score_thr, nms,
    max_per_img}`` -> ``test_{score_thr, nms_iou, max_dets}``; FGFA test ``frame_range``
    -> ``fgfa_window``; SELSA test ``num_ref_imgs`` -> ``selsa_test_refs``;
    ``aggregator.num_attention_blocks`` -> ``selsa_attention_blocks``; DFF
    ``test_cfg.key_frame_interval`` -> ``dff_key_frame_interval``; Temporal RoI Align
    ``bbox_roi_extractor.num_most_similar_points`` -> ``troi_most_similar_points``,
    ``num_temporal_attention_blocks`` -> ``troi_attention_blocks``, its
    ``bbox_head.num_shared_fcs`` -> ``troi_shared_fcs``;
    ``bbox_head.num_classes`` -> ``num_classes``; ``img_norm_cfg.{mean,std}`` ->
    ``image_{mean,std}`` (docs/config_mapping.md has the whole table).
    """

    kind: str = choice("single", DETECTOR_KINDS)
    depth: int = 50
    num_classes: int = 30
    head: str = choice("softmax", HEAD_SETTINGS)
    bags: BagsConfig = field(default_factory=BagsConfig)
    seesaw: SeesawConfig = field(default_factory=SeesawConfig)
    eqlv2: EqlV2Config = field(default_factory=EqlV2Config)
    fedloss: FedLossConfig = field(default_factory=FedLossConfig)
    groups_file: str = ""  # frequency-group table (lvod groups): BAGS, fedloss counts, per-group AP
    backbone_weights: str | None = None  # torchvision ResNet state dict (.pth)
    flownet_weights: str | None = None  # mmtracking FlowNetSimple state dict (FGFA)
    frozen_stages: int = 1  # -1: nothing frozen (training from scratch)
    backbone_norm: str = choice("eval", BACKBONE_NORMS)
    backbone_stages: int = 4  # 4: R-DC5 (mmtracking); 3: the C4 map, no stage 4 (the CPU demo models)
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
    roi_match_low_quality: bool = True  # mmdet MaxIoUAssigner default, kept by mmtracking's rcnn
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
    flow_warp: str = choice("aligned", WARP_GRIDS)
    image_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB 0..255; the pipeline reads it
    image_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    selsa_test_refs: int = 14
    selsa_attention_blocks: int = 16
    dff_key_frame_interval: int = 10  # DFF test: backbone on frames 0, k, 2k, ...; flow-warped between
    troi_most_similar_points: int = 2  # Temporal RoI Align: most similar points per reference map
    troi_attention_blocks: int = 4  # its temporal attention heads (0: plain average)
    troi_shared_fcs: int = 3  # its bbox head's shared FCs, a SelsaAggregator after each

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                setattr(self, f.name, tuple(v))
            choices = f.metadata.get("choices")
            if choices and v not in choices:  # checked here too for ModelConfig(...) in code
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {v!r}")
        if self.fgfa_window < 1 or self.fgfa_window % 2 == 0:
            raise ValueError(f"fgfa_window must be odd and >= 1, got {self.fgfa_window}")
        if self.fc_channels % self.selsa_attention_blocks:
            raise ValueError(
                f"fc_channels {self.fc_channels} must be divisible by "
                f"selsa_attention_blocks {self.selsa_attention_blocks}"
            )
        if self.dff_key_frame_interval < 1:
            raise ValueError(f"dff_key_frame_interval must be >= 1, got {self.dff_key_frame_interval}")
        if self.troi_most_similar_points < 1 or self.troi_shared_fcs < 1 or self.troi_attention_blocks < 0:
            raise ValueError(
                "troi_most_similar_points and troi_shared_fcs must be >= 1 and troi_attention_blocks >= 0, got "
                f"{self.troi_most_similar_points}, {self.troi_shared_fcs}, {self.troi_attention_blocks}"
            )
        if self.troi_attention_blocks and self.neck_channels % self.troi_attention_blocks:
            raise ValueError(
                f"neck_channels {self.neck_channels} must be divisible by troi_attention_blocks "
                f"{self.troi_attention_blocks}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std must have 3 values (R, G, B)")

    def head_settings(self) -> dict:
        """The chosen head's settings as keyword arguments (``{}`` for softmax)."""
        section = HEAD_SETTINGS[self.head]
        return dataclasses.asdict(getattr(self, self.head)) if section else {}

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A CPU demo/test preset: ResNet-18 with FrozenBatchNorm2d, 32-channel neck/RPN,
        128-wide FCs, anchors 16..128 px, a few proposals, FlowNet at 1/16 width (random
        weights), window 5, 4 SELSA refs. ``overrides`` replace any field."""
        base = dict(
            depth=18,
            backbone_norm="frozen",
            neck_channels=32,
            rpn_channels=32,
            fc_channels=128,
            anchor_base=4.0,
            rpn_allowed_border=-1.0,
            rpn_num_samples=64,
            rpn_train_pre_nms=300,
            rpn_train_post_nms=64,
            rpn_test_pre_nms=300,
            rpn_test_post_nms=32,
            roi_num_samples=64,
            test_max_dets=20,
            flownet_width=1 / 16,
            fgfa_window=5,
            selsa_test_refs=4,
            selsa_attention_blocks=4,
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class Config:
    """The whole run configuration; ``name`` defaults to the config file's stem."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


# ----------------------------------------------------------------------------- reading


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(path, "file", f"cannot read the config ({exc.strerror})", "check the path") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, "syntax", str(exc), "fix the TOML/JSON syntax") from exc
    if not isinstance(data, dict):
        raise DataError(path, "top level", "is not a table", "write key = value pairs")
    return data


def _merge(dst: dict, src: dict, prov: dict, file: str, prefix: str = "") -> None:
    """Merge ``src`` into ``dst`` in place; record in ``prov`` which file set each key."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            prov[dotted] = file
            _merge(dst[key], value, prov, file, dotted + ".")
        else:
            dst[key] = value
            prov[dotted] = file
            if isinstance(value, dict):
                _record(value, prov, file, dotted + ".")


def _record(tree: dict, prov: dict, file: str, prefix: str) -> None:
    for key, value in tree.items():
        prov[prefix + key] = file
        if isinstance(value, dict):
            _record(value, prov, file, prefix + key + ".")


def read_tree(path, _chain: tuple = ()) -> tuple[dict, dict]:
    """Read a config file with its includes resolved.

    Returns ``(tree, provenance)``: the merged nested dict and ``{dotted key: file}``.
    """
    path = Path(path).resolve()
    if path in _chain:
        raise DataError(
            path,
            "include",
            "includes itself (cycle: " + " -> ".join(p.name for p in _chain + (path,)) + ")",
            "break the cycle",
        )
    data = _read_file(path)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise DataError(path, "key 'include'", "must be a path or a list of paths", "fix it")
    tree: dict = {}
    prov: dict = {}
    for inc in includes:
        base_tree, base_prov = read_tree(path.parent / inc, _chain + (path,))
        _merge(tree, base_tree, prov, "")
        prov.update(base_prov)
    _merge(tree, data, prov, str(path))
    return tree, prov


def parse_override(text: str) -> tuple[str, object]:
    """``"train.lr=0.02"`` -> ``("train.lr", 0.02)``; a non-TOML value stays a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise DataError(CMDLINE, f"override {text!r}", "is not key.sub=value", "write e.g. train.lr=0.02")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_override(tree: dict, prov: dict, key: str, value) -> None:
    """Set ``key`` (dotted) in ``tree`` to ``value``, creating tables on the way."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DataError(CMDLINE, f"override {key}", f"{part} is not a table", "override a key inside a table")
    node[parts[-1]] = value
    prov[key] = CMDLINE


# ----------------------------------------------------------------------------- typing


def _where(prov: dict, dotted: str) -> str:
    while dotted:
        if dotted in prov and prov[dotted]:
            return prov[dotted]
        dotted = dotted.rpartition(".")[0]
    return "<defaults>"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, dotted: str, prov: dict):
    """Check ``value`` against the annotation ``tp``; return it in that type."""

    def bad(problem):
        return DataError(_where(prov, dotted), f"key '{dotted}'", problem, f"give a value of type {_type_name(tp)}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad(f"must be a table, got {type(value).__name__}")
        return build(tp, value, prov, dotted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, dotted, prov)
            except DataError as exc:
                errors.append(exc.problem)
        raise bad("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise bad(f"{value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad(f"must be a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad(f"must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{dotted}[{i}]", prov) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else object
        items = [_coerce(item, v, f"{dotted}[{i}]", prov) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad(f"must be a string, got {value!r}")
        return value
    if tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad(f"must be a list, got {type(value).__name__} {value!r}")
        return tp(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad(f"must be a table, got {value!r}")
        return dict(value)
    if tp is object or tp is typing.Any:
        return value
    raise bad(f"has an unsupported annotation {tp!r} (lvod bug)")


def build(cls, data: dict, prov: dict | None = None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    prov = prov or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise DataError(
                _where(prov, dotted),
                f"key '{dotted}'",
                f"unknown key; valid keys{' in [' + prefix + ']' if prefix else ''}: " + ", ".join(sorted(fields)),
                "remove or rename it",
            )
        value = _coerce(hints[key], value, dotted, prov)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise DataError(
                _where(prov, dotted), f"key '{dotted}'", f"{value!r} is not one of {list(choices)}", "pick one of those"
            )
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(
            _where(prov, prefix), f"section '{prefix or 'top level'}'", str(exc), "fix the values of that section"
        ) from exc


# ----------------------------------------------------------------------------- old names

# (old dotted key, new key in [model]) for settings that moved into the model section.
_MOVED_TO_MODEL = (("data.groups_file", "groups_file"), ("data.mean", "image_mean"), ("data.std", "image_std"))


def migrate_legacy_keys(tree: dict, prov: dict) -> list[str]:
    """Rewrite, in place, the keys of configs and checkpoints written before the model
    section owned the head settings, the group table and the normalisation.

    - ``data.groups_file`` -> ``model.groups_file``; ``data.mean`` / ``data.std`` ->
      ``model.image_mean`` / ``model.image_std`` (where both are set, the new key wins);
    - ``model.head_kwargs`` -> the chosen head's section (``[model.bags]``,
      ``[model.seesaw]``), its ``groups`` path -> ``model.groups_file``, its ``cat_ids``
      dropped (the builder takes the class list from the data).

    Returns one note per rewrite (empty for a current file); a ``head_kwargs`` that no
    section can take raises ``DataError`` naming the file.
    """
    notes: list[str] = []
    train = tree.get("train") if isinstance(tree.get("train"), dict) else {}
    if "max_keep_iter_ckpts" in train:  # before train.keep_checkpoints (2026-11)
        train.pop("max_keep_iter_ckpts")
        notes.append(
            f"{_where(prov, 'train.max_keep_iter_ckpts')}: train.max_keep_iter_ckpts is gone: a run keeps its "
            "newest checkpoint plus the epoch ends in train.keep_checkpoints"
        )
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    if not any(old.split(".")[1] in data for old, _ in _MOVED_TO_MODEL) and not (
        isinstance(tree.get("model"), dict) and "head_kwargs" in tree["model"]
    ):
        return notes
    model = tree.setdefault("model", {})
    if not isinstance(model, dict):
        return notes  # build() reports the wrong type

    def put(key: str, value, old: str) -> None:
        where = _where(prov, old)
        new = f"model.{key}"
        if model.get(key) not in (None, "") and list(_as_seq(model[key])) != list(_as_seq(value)):
            notes.append(f"{where}: {old} = {value!r} ignored: {new} = {model[key]!r} is set")
            return
        model[key] = value
        prov.setdefault(new, where)
        notes.append(f"{where}: {old} is now {new}")

    for old, key in _MOVED_TO_MODEL:
        name = old.split(".")[1]
        if name in data:
            put(key, data.pop(name), old)
    if "head_kwargs" in model:
        where = _where(prov, "model.head_kwargs")
        kwargs = model.pop("head_kwargs")
        if not isinstance(kwargs, dict):
            raise DataError(
                where,
                "key 'model.head_kwargs'",
                f"must be a table, got {kwargs!r}",
                "move the head's settings into its own section, e.g. [model.bags]",
            )
        kwargs = dict(kwargs)
        kwargs.pop("cat_ids", None)
        if "groups" in kwargs:
            put("groups_file", kwargs.pop("groups"), "model.head_kwargs.groups")
        head = model.get("head", "softmax")
        if kwargs:
            if HEAD_SETTINGS.get(head) is None:
                raise DataError(
                    where,
                    "key 'model.head_kwargs'",
                    f"sets {sorted(kwargs)} but model.head = {head!r} takes no settings",
                    "remove them, or choose the head they belong to",
                )
            section = model.setdefault(head, {})
            for key, value in kwargs.items():
                section.setdefault(key, value)
                prov.setdefault(f"model.{head}.{key}", where)
            notes.append(f"{where}: model.head_kwargs is now the section [model.{head}]")
    return notes


def _as_seq(v):
    return v if isinstance(v, (list, tuple)) else [v]


def _check_head_sections(tree: dict, prov: dict) -> None:
    """Refuse settings of a head that is not the chosen one (they would do nothing)."""
    model = tree.get("model")
    if not isinstance(model, dict):
        return
    head = model.get("head", "softmax")
    for name, section in HEAD_SETTINGS.items():
        if section is not None and name != head and name in model:
            raise DataError(
                _where(prov, f"model.{name}"),
                f"section 'model.{name}'",
                f"sets the {name} head's settings, but model.head = {head!r}",
                f'remove [model.{name}], or set model.head = "{name}"',
            )


# ----------------------------------------------------------------------------- entry points


def load_config(path, overrides=()) -> Config:
    """Read a config file (with includes) and ``key=value`` overrides into a :class:`Config`.

    Old key names (:func:`migrate_legacy_keys`) are rewritten with a ``FutureWarning``
    that names the file.
    """
    path = Path(path)
    tree, prov = read_tree(path)
    for text in overrides:
        apply_override(tree, prov, *parse_override(text))
    notes = migrate_legacy_keys(tree, prov)
    if notes:
        warnings.warn("old config names, rewritten: " + "; ".join(notes), FutureWarning, stacklevel=2)
    _check_head_sections(tree, prov)
    cfg = build(Config, tree, prov)
    if not cfg.name:
        cfg.name = path.stem.removesuffix(".resolved").removeprefix("config.") or path.stem
    return cfg


def config_to_dict(cfg) -> dict:
    """Plain nested dict (lists, str, numbers, bools) of a config: JSON/TOML-safe.

    Of the head sections only the chosen head's is written, so the dict loads again.
    """

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(dataclasses.asdict(cfg))
    model = out.get("model") if isinstance(cfg, Config) else out if isinstance(cfg, ModelConfig) else None
    if model is not None:
        for name in HEAD_SETTINGS:
            if name != model["head"]:
                model.pop(name, None)
    return out


def config_from_dict(data: dict, source: str = "<checkpoint>") -> Config:
    """Inverse of :func:`config_to_dict` (e.g. the config stored in a checkpoint); the
    configs of checkpoints written before the current names are migrated silently."""
    import copy

    data = copy.deepcopy(data)
    prov: dict = {}
    _record(data, prov, source, "")
    migrate_legacy_keys(data, prov)
    _check_head_sections(data, prov)
    return build(Config, data, prov)


def save_config(cfg: Config, path) -> Path:
    """Write the resolved config as JSON (loadable again with :func:`load_config`)."""
    from lvod.io import save_json

    return save_json(config_to_dict(cfg), path)
