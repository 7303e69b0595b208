"""Follow a training run from a notebook: launch ``lvod train`` as a child process and redraw
its loss curve from the run's ``log.jsonl`` until it ends.

The training itself stays in ``lvod.engine.train``; this module only launches and reads.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def start_training(config, work_dir, *, gpus: int = 1, resume: bool = False, overrides=()) -> subprocess.Popen:
    """Start ``lvod train`` in a child process (``--gpus N > 1`` makes it launch torchrun).

    Its output goes to ``<work_dir>/train.out``.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lvod.cli", "train", str(config), "--work-dir", str(work_dir),
           "--gpus", str(gpus), *(["--resume"] if resume else []), *map(str, overrides)]
    out = open(work_dir / "train.out", "ab")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def read_log(path):
    """The JSON-lines training log as a DataFrame (a torn last line of a live log is skipped)."""
    import pandas as pd

    rows = []
    path = Path(path)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


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
    """Redraw the loss curve every ``every`` seconds until ``proc`` ends; return its exit code."""
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
            print(log.iloc[-1].to_dict())
        if code is not None:
            return code
        time.sleep(every)
