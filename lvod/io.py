"""Crash-safe file writing: every output goes to a temporary file, then ``os.replace``.

A killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_json(obj, path, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically and return the path."""
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")
    return Path(path)


def torch_save_atomic(obj, path) -> Path:
    """``torch.save`` through a temporary file (checkpoints survive a killed run)."""
    import torch

    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def save_npz_atomic(path, **arrays) -> Path:
    """``np.savez`` through a temporary file."""
    import numpy as np

    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def save_csv(frame, path) -> Path:
    """A pandas DataFrame as CSV (no index), atomically."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)
    return Path(path)
