"""Training samplers (``data.sampler``): repeat factor sampling on a hand-computed example,
class-balanced draws, and the contract every sampler keeps (deterministic per seed and
epoch, exact mid-epoch resume, disjoint and covering DDP shares). CPU, about 2 s."""

import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from lvod.config import DataConfig, load_config
from lvod.data.cocovid import load_cocovid
from lvod.engine import samplers as S
from lvod.engine.data import TrainDataset, build_sampler
from lvod.errors import DataError

# Ten key frames, three classes, t = 0.4 (a large threshold so that a small example repeats):
# f1 = 7/10 -> r1 = max(1, sqrt(0.4 / 0.7)) = 1; f2 = 3/10 (frames 5, 6, 9; frame 9 holds
# two boxes of class 2, counted once) -> r2 = sqrt(4/3) = 1.1547005383792515;
# f3 = 1/10 -> r3 = sqrt(4) = 2; frame 8 has no box -> 1; frame 7 = max(r1, r3) = 2.
KEY_LABELS = [[1], [1], [1], [1], [1], [1, 2], [2], [1, 3], [], [2, 2]]
R2 = 2 / math.sqrt(3)
FACTORS = [1, 1, 1, 1, 1, R2, R2, 2, 1, R2]


def make(kind, seed=0, batch=2, rank=0, world=1):
    if kind == "uniform":
        return S.ResumableSampler(len(KEY_LABELS), batch, seed=seed, rank=rank, world_size=world)
    if kind == "repeat_factor":
        return S.RepeatFactorSampler(FACTORS, batch, seed=seed, rank=rank, world_size=world)
    table = S.class_frame_table(KEY_LABELS, 3)
    return S.ClassBalancedSampler(len(KEY_LABELS), table, batch, seed=seed, rank=rank, world_size=world)


def test_repeat_factors_by_hand():
    assert S.key_frame_class_fraction(KEY_LABELS, 3) == pytest.approx([0.7, 0.3, 0.1])
    assert S.repeat_factors(KEY_LABELS, 3, 0.4) == pytest.approx(FACTORS, abs=1e-12)
    assert S.repeat_factors(KEY_LABELS, 3, 0.001) == pytest.approx([1.0] * 10)  # LVIS's t: nothing is rare here
    # f1 = 1/4 -> sqrt(1 / 0.25) = 2; f2 = 3/4 -> sqrt(4/3)
    assert S.repeat_factors([[1], [2], [2], [2]], 2, 1.0) == pytest.approx([2.0, R2, R2, R2])
    sampler = make("repeat_factor")
    assert sampler.epoch_length == 11  # round(8 + 3 * 1.1547...) = round(11.464)
    assert sampler.batches_per_epoch == 6
    with pytest.raises(ValueError, match="> 0"):
        S.repeat_factors(KEY_LABELS, 3, 0.0)
    with pytest.raises(ValueError, match=">= 1"):
        S.RepeatFactorSampler([1.0, 0.5])


def test_stochastic_rounding_has_the_expected_length_and_counts():
    rng = np.random.default_rng(0)
    draws = [S.stochastic_repeat(np.array(FACTORS), rng) for _ in range(4000)]
    assert np.mean([len(d) for d in draws]) == pytest.approx(8 + 3 * R2, abs=0.05)  # 5 sigma
    counts = np.mean([np.bincount(d, minlength=10) for d in draws], axis=0)
    assert counts == pytest.approx(FACTORS, abs=0.05)
    assert all(set(np.bincount(d, minlength=10)[[0, 1, 8]]) == {1} for d in draws[:50])  # whole factors: exact
    assert all(np.bincount(d, minlength=10)[7] == 2 for d in draws[:50])
    # through the sampler (epochs fitted to 11 samples): frame 7 visited twice as often as frame 0
    sampler = make("repeat_factor", seed=3)
    visits = np.sum([np.bincount(sampler.epoch_indices(e), minlength=10) for e in range(3000)], axis=0)
    assert visits.sum() == 3000 * 11
    assert visits[7] / visits[[0, 1, 2, 3, 4, 8]].mean() == pytest.approx(2.0, rel=0.05)
    assert visits[[5, 6, 9]].mean() / visits[[0, 1, 2, 3, 4, 8]].mean() == pytest.approx(R2, rel=0.05)


@pytest.mark.parametrize("kind", ["uniform", "repeat_factor", "class_balanced"])
def test_epochs_are_deterministic_per_seed_and_epoch(kind):
    a, b = make(kind, seed=5), make(kind, seed=5)
    assert np.array_equal(a.epoch_indices(3), b.epoch_indices(3))
    assert len(a.epoch_indices(3)) == a.epoch_length
    others = [make(kind, seed=6).epoch_indices(3)] + [a.epoch_indices(e) for e in (0, 1, 2, 4)]
    assert not all(np.array_equal(a.epoch_indices(3), o) for o in others)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)


@pytest.mark.parametrize("kind", ["uniform", "repeat_factor", "class_balanced"])
def test_resume_mid_epoch_continues_the_same_order(kind):
    for rank in (0, 1):
        whole = make(kind, seed=2, batch=2, rank=rank, world=2)
        whole.set_epoch(4)
        straight = list(whole)
        assert len(straight) == len(whole) == whole.batches_per_epoch * 2
        resumed = make(kind, seed=2, batch=2, rank=rank, world=2)
        resumed.set_epoch(4, start_batch=1)  # one batch consumed before the interruption
        assert list(resumed) == straight[2:] and len(resumed) == len(straight) - 2


@pytest.mark.parametrize("kind", ["uniform", "repeat_factor", "class_balanced"])
def test_ddp_shares_are_disjoint_and_cover_the_epoch(kind):
    world, batch = 3, 2
    shares = []
    for rank in range(world):
        s = make(kind, seed=7, batch=batch, rank=rank, world=world)
        s.set_epoch(1)
        shares.append(list(s))
    order = make(kind, seed=7, batch=batch, world=world).epoch_order(1)
    assert len(order) % (world * batch) == 0
    assert len({len(x) for x in shares}) == 1  # the same number of batches on every rank
    positions = [set(seed for _, seed in x) for x in shares]  # a sample seed names its position
    assert sum(len(p) for p in positions) == len(order) and not set.intersection(*positions)
    interleaved = [shares[p % world][p // world][0] for p in range(len(order))]
    assert interleaved == order.tolist()
    assert set(make(kind, seed=7, world=world).epoch_indices(1)) <= set(interleaved)  # padding only repeats


def test_uniform_is_the_previous_sampler_bit_for_bit():
    n, batch, world, seed, epoch = 23, 2, 2, 4, 3
    s = S.ResumableSampler(n, batch, seed=seed, rank=1, world_size=world)
    s.set_epoch(epoch, 2)
    total = math.ceil(n / (world * batch)) * world * batch
    order = np.resize(torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy(), total)
    seeds = np.random.SeedSequence([seed, epoch]).generate_state(total, np.uint64)
    want = [(int(order[p]), int(seeds[p] >> np.uint64(1))) for p in np.arange(1, total, world)[2 * batch :]]
    assert list(s) == want
    assert S.ResumableSampler(5, 1, shuffle=False).epoch_indices(0).tolist() == [0, 1, 2, 3, 4]


def test_class_balanced_draws_each_class_uniformly():
    # 100 single-class frames: class 1 in 90, class 2 in 9, class 3 in 1
    labels = [[1]] * 90 + [[2]] * 9 + [[3]]
    classes, ptr, frames = S.class_frame_table(labels, 4)  # class 4 has no frame: never drawn
    assert classes.tolist() == [1, 2, 3] and ptr.tolist() == [0, 90, 99, 100]
    sampler = S.ClassBalancedSampler(100, (classes, ptr, frames), 4, seed=0)
    assert sampler.epoch_length == 100 and sampler.batches_per_epoch == 25
    drawn = np.concatenate([sampler.epoch_indices(e) for e in range(30)])  # 3000 draws
    per_class = np.array([(drawn < 90).sum(), ((drawn >= 90) & (drawn < 99)).sum(), (drawn == 99).sum()])
    sigma = math.sqrt(3000 * (1 / 3) * (2 / 3))  # 25.8
    assert np.all(np.abs(per_class - 1000) < 5 * sigma), per_class
    within = np.bincount(drawn[(drawn >= 90) & (drawn < 99)] - 90, minlength=9)  # frames of class 2: uniform
    assert np.all(np.abs(within - per_class[1] / 9) < 5 * math.sqrt(per_class[1] / 9)), within
    # a frame with two classes is reached through both: P = sum over its classes of 1 / (K * n_c)
    multi = S.class_frame_table([[1, 2], [1], [2], [2]], 2)
    draws = S.class_balanced_draw(multi[1], multi[2], 20000, np.random.default_rng(1))
    want = np.array([1 / 4 + 1 / 6, 1 / 4, 1 / 6, 1 / 6])
    assert np.bincount(draws, minlength=4) / 20000 == pytest.approx(want, abs=0.015)


def test_config_choice_and_threshold_are_checked(tmp_path):
    choices = next(f for f in fields(DataConfig) if f.name == "sampler").metadata["choices"]
    assert choices == S.TRAIN_SAMPLERS and DataConfig().sampler == "uniform"
    assert DataConfig().repeat_threshold == 0.001
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsampler = "repeat_factor"\nrepeat_threshold = 0.01\n')
    loaded = load_config(cfg)
    assert (loaded.data.sampler, loaded.data.repeat_threshold) == ("repeat_factor", 0.01)
    with pytest.raises(DataError, match="data.sampler.*'balanced' is not one of"):
        load_config(cfg, ["data.sampler=balanced"])
    with pytest.raises(DataError, match="repeat_threshold must be > 0"):
        load_config(cfg, ["data.repeat_threshold=0"])


def test_build_sampler_on_real_key_frames(tmp_path, tiny_vid):
    vid, det = tiny_vid(tmp_path, num_videos=2, num_frames=12, size=(40, 30))
    # keys: frames 0, 3, 9 of each video (frame 6 has only a crowd box); video 0 shows
    # class 1, video 1 class 2; the two DET images class 2 -> f1 = 3/8, f2 = 5/8
    sources = [
        (load_cocovid(vid, images_root=tmp_path), True, True),
        (load_cocovid(det, images_root=tmp_path), False, True),
    ]
    data = replace(DataConfig(), imgs_per_gpu=2, workers_per_gpu=0)
    dataset = TrainDataset(sources, data)
    labels = dataset.key_labels()
    assert sorted(tuple(x.tolist()) for x in labels) == [(1,)] * 3 + [(2,)] * 5
    assert type(build_sampler(dataset, data)) is S.ResumableSampler
    rfs = build_sampler(dataset, replace(data, sampler="repeat_factor", repeat_threshold=0.5), rank=1, world_size=2)
    assert isinstance(rfs, S.RepeatFactorSampler) and (rfs.rank, rfs.world_size, rfs.batch_size) == (1, 2, 2)
    want = [math.sqrt(0.5 / (3 / 8)) if x.tolist() == [1] else 1.0 for x in labels]  # r2 = max(1, sqrt(0.8)) = 1
    assert rfs.factors == pytest.approx(want)
    assert rfs.epoch_length == round(3 * R2 + 5) and rfs.describe()["repeated_key_frames"] == 3
    cb = build_sampler(dataset, replace(data, sampler="class_balanced"), seed=3)
    assert isinstance(cb, S.ClassBalancedSampler) and cb.classes.tolist() == [1, 2] and cb.epoch_length == 8
    assert all(0 <= i < len(dataset) for i in cb.epoch_indices(0))
