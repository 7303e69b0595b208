"""A checkpoint carries its classes (and group table), so ``lvod infer`` / ``lvod test`` work
from any folder with only the checkpoint and the config (issue 13, item 3).

A tiny run is trained in a work folder whose config names its data and groups file by
*relative* paths; the commands then run from an empty folder, where neither is reachable.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from lvod.cli import main
from lvod.engine.checkpointing import load_checkpoint, save_checkpoint
from lvod.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
[data]
root = "data"
train = [{{ann_file = "vid.json", images_root = ".", key_frames_only = false}}]
val = {{ann_file = "vid.json", images_root = "."}}
img_scale = [128, 96]
workers_per_gpu = 0
num_ref_frames = 0
[model]
kind = "single"
depth = 18
num_classes = 2
neck_channels = 32
rpn_channels = 32
fc_channels = 64
rpn_train_pre_nms = 200
rpn_train_post_nms = 50
rpn_test_pre_nms = 100
rpn_test_post_nms = 20
test_max_dets = 20
{model_extra}
[train]
epochs = 1
stop_after_iters = 1
warmup_iters = 1
progress_bar = false
tensorboard = false
amp = false
[test]
workers = 0
"""


def _trained_run(tmp_path, tiny_vid, monkeypatch, name, model_extra=""):
    """Train one iteration in ``tmp_path/name`` (its cwd at the time); returns
    ``(config path, checkpoint path, work folder, frames folder)``."""
    work = tmp_path / name
    tiny_vid(work / "data", num_videos=1, num_frames=3, size=(128, 96))
    frames = tmp_path / f"{name}_frames"
    frames.mkdir()
    for f in range(2):
        shutil.copy(work / "data" / "vid" / f"v0_{f:03d}.png", frames / f"{f:03d}.png")
    cfg = work / "tiny.toml"
    cfg.write_text(CONFIG.format(model_extra=model_extra))
    monkeypatch.chdir(work)
    assert main(["train", "tiny.toml", "--work-dir", "run"]) == 0
    return cfg, work / "run" / "latest.pth", work, frames


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty folder to run the commands in."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return lambda: monkeypatch.chdir(d) or d


def test_infer_and_test_from_another_folder_use_the_checkpoints_classes(
    tmp_path, tiny_vid, monkeypatch, elsewhere, capsys
):
    cfg, ckpt, work, frames = _trained_run(tmp_path, tiny_vid, monkeypatch, "softmax")
    stored = load_checkpoint(ckpt)
    assert stored["classes"]["cat_ids"] == [1, 2] and stored["classes"]["names"] == ["cat_a", "cat_b"]
    assert stored["classes"]["ann_file"] == "data/vid.json" and "groups" not in stored  # no groups_file set
    capsys.readouterr()

    here = elsewhere()
    assert not (here / "data").exists()  # data.root = "data" is not reachable from here
    args = ["infer", str(cfg), str(frames), "--checkpoint", str(ckpt), "--out", "o", "--device", "cpu"]
    assert main([*args, "--score-thr", "0"]) == 0
    out = capsys.readouterr().out
    assert "class names from checkpoint" in out
    doc = json.loads((here / "o" / "detections.json").read_text())
    assert [(c["category_id"], c["name"]) for c in doc["classes"]] == [(1, "cat_a"), (2, "cat_b")]
    assert doc["class_names_from"] == "checkpoint"
    assert all(n in ("cat_a", "cat_b") for f in doc["frames"] for n in f["names"])

    # lvod test: the config plus where its data lives; the table names the classes
    root = f"data.root={(work / 'data').as_posix()}"
    assert main(["test", str(cfg), "--checkpoint", str(ckpt), "--out", "r.json", "--device", "cpu", root]) == 0
    out = capsys.readouterr().out
    assert "| cat_a " in out and "| cat_b " in out and (here / "metrics.json").exists()

    # an annotation file with other categories is refused, naming file, checkpoint and category
    other = json.loads((work / "data" / "vid.json").read_text())
    other["categories"] = [{"id": 1, "name": "cat_a"}, {"id": 2, "name": "dog"}]
    (work / "data" / "other.json").write_text(json.dumps(other))
    bad = ["test", str(cfg), "--checkpoint", str(ckpt), "--out", "r2.json", "--device", "cpu", root]
    assert main([*bad, "data.val.ann_file=other.json"]) == 1
    err = capsys.readouterr().err
    assert str(work / "data" / "other.json") in err and str(ckpt) in err
    assert "category 2 in ascending id order is id 2 'dog' here but id 2 'cat_b' in the checkpoint" in err
    assert not (here / "r2.npz").exists()  # refused before inference
    from lvod.engine.test import test_model

    other["categories"] = [{"id": 1, "name": "cat_a"}, {"id": 3, "name": "cat_b"}]
    for a in other["annotations"]:
        a["category_id"] = 1 if a["category_id"] == 1 else 3
    (work / "data" / "other.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match=r"is id 3 'cat_b' here but id 2 'cat_b'"):
        test_model(cfg, ckpt, out="r3.json", device="cpu", overrides=[root, "data.val.ann_file=other.json"])


def test_an_old_checkpoint_without_classes_says_where_its_names_come_from(
    tmp_path, tiny_vid, monkeypatch, elsewhere, capsys
):
    cfg, ckpt, work, frames = _trained_run(tmp_path, tiny_vid, monkeypatch, "old")
    state = load_checkpoint(ckpt)
    del state["classes"]
    old = save_checkpoint(state, work / "run" / "old.pth")
    args = ["infer", str(cfg), str(frames), "--checkpoint", str(old), "--out", "o", "--device", "cpu"]

    # where data.val.ann_file is reachable: its names, with a warning that says so (today's behaviour)
    with pytest.warns(UserWarning, match="carries no class list"):
        assert main(args) == 0
    assert "class names from data/vid.json (data.val.ann_file)" in capsys.readouterr().out

    elsewhere()
    with pytest.warns(UserWarning, match=r"carries no class list .* not reachable .* class_1\.\.class_2"):
        assert main(args) == 0
    assert "class names from none (data.val.ann_file data/vid.json is not reachable" in capsys.readouterr().out
    doc = json.loads((tmp_path / "elsewhere" / "o" / "detections.json").read_text())
    assert [c["name"] for c in doc["classes"]] == ["class_1", "class_2"]

    # lvod test on an old checkpoint: no class list to compare, the split's categories are assumed
    root = f"data.root={(work / 'data').as_posix()}"
    assert main(["test", str(cfg), "--checkpoint", str(old), "--out", "r.json", "--device", "cpu", root]) == 0


def test_a_bags_run_infers_and_tests_without_its_groups_file(
    tmp_path, tiny_vid, monkeypatch, elsewhere, capsys, caplog
):
    from lvod import bags_io
    from lvod.groups import build_groups

    work = tmp_path / "bags"
    work.mkdir()
    bags_io.save_groups(build_groups([1, 2], [30, 5], method="edges", edges=[10]), work / "groups.json")
    extra = 'head = "bags"\ngroups_file = "groups.json"\n'
    cfg, ckpt, work, frames = _trained_run(tmp_path, tiny_vid, monkeypatch, "bags", extra)
    stored = load_checkpoint(ckpt)
    assert stored["groups"] == bags_io.groups_to_dict(bags_io.load_groups(work / "groups.json"))
    capsys.readouterr()

    here = elsewhere()
    assert not (here / "groups.json").exists()
    assert main(["infer", str(cfg), str(frames), "--checkpoint", str(ckpt), "--out", "o", "--device", "cpu"]) == 0
    assert "class names from checkpoint" in capsys.readouterr().out
    assert [c["name"] for c in json.loads((here / "o" / "detections.json").read_text())["classes"]] == [
        "cat_a",
        "cat_b",
    ]
    root = f"data.root={(work / 'data').as_posix()}"
    assert main(["test", str(cfg), "--checkpoint", str(ckpt), "--out", "r.json", "--device", "cpu", root]) == 0
    out = capsys.readouterr().out
    assert "| g1 [0, 10) " in out and "| g2 [10, inf) " in out  # per-group AP by the checkpoint's table

    # the same weights without the stored table need the groups file, which is not here
    state = load_checkpoint(ckpt)
    del state["groups"]
    old = save_checkpoint(state, tmp_path / "old_bags.pth")
    assert main(["infer", str(cfg), str(frames), "--checkpoint", str(old), "--out", "o2", "--device", "cpu"]) == 1
    assert "groups.json" in capsys.readouterr().err

    # a groups.json that is reachable but holds another table: the checkpoint's is used, with a warning
    bags_io.save_groups(build_groups([1, 2], [30, 5], method="edges", edges=[20]), here / "groups.json")
    from lvod.engine.test import test_model

    with caplog.at_level(logging.WARNING, logger="lvod.engine.test"):
        m = test_model(cfg, ckpt, out="r2.json", device="cpu", overrides=[root], progress=False)
    assert [g["bin"] for g in m["groups"]] == ["[0, 10)", "[10, inf)"]
    assert "differs from the group table" in caplog.text and "--groups groups.json" in caplog.text


def test_a_checkpoint_for_another_number_of_classes_is_refused_by_name(tmp_path, tiny_detector_config):
    from lvod.config import load_config
    from lvod.engine.inference import load_model

    cfg = load_config(tiny_detector_config(tmp_path / "c.toml", kind="single", root=tmp_path, num_classes=3))
    path = save_checkpoint(
        {"model": {}, "classes": {"cat_ids": [1, 2], "names": ["a", "b"]}}, tmp_path / "two_classes.pth"
    )
    with pytest.raises(DataError, match=r"trained on 2 classes, the config's model.num_classes is 3"):
        load_model(cfg, path)
    assert torch.load(path, weights_only=True)["classes"]["names"] == ["a", "b"]
