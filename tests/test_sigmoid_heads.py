"""The sigmoid long-tail heads: EQLv2 and the federated loss (lvod.models.heads / losses).

Expected numbers are computed by hand or with numpy here, never by the code under test.
"""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lvod.config import ModelConfig, config_to_dict, load_config
from lvod.errors import DataError
from lvod.groups import build_groups
from lvod.models import build_model
from lvod.models import sigmoid_losses as L
from lvod.models.heads import build_head
from lvod.models.sigmoid_heads import EqlV2Head, FedLossHead


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def np_bce(z, t):
    s = np_sigmoid(z)
    return -(t * np.log(s) + (1 - t) * np.log(1 - s))


def np_eqlv2_weights(pos, neg, gamma=12.0, mu=0.8, alpha=4.0):
    """EQLv2's per-class weights, written out independently of lvod (neutral before any stats)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    f = np.where(neg > 0, np_sigmoid(gamma * (pos / (neg + 1e-10) - mu)), 1.0)
    return 1 + alpha * (1 - f), f


def np_eqlv2_step(z, labels, pos, neg):
    """One EQLv2 step in numpy: (loss, new pos, new neg) for logits ``z (R, C+1)``."""
    R, K = z.shape
    C = K - 1
    t = np.zeros((R, K))
    for i, lab in enumerate(labels):
        t[i, lab - 1 if lab > 0 else C] = 1
    pw, nw = np_eqlv2_weights(pos, neg)
    w = t * np.append(pw, 1.0) + (1 - t) * np.append(nw, 1.0)
    loss = (w * np_bce(z, t)).sum() / R
    g = np.abs(w * (np_sigmoid(z) - t))[:, :C]
    return loss, pos + (g * t[:, :C]).sum(0), neg + (g * (1 - t[:, :C])).sum(0)


# ------------------------------------------------------------------------------ EQLv2
def test_eqlv2_weights_hand_computed():
    # class 1: ratio 0.8 = mu -> f = 1/2; class 2: never positive -> f(0) = 1/(1+e^9.6);
    # class 3: no statistics yet -> neutral
    pos_w, neg_w = L.eqlv2_weights(torch.tensor([0.8, 0.0, 0.0]), torch.tensor([1.0, 2.0, 0.0]))
    f2 = 1 / (1 + math.exp(9.6))
    torch.testing.assert_close(neg_w, torch.tensor([0.5, f2, 1.0]))
    torch.testing.assert_close(pos_w, torch.tensor([3.0, 1 + 4 * (1 - f2), 1.0]))
    # a frequent class (ratio well above mu) keeps weight ~1 on both sides
    pos_w, neg_w = L.eqlv2_weights(torch.tensor([5.0]), torch.tensor([2.0]))
    assert neg_w.item() == pytest.approx(1.0, abs=1e-6) and pos_w.item() == pytest.approx(1.0, abs=1e-5)


def test_eqlv2_loss_gradient_and_statistics_hand_computed():
    # C = 2, two RoIs: one of class 1 and one background, all logits 0 (every BCE = ln 2)
    f2 = 1 / (1 + math.exp(9.6))
    pos_w, neg_w = L.eqlv2_weights(torch.tensor([0.8, 0.0]), torch.tensor([1.0, 2.0]))
    labels = torch.tensor([1, 0])
    targets = L.eqlv2_targets(labels, 2)
    torch.testing.assert_close(targets, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))  # background = last column
    logits = torch.zeros(2, 3, requires_grad=True)
    loss, weights = L.eqlv2_loss(logits, targets, pos_w, neg_w)
    # weights: RoI 0: positive of class 1 (3), negative of class 2 (f2), background column 1;
    #          RoI 1: negatives of classes 1, 2 (1/2, f2), its background target 1
    torch.testing.assert_close(weights, torch.tensor([[3.0, f2, 1.0], [0.5, f2, 1.0]]))
    assert loss.item() == pytest.approx(math.log(2) * (3 + f2 + 1 + 0.5 + f2 + 1) / 2, rel=1e-6)
    # gradient of the summed loss: w * (sigmoid(0) - t) = w * (1/2 - t)
    grad = L.bce_logit_grad(logits.detach(), targets, weights)
    torch.testing.assert_close(grad, torch.tensor([[-1.5, f2 / 2, 0.5], [0.25, f2 / 2, -0.5]]))
    (loss * 2).backward()  # undo the 1/R: autograd of the summed loss is the analytic gradient
    torch.testing.assert_close(logits.grad, grad)
    pos, neg = L.eqlv2_grad_stats(grad[:, :2], targets[:, :2])
    torch.testing.assert_close(pos, torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(neg, torch.tensor([0.25, f2]))


def test_eqlv2_analytic_gradient_equals_autograd_on_random_logits():
    g = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(7, 5, generator=g)).requires_grad_()
    labels = torch.tensor([0, 1, 4, 2, 0, 4, 3])
    targets = L.eqlv2_targets(labels, 4)
    stats = torch.rand(2, 4, generator=g, dtype=torch.float64) + torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    pos_w, neg_w = L.eqlv2_weights(stats[0], stats[1])
    pw, nw = np_eqlv2_weights(stats[0].numpy(), stats[1].numpy())
    np.testing.assert_allclose(pos_w.numpy(), pw, rtol=1e-12)
    np.testing.assert_allclose(neg_w.numpy(), nw, rtol=1e-12)
    loss, weights = L.eqlv2_loss(logits, targets, pos_w, neg_w)
    (loss * 7).backward()
    torch.testing.assert_close(logits.grad, L.bce_logit_grad(logits.detach(), targets, weights))
    # and the loss itself against numpy
    t = targets.numpy()
    w = t * np.append(pw, 1.0) + (1 - t) * np.append(nw, 1.0)
    assert loss.item() == pytest.approx((w * np_bce(logits.detach().numpy(), t)).sum() / 7, rel=1e-5)


def test_eqlv2_statistics_accumulate_over_two_steps_and_survive_state_dict():
    torch.manual_seed(0)
    head = build_head("eqlv2", 8, 3)
    assert isinstance(head, EqlV2Head) and head.num_logits == 4
    assert head.pos_grad.dtype == torch.float64 and {"pos_grad", "neg_grad"} <= set(head.state_dict())
    head.train()
    pos, neg = np.zeros(3), np.zeros(3)
    batches = [(torch.randn(5, 8), torch.tensor([0, 1, 1, 3, 0])), (torch.randn(4, 8), torch.tensor([2, 0, 1, 0]))]
    for step, (x, labels) in enumerate(batches):
        logits, deltas = head(x)
        if step == 0:  # no statistics yet: every weight is 1
            pw, nw = head.class_weights()
            assert pw.tolist() == [1.0] * 3 and nw.tolist() == [1.0] * 3
        exp_loss, pos, neg = np_eqlv2_step(logits.detach().double().numpy(), labels.tolist(), pos, neg)
        out = head.losses(logits, deltas, labels, torch.zeros(len(labels), 4), (labels > 0).float())
        assert set(out) == {"loss_cls", "loss_bbox"}
        assert out["loss_cls"].item() == pytest.approx(exp_loss, rel=1e-5)
        np.testing.assert_allclose(head.pos_grad.numpy(), pos, rtol=1e-5)
        np.testing.assert_allclose(head.neg_grad.numpy(), neg, rtol=1e-5)
    assert pos[2] > 0 and (head.class_weights()[1] < 1).any()  # step 2 used non-trivial weights
    # evaluation mode leaves the statistics alone
    head.eval()
    logits, deltas = head(torch.randn(3, 8))
    head.losses(logits, deltas, torch.tensor([1, 2, 0]), torch.zeros(3, 4), torch.ones(3))
    np.testing.assert_allclose(head.neg_grad.numpy(), neg, rtol=1e-5)
    # a checkpoint round trip keeps them: the resumed head weights the next batch identically
    fresh = build_head("eqlv2", 8, 3)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh.pos_grad, head.pos_grad) and torch.equal(fresh.neg_grad, head.neg_grad)
    x, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 3, 0])
    a = head.losses(*head(x), labels, torch.zeros(6, 4), (labels > 0).float())["loss_cls"]
    b = fresh.losses(*fresh(x), labels, torch.zeros(6, 4), (labels > 0).float())["loss_cls"]
    assert a.item() == b.item()


def test_eqlv2_scores_layout_and_meaning():
    head = build_head("eqlv2", 8, 3)
    logits = torch.zeros(2, 4)
    logits[0, 3] = math.log(3.0)  # background logit: P(bg) = 3/4
    logits[1, 1] = math.log(3.0)  # class 2: sigmoid 3/4
    s = head.scores(logits)
    assert s.shape == (2, 4)  # (R, C+1), column 0 = background
    torch.testing.assert_close(s[0], torch.tensor([0.75, 0.125, 0.125, 0.125]))
    torch.testing.assert_close(s[1], torch.tensor([0.5, 0.25, 0.375, 0.25]))
    plain = build_head("eqlv2", 8, 3, test_with_obj=False).scores(logits)
    torch.testing.assert_close(plain[0], torch.tensor([0.75, 0.5, 0.5, 0.5]))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 4, generator=g), torch.tensor([[0, 1, 1, 3, 0], [2, 2, 0, 0, 0]][seed % 2])


def test_eqlv2_statistics_are_all_reduced_before_they_accumulate(tmp_path, monkeypatch):
    """Under torch.distributed each step's sums go through all_reduce and the reduced sums are
    what accumulates. A real one-rank gloo group runs the path; then a spy adds what a second
    rank with another batch (and the same weights, as all ranks hold the same statistics)
    would have contributed."""
    zero = np.zeros(3)
    head = build_head("eqlv2", 8, 3).train()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/init", rank=0, world_size=1)
    try:
        z, labels = _batch(0)
        head.cls_loss(z, labels)  # a real all_reduce over one rank: the local sums
        _, pos1, neg1 = np_eqlv2_step(z.double().numpy(), labels.tolist(), zero, zero)
        np.testing.assert_allclose(head.pos_grad.numpy(), pos1, rtol=1e-5)

        z_me, l_me = _batch(2)
        z_other, l_other = _batch(1)
        _, pos_other, neg_other = np_eqlv2_step(z_other.double().numpy(), l_other.tolist(), pos1, neg1)
        seen = []
        real_all_reduce = dist.all_reduce

        def second_rank(t, op=dist.ReduceOp.SUM):
            seen.append(t.clone())
            real_all_reduce(t, op=op)
            t += torch.from_numpy(np.stack([pos_other - pos1, neg_other - neg1])).to(t)

        monkeypatch.setattr(dist, "all_reduce", second_rank)
        head.cls_loss(z_me, l_me)
        _, pos2, neg2 = np_eqlv2_step(z_me.double().numpy(), l_me.tolist(), pos1, neg1)
        assert len(seen) == 1 and seen[0].shape == (2, 3) and seen[0].dtype == torch.float64
        np.testing.assert_allclose(seen[0].numpy(), np.stack([pos2 - pos1, neg2 - neg1]), rtol=1e-5)  # local sums
        np.testing.assert_allclose(head.pos_grad.numpy(), pos2 + pos_other - pos1, rtol=1e-5)
        np.testing.assert_allclose(head.neg_grad.numpy(), neg2 + neg_other - neg1, rtol=1e-5)
    finally:
        dist.destroy_process_group()
    # without a process group nothing is reduced
    head.cls_loss(*_batch(0))
    assert len(seen) == 1


# ---------------------------------------------------------------------- federated loss
def test_fed_class_weights_power_and_zero_counts():
    torch.testing.assert_close(L.fed_class_weights([100, 4, 0, 1]), torch.tensor([10.0, 2.0, 0.0, 1.0]))
    torch.testing.assert_close(L.fed_class_weights([8, 1], power=1 / 3), torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError):
        L.fed_class_weights([3, -1])


def test_fed_loss_classes_keep_batch_classes_and_sample_the_rest():
    weights = L.fed_class_weights([9, 9, 9, 9, 9, 9, 0, 9, 9, 9])
    labels = torch.tensor([0, 1, 3, 3, 5, 0])  # classes 1, 3, 5 -> columns 0, 2, 4
    for seed in range(20):
        torch.manual_seed(seed)
        cls = L.fed_loss_classes(labels, weights, 5)
        assert cls[:3].tolist() == [0, 2, 4] and cls.numel() == 5 and len(set(cls.tolist())) == 5
        assert 6 not in cls.tolist()  # count 0: never a sampled negative
    # fewer classes with a weight than asked for: all of them, no error
    assert sorted(L.fed_loss_classes(labels, weights, 50).tolist()) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    # more batch classes than num_sampled: exactly the batch's classes, nothing sampled
    assert L.fed_loss_classes(labels, weights, 2).tolist() == [0, 2, 4]
    # only background in the batch: negatives only
    assert L.fed_loss_classes(torch.zeros(4, dtype=torch.long), weights, 3).numel() == 3


def test_fed_loss_sampling_is_deterministic_by_seed_and_follows_the_weights():
    weights = L.fed_class_weights([100, 1, 0])  # sqrt counts 10 : 1 : 0
    labels = torch.zeros(3, dtype=torch.long)

    def draws(seed, n=1000):
        torch.manual_seed(seed)
        return [int(L.fed_loss_classes(labels, weights, 1)) for _ in range(n)]

    a, b, c = draws(1), draws(1), draws(2)
    assert a == b and a != c
    assert 2 not in a
    assert a.count(0) / len(a) == pytest.approx(10 / 11, abs=0.03)
    # a private generator gives the same draws as the global one with the same seed
    gen = torch.Generator().manual_seed(1)
    assert [int(L.fed_loss_classes(labels, weights, 1, gen)) for _ in range(50)] == a[:50]


def test_fed_loss_and_gradient_hand_computed():
    # C = 4, RoIs: class 2, background, class 2, background; logits 0 (every BCE = ln 2)
    labels = torch.tensor([2, 0, 2, 0])
    logits = torch.zeros(4, 4, requires_grad=True)
    only_batch = L.fed_loss(logits, labels, torch.tensor([1]))
    assert only_batch.item() == pytest.approx(4 * math.log(2) / 4)
    only_batch.backward()
    expected = torch.zeros(4, 4)
    expected[:, 1] = torch.tensor([-0.5, 0.5, -0.5, 0.5]) / 4  # (sigmoid(0) - t) / R on column 1 only
    torch.testing.assert_close(logits.grad, expected)
    every = L.fed_loss(torch.zeros(4, 4), labels, torch.arange(4))
    assert every.item() == pytest.approx(16 * math.log(2) / 4)
    # numpy check on random logits and a subset of columns
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    t = np.zeros((4, 4))
    t[[0, 2], 1] = 1
    mask = np.array([1.0, 1.0, 0.0, 1.0])
    got = L.fed_loss(z, labels, torch.tensor([1, 0, 3])).item()
    assert got == pytest.approx((np_bce(z.numpy(), t) * mask).sum() / 4, rel=1e-5)


def test_fed_loss_head_counts_prior_scores_and_diagnostic():
    torch.manual_seed(0)
    head = build_head("fedloss", 8, 3, class_counts=[400, 25, 0], num_classes_sampled=2)
    assert isinstance(head, FedLossHead) and head.num_logits == 3  # no background logit
    torch.testing.assert_close(head.sample_weights, torch.tensor([20.0, 5.0, 0.0]))
    torch.testing.assert_close(head.fc_cls.bias, torch.full((3,), math.log(0.01 / 0.99)))
    assert "sample_weights" not in head.state_dict()  # derived from the group table, not trained
    logits, deltas = head(torch.randn(5, 8))
    labels = torch.tensor([0, 3, 3, 0, 0])
    out = head.losses(logits, deltas, labels, torch.zeros(5, 4), (labels > 0).float())
    assert set(out) == {"loss_cls", "loss_bbox", "fedloss_classes"}
    assert out["fedloss_classes"].item() == 2.0 and not out["fedloss_classes"].requires_grad
    s = head.scores(torch.tensor([[math.log(3.0), -math.log(3.0), 0.0], [-9.0, -9.0, -9.0]]))
    assert s.shape == (2, 4)
    torch.testing.assert_close(s[0], torch.tensor([0.25, 0.75, 0.25, 0.5]))
    assert s[1, 0].item() == pytest.approx(1 - 1 / (1 + math.exp(9.0)))  # nothing found: column 0 is the largest
    head.reset_classifier()  # a decoupled re-training starts the classifier at the prior again
    torch.testing.assert_close(head.fc_cls.bias, torch.full((3,), math.log(0.01 / 0.99)))


def test_fed_loss_head_needs_counts_that_fit():
    with pytest.raises(ValueError, match="class_counts"):
        build_head("fedloss", 8, 3)
    with pytest.raises(DataError, match="2 class counts for 3 classes"):
        build_head("fedloss", 8, 3, class_counts=[1, 2])
    ids, counts = [1, 2, 3], [5000, 300, 20]
    table = build_groups(ids, counts, method="quantiles", k=2)
    head = build_head("fedloss", 8, 3, groups=table)
    torch.testing.assert_close(head.sample_weights, torch.tensor(counts, dtype=torch.float).sqrt())
    assert head.counts_basis == "instances"
    on_images = build_groups(ids, counts, method="quantiles", k=2, basis="images")
    assert build_head("fedloss", 8, 3, groups=on_images).counts_basis == "images"
    without_counts = type("T", (), {"dataset": "imported", "counts": None})()
    with pytest.raises(DataError, match="no per-class counts"):
        build_head("fedloss", 8, 3, groups=without_counts)
    # the builder reads the table for fedloss (uses_groups) and refuses to build without one
    with pytest.raises(DataError, match="model.groups_file"):
        build_model(ModelConfig.tiny(num_classes=3, head="fedloss"), ids)


# --------------------------------------------------------- the heads inside a detector
@pytest.mark.parametrize("head", ["eqlv2", "fedloss"])
def test_sigmoid_heads_train_and_detect_inside_a_detector(head, one_thread):
    torch.manual_seed(0)
    ids = [1, 2, 3, 4]
    table = build_groups(ids, [900, 300, 40, 8], method="quantiles", k=2)
    model = build_model(ModelConfig.tiny(kind="single", num_classes=4, head=head), ids, groups=table)
    images = torch.randn(1, 1, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1, 4])}
    ]
    model.train()
    losses = model(images, [(64, 96)], targets)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(loss)
    loss.backward()
    predictor = model.detector.roi_head.bbox_head.predictor
    assert predictor.fc_cls.weight.grad.abs().sum() > 0
    if head == "eqlv2":
        assert predictor.pos_grad[[0, 3]].gt(0).all() and predictor.pos_grad[[1, 2]].eq(0).all()
    model.eval()
    frame = torch.randn(3, 64, 96)
    dets = list(model.detect_video([(frame, {"img_size": (64, 96), "orig_size": (64, 96)})], 1))[0]
    assert 0 < len(dets["scores"]) <= 20  # sigmoid scores pass the 1e-4 threshold; max_dets caps them
    assert bool((dets["scores"] > 1e-4).all()) and bool((dets["scores"] <= 1).all())
    assert set(dets["labels"].tolist()) <= {1, 2, 3, 4}
    assert torch.equal(dets["scores"], dets["scores"].sort(descending=True).values)


# ------------------------------------------------------------------------- config
def test_config_sections_of_the_sigmoid_heads(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('[model]\nhead = "eqlv2"\n[model.eqlv2]\ngamma = 10\nalpha = 2\n')
    cfg = load_config(path)
    assert cfg.model.head_settings() == {"gamma": 10.0, "mu": 0.8, "alpha": 2.0, "test_with_obj": True}
    saved = config_to_dict(cfg)["model"]
    assert "eqlv2" in saved and "fedloss" not in saved and "bags" not in saved
    path.write_text('[model]\nhead = "eqlv2"\n[model.fedloss]\nnum_classes_sampled = 10\n')
    with pytest.raises(DataError, match="model.fedloss"):
        load_config(path)
    path.write_text('[model]\nhead = "fedloss"\n[model.fedloss]\nnum_classes_sampled = 0\n')
    with pytest.raises(DataError, match="num_classes_sampled"):
        load_config(path)
    path.write_text('[model]\nhead = "fedloss"\n[model.fedloss]\nweight_power = "half"\n')
    with pytest.raises(DataError, match="model.fedloss.weight_power"):
        load_config(path)
    assert ModelConfig(head="fedloss").head_settings() == {
        "num_classes_sampled": 50,
        "weight_power": 0.5,
        "prior_prob": 0.01,
    }


@pytest.mark.parametrize("name", ["eqlv2", "fedloss"])
def test_sigmoid_heads_with_no_rois(name, monkeypatch):
    head = build_head(name, 8, 3, **({"class_counts": [5, 5, 5]} if name == "fedloss" else {})).train()
    reduced = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: reduced.append(t.shape))
    logits, deltas = head(torch.zeros(0, 8))
    out = head.losses(logits, deltas, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0))
    assert out["loss_cls"].item() == 0.0 and out["loss_cls"].requires_grad
    if name == "eqlv2":  # still all-reduced, so ranks with and without RoIs stay in step
        assert reduced == [(2, 3)] and head.neg_grad.sum().item() == 0.0


def test_mmdet_eqlv2_classifier_rows_import_unpermuted():
    """mmdet's EQLv2 fc_cls has C+1 rows, background last: lvod's EQLv2 layout, so the
    mmtracking-style importer copies them as they are (a softmax head would move the row)."""
    from lvod.models import checkpoint as ck

    rows = torch.arange(4.0)[:, None].expand(4, 2)  # C = 3: classes 0..2, background last
    assert ck._convert_cls_rows(rows, build_head("eqlv2", 2, 3), "fc_cls.weight", "mmdet") is rows
    assert ck._convert_cls_rows(rows, build_head("softmax", 2, 3), "fc_cls.weight", "mmdet")[0, 0] == 3.0
