"""Tests of the classification heads and their pure loss/score maths (lvod.models.heads/losses)."""
import math

import pytest
import torch
import torch.nn.functional as F

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
    deltas[1, 4] = 0.5          # class 2, coordinate 0
    deltas[2, 3] = 2.0          # class 1, coordinate 3
    deltas[0, :] = 9.0          # background row: must be ignored
    deltas[1, 0:4] = 7.0        # class 1 columns of a class-2 RoI: must be ignored
    labels = torch.tensor([0, 2, 1])
    loss = L.box_regression_loss(deltas, labels, torch.zeros(3, 4), torch.tensor([0.0, 1.0, 1.0]))
    assert loss.item() == pytest.approx((0.125 + 1.5) / 3)  # divided by all sampled RoIs


def test_box_loss_no_foreground_is_zero_and_differentiable():
    deltas = torch.randn(4, 12, requires_grad=True)
    loss = L.box_regression_loss(deltas, torch.zeros(4, dtype=torch.long), torch.randn(4, 4),
                                 torch.zeros(4))
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
