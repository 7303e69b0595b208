"""Per-class diagnostics used by notebook 04, on hand-checkable inputs."""

import json

import matplotlib
import matplotlib.container
import numpy as np
import pytest

from lvod import analysis
from lvod.data.cocovid import load_cocovid
from lvod.errors import DataError
from lvod.evaluation.results import Detections


def _gt(tmp_path):
    data = {
        "categories": [{"id": 1, "name": "head"}, {"id": 2, "name": "tail"}],
        "videos": [{"id": 1, "name": "v"}],
        "images": [
            {"id": i, "file_name": f"v/{i}.jpg", "width": 100, "height": 100, "video_id": 1, "frame_id": i - 1}
            for i in (1, 2)
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "video_id": 1,
                "category_id": 1,
                "instance_id": 1,
                "bbox": [0, 0, 10, 10],
                "area": 100,
                "iscrowd": False,
            },
            {
                "id": 2,
                "image_id": 1,
                "video_id": 1,
                "category_id": 2,
                "instance_id": 2,
                "bbox": [50, 50, 20, 20],
                "area": 400,
                "iscrowd": False,
            },
            {
                "id": 3,
                "image_id": 2,
                "video_id": 1,
                "category_id": 2,
                "instance_id": 2,
                "bbox": [52, 50, 20, 20],
                "area": 400,
                "iscrowd": False,
            },
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_cocovid(path)


def test_confusions_counts_right_wrong_and_missed(tmp_path):
    gt = _gt(tmp_path)
    dets = Detections(
        image_id=[1, 1, 1],
        category_id=[1, 1, 2],
        bbox=[[0, 0, 10, 10], [50, 50, 20, 20], [50, 50, 20, 20]],
        score=[0.9, 0.8, 0.5],
    )
    conf = analysis.confusions(gt, dets, score_thr=0.3)
    got = {(r.gt_category_id, r.pred_category_id): r.count for r in conf.itertuples()}
    # head box found as head; tail box on image 1 taken by the higher-scoring head detection;
    # tail box on image 2 has no detection at all
    assert got == {(1, 1): 1, (2, 1): 1, (2, -1): 1}


def test_compare_runs_gain_and_missing_gt_is_nan():
    m = lambda a, b: {
        "classwise": [
            {"category_id": 1, "name": "head", "ap50": a, "num_gt": 5},  # noqa: E731
            {"category_id": 2, "name": "tail", "ap50": b, "num_gt": 3},
            {"category_id": 3, "name": "none", "ap50": -1, "num_gt": 0},
        ]
    }
    frame = analysis.compare_runs({"softmax": m(0.8, 0.2), "bags": m(0.75, 0.5)})
    row = frame.set_index("name")
    assert row.loc["tail", "gain_bags"] == pytest.approx(0.3)
    assert row.loc["head", "gain_bags"] == pytest.approx(-0.05)
    assert np.isnan(row.loc["none", "ap50_bags"])


def test_weight_norms_follow_each_heads_layout():
    from lvod.groups import build_groups

    table = build_groups([1, 2, 3], [500, 50, 5], method="edges", edges=[10, 100])
    # BAGS layout: group0 [bg, obj], then groups in ascending count bins: {3}, {2}, {1}
    # each with an "others" slot first -> rows: 0,1 | 2 others, 3 class3 | 4 others, 5 class2 | 6 others, 7 class1
    w = np.zeros((table.num_logits, 2))
    w[7, 0], w[5, 0], w[3, 0] = 1.0, 2.0, 3.0
    np.testing.assert_allclose(analysis.classifier_weight_norms(w, head="bags", table=table), [1, 2, 3])
    soft = np.array([[9, 0], [1, 0], [0, 2]], dtype=float)
    np.testing.assert_allclose(analysis.classifier_weight_norms(soft, head="softmax"), [1, 2])
    seesaw = np.array([[1, 0], [0, 2], [7, 0], [8, 0]], dtype=float)
    np.testing.assert_allclose(analysis.classifier_weight_norms(seesaw, head="seesaw"), [1, 2])
    eqlv2 = np.array([[1, 0], [0, 2], [7, 0]], dtype=float)  # classes, then the unused background row
    np.testing.assert_allclose(analysis.classifier_weight_norms(eqlv2, head="eqlv2"), [1, 2])
    fed = np.array([[0, 1], [2, 0]], dtype=float)  # one row per class
    np.testing.assert_allclose(analysis.classifier_weight_norms(fed, head="fedloss"), [1, 2])


def test_pick_frames_prefers_rare_classes(tmp_path):
    gt = _gt(tmp_path)
    rows = analysis.pick_frames(gt, 1, rare={2})
    assert gt.img_ids[rows[0]] == 1  # holds the rare class and the most boxes
    boxes, labels, scores = analysis.frame_detections(
        Detections(image_id=[2], category_id=[2], bbox=[[1, 2, 3, 4]], score=[0.5]), 2, gt.cat_ids
    )
    np.testing.assert_allclose(boxes, [[1, 2, 4, 6]])
    assert labels.tolist() == [2]


def _run_folder(tmp_path, model: dict, head="softmax", config=None):
    import torch

    from lvod.evaluation.results import save_results_npz

    (tmp_path / "metrics.json").write_text(json.dumps({"bbox_mAP_50": 0.5, "classwise": []}))
    save_results_npz(
        Detections(image_id=[1], category_id=[2], bbox=[[0, 0, 10, 10]], score=[0.9]), tmp_path / "results.npz"
    )
    torch.save({"model": model, "config": config or {"model": {"head": head}}}, tmp_path / "latest.pth")
    return tmp_path


def test_load_run_reads_metrics_detections_and_weight_norms(tmp_path):
    import torch

    w = torch.tensor([[9.0, 0.0], [3.0, 4.0], [0.0, 2.0]])  # softmax: row 0 background
    run = analysis.load_run(_run_folder(tmp_path, {"roi_head.predictor.fc_cls.weight": w}))
    assert run.head == "softmax" and run.metrics["bbox_mAP_50"] == 0.5 and len(run.dets) == 1
    np.testing.assert_allclose(run.weight_norms, [5.0, 2.0])


def test_load_run_without_classifier_raises_data_error(tmp_path):
    import torch

    from lvod.errors import DataError

    _run_folder(tmp_path, {"backbone.conv1.weight": torch.zeros(2, 3)})
    with pytest.raises(DataError, match="fc_cls.weight") as exc:
        analysis.load_run(tmp_path)
    assert exc.value.file == str(tmp_path / "latest.pth") and exc.value.record == "model" and exc.value.fix
    torch.save({"iter": 3}, tmp_path / "latest.pth")  # not a training checkpoint
    with pytest.raises(DataError, match="no 'model' state dict"):
        analysis.load_run(tmp_path)


@pytest.mark.parametrize("old_layout", [False, True], ids=["current", "old checkpoint config"])
def test_load_run_of_a_bags_head_reads_the_group_table_its_config_names(tmp_path, old_layout):
    """The checkpoint's config is read as lvod.config reads it (old checkpoints migrated):
    a BAGS run finds its group table through model.groups_file (data.groups_file before)."""
    import torch

    from lvod.bags_io import save_groups
    from lvod.groups import build_groups

    table = build_groups([1, 2, 3], [500, 50, 5], method="edges", edges=[10, 100])
    groups = save_groups(table, tmp_path / "groups.json")
    run = tmp_path / "run"
    run.mkdir()
    model = {"model": {"head": "bags", "num_classes": 3, "groups_file": str(groups)}}
    if old_layout:
        model = {"model": {"head": "bags", "num_classes": 3}, "data": {"groups_file": str(groups)}}
    w = torch.zeros(table.num_logits, 2)
    w[7, 0], w[5, 0], w[3, 0] = 1.0, 2.0, 3.0  # class 1, 2, 3 in their groups' slices
    loaded = analysis.load_run(_run_folder(run, {"roi_head.predictor.fc_cls.weight": w}, config=model))
    assert loaded.head == "bags"
    np.testing.assert_allclose(loaded.weight_norms, [1, 2, 3])


def test_intervals_become_error_bars_in_the_group_class_and_gain_plots():
    """metrics with bootstrap intervals -> group/class frames carry them -> the plots draw
    them; a gain bar is coloured only when its paired verdict says so."""
    from lvod import plots

    def m(a50, lo, hi, g_ci):
        return {
            "classwise": [
                {"category_id": 1, "name": "a", "ap50": a50, "ap50_ci": [lo, hi], "num_gt": 3},
                {"category_id": 2, "name": "b", "ap50": 0.5, "ap50_ci": None, "num_gt": 3},
            ],
            "groups": [{"group": "rare", "bin": "[0, 10)", "ap50": a50, "ap50_ci": g_ci}],
        }

    metrics = {"softmax": m(0.6, 0.4, 0.7, [0.4, 0.7]), "bags": m(0.7, 0.5, 0.8, None)}
    lo, hi = analysis.group_frame(metrics, "lo"), analysis.group_frame(metrics, "hi")
    assert list(lo.index) == ["rare [0, 10)"] and lo.loc["rare [0, 10)", "softmax"] == 0.4
    assert np.isnan(hi.loc["rare [0, 10)", "bags"])  # tested without an interval
    fig = plots.grouped_bars(analysis.group_frame(metrics), ylabel="AP@50", title="t", lo=lo, hi=hi)
    bars = [c for c in fig.axes[0].containers if isinstance(c, matplotlib.container.BarContainer)]
    assert bars[0].errorbar is not None and bars[1].errorbar is None  # softmax has bars, bags none
    segments = bars[0].errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segments], [[0.4, 0.7]])

    frame = analysis.compare_runs(metrics, baseline="softmax")
    assert frame["ap50_lo_softmax"].tolist()[0] == 0.4 and np.isnan(frame["ap50_lo_softmax"].tolist()[1])
    frame["train_boxes"] = [5, 500]
    fig = plots.ap_vs_frequency(frame, ["softmax", "bags"])
    assert any(getattr(c, "has_yerr", False) for c in fig.axes[0].containers)

    rows = [
        {"method": "bags", "scope": "class", "key": "a", "diff_ci": [0.05, 0.15], "verdict": "better"},
        {"method": "bags", "scope": "class", "key": "b", "diff_ci": [-0.1, 0.1], "verdict": "unclear"},
    ]
    fig = plots.gain_bars(frame, "bags", "softmax", rows=rows)
    patches = fig.axes[0].patches
    # classes from frequent to rare: b (500 boxes) first, unclear -> grey; a better -> green
    assert patches[0].get_facecolor()[:3] == pytest.approx((0.6, 0.6, 0.6))
    assert patches[1].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb("C2"))


def test_load_run_uses_the_table_in_the_checkpoint_and_a_derived_folder_its_recorded_checkpoint(tmp_path):
    import torch

    from lvod.bags_io import groups_to_dict
    from lvod.groups import build_groups

    table = build_groups([1, 2, 3], [500, 50, 5], method="edges", edges=[10, 100])
    run = tmp_path / "run"
    run.mkdir()
    w = torch.zeros(table.num_logits, 2)
    w[7, 0], w[5, 0], w[3, 0] = 1.0, 2.0, 3.0
    cfg = {"model": {"head": "bags", "num_classes": 3, "groups_file": str(tmp_path / "gone.json")}}
    _run_folder(run, {"roi_head.predictor.fc_cls.weight": w}, config=cfg)
    state = torch.load(run / "latest.pth", weights_only=True)
    torch.save({**state, "groups": groups_to_dict(table)}, run / "latest.pth")
    np.testing.assert_allclose(analysis.load_run(run).weight_norms, [1, 2, 3])  # no groups.json needed
    # a calibrated variant: detections and metrics of its own, the weights of the run it came from
    derived = tmp_path / "run+norcal"
    derived.mkdir()
    (derived / "metrics.json").write_text(
        json.dumps({"classwise": [], "inference": {"checkpoint": str(run / "latest.pth")}})
    )
    (derived / "results.npz").write_bytes((run / "results.npz").read_bytes())
    loaded = analysis.load_run(derived)
    assert loaded.name == "run+norcal" and loaded.head == "bags"
    np.testing.assert_allclose(loaded.weight_norms, [1, 2, 3])
    (derived / "metrics.json").write_text(json.dumps({"classwise": []}))
    with pytest.raises(DataError, match="no checkpoint"):
        analysis.load_run(derived)
