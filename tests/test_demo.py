"""The demo dataset: determinism, long tail, CocoVID invariants, degraded frames.

Budget: about 6 s (one default-size build shared by the module, four tiny builds).
"""

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lvod.data.cocovid import load_cocovid
from lvod.data.demo import CLASSES, format_summary, key_frames, make_demo

TINY = dict(num_train_videos=3, num_val_videos=2, num_heldout_videos=2, frames_per_video=8, image_size=(96, 80))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = make_demo(out, seed=0)
    data = {s: json.loads(Path(r[f"{s}_json"]).read_text()) for s in ("train", "val")}
    return r, data


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = (make_demo(tmp_path / n, seed=s, **TINY) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 3 * 8 + 2 * 8 + 2 * 8 + 4  # frames + three json + README
    assert fa == fb
    assert fa.keys() == fc.keys() and fa != fc  # another seed draws other scenes


def test_classes_and_long_tail(demo):
    r, data = demo
    assert len(CLASSES) >= 10 and len({c[0] for c in CLASSES}) == len(CLASSES)
    assert len({(c[1], c[2]) for c in CLASSES}) == len(CLASSES)
    assert [c["id"] for c in data["train"]["categories"]] == list(range(1, len(CLASSES) + 1))
    counts = Counter(a["category_id"] for a in data["train"]["annotations"])
    assert len(counts) == len(CLASSES)
    assert max(counts.values()) >= 50 * min(counts.values())
    assert r["head_tail_ratio"] == max(counts.values()) / min(counts.values())
    assert r["train"]["per_class"] == [counts[i] for i in range(1, len(CLASSES) + 1)]


def test_every_class_has_enough_val_tracks_and_boxes(demo):
    _, data = demo
    tracks, boxes = defaultdict(set), Counter()
    for a in data["val"]["annotations"]:
        tracks[a["category_id"]].add(a["instance_id"])
        boxes[a["category_id"]] += 1
    for cid in range(1, len(CLASSES) + 1):
        assert len(tracks[cid]) >= 3, CLASSES[cid - 1][0]
        assert boxes[cid] >= 50, CLASSES[cid - 1][0]


@pytest.mark.parametrize("split", ["train", "val"])
def test_cocovid_invariants(demo, split):
    r, data = demo
    d = data[split]
    images = {im["id"]: im for im in d["images"]}
    frames = defaultdict(list)
    for im in d["images"]:
        frames[im["video_id"]].append(im["frame_id"])
        assert (im["width"], im["height"]) == (160, 128)
        assert (r["images_root"] / im["file_name"]).is_file()
    assert {v["id"] for v in d["videos"]} == set(frames)
    for fids in frames.values():
        assert fids == list(range(24))
    keys = [im["frame_id"] for im in d["images"] if im["is_vid_train_frame"]]
    assert len(keys) == (15 * 40 if split == "train" else 0)
    inst_video, ids = {}, set()
    for a in d["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        assert w >= 4 and h >= 4 and a["area"] == w * h
        assert a["video_id"] == im["video_id"] and not a["iscrowd"]
        assert inst_video.setdefault(a["instance_id"], a["video_id"]) == a["video_id"]
        ids.add(a["id"])
    assert len(ids) == len(d["annotations"])
    assert sorted(set(inst_video.values())) == sorted(frames)  # ids not reused across videos


def test_scenes_move_occlude_and_leave_the_frame(demo):
    _, data = demo
    d = data["train"]
    assert {a["speed"] for a in d["annotations"]} == {"slow", "medium", "fast"}
    assert 0 < sum(a["occluded"] for a in d["annotations"]) < len(d["annotations"]) / 2
    frame_of = {im["id"]: im["frame_id"] for im in d["images"]}
    per_inst = defaultdict(list)
    for a in d["annotations"]:
        per_inst[a["instance_id"]].append((frame_of[a["image_id"]], a["bbox"]))
    touching = sum(1 for a in d["annotations"] if a["bbox"][0] == 0 or a["bbox"][0] + a["bbox"][2] == 160)
    assert touching > 20  # objects cut by the image border
    short = [len(v) for v in per_inst.values() if len(v) < 24]
    assert len(short) > 10  # tracks that leave the frame or start late
    sizes = [np.prod(b[2:]) for v in per_inst.values() for _, b in v]
    assert min(sizes) < 0.5 * max(sizes)


def test_key_frames_follow_fgfa_spacing():
    assert key_frames(300) == list(range(10, 300, 20))
    assert key_frames(24) == sorted(set(key_frames(24))) and len(key_frames(24)) == 15
    assert key_frames(6) == [0, 1, 2, 3, 4, 5]


def _laplacian_var(path: Path) -> float:
    g = np.asarray(Image.open(path).convert("L"), np.float64)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def test_degraded_frames_are_recorded_and_really_degraded(demo):
    r, data = demo
    d = data["val"]
    info = d["info"]["degraded_frames"]
    assert {x["kind"] for x in info} == {"motion_blur", "defocus", "noise", "distractor"}
    by_key = {(im["video_id"], im["frame_id"]): im for im in d["images"]}
    degraded = {(x["video_id"], x["frame_id"]) for x in info}
    for x in info:
        im = by_key[(x["video_id"], x["frame_id"])]
        assert im["id"] == x["image_id"]
        neighbours = [by_key[(x["video_id"], x["frame_id"] + o)] for o in (-1, 1)]
        assert not degraded & {(n["video_id"], n["frame_id"]) for n in neighbours}
        sharp = [_laplacian_var(r["images_root"] / n["file_name"]) for n in neighbours]
        own = _laplacian_var(r["images_root"] / im["file_name"])
        if x["kind"] in ("motion_blur", "defocus"):
            assert own < 0.6 * min(sharp), x
        elif x["kind"] == "noise":
            assert own > 1.5 * max(sharp), x


def test_readme_and_summary(demo, tmp_path, capsys):
    r, _ = demo
    text = r["readme"].read_text()
    for name, *_ in CLASSES:
        assert name in text
    out = format_summary(make_demo(tmp_path / "cli", seed=3, **TINY))
    train = json.loads((tmp_path / "cli" / "annotations" / "train.json").read_text())
    counts = Counter(a["category_id"] for a in train["annotations"])
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith("  ")}
    for i, (name, *_) in enumerate(CLASSES):
        assert int(lines[name][0]) == counts[i + 1]
    assert f"head/tail ratio (train boxes): {max(counts.values()) / min(counts.values()):.1f}" in out


def test_loads_with_cocovid_loader(demo):
    r, data = demo
    for split in ("train", "val"):
        c = load_cocovid(r[f"{split}_json"], images_root=r["images_root"], check_images=True, strict=True)
        assert c.num_images == len(data[split]["images"])
        assert c.num_anns == len(data[split]["annotations"])
        assert c.cat_names == [n for n, *_ in CLASSES]
        assert int(c.img_is_key.sum()) == (600 if split == "train" else 0)


def test_heldout_split_is_drawn_like_train_and_changes_nothing_else(tmp_path):
    with_h = make_demo(tmp_path / "h", seed=3, **TINY)
    without = make_demo(tmp_path / "n", seed=3, **{**TINY, "num_heldout_videos": 0})
    assert "heldout_json" not in without and not (tmp_path / "n" / "annotations" / "heldout.json").exists()
    for split in ("train", "val"):  # byte-identical with or without the extra split
        assert Path(with_h[f"{split}_json"]).read_bytes() == Path(without[f"{split}_json"]).read_bytes()
    held = json.loads(Path(with_h["heldout_json"]).read_text())
    train = json.loads(Path(with_h["train_json"]).read_text())
    assert len(held["videos"]) == 2 and all(v["name"].startswith("heldout/") for v in held["videos"])
    assert any(im["is_vid_train_frame"] for im in held["images"])  # key frames flagged, like train
    assert {im["file_name"] for im in held["images"]}.isdisjoint(im["file_name"] for im in train["images"])
    assert held["annotations"] != train["annotations"]  # its own seeds
