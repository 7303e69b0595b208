"""Long-tailed split of a CocoVID training file (lvod.data.longtail; its maths in
lvod.data.longtail_select): the profile formulas, the selection on a generated
ImageNet-VID-sized file (3,862 videos, 30 classes, 1-3 classes per video) and its DET
companion, the demo data, byte-identical outputs, whole videos only, the report of unmet
targets and the errors.

Budget: about 15 s (the demo data, shared with other test files, is about 8 s of it).
"""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lvod.data.cocovid import load_cocovid
from lvod.data.longtail import make_longtail_split, write_longtail_split
from lvod.data.longtail_select import (
    class_membership,
    explain_classes,
    profile_targets,
    profile_values,
    rank_classes,
    select_items,
)
from lvod.errors import DataError

N_VIDEOS, N_CLASSES = 3862, 30


def _ann(anns, image_id, video_id, cat, j=0, crowd=False):
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": image_id,
            "video_id": video_id,
            "category_id": cat,
            "instance_id": j,
            "bbox": [4 + j, 4, 20, 16],
            "area": 320,
            "iscrowd": crowd,
            "occluded": False,
            "generated": False,
        }
    )


def vid_sized(path: Path, seed: int = 7) -> Path:
    """A CocoVID train file shaped like ImageNet VID: 3,862 videos, 30 classes whose video
    counts fall about 8x from head to tail, 80/16/4 % of videos with 1/2/3 classes, 2
    annotated frames per video and an empty third frame in every fifth video."""
    rng = np.random.default_rng(seed)
    weights = 8.0 ** (-np.arange(N_CLASSES) / (N_CLASSES - 1))
    p = weights[rng.permutation(N_CLASSES)] / weights.sum()
    videos, images, anns = [], [], []
    for v in range(1, N_VIDEOS + 1):
        classes = rng.choice(N_CLASSES, size=rng.choice([1, 2, 3], p=[0.8, 0.16, 0.04]), replace=False, p=p)
        videos.append({"id": v, "name": f"train/ILSVRC2015_train_{v:08d}"})
        for f in range(3 if v % 5 == 0 else 2):
            images.append(
                {
                    "id": len(images) + 1,
                    "file_name": f"train/ILSVRC2015_train_{v:08d}/{f:06d}.JPEG",
                    "width": 64,
                    "height": 48,
                    "video_id": v,
                    "frame_id": f,
                    "is_vid_train_frame": f == 0,
                }
            )
            for j, c in enumerate(classes.tolist() if f < 2 else []):
                _ann(anns, images[-1]["id"], v, c + 1, j)
    cats = [{"id": c + 1, "name": f"class_{c + 1:02d}"} for c in range(N_CLASSES)]
    path.write_text(
        json.dumps(
            {"info": {"note": "synthetic"}, "categories": cats, "videos": videos, "images": images, "annotations": anns}
        )
    )
    return path


def det_file(path: Path, n_images: int = 3000, seed: int = 3) -> Path:
    """A plain-COCO DET file of the same 30 classes (no video fields), 1-2 classes per image."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"train/det_{i:06d}.JPEG", "width": 64, "height": 48})
        for c in rng.choice(N_CLASSES, size=rng.choice([1, 2], p=[0.9, 0.1]), replace=False).tolist():
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": c + 1,
                    "bbox": [1, 1, 9, 9],
                    "area": 81,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c + 1, "name": f"class_{c + 1:02d}"} for c in range(N_CLASSES)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def read_table(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def vid(tmp_path_factory):
    """The VID-sized file, its DET file, and the split written twice with seed 0 and once with seed 1."""
    root = tmp_path_factory.mktemp("longtail")
    train, det = vid_sized(root / "imagenet_vid_train.json"), det_file(root / "imagenet_det_30cls.json")
    runs = {
        name: write_longtail_split(train, root / name, ratio=100, profile="exp", seed=seed, det_json=det)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    }
    return {"root": root, "train": train, "det": det, **runs}


# ----------------------------------------------------------------------------- the maths


def test_profile_formulas():
    assert profile_targets(1000, 3, 100, "exp").tolist() == [1000, 100, 10]
    # pareto: n_i = n_max (i + 1) ** -(ln r / ln C): 1000 * 2 ** -4.19 = 54.6
    assert profile_targets(1000, 3, 100, "pareto").tolist() == [1000, 55, 10]
    for profile in ("exp", "pareto"):
        values = profile_values(375, 30, 100, profile)
        assert values[0] == pytest.approx(375) and values[-1] == pytest.approx(3.75)
        assert np.all(np.diff(values) < 0)
    # rounded half up and never below one; one class gets n_max
    assert profile_targets(25, 12, 100, "exp").tolist()[-4:] == [1, 1, 1, 1]
    assert profile_targets(7, 1, 100, "exp").tolist() == [7]
    assert profile_targets(10, 2, 4, "exp").tolist() == [10, 3]  # 2.5 -> 3
    # pareto lies below exp between the ends: it drops fast at the head, then flattens
    exp, par = profile_values(375, 30, 100, "exp"), profile_values(375, 30, 100, "pareto")
    assert np.all(par[1:-1] < exp[1:-1]) and par[-2] / par[-1] < exp[-2] / exp[-1]


def test_rank_breaks_ties_by_category_id():
    assert rank_classes([5, 9, 5, 1], [4, 3, 2, 1]).tolist() == [1, 2, 0, 3]


def test_membership_counts_each_class_once_per_video_and_skips_crowd(tmp_path):
    anns = []
    _ann(anns, 1, 1, 1)
    _ann(anns, 2, 1, 1)
    _ann(anns, 2, 1, 2, j=1)
    _ann(anns, 3, 2, 2, crowd=True)  # a crowd box is not a training target
    images = [
        {"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48, "video_id": v, "frame_id": f}
        for i, v, f in ((1, 1, 0), (2, 1, 1), (3, 2, 0))
    ]
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                "videos": [{"id": 1, "name": "v1"}, {"id": 2, "name": "v2"}],
                "images": images,
                "annotations": anns,
            }
        )
    )
    ids, members, boxes = class_membership(load_cocovid(path))
    assert ids.tolist() == [1, 2]
    assert members.tolist() == [[True, True], [False, False]]
    assert boxes.tolist() == [[2, 1], [0, 0]]


def test_select_keeps_a_frequent_class_near_target_despite_multi_class_videos():
    # class 0 (rare, processed first) has 10 videos, 5 of them shared with class 1; class 1
    # also has 20 videos of its own. A blind draw of 5 class-0 videos brings 2.5 shared
    # ones on average, above class 1's target of 1.
    members = np.zeros((25, 2), bool)
    members[:10, 0] = True
    members[5:25, 1] = True
    for seed in range(20):
        sel = select_items(members, [5, 1], [0, 1], np.random.default_rng(seed))
        assert sel.after.tolist() == [5, 1], seed
        assert sel.kept.sum() == 5


def test_select_reports_a_forced_overshoot():
    # every video holds both classes: the rare class draws 6, the repair gives one back
    # (the rare class stays within one of its target), the other stays 3 above its target
    members = np.ones((6, 2), bool)
    sel = select_items(members, [6, 2], [0, 1], np.random.default_rng(0))
    assert sel.after.tolist() == [5, 5]
    reasons = explain_classes(members, sel, [6, 2], [6, 6], ["rare", "head"])
    assert reasons[0] == ""
    assert reasons[1].startswith("5 of its kept videos were kept for other classes (rare: 5)")


# ----------------------------------------------------------------------------- VID-sized file


def test_same_seed_gives_byte_identical_files_and_another_seed_another_split(vid):
    files_a, files_b, files_c = (vid[k]["files"] for k in "abc")
    assert set(files_a) == {
        "train_json",
        "kept_videos",
        "class_table",
        "det_json",
        "kept_det_images",
        "det_class_table",
        "split",
    }
    for key, path in files_a.items():
        assert path.read_bytes() == files_b[key].read_bytes(), key
    assert files_a["kept_videos"].read_bytes() != files_c["kept_videos"].read_bytes()
    assert files_a["kept_det_images"].read_bytes() != files_c["kept_det_images"].read_bytes()
    assert files_a["train_json"].name == "imagenet_vid_train_lt100.json"
    assert files_a["det_json"].name == "imagenet_det_30cls_lt100.json"


def test_vid_sized_counts_follow_the_profile_within_one_video(vid):
    rows = read_table(vid["a"]["files"]["class_table"])
    assert len(rows) == N_CLASSES and [int(r["rank"]) for r in rows] == list(range(N_CLASSES))
    before = [int(r["videos_before"]) for r in rows]
    assert before == sorted(before, reverse=True)
    targets = profile_targets(before[0], N_CLASSES, 100, "exp").tolist()
    assert [int(r["target"]) for r in rows] == targets
    for r in rows:
        after, target = int(r["videos_after"]), int(r["target"])
        assert after >= 1 and abs(after - target) <= 1 and r["met"] == "yes" and r["reason"] == "", r
    # the table is what the written file holds
    _, members, boxes = class_membership(load_cocovid(vid["a"]["files"]["train_json"]))
    by_id = {int(r["cat_id"]): r for r in rows}
    for c in range(N_CLASSES):
        assert members[:, c].sum() == int(by_id[c + 1]["videos_after"])
        assert boxes[:, c].sum() == int(by_id[c + 1]["boxes_after"])
    summary = vid["a"]["summary"]
    after = [int(r["videos_after"]) for r in rows]
    assert summary["achieved_ratio"] == pytest.approx(max(after) / min(after), abs=1e-3)
    assert 85 <= summary["achieved_ratio"] <= 115  # requested 100
    saved = json.loads(vid["a"]["files"]["split"].read_text())
    assert saved == summary
    assert saved["parameters"]["ratio"] == 100 and saved["parameters"]["profile"] == "exp"
    assert saved["vid"]["classes_not_met"] == [] and saved["vid"]["max_deviation"] <= 1
    assert saved["sources"]["train"]["file"] == "imagenet_vid_train.json"
    assert len(saved["sources"]["train"]["sha256"]) == 64


def test_kept_videos_are_whole_and_records_unchanged(vid):
    src = json.loads(vid["train"].read_text())
    out = json.loads(vid["a"]["files"]["train_json"].read_text())
    assert list(out) == list(src) and out["categories"] == src["categories"] and out["info"] == src["info"]
    lines = vid["a"]["files"]["kept_videos"].read_text().splitlines()
    assert lines[0] == "video_id\tname"
    kept = {int(line.split("\t")[0]) for line in lines[1:]}
    assert kept == {v["id"] for v in out["videos"]} and 0 < len(kept) < N_VIDEOS
    assert [v for v in src["videos"] if v["id"] in kept] == out["videos"]
    kept_images = {im["id"] for im in src["images"] if im["video_id"] in kept}
    assert [im for im in src["images"] if im["id"] in kept_images] == out["images"]  # every frame, as it was
    assert [a for a in src["annotations"] if a["image_id"] in kept_images] == out["annotations"]
    assert vid["a"]["summary"]["vid"]["counts"]["videos_after"] == len(kept)


def test_output_loads_without_repairs(vid):
    for key in ("train_json", "det_json"):
        cv = load_cocovid(vid["a"]["files"][key], strict=True)
        assert not cv.report.repairs and cv.num_images > 0
    assert not load_cocovid(vid["a"]["files"]["train_json"]).report.notes


def test_det_images_follow_the_vid_ranking_with_their_own_n_max(vid):
    vid_rows = read_table(vid["a"]["files"]["class_table"])
    det_rows = read_table(vid["a"]["files"]["det_class_table"])
    assert [r["cat_id"] for r in det_rows] == [r["cat_id"] for r in vid_rows]  # same ranking
    n_max = max(int(r["images_before"]) for r in det_rows)
    assert [int(r["target"]) for r in det_rows] == profile_targets(n_max, N_CLASSES, 100, "exp").tolist()
    for r in det_rows:
        after, target = int(r["images_after"]), int(r["target"])
        if r["met"] == "yes":
            assert abs(after - target) <= 1
        else:
            assert r["reason"] == f"the input has only {r['images_before']} images" and after == int(r["images_before"])
    out = json.loads(vid["a"]["files"]["det_json"].read_text())
    listed = [int(line.split("\t")[0]) for line in vid["a"]["files"]["kept_det_images"].read_text().splitlines()[1:]]
    assert listed == sorted(im["id"] for im in out["images"]) and "videos" not in out


def test_pareto_profile_on_the_vid_sized_file(vid, tmp_path):
    res = write_longtail_split(vid["train"], tmp_path, ratio=100, profile="pareto", seed=0)
    rows = read_table(res["files"]["class_table"])
    assert all(abs(int(r["videos_after"]) - int(r["target"])) <= 1 for r in rows)
    assert int(rows[1]["target"]) < int(read_table(vid["a"]["files"]["class_table"])[1]["target"])
    assert 85 <= res["summary"]["achieved_ratio"] <= 115
    assert "det_json" not in res["files"] and res["summary"]["det"] is None


# ----------------------------------------------------------------------------- demo data and reports


def test_demo_split_keeps_whole_videos_and_every_class(demo_data, tmp_path, capsys):
    res = write_longtail_split(demo_data["train_json"], tmp_path, ratio=100, profile="exp", seed=0)
    assert capsys.readouterr().out == ""  # the library never prints
    rows = read_table(res["files"]["class_table"])
    assert len(rows) == 12
    for r in rows:
        assert int(r["videos_after"]) >= 1
        assert (r["met"] == "yes") == (abs(int(r["videos_after"]) - int(r["target"])) <= 1)
        assert (r["met"] == "yes") == (r["reason"] == ""), r
    src = load_cocovid(demo_data["train_json"])
    out = load_cocovid(res["files"]["train_json"], strict=True)
    assert len(out.videos) < len(src.videos)
    src_frames = {int(v["id"]): src.img_ids[src.frame_rows(v["id"])].tolist() for v in src.videos}
    for v in out.videos:
        assert out.img_ids[out.frame_rows(v["id"])].tolist() == src_frames[int(v["id"])]


def test_report_flags_targets_the_data_cannot_meet(tmp_path):
    anns, images = [], []
    videos = [{"id": v, "name": f"v{v}"} for v in range(1, 24)]
    for v in range(1, 24):  # class 1 in 20 videos, class 2 in 3; class 3 in none
        images.append({"id": v, "file_name": f"{v}.jpg", "width": 64, "height": 48, "video_id": v, "frame_id": 0})
        _ann(anns, v, v, 1 if v <= 20 else 2)
    cats = [{"id": 1, "name": "often"}, {"id": 2, "name": "seldom"}, {"id": 3, "name": "never"}]
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"categories": cats, "videos": videos, "images": images, "annotations": anns}))
    split = make_longtail_split(load_cocovid(path), ratio=2, profile="exp", seed=0)
    rows = {r["name"]: r for r in split.vid.rows()}
    assert (rows["often"]["target"], rows["often"]["videos_after"], rows["often"]["met"]) == (20, 20, "yes")
    assert (rows["seldom"]["target"], rows["seldom"]["videos_after"]) == (10, 3)
    assert rows["seldom"]["met"] == "no" and rows["seldom"]["reason"] == "the input has only 3 videos"
    assert rows["never"]["rank"] == 2 and rows["never"]["reason"] == "no training videos in the input"
    assert split.achieved_ratio == pytest.approx(20 / 3)
    assert [c["name"] for c in split.summary()["vid"]["classes_not_met"]] == ["seldom", "never"]


def test_bad_input_raises_data_error(vid, tmp_path):
    for kwargs, word in (
        ({"ratio": 0.5}, "ratio"),
        ({"ratio": math.nan}, "ratio"),
        ({"profile": "linear"}, "profile"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(DataError, match=word):
            write_longtail_split(vid["train"], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()  # checked before anything is written
    empty = tmp_path / "empty.json"
    empty.write_text(
        json.dumps({"categories": [{"id": 1, "name": "a"}], "videos": [], "images": [], "annotations": []})
    )
    with pytest.raises(DataError, match="no videos"):
        write_longtail_split(empty, tmp_path / "y")
    other = tmp_path / "other_det.json"
    other.write_text(
        json.dumps(
            {
                "categories": [{"id": 1, "name": "a"}],
                "annotations": [],
                "images": [{"id": 1, "file_name": "1.jpg", "width": 8, "height": 8}],
            }
        )
    )
    with pytest.raises(DataError, match="category ids"):
        write_longtail_split(vid["train"], tmp_path / "z", det_json=other)


def test_lvod_data_longtail_split_command(demo_data, tmp_path, capsys):
    from lvod.cli import main

    out = tmp_path / "lt"
    assert main(["data", "longtail-split", str(demo_data["train_json"]), "--ratio", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "achieved ratio" in printed and "| cat_id |" in printed
    split = json.loads((out / "split.json").read_text())
    assert split["parameters"]["ratio"] == 10.0 and (out / "kept_videos.txt").is_file()
    assert main(["data", "longtail-split", str(demo_data["train_json"]), "--ratio", "0.5", "--out", str(out)]) == 1
