"""Training data pipeline: ref sampling, key frames, transforms, collation, sampler."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from lvod.config import DataConfig
from lvod.data.cocovid import load_cocovid
from lvod.engine.data import (
    ResumableSampler,
    TrainDataset,
    collate,
    flip_boxes,
    pad_batch,
    rescale_size,
    resize,
    sample_refs,
    sample_scale,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_vid):
    root = tmp_path_factory.mktemp("tinyvid")
    vid, det = tiny_vid(root)
    return load_cocovid(vid, images_root=root), load_cocovid(det, images_root=root)


def cfg(**kw):
    return replace(DataConfig(), img_scale=[96, 72], **kw)


def test_bilateral_refs_one_before_one_after_within_range():
    rng = np.random.default_rng(0)
    seen_left, seen_right = set(), set()
    for _ in range(400):
        left, right = sample_refs(20, 100, "bilateral_uniform", [-9, 9], 2, rng)
        assert 11 <= left <= 19 and 21 <= right <= 29
        seen_left.add(left)
        seen_right.add(right)
    assert seen_left == set(range(11, 20)) and seen_right == set(range(21, 30))


def test_bilateral_refs_clipped_at_video_edges_fill_with_key():
    rng = np.random.default_rng(1)
    for _ in range(50):
        left, right = sample_refs(0, 5, "bilateral_uniform", [-9, 9], 2, rng)
        assert left == 0 and 1 <= right <= 4  # nothing before frame 0: key copy
        left, right = sample_refs(4, 5, "bilateral_uniform", [-9, 9], 2, rng)
        assert 0 <= left <= 3 and right == 4  # nothing after the last frame
        refs = sample_refs(2, 5, "bilateral_uniform", [-9, 9], 4, rng)
        assert refs[:2] == [0, 1] and refs[2:] == [3, 4]  # both sides exhausted exactly
    assert sample_refs(0, 1, "bilateral_uniform", [-9, 9], 2, rng) == [0, 0]


def test_uniform_and_key_copy_refs():
    rng = np.random.default_rng(2)
    for _ in range(100):
        refs = sample_refs(5, 50, "uniform", [-3, 3], 2, rng)
        assert len(set(refs)) == 2 and all(2 <= r <= 8 and r != 5 for r in refs)
    assert sample_refs(1, 2, "uniform", [-3, 3], 3, rng) == [0, 1, 1]
    assert sample_refs(7, 50, "key_copy", [-9, 9], 2, rng) == [7, 7]
    with pytest.raises(ValueError, match="even"):
        sample_refs(7, 50, "bilateral_uniform", [-9, 9], 3, rng)


def test_rescale_keeps_ratio_within_1000x600():
    assert rescale_size(500, 375) == (800, 600)  # short side binds
    assert rescale_size(1920, 1080) == (1000, 563)  # long side binds: 1080 * 1000/1920
    assert rescale_size(375, 500) == (600, 800)  # portrait
    assert rescale_size(2000, 1200) == (1000, 600)


def test_flip_boxes_mirror():
    out = flip_boxes(torch.tensor([[10.0, 5.0, 30.0, 25.0]]), 100)
    assert out.tolist() == [[70.0, 5.0, 90.0, 25.0]]


def test_pad_batch_multiple_of_16():
    out = pad_batch([torch.ones(3, 37, 50), torch.ones(3, 20, 65)], 16)
    assert out.shape == (2, 3, 48, 80)
    assert out[0, :, 37:].abs().sum() == 0 and out[0, :, :37, :50].min() == 1


def test_key_frames_only_flagged_and_not_empty(tiny):
    vid, det = tiny
    ds = TrainDataset([(vid, True, True)], cfg())
    frames = set(int(vid.img_frame_ids[ds.videos[c][p]]) for _, c, p in ds.keys)
    assert frames == {0, 3, 9}  # 6 is a key frame with only a crowd box
    assert ds.num_skipped_empty == 2
    every = TrainDataset([(vid, True, False)], cfg())
    assert len(every) == 2 * (12 - 2)  # frames 5 and 6 have no target
    mixed = TrainDataset([(vid, True, True), (det, False, True)], cfg())
    assert len(mixed) == len(ds) + 2


def test_item_refs_transform_and_shared_flip(tiny):
    vid, det = tiny
    ds = TrainDataset([(vid, True, True), (det, False, True)], cfg(flip_prob=0.5))
    flips = set()
    for index in range(len(ds)):
        for seed in range(4):
            item = ds[(index, seed)]
            rows = item["frame_rows"]
            key_frame = int(item_source(ds, index).img_frame_ids[rows[0]])
            assert len(item["frames"]) == 3 and item["img_size"] == (72, 96)
            if index >= len(ds) - 2:  # DET image: refs are key copies
                assert rows == [rows[0]] * 3
            else:
                f = [int(vid.img_frame_ids[r]) for r in rows]
                assert max(0, key_frame - 9) <= f[1] <= key_frame and f[2] >= key_frame
            # box x1..x2 (VID 4..14, DET 1..21 at 48 wide) doubled at 96 wide, mirrored on flip
            x1, x2 = (4, 14) if index < len(ds) - 2 else (1, 21)
            want = [96 - 2 * x2, 2 * x1][not item["flip"]]
            assert item["boxes"][0, 0].item() == pytest.approx(want)
            flips.add(item["flip"])
    assert flips == {True, False}


def test_sample_scale_range_draws_every_whole_pixel_between_the_bounds_and_value_picks_a_listed_scale():
    rng = np.random.default_rng(0)
    drawn = [sample_scale([[128, 102], [200, 160]], "range", rng) for _ in range(4000)]
    longs, shorts = {d[0] for d in drawn}, {d[1] for d in drawn}
    assert longs == set(range(128, 201)) and shorts == set(range(102, 161))  # mmdet random_sample
    # long and short are drawn independently (not one factor), in either order within a pair
    assert sample_scale([[102, 128], [160, 200]], "range", np.random.default_rng(3)) == sample_scale(
        [[128, 102], [200, 160]], "range", np.random.default_rng(3)
    )
    picked = {sample_scale([[96, 72], [64, 48], [128, 96]], "value", rng) for _ in range(200)}
    assert picked == {(96, 72), (64, 48), (128, 96)}
    assert sample_scale([[48, 64]], "range", rng) == (64, 48)


def test_multiscale_training_resizes_key_and_refs_alike_and_scales_their_boxes(tiny):
    vid, _ = tiny  # 48x36 frames, the first video's box x 4..14
    plain = TrainDataset([(vid, True, True)], cfg(flip_prob=0.0))
    multi = TrainDataset([(vid, True, True)], cfg(flip_prob=0.0, train_scales=[[48, 36], [144, 108]]))
    sizes = set()
    for seed in range(12):
        item = multi[(0, seed)]
        h, w = item["img_size"]
        assert all(tuple(f.shape[-2:]) == (h, w) for f in item["frames"])  # refs share the key's scale
        assert 36 <= h <= 108 and w == round(h * 48 / 36)
        assert item["boxes"][0, 0].item() == pytest.approx(4 * w / 48)
        assert item["boxes"][0, 2].item() == pytest.approx(14 * w / 48)
        sizes.add((h, w))
        # the draw comes after the ref and flip draws: the same refs as without multi-scale
        assert item["frame_rows"] == plain[(0, seed)]["frame_rows"]
    assert len(sizes) > 6
    assert plain[(0, 5)]["img_size"] == (72, 96)  # no train_scales: img_scale, as before


def test_train_scales_are_checked():
    with pytest.raises(ValueError, match="exactly two scales"):
        DataConfig(train_scales=[[96, 72], [64, 48], [128, 96]])
    with pytest.raises(ValueError, match="pairs of positive"):
        DataConfig(train_scales=[[96, 72, 1], [64, 48]])
    assert DataConfig(train_scales=[[96, 72], [64, 48], [128, 96]], scale_mode="value").scale_mode == "value"


def item_source(ds, index):
    return ds.sources[int(ds.keys[index][0])]


def test_flip_is_shared_by_key_and_refs(tmp_path):
    """Frames with a bright left half: after a flip every frame is bright on the right."""
    imgs, anns = [], []
    for f in range(4):
        arr = np.zeros((16, 32, 3), np.uint8)
        arr[:, :16] = 250
        Image.fromarray(arr).save(tmp_path / f"{f}.png")
        imgs.append({"id": f + 1, "file_name": f"{f}.png", "width": 32, "height": 16, "video_id": 1, "frame_id": f})
        anns.append({"id": f + 1, "image_id": f + 1, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0})
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "categories": [{"id": 1, "name": "x"}],
                "videos": [{"id": 1, "name": "v"}],
                "images": imgs,
                "annotations": anns,
            }
        )
    )
    coco = load_cocovid(tmp_path / "a.json")
    ds = TrainDataset([(coco, True, True)], replace(DataConfig(), img_scale=[32, 16]))
    for seed in range(8):
        item = ds[(1, seed)]
        for frame in item["frames"]:
            left, right = frame[:, :, :16].mean(), frame[:, :, 16:].mean()
            assert (left < right) == item["flip"]


def test_collate_layout(tiny):
    vid, _ = tiny
    ds = TrainDataset([(vid, True, True)], replace(DataConfig(), img_scale=[100, 70]))
    batch = collate([ds[(0, 0)], ds[(1, 1)]], 16)
    assert batch["images"].shape == (2, 3, 3, 80, 96)  # 93x70 padded to 96x80
    assert batch["image_sizes"] == [(70, 93), (70, 93)]
    assert batch["targets"][0]["labels"].dtype == torch.int64
    assert batch["targets"][0]["labels"].tolist() == [1]
    assert batch["images"][0, :, :, 70:].abs().sum() == 0


def test_sampler_resume_skips_consumed_part_and_splits_ranks():
    full = list(ResumableSampler(10, 2, seed=3))
    resumed = ResumableSampler(10, 2, seed=3)
    resumed.set_epoch(0, start_batch=2)
    assert list(resumed) == full[4:] and len(resumed) == 6
    other_epoch = ResumableSampler(10, 2, seed=3)
    other_epoch.set_epoch(1)
    assert [i for i, _ in other_epoch] != [i for i, _ in full]
    ranks = [list(ResumableSampler(7, 2, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 7 padded to 8
    assert {i for r in ranks for i, _ in r} == set(range(7))
    seeds = [s for r in ranks for _, s in r]
    assert len(set(seeds)) == 8


def test_uint8_resize_is_mmcv_imresize_and_float_resize_samples_alike():
    """uint8 frames are resized as mmcv's imresize does (cv2 INTER_LINEAR on uint8), so the
    network sees mmtracking's very input; float input takes the same bilinear sampling."""
    import cv2

    g = np.random.default_rng(3)
    img = g.integers(0, 256, (3, 37, 61), dtype=np.uint8)
    out = resize(torch.from_numpy(img), (50, 83))
    want = cv2.resize(np.ascontiguousarray(img.transpose(1, 2, 0)), (83, 50), interpolation=cv2.INTER_LINEAR)
    assert out.dtype == torch.float32 and out.shape == (3, 50, 83)
    assert torch.equal(out, torch.from_numpy(want.transpose(2, 0, 1)).float())
    smooth = resize(torch.from_numpy(img).float(), (50, 83))
    assert (smooth - out).abs().max() <= 1.0  # cv2 rounds to the uint8 grid; no other difference
    assert torch.equal(resize(torch.from_numpy(img), (37, 61)), torch.from_numpy(img).float())
