"""The main job (README command 1) on the built-in demo data: :func:`run_demo_job`.

Steps, each logged (``logging``, shown by the CLI) with where its output went:
1. build the demo dataset (``data/demo``, a data cache reused when already there);
2. per-class statistics and the frequency groups;
3. notebook 01 (statistics and grouping), executed headless into the run folder;
4. train the small FGFA with the softmax head and the same detector with BAGS — the two
   runs go side by side, one CPU thread each (on 2 cores that is the fastest split),
   launched and followed through :mod:`lvod.monitor`;
5. evaluate both on the demo val split (:func:`lvod.engine.test.test_model`);
6. notebook 04 comparing them, and a summary table.

``quick=True`` runs the same steps on a tiny dataset for a few iterations: a smoke test of
the whole chain, not a result.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lvod import monitor

logger = logging.getLogger(__name__)

DEMO_DATA = Path("data/demo")
HEADS = {"softmax": "configs/demo/fgfa_r18_demo_softmax.toml", "bags": "configs/demo/fgfa_r18_demo_bags.toml"}
QUICK_SIZES = {"num_train_videos": 6, "num_val_videos": 3, "frames_per_video": 12}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _step(title: str) -> None:
    logger.info("\n== %s", title)


def build_demo_data(data_dir: Path, seed: int, sizes: dict | None = None) -> dict:
    """Write the demo dataset unless the same seed and sizes are already in ``data_dir``.

    Returns at least ``{"train_json", "val_json"}`` (all of :func:`make_demo`'s summary
    when the data was written).
    """
    from lvod.data.demo import make_demo
    from lvod.io import save_json

    stamp = data_dir / "demo_stamp.json"
    want = {"seed": seed, **(sizes or {})}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        logger.info("reusing %s (seed %d)", data_dir, seed)
        return {
            "train_json": data_dir / "annotations" / "train.json",
            "val_json": data_dir / "annotations" / "val.json",
        }
    info = make_demo(data_dir, seed=seed, **(sizes or {}))
    save_json(want, stamp)
    logger.info(
        "wrote %s: %d train boxes, %d val boxes, head/tail ratio %.0f",
        data_dir,
        info["train"]["boxes"],
        info["val"]["boxes"],
        info["head_tail_ratio"],
    )
    return info


def train_side_by_side(runs: dict, overrides: list, *, poll: float = 30.0) -> None:
    """Train each ``{name: (config, work_dir[, extra overrides])}`` in its own process with
    one thread each (``lvod train --seeds ... --side-by-side`` and the main job).

    Raises RuntimeError (with the tail of its ``train.out``) when a run fails.
    """
    overrides = [*overrides, "train.progress_bar=false", "data.workers_per_gpu=0"]
    procs = {}
    for name, (config, work_dir, *extra) in runs.items():
        run_overrides = [*overrides, *(extra[0] if extra else [])]
        procs[name] = monitor.start_training(config, work_dir, overrides=run_overrides, env=ONE_THREAD, append=False)
        logger.info("training %s: %s\n  log: %s/train.out", name, " ".join(procs[name].args[2:]), work_dir)
    t0 = time.perf_counter()
    while any(p.poll() is None for p in procs.values()):
        time.sleep(poll)
        status = []
        for name, (_, work_dir, *_) in runs.items():
            last = monitor.last_record(Path(work_dir) / "log.jsonl", "train")
            status.append(f"{name} iter {last.get('iter', 0)} loss {last.get('loss', float('nan')):.3f}")
        logger.info("  [%5.0f s] %s", time.perf_counter() - t0, " | ".join(status))
    for name, proc in procs.items():
        if proc.returncode != 0:
            tail = (Path(runs[name][1]) / "train.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"training {name} failed (exit {proc.returncode}):\n{tail}")


def seed_runs(run_dir, seeds) -> dict:
    """``{"seed<N>": run_dir / "seed<N>"}``: one run folder per training seed."""
    return {f"seed{s}": Path(run_dir) / f"seed{s}" for s in seeds}


def summary_markdown(comparison: dict) -> str:
    """``summary.md``: the paired comparison (``lvod.evaluation.compare``) of the runs, with
    intervals and verdicts, and how to read it."""
    from lvod.evaluation.compare import format_comparison

    return (
        "# lvod main job: FGFA softmax vs BAGS on the demo val split\n\n"
        + format_comparison(comparison)
        + "\nA difference is called better or worse only when its 95 % interval (paired bootstrap over "
        "the val videos) excludes 0; otherwise it is unclear at this size. Per-class rows: "
        "`compare/compare.csv`. The spread between training runs (seeds) is not in these intervals: "
        "train several seeds and pass their run folders to `lvod compare NAME=RUN1,RUN2,...`.\n"
    )


def run_demo_job(out="runs/demo", *, seed: int = 0, quick: bool = False) -> dict:
    """Run the main job into the run folder ``out``.

    Returns ``{"run_dir": Path, "metrics": {head: metrics dict of test_model, with
    bootstrap intervals}, "comparison": lvod compare's dict (softmax as baseline),
    "summary": markdown (also in report/summary.md), "report": the notebook 04 HTML,
    "seconds": wall time}``. A failing step raises (DataError, RuntimeError for a failed
    training run, papermill's error for a failing notebook cell).
    """
    from lvod.bags_io import make_groups
    from lvod.engine.test import test_model
    from lvod.evaluation.compare import compare_runs
    from lvod.io import atomic_write
    from lvod.notebooks import NOTEBOOK_DIR, run_notebook
    from lvod.stats import write_stats

    t0 = time.perf_counter()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    data_dir = run / "data-quick" if quick else DEMO_DATA

    _step("1. demo dataset")
    build_demo_data(data_dir, seed, QUICK_SIZES if quick else None)
    train_json, val_json = data_dir / "annotations" / "train.json", data_dir / "annotations" / "val.json"

    _step("2. statistics and frequency groups")
    written = write_stats(train_json, run / "stats")["paths"]
    _, groups = make_groups(train_json, run / "groups.json", method="quantiles", k=3, dataset="demo")
    logger.info("wrote %s", ", ".join(str(p) for p in [*written.values(), *groups.values()]))

    _step("3. notebook 01: statistics and grouping")
    nb = run_notebook(
        NOTEBOOK_DIR / "01_dataset_statistics_and_grouping.ipynb",
        run / "notebooks",
        {
            "ann_file": str(train_json),
            "run_dir": str(run / "notebooks"),
            "groups_out": str(run / "notebooks" / "groups.json"),
        },
    )
    logger.info("wrote %s and %s", nb["ipynb"], nb["html"])

    _step("4. train FGFA with the softmax head and with the BAGS head")
    overrides = [f"data.root={data_dir}", f"model.groups_file={run / 'groups.json'}"]
    if quick:
        overrides += ["train.epochs=1", "train.warmup_iters=5", "train.log_interval=5"]
    runs = {name: (cfg, run / name) for name, cfg in HEADS.items()}
    train_side_by_side(runs, overrides, poll=5.0 if quick else 30.0)

    _step("5. evaluate both on the demo val split")
    metrics = {
        name: test_model(
            cfg,
            str(work_dir / "latest.pth"),
            out=str(work_dir / "results.json"),
            overrides=overrides,
            progress=False,
            bootstrap="auto",
            seed=seed,
        )
        for name, (cfg, work_dir) in runs.items()
    }
    for name, m in metrics.items():
        lo, hi = m["bbox_mAP_50_ci"] or (float("nan"), float("nan"))
        logger.info(
            "%s: bbox_mAP_50 %.3f [%.3f, %.3f]; wrote %s", name, m["bbox_mAP_50"] or 0.0, lo, hi, m["files"]["metrics"]
        )
    report = run / "report"
    comparison = compare_runs(
        val_json,
        {name: [work_dir] for name, (_, work_dir) in runs.items()},
        baseline="softmax",
        groups=run / "groups.json",
        bootstrap=metrics["softmax"]["bootstrap"]["resamples"],
        seed=seed,
        out=report / "compare",
    )

    _step("6. notebook 04: per-group comparison")
    nb = run_notebook(
        NOTEBOOK_DIR / "04_per_group_ap_analysis.ipynb",
        report,
        {
            "runs": {name: str(work_dir) for name, (_, work_dir) in runs.items()},
            "baseline": "softmax",
            "val_ann": str(val_json),
            "images_root": str(data_dir / "Data" / "VID"),
            "train_stats": str(run / "stats" / "class_stats.csv"),
            "groups_file": str(run / "groups.json"),
            "run_dir": str(report),
        },
    )
    table = summary_markdown(comparison)
    with atomic_write(report / "summary.md", "w", encoding="utf-8") as fh:
        fh.write(table)
    return {
        "run_dir": run,
        "metrics": metrics,
        "comparison": comparison,
        "summary": table,
        "report": nb["html"],
        "seconds": time.perf_counter() - t0,
    }
