"""Shared test fixtures: where the real external data lives, small helpers."""

import json
from pathlib import Path

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
