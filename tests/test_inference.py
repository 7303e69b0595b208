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
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.5, 1.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([2, 1]),
    }
    cats, xywh, scores = to_coco_columns(det, np.array([3, 7]))
    assert cats.tolist() == [7, 3]
    np.testing.assert_allclose(xywh, [[10, 20, 20, 40], [0, 0, 5.5, 1]])
    assert xywh.dtype == np.float32 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [0.9, 0.2], rtol=1e-6)
    empty = to_coco_columns(
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
        np.array([3, 7]),
    )
    assert [len(c) for c in empty] == [0, 0, 0]
    for bad in (0, 3):
        with pytest.raises(ValueError, match="outside 1..2"):
            to_coco_columns(
                {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([bad])}, np.array([3, 7])
            )


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
        return {
            "boxes": torch.as_tensor(xyxy, dtype=torch.float32),
            "scores": torch.linspace(1.0, 0.5, len(anns)),
            "labels": torch.as_tensor(self.ds.ann_labels[anns]),
        }

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
        stats = run_inference(model, ds, None, plain_transform(calls), writer=writer, device="cpu", progress=False)
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
            run_inference(
                model, grey_cocovid, None, plain_transform(calls), writer=writer, device="cpu", progress=False
            )
    assert not (tmp_path / "results.npz").exists(), "a failed run leaves no results file"


def test_run_inference_checks_frame_size_against_annotation(grey_cocovid, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "image_3.jpg"), np.zeros((100, 200, 3), np.uint8))
    calls = []
    with pytest.raises(DataError, match=r"image 3 \(image_3.jpg\).*200x100.*512x256"):
        with ResultsWriter(tmp_path / "r.npz") as writer:
            run_inference(
                WindowOracle(grey_cocovid, calls),
                grey_cocovid,
                tmp_path,
                plain_transform(calls),
                writer=writer,
                device="cpu",
                progress=False,
            )


def test_run_inference_prefetch_keeps_order(grey_cocovid, tmp_path):
    calls = []
    model = WindowOracle(grey_cocovid, calls, half=0)
    with ResultsWriter(tmp_path / "results.npz") as writer:
        run_inference(
            model, grey_cocovid, None, plain_transform(calls), writer=writer, device="cpu", progress=False, workers=2
        )
    dets = load_results(tmp_path / "results.npz")
    assert dets.image_id.tolist() == [2, 3, 4, 5, 5, 6, 7], "frame order survives the threads"
    # with 2 workers the loader runs at most 2 * workers frames ahead of the model
    assert all(n - k <= 1 + 4 for k, n in enumerate(model.loaded_when_yielding))


def test_one_frame_clips_when_not_loaded_as_video(grey_cocovid, tmp_path):
    class CountingModel:
        def __init__(self):
            self.clip_lengths = []

        def eval(self):
            return self

        def detect_video(self, frames, num_frames):
            self.clip_lengths.append(num_frames)
            for _ in frames:
                yield {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}

    model = CountingModel()
    with ResultsWriter(tmp_path / "results.npz") as writer:
        stats = run_inference(
            model, grey_cocovid, None, plain_transform([]), writer=writer, device="cpu", progress=False, as_video=False
        )
    assert model.clip_lengths == [1] * 8 and stats["frames"] == 8
    assert len(load_results(tmp_path / "results.npz")) == 0


def test_build_test_transform_resizes_normalises_pads():
    from lvod.config import DataConfig
    from lvod.engine.inference import build_test_transform

    tf = build_test_transform(DataConfig())  # 1000x600 keep ratio, ImageNet mean/std, pad 16
    image = torch.full((3, 256, 512), 100, dtype=torch.uint8)
    x, meta = tf(image)
    # factor min(1000/512, 600/256) = 1.953125 -> 1000 x 500, padded to 1008 x 512
    assert meta == {"img_size": (500, 1000), "orig_size": (256, 512)}
    assert x.shape == (3, 512, 1008) and x.dtype == torch.float32
    expect = (100 - 123.675) / 58.395
    assert x[0, :500, :1000].sub(expect).abs().max() < 1e-5
    assert x[:, 500:, :].abs().max() == 0 and x[:, :, 1000:].abs().max() == 0
    # a numpy HWC frame (what video decoders give) is the same frame
    x2, meta2 = tf(image.permute(1, 2, 0).numpy())
    assert meta2 == meta and torch.equal(x, x2)


# ----------------------------------------------------------------------------- evaluation


def _evaluate(ds, path):
    from lvod.evaluation import evaluate

    return evaluate(ds, load_results(path), results_file=str(path))


def test_oracle_results_evaluate_to_known_ap(grey_cocovid, tmp_path):
    """mmtracking's demo GT as detections: AP = 1; without the first one 0.8762376237623762
    (the pycocotools values in the external-data README)."""
    ds, calls = grey_cocovid, []
    with ResultsWriter(tmp_path / "all.npz") as writer:
        run_inference(
            WindowOracle(ds, calls), ds, None, plain_transform(calls), writer=writer, device="cpu", progress=False
        )
    m = _evaluate(ds, tmp_path / "all.npz")
    assert m["bbox_mAP_50"] == pytest.approx(1.0) and m["bbox_mAP"] == pytest.approx(1.0)
    assert {c["category_id"]: c["num_gt"] for c in m["classwise"]} == {3: 3, 7: 4}

    class DropFirst(WindowOracle):
        def _gt(self, row):
            det = super()._gt(row)
            if int(self.ds.img_ids[row]) == 2:  # annotation 1 (the thin car) is on image 2
                det = {k: v[1:] for k, v in det.items()}
            return det

    calls = []
    with ResultsWriter(tmp_path / "drop.npz") as writer:
        run_inference(
            DropFirst(ds, calls), ds, None, plain_transform(calls), writer=writer, device="cpu", progress=False
        )
    m = _evaluate(ds, tmp_path / "drop.npz")
    assert m["bbox_mAP_50"] == pytest.approx(0.8762376237623762)


# ----------------------------------------------------------------------------- lvod test


@pytest.fixture
def tiny_config(grey_cocovid, tmp_path, tiny_detector_config):
    def make(kind="single", num_classes=2, extra=""):
        return tiny_detector_config(
            tmp_path / f"{kind}_{num_classes}_{len(extra)}.toml",
            kind=kind,
            root=grey_cocovid.path.parent,
            num_classes=num_classes,
            img_scale=(256, 144),
            extra=extra,
        )

    return make


pytestmark = pytest.mark.usefixtures("one_thread")


def test_results_paths_never_write_a_pickle(tmp_path):
    from lvod.engine.test import results_paths

    assert results_paths(tmp_path / "r.npz") == (tmp_path / "r.npz", None, None)
    assert results_paths(tmp_path / "r.json") == (tmp_path / "r.npz", tmp_path / "r.json", None)
    npz, js, note = results_paths(tmp_path / "results.pkl")
    assert (npz, js) == (tmp_path / "results.npz", None) and "does not write pickles" in note
    assert results_paths(None, tmp_path / "run" / "epoch_7.pth")[0] == tmp_path / "run" / "test" / "results.npz"
    with pytest.raises(DataError, match="unknown results format"):
        results_paths(tmp_path / "r.csv")
    with pytest.raises(DataError, match="--out"):
        results_paths(None, None)


def test_lvod_test_fgfa_end_to_end(tiny_config, tmp_path, capsys):
    """Tiny FGFA (window 3) over the 8 grey frames: npz + COCO json + metrics + table."""
    from lvod.engine.test import test_model
    from lvod.evaluation import read_coco_json

    out = tmp_path / "res" / "results.json"
    m = test_model(
        tiny_config("fgfa"), None, eval=("bbox",), out=out, device="cpu", random_weights=True, progress=False
    )
    assert m["inference"]["frames"] == 8 and m["files"]["metrics"] == tmp_path / "res" / "metrics.json"
    dets = load_results(out.with_suffix(".npz"))
    assert set(dets.image_id.tolist()) <= set(range(1, 9)) and len(dets) > 0
    assert np.bincount(dets.image_id, minlength=9)[1:].max() <= 20, "test_max_dets per frame"
    assert set(dets.category_id.tolist()) <= {3, 7}
    x, y, w, h = dets.bbox.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 512 + 1e-3).all() and (y + h <= 256 + 1e-3).all()
    back = read_coco_json(out)
    assert np.array_equal(back.image_id, dets.image_id)
    np.testing.assert_array_equal(back.bbox.astype(np.float32), dets.bbox)
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert metrics["num_detections"] == len(dets) and metrics["inference"]["frames"] == 8
    assert [c["num_gt"] for c in metrics["classwise"]] == [3, 4]
    from lvod.evaluation import format_tables

    assert "| bbox_mAP_50 |" in format_tables(m) and m["inference"]["videos"] == 1


def test_lvod_test_loads_checkpoints_strictly(tiny_config, tmp_path, capsys):
    from lvod.config import load_config
    from lvod.engine.checkpointing import save_checkpoint
    from lvod.engine.inference import load_model
    from lvod.engine.test import test_model

    cfg_path = tiny_config()
    model, _ = load_model(load_config(cfg_path), None, random_weights=True)
    with torch.no_grad():  # weights that differ from the seed-0 initialisation
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = save_checkpoint({"model": model.state_dict()}, tmp_path / "run" / "epoch_1.pth")
    test_model(cfg_path, ckpt, eval=(), device="cpu", progress=False)
    from_ckpt = load_results(tmp_path / "run" / "test" / "results.npz")
    r = test_model(
        cfg_path, None, eval=[], out=tmp_path / "rand.pkl", device="cpu", random_weights=True, progress=False
    )
    assert "does not write pickles" in r["note"]
    assert not (tmp_path / "rand.pkl").exists()
    rand = load_results(tmp_path / "rand.npz")
    assert len(from_ckpt) and not (len(from_ckpt) == len(rand) and np.allclose(from_ckpt.score, rand.score)), (
        "the checkpoint's weights were used, not the random initialisation"
    )

    with pytest.raises(DataError, match=r"another shape.*shared_fcs"):
        test_model(tiny_config(extra="roi_size = 5"), ckpt, out=tmp_path / "x.npz", device="cpu", progress=False)
    with pytest.raises(DataError, match="do not fit.*unexpected"):
        test_model(
            tiny_config(kind="selsa", extra="selsa_attention_blocks = 4"),
            ckpt,
            out=tmp_path / "x.npz",
            device="cpu",
            progress=False,
        )
    with pytest.raises(DataError, match="model.num_classes = 3"):
        test_model(tiny_config(num_classes=3), ckpt, out=tmp_path / "x.npz", device="cpu", progress=False)
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(DataError, match="unknown metric"):
        test_model(cfg_path, ckpt, eval=("segm",), device="cpu", progress=False)


def test_mmtracking_fgfa_checkpoint_loads_and_asks_for_its_warp_grid(tiny_config, tmp_path):
    """An mmtracking-layout FGFA file goes through the importer; with lvod's aligned grid a
    warning says how to reproduce mmtracking's detections, with the mmtracking grid none."""
    import warnings

    from lvod.config import load_config
    from lvod.engine.checkpointing import save_checkpoint
    from lvod.engine.inference import load_model

    cfg = load_config(tiny_config("fgfa"))
    model, _ = load_model(cfg, None, random_weights=True)
    mm = {}
    for k, v in model.state_dict().items():  # back to mmdet names and background-last rows
        if ".predictor.fc_cls." in k:
            v = torch.cat([v[1:], v[:1]])
        mm[k.replace("bbox_head.predictor.", "bbox_head.")] = v
    path = save_checkpoint({"state_dict": mm, "meta": {}}, tmp_path / "fgfa_mm.pth")
    with pytest.warns(UserWarning, match="model.flow_warp=mmtracking"):
        loaded, _ = load_model(cfg, path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(load_config(tiny_config("fgfa", extra='flow_warp = "mmtracking"')), path)
