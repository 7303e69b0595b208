"""Training samplers: which key frames an epoch visits, in which order, on which rank.

``data.sampler`` chooses one (``lvod.engine.data.build_sampler``):

- ``"uniform"`` (:class:`ResumableSampler`): every key frame once per epoch, shuffled
  with ``torch.Generator().manual_seed(seed + epoch)`` (the mmdet/mmtracking default).
- ``"repeat_factor"`` (:class:`RepeatFactorSampler`): repeat factor sampling (RFS,
  Gupta et al., LVIS, CVPR 2019; detectron2's ``RepeatFactorTrainingSampler``). Class
  ``c`` has the repeat factor ``r(c) = max(1, sqrt(t / f(c)))`` with ``f(c)`` the fraction
  of training key frames that contain ``c`` (a non-crowd box of it) and ``t`` =
  ``data.repeat_threshold`` (0.001 by default); a key frame's factor is the largest of
  its classes' (1 for a frame without boxes). Each epoch a frame appears
  ``floor(r) + Bernoulli(r - floor(r))`` times (stochastic rounding, redrawn per epoch).
- ``"class_balanced"`` (:class:`ClassBalancedSampler`): the sampling of cRT (Kang et al.,
  ICLR 2020): each draw picks a class uniformly among the classes with at least one
  training key frame, then one of that class's key frames uniformly (with replacement; a
  key frame without boxes is never drawn).

**Epoch length.** lvod's schedule is counted in epochs of a fixed number of iterations
(the lr steps, checkpoints and resume positions depend on it), so every epoch of a
sampler has the same length: ``uniform`` and ``class_balanced`` the number of key frames
N; ``repeat_factor`` ``round(sum of the frames' factors)``, the expected length of the
stochastic list. That epoch's drawn list (whose length varies a little around it) is
shuffled and then cut, or wrapped, to that length; which frames are cut or doubled is as
random as the shuffle, so every frame keeps its expected number of visits up to that
rounding.

**Shared contract** (what makes resume and DDP exact). Epoch ``e``'s list is a pure
function of ``(seed, e)`` and the dataset (each sampler draws from its own numpy
generator seeded with ``[seed, e, kind]``, never from a global RNG); it is wrapped to a
multiple of ``world_size * batch_size`` and rank ``r`` takes positions
``r, r + world_size, ...`` (disjoint shares that together cover the list); a resume
skips the batches already consumed (``set_epoch(e, start_batch)``); and each position
carries a sample seed (reference frames, flip) that depends only on
``(seed, e, position)``.

The maths is in pure functions (:func:`key_frame_class_fraction`,
:func:`repeat_factors`, :func:`stochastic_repeat`, :func:`fit_length`,
:func:`class_balanced_draw`, :func:`rank_positions`); the classes only hold the data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TRAIN_SAMPLERS = ("uniform", "repeat_factor", "class_balanced")  # = lvod.config DataConfig.sampler choices

# The third word of each sampler's generator seed [seed, epoch, kind], so that the
# samplers never share a random stream with each other or with the sample seeds.
_STREAM = {"repeat_factor": 1, "class_balanced": 2}


# ----------------------------------------------------------------------------- pure maths


def key_frame_class_fraction(key_labels, num_classes: int) -> np.ndarray:
    """``f`` float64 ``(C,)``: ``f[c - 1]`` = fraction of the key frames whose labels
    include class ``c`` (labels are 1..C, ``key_labels[i]`` the labels of frame i; a label
    repeated within a frame counts once)."""
    n = len(key_labels)
    if n == 0:
        raise ValueError("no key frames")
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for labels in key_labels:
        counts[np.unique(np.asarray(labels, dtype=np.int64))] += 1
    return counts[1:] / n


def repeat_factors(key_labels, num_classes: int, threshold: float) -> np.ndarray:
    """Repeat factor of each key frame, float64 ``(N,)``.

    ``r(c) = max(1, sqrt(threshold / f(c)))`` per class (``f`` from
    :func:`key_frame_class_fraction`), a frame's factor the maximum over its labels, 1
    for a frame without labels.
    """
    if not threshold > 0:
        raise ValueError(f"the repeat threshold must be > 0, got {threshold}")
    frac = key_frame_class_fraction(key_labels, num_classes)
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(threshold / frac))  # inf for absent classes: never looked up
    per_class = np.concatenate([[1.0], per_class])  # index = label
    return np.array(
        [per_class[np.asarray(labels, dtype=np.int64)].max(initial=1.0) for labels in key_labels], dtype=np.float64
    )


def stochastic_repeat(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frame indices, each ``i`` repeated ``floor(r_i)`` times plus once more with
    probability ``r_i - floor(r_i)``, in index order: int64 ``(sum of the draws,)``."""
    factors = np.asarray(factors, dtype=np.float64)
    whole = np.floor(factors)
    counts = whole.astype(np.int64) + (rng.random(len(factors)) < factors - whole)
    return np.repeat(np.arange(len(factors), dtype=np.int64), counts)


def fit_length(order: np.ndarray, length: int) -> np.ndarray:
    """``order`` cut to ``length`` items, or wrapped around (repeated from its start) up
    to it."""
    if len(order) == 0:
        raise ValueError("cannot fit an empty list to a length")
    return np.resize(np.asarray(order, dtype=np.int64), length)


def class_frame_table(key_labels, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, ptr, frames)``: the classes (labels) with at least one key frame,
    and CSR lists of their key frames: those of ``classes[k]`` are
    ``frames[ptr[k]:ptr[k + 1]]`` (ascending)."""
    lists: list[list[int]] = [[] for _ in range(num_classes + 1)]
    for i, labels in enumerate(key_labels):
        for c in np.unique(np.asarray(labels, dtype=np.int64)):
            lists[int(c)].append(i)
    classes = np.array([c for c in range(1, num_classes + 1) if lists[c]], dtype=np.int64)
    sizes = np.array([len(lists[c]) for c in classes], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    frames = np.array([i for c in classes for i in lists[c]], dtype=np.int64)
    return classes, ptr, frames


def class_balanced_draw(ptr: np.ndarray, frames: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` frame indices: a class uniformly from the ``len(ptr) - 1`` classes of the
    CSR table (:func:`class_frame_table`), then one of its frames uniformly."""
    num = len(ptr) - 1
    if num < 1:
        raise ValueError("no class has a key frame")
    k = rng.integers(num, size=size)
    start, count = ptr[k], ptr[k + 1] - ptr[k]
    return frames[start + np.floor(rng.random(size) * count).astype(np.int64)]


def rank_positions(total: int, rank: int, world_size: int) -> np.ndarray:
    """The positions of a padded epoch list (``total`` a multiple of ``world_size``) that
    rank ``rank`` takes: ``rank, rank + world_size, ...``."""
    return np.arange(rank, total, world_size)


# ----------------------------------------------------------------------------- samplers


class ResumableSampler(torch.utils.data.Sampler):
    """``"uniform"``: shuffled, rank-split, resumable order of ``(index, sample_seed)``.

    Epoch ``e`` uses the permutation of ``torch.Generator().manual_seed(seed + e)``,
    padded by wrapping to a multiple of ``world_size * batch_size`` (every rank gets the
    same number of full batches), rank r takes positions r, r + world_size, ...
    ``set_epoch(e, start_batch)`` skips the first ``start_batch`` batches of the epoch (the
    part consumed before a resume). A sample's seed depends only on
    ``(seed, epoch, position in the epoch)``.

    Subclasses change only :meth:`epoch_indices` (and :attr:`epoch_length`).
    """

    kind = "uniform"

    def __init__(
        self,
        num_samples: int,
        batch_size: int = 1,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if num_samples < 1:
            raise ValueError("ResumableSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def epoch_length(self) -> int:
        """Samples in one epoch, over all ranks, before padding."""
        return self.n

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank draws in one epoch."""
        return math.ceil(self.epoch_length / (self.world_size * self.batch_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices of epoch ``epoch`` in order, int64 ``[epoch_length]``."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            return torch.randperm(self.n, generator=gen).numpy()
        return np.arange(self.n)

    def _rng(self, epoch: int) -> np.random.Generator:
        """This sampler's generator for ``epoch`` (a pure function of seed and epoch)."""
        return np.random.default_rng([self.seed, epoch, _STREAM[self.kind]])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of epoch ``epoch``, padded: int64 ``[world * batch * batches]``."""
        total = self.batches_per_epoch * self.world_size * self.batch_size
        return np.resize(self.epoch_indices(epoch), total)

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        positions = rank_positions(len(order), self.rank, self.world_size)
        seeds = np.random.SeedSequence([self.seed, self.epoch]).generate_state(len(order), np.uint64)
        for p in positions[self.start_batch * self.batch_size :]:
            yield int(order[p]), int(seeds[p] >> np.uint64(1))

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def describe(self) -> dict:
        """What the run log records about the sampler."""
        return {"sampler": self.kind, "epoch_samples": self.epoch_length}


class RepeatFactorSampler(ResumableSampler):
    """``"repeat_factor"``: repeat factor sampling over per-frame ``factors`` (float
    ``(N,)``, each >= 1: :func:`repeat_factors`).

    Epoch ``e``: :func:`stochastic_repeat` with the generator ``[seed, e, 1]``, shuffled
    by the same generator, fitted (:func:`fit_length`) to ``round(sum(factors))``.
    """

    kind = "repeat_factor"

    def __init__(self, factors, batch_size: int = 1, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        factors = np.asarray(factors, dtype=np.float64)
        if factors.ndim != 1 or len(factors) == 0 or not np.all(np.isfinite(factors)) or factors.min() < 1:
            raise ValueError("repeat factors must be a non-empty list of finite numbers >= 1")
        super().__init__(len(factors), batch_size, seed=seed, rank=rank, world_size=world_size)
        self.factors = factors
        self._length = max(1, int(round(float(factors.sum()))))

    @property
    def epoch_length(self) -> int:
        return self._length

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        drawn = stochastic_repeat(self.factors, rng)
        return fit_length(rng.permutation(drawn), self._length)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "repeated_key_frames": int((self.factors > 1).sum()),
            "max_repeat_factor": float(self.factors.max()),
        }


class ClassBalancedSampler(ResumableSampler):
    """``"class_balanced"``: :func:`class_balanced_draw` over the CSR table
    ``(classes, ptr, frames)`` of :func:`class_frame_table`, ``num_samples`` draws per
    epoch (the number of key frames), with the generator ``[seed, e, 2]``."""

    kind = "class_balanced"

    def __init__(
        self, num_samples: int, table, batch_size: int = 1, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        super().__init__(num_samples, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.classes, self.ptr, self.frames = (np.asarray(t, dtype=np.int64) for t in table)
        if len(self.classes) == 0:
            raise ValueError("class-balanced sampling needs at least one class with a key frame")
        if len(self.frames) and (self.frames.min() < 0 or self.frames.max() >= num_samples):
            raise ValueError("the class table names key frames outside the dataset")

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return class_balanced_draw(self.ptr, self.frames, self.n, self._rng(epoch))

    def describe(self) -> dict:
        return {**super().describe(), "classes_sampled": len(self.classes)}
