"""IoU of xywh boxes: the pairwise matrix and the row-paired vector agree, on hand-made boxes."""

import numpy as np

from lvod.evaluation.boxes import paired_iou_xywh, pairwise_iou_xywh


def test_pairwise_iou_by_hand():
    iou = pairwise_iou_xywh([[0, 0, 10, 10]], [[5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]])
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0]])
    assert pairwise_iou_xywh(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_paired_iou_is_the_diagonal_of_the_pairwise_matrix():
    rng = np.random.default_rng(0)
    a = np.c_[rng.uniform(0, 50, (20, 2)), rng.uniform(0, 30, (20, 2))]
    b = np.c_[rng.uniform(0, 50, (20, 2)), rng.uniform(0, 30, (20, 2))]
    a[3, 2:] = b[3, 2:] = 0  # two empty boxes: no union, IoU 0 (not NaN)
    paired = paired_iou_xywh(a, b)
    assert paired.shape == (20,) and paired[3] == 0.0
    np.testing.assert_allclose(paired, np.diag(pairwise_iou_xywh(a, b)))
    np.testing.assert_allclose(paired_iou_xywh([[0, 0, 10, 10]], [[0, 5, 10, 10]]), [50 / 150])
