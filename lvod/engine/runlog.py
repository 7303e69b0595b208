"""What a training run writes about itself: ``log.jsonl`` (+ TensorBoard) and interval means.

``log.jsonl`` holds one JSON object per line; notebooks, ``lvod.jobs`` and
``lvod.monitor`` read it. Its records:

- ``{"event": "start", "iter", "world_size", "device", "total_batch", "base_lr", "amp",
  "iters_per_epoch", "total_iters", "key_frames", "skipped_empty_key_frames",
  "resumed_from", "run_dir"}``: once per (re)start;
- ``{"event": "init_from", "iter", "path", "loaded", "shape_mismatch", "missing",
  "unexpected"}``: ``train.init_from`` was applied;
- ``{"event": "resume_config_diff", "iter", "checkpoint", "changed"}``: a resume whose
  config differs harmlessly from the checkpoint's (``changed``: ``{key: [old, new]}``);
- ``{"event": "train", "iter", "epoch", "lr", "loss_*"..., "loss", <diagnostics>...,
  "grad_norm", "time", "data_time", "memory_mb", "eta_s"}``: every
  ``train.log_interval`` iterations, written by :meth:`IntervalMeter.record`.

:func:`read_records` and :func:`last_record` read it back (also while a run writes it).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from lvod.io import atomic_write


class RunLog:
    """``<run>/log.jsonl`` and, when asked and importable, ``<run>/tensorboard``.

    ``keep_until_iter``: on a resume, lines of an existing ``log.jsonl`` whose ``iter`` is
    past this are dropped first (they will be written again), so the resumed log reads as
    one run, and so is a torn last line of a killed run; None keeps the file as it is.
    With ``tensorboard`` on but the package missing it warns once (``warnings.warn``) and
    logs to ``log.jsonl`` only. Built on rank 0 only.
    """

    def __init__(self, run_dir, keep_until_iter: int | None, tensorboard: bool):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "log.jsonl"
        if keep_until_iter is not None and self.path.exists():
            kept = [r for r in read_records(self.path) if r.get("iter", 0) <= keep_until_iter]
            with atomic_write(self.path) as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in kept))
        self.fh = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "train.tensorboard is on but the tensorboard package is not installed: "
                    "pip install 'lvod[tensorboard]'; logging to log.jsonl only",
                    stacklevel=2,
                )

    def __call__(self, record: dict) -> None:
        """Append ``record`` as one line (flushed); its numbers also go to TensorBoard
        as ``train/<key>`` at step ``record["iter"]``."""
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None and "iter" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"train/{k}", v, record["iter"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


class IntervalMeter:
    """Means over one log interval of the per-iteration values and timings.

    Call :meth:`tick` once per iteration, then :meth:`record` at the log points (it
    resets the sums). An interval may span an epoch end: the meter lives as long as the run.
    The clock starts at construction and restarts with :meth:`restart_clock`.
    """

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t_iter = self.t_data = 0.0
        self.restart_clock()

    def restart_clock(self) -> None:
        """The next iteration's data wait starts now."""
        self.last = time.perf_counter()

    def tick(self, values: dict[str, float], data_done: float) -> None:
        """Add one iteration: ``values`` ``{name: float}`` (losses, their total ``loss``,
        diagnostics) and ``data_done`` (``time.perf_counter()`` when its batch arrived)."""
        now = time.perf_counter()
        self.t_data += data_done - self.last
        self.t_iter += now - self.last
        self.last = now
        self.n += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def record(self, *, it: int, epoch: int, lr: float, grad_norm: float, memory_mb: float, iters_left: int) -> dict:
        """The ``train`` record of the interval, then reset.

        Keys: ``event`` (``"train"``), ``iter``, ``epoch`` (1-based, the epoch being
        trained), ``lr`` (of the last iteration), each value name's mean over the interval
        (a name missing in some iterations counts 0 there), ``grad_norm`` (last iteration;
        NaN when clipping is off), ``time`` / ``data_time`` (mean seconds per iteration,
        total / waiting for data), ``memory_mb`` (peak), ``eta_s`` (``time`` x
        ``iters_left``).
        """
        n = max(self.n, 1)
        record = {
            "event": "train",
            "iter": it,
            "epoch": epoch,
            "lr": lr,
            **{k: v / n for k, v in self.sums.items()},
            "grad_norm": grad_norm,
            "time": self.t_iter / n,
            "data_time": self.t_data / n,
            "memory_mb": memory_mb,
            "eta_s": self.t_iter / n * iters_left,
        }
        self.sums, self.n, self.t_iter, self.t_data = {}, 0, 0.0, 0.0
        return record


def read_records(path, event: str | None = None) -> list[dict]:
    """The records of a ``log.jsonl`` in order (only those of ``event`` when given); a
    missing file gives ``[]`` and a torn line (a live run mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event is None or record.get("event") == event:
            records.append(record)
    return records


def last_record(path, event: str = "train") -> dict:
    """The newest record of ``event`` in a ``log.jsonl``, ``{}`` when there is none."""
    records = read_records(path, event)
    return records[-1] if records else {}
