"""Tests for lvod.stats on a hand-made CocoVID file and mmtracking's real demo file.

Every expected number below was counted by hand from the records. Budget: about 2 s.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from lvod.data.cocovid import load_cocovid
from lvod.errors import DataError
from lvod.stats import CLASS_COLUMNS, box_sizes, class_stats, dataset_summary, track_lengths, write_stats


def _ann(i, img, cat, box, inst=None, **flags):
    a = {"id": i, "image_id": img, "category_id": cat, "bbox": box, "iscrowd": False}
    if inst is not None:
        a["instance_id"] = inst
    a.update(flags)
    return a


HAND = {
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "zebra"}],
    "videos": [{"id": 1, "name": "v1"}, {"id": 2, "name": "v2"}],
    "images": [
        {
            "id": 10,
            "file_name": "v1/0.jpg",
            "width": 200,
            "height": 100,
            "video_id": 1,
            "frame_id": 0,
            "is_vid_train_frame": True,
        },
        {
            "id": 11,
            "file_name": "v1/1.jpg",
            "width": 200,
            "height": 100,
            "video_id": 1,
            "frame_id": 1,
            "is_vid_train_frame": False,
        },
        {
            "id": 12,
            "file_name": "v1/2.jpg",
            "width": 200,
            "height": 100,
            "video_id": 1,
            "frame_id": 2,
            "is_vid_train_frame": True,
        },
        {
            "id": 13,
            "file_name": "v1/3.jpg",
            "width": 200,
            "height": 100,
            "video_id": 1,
            "frame_id": 3,
            "is_vid_train_frame": False,
        },
        {
            "id": 20,
            "file_name": "v2/0.jpg",
            "width": 200,
            "height": 100,
            "video_id": 2,
            "frame_id": 0,
            "is_vid_train_frame": True,
        },
        {
            "id": 21,
            "file_name": "v2/1.jpg",
            "width": 200,
            "height": 100,
            "video_id": 2,
            "frame_id": 1,
            "is_vid_train_frame": True,
        },
    ],
    "annotations": [
        _ann(1, 10, 1, [0, 0, 10, 10], inst=1),  # cat small (100)
        _ann(2, 11, 1, [0, 0, 40, 40], inst=1, generated=True),  # cat medium (1600), interpolated
        _ann(3, 12, 1, [0, 0, 100, 99], inst=1),  # cat large (9900)
        _ann(4, 10, 2, [10, 10, 20, 20], inst=2),  # dog small (400)
        _ann(5, 12, 2, [10, 10, 32, 32], inst=2),  # dog medium: exactly 32^2
        _ann(6, 20, 1, [0, 0, 96, 96], inst=1),  # cat large: exactly 96^2; instance id 1 again,
        _ann(7, 21, 1, [5, 5, 10, 10], inst=1),  # but in video 2: another track
        _ann(8, 21, 1, [0, 0, 50, 50], inst=9, iscrowd=True),  # crowd: not a box, not a track
        _ann(9, 20, 2, [0, 0, 50, 50]),  # dog medium, no instance id: no track
    ],
}


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    p = tmp_path_factory.mktemp("stats") / "hand.json"
    p.write_text(json.dumps(HAND))
    return load_cocovid(p)


def test_class_stats_by_hand(hand):
    s = class_stats(hand)
    assert list(s.columns) == list(CLASS_COLUMNS)
    want = {  # category_id: boxes, manual, generated, crowd, tracks, videos, frames, key_frames, small, medium, large
        1: (5, 4, 1, 1, 2, 2, 5, 4, 2, 1, 2),
        2: (3, 3, 0, 0, 1, 2, 3, 3, 1, 2, 0),
        5: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    }
    cols = [
        "boxes",
        "boxes_manual",
        "boxes_generated",
        "crowd",
        "tracks",
        "videos",
        "frames",
        "key_frames",
        "small",
        "medium",
        "large",
    ]
    for cid, row in want.items():
        got = s.loc[s["category_id"] == cid, cols].iloc[0].tolist()
        assert got == list(row), cid
    assert s["name"].tolist() == ["cat", "dog", "zebra"]
    assert s["mean_track_length"].iloc[0] == 2.5 and s["mean_track_length"].iloc[1] == 2.0
    assert math.isnan(s["mean_track_length"].iloc[2])
    assert s["boxes"].dtype == np.int64


def test_track_lengths_by_hand(hand):
    t = track_lengths(hand)
    assert t[
        ["video_id", "instance_id", "category_id", "length", "first_frame", "last_frame", "span"]
    ].values.tolist() == [
        [1, 1, 1, 3, 0, 2, 3],
        [1, 2, 2, 2, 0, 2, 3],
        [2, 1, 1, 2, 0, 1, 2],
    ]
    assert t["name"].tolist() == ["cat", "dog", "cat"]


def test_box_sizes_by_hand(hand):
    b = box_sizes(hand)
    assert len(b) == 8 and b["area"].tolist()[:3] == [100.0, 1600.0, 9900.0]
    assert b["size"].tolist() == ["small", "medium", "large", "small", "medium", "large", "small", "medium"]
    assert np.allclose(b["sqrt_area"], np.sqrt(b["area"]))


def test_dataset_summary_by_hand(hand):
    s = dataset_summary(hand)
    assert (s["videos"], s["frames"], s["key_frames"], s["empty_frames"], s["frames_without_boxes"]) == (2, 6, 4, 1, 1)
    assert (s["boxes"], s["crowd"], s["boxes_generated"], s["tracks"]) == (8, 1, 1, 3)
    assert (s["classes"], s["classes_with_boxes"]) == (3, 2)
    assert s["boxes_per_class"] == {"min": 0, "median": 3.0, "max": 5}
    assert s["head_tail_ratio"] == pytest.approx(5 / 3) and (s["head_class"], s["tail_class"]) == ("cat", "dog")
    assert s["mean_track_length"] == pytest.approx(7 / 3) and s["median_track_length"] == 2.0
    assert s["top10pct_box_share"] == pytest.approx(5 / 8) and s["boxes_per_frame"] == pytest.approx(8 / 6)
    json.dumps(s)  # plain Python values only


def test_real_mmtracking_cocovid(external_data):
    ds = load_cocovid(external_data / "mmtracking/master/tests/data/demo_cocovid_data/ann.json")
    s = class_stats(ds).set_index("name")
    # instance 1 (car) on images 2..5, instance 2 (person) on 5..7; 3 crowd cars on image 1
    assert s.loc["car", ["boxes", "crowd", "tracks", "videos", "frames", "key_frames"]].tolist() == [4, 3, 1, 1, 4, 4]
    assert s.loc["person", ["boxes", "crowd", "tracks", "videos", "frames", "key_frames"]].tolist() == [
        3,
        0,
        1,
        1,
        3,
        3,
    ]
    # w*h: car 234.95 / 1179.9 / 8847.5 / 4518.5, person 125.6 / 25978.4 / 1367.4
    assert s.loc["car", ["small", "medium", "large"]].tolist() == [1, 3, 0]
    assert s.loc["person", ["small", "medium", "large"]].tolist() == [1, 1, 1]
    t = track_lengths(ds)
    assert t[["instance_id", "first_frame", "last_frame", "length"]].values.tolist() == [[1, 1, 4, 4], [2, 4, 6, 3]]
    summary = dataset_summary(ds)
    # image 8 has nothing; image 1 has only crowd boxes
    assert (summary["frames"], summary["empty_frames"], summary["frames_without_boxes"]) == (8, 1, 2)
    assert (summary["boxes"], summary["crowd"], summary["tracks"]) == (7, 3, 2)


def test_write_stats_writes_files_and_the_command_prints_them(tmp_path, capsys):
    from lvod.cli import main

    ann = tmp_path / "hand.json"
    ann.write_text(json.dumps(HAND))
    r = write_stats(ann, tmp_path / "out")
    assert r["paths"] == {
        "class_stats_csv": tmp_path / "out" / "class_stats.csv",
        "class_stats_json": tmp_path / "out" / "class_stats.json",
        "summary_json": tmp_path / "out" / "summary.json",
    }
    assert r["summary"]["tracks"] == 3 and r["stats"]["boxes"].tolist() == [5, 3, 0]
    csv = pd.read_csv(tmp_path / "out" / "class_stats.csv")
    assert csv.columns[:6].tolist() == ["category_id", "name", "boxes", "boxes_manual", "boxes_generated", "crowd"]
    assert csv[["category_id", "boxes", "tracks", "videos", "frames"]].values.tolist() == [
        [1, 5, 2, 2, 5],
        [2, 3, 1, 2, 3],
        [5, 0, 0, 0, 0],
    ]
    records = json.loads((tmp_path / "out" / "class_stats.json").read_text())
    assert records[2]["name"] == "zebra" and records[2]["mean_track_length"] is None
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tracks"] == 3
    assert main(["stats", str(ann), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 videos, 6 frames" in out and "zebra" in out and "class_stats.csv" in out
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON array, not an object"):
        write_stats(tmp_path / "bad.json", tmp_path / "out2")
    assert main(["stats", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out2")]) == 1
    assert "bad.json" in capsys.readouterr().err and not (tmp_path / "out2").exists()
