"""Device bugs that CPU-only tests do not see, checked on the CPU (issue 12, section 3).

- Tensors created on the wrong device: every data-independent forward path of the models
  runs on the ``meta`` device, where a tensor created without the input's device (a CPU
  tensor meeting a meta one) raises, as it would meeting a CUDA one.
- Host-device syncs in the training step: the box assignment reads nothing back to the
  host (it was one sync per ground-truth box), BAGS reads its slice table once.
- Autocast: every head's losses and scores are float32 under fp16 autocast (what
  ``train.amp`` runs on CUDA), its statistics keep their dtypes.
- Moving between machines and NCCL: a resume restores the CUDA RNG states of the GPUs the
  machine has, takes a checkpoint saved without AMP into an enabled grad scaler, and the
  training sets its CUDA device also for a process group its caller joined.
"""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torchvision.ops import box_iou

from lvod.config import ModelConfig
from lvod.engine import checkpointing as ckpt_io
from lvod.engine import train as train_mod
from lvod.groups import build_groups
from lvod.models import box_coder as bc
from lvod.models import build_model
from lvod.models import losses as L
from lvod.models import sigmoid_losses as S
from lvod.models.flownet import warp
from lvod.models.heads import build_head

META = torch.device("meta")
HOST_READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero"}


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor back to the host (a sync on an accelerator),
    boolean-mask indexing included (it runs ``nonzero``)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        index = args[1] if name in ("__getitem__", "__setitem__") and len(args) > 1 else None
        masks = index if isinstance(index, tuple) else (index,)
        if name in HOST_READS or any(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def groups_table():
    return build_groups(np.arange(1, 7), [100, 50, 20, 10, 5, 1], method="edges", edges=[10, 60])


# ----------------------------------------------------------------------------- box assignment


def assign_per_gt_loop(boxes, gt, pos_iou, neg_iou, min_pos_iou):
    """The MaxIoUAssigner as mmdet writes it: one pass per GT box (the reference)."""
    iou = box_iou(gt, boxes)
    max_iou, argmax = iou.max(dim=0)
    matched = torch.full((boxes.shape[0],), -1, dtype=torch.int64)
    matched[(max_iou >= 0) & (max_iou < neg_iou)] = 0
    matched[max_iou >= pos_iou] = argmax[max_iou >= pos_iou] + 1
    gt_max = iou.max(dim=1).values
    for j in range(gt.shape[0]):
        if gt_max[j] >= min_pos_iou:
            matched[iou[j] == gt_max[j]] = j + 1
    return matched, max_iou


@pytest.mark.parametrize("seed", range(4))
def test_assign_low_quality_matching_equals_the_per_gt_loop(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(300, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 4 + torch.rand(300, 2, generator=g) * 30], 1).round()  # integer: IoU ties
    gt = torch.cat([boxes[:3], boxes[7:9], boxes[:1] + 1.0, torch.tensor([[200.0, 200, 210, 210]])])
    boxes[50] = boxes[7]  # a proposal tying GT 3's best IoU: both take it
    for thresholds in [(0.7, 0.3, 0.3), (0.5, 0.5, 0.5), (0.5, 0.4, 0.0)]:
        got = bc.assign(boxes, gt, *thresholds, True)
        want = assign_per_gt_loop(boxes, gt, *thresholds)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # a box that is the best of two GTs goes to the last of them, as mmdet's loop leaves it
    twins = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    assert bc.assign(torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), twins, 0.7, 0.3, 0.3, True)[0].tolist() == [
        2,
        0,
    ]


def test_assign_reads_nothing_back_to_the_host():
    boxes = torch.rand(500, 2) * 100
    boxes = torch.cat([boxes, boxes + 20], 1)
    gt = boxes[torch.arange(0, 40, 2)] + 0.5  # 20 GT boxes: the loop synced 20 times
    with HostReads() as reads:
        bc.assign(boxes, gt, 0.7, 0.3, 0.3, True)
    assert reads.calls == []


def test_bags_reads_its_slice_table_once_per_call():
    head = build_head("bags", 16, 6, groups=groups_table())
    logits, labels = torch.randn(12, head.num_logits), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 0, 0])
    with HostReads() as reads:
        head.scores(logits)
    assert reads.calls == ["tolist"]  # was 2 per group, plus two copies of both tables
    with HostReads() as reads:
        head.cls_loss(logits, labels)
    # the table once; per group its kept count, per object group its member count (the
    # others are drawn on the host); was 2 more reads per group for the table, 2 for the counts
    assert reads.calls.count("tolist") == 1 and reads.calls.count("__int__") == 2 * head.num_groups + 1


# ----------------------------------------------------------------------------- meta device


@pytest.mark.parametrize("kind", ["fgfa", "dff", "selsa", "temporal_roi_align"])
def test_forward_parts_create_their_tensors_on_the_input_device(kind):
    """Backbone, neck, RPN head and anchors, FlowNet and both warp grids, the FGFA
    aggregator, RoIAlign pooling, the bbox head with its SELSA aggregators, Temporal RoI
    Align and the predictor, all on ``meta``: a CPU tensor created inside would raise."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny(kind=kind)).to(META).eval()
    det = model.detector
    x = torch.empty(3, 3, 48, 64, device=META)
    feats = det.extract_feat(x)
    logits, deltas = det.rpn_head(feats)
    anchors = det.rpn_head.anchors(feats)
    assert {t.device for t in (feats, logits, deltas, anchors)} == {META}
    decoded = bc.decode(anchors, deltas[0], (1.0, 1.0, 1.0, 1.0), (48, 64))
    assert bc.encode(anchors, decoded, (0.2, 0.2, 0.2, 0.2)).device == META
    assert bc.inside_image(anchors, 48, 64, 0).device == META
    if kind in ("fgfa", "dff"):
        flow = model.motion(x[:1], x[1:], (40, 60))
        for grid in ("aligned", "mmtracking"):
            assert warp(feats[1:], flow, grid).device == META
        half = model.motion.prepare_image(x[:1], (40, 60))
        assert model.motion.predict(torch.cat([half.expand(2, -1, -1, -1), half.expand(2, -1, -1, -1)], 1)).is_meta
    if kind == "fgfa":
        assert model.aggregator(feats[:1], feats[1:]).is_meta
        assert model.aggregator.aggregate_window(feats, torch.tensor([0, 1, 1, 2], device=META)).is_meta
    roi_head = det.roi_head
    boxes = [torch.empty(5, 4, device=META), torch.empty(3, 4, device=META)]
    pooled = roi_head.pool(feats[:2], boxes)
    if kind in ("selsa", "temporal_roi_align"):
        refs = roi_head.bbox_head.ref_embeddings(roi_head.pool(feats[2:], [torch.empty(4, 4, device=META)]))
        key = pooled[:5]
        if kind == "temporal_roi_align":
            key = roi_head.bbox_roi_extractor(key, feats[1:], torch.tensor([1.0, 2.0], device=META))
        emb = roi_head.bbox_head.embed(key, refs)
    else:
        emb = roi_head.bbox_head.embed(pooled)
    cls_logits, box_deltas = roi_head.predictor(emb)
    assert roi_head.predictor.scores(cls_logits.float()).is_meta and box_deltas.is_meta


@pytest.mark.parametrize("head", ["softmax", "bags", "seesaw", "eqlv2", "fedloss"])
def test_head_scores_and_loss_maths_follow_the_logits_device(head):
    groups = groups_table()
    predictor = build_head(head, 16, 6, groups=groups).to(META)
    cls_logits, box_deltas = predictor(torch.empty(8, 16, device=META))
    if head == "bags":  # its slice table is read on the host (once per call), the rest stays on the device
        assert L.bags_class_slots(predictor.pred_slice, predictor.label2binlabel).is_meta
    else:
        assert predictor.scores(cls_logits).is_meta
    labels = torch.zeros(8, dtype=torch.int64, device=META)
    if head == "eqlv2":  # its loss is data-independent: the whole loss and the statistics
        targets = S.eqlv2_targets(labels, 6).to(cls_logits)
        loss, weights = S.eqlv2_loss(cls_logits, targets, *predictor.class_weights())
        pos, neg = S.eqlv2_grad_stats(S.bce_logit_grad(cls_logits, targets, weights)[:, :6], targets[:, :6])
        assert loss.is_meta and pos.is_meta and neg.is_meta
    if head == "seesaw":
        assert L.seesaw_class_loss(cls_logits[:, :6], labels, predictor.cum_samples[1:]).is_meta
    if head == "fedloss":
        assert S.fed_loss(cls_logits, labels, torch.tensor([0, 3])).is_meta  # the drawn classes live on the CPU


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("head", ["softmax", "bags", "seesaw", "eqlv2", "fedloss"])
def test_head_losses_and_detections_are_float32_under_fp16_autocast(head):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(kind="single", head=head, num_classes=6)
    model = build_model(cfg, groups=groups_table() if head in ("bags", "fedloss") else None)
    roi_head = model.detector.roi_head
    feats = torch.randn(1, cfg.neck_channels, 6, 8)
    proposals = [torch.tensor([[0.0, 0, 40, 40], [10, 10, 60, 50], [30, 20, 90, 80], [5, 30, 50, 90]])]
    targets = [{"boxes": torch.tensor([[8.0, 8, 58, 48]]), "labels": torch.tensor([4])}]
    with torch.autocast("cpu", dtype=torch.float16):
        losses = roi_head.losses(feats, proposals, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    buffers = dict(roi_head.predictor.named_buffers())
    if head == "eqlv2":
        assert buffers["pos_grad"].dtype == torch.float64 and buffers["pos_grad"].sum() > 0
    if head == "seesaw":
        assert buffers["cum_samples"].dtype == torch.int64 and int(buffers["cum_samples"].sum()) > 0
    model.eval()
    with torch.autocast("cpu", dtype=torch.float16), torch.no_grad():
        det = roi_head.detect(feats, proposals, [(96, 128)])[0]
    assert det["boxes"].dtype == torch.float32 and det["scores"].dtype == torch.float32
    assert det["labels"].dtype == torch.int64 and len(det["scores"]) > 0


# ----------------------------------------------------------------------------- resume, NCCL


def test_cuda_rng_states_are_restored_for_the_gpus_this_machine_has(monkeypatch):
    """A checkpoint of an 8-GPU machine resumed on a 2-GPU one: devices 0 and 1 only
    (torch.cuda.set_rng_state_all raised there, indexing device 2)."""
    state = ckpt_io.rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, int(s[0]))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("indexes missing devices"))
    ckpt_io.set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]


def test_resume_of_a_run_saved_without_amp_starts_an_enabled_grad_scaler_fresh():
    """A run begun where AMP was off (the CPU: the scaler's state is {}) continues on a GPU
    with AMP on; GradScaler.load_state_dict({}) raises, so an empty state is skipped."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "rng": [ckpt_io.rng_state()],
    }
    assert state["scaler"] == {}
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    train_mod._restore(state, model, opt, scaler, 0, 1)
    assert scaler.get_scale() == 1024.0
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    train_mod._restore({**state, "scaler": saved.state_dict()}, model, opt, scaler, 0, 1)
    assert scaler.get_scale() == 8.0  # a real state still loads


def test_training_sets_its_cuda_device_also_in_a_group_its_caller_joined(monkeypatch):
    """NCCL's all_gather_object (the checkpoints' RNG states) works on the current CUDA
    device: with the group joined by the caller, every rank was left on cuda:0."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(train_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(train_mod.dist, "init_process_group", lambda *a, **k: calls.append(("init", a)))
    monkeypatch.setattr(train_mod.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(train_mod.dist, "get_world_size", lambda: 4)
    assert train_mod._join_process_group() == (3, 4, 3, False)
    assert calls == [("set_device", 3)]
