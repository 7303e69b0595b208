"""Streaming inference over a CocoVid split into the compact results file.

Uses mmtracking's real demo CocoVID file (1 video, 8 frames of 512x256, 2 classes, 7
non-crowd boxes, 3 crowd boxes on frame 0, frame 7 empty) with grey frames generated in
``tmp_path``. Budget: < 15 s on one CPU.
"""
from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch

from lvod.data.cocovid import load_cocovid
from lvod.engine.inference import resolve_device, run_inference, to_coco_columns
from lvod.errors import DataError
from lvod.evaluation.results import ResultsWriter, load_results

COCOVID = "mmtracking/master/tests/data/demo_cocovid_data/ann.json"


def test_to_coco_columns_maps_labels_and_boxes():
    det = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.5, 1.0]]),
           "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([2, 1])}
    cats, xywh, scores = to_coco_columns(det, np.array([3, 7]))
    assert cats.tolist() == [7, 3]
    np.testing.assert_allclose(xywh, [[10, 20, 20, 40], [0, 0, 5.5, 1]])
    assert xywh.dtype == np.float32 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [0.9, 0.2], rtol=1e-6)
    empty = to_coco_columns({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                             "labels": torch.zeros(0, dtype=torch.long)}, np.array([3, 7]))
    assert [len(c) for c in empty] == [0, 0, 0]
    for bad in (0, 3):
        with pytest.raises(ValueError, match="outside 1..2"):
            to_coco_columns({"boxes": torch.zeros(1, 4), "scores": torch.ones(1),
                             "labels": torch.tensor([bad])}, np.array([3, 7]))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="CUDA is not available"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def grey_cocovid(external_data, tmp_path):
    """mmtracking's demo CocoVID with category ids moved to 7 (car) and 3 (person).

    Sorted ids [3, 7] make person label 1 and car label 2, so a label/category mix-up shows.
    Frames: uniform grey 512x256 JPEGs written next to the annotation file.
    """
    import cv2

    data = json.loads((external_data / COCOVID).read_text())
    remap = {1: 7, 2: 3}
    for c in data["categories"]:
        c["id"] = remap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    for img in data["images"]:
        grey = np.full((img["height"], img["width"], 3), 100 + img["frame_id"], np.uint8)
        assert cv2.imwrite(str(tmp_path / img["file_name"]), grey)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return load_cocovid(ann)


def plain_transform(calls: list):
    """A minimal test-time transform: float tensor, no resize; counts the frames it sees."""
    def transform(image):
        calls.append(tuple(image.shape))
        size = tuple(image.shape[-2:])
        return image.float(), {"img_size": size, "orig_size": size}
    return transform


class WindowOracle:
    """Streams like FGFA's test window: frame k comes out once frame k + half went in.

    It outputs the ground truth of each frame (labels 1..C, x1y1x2y2), so the results file
    must reproduce the annotation file exactly. ``loaded_when_yielding[k]`` is how many
    frames the transform had produced when frame k was yielded.
    """

    def __init__(self, ds, calls, half=3, drop_last=False):
        self.ds, self.calls, self.half, self.drop_last = ds, calls, half, drop_last
        self.loaded_when_yielding: list[int] = []
        self.training = True

    def eval(self):
        self.training = False
        return self

    def _gt(self, row):
        anns = self.ds.anns_of_image(row)
        anns = anns[~self.ds.ann_iscrowd[anns]]
        b = self.ds.ann_boxes[anns]
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        return {"boxes": torch.as_tensor(xyxy, dtype=torch.float32),
                "scores": torch.linspace(1.0, 0.5, len(anns)),
                "labels": torch.as_tensor(self.ds.ann_labels[anns])}

    def detect_video(self, frames, num_frames):
        assert not self.training, "run_inference must put the model in eval mode"
        rows = self.ds.frame_rows(self.ds.videos[0]["id"])
        assert num_frames == len(rows)
        buf = deque()
        out = 0
        n_out = num_frames - 1 if self.drop_last else num_frames
        for tensor, meta in frames:
            assert tensor.shape == (3, 256, 512) and meta["orig_size"] == (256, 512)
            buf.append(meta)
            while len(buf) > self.half and out < n_out:
                buf.popleft()
                self.loaded_when_yielding.append(len(self.calls))
                yield self._gt(rows[out])
                out += 1
        while out < n_out:
            self.loaded_when_yielding.append(len(self.calls))
            yield self._gt(rows[out])
            out += 1


# ----------------------------------------------------------------------------- run_inference


def test_run_inference_streams_ground_truth_into_results_file(grey_cocovid, tmp_path):
    ds, calls = grey_cocovid, []
    model = WindowOracle(ds, calls, half=3)
    with ResultsWriter(tmp_path / "out" / "results.npz") as writer:
        stats = run_inference(model, ds, None, plain_transform(calls), writer=writer,
                              device="cpu", progress=False)
    assert stats["videos"] == 1 and stats["frames"] == 8 and stats["detections"] == 7
    # lazy: frame k was produced when at most k + half + 1 frames had been read
    assert model.loaded_when_yielding == [4, 5, 6, 7, 8, 8, 8, 8]

    dets = load_results(tmp_path / "out" / "results.npz")
    keep = ~ds.ann_iscrowd
    order = np.argsort(ds.img_ids[ds.ann_image_idx[keep]], kind="stable")
    assert dets.image_id.tolist() == ds.img_ids[ds.ann_image_idx[keep]][order].tolist()
    assert dets.category_id.tolist() == ds.ann_cat_ids[keep][order].tolist()
    assert set(dets.category_id.tolist()) == {3, 7}
    np.testing.assert_allclose(dets.bbox, ds.ann_boxes[keep][order], rtol=1e-5, atol=1e-4)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.npz"]


def test_run_inference_rejects_a_detector_that_skips_frames(grey_cocovid, tmp_path):
    calls = []
    model = WindowOracle(grey_cocovid, calls, drop_last=True)
    with pytest.raises(RuntimeError, match="yielded 7 results for video 1 with 8 frames"):
        with ResultsWriter(tmp_path / "results.npz") as writer:
            run_inference(model, grey_cocovid, None, plain_transform(calls), writer=writer,
                          device="cpu", progress=False)
    assert not (tmp_path / "results.npz").exists(), "a failed run leaves no results file"


def test_run_inference_checks_frame_size_against_annotation(grey_cocovid, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "image_3.jpg"), np.zeros((100, 200, 3), np.uint8))
    calls = []
    with pytest.raises(DataError, match=r"image 3 \(image_3.jpg\).*200x100.*512x256"):
        with ResultsWriter(tmp_path / "r.npz") as writer:
            run_inference(WindowOracle(grey_cocovid, calls), grey_cocovid, tmp_path,
                          plain_transform(calls), writer=writer, device="cpu", progress=False)
