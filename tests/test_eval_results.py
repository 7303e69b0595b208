"""Columnar results files: npz writer, COCO JSON round trip, block-wise reader, atomicity. Budget ~1 s."""

import json

import numpy as np
import pytest

from lvod.errors import DataError
from lvod.evaluation import Detections, ResultsWriter, load_results, read_coco_json, save_results_npz, write_coco_json


def _dets(n=1000, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return Detections(
        rng.integers(1, 50, n),
        rng.integers(1, 31, n),
        (rng.random((n, 4)) * 300).astype(dtype),
        rng.random(n).astype(dtype),
    )


def _same(a, b):
    for c in ("image_id", "category_id", "bbox", "score"):
        assert np.array_equal(getattr(a, c), getattr(b, c)), c


def test_writer_streams_frames_into_an_npz(tmp_path):
    d = _dets()
    path = tmp_path / "res.npz"
    with ResultsWriter(path) as w:
        for s in range(0, len(d), 7):
            w.add(d.subset(slice(s, s + 7)))
        w.add_xyxy(77, [[10, 20, 30, 60]], [0.5], [3])
    back = load_results(path)
    _same(back.subset(slice(0, len(d))), d)
    assert back.image_id[-1] == 77 and back.bbox[-1].tolist() == [10, 20, 20, 40]
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers
    with np.load(path) as z:  # a plain numpy file
        assert z["bbox"].shape == (len(d) + 1, 4)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "res.npz"
    save_results_npz(_dets(10), path)
    with pytest.raises(RuntimeError):
        with ResultsWriter(path) as w:
            w.add(_dets(5, seed=1))
            raise RuntimeError("killed")
    _same(load_results(path), _dets(10))
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coco_json_round_trip_is_exact_in_blocks(tmp_path, dtype):
    d = _dets(3000, dtype=dtype)
    path = tmp_path / "res.json"
    write_coco_json(d, path, block=700)
    whole = json.loads(path.read_text())
    assert len(whole) == 3000 and set(whole[0]) == {"image_id", "category_id", "bbox", "score"}
    back = read_coco_json(path, block_bytes=4096)  # many blocks, records cut across block ends
    _same(Detections(back.image_id, back.category_id, back.bbox.astype(dtype), back.score.astype(dtype)), d)
    assert back.score.dtype == np.float64  # JSON numbers stay as pycocotools sees them
    assert np.array_equal(back.score, [r["score"] for r in whole])


def test_empty_and_bad_json(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    assert len(read_coco_json(tmp_path / "e.json")) == 0
    (tmp_path / "b.json").write_text('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3], "score": 0.5}]')
    with pytest.raises(DataError, match="record 0"):
        read_coco_json(tmp_path / "b.json")
    (tmp_path / "t.json").write_text('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5},')
    with pytest.raises(DataError, match="truncated"):
        read_coco_json(tmp_path / "t.json")
    (tmp_path / "n.json").write_text('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": NaN}]')
    with pytest.raises(DataError):
        read_coco_json(tmp_path / "n.json")
    with pytest.raises(DataError, match="unknown results format"):
        (tmp_path / "x.pkl").write_bytes(b"")
        load_results(tmp_path / "x.pkl")
