"""ImageNet VID converter: field conventions on a hand-written XML tree, the 0-based frame
list, error messages, and the real FGFA list files.

Budget: about 2 s.
"""

import json
from pathlib import Path

import pytest

from lvod.data.cocovid import load_cocovid
from lvod.data.imagenet_vid import (
    VID_CLASSES,
    convert_imagenet_vid,
    parse_det_list,
    parse_vid_train_list,
    parse_vid_val_list,
)
from lvod.errors import DataError

V1 = "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
V2 = "train/ILSVRC2015_VID_train_0001/ILSVRC2015_train_00001000"
VAL = "val/ILSVRC2015_val_00000000"
DET_A = "train/ILSVRC2014_train_0000/ILSVRC2014_train_00000663"
DET_B = "train/ILSVRC2013_train/n02391049/n02391049_9918"
AIRPLANE, DOG, ZEBRA, PERSON = "n02691156", "n02084071", "n02391049", "n00007846"


def _obj(wnid, box, trackid=None, occluded=0, generated=0):
    tid = "" if trackid is None else f"<trackid>{trackid}</trackid>"
    flags = "" if trackid is None else f"<occluded>{occluded}</occluded><generated>{generated}</generated>"
    x1, y1, x2, y2 = box
    return (
        f"<object>{tid}<name>{wnid}</name><bndbox><xmax>{x2}</xmax><xmin>{x1}</xmin>"
        f"<ymax>{y2}</ymax><ymin>{y1}</ymin></bndbox>{flags}</object>"
    )


def _xml(path: Path, objects=(), size=(640, 360)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><folder>x</folder><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size>{''.join(objects)}</annotation>"
    )


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "ILSVRC2015"
    vid = root / "Annotations" / "VID"
    for f in range(5):  # airplane track 0 in every frame, dog track 3 on frames 2-3, frame 4 empty
        objs = [_obj(AIRPLANE, (10 + f, 20, 110 + f, 70), trackid=0)] if f < 4 else []
        if f in (2, 3):
            objs.append(_obj(DOG, (200, 100, 260, 180), trackid=3, occluded=int(f == 2), generated=int(f == 3)))
        _xml(vid / V1 / f"{f:06d}.xml", objs)
    for f in range(3):  # another video whose zebra also has trackid 0
        _xml(vid / V2 / f"{f:06d}.xml", [_obj(ZEBRA, (0, 0, 50, 40), trackid=0)], size=(500, 375))
    for f in range(2):
        _xml(vid / VAL / f"{f:06d}.xml", [_obj(DOG, (5, 6, 25, 36), trackid=1)])
    _xml(
        root / "Annotations" / "DET" / f"{DET_A}.xml",
        [_obj(AIRPLANE, (1, 2, 31, 42)), _obj(PERSON, (50, 50, 90, 99))],
        size=(500, 333),
    )
    _xml(root / "Annotations" / "DET" / f"{DET_B}.xml", [_obj(PERSON, (3, 3, 9, 9))])
    lists = root / "ImageSets"
    lists.mkdir()
    (lists / "VID_train_15frames.txt").write_text(f"{V1} 1 0 5\n{V1} 1 3 5\n{V2} 1 2 3\n")
    (lists / "VID_val_videos.txt").write_text(f"{VAL} 1 0 2\n")
    (lists / "DET_train_30classes.txt").write_text(f"{DET_A} 1\n{DET_B} 1")  # no final newline
    return root


def test_converts_vid_train_with_mmtracking_fields(tree, tmp_path):
    r = convert_imagenet_vid(tree, tmp_path / "out", progress=False)
    d = json.loads(r["paths"]["train"].read_text())
    assert d["categories"][0] == {"id": 1, "name": "airplane", "encode_name": AIRPLANE}
    assert [c["name"] for c in d["categories"]][-1] == "zebra" and len(d["categories"]) == 30
    assert [v["name"] for v in d["videos"]] == [V1, V2] and [v["id"] for v in d["videos"]] == [1, 2]
    assert len(d["images"]) == 8 and [im["id"] for im in d["images"]] == list(range(1, 9))
    im0 = d["images"][0]
    assert im0 == {
        "id": 1,
        "file_name": f"{V1}/000000.JPEG",
        "width": 640,
        "height": 360,
        "video_id": 1,
        "frame_id": 0,
        "is_vid_train_frame": True,
    }
    flagged = [(im["video_id"], im["frame_id"]) for im in d["images"] if im["is_vid_train_frame"]]
    assert flagged == [(1, 0), (1, 3), (2, 2)]  # the list's 0-based indices, frame 0 included
    assert d["videos"][0]["vid_train_frames"] == [0, 3]
    a0 = d["annotations"][0]
    assert a0 == {
        "id": 1,
        "image_id": 1,
        "video_id": 1,
        "category_id": 1,
        "instance_id": 1,
        "bbox": [10, 20, 100, 50],
        "area": 5000,
        "iscrowd": False,
        "occluded": False,
        "generated": False,
    }
    dogs = [a for a in d["annotations"] if a["category_id"] == 9]
    assert [a["image_id"] for a in dogs] == [3, 4] and {a["instance_id"] for a in dogs} == {2}
    assert [(a["occluded"], a["generated"]) for a in dogs] == [(True, False), (False, True)]
    zebras = [a for a in d["annotations"] if a["category_id"] == 30]
    assert {a["instance_id"] for a in zebras} == {3}  # trackid 0 again, but a new video
    assert [a["id"] for a in d["annotations"]] == list(range(1, 10))
    c = r["train"]
    assert (c["videos"], c["images"], c["key_frames"], c["empty_images"]) == (2, 8, 3, 1)
    assert (c["boxes"], c["instances"], c["generated_boxes"], c["occluded_boxes"]) == (9, 3, 1, 1)
    assert c["boxes_per_class"]["airplane"] == 4 and c["boxes_per_class"]["zebra"] == 3
    assert d["info"]["counts"]["boxes"] == 9


def test_val_flags_no_frame_and_det_keeps_only_vid_classes(tree, tmp_path):
    r = convert_imagenet_vid(tree, tmp_path / "out", splits=("val", "det"), progress=False)
    assert not (tmp_path / "out" / "imagenet_vid_train.json").exists()
    val = json.loads(r["paths"]["val"].read_text())
    assert [im["is_vid_train_frame"] for im in val["images"]] == [False, False]
    assert [im["frame_id"] for im in val["images"]] == [0, 1]
    assert {a["instance_id"] for a in val["annotations"]} == {1}
    det = json.loads(r["paths"]["det"].read_text())
    assert [im["file_name"] for im in det["images"]] == [f"{DET_A}.JPEG", f"{DET_B}.JPEG"]
    assert set(det["images"][0]) == {"id", "file_name", "width", "height"}
    assert det["annotations"] == [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [1, 2, 30, 40],
            "area": 1200,
            "iscrowd": False,
            "occluded": False,
            "generated": False,
        }
    ]
    assert (r["det"]["images"], r["det"]["empty_images"], r["det"]["skipped_objects"]) == (2, 1, 2)


def test_files_load_with_cocovid_loader(tree, tmp_path):
    r = convert_imagenet_vid(tree, tmp_path / "out", progress=False)
    c = load_cocovid(r["paths"]["train"])
    assert (c.num_images, c.num_anns, c.num_classes) == (8, 9, 30)
    assert c.img_is_key.tolist() == [True, False, False, True, False, False, False, True]
    det = load_cocovid(r["paths"]["det"])
    assert det.num_images == 2 and det.num_anns == 1


def test_malformed_xml_and_unknown_wnid_name_the_file(tree, tmp_path):
    bad = tree / "Annotations" / "VID" / V2 / "000001.xml"
    bad.write_text("<annotation><size><width>5</width>")
    with pytest.raises(DataError, match="000001.xml.*malformed XML.*fix: re-extract"):
        convert_imagenet_vid(tree, tmp_path / "out", splits=("train",), progress=False)
    assert not (tmp_path / "out" / "imagenet_vid_train.json").exists()  # nothing half-written
    assert not list((tmp_path / "out").glob(".*tmp"))
    _xml(bad, [_obj(PERSON, (0, 0, 5, 5), trackid=0)])
    with pytest.raises(DataError, match=f"000001.xml: object 0: '{PERSON}' is not one of the 30"):
        convert_imagenet_vid(tree, tmp_path / "out", splits=("train",), progress=False)
    bad.unlink()
    with pytest.raises(DataError, match="000001.xml: file: annotation XML not found"):
        convert_imagenet_vid(tree, tmp_path / "out", splits=("train",), progress=False)


def test_list_errors(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text(f"{V1} 1 5 5\n")
    with pytest.raises(DataError, match="line 1: frame 5 is outside 0..4"):
        parse_vid_train_list(p)
    p.write_text(f"{V1} 1 2 5\n{V1} 1 2 5\n")
    with pytest.raises(DataError, match="line 2: frame 2 of .* listed twice"):
        parse_vid_train_list(p)
    p.write_text(f"{VAL} 1 0\n")
    with pytest.raises(DataError, match="expected 4 columns"):
        parse_vid_val_list(p)


def test_lvod_data_convert_prints_counts(tree, tmp_path, capsys):
    from lvod.cli import main

    assert (
        main(
            ["data", "convert-imagenet-vid", "--root", str(tree), "--out", str(tmp_path / "o"), "--splits", "train,det"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "train: 2 videos, 8 images (3 key frames, 1 without objects), 9 boxes" in out
    assert "2 objects of other classes skipped" in out
    assert (
        main(["data", "convert-imagenet-vid", "--root", str(tree), "--out", str(tmp_path / "o"), "--splits", "test"])
        == 2
    )
    assert (
        main(["data", "convert-imagenet-vid", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    )
    assert "pass --lists" in capsys.readouterr().err


def test_real_fgfa_lists(external_data):
    d = external_data / "imagenet-vid/msracver_Flow-Guided-Feature-Aggregation/data/ILSVRC2015/ImageSets"
    train = parse_vid_train_list(d / "VID_train_15frames.txt")
    assert len(train) == 3862
    assert sum(len(v["key_frames"]) for v in train.values()) == 57834
    assert sum(v["num_frames"] for v in train.values()) == 1122397
    assert sum(len(v["key_frames"]) == 15 for v in train.values()) == 3835
    assert min(len(v["key_frames"]) for v in train.values()) == 6
    assert sum(0 in v["key_frames"] for v in train.values()) == 144
    assert train["train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"]["key_frames"][:3] == [10, 30, 50]
    val = parse_vid_val_list(d / "VID_val_videos.txt")
    assert len(val) == 555 and sum(v["num_frames"] for v in val.values()) == 176126
    starts = [v["start"] for v in val.values()]
    sizes = [v["num_frames"] for v in val.values()]
    assert starts[0] == 1 and all(starts[i + 1] == starts[i] + sizes[i] for i in range(554))
    det_path = d / "DET_train_30classes.txt"
    det = parse_det_list(det_path)
    assert len(det) == 53639 and not det_path.read_bytes().endswith(b"\n")
    assert det[-1] == "train/ILSVRC2013_train/n02391049/n02391049_9977"


def test_class_table_matches_official_map(external_data):
    rows = (external_data / "imagenet-vid/fanyix_STMN/external/VID_devkit_data/map_vid.txt").read_text().split("\n")
    official = [tuple(r.split()) for r in rows if r.strip()]
    assert [(w, str(i + 1), n) for i, (w, n) in enumerate(VID_CLASSES)] == official
