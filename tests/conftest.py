"""Shared test fixtures: where the real external data lives, small helpers."""
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
    Path(path).write_text(TINY_DETECTOR.format(kind=kind, num_classes=num_classes, root=Path(root).as_posix(),
                                               workers=workers, img_scale=scale, extra=extra))
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
