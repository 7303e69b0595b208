"""Faster R-CNN R50-DC5 parts (backbone, box maths, config) and the detector interface
shared by the three kinds and the three heads. CPU, tiny models; budget about 25 s."""

import json
import math

import pytest
import torch

from lvod.config import ModelConfig
from lvod.errors import DataError
from lvod.models import box_coder as bc
from lvod.models import build_model
from lvod.models.backbone import ResNetDC5

H, W = 64, 96
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
SHAPES = "mmtracking/mmtrack-0.14.0_vid_state_dict_shapes.json"


def group_table(head):
    if head == "bags":
        from lvod.groups import build_groups

        return build_groups([1, 2, 3], [100, 10, 1], method="edges", edges=(5, 50))
    return None


def tiny(kind, head="softmax", **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.tiny(kind=kind, num_classes=3, head=head, **kw), groups=group_table(head))


def one_target():
    return {"boxes": torch.tensor([[8.0, 10, 40, 42], [50, 20, 90, 50]]), "labels": torch.tensor([1, 3])}


def no_target():
    return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}


def frames_of(kind):
    return 1 if kind == "single" else 3


@pytest.mark.parametrize("kind", ["single", "fgfa", "selsa"])
@pytest.mark.parametrize("head", ["softmax", "bags", "seesaw"])
def test_losses_are_named_finite_scalars_with_gradients(kind, head):
    m = tiny(kind, head)
    images = torch.randn(2, frames_of(kind), 3, H, W)
    losses = m(images, [(H, W), (60, 90)], [one_target(), no_target()])
    assert LOSS_KEYS <= set(losses)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    fc_cls = m.detector.roi_head.bbox_head.predictor.fc_cls.weight
    assert fc_cls.grad is not None and fc_cls.grad.abs().sum() > 0
    assert m.detector.rpn_head.rpn_cls.weight.grad.abs().sum() > 0
    assert m.detector.backbone.conv1.weight.grad is None  # frozen stem


@pytest.mark.parametrize("kind", ["single", "fgfa", "selsa"])
def test_frame_without_ground_truth_has_zero_box_losses(kind):
    m = tiny(kind)
    losses = m(torch.randn(1, frames_of(kind), 3, H, W), [(H, W)], [no_target()])
    assert losses["loss_rpn_bbox"].item() == 0.0
    assert losses["loss_bbox"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_cls"].item() > 0


def test_video_detectors_refuse_a_single_frame():
    with pytest.raises(ValueError, match="T >= 2"):
        tiny("fgfa")(torch.randn(1, 1, 3, H, W), [(H, W)], [no_target()])


@pytest.mark.parametrize("kind", ["single", "fgfa", "selsa"])
def test_detect_video_one_result_per_frame_inside_original_image(kind):
    m = tiny(kind).eval()
    g = torch.Generator().manual_seed(1)
    meta = {"img_size": (60, 90), "orig_size": (120, 180)}
    frames = [(torch.randn(3, H, W, generator=g), meta) for _ in range(6)]
    out = list(m.detect_video(iter(frames), 6))
    assert len(out) == 6
    for r in out:
        k = r["boxes"].shape[0]
        assert r["boxes"].shape == (k, 4) and r["scores"].shape == (k,) and r["labels"].shape == (k,)
        assert 0 < k <= 20
        b = r["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 180).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 120).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((r["labels"] >= 1) & (r["labels"] <= 3)).all()
        assert (r["scores"][:-1] >= r["scores"][1:]).all()


def test_detections_are_scaled_to_original_size():
    m = tiny("single").eval()
    img = torch.randn(3, H, W)
    same = next(m.detect_video([(img, {"img_size": (H, W), "orig_size": (H, W)})], 1))
    double = next(m.detect_video([(img, {"img_size": (H, W), "orig_size": (2 * H, 3 * W)})], 1))
    assert torch.allclose(double["boxes"], same["boxes"] * torch.tensor([3.0, 2, 3, 2]), atol=1e-4)
    assert torch.equal(double["labels"], same["labels"])


def test_autocast_bfloat16_forward_is_finite():
    m = tiny("fgfa")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(torch.randn(1, 3, 3, H, W), [(H, W)], [one_target()])
    assert all(torch.isfinite(v) for v in losses.values())


def test_resnet50_dc5_stride_16_dilated_stage4_and_frozen_parts():
    b = ResNetDC5(50)
    assert b(torch.zeros(1, 3, 64, 96)).shape == (1, 2048, 4, 6)
    assert all(blk.conv2.dilation == (2, 2) and blk.conv2.stride == (1, 1) for blk in b.layer4)
    assert b.layer4[0].downsample[0].stride == (1, 1)
    assert b.layer3[0].conv2.stride == (2, 2)
    assert not any(p.requires_grad for p in list(b.conv1.parameters()) + list(b.layer1.parameters()))
    assert all(p.requires_grad for p in b.layer2.parameters())
    # mmtracking's norm_eval BatchNorm: statistics fixed, affine trained outside stem/stage 1
    stats = b.layer2[0].bn1.running_mean.clone()
    b.train()
    assert not any(m.training for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    b(torch.randn(2, 3, 64, 96))
    assert torch.equal(b.layer2[0].bn1.running_mean, stats)
    assert b.layer2[0].bn1.weight.requires_grad and not b.bn1.weight.requires_grad
    trainable_bn = sum(
        p.numel() for n, p in b.named_parameters() if p.requires_grad and ("bn" in n or "downsample.1" in n)
    )
    assert trainable_bn == 50_176  # the count mmtracking's FGFA config trains in stages 2-4
    frozen = ResNetDC5(50, norm="frozen")
    assert not any("bn" in n for n, _ in frozen.named_parameters())  # FrozenBatchNorm2d: buffers


def test_resnet18_basicblock_stage4_dilated_by_hand():
    b = ResNetDC5(18)
    assert b(torch.zeros(1, 3, 64, 96)).shape == (1, 512, 4, 6)
    assert all(blk.conv1.dilation == (2, 2) and blk.conv1.padding == (2, 2) for blk in b.layer4)


def test_state_dict_matches_mmtracking_detector_keys_and_shapes(external_data):
    zoo = json.loads((external_data / SHAPES).read_text())["fgfa_r50_dc5"]["state_dict"]
    want = {k: v for k, v in zoo.items() if k.startswith("detector.")}
    m = build_model(ModelConfig(kind="single"))
    got = {k.replace("bbox_head.predictor.", "bbox_head."): list(v.shape) for k, v in m.state_dict().items()}
    assert got == want


def test_anchors_follow_mmdet_layout():
    base = bc.base_anchors(16, [4, 8, 16, 32], [0.5, 1.0, 2.0])
    assert base.shape == (12, 4)
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    assert torch.allclose((w * h).sqrt()[:4], torch.tensor([64.0, 128, 256, 512]))
    assert torch.allclose(h[:4] / w[:4], torch.full((4,), 0.5))  # ratio-major order
    grid = bc.grid_anchors(base, 2, 3, 16)
    assert grid.shape == (2 * 3 * 12, 4)
    assert torch.allclose(grid[(1 * 3 + 2) * 12 + 5], base[5] + torch.tensor([32.0, 16, 32, 16]))


def test_encode_decode_round_trip_and_clipping():
    boxes = torch.tensor([[10.0, 10, 50, 30], [0, 0, 20, 80]])
    gt = torch.tensor([[12.0, 8, 60, 36], [5, 5, 15, 60]])
    d = bc.encode(boxes, gt, (0.2, 0.2, 0.2, 0.2))
    assert torch.allclose(d[0, 0], torch.tensor((36.0 - 30) / 40 / 0.2))
    assert torch.allclose(bc.decode(boxes, d, (0.2, 0.2, 0.2, 0.2)), gt, atol=1e-4)
    clipped = bc.decode(boxes, torch.tensor([[0.0, 0, 5, 5], [0, 0, 0, 0]]), (1, 1, 1, 1), (40, 45))
    assert clipped[:, 2].max() <= 45 and clipped[:, 3].max() <= 40 and clipped.min() >= 0


def test_assign_low_quality_matches_only_when_enabled():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 25], [100, 100, 110, 110], [0, 0, 10, 12]])  # IoU .4, 0, .83
    m, iou = bc.assign(boxes, gt, 0.7, 0.3, 0.3, low_quality=False)
    assert m.tolist() == [-1, 0, 1]
    gt2 = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 24]])
    m2, _ = bc.assign(boxes[:2], gt2[:1], 0.7, 0.3, 0.3, low_quality=True)
    assert m2.tolist() == [1, 0]  # best box of the GT (IoU 0.4 >= min_pos_iou) becomes positive
    pos, neg = bc.sample(torch.tensor([1] * 10 + [0] * 20), 8, 0.25)
    assert pos.numel() == 2 and neg.numel() == 6


def test_config_rejects_unknown_keys_and_wrong_types():
    from lvod.config import config_from_dict

    def model(d):
        return config_from_dict({"model": d}, "exp.toml").model

    assert model({"depth": 18, "anchor_scales": [2, 4]}).anchor_scales == (2, 4)
    with pytest.raises(DataError, match="exp.toml: key 'model.depthh'"):
        model({"depthh": 18})
    with pytest.raises(DataError, match="must be an integer"):
        model({"depth": "50"})
    with pytest.raises(DataError, match="'mega' is not one of"):
        model({"kind": "mega"})
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="mega")
    with pytest.raises(ValueError, match="depth"):
        ResNetDC5(42)


def test_c4_backbone_stops_after_stage_3_and_loads_torchvision_weights_without_stage_4(tmp_path):
    """backbone_stages = 3: the stride-16 C4 map of stage 3 (256 channels for ResNet-18,
    1024 for ResNet-50), no stage 4 built; torchvision weights load with layer4.* dropped
    and give the same stage-3 map as the DC5 backbone with the same weights."""
    from torchvision.models import resnet18

    from lvod.io import torch_save_atomic
    from lvod.models.checkpoint import load_torchvision_resnet

    c4, c4_50 = ResNetDC5(18, stages=3), ResNetDC5(50, stages=3, norm="frozen")
    assert not hasattr(c4, "layer4") and not any(k.startswith("layer4.") for k in c4.state_dict())
    assert (c4.out_channels, c4_50.out_channels) == (256, 1024)
    x = torch.randn(1, 3, 64, 96)
    assert c4(x).shape == (1, 256, 4, 6) and c4_50(x).shape == (1, 1024, 4, 6)
    torch.manual_seed(3)
    path = torch_save_atomic(resnet18().state_dict(), tmp_path / "r18.pth")
    report = load_torchvision_resnet(c4, path)
    assert not report.missing and sum(k.startswith("layer4.") for k in report.dropped) > 0
    dc5 = ResNetDC5(18)
    load_torchvision_resnet(dc5, path)
    with torch.no_grad():
        stage3 = dc5.layer3(dc5.layer2(dc5.layer1(dc5.maxpool(dc5.relu(dc5.bn1(dc5.conv1(x)))))))
        assert torch.equal(c4.eval()(x), stage3)
    # built from the config, the neck takes the C4 channels
    model = build_model(ModelConfig.tiny(kind="single", num_classes=2, backbone_stages=3), [1, 2])
    assert model.detector.neck.convs[0].conv.in_channels == 256
    with pytest.raises(ValueError, match="3 \\(C4\\) or 4"):
        ResNetDC5(18, stages=5)
    with pytest.raises(ValueError, match="freezes more than"):
        ResNetDC5(18, frozen_stages=4, stages=3)


def test_torchvision_weights_load_and_wrong_depth_is_refused(tmp_path):
    from torchvision.models import resnet18

    from lvod.io import torch_save_atomic
    from lvod.models.checkpoint import load_torchvision_resnet

    torch.manual_seed(5)
    src = resnet18()
    path = torch_save_atomic(src.state_dict(), tmp_path / "r18.pth")
    b = ResNetDC5(18)
    report = load_torchvision_resnet(b, path)
    assert not report.missing and not report.unexpected
    assert torch.equal(b.layer4[1].conv1.weight, src.layer4[1].conv1.weight)
    assert torch.equal(b.bn1.running_var, src.bn1.running_var)
    with pytest.raises(DataError):
        load_torchvision_resnet(ResNetDC5(34), path)


def test_from_scratch_backbone_has_trainable_group_norm():
    """Frozen BN of a random network is the identity: the demo trains GroupNorm from scratch."""
    b = ResNetDC5(18, frozen_stages=-1, norm="group")
    assert isinstance(b.bn1, torch.nn.GroupNorm) and b.conv1.weight.requires_grad
    assert all(p.requires_grad for p in b.parameters())
    frozen = ResNetDC5(18)
    assert not frozen.conv1.weight.requires_grad and not frozen.layer1[0].conv1.weight.requires_grad
    assert frozen.layer2[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="norm"):
        ResNetDC5(18, norm="sync")


def test_batch_norm_backbone_normalises_trained_stages_and_keeps_frozen_ones_in_eval():
    """``"batch"`` (mmdet norm_eval=False): batch statistics and moving running statistics
    in the trained stages; the frozen stem and stage 1 stay in eval mode through train()."""
    torch.manual_seed(0)
    b = ResNetDC5(18, frozen_stages=1, norm="batch", stages=3).train()
    assert isinstance(b.layer2[0].bn1, torch.nn.BatchNorm2d) and b.layer2[0].bn1.weight.requires_grad
    assert not b.bn1.training and not b.layer1[0].bn1.training and b.layer2[0].bn1.training
    x = 3.0 + 2.0 * torch.randn(2, 3, 64, 64)
    b(x)
    assert torch.equal(b.bn1.running_mean, torch.zeros(64))  # frozen: statistics untouched
    assert torch.equal(b.layer1[0].bn1.running_var, torch.ones(64))
    assert not torch.equal(b.layer2[0].bn1.running_mean, torch.zeros(128))  # trained: moved
    # in training, the output of a trained BN is normalised over the batch
    h = b.layer2[0].bn1(torch.randn(4, 128, 8, 8) * 5 + 7)
    assert float(h.mean()) == pytest.approx(0.0, abs=1e-5) and float(h.std()) == pytest.approx(1.0, abs=1e-2)
    b.eval()
    assert not b.layer2[0].bn1.training


def test_rpn_loss_normaliser_is_mmdets_num_total_samples():
    """mmdet divides the RPN losses by sum over images of max(pos, 1) + max(neg, 1): an image
    without a positive anchor counts one more than it sampled."""
    rpn = build_model(ModelConfig.tiny(kind="single", num_classes=3)).detector.rpn_head
    feats = torch.zeros(1, 32, 4, 6)
    anchors = rpn.anchors(feats)
    logits = torch.zeros(1, anchors.shape[0])  # every anchor: BCE = log 2
    deltas = torch.zeros(1, anchors.shape[0], 4)
    empty = rpn.losses(logits, deltas, anchors, [(64, 96)], [torch.zeros(0, 4)])
    n_neg = min(rpn.num_samples, int(bc.inside_image(anchors, 64, 96, rpn.allowed_border).sum()))
    assert float(empty["loss_rpn_cls"]) == pytest.approx(n_neg * math.log(2) / (n_neg + 1), rel=1e-6)
    assert float(empty["loss_rpn_bbox"]) == 0.0


def test_rcnn_assignment_follows_mmdet_low_quality_order():
    """mmdet assigns the proposals before the GT boxes join them, with low-quality matching:
    a proposal that is the best one of two GTs goes to the later GT, even where it overlaps
    the earlier one more (mmtracking's rcnn assigner keeps match_low_quality=True)."""
    head = build_model(ModelConfig.tiny(kind="single", num_classes=8)).detector.roi_head
    prop = torch.tensor([[8.0, 0, 108, 100]])
    gts = torch.tensor([[10.0, 0, 110, 100], [0.0, 0, 100, 100]])  # IoU 0.96 and 0.85
    rois, labels, _, _ = head.sample(prop, gts, torch.tensor([3, 7]))
    row = int(torch.nonzero((rois == prop).all(dim=1))[0])
    assert int(labels[row]) == 7
    gt_rows = [int(torch.nonzero((rois == g).all(dim=1))[0]) for g in gts]
    assert labels[gt_rows].tolist() == [3, 7]  # GT boxes are assigned to themselves
