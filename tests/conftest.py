"""Shared test fixtures: where the real external data lives, small helpers."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "external-data"


@pytest.fixture(scope="session")
def external_data() -> Path:
    """Path to ``../shared/external-data``; skips the test when that folder is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the real external data ships in ../shared/ beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The built-in demo dataset at its default size and seed 0 (written once per session)."""
    from lvod.data.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), seed=0)


TINY_DETECTOR = """
[model]
kind = "{kind}"
depth = 18
num_classes = {num_classes}
neck_channels = 32
rpn_channels = 32
fc_channels = 64
rpn_test_pre_nms = 200
rpn_test_post_nms = 30
test_max_dets = 20
fgfa_window = 3
{extra}
[data]
root = "{root}"
{img_scale}val = {{ ann_file = "ann.json" }}

[test]
workers = {workers}
"""


def write_tiny_detector_config(path, *, kind, root, num_classes=2, workers=1, img_scale=None, extra=""):
    """A depth-18 test config over ``root/ann.json`` (the inference and infer tests share it)."""
    scale = f"img_scale = [{img_scale[0]}, {img_scale[1]}]\n" if img_scale else ""
    Path(path).write_text(
        TINY_DETECTOR.format(
            kind=kind,
            num_classes=num_classes,
            root=Path(root).as_posix(),
            workers=workers,
            img_scale=scale,
            extra=extra,
        )
    )
    return Path(path)


@pytest.fixture
def tiny_detector_config():
    """``write_tiny_detector_config`` as a fixture, for the tests that build tiny detectors."""
    return write_tiny_detector_config


@pytest.fixture
def one_thread():
    """The CI box is small and shared: tiny detectors run on one CPU thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tiny_vid(root, num_videos=2, num_frames=12, size=(48, 36), det_images=2):
    """A CocoVID train file (+ a plain-COCO DET file) with solid-colour frames.

    Frame f of video v is filled with value 10 * v + f (so a frame is recognisable from
    its pixels); every 3rd frame is a key frame; frames 5 and 6 of each video have only a
    crowd box. Returns ``(root / "vid.json", root / "det.json")``.
    """
    from PIL import Image

    root = Path(root)
    w, h = size
    images, anns = [], []
    (root / "vid").mkdir(parents=True, exist_ok=True)
    for v in range(num_videos):
        for f in range(num_frames):
            iid = 100 * (v + 1) + f
            name = f"vid/v{v}_{f:03d}.png"
            Image.new("RGB", (w, h), (10 * v + f,) * 3).save(root / name)
            images.append(
                {
                    "id": iid,
                    "file_name": name,
                    "width": w,
                    "height": h,
                    "video_id": v + 1,
                    "frame_id": f,
                    "is_vid_train_frame": f % 3 == 0,
                }
            )
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "video_id": v + 1,
                    "category_id": 1 + (v % 2),
                    "instance_id": v,
                    "bbox": [4, 6, 10, 8],
                    "area": 80,
                    "iscrowd": int(f == 5 or f == 6),
                }
            )
    cats = [{"id": 1, "name": "cat_a"}, {"id": 2, "name": "cat_b"}]
    vid = {
        "categories": cats,
        "videos": [{"id": v + 1, "name": f"v{v}"} for v in range(num_videos)],
        "images": images,
        "annotations": anns,
    }
    (root / "vid.json").write_text(json.dumps(vid))
    det_imgs, det_anns = [], []
    for i in range(det_images):
        name = f"vid/det_{i}.png"
        Image.new("RGB", (w, h), (200 + i,) * 3).save(root / name)
        det_imgs.append({"id": 9000 + i, "file_name": name, "width": w, "height": h})
        det_anns.append(
            {"id": i + 1, "image_id": 9000 + i, "category_id": 2, "bbox": [1, 2, 20, 10], "area": 200, "iscrowd": 0}
        )
    (root / "det.json").write_text(json.dumps({"categories": cats, "images": det_imgs, "annotations": det_anns}))
    return root / "vid.json", root / "det.json"


@pytest.fixture(scope="session")
def tiny_vid():
    """``write_tiny_vid`` as a fixture (call it with a folder and the same options)."""
    return write_tiny_vid


def make_eval_case(seed=0, num_videos=9, frames=5, num_fp=150, num_classes=4):
    """For the evaluation tests (bootstrap, AP-fixed): a small CocoVid-like ground truth
    (videos of several frames, ``num_classes`` classes, tracks) and detections: jittered
    copies of most boxes plus random false positives; continuous scores (no ties between
    different detections)."""
    rng = np.random.default_rng(seed)
    img_ids, img_video, img_frame = [], [], []
    for v in range(num_videos):
        for f in range(frames):
            img_ids.append(100 + 10 * v + f)
            img_video.append(v + 1)
            img_frame.append(f)
    rows, cats, boxes, inst = [], [], [], []
    for v in range(num_videos):
        objects = [
            (int(rng.integers(1, num_classes + 1)), rng.uniform(0, 60, 2), rng.uniform(8, 30, 2))
            for _ in range(int(rng.integers(1, 4)))
        ]
        for o, (cat, xy, wh) in enumerate(objects):
            for f in range(frames):
                rows.append(v * frames + f)
                cats.append(cat)
                boxes.append([*(xy + rng.normal(0, 2, 2) * f), *wh])
                inst.append(1000 * v + o)
    boxes = np.array(boxes, np.float64)
    gt = SimpleNamespace(
        img_ids=np.array(img_ids, np.int64),
        img_video_ids=np.array(img_video, np.int64),
        img_frame_ids=np.array(img_frame, np.int64),
        cat_ids=np.arange(1, num_classes + 1, dtype=np.int64),
        cat_names=[f"c{k}" for k in range(1, num_classes + 1)],
        ann_image_idx=np.array(rows, np.int64),
        ann_cat_ids=np.array(cats, np.int64),
        ann_boxes=boxes,
        ann_area=boxes[:, 2] * boxes[:, 3],
        ann_iscrowd=np.zeros(len(boxes), bool),
        ann_ids=np.arange(1, len(boxes) + 1, dtype=np.int64),
        ann_instance_ids=np.array(inst, np.int64),
    )
    di, dc, db = [], [], []
    for a in range(len(boxes)):
        if rng.random() < 0.85:
            di.append(img_ids[rows[a]])
            dc.append(cats[a] if rng.random() < 0.9 else int(rng.integers(1, num_classes + 1)))
            db.append(boxes[a] + rng.normal(0, 3, 4))
    for _ in range(num_fp):
        di.append(int(rng.choice(img_ids)))
        dc.append(int(rng.integers(1, num_classes + 1)))
        db.append([*rng.uniform(0, 60, 2), *rng.uniform(8, 30, 2)])
    from lvod.evaluation.results import Detections

    dets = Detections(
        image_id=np.array(di, np.int64),
        category_id=np.array(dc, np.int64),
        bbox=np.array(db, np.float32),
        score=rng.random(len(di)).astype(np.float32),
    )
    return gt, dets
