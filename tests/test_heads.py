"""Tests of the classification heads and their pure loss/score maths (lvod.models.heads/losses)."""

import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lvod.bags_io import import_bags
from lvod.config import HEAD_SETTINGS, ModelConfig
from lvod.errors import DataError
from lvod.groups import build_groups
from lvod.models import build_model, check_group_table
from lvod.models import losses as L
from lvod.models.heads import HEADS, SoftmaxHead, build_head


def _batch(R=6, C=3, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, D, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 2][:R])
    targets = torch.randn(R, 4, generator=g)
    return x, labels, targets, (labels > 0).float()


# ---------------------------------------------------------------- box loss (shared by heads)
def test_box_loss_hand_computed():
    # 2 classes, 3 RoIs: bg, class 2 (error 0.5 on x -> 0.125), class 1 (error 2 on h -> 1.5)
    deltas = torch.zeros(3, 8)
    deltas[1, 4] = 0.5  # class 2, coordinate 0
    deltas[2, 3] = 2.0  # class 1, coordinate 3
    deltas[0, :] = 9.0  # background row: must be ignored
    deltas[1, 0:4] = 7.0  # class 1 columns of a class-2 RoI: must be ignored
    labels = torch.tensor([0, 2, 1])
    loss = L.box_regression_loss(deltas, labels, torch.zeros(3, 4), torch.tensor([0.0, 1.0, 1.0]))
    assert loss.item() == pytest.approx((0.125 + 1.5) / 3)  # divided by all sampled RoIs


def test_box_loss_no_foreground_is_zero_and_differentiable():
    deltas = torch.randn(4, 12, requires_grad=True)
    loss = L.box_regression_loss(deltas, torch.zeros(4, dtype=torch.long), torch.randn(4, 4), torch.zeros(4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(deltas.grad) == 0


# ---------------------------------------------------------------- softmax head
def test_softmax_head_shapes_loss_and_scores():
    head = build_head("softmax", 8, 3)
    assert isinstance(head, SoftmaxHead)
    x, labels, targets, w = _batch()
    logits, deltas = head(x)
    assert logits.shape == (6, 4) and deltas.shape == (6, 12)
    out = head.losses(logits, deltas, labels, targets, w)
    assert set(out) == {"loss_cls", "loss_bbox"}
    assert out["loss_cls"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # initial logits are near zero -> CE close to log(C+1)
    assert out["loss_cls"].item() == pytest.approx(math.log(4), abs=0.05)
    s = head.scores(logits)
    assert s.shape == (6, 4)
    torch.testing.assert_close(s.sum(1), torch.ones(6))
    (out["loss_cls"] + out["loss_bbox"]).backward()
    assert head.fc_cls.weight.grad is not None and head.fc_reg.weight.grad.abs().sum() > 0


def test_softmax_head_no_foreground_gives_zero_box_loss():
    head = build_head("softmax", 8, 3)
    x = torch.randn(5, 8)
    logits, deltas = head(x)
    labels = torch.zeros(5, dtype=torch.long)
    out = head.losses(logits, deltas, labels, torch.randn(5, 4), torch.zeros(5))
    assert out["loss_bbox"].item() == 0.0 and out["loss_cls"].item() > 0


def test_softmax_head_rejects_out_of_range_labels():
    head = build_head("softmax", 8, 3)
    logits, deltas = head(torch.randn(2, 8))
    with pytest.raises(ValueError, match="0..3"):
        head.losses(logits, deltas, torch.tensor([0, 4]), torch.zeros(2, 4), torch.ones(2))


def test_build_head_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_head("focal", 8, 3)
    for name in HEADS:
        assert name in str(err.value)


# ---------------------------------------------------------------- BAGS: a hand-made table
# C = 5 classes, 2 object groups: group 1 = {1, 3}, group 2 = {2, 4, 5}.
L2B = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 0, 2, 0, 0], [0, 0, 1, 0, 2, 3]])
PSLICE = torch.tensor([[0, 2], [2, 3], [5, 4]])  # 9 logits = C + 1 + (G + 1)


def _bags(**kw):
    kw.setdefault("seed", 0)
    return build_head("bags", 8, 5, label2binlabel=L2B, pred_slice=PSLICE, **kw)


def test_bags_tables_valid_and_real_lvis_tables_pass(external_data):
    L.validate_bags_tables(L2B, PSLICE, 5)
    root = external_data / "bags" / "BUPT-PRIV_BalancedGroupSoftmax@lvis" / "data" / "lvis"
    l2b = torch.load(root / "label2binlabel.pt", weights_only=True)
    ps = torch.load(root / "pred_slice_with0.pt", weights_only=True)
    L.validate_bags_tables(l2b, ps, 1230)
    assert L.bags_num_logits(ps) == 1236
    # LVIS v1 table is 1231 wide for 1203 classes: refused for either class count
    l2b1 = torch.load(root / "lvis_v1" / "label2binlabel.pt", weights_only=True)
    ps1 = torch.load(root / "lvis_v1" / "pred_slice_with0.pt", weights_only=True)
    for c in (1203, 1230):
        with pytest.raises(ValueError):
            L.validate_bags_tables(l2b1, ps1, c)


def test_defect1_ranks_from_zero_and_one_logit_bg_group_are_refused():
    zero_based = L2B.clone()
    zero_based[1] = torch.tensor([0, 0, 0, 1, 0, 0])  # class 1 numbered 0: collides with others
    with pytest.raises(ValueError, match="exactly one object group|ranks"):
        L.validate_bags_tables(zero_based, PSLICE, 5)
    one_logit_bg = torch.tensor([[0, 1], [1, 3], [4, 4]])
    with pytest.raises(ValueError, match="pred_slice"):
        L.validate_bags_tables(L2B, one_logit_bg, 5)
    with pytest.raises(DataError):
        build_head("bags", 8, 5, label2binlabel=zero_based, pred_slice=PSLICE)


def test_defect2_background_last_tables_are_refused_and_head_agrees_with_table():
    # a table written for background = last label (column 5 = bg, classes in columns 0..4)
    bg_last = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 0, 2, 0, 0, 0], [0, 1, 0, 2, 3, 0]])
    with pytest.raises(ValueError, match="background"):
        L.validate_bags_tables(bg_last, PSLICE, 5)
    head = _bags()
    remapped = L.remap_labels(torch.arange(6), head.label2binlabel)  # (G+1, C+1)
    assert remapped[:, 0].tolist() == [0, 0, 0]  # background -> 0 in every group
    slots = L.bags_class_slots(head.pred_slice, head.label2binlabel)
    for i in range(1, 6):  # label i's logit slot is read from column i of the table
        k = int((L2B[1:, i] > 0).nonzero()) + 1
        assert slots[i - 1] == PSLICE[k, 0] + L2B[k, i]
    logits = torch.zeros(2, 9)
    logits[0, 0] = 20.0  # row 0: group 0 says background
    logits[1, 1] = 20.0  # row 1: group 0 says object
    s = head.scores(logits)
    assert s[0, 0] > 0.99 and s[1, 0] < 0.01  # scores column 0 is background


def test_remap_labels_background_and_first_class_of_each_group():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    r = L.remap_labels(labels, L2B)
    assert r.shape == (3, 6)
    assert r[0].tolist() == [0, 1, 1, 1, 1, 1]
    assert r[1].tolist() == [0, 1, 0, 2, 0, 0]  # first class of group 1 (label 1) -> 1, not 0
    assert r[2].tolist() == [0, 0, 1, 0, 2, 3]  # first class of group 2 (label 2) -> 1


def test_group_probabilities_sum_to_one():
    logits = torch.randn(7, 9) * 3
    probs = L.bags_group_probs(logits, PSLICE)
    for start, length in PSLICE.tolist():
        torch.testing.assert_close(probs[:, start : start + length].sum(1), torch.ones(7))


def test_defect3_scores_are_the_hand_computed_merge_not_a_flat_softmax():
    logits = torch.tensor(
        [
            [
                0.0,
                math.log(3.0),  # group 0: P(bg)=1/4, P(obj)=3/4
                0.0,
                math.log(2.0),
                0.0,  # group 1: others, c1, c3 -> 1/4 1/2 1/4
                0.0,
                0.0,
                math.log(2.0),
                0.0,
            ]
        ]
    )  # group 2: others, c2, c4, c5 -> 1/5 1/5 2/5 1/5
    expected = torch.tensor([[1 / 4, 3 / 4 * 1 / 2, 3 / 4 * 1 / 5, 3 / 4 * 1 / 4, 3 / 4 * 2 / 5, 3 / 4 * 1 / 5]])
    head = _bags()
    torch.testing.assert_close(L.bags_merge_scores(logits, PSLICE, L2B), expected)
    torch.testing.assert_close(head.scores(logits), expected)
    flat = torch.softmax(logits, dim=1)  # what the original used at inference
    assert not torch.allclose(head.scores(logits), flat[:, :6], atol=1e-2)


def test_single_object_group_is_equivalent_to_softmax():
    """With one object group, logits are [a_bg, a_obj, a_oth, z_1..z_C].

    (a) Merged scores rank classes inside a RoI exactly like softmax(z), whatever a_oth is.
    (b) With a_oth = -inf the merge IS a softmax head with logits
        [a_bg, a_obj + log_softmax(z)]; conversely a softmax head with logits s equals BAGS
        with a_bg = s_0, a_obj = logsumexp(s_1..C), z = s_1..C, a_oth = -inf.
    """
    C = 4
    l2b = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 2, 3, 4]])
    ps = torch.tensor([[0, 2], [2, 5]])
    with pytest.warns(UserWarning, match="single object group"):
        head = build_head("bags", 8, C, label2binlabel=l2b, pred_slice=ps)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 7, generator=g) * 2
    merged = head.scores(logits)
    z = logits[:, 3:]
    assert torch.equal(merged[:, 1:].argsort(1), z.argsort(1))
    logits[:, 2] = -float("inf")
    merged = head.scores(logits)
    equiv = torch.cat([logits[:, :1], logits[:, 1:2] + torch.log_softmax(z, 1)], 1)
    torch.testing.assert_close(merged, torch.softmax(equiv, 1))
    s = torch.randn(6, C + 1, generator=g)
    bags_logits = torch.cat(
        [s[:, :1], s[:, 1:].logsumexp(1, keepdim=True), torch.full((6, 1), -float("inf")), s[:, 1:]], 1
    )
    torch.testing.assert_close(head.scores(bags_logits), torch.softmax(s, 1))


def test_sample_others_counts_and_reproducibility():
    gl = torch.tensor([0] * 20 + [1, 2])  # 2 members, 20 others
    keep = L.sample_others(gl, 8, torch.Generator().manual_seed(3))
    assert keep[-2:].all() and int(keep.sum()) == 2 + 16
    again = L.sample_others(gl, 8, torch.Generator().manual_seed(3))
    other = L.sample_others(gl, 8, torch.Generator().manual_seed(4))
    assert torch.equal(keep, again) and not torch.equal(keep, other)
    assert L.sample_others(torch.tensor([0, 0, 1]), 8).all()  # fewer others than 8x: keep all
    assert not L.sample_others(torch.zeros(5, dtype=torch.long), 8).any()


def test_bags_loss_hand_computed_and_empty_group_adds_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 3, 0])  # only group-1 classes: group 2 has no member
    total, per_group, _ = L.bags_loss(logits, labels, L2B, PSLICE, others_sample_ratio=8)
    ce0 = F.cross_entropy(logits[:, 0:2], torch.tensor([0, 1, 1, 0]))
    ce1 = F.cross_entropy(logits[:, 2:5], torch.tensor([0, 1, 2, 0]))  # ratio 8: all others kept
    torch.testing.assert_close(per_group, torch.stack([ce0, ce1, torch.tensor(0.0)]))
    torch.testing.assert_close(total, ce0 + ce1)
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:, 5:].abs().sum() == 0  # the empty group trains nothing


def test_bags_loss_subsamples_others_and_averages_over_kept():
    labels = torch.tensor([2] + [0] * 10)  # 1 member of group 2, 10 others
    logits = torch.zeros(11, 9)
    _, per_group, _ = L.bags_loss(
        logits, labels, L2B, PSLICE, others_sample_ratio=3, generator=torch.Generator().manual_seed(0)
    )
    assert per_group[2].item() == pytest.approx(math.log(4))  # mean over the 4 kept RoIs
    assert per_group[1].item() == 0.0 and per_group[0].item() == pytest.approx(math.log(2))


def test_bags_head_losses_shapes_and_no_foreground():
    head = _bags()
    x = torch.randn(6, 8)
    logits, deltas = head(x)
    assert logits.shape == (6, 9) and deltas.shape == (6, 20)
    labels = torch.tensor([0, 1, 2, 5, 0, 3])
    out = head.losses(logits, deltas, labels, torch.randn(6, 4), (labels > 0).float())
    diagnostics = {f"bags_group{k}_{what}" for k in range(3) for what in ("loss", "kept")}
    assert set(out) == {"loss_cls", "loss_bbox"} | diagnostics and out["loss_bbox"] > 0
    per_group = [out[f"bags_group{k}_loss"].item() for k in range(3)]
    assert out["loss_cls"].item() == pytest.approx(sum(per_group), rel=1e-5)
    assert not any(out[k].requires_grad for k in diagnostics)
    # group 0 keeps all 6 RoIs; group 1 (classes 1, 3) its 2 positives + all 4 others (< 8x)
    assert out["bags_group0_kept"].item() == 6 and out["bags_group1_kept"].item() == 6
    bg = torch.zeros(6, dtype=torch.long)
    out = head.losses(logits, deltas, bg, torch.randn(6, 4), torch.zeros(6))
    assert out["loss_bbox"].item() == 0.0 and torch.isfinite(out["loss_cls"])
    assert out["bags_group1_loss"].item() == 0.0 and out["bags_group2_loss"].item() == 0.0
    assert out["bags_group1_kept"].item() == 0 and out["bags_group2_kept"].item() == 0


def test_defect4_table_whose_groups_cannot_come_from_the_counts_is_refused():
    # VID-like counts (all > 20k) with LVIS's fixed edges: the edges put every class in one
    # bin, yet the table claims two groups.
    table = SimpleNamespace(
        dataset="vid_groups.json",
        cat_ids=[1, 2, 3, 4, 5],
        counts=[21000, 50000, 30000, 90000, 130000],
        edges=[10, 100, 1000],
        groups=[[1, 3], [2, 4, 5]],
        label2binlabel=L2B,
        pred_slice=PSLICE,
    )
    with pytest.raises(DataError, match="cannot come from these counts"):
        check_group_table(table, 5)
    table.edges = [40000]  # edges that do produce {1,3} / {2,4,5} from these counts
    check_group_table(table, 5, [1, 2, 3, 4, 5])
    assert build_head("bags", 8, 5, groups=table).num_logits == 9
    with pytest.raises(DataError, match="category ids differ"):
        check_group_table(table, 5, [1, 2, 3, 4, 6])
    with pytest.raises(DataError, match="5 classes, the detector 4"):
        check_group_table(table, 4)
    # the one builder runs the check: a bags detector for other data is refused
    with pytest.raises(DataError, match="category ids differ"):
        build_model(ModelConfig.tiny(num_classes=5, head="bags"), [1, 2, 3, 4, 6], groups=table)


# ---------------------------------------------------------------- Seesaw
def test_seesaw_reduces_to_cross_entropy_when_factors_are_neutral():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    t = torch.randint(0, 5, (8,), generator=g)
    counts = torch.tensor([1000, 10, 1, 50, 3])
    per = L.seesaw_class_loss(logits, t, counts, p=0.0, q=0.0)
    torch.testing.assert_close(per, F.cross_entropy(logits, t, reduction="none"))
    head = build_head("seesaw", 8, 3, p=0.0, q=0.0)
    x = torch.randn(6, 8, generator=g)
    cls, deltas = head(x)
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    out = head.losses(cls, deltas, labels, torch.zeros(6, 4), (labels > 0).float())
    pos = labels > 0
    expected = (
        F.cross_entropy(cls[pos, :3], labels[pos] - 1, reduction="sum")
        + F.cross_entropy(cls[:, 3:], (labels == 0).long(), reduction="sum")
    ) / 6
    torch.testing.assert_close(out["loss_cls"], expected)


def test_seesaw_mitigation_and_compensation_hand_computed():
    logits = torch.zeros(2, 2)  # equal logits: compensation neutral (ratio exactly 1)
    t = torch.tensor([0, 1])
    counts = torch.tensor([100, 10])  # class 0 frequent, class 1 rare
    w = L.seesaw_weights(logits, t, counts, p=0.8, q=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.1**0.8], [1.0, 1.0]]))
    per = L.seesaw_class_loss(logits, t, counts, p=0.8, q=2.0)
    assert per[0].item() == pytest.approx(math.log(1 + 0.1**0.8), rel=1e-6)  # rare negative damped
    assert per[1].item() == pytest.approx(math.log(2), rel=1e-6)  # no damping on frequent
    # compensation: sample of class 0 whose logit for class 1 is higher by log 3 -> factor 3^q
    logits = torch.tensor([[0.0, math.log(3.0)]])
    w = L.seesaw_weights(logits, torch.tensor([0]), counts, p=0.0, q=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 9.0]]))


def test_seesaw_counts_accumulate_in_training_only_and_scores_layout():
    head = build_head("seesaw", 8, 3)
    cls, deltas = head(torch.randn(5, 8))
    labels = torch.tensor([0, 0, 1, 3, 3])
    head.train()
    head.losses(cls, deltas, labels, torch.zeros(5, 4), (labels > 0).float())
    assert head.cum_samples.tolist() == [2, 1, 0, 2]
    head.eval()
    head.losses(cls, deltas, labels, torch.zeros(5, 4), (labels > 0).float())
    assert head.cum_samples.tolist() == [2, 1, 0, 2]
    assert "cum_samples" in head.state_dict()
    logits = torch.zeros(1, 5)
    logits[0, 4] = math.log(3.0)  # background column of the objectness branch: P(bg) = 3/4
    s = head.scores(logits)
    torch.testing.assert_close(s, torch.tensor([[0.75, 1 / 12, 1 / 12, 1 / 12]]))
    out = head.losses(cls, deltas, torch.zeros(5, dtype=torch.long), torch.zeros(5, 4), torch.zeros(5))
    assert out["loss_bbox"].item() == 0.0 and torch.isfinite(out["loss_cls"])


def test_defect3_detector_inference_uses_the_head_scores(monkeypatch):
    """The RoI head's inference path must take class scores from ``predictor.scores`` (the
    original never called its BAGS merge). A spy scores() that puts 0.9 on class 3 must be
    what comes out of ``detect_video``."""
    from lvod.config import ModelConfig
    from lvod.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(kind="single", depth=18, num_classes=5, head="bags", rpn_test_pre_nms=50, rpn_test_post_nms=20)
    table = SimpleNamespace(
        cat_ids=[1, 2, 3, 4, 5],
        label2binlabel=L2B,
        pred_slice=PSLICE,
        counts=None,
        edges=None,
        groups=[[1, 3], [2, 4, 5]],
    )
    model = build_model(cfg, groups=table).eval()
    predictor = model.detector.roi_head.bbox_head.predictor
    calls = []
    real = predictor.scores

    def spy(cls_logits):
        calls.append(cls_logits.shape)
        merged = real(cls_logits)
        assert merged.shape == (cls_logits.shape[0], 6)
        fixed = torch.zeros_like(merged)
        fixed[:, 0], fixed[:, 3] = 0.1, 0.9
        return fixed

    monkeypatch.setattr(predictor, "scores", spy)
    frame = torch.randn(3, 64, 96)
    dets = list(model.detect_video([(frame, {"img_size": (64, 96), "orig_size": (64, 96)})], 1))
    assert calls and calls[0][1] == 9
    assert len(dets[0]["labels"]) > 0
    assert set(dets[0]["labels"].tolist()) == {3}
    torch.testing.assert_close(dets[0]["scores"], torch.full_like(dets[0]["scores"], 0.9))


def test_bags_head_from_real_group_tables():
    ids, counts = [1, 2, 3, 4, 5], [21000, 50000, 30000, 90000, 130000]
    table = build_groups(ids, counts, method="quantiles", k=2)
    check_group_table(table, 5, ids)
    head = build_head("bags", 8, 5, groups=table, seed=0)
    assert head.num_logits == table.num_logits == 5 + 1 + 2 + 1
    assert torch.equal(head.label2binlabel, table.label2binlabel)
    logits, deltas = head(torch.randn(4, 8))
    assert head.scores(logits).shape == (4, 6)
    with pytest.raises(DataError, match="category ids differ"):
        check_group_table(table, 5, [1, 2, 3, 4, 7])
    # LVIS's fixed edges on VID-like counts: one group only, and the head says so
    lvis_edges = build_groups(ids, counts, method="edges", edges=[10, 100, 1000])
    with pytest.warns(UserWarning, match="single object group"):
        build_head("bags", 8, 5, groups=lvis_edges)


def test_bags_head_from_the_reference_lvis_files(external_data):
    table = import_bags(external_data / "bags" / "BUPT-PRIV_BalancedGroupSoftmax@lvis" / "data" / "lvis")
    head = build_head("bags", 16, table.num_classes, groups=table)
    assert head.num_logits == 1236 and head.num_groups == 4
    s = head.scores(torch.randn(3, 1236))
    assert s.shape == (3, 1231) and bool((s >= 0).all())


def test_head_table_and_config_sections_name_the_same_heads():
    """A head is one class + one HEADS entry + its settings section: the two tables agree,
    and every section's defaults are the head's constructor defaults (one home)."""
    assert set(HEADS) == set(HEAD_SETTINGS)
    assert ModelConfig(head="seesaw").head_settings() == {"p": 0.8, "q": 2.0, "eps": 0.01}
    head = build_head("seesaw", 8, 3, **ModelConfig(head="seesaw").head_settings())
    assert (head.p, head.q, head.eps) == (0.8, 2.0, 0.01)
    assert ModelConfig(head="eqlv2").head_settings() == {"gamma": 12.0, "mu": 0.8, "alpha": 4.0, "test_with_obj": True}
    uses_groups = {name for name, cls in HEADS.items() if cls.uses_groups}
    assert uses_groups == {"bags", "fedloss"}
    for name in HEAD_SETTINGS:
        params = inspect.signature(HEADS[name].__init__).parameters
        settings = ModelConfig(head=name).head_settings()
        assert settings.keys() <= params.keys(), name  # every config key is a constructor argument
        for key, value in settings.items():
            assert params[key].default == value, (name, key)  # with the same default


def test_seesaw_losses_return_detached_parts_beside_loss_cls():
    torch.manual_seed(0)
    head = build_head("seesaw", 8, 3)
    logits, deltas = head(torch.randn(5, 8))
    labels = torch.tensor([0, 1, 2, 0, 3])
    out = head.losses(logits, deltas, labels, torch.randn(5, 4), (labels > 0).float())
    assert set(out) == {"loss_cls", "loss_bbox", "seesaw_classes_loss", "seesaw_objectness_loss"}
    torch.testing.assert_close(out["loss_cls"].detach(), out["seesaw_classes_loss"] + out["seesaw_objectness_loss"])
    assert out["loss_cls"].requires_grad and not out["seesaw_classes_loss"].requires_grad
