"""Training checkpoints: RNG capture/restore, atomic save, ``latest.pth``, safe loading,
and which config changes a resume may make (:func:`config_differences`).

A checkpoint is a dict of tensors and plain Python values only, so that
``torch.load(weights_only=True)`` reads it:

- ``model``: state dict (unwrapped from DDP); ``optimizer``; ``scheduler``
  (``{"base_lr", "iter"}``); ``scaler`` (GradScaler state, ``{}`` when AMP is off);
- ``rng``: list with one entry per rank of :func:`rng_state`;
- ``sampler``: ``{"epoch", "batch", "seed", "world_size", "batch_size"}`` (``batch``:
  batches already consumed in ``epoch``);
- ``epoch`` (finished epochs), ``iter`` (global iterations done), ``config`` (resolved,
  as a plain dict), ``format`` = ``"lvod-train-checkpoint"``;
- ``classes``: ``{"cat_ids", "names", "ann_file"}``, the detector's classes in label order
  (label = index + 1), and ``groups``: the frequency-group table as
  ``lvod.bags_io.groups_to_dict`` writes it (only when ``model.groups_file`` is set), so
  ``lvod test`` / ``lvod infer`` need no data or groups file to name and build the
  detector (``lvod.engine.train.model_identity``; read back by
  ``lvod.engine.inference.checkpoint_classes`` / ``checkpoint_group_table``). Checkpoints
  written before these keys have neither.

:class:`CheckpointWriter` writes ``iter_N.pth`` / ``epoch_N.pth``, points ``latest.pth``
at the newest and deletes the older ones except the epoch ends ``train.keep_checkpoints``
asks for.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from lvod.errors import DataError
from lvod.io import atomic_write, torch_save_atomic

FORMAT = "lvod-train-checkpoint"

logger = logging.getLogger(__name__)


def rng_state() -> dict:
    """Every RNG this process draws from, as tensors and plain Python values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # one state per GPU of the machine that saved it; a machine with fewer GPUs
        # restores those it has (set_rng_state_all would index a missing device)
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)


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
        raise DataError(
            path,
            "checkpoint",
            f"cannot be loaded safely ({exc})",
            "use a checkpoint written by lvod, or convert it to a plain state dict of tensors",
        ) from exc


def has_ema(ckpt: dict) -> bool:
    """Whether an lvod checkpoint carries a moving average of its weights (``train.ema_decay``)."""
    return isinstance(ckpt.get("ema"), dict) and isinstance(ckpt["ema"].get("weights"), dict)


def state_dict_of(ckpt: dict, *, use_ema: bool = True) -> dict:
    """The model weights in a checkpoint: the moving average ``ckpt["ema"]["weights"]``
    when the run kept one and ``use_ema``, else ``ckpt["model"]``, ``ckpt["state_dict"]`` or
    ``ckpt`` itself when it is a plain state dict."""
    if use_ema and has_ema(ckpt):
        return ckpt["ema"]["weights"]
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
    return {
        "loaded": loaded,
        "shape_mismatch": mismatch,
        "missing": [k for k in own if k not in weights],
        "unexpected": [k for k in weights if k not in own],
    }


_CKPT_NAME = re.compile(r"(iter|epoch)_(\d+)\.pth")


def prune_checkpoints(run_dir, newest, keep_epochs=()) -> list[Path]:
    """Delete every ``iter_N.pth`` / ``epoch_N.pth`` of ``run_dir`` except ``newest`` (the
    checkpoint ``latest.pth`` points at) and ``epoch_N.pth`` for N in ``keep_epochs``;
    returns the deleted files. Other files (``latest.pth``, a user's copies) are never
    touched."""
    keep = {Path(newest).name} | {f"epoch_{int(e)}.pth" for e in keep_epochs}
    old = [p for p in sorted(Path(run_dir).glob("*_*.pth")) if _CKPT_NAME.fullmatch(p.name) and p.name not in keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


class CheckpointWriter:
    """Writes a run's checkpoints: ``<run>/<name>``, then ``latest.pth`` and pruning.

    Every rank calls :meth:`save` (the RNG states of all ranks are gathered into the
    checkpoint); rank 0 writes. After each save only the newest checkpoint (what
    ``latest.pth`` points at, all a resume needs) and the epoch ends listed in
    ``keep_epochs`` (``train.keep_checkpoints``) stay on disk.
    """

    def __init__(self, run_dir, *, rank: int, world: int, keep_epochs=()):
        self.run_dir, self.rank, self.world = Path(run_dir), rank, world
        self.keep_epochs = tuple(int(e) for e in keep_epochs)

    def save(self, name: str, state: dict) -> Path | None:
        """Write ``state`` plus ``rng`` (one :func:`rng_state` per rank) as ``name``;
        returns its path on rank 0, None elsewhere."""
        rngs = [rng_state()]
        if self.world > 1:
            import torch.distributed as dist

            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng_state())
        if self.rank != 0:
            return None
        path = save_checkpoint({**state, "rng": rngs}, self.run_dir / name)
        update_latest(path, self.run_dir / "latest.pth")
        prune_checkpoints(self.run_dir, path, self.keep_epochs)
        return path


# ----------------------------------------------------------------------------- resume config

# Keys a resume may change: they do not change the trajectory of the run up to its old end.
# ``train.epochs``: the lr steps are by epoch, so the path up to the old end is the same;
# ``data.imgs_per_gpu``: the sampler check of the resume handles it (epoch boundaries only);
# ``train.init_from``: skipped on resume; the weights files: replaced by the checkpoint's.
RESUME_HARMLESS_KEYS = frozenset(
    {
        "name",
        "train.stop_after_iters",
        "train.epochs",
        "train.progress_bar",
        "train.tensorboard",
        "train.log_interval",
        "train.checkpoint_interval",
        "train.keep_checkpoints",
        "train.init_from",
        "train.find_unused_parameters",
        "data.root",
        "data.workers_per_gpu",
        "data.imgs_per_gpu",
        "model.backbone_weights",
        "model.flownet_weights",
    }
)
RESUME_HARMLESS_SECTIONS = ("test.",)
_ABSENT = "<absent>"


def _flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole values."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict, new: dict) -> tuple[dict, dict]:
    """Compare two configs as plain dicts (``lvod.config.config_to_dict``) key by key.

    Returns ``(harmless, refused)``, each ``{dotted key: (old value, new value)}`` sorted
    by key (``"<absent>"`` where a side lacks the key). ``harmless``: keys in
    :data:`RESUME_HARMLESS_KEYS` or under :data:`RESUME_HARMLESS_SECTIONS`; ``refused``:
    every other difference (it would change the run a resume continues).
    """
    a, b = _flatten(old), _flatten(new)
    harmless, refused = {}, {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va == vb:
            continue
        allowed = key in RESUME_HARMLESS_KEYS or key.startswith(RESUME_HARMLESS_SECTIONS)
        (harmless if allowed else refused)[key] = (va, vb)
    return harmless, refused


def format_differences(diffs: dict) -> str:
    """``"train.lr: 0.01 -> 0.02; ..."`` for messages."""
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diffs.items())


def check_resume_config(ckpt: dict, cfg, path) -> dict:
    """Compare the config stored in checkpoint ``ckpt`` (read from ``path``) with ``cfg``.

    Old checkpoints' configs are migrated first (``lvod.config.config_from_dict``); a
    checkpoint without a config is accepted with a warning. Returns the harmless
    differences ``{key: (old, new)}`` (logged with ``logger.warning``); raises
    ``DataError`` naming every refused key, as ``key: old -> new``.
    """
    from lvod.config import config_from_dict, config_to_dict

    if not isinstance(ckpt.get("config"), dict):
        logger.warning("%s stores no config: cannot check that this resume continues the same run", path)
        return {}
    old = config_to_dict(config_from_dict(ckpt["config"], source=str(path)))
    harmless, refused = config_differences(old, config_to_dict(cfg))
    if refused:
        raise DataError(
            path,
            "config",
            "the resumed run's config differs where it changes the run: " + format_differences(refused),
            "resume with the run's own config (<run>/config.resolved.json) or train into a new --work-dir",
        )
    if harmless:
        logger.warning("resuming from %s with a changed config: %s", path, format_differences(harmless))
    return harmless
