"""Training checkpoints: RNG capture/restore, atomic save, ``latest.pth``, safe loading.

A checkpoint is a dict of tensors and plain Python values only, so that
``torch.load(weights_only=True)`` reads it:

- ``model``: state dict (unwrapped from DDP); ``optimizer``; ``scheduler``
  (``{"base_lr", "iter"}``); ``scaler`` (GradScaler state, ``{}`` when AMP is off);
- ``rng``: list with one entry per rank of :func:`rng_state`;
- ``sampler``: ``{"epoch", "batch", "seed", "world_size", "batch_size"}`` (``batch``:
  batches already consumed in ``epoch``);
- ``epoch`` (finished epochs), ``iter`` (global iterations done), ``config`` (resolved,
  as a plain dict), ``format`` = ``"lvod-train-checkpoint"``.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from lvod.errors import DataError
from lvod.io import atomic_write, torch_save_atomic

FORMAT = "lvod-train-checkpoint"


def rng_state() -> dict:
    """Every RNG this process draws from, as tensors and plain Python values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` atomically to ``path`` (a crash leaves the previous file intact)."""
    return torch_save_atomic({"format": FORMAT, **state}, path)


def update_latest(path, latest) -> Path:
    """Point ``latest`` at checkpoint ``path`` atomically.

    A hard link under a temporary name renamed over ``latest`` (no second copy of a large
    file); where hard links are unsupported, an atomic byte copy.
    """
    path, latest = Path(path), Path(latest)
    tmp = latest.with_name(f".{latest.name}.{os.getpid()}.link")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, latest)
    except OSError:
        if tmp.exists():
            tmp.unlink()
        with open(path, "rb") as src, atomic_write(latest, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    return latest


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; DataError when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint", "does not exist", "check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise DataError(path, "checkpoint", f"cannot be loaded safely ({exc})",
                        "use a checkpoint written by lvod, or convert it to a plain state "
                        "dict of tensors") from exc


def state_dict_of(ckpt: dict) -> dict:
    """The model weights in a checkpoint: ``ckpt["model"]``, ``ckpt["state_dict"]`` or
    ``ckpt`` itself when it is a plain state dict."""
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def load_matching_weights(model: torch.nn.Module, weights: dict) -> dict:
    """Copy every tensor whose name and shape match into ``model``.

    Returns ``{"loaded": [...], "shape_mismatch": [...], "missing": [...],
    "unexpected": [...]}`` (lists of parameter names) so that the caller can report
    what was not initialised (e.g. a BAGS classifier replacing a softmax one).
    """
    own = model.state_dict()
    loaded, mismatch = [], []
    to_load = {}
    for name, value in weights.items():
        if name in own and torch.is_tensor(value) and own[name].shape == value.shape:
            to_load[name] = value
            loaded.append(name)
        elif name in own:
            mismatch.append(name)
    model.load_state_dict(to_load, strict=False)
    return {"loaded": loaded, "shape_mismatch": mismatch,
            "missing": [k for k in own if k not in weights],
            "unexpected": [k for k in weights if k not in own]}


def prune_iter_checkpoints(run_dir, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``iter_N.pth`` files; returns the deleted ones."""
    found = []
    for p in Path(run_dir).glob("iter_*.pth"):
        m = re.fullmatch(r"iter_(\d+)\.pth", p.name)
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    old = [p for _, p in found[:-keep]] if keep > 0 else [p for _, p in found]
    for p in old:
        p.unlink(missing_ok=True)
    return old
