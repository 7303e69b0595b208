"""The main job (README command 1) on the built-in demo data: :func:`run_demo_job`.

It answers the question lvod exists for: given one softmax FGFA baseline, which long-tail
method helps the rare classes, by how much, and is the difference real? Steps, each logged
(``logging``, shown by the CLI) with its elapsed time and where its output went:

1. build the demo dataset into the run folder (``RUN/data``: train, val and a held-out
   split drawn like train; reused when the same seed and sizes are already there);
2. per-class statistics and the frequency groups (rare / common / frequent), notebook 01;
3. train the softmax FGFA baseline on both cores (two DDP processes of one image and one
   thread each: the recipe's batch of 2, split), with ``iter/total`` and an ETA in the
   progress lines;
4. test it on the val split, with bootstrap intervals;
5. post-hoc calibration: ``tau_norm``, ``logit_adjust`` and ``norcal``, each parameter
   chosen on the held-out videos (never on val), then tested on val (an identity choice
   reuses the baseline's detections: :func:`identity_calibration_run`);
6. temporal rescoring: Seq-NMS on the baseline's val detections (its results file, no
   second network pass);
7. the decoupled protocols from the baseline's checkpoint: cRT and BAGS stage 2
   (classifier only), side by side (one thread each), then tested on val;
8. ``lvod compare``: every method minus the baseline with paired-bootstrap intervals and
   a verdict, ``report/summary.md`` (with the calibration choices), and notebook 04 over
   all runs (reusing that comparison).

With several training seeds (``train_seeds``, ``lvod demo-job --seeds 0,1,2``) steps 3-7
run once per seed into ``RUN/seed<N>/`` on the same data, and step 8 compares every method
over its seeds (mean, seed spread, paired intervals over the val videos).

Each run keeps only its last checkpoint (``train.keep_checkpoints``). ``quick=True`` runs
the same steps on a tiny dataset for a few iterations: a smoke test of the whole chain,
not a result.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lvod import monitor

logger = logging.getLogger(__name__)

# the repository's demo configs (README command 1 installs lvod editable from the clone), so
# that the job runs from any folder
DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
BASELINE = str(DEMO_CONFIGS / "fgfa_r18_demo_softmax.toml")
DECOUPLED = {
    "crt": str(DEMO_CONFIGS / "fgfa_r18_demo_crt.toml"),
    "bags_stage2": str(DEMO_CONFIGS / "fgfa_r18_demo_bags_stage2.toml"),
}
# the stretch rows (``--end-to-end``): heads trained end to end from random weights, like
# the baseline, then tested and compared with it
END_TO_END = {
    "eqlv2": str(DEMO_CONFIGS / "fgfa_r18_demo_eqlv2.toml"),
    "fedloss": str(DEMO_CONFIGS / "fgfa_r18_demo_fedloss.toml"),
    "bags": str(DEMO_CONFIGS / "fgfa_r18_demo_bags.toml"),
}
CALIBRATIONS = ("tau_norm", "logit_adjust", "norcal")
CALIBRATION_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
QUICK_SIZES = {"num_train_videos": 6, "num_val_videos": 3, "num_heldout_videos": 3, "frames_per_video": 8}
THREADS = {1: {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, 2: {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}}
ONE_THREAD = THREADS[1]


class Steps:
    """Numbered steps with their elapsed time: ``== 3. train ... (at 1m02s)`` when a step
    starts and ``   done in 4m10s`` when it ends."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.n = 0
        self.started = None

    def __call__(self, title: str) -> None:
        self.finish()
        self.n += 1
        self.started = time.perf_counter()
        logger.info("\n== %d. %s (at %s)", self.n, title, monitor.duration(self.started - self.t0))

    def finish(self) -> None:
        if self.started is not None:
            logger.info("   done in %s", monitor.duration(time.perf_counter() - self.started))
            self.started = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def build_demo_data(data_dir: Path, seed: int, sizes: dict | None = None) -> dict:
    """Write the demo dataset unless the same seed and sizes are already in ``data_dir``.

    Returns ``{"train_json", "val_json", "heldout_json"}`` (all of :func:`make_demo`'s
    summary when the data was written).
    """
    from lvod.data.demo import make_demo
    from lvod.io import save_json

    stamp = data_dir / "demo_stamp.json"
    want = {"seed": seed, **(sizes or {})}
    paths = {f"{s}_json": data_dir / "annotations" / f"{s}.json" for s in ("train", "val", "heldout")}
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(p.exists() for p in paths.values()):
        logger.info("reusing %s (seed %d)", data_dir, seed)
        return paths
    info = make_demo(data_dir, seed=seed, **(sizes or {}))
    save_json(want, stamp)
    logger.info(
        "wrote %s: %d train boxes, %d val boxes, %d held-out boxes, head/tail ratio %.0f",
        data_dir,
        info["train"]["boxes"],
        info["val"]["boxes"],
        info["heldout"]["boxes"],
        info["head_tail_ratio"],
    )
    return info


def follow_training(procs: dict, runs: dict, *, poll: float = 30.0) -> None:
    """Log ``name iter i/total (p%) loss l ETA t`` for every run each ``poll`` seconds until
    all ``procs`` end; raise RuntimeError (with the tail of ``train.out``) for a failed run."""
    t0 = time.perf_counter()
    while any(p.poll() is None for p in procs.values()):
        _sleep_unless_all_ended(procs.values(), poll)
        status = [f"{name} {monitor.progress(Path(runs[name]) / 'log.jsonl')['text']}" for name in procs]
        logger.info("  [%s] %s", monitor.duration(time.perf_counter() - t0), " | ".join(status))
    for name, proc in procs.items():
        if proc.returncode != 0:
            tail = (Path(runs[name]) / "train.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"training {name} failed (exit {proc.returncode}):\n{tail}")


def _sleep_unless_all_ended(procs, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early once every one of ``procs`` has ended (so
    the job moves on when training ends, not at the next progress line)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and any(p.poll() is None for p in procs):
        time.sleep(min(0.2, max(0.0, end - time.perf_counter())))


def train_runs(runs: dict, overrides: list, *, threads: int = 1, ranks: int = 1, poll: float = 30.0) -> None:
    """Train each ``{name: (config, work_dir[, extra overrides])}`` at the same time and
    follow them (:func:`follow_training`): each as one process with ``threads`` threads, or,
    with ``ranks > 1``, as ``ranks`` DDP processes of one thread each (torchrun, gloo on a
    CPU) that split the config's batch between them (:func:`per_rank_batch`), so the
    recipe (total batch, learning rate, iterations) stays the same.

    The main job's baseline is one run as two ranks: on 2 cores that trains 9% faster than
    one process with two threads (benchmarks/README.md, "Training on both cores"). Two
    runs with one thread each are its decoupled runs and ``lvod train --seeds ...
    --side-by-side``."""
    overrides = [*overrides, "train.progress_bar=false", "data.workers_per_gpu=0"]
    procs, dirs = {}, {}
    for name, (config, work_dir, *extra) in runs.items():
        run_overrides = [*overrides, *(extra[0] if extra else [])]
        if ranks > 1:
            run_overrides.append(f"data.imgs_per_gpu={per_rank_batch(config, run_overrides, ranks)}")
        procs[name] = monitor.start_training(
            config,
            work_dir,
            gpus=ranks,
            overrides=run_overrides,
            env=ONE_THREAD if ranks > 1 else THREADS.get(threads, ONE_THREAD),
            append=False,
        )
        dirs[name] = work_dir
        logger.info("training %s: %s\n  log: %s/train.out", name, " ".join(procs[name].args[2:]), work_dir)
    follow_training(procs, dirs, poll=poll)


def per_rank_batch(config, overrides, ranks: int) -> int:
    """Images per process when ``ranks`` processes share ``config``'s batch
    (``data.imgs_per_gpu`` after ``overrides``); ValueError when they cannot share it evenly."""
    from lvod.config import load_config

    batch = load_config(config, overrides).data.imgs_per_gpu
    if batch % ranks:
        raise ValueError(
            f"{config}: data.imgs_per_gpu = {batch} cannot be split evenly over {ranks} processes; "
            f"give a multiple of {ranks} or train in one process"
        )
    return batch // ranks


def train_side_by_side(runs: dict, overrides: list, *, poll: float = 30.0) -> None:
    """:func:`train_runs` with one thread per run (the fastest split of 2 cores over 2 runs)."""
    train_runs(runs, overrides, threads=1, poll=poll)


def seed_runs(run_dir, seeds) -> dict:
    """``{"seed<N>": run_dir / "seed<N>"}``: one run folder per training seed."""
    return {f"seed{s}": Path(run_dir) / f"seed{s}" for s in seeds}


def is_identity(method: str, value) -> bool:
    """Whether ``value`` is ``method``'s identity (``lvod.models.calibration.METHODS``)."""
    from lvod.models.calibration import METHODS

    return float(value) == METHODS[method].identity


def calibration_choices(calibration: dict) -> str:
    """One sentence: the parameter each post-hoc calibration got on the held-out videos
    (``calibration.json``), and what an identity choice means for its rows."""
    metric = calibration.get("metric", "bbox_mAP_50")
    parts = []
    for method, rec in calibration.get("methods", {}).items():
        value, param = float(rec["best"]), rec["param"]
        if is_identity(method, value):
            parts.append(f"{method} {param}={value:g} (the identity: no grid value beat the uncalibrated detector)")
        else:
            parts.append(
                f"{method} {param}={value:g} (held-out {metric} {rec['best_metric']:.3f} vs "
                f"{rec['identity_metric']:.3f} uncalibrated)"
            )
    if not parts:
        return ""
    return (
        "Calibration parameters chosen on the held-out videos: "
        + "; ".join(parts)
        + ". A method given the identity detects exactly what the baseline detects, so its rows equal the "
        "baseline's.\n\n"
    )


def summary_markdown(comparison: dict, seconds: float | None = None, calibration: dict | None = None) -> str:
    """``summary.md``: the paired comparison (``lvod.evaluation.compare``) of every method
    with the softmax baseline, with intervals and verdicts, the calibration parameters
    chosen on the held-out videos (``calibration``: the baseline's ``calibration.json``, or
    ``{training seed: calibration.json}`` with several seeds), and how to read it."""
    from lvod.evaluation.compare import format_comparison

    methods = ", ".join(m for m in comparison["methods"] if m != comparison["baseline"])
    took = f" The job took {seconds / 60:.1f} min." if seconds is not None else ""
    num_seeds = (comparison["methods"].get(comparison["baseline"]) or {}).get("num_seeds", 1)
    if not calibration:
        chosen = ""
    elif "methods" in calibration:  # one calibration.json
        chosen = calibration_choices(calibration)
    else:
        chosen = "".join(f"Training seed {s}. " + calibration_choices(c) for s, c in calibration.items())
    if num_seeds > 1:
        seeds = (
            f"Every value is the mean over {num_seeds} training seeds and `seeds (std)` is their spread; the "
            "intervals resample the val videos (the same resamples for every seed's detections), so they do "
            "not hold the seed spread: read both."
        )
    else:
        seeds = (
            "The spread between training runs (seeds) is not in these intervals: train several seeds "
            "(`lvod demo-job --seeds 0,1,2`) or pass their run folders to `lvod compare NAME=RUN1,RUN2,...`."
        )
    return (
        f"# lvod main job: long-tail methods against the softmax FGFA baseline on the demo val split\n\n"
        f"Methods: {methods}.{took}\n\n"
        + chosen
        + format_comparison(comparison)
        + "\nA difference is called better or worse only when its 95 % interval (paired bootstrap over "
        "the val videos) excludes 0; otherwise it is unclear at this size. Calibration parameters were "
        "chosen on the held-out videos (`calibration.json` in the baseline's run folder), never on val. "
        f"Per-class rows: `compare/compare.csv`. {seeds}\n"
    )


def identity_calibration_run(baseline: dict, out_dir, method: str, chosen: dict, base_dir) -> dict:
    """The run folder of a calibration whose held-out choice is the identity (parameter 0):
    the calibrated detector then detects exactly what the uncalibrated one does (``lvod
    calibrate`` checks this on every held-out frame), so its val detections and metrics
    are the baseline's, written under ``out_dir`` without another network pass.
    ``baseline``: the baseline's metrics (``test_model``'s dict); ``chosen``: the method's
    entry of ``calibration.json``. ``metrics.json`` records the calibration and where the
    detections came from (``inference.results_from``)."""
    import shutil

    from lvod.evaluation import write_metrics
    from lvod.io import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(baseline["inference"]["results"])
    npz = out_dir / "results.npz"
    with open(source, "rb") as src, atomic_write(npz, "wb") as dst:  # the same file, byte for byte
        shutil.copyfileobj(src, dst)
    result = {k: v for k, v in baseline.items() if k not in ("files", "note")}
    result["inference"] = {**baseline["inference"], "results": str(npz), "results_from": str(source)}
    result["calibration"] = {
        "method": method,
        "spec": f"{method}:{chosen['param']}={float(chosen['best']):g}",
        "param": chosen["param"],
        "value": float(chosen["best"]),
        "identity": True,
        "from": str(Path(base_dir) / "calibration.json"),
        "asked": f"{method}:auto",
        "note": "no grid value beat the uncalibrated detector on the held-out videos; the identity "
        "reproduces the baseline's detections exactly, which are reused here",
    }
    files = {"results": npz, **write_metrics(result, out_dir / "metrics.json")}
    return {**result, "files": files, "note": None}


def _log_metrics(name: str, m: dict) -> None:
    lo, hi = m.get("bbox_mAP_50_ci") or (float("nan"), float("nan"))
    groups = ", ".join(f"{g['group']} {g['ap50']:.3f}" for g in m.get("groups", []) if g.get("ap50") is not None)
    logger.info("%s: bbox_mAP_50 %.3f [%.3f, %.3f] (%s)", name, m["bbox_mAP_50"] or 0.0, lo, hi, groups)


def train_and_test_methods(
    step, root: Path, train_seed: int, overrides: list, *, ann: dict, seed: int, end_to_end=(), poll=30.0, label=""
) -> dict:
    """Steps 3-7 of the main job (and the stretch rows) for one training seed, into
    ``root``: the softmax baseline trained and tested, the calibrations chosen on the
    held-out videos and tested, Seq-NMS, cRT and BAGS stage 2, each head of
    ``end_to_end``. ``seed``: the bootstrap resamples (the same for every training seed,
    so that their comparison is paired). Returns ``{"metrics": {method: metrics},
    "calibration": the baseline's calibration.json dict, "folders": {method: run folder}}``."""
    from lvod.engine.calibrate import calibrate_run
    from lvod.engine.test import rescore_tested_run, test_model

    overrides = [*overrides, f"train.seed={train_seed}"]
    base_dir = root / "softmax"

    step(f"{label}train the softmax FGFA baseline (both cores: two DDP processes)")
    train_runs({"softmax": (BASELINE, base_dir)}, overrides, ranks=2, poll=poll)

    def test(name, config, work_dir, ckpt, **kw):
        m = test_model(
            config,
            str(ckpt),
            out=str(Path(work_dir) / "results.json"),
            overrides=overrides,
            progress=False,
            bootstrap="auto",
            seed=seed,
            **kw,
        )
        _log_metrics(name, m)
        return m

    step(f"{label}test the baseline on val (bootstrap intervals over the val videos)")
    metrics = {"softmax": test("softmax", BASELINE, base_dir, base_dir / "latest.pth")}

    step(f"{label}post-hoc calibration: parameters chosen on the held-out videos, tested on val")
    calibration = calibrate_run(
        base_dir,
        checkpoint="latest.pth",
        methods=CALIBRATIONS,
        grid=CALIBRATION_GRID,
        split=str(ann["heldout"]),
        overrides=overrides,
        progress=False,
    )
    for method in CALIBRATIONS:
        chosen = calibration["methods"][method]
        logger.info("%s: %s chosen on the held-out videos", method, chosen["best"])
        name = f"softmax+{method}"
        if is_identity(method, chosen["best"]):  # the identity: the baseline's own detections, no second pass
            metrics[name] = identity_calibration_run(metrics["softmax"], root / name, method, chosen, base_dir)
            _log_metrics(name, metrics[name])
        else:
            metrics[name] = test(name, BASELINE, root / name, base_dir / "latest.pth", calibrate=f"{method}:auto")

    step(f"{label}temporal rescoring: Seq-NMS on the baseline's val detections")
    metrics["softmax+seq_nms"] = rescore_tested_run(
        base_dir, root / "softmax+seq_nms", BASELINE, overrides=overrides, bootstrap="auto", seed=seed
    )
    _log_metrics("softmax+seq_nms", metrics["softmax+seq_nms"])

    step(f"{label}decoupled protocols from the baseline: cRT and BAGS stage 2 (classifier only, side by side)")
    init = [f"train.init_from={base_dir / 'latest.pth'}"]
    train_runs({name: (cfg, root / name, init) for name, cfg in DECOUPLED.items()}, overrides, threads=1, poll=poll)
    for name, cfg in DECOUPLED.items():
        metrics[name] = test(name, cfg, root / name, root / name / "latest.pth")

    for name in end_to_end:
        step(f"{label}stretch row: the {name} head trained end to end (both cores: two DDP processes)")
        train_runs({name: (END_TO_END[name], root / name)}, overrides, ranks=2, poll=poll)
        metrics[name] = test(name, END_TO_END[name], root / name, root / name / "latest.pth")
    return {"metrics": metrics, "calibration": calibration, "folders": {name: root / name for name in metrics}}


def run_demo_job(out="runs/demo", *, seed: int = 0, train_seeds=None, quick: bool = False, end_to_end=()) -> dict:
    """Run the main job into the run folder ``out`` (data included: ``out/data``).

    ``seed``: the demo data, the bootstrap resamples and (by default) the one training
    seed. ``train_seeds``: several training seeds (e.g. ``(0, 1, 2)``): steps 3-7 run once
    per seed into ``out/seed<N>/`` on the same data, and the comparison takes every
    method's seeds together (``lvod compare NAME=RUN1,RUN2,...``: values are means over
    the seeds, the seed spread is their std, the paired intervals resample the same val
    videos for every run). ``end_to_end``: names of :data:`END_TO_END` heads to train end
    to end as well (the stretch rows: each one more baseline-sized training, on both
    cores, after the decoupled runs), tested and compared like every other method.

    Returns ``{"run_dir": Path, "metrics": {method: metrics dict with bootstrap intervals}
    (of the first training seed), "calibration": the baseline's calibration.json dict (the
    first seed's), "seeds": {train seed: {"metrics", "calibration", "folders"}},
    "comparison": lvod compare's dict (softmax as baseline), "summary": markdown (also in
    report/summary.md), "report": the notebook 04 HTML, "seconds": wall time}``. A failing
    step raises (DataError, RuntimeError for a failed training run, papermill's error for a
    failing notebook cell).
    """
    from lvod.bags_io import make_groups
    from lvod.evaluation.compare import compare_runs
    from lvod.io import atomic_write
    from lvod.notebooks import NOTEBOOK_DIR, run_notebook
    from lvod.stats import write_stats

    seeds = tuple(int(s) for s in train_seeds) if train_seeds else (seed,)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"training seeds must differ, got {list(seeds)}")
    several = len(seeds) > 1
    step = Steps()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    data_dir = run / "data"
    poll = 5.0 if quick else 30.0

    step("demo dataset")
    build_demo_data(data_dir, seed, QUICK_SIZES if quick else None)
    ann = {s: data_dir / "annotations" / f"{s}.json" for s in ("train", "val", "heldout")}
    logger.info("data: %s (train, val, heldout)", data_dir / "annotations")

    step("statistics, frequency groups and notebook 01")
    written = write_stats(ann["train"], run / "stats")["paths"]
    _, groups = make_groups(ann["train"], run / "groups.json", method="quantiles", k=3, dataset="demo")
    logger.info("wrote %s", ", ".join(str(p) for p in [*written.values(), *groups.values()]))
    nb = run_notebook(
        NOTEBOOK_DIR / "01_dataset_statistics_and_grouping.ipynb",
        run / "notebooks",
        {
            "ann_file": str(ann["train"]),
            "run_dir": str(run / "notebooks"),
            "groups_out": str(run / "notebooks" / "groups.json"),
        },
    )
    logger.info("wrote %s", nb["html"])

    overrides = [f"data.root={data_dir}", f"model.groups_file={run / 'groups.json'}"]
    if quick:
        overrides += ["train.epochs=1", "train.warmup_iters=5", "train.log_interval=5"]
    per_seed = {
        s: train_and_test_methods(
            step,
            run / f"seed{s}" if several else run,
            s,
            overrides,
            ann=ann,
            seed=seed,
            end_to_end=end_to_end,
            poll=poll,
            label=f"seed {s}: " if several else "",
        )
        for s in seeds
    }
    first = per_seed[seeds[0]]
    folders = {name: [per_seed[s]["folders"][name] for s in seeds] for name in first["folders"]}

    step("compare every method with the baseline, notebook 04 and the summary")
    report = run / "report"
    comparison = compare_runs(
        ann["val"],
        folders,
        baseline="softmax",
        groups=run / "groups.json",
        bootstrap=first["metrics"]["softmax"]["bootstrap"]["resamples"],
        seed=seed,
        out=report / "compare",
    )
    nb = run_notebook(
        NOTEBOOK_DIR / "04_per_group_ap_analysis.ipynb",
        report,
        {
            # one folder per method, or with several seeds its folders (per-class plots: the first)
            "runs": {name: [str(f) for f in fs] if several else str(fs[0]) for name, fs in folders.items()},
            "baseline": "softmax",
            "val_ann": str(ann["val"]),
            "images_root": str(data_dir / "Data" / "VID"),
            "train_stats": str(run / "stats" / "class_stats.csv"),
            "groups_file": str(run / "groups.json"),
            "bootstrap": comparison["resamples"],
            "comparison": str(comparison["files"]["json"]),  # computed just above: not again
            "run_dir": str(report),
        },
    )
    step.finish()
    table = summary_markdown(
        comparison, step.seconds, {s: per_seed[s]["calibration"] for s in seeds} if several else first["calibration"]
    )
    with atomic_write(report / "summary.md", "w", encoding="utf-8") as fh:
        fh.write(table)
    return {
        "run_dir": run,
        "metrics": first["metrics"],
        "calibration": first["calibration"],
        "seeds": per_seed,
        "comparison": comparison,
        "summary": table,
        "report": nb["html"],
        "seconds": step.seconds,
    }
