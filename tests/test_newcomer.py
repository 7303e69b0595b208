"""The rough edges a new user hits with the README commands and the everyday CLI (issue 13).

Each test pins one fix so that it cannot come back unnoticed.
"""

import glob
import json
import shutil
from pathlib import Path

import pytest

from lvod.cli import main


def _demo_layout(tmp_path, tiny_vid):
    """An ImageNet-VID-like layout: annotations/ beside Data/VID/ (as the demo data and the
    converter write it); file_name entries are relative to Data/VID."""
    vid, _ = tiny_vid(tmp_path / "Data" / "VID", num_videos=2, num_frames=6, det_images=0)
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "train.json"
    shutil.move(vid, ann)
    return ann


def test_data_check_names_the_real_flag_and_the_folder_that_holds_the_images(tmp_path, tiny_vid, capsys):
    ann = _demo_layout(tmp_path, tiny_vid)
    assert main(["data", "check", str(ann), "--images", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"pass --images {tmp_path / 'Data' / 'VID'}" in out and "--images-root" not in out
    assert main(["data", "check", str(ann), "--images", str(tmp_path / "Data" / "VID")]) == 0
    # nowhere to be found: the hint still names the flag that exists
    assert main(["data", "check", str(ann), "--images", str(tmp_path / "annotations")]) == 1
    out = capsys.readouterr().out
    assert "as --images" in out and "--images-root" not in out


def test_a_parse_error_shows_the_subcommand_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "check", str(tmp_path / "a.json"), "--images-root", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lvod data check") and "unrecognized arguments: --images-root x" in err


def test_data_check_and_stats_count_the_same_tracks(tmp_path, tiny_vid, capsys):
    vid, _ = tiny_vid(tmp_path, num_videos=3, num_frames=6, det_images=0)
    d = json.loads(vid.read_text())
    # a second object in video 1 (new instance id), and a crowd-only instance that is no track
    extra = [dict(a, id=1000 + i, instance_id=7) for i, a in enumerate(d["annotations"]) if a["video_id"] == 1]
    crowd = [dict(a, id=2000 + i, instance_id=8, iscrowd=1) for i, a in enumerate(d["annotations"][:2])]
    d["annotations"] += extra + crowd
    d["tracks"] = [{"id": 1, "category_id": 1, "video_id": 1}]  # a TAO-style record list
    vid.write_text(json.dumps(d))
    assert main(["data", "check", str(vid)]) == 0
    check = capsys.readouterr().out
    assert main(["stats", str(vid), "--out", str(tmp_path / "stats")]) == 0
    summary = json.loads((tmp_path / "stats" / "summary.json").read_text())
    assert summary["tracks"] == 4  # one per video + the second object of video 1
    assert f"tracks {summary['tracks']}\n" in check and "TAO 'tracks' records: 1)" in check
    assert "a track is one object followed through a video" in check


def test_demo_configs_do_not_ask_for_tensorboard_that_command_1_does_not_install():
    from lvod.config import load_config

    repo = Path(__file__).resolve().parents[1]
    configs = sorted(glob.glob(str(repo / "configs" / "demo" / "*.toml")))
    assert configs
    for path in configs:
        assert load_config(path).train.tensorboard is False, path


def test_notebook_kernels_do_not_warn_about_tcp_at_every_run(monkeypatch, tmp_path):
    """papermill gets the kernel option that keeps ipykernel's TCP warning out of the run's
    stderr (the end-to-end check is in tests/test_notebooks.py)."""
    import papermill

    from lvod import notebooks

    seen = {}

    def fake_execute(src, dst, **kw):
        seen.update(kw)
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    notebooks.run_notebook(tmp_path / "x.ipynb", tmp_path / "out", html=False)
    assert seen["extra_arguments"] == ["--IPKernelApp.log_level=ERROR"]


@pytest.mark.parametrize("damage", ["text", "pickle", "object_column", "missing", "dtype", "shape", "lengths"])
def test_a_damaged_results_file_is_a_clear_error(tmp_path, capsys, damage):
    import pickle

    import numpy as np

    path = tmp_path / "r.npz"
    good = {
        "image_id": np.array([1, 2]),
        "category_id": np.array([1, 1]),
        "bbox": np.zeros((2, 4), np.float32),
        "score": np.array([0.5, 0.4], np.float32),
    }
    if damage == "text":
        path.write_text("not an archive")
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"image_id": [1]}))
    else:
        cols = dict(good)
        if damage == "object_column":
            cols["score"] = np.array([0.5, None], dtype=object)
        elif damage == "missing":
            del cols["score"]
        elif damage == "dtype":
            cols["category_id"] = np.array(["a", "b"])
        elif damage == "shape":
            cols["bbox"] = np.zeros(8, np.float32)
        elif damage == "lengths":
            cols["image_id"] = np.array([1, 2, 3])
        with open(path, "wb") as fh:
            np.savez(fh, **cols)
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    assert main(["eval", "--ann", str(ann), "--results", str(path), "--out", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and "lvod test" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


# ----------------------------------------------------------------------------- plots a reader can read


def test_weight_norm_plot_names_the_classes():
    from lvod import plots

    fig = plots.weight_norms({"softmax": [1.0, 2.0, 3.0]}, counts=[5, 50, 500], names=["rare_cls", "mid", "head"])
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["head", "mid", "rare_cls"]  # most to least frequent, by name


def test_instances_plot_has_a_legend_naming_the_groups():
    import pandas as pd

    from lvod import plots
    from lvod.groups import build_groups

    stats = pd.DataFrame({"category_id": [1, 2, 3], "name": ["a", "b", "c"], "boxes": [5, 50, 500]})
    table = build_groups([1, 2, 3], [5, 50, 500], method="edges", edges=(10, 100))
    fig = plots.instances_per_class(stats, table)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["rare [0, 10)", "common [10, 100)", "frequent [100, inf)"]


def test_frames_draw_ground_truth_dashed_and_keep_labels_apart():
    import numpy as np

    from lvod import plots

    image = np.zeros((100, 200, 3), np.uint8)
    # three detections on the same spot: their labels would print on top of each other
    boxes = np.array([[10, 40, 60, 80]] * 3, float)
    fig = plots.draw_frame(
        image,
        boxes,
        [1, 2, 1],
        [0.9, 0.8, 0.1],
        ["bg", "cat", "dog"],
        gt_boxes=np.array([[12, 42, 58, 78]], float),
        gt_labels=[1],
        score_thr=0.3,
    )
    ax = fig.axes[0]
    styles = sorted((p.get_linestyle(), p.get_edgecolor()[:3]) for p in ax.patches)
    assert styles == [("--", (1.0, 1.0, 1.0)), ("solid", (0.0, 1.0, 0.0)), ("solid", (0.0, 1.0, 0.0))]  # 1 GT, 2 kept
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert set(texts) == {"GT cat", "cat 0.90", "dog 0.80"}
    assert texts["cat 0.90"][1] != texts["dog 0.80"][1]  # moved apart
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["detection", "ground truth"]


def test_an_old_config_with_max_keep_iter_ckpts_still_loads(tmp_path):
    from lvod.config import load_config

    cfg = tmp_path / "old.toml"
    cfg.write_text("[train]\nmax_keep_iter_ckpts = 3\n")
    with pytest.warns(FutureWarning, match="max_keep_iter_ckpts is gone"):
        c = load_config(cfg)
    assert c.train.keep_checkpoints == []
