"""Launch ``lvod train`` as a child process and read its run log: the one home of both,
used by notebook 02 (live loss curve) and the main job (:mod:`lvod.jobs`, two runs side by
side).

- :func:`train_command` / :func:`start_training`: the ``lvod train`` command line and the
  child process (its console output goes to ``<work_dir>/train.out``);
- :func:`read_log`: the JSON-lines ``log.jsonl`` a run writes, as a DataFrame; the
  record readers :func:`read_records` / :func:`last_record` are those of
  :mod:`lvod.engine.runlog`, which writes the file (a torn last line of a live log is
  skipped);
- :func:`plot_losses` / :func:`follow`: redraw the loss curve in a notebook until the run ends.

The training itself stays in ``lvod.engine.train``; this module only launches and reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lvod.engine.runlog import last_record, read_records

__all__ = [
    "duration",
    "follow",
    "last_record",
    "plot_losses",
    "progress",
    "read_log",
    "read_records",
    "start_training",
    "train_command",
]


def train_command(config, work_dir, *, gpus: int = 1, resume: bool = False, overrides=()) -> list[str]:
    """``python -m lvod.cli train CONFIG --work-dir DIR --gpus N [--resume] overrides``."""
    return [
        sys.executable,
        "-m",
        "lvod.cli",
        "train",
        str(config),
        "--work-dir",
        str(work_dir),
        "--gpus",
        str(gpus),
        *(["--resume"] if resume else []),
        *map(str, overrides),
    ]


def start_training(
    config, work_dir, *, gpus: int = 1, resume: bool = False, overrides=(), env=None, append: bool = True
) -> subprocess.Popen:
    """Start ``lvod train`` in a child process (``gpus > 1`` makes it launch torchrun).

    Its output goes to ``<work_dir>/train.out`` (appended to, or replaced when
    ``append=False``). ``env``: variables added to this process's environment for the
    child (e.g. ``{"OMP_NUM_THREADS": "1"}``).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(config, work_dir, gpus=gpus, resume=resume, overrides=overrides)
    with open(work_dir / "train.out", "ab" if append else "wb") as out:  # the child keeps its own handle
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else {**os.environ, **env}
        )


def duration(seconds) -> str:
    """``75`` -> ``'1m15s'``, ``3700`` -> ``'1h01m'``, ``None`` -> ``'?'``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress(log_path) -> dict:
    """Where a run stands, from its ``log.jsonl``: ``{"iter", "total", "loss", "eta_s",
    "text"}``; ``text`` reads ``iter 120/1500 (8%) loss 0.931 ETA 5m12s`` (``starting``
    before the first record). ``total`` comes from the run's start record (the last one,
    after a resume), the ETA from the training loop's own estimate."""
    starts = read_records(log_path, "start") if Path(log_path).exists() else []
    total = starts[-1].get("total_iters") if starts else None
    last = last_record(log_path, "train") if Path(log_path).exists() else {}
    it = last.get("iter", 0)
    if not last:
        return {"iter": 0, "total": total, "loss": None, "eta_s": None, "text": "starting"}
    share = f" ({100 * it / total:.0f}%)" if total else ""
    text = f"iter {it}/{total if total else '?'}{share} loss {last.get('loss', float('nan')):.3f}"
    text += f" ETA {duration(last.get('eta_s'))}"
    return {"iter": it, "total": total, "loss": last.get("loss"), "eta_s": last.get("eta_s"), "text": text}


def read_log(path):
    """The JSON-lines training log as a DataFrame (one row per record)."""
    import pandas as pd

    return pd.DataFrame(read_records(path))


def plot_losses(log, ax=None):
    """Every ``loss*`` column of the log against the iteration, log y."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.5))
    if len(log):
        x = log["iter"] if "iter" in log else log.index
        for col in sorted(c for c in log.columns if c.startswith("loss")):
            ax.plot(x, log[col], label=col)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("iteration")
    ax.set_title("training losses")
    fig.tight_layout()
    return fig


def follow(proc: subprocess.Popen, log_path, *, every: float = 10.0) -> int:
    """Redraw the loss curve (and the last log record) every ``every`` seconds until
    ``proc`` ends; return its exit code."""
    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display

    while True:
        code = proc.poll()
        log = read_log(log_path)
        clear_output(wait=True)
        fig = plot_losses(log)
        display(fig)
        plt.close(fig)
        if len(log):
            display(log.iloc[-1].to_dict())
        if code is not None:
            return code
        time.sleep(every)
