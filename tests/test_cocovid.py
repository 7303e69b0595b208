"""lvod.data.cocovid: real mmtracking/TAO/LVIS files and one tiny generated file per defect.

Budget: well under 20 s (all files are a few KB; LVIS val-100 is ~1 MB).
"""

import copy
import json

import numpy as np
import pytest

from lvod.data.cocovid import check_file, load_cocovid
from lvod.data.validate import clip_boxes
from lvod.errors import DataError

MMT = "mmtracking"
COCOVID = f"{MMT}/master/tests/data/demo_cocovid_data/ann.json"
COCOVID_IMG = f"{MMT}/dev-1.x/tests/data/demo_cocovid_data/ann_img.json"
VID_VID = f"{MMT}/dev-1.x/tests/data/demo_imagenetvid_data/ann_vid.json"
VID_IMG = f"{MMT}/dev-1.x/tests/data/demo_imagenetvid_data/ann_img.json"
TAO = f"{MMT}/master/tests/data/demo_tao_data/ann.json"
LVIS = "bags/FishYuLi_BalancedGroupSoftmax/lvis-api/data/lvis_val_100.json"
TAO_CATS = "tao/TAO-Dataset_annotations/test_categories.json"


def rows_of(cv, image_id):
    return cv.anns_of_image(int(np.flatnonzero(cv.img_ids == image_id)[0]))


# ---------------------------------------------------------------- real files


def test_cocovid_demo_facts(external_data):
    cv = load_cocovid(external_data / COCOVID)
    assert cv.cat_names == ["car", "person"] and cv.cat_ids.tolist() == [1, 2]
    assert cv.num_images == 8 and cv.num_anns == 10 and cv.num_classes == 2
    assert [v["name"] for v in cv.videos] == ["dummy_video"]
    assert cv.img_ids[cv.frame_rows(1)].tolist() == list(range(1, 9))
    assert cv.img_frame_ids[cv.frame_rows(1)].tolist() == list(range(8))
    crowd = cv.ann_iscrowd
    img1 = rows_of(cv, 1)
    assert (~crowd[img1]).sum() == 0 and crowd[img1].sum() == 3
    img5 = rows_of(cv, 5)
    assert (~crowd[img5]).sum() == 2 and crowd[img5].sum() == 0
    assert len(rows_of(cv, 8)) == 0 and cv.report.counts["empty_frames"] == 1
    img_of = cv.img_ids[cv.ann_image_idx]
    assert sorted(img_of[cv.ann_instance_ids == 1].tolist()) == [2, 3, 4, 5]
    assert sorted(img_of[cv.ann_instance_ids == 2].tolist()) == [5, 6, 7]
    assert cv.ann_labels[cv.ann_cat_ids == 2].tolist() == [2, 2, 2]
    assert cv.ann_boxes[0, 3] == pytest.approx(4.578987121582031)  # the thin box is kept
    assert cv.report.usable and not cv.report.repairs
    # the CSR index covers every annotation exactly once
    assert sorted(cv.ann_order.tolist()) == list(range(10)) and cv.image_ann_ptr[-1] == 10


def test_same_boxes_in_vid_and_plain_coco_files(external_data):
    vid = load_cocovid(external_data / VID_VID)
    img = load_cocovid(external_data / COCOVID_IMG)
    assert vid.cat_names == ["bus", "car"] and vid.img_is_key.all()
    np.testing.assert_array_equal(vid.ann_boxes, img.ann_boxes)
    # plain COCO: 8 one-frame videos, distinct ids, frame 0 each
    assert len(img.videos) == 8 and len({v["id"] for v in img.videos}) == 8
    assert (img.img_frame_ids == 0).all()
    assert all(len(img.frame_rows(v["id"])) == 1 for v in img.videos)
    assert "image_without_video" in img.report.notes


def test_imagenetvid_det_corner_cases(external_data):
    cv = load_cocovid(external_data / VID_IMG)
    assert cv.img_ids.tolist() == [0, 1, 2]
    assert cv.ann_ids.tolist() == [1, 2, 3, 4]  # 5 (width 0) and 6 (category 3) dropped
    rep = cv.report.repairs
    assert rep["box_empty"].count == 1 and rep["box_empty"].examples == ["annotation 5"]
    assert rep["ann_unknown_category"].count == 1
    assert "annotation 6 (category_id 3)" in rep["ann_unknown_category"].examples
    assert cv.ann_iscrowd.tolist() == [False, True, False, True]  # iscrowd 1, ignore 1
    assert len(rows_of(cv, 2)) == 0
    text = cv.report.format()
    assert "box_empty" in text and "ann_unknown_category" in text
    with pytest.raises(DataError) as err:
        load_cocovid(external_data / VID_IMG, strict=True)
    assert "ann_img.json" in str(err.value) and "annotation 6" in str(err.value)


def test_tao_excerpt(external_data):
    cv = load_cocovid(external_data / TAO)
    assert cv.num_images == 2 and len(cv.videos) == 1 and cv.videos[0]["id"] == 0
    assert cv.cat_ids.tolist() == [805, 950] and cv.cat_names == ["baby", "serving_dish"]
    assert cv.ann_ids.tolist() == [1, 6] and cv.ann_instance_ids.tolist() == [1, 1]
    issue = cv.report.repairs["ann_unknown_category"]
    assert issue.count == 2 and "category_id 95" in issue.examples[0]
    assert [t["id"] for t in cv.tracks] == [1, 3] and cv.report.counts["tao_tracks"] == 2
    assert cv.report.counts["tracks"] == 1  # one object (instance 1, baby) in the kept boxes, as lvod stats counts
    assert cv.img_neg_cat_ids[0] == (342, 57, 651, 357, 738)
    assert cv.img_not_exhaustive_cat_ids[1] == (805, 95)
    assert cv.categories[0]["frequency"] == "f"  # extra category keys are kept


def test_vis_and_mot_toys_load(external_data):
    for rel in ("master/tests/data/demo_vis_data/ann.json", "dev-1.x/tests/data/demo_vis_data/ann.json"):
        cv = load_cocovid(external_data / MMT / rel)
        assert cv.report.usable and cv.num_anns >= 1
    mot = load_cocovid(external_data / MMT / "dev-1.x/tests/data/demo_mot_data/ann.json")
    assert mot.ann_instance_ids.tolist() == [0, 1, 2]
    assert mot.ann_boxes[2].tolist() == [1886.0, 327.0, 34.0, 404.0]  # 1886+156 > 1920
    assert mot.ann_area[2] == 63024.0  # the file's area is kept
    assert mot.report.repairs["box_clipped"].examples == ["annotation 3"]


def test_files_that_are_not_annotations_error_clearly(external_data):
    for rel in (
        f"{MMT}/master/tests/data/demo_vis_data/results.json",
        f"{MMT}/mmtrack-0.14.0_vid_state_dict_shapes.json",
        "tao/TAO-Dataset_tao/data/coco_to_lvis_synset.json",
    ):
        with pytest.raises(DataError, match="not a COCO/CocoVID/TAO annotation file") as err:
            load_cocovid(external_data / rel)
        assert err.value.file.endswith(rel.split("/")[-1])


def test_tao_category_only_file(external_data, capsys):
    cv = load_cocovid(external_data / TAO_CATS)
    assert cv.num_classes == 369 and cv.num_images == 0 and cv.num_anns == 0
    assert cv.cat_ids[0] == 17 and cv.cat_ids[-1] == 1229
    assert "category_only" in cv.report.notes and not cv.report.usable
    report = check_file(external_data / TAO_CATS)
    assert not report.usable and "usable: NO" in report.format()


def test_lvis_without_iscrowd(external_data):
    cv = load_cocovid(external_data / LVIS)
    assert cv.num_images == 100 and cv.num_anns == 977 and cv.num_classes == 1230
    assert not cv.ann_iscrowd.any() and (cv.ann_instance_ids == -1).all()
    assert cv.report.notes["iscrowd_absent"].count == 977
    assert len({v["id"] for v in cv.videos}) == 100 and cv.report.counts["empty_frames"] == 7
    assert cv.report.usable and not cv.report.repairs


def test_utf8_bom_and_non_ascii_names(tmp_path):
    data = base()
    data["categories"][1]["name"] = "chien_\u00e9t\u00e9"
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode("utf-8"))
    assert load_cocovid(path).cat_names == ["car", "chien_\u00e9t\u00e9"]


# ---------------------------------------------------------------- generated defects


def base():
    """2 categories, video 5 with 3 frames (ids 10..12), 3 annotations."""
    return {
        "categories": [{"id": 1, "name": "car"}, {"id": 3, "name": "dog"}],
        "videos": [{"id": 5, "name": "v"}],
        "images": [
            {
                "id": 10 + f,
                "file_name": f"v/{f:06d}.JPEG",
                "width": 100,
                "height": 50,
                "video_id": 5,
                "frame_id": f,
                "is_vid_train_frame": f == 1,
            }
            for f in range(3)
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "video_id": 5,
                "category_id": 1,
                "instance_id": 7,
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "iscrowd": False,
                "occluded": True,
            },
            {
                "id": 2,
                "image_id": 11,
                "video_id": 5,
                "category_id": 3,
                "instance_id": 8,
                "bbox": [0, 0, 5, 5],
                "area": 25,
                "iscrowd": 0,
                "generated": 1,
            },
            {
                "id": 3,
                "image_id": 11,
                "video_id": 5,
                "category_id": 1,
                "instance_id": 7,
                "bbox": [1, 1, 2, 2],
                "area": 4,
                "iscrowd": 1,
            },
        ],
    }


def write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def load(tmp_path, data, **kw):
    return load_cocovid(write(tmp_path, data), **kw)


def test_clean_generated_file(tmp_path):
    cv = load(tmp_path, base(), strict=True)
    assert cv.img_is_key.tolist() == [False, True, False]
    assert cv.ann_labels.tolist() == [1, 2, 1] and cv.labels_of([3, 1]).tolist() == [2, 1]
    assert cv.ann_occluded.tolist() == [True, False, False]
    assert cv.ann_generated.tolist() == [False, True, False]
    assert cv.ann_iscrowd.tolist() == [False, False, True]
    assert cv.anns_of_image(1).tolist() == [1, 2] and cv.ann_video_ids.tolist() == [5, 5, 5]
    assert cv.report.counts["empty_frames"] == 1 and cv.report.counts["key_frames"] == 1
    assert cv.report.counts["instances"] == 2
    assert cv.img_width.dtype == np.int32 and cv.ann_boxes.dtype == np.float64


@pytest.mark.parametrize(
    "where, key, record",
    [
        ("images", "width", "image 11"),
        ("images", "file_name", "image 11"),
        ("images", "id", "image #1"),
        ("annotations", "bbox", "annotation 2"),
        ("annotations", "image_id", "annotation 2"),
        ("annotations", "category_id", "annotation 2"),
        ("annotations", "id", "annotation #1"),
        ("categories", "name", "category 3"),
    ],
)
def test_missing_required_key_names_file_and_record(tmp_path, where, key, record):
    data = base()
    del data[where][1][key]
    path = write(tmp_path, data, "val.json")
    with pytest.raises(DataError) as err:
        load_cocovid(path)
    msg = str(err.value)
    assert "val.json" in msg and f"{record}: has no '{key}'" in msg and "fix:" in msg


@pytest.mark.parametrize("bad", [[1, 2, 3], [1, 2, "3", 4], "1,2,3,4", [1, 2, None, 4]])
def test_malformed_bbox_is_fatal(tmp_path, bad):
    data = base()
    data["annotations"][2]["bbox"] = bad
    with pytest.raises(DataError, match="annotation 3: 'bbox' is"):
        load(tmp_path, data)


def test_identical_duplicates_dropped_different_ones_fatal(tmp_path):
    data = base()
    data["images"].append(copy.deepcopy(data["images"][0]))
    data["categories"].append({"id": 3, "name": "dog"})
    data["videos"].append({"id": 5, "name": "v"})
    cv = load(tmp_path, data)
    assert cv.num_images == 3 and cv.num_classes == 2 and len(cv.videos) == 1
    assert {"image_duplicate", "category_duplicate", "video_duplicate"} <= cv.report.repairs.keys()
    for where, change in (
        ("images", {"file_name": "other.jpg"}),
        ("categories", {"name": "cat"}),
        ("videos", {"name": "w"}),
    ):
        data = base()
        data[where].append({**data[where][0], **change})
        with pytest.raises(DataError, match="different content"):
            load(tmp_path, data)


def test_duplicate_annotation_ids(tmp_path):
    data = base()
    data["annotations"].append(copy.deepcopy(data["annotations"][0]))  # identical: dropped
    data["annotations"].append({**data["annotations"][1], "bbox": [3, 3, 4, 4]})  # renumbered
    cv = load(tmp_path, data)
    assert cv.ann_ids.tolist() == [1, 2, 3, 4]
    assert cv.ann_boxes[3].tolist() == [3, 3, 4, 4]
    assert cv.report.repairs["annotation_duplicate"].count == 1
    assert cv.report.repairs["annotation_duplicate_id"].examples == ["annotation 2 (#4) -> 4"]
    with pytest.raises(DataError, match="strict"):
        load(tmp_path, data, strict=True)


def test_dangling_references_are_skipped_and_reported(tmp_path):
    data = base()
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["category_id"] = 95
    path = write(tmp_path, data, "val.json")
    cv = load_cocovid(path)
    assert cv.ann_ids.tolist() == [3]
    assert cv.report.repairs["ann_unknown_image"].examples == ["annotation 1 (image_id 99)"]
    assert cv.report.repairs["ann_unknown_category"].examples == ["annotation 2 (category_id 95)"]
    with pytest.raises(DataError) as err:
        load_cocovid(path, strict=True)
    assert "val.json: annotation 1 (image_id 99): ann_unknown_image" in str(err.value)


def test_boxes_empty_clipped_outside(tmp_path):
    data = base()
    data["annotations"][0]["bbox"] = [90, -5, 20, 20]  # clipped to [90, 0, 10, 15]
    data["annotations"][1]["bbox"] = [5, 5, -3, 4]  # negative width: skipped
    data["annotations"][2]["bbox"] = [120, 10, 5, 5]  # outside a 100-wide image: skipped
    cv = load(tmp_path, data)
    assert cv.ann_ids.tolist() == [1] and cv.ann_boxes[0].tolist() == [90, 0, 10, 15]
    rep = cv.report.repairs
    assert rep["box_clipped"].count == rep["box_empty"].count == rep["box_outside"].count == 1


def test_clip_boxes_maths():
    boxes = np.array([[1, 1, 2, 2], [-1, 0, 4, 2], [5, 0, 0, 1], [9, 0, 3, 1]], float)
    out, empty, clipped, outside = clip_boxes(boxes, np.full(4, 4.0), np.full(4, 4.0))
    assert out[1].tolist() == [0, 0, 3, 2] and out[0].tolist() == [1, 1, 2, 2]
    assert empty.tolist() == [False, False, True, False]
    assert clipped.tolist() == [False, True, False, False]
    assert outside.tolist() == [False, False, False, True]


@pytest.mark.parametrize("value, crowd", [(True, True), (1, True), (0.0, False), (None, False)])
def test_flag_spellings(tmp_path, value, crowd):
    data = base()
    for a in data["annotations"]:
        a.pop("iscrowd")
    if value is not None:
        data["annotations"][0]["iscrowd"] = value
    cv = load(tmp_path, data)
    assert cv.ann_iscrowd[0] == crowd
    assert cv.report.notes["iscrowd_absent"].count == (3 if value is None else 2)


@pytest.mark.parametrize("value", [2, "yes", [1]])
def test_bad_flag_is_fatal(tmp_path, value):
    data = base()
    data["annotations"][1]["iscrowd"] = value
    with pytest.raises(DataError, match="annotation 2: 'iscrowd' is"):
        load(tmp_path, data)


def test_ignore_key_marks_crowd_and_area_defaults(tmp_path):
    data = base()
    data["annotations"][0]["ignore"] = True
    del data["annotations"][1]["area"]
    cv = load(tmp_path, data)
    assert cv.ann_iscrowd.tolist() == [True, False, True]
    assert cv.ann_area.tolist() == [400, 25, 4] and cv.report.notes["area_missing"].count == 1


def test_mixed_file_synthetic_video_ids_do_not_collide(tmp_path):
    data = base()
    data["images"].append({"id": 6, "file_name": "det/a.JPEG", "width": 30, "height": 30})
    cv = load(tmp_path, data)
    assert cv.img_video_ids.tolist() == [5, 5, 5, 6] and cv.img_frame_ids[3] == 0
    assert cv.videos[-1] == {"id": 6, "name": "det/a.JPEG", "synthetic": True}
    assert cv.frame_rows(6).tolist() == [3]


def test_frames_missing_frame_id_use_tao_frame_index(tmp_path):
    data = base()
    for img, fi in zip(data["images"], (420, 30, 391)):
        del img["frame_id"]
        img["frame_index"] = fi
    cv = load(tmp_path, data)
    assert cv.img_ids[cv.frame_rows(5)].tolist() == [11, 12, 10]
    assert cv.img_frame_ids.tolist() == [2, 0, 1]
    assert cv.report.repairs["frame_id_missing"].count == 3


def test_two_images_on_one_frame_is_fatal(tmp_path):
    data = base()
    data["images"][2]["frame_id"] = 1
    with pytest.raises(DataError, match="video 5: images 11 and 12 both have frame_id 1"):
        load(tmp_path, data)


def test_unknown_video_synthesised_and_mismatch_reported(tmp_path):
    data = base()
    data["images"][2]["video_id"] = 9
    data["images"][2]["frame_id"] = 0
    data["annotations"][0]["video_id"] = 4
    data["videos"].append({"id": 11})
    cv = load(tmp_path, data)
    assert cv.report.repairs["image_unknown_video"].examples == ["video 9"]
    assert cv.report.repairs["ann_video_mismatch"].examples == ["annotation 1"]
    assert cv.frame_rows(11).tolist() == [] and cv.frame_rows(9).tolist() == [2]
    assert cv.videos[1]["name"] == "video_11"
    with pytest.raises(DataError, match="video 42: is not in this file"):
        cv.frame_rows(42)


def test_track_id_fills_instance_id(tmp_path):
    data = base()
    for a in data["annotations"]:
        a["track_id"] = a.pop("instance_id") + 100
    del data["annotations"][2]["track_id"]
    cv = load(tmp_path, data)
    assert cv.ann_instance_ids.tolist() == [107, 108, -1]
    assert cv.report.notes["instance_id_absent"].count == 1


def test_top_level_problems(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cocovid(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="bad.json: file: is not valid JSON"):
        load_cocovid(bad)
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9}]
    with pytest.raises(DataError, match="detection results file"):
        load(tmp_path, results)
    with pytest.raises(DataError, match="has no 'categories'"):
        load(tmp_path, {"images": [], "annotations": []})
    with pytest.raises(DataError, match="'annotations' but no 'images'"):
        load(tmp_path, {"categories": [], "annotations": []})
    with pytest.raises(DataError, match="image #1: is a str, not an object"):
        load(tmp_path, {**base(), "images": [base()["images"][0], "x"]})


def test_images_without_annotations_key(tmp_path):
    data = base()
    del data["annotations"]
    cv = load(tmp_path, data)
    assert cv.num_anns == 0 and cv.report.counts["empty_frames"] == 3
    assert "no_annotations" in cv.report.notes and cv.report.usable


def test_missing_image_files_and_lvod_data_check(tmp_path, capsys):
    from lvod.cli import main

    path = write(tmp_path, base())
    (tmp_path / "img" / "v").mkdir(parents=True)
    for f in (0, 2):
        (tmp_path / "img" / "v" / f"{f:06d}.JPEG").write_bytes(b"x")
    cv = load_cocovid(path, images_root=tmp_path / "img")
    assert cv.report.missing_files.count == 1 and not cv.report.usable
    assert cv.image_path(0) == tmp_path / "img" / "v" / "000000.JPEG"
    report = check_file(path, images_root=tmp_path / "img")
    assert not report.usable and report.missing_files.count == 1
    assert main(["data", "check", str(path), "--images", str(tmp_path / "img")]) == 1
    out = capsys.readouterr().out
    assert "image 11 (v/000001.JPEG)" in out and "usable: NO" in out
    (tmp_path / "img" / "v" / "000001.JPEG").write_bytes(b"x")
    assert check_file(path, images_root=tmp_path / "img").usable
    assert main(["data", "check", str(path), "--images", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    assert "videos 1, images 3, key_frames 1, empty_frames 1, annotations 3" in out
    with pytest.raises(DataError, match="does not exist"):
        check_file(tmp_path / "missing.json")
    assert main(["data", "check", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_check_reports_every_fatal_problem(tmp_path, capsys):
    from lvod.cli import main

    data = base()
    for a in data["annotations"][:2]:
        del a["bbox"]
    report = check_file(write(tmp_path, data))
    assert len(report.fatal) == 2 and not report.usable
    assert main(["data", "check", str(tmp_path / "ann.json")]) == 1
    out = capsys.readouterr().out
    assert "fatal (2)" in out and "annotation 1: has no 'bbox'" in out
    assert "annotation 2: has no 'bbox'" in out


def test_frame_renumbering_by_file_order_across_videos(tmp_path):
    data = base()
    data["videos"].append({"id": 6, "name": "w"})
    data["images"] += [
        {"id": 20 + k, "file_name": f"w/{k}.jpg", "width": 9, "height": 9, "video_id": 6} for k in range(2)
    ]
    data["images"][0]["frame_id"] = 7  # video 5 keeps its given ids (with a gap)
    cv = load(tmp_path, data)
    assert cv.img_frame_ids.tolist() == [7, 1, 2, 0, 1]
    assert cv.report.repairs["frame_id_missing"].count == 2
    assert cv.report.notes["frame_gaps"].examples == ["video 5"]
    assert cv.img_ids[cv.frame_rows(5)].tolist() == [11, 12, 10]


@pytest.mark.parametrize("width", [0, -3, 99.5])
def test_bad_image_size_is_fatal(tmp_path, width):
    data = base()
    data["images"][1]["width"] = width
    with pytest.raises(DataError, match="image 11: 'width' is"):
        load(tmp_path, data)


def test_annotations_but_empty_image_list(tmp_path):
    data = base()
    data["images"] = []
    cv = load(tmp_path, data)
    assert cv.num_anns == 0 and cv.report.repairs["ann_unknown_image"].count == 3
    assert not cv.report.usable
