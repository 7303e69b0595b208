"""Seq-NMS (lvod.engine.rescoring): hand-checked videos, a brute-force reference for the
incremental dynamic programme, and the streaming hook of run_inference."""

from __future__ import annotations

import numpy as np
import pytest

from lvod.engine.rescoring import SeqNmsOptions, box_iou, rescore_detections, seq_nms
from lvod.errors import DataError


def frame(boxes, scores, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"boxes": boxes, "scores": np.asarray(scores, np.float32), "labels": labels}


def track(n, scores, step=1.0, labels=None):
    """One object drifting right by ``step`` px a frame (consecutive IoU ~0.8)."""
    return [
        frame([[10 + step * t, 10, 20 + step * t, 20]], [scores[t]], None if labels is None else [labels[t]])
        for t in range(n)
    ]


def test_a_weak_frame_of_a_tracked_object_is_lifted():
    frames = track(5, [0.9, 0.8, 0.1, 0.85, 0.9])
    frames[2] = frame([[12, 10, 22, 20], [60, 60, 70, 70]], [0.1, 0.3])  # + an unrelated box
    out = seq_nms(frames)
    mean = np.mean([0.9, 0.8, 0.1, 0.85, 0.9])  # 0.71
    for t in range(5):
        assert out[t]["scores"][0] == pytest.approx(mean)
    assert out[2]["scores"][1] == pytest.approx(0.3), "a box linked to nothing keeps its score"
    assert out[2]["scores"][0] > 0.1 * 7
    assert [len(f["scores"]) for f in out] == [1, 1, 2, 1, 1]


def test_max_and_avg_rescoring():
    frames = track(3, [0.9, 0.3, 0.6])
    np.testing.assert_allclose([f["scores"][0] for f in seq_nms(frames, rescore="avg")], [0.6] * 3, rtol=1e-6)
    np.testing.assert_allclose([f["scores"][0] for f in seq_nms(frames, rescore="max")], [0.9] * 3, rtol=1e-6)


def test_detections_of_different_classes_never_link():
    frames = track(5, [0.9, 0.8, 0.1, 0.85, 0.9], labels=[1, 1, 2, 1, 1])
    out = seq_nms(frames)
    assert out[2]["scores"][0] == pytest.approx(0.1) and out[2]["labels"][0] == 2
    # class 1 is cut in two sequences by the gap at frame 2
    np.testing.assert_allclose([out[t]["scores"][0] for t in (0, 1)], [0.85, 0.85], rtol=1e-6)
    np.testing.assert_allclose([out[t]["scores"][0] for t in (3, 4)], [0.875, 0.875], rtol=1e-6)


def test_empty_video_and_empty_frames():
    assert seq_nms([]) == []
    empty = frame(np.zeros((0, 4)), [])
    out = seq_nms([empty, empty, empty])
    assert len(out) == 3 and all(len(f["scores"]) == 0 and f["boxes"].shape == (0, 4) for f in out)
    out = seq_nms([empty, *track(2, [0.4, 0.8]), empty])
    assert [len(f["scores"]) for f in out] == [0, 1, 1, 0]
    assert out[1]["scores"][0] == pytest.approx(0.6)


def test_one_frame_video_keeps_scores_and_suppresses_overlaps():
    f = frame([[0, 0, 10, 10], [0, 0, 10, 6], [50, 50, 60, 60]], [0.9, 0.5, 0.4])  # IoU(0, 1) = 0.6
    out = seq_nms([f])[0]
    assert out["index"].tolist() == [0, 2]
    np.testing.assert_allclose(out["scores"], [0.9, 0.4], rtol=1e-6)
    kept = seq_nms([f], suppress=False)[0]
    assert kept["index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(kept["scores"], [0.9, 0.5, 0.4], rtol=1e-6)


def test_the_best_sequence_wins_and_its_rival_is_suppressed():
    """A links to B1 and B2 (IoU 0.8 each); A-B1 sums 1.4 > A-B2 0.7: B1 joins A, B2
    overlaps B1 by IoU 0.6 > 0.3 and is suppressed; without suppression it is a sequence of
    one (A is taken) and keeps its score."""
    frames = [frame([[0, 0, 10, 10]], [0.5]), frame([[0, 0, 10, 8], [0, 2, 10, 10]], [0.9, 0.2])]
    out = seq_nms(frames)
    assert out[1]["index"].tolist() == [0]
    np.testing.assert_allclose([out[0]["scores"][0], out[1]["scores"][0]], [0.7, 0.7], rtol=1e-6)
    out = seq_nms(frames, suppress=False)
    np.testing.assert_allclose(out[1]["scores"], [0.7, 0.2], rtol=1e-6)


def test_options_are_checked():
    with pytest.raises(ValueError, match="rescore"):
        seq_nms(track(2, [0.5, 0.5]), rescore="median")
    with pytest.raises(ValueError, match="link_iou"):
        SeqNmsOptions(link_iou=1.5)


def reference_seq_nms(frames, link_iou=0.5, rescore="avg", suppress=True, suppress_iou=0.3):
    """Seq-NMS written the slow, obvious way: recompute the whole dynamic programme after
    every selection."""
    out_scores = [np.asarray(f["scores"], np.float64).copy() for f in frames]
    keep = [np.ones(len(f["scores"]), bool) for f in frames]
    for c in np.unique(np.concatenate([f["labels"] for f in frames])):
        nodes = [(t, i) for t, f in enumerate(frames) for i in np.flatnonzero(f["labels"] == c)]
        active = {n: True for n in nodes}
        while any(active.values()):
            best, back = {}, {}
            for t, i in nodes:  # frame order
                if not active[(t, i)]:
                    continue
                cands = (
                    [
                        (t - 1, j)
                        for j in np.flatnonzero(frames[t - 1]["labels"] == c)
                        if t > 0
                        and active[(t - 1, j)]
                        and box_iou(frames[t - 1]["boxes"][j : j + 1], frames[t]["boxes"][i : i + 1])[0, 0] > link_iou
                    ]
                    if t > 0
                    else []
                )
                prev = max(cands, key=lambda n: best[n], default=None)
                best[(t, i)] = frames[t]["scores"][i] + (best[prev] if prev else 0.0)
                back[(t, i)] = prev
            node = max(best, key=lambda n: best[n])
            path = [node]
            while back[path[-1]] is not None:
                path.append(back[path[-1]])
            vals = [frames[t]["scores"][i] for t, i in path]
            value = np.mean(vals) if rescore == "avg" else np.max(vals)
            for t, i in path:
                out_scores[t][i] = value
                active[(t, i)] = False
            if suppress:
                for t, i in path:
                    for j in np.flatnonzero(frames[t]["labels"] == c):
                        if active[(t, j)]:
                            iou = box_iou(frames[t]["boxes"][i : i + 1], frames[t]["boxes"][j : j + 1])[0, 0]
                            if iou > suppress_iou:
                                active[(t, j)] = False
                                keep[t][j] = False
    return out_scores, keep


@pytest.mark.parametrize("seed", range(12))
def test_incremental_programme_matches_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    frames = []
    centres = rng.uniform(10, 60, size=(3, 2))
    for _ in range(8):
        k = int(rng.integers(0, 6))
        pick = rng.integers(0, 3, size=k)
        c = centres[pick] + rng.normal(0, 2.0, size=(k, 2))
        size = rng.uniform(8, 14, size=(k, 1))
        frames.append(frame(np.hstack([c - size / 2, c + size / 2]), rng.uniform(0.01, 1, k), rng.integers(1, 3, k)))
        centres += rng.normal(0, 1.0, size=centres.shape)
    for opts in (SeqNmsOptions(), SeqNmsOptions(rescore="max", suppress=False), SeqNmsOptions(link_iou=0.3)):
        got = seq_nms(frames, **vars(opts))
        want_scores, want_keep = reference_seq_nms(frames, **vars(opts))
        for g, s, k in zip(got, want_scores, want_keep):
            assert g["index"].tolist() == np.flatnonzero(k).tolist()
            np.testing.assert_allclose(g["scores"], s[k], rtol=1e-6)


def test_rescore_detections_works_video_by_video(tmp_path, tiny_vid):
    """The results-file form gives the per-video function's answer, video by video, and
    never links frames of two videos (both videos here hold the same boxes)."""
    from lvod.data.cocovid import load_cocovid
    from lvod.evaluation import Detections

    vid, _ = tiny_vid(tmp_path, num_videos=2, num_frames=4)
    gt = load_cocovid(vid)
    scores = [0.9, 0.1, 0.8, 0.7]
    parts = []
    for v in gt.videos:
        for k, r in enumerate(gt.frame_rows(v["id"])):
            parts.append(Detections.from_xyxy(gt.img_ids[r], [[4 + k, 6, 14 + k, 14]], [scores[k]], [1]))
    dets = Detections.concat(parts[::-1])  # file order does not matter
    out = rescore_detections(dets, gt)
    np.testing.assert_allclose(out.score, [np.mean(scores)] * 8, rtol=1e-6)
    np.testing.assert_array_equal(np.sort(out.image_id), np.sort(dets.image_id))


def test_run_inference_rescores_each_video_once_it_ends(tmp_path, tiny_vid):
    """run_inference(rescore=...) hands each video's frames, in order, to the rescorer."""
    import torch

    from lvod.data.cocovid import load_cocovid
    from lvod.engine.inference import run_inference
    from lvod.evaluation import ResultsWriter, load_results

    vid, _ = tiny_vid(tmp_path, num_videos=2, num_frames=3)
    ds = load_cocovid(vid)

    class Track:
        def eval(self):
            return self

        def detect_video(self, frames, num_frames):
            for k, _ in enumerate(frames):
                s = [0.9, 0.1, 0.8][k]
                yield {
                    "boxes": torch.tensor([[4.0 + k, 6, 14 + k, 14]]),
                    "scores": torch.tensor([s]),
                    "labels": torch.tensor([1]),
                }

    seen = []

    def rescore(frames):
        seen.append(len(frames))
        return seq_nms(frames)

    def transform(image):
        return image.float(), {"img_size": tuple(image.shape[-2:]), "orig_size": tuple(image.shape[-2:])}

    with ResultsWriter(tmp_path / "r.npz") as w:
        stats = run_inference(Track(), ds, None, transform, writer=w, device="cpu", progress=False, rescore=rescore)
    assert seen == [3, 3] and stats["frames"] == 6 and stats["detections"] == 6
    np.testing.assert_allclose(load_results(tmp_path / "r.npz").score, [0.6] * 6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["single", "fgfa"])
def test_rescoring_a_tested_run_equals_rescoring_during_inference(kind, tmp_path, tiny_vid, one_thread):
    """rescore_tested_run (no network pass) gives test_model(rescoring="seq_nms")'s
    detections and AP, and records where its detections came from."""
    import json

    from test_calibration import write_run

    from lvod.engine.test import rescore_tested_run, test_model
    from lvod.evaluation import load_results

    run, cfg_file, _ = write_run(tmp_path, tiny_vid, kind=kind)
    ckpt = run / "latest.pth"
    kw = {"device": "cpu", "progress": False}
    during = test_model(cfg_file, ckpt, out=tmp_path / "during" / "results.npz", rescoring="seq_nms", **kw)
    plain = test_model(cfg_file, ckpt, out=tmp_path / "plain" / "results.npz", **kw)
    after = rescore_tested_run(tmp_path / "plain", tmp_path / "after", cfg_file)
    a, b, p = (load_results(tmp_path / d / "results.npz") for d in ("during", "after", "plain"))
    assert len(p) and len(a) == len(b) <= len(p)
    assert not (len(a) == len(p) and np.allclose(np.sort(a.score), np.sort(p.score)))  # Seq-NMS changed them
    key = lambda d: np.lexsort((d.score, d.bbox[:, 0], d.category_id, d.image_id))  # noqa: E731
    ia, ib = key(a), key(b)
    np.testing.assert_array_equal(a.image_id[ia], b.image_id[ib])
    np.testing.assert_allclose(a.score[ia], b.score[ib], rtol=1e-5)
    assert after["bbox_mAP_50"] == pytest.approx(during["bbox_mAP_50"], abs=1e-9)
    assert after["rescoring"] == during["rescoring"] and plain["rescoring"] == {"method": "none"}
    recorded = json.loads((tmp_path / "after" / "metrics.json").read_text())
    assert recorded["inference"]["checkpoint"] == str(ckpt)
    assert recorded["inference"]["rescored_from"] == str(tmp_path / "plain" / "results.npz")
    with pytest.raises(DataError, match="rescored already"):
        rescore_tested_run(tmp_path / "after", tmp_path / "again", cfg_file)
