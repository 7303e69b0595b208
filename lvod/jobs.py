"""The main job (README command 1) on the built-in demo data.

Steps, each printing where its output went:
1. build the demo dataset (``data/demo``, a data cache reused when already there);
2. per-class statistics and the frequency groups;
3. notebook 01 (statistics and grouping), executed headless into the run folder;
4. train the small FGFA with the softmax head and the same detector with BAGS — the two
   runs go side by side, one CPU thread each (on 2 cores that is the fastest split);
5. evaluate both on the demo val split (``lvod test``);
6. notebook 04 comparing them, and a summary table; print where the report is.

``quick=True`` runs the same steps on a tiny dataset for a few iterations: a smoke test of
the whole chain, not a result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEMO_DATA = Path("data/demo")
HEADS = {"softmax": "configs/demo/fgfa_r18_demo_softmax.toml",
         "bags": "configs/demo/fgfa_r18_demo_bags.toml"}
QUICK_SIZES = {"num_train_videos": 6, "num_val_videos": 3, "frames_per_video": 12}


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def build_demo_data(data_dir: Path, seed: int, sizes: dict | None = None) -> dict:
    """Write the demo dataset unless the same seed and sizes are already in ``data_dir``."""
    from lvod.data.demo import make_demo
    from lvod.io import save_json

    stamp = data_dir / "demo_stamp.json"
    want = {"seed": seed, **(sizes or {})}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        print(f"reusing {data_dir} (seed {seed})")
        return {"train_json": data_dir / "annotations" / "train.json",
                "val_json": data_dir / "annotations" / "val.json"}
    info = make_demo(data_dir, seed=seed, **(sizes or {}))
    save_json(want, stamp)
    print(f"wrote {data_dir}: {info['train']['boxes']} train boxes, {info['val']['boxes']} val boxes, "
          f"head/tail ratio {info['head_tail_ratio']:.0f}")
    return info


def train_side_by_side(runs: dict, overrides: list, *, poll: float = 30.0) -> None:
    """Train each ``{name: (config, work_dir)}`` in its own process with one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for name, (config, work_dir) in runs.items():
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "lvod.cli", "train", config, "--work-dir", str(work_dir),
               *overrides, "train.progress_bar=false", "data.workers_per_gpu=0"]
        out = open(Path(work_dir) / "train.out", "wb")  # noqa: SIM115 - closed below
        procs[name] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out)
        print(f"training {name}: {' '.join(cmd[2:])}\n  log: {work_dir}/train.out")
    t0 = time.perf_counter()
    while any(p.poll() is None for p, _ in procs.values()):
        time.sleep(poll)
        status = []
        for name, (config, work_dir) in runs.items():
            last = _last_train_line(Path(work_dir) / "log.jsonl")
            status.append(f"{name} iter {last.get('iter', 0)} loss {last.get('loss', float('nan')):.3f}")
        print(f"  [{time.perf_counter() - t0:5.0f} s] " + " | ".join(status), flush=True)
    for name, (proc, out) in procs.items():
        out.close()
        if proc.returncode != 0:
            tail = (Path(runs[name][1]) / "train.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"training {name} failed (exit {proc.returncode}):\n{tail}")


def _last_train_line(path: Path) -> dict:
    if not path.exists():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == "train":
            return rec
    return {}


def summary_table(metrics: dict) -> str:
    """Markdown: overall and per-group AP@50 of each run, side by side."""
    names = list(metrics)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines.append("| bbox_mAP_50 | " + " | ".join(f"{metrics[n]['bbox_mAP_50']:.3f}" for n in names) + " |")
    lines.append("| bbox_mAP | " + " | ".join(f"{metrics[n]['bbox_mAP']:.3f}" for n in names) + " |")
    for i, group in enumerate(metrics[names[0]].get("groups", [])):
        vals = [metrics[n]["groups"][i]["ap50"] for n in names]
        lines.append(f"| AP50 group {group['group']} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def demo_job_main(out="runs/demo", *, seed: int = 0, quick: bool = False) -> int:
    """Run the main job; returns 0 when every step succeeded."""
    from lvod.engine.test import test_main
    from lvod.groups import groups_main
    from lvod.io import atomic_write
    from lvod.notebooks import NOTEBOOK_DIR, run_notebook
    from lvod.stats import stats_main

    t0 = time.perf_counter()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    data_dir = run / "data-quick" if quick else DEMO_DATA

    _step("1. demo dataset")
    build_demo_data(data_dir, seed, QUICK_SIZES if quick else None)
    train_json, val_json = data_dir / "annotations" / "train.json", data_dir / "annotations" / "val.json"

    _step("2. statistics and frequency groups")
    for code in (stats_main(str(train_json), str(run / "stats")),
                 groups_main(str(train_json), str(run / "groups.json"), method="quantiles", k=3,
                             dataset="demo")):
        if code:
            return code

    _step("3. notebook 01: statistics and grouping")
    nb = run_notebook(NOTEBOOK_DIR / "01_dataset_statistics_and_grouping.ipynb", run / "notebooks",
                      {"ann_file": str(train_json), "run_dir": str(run / "notebooks"),
                       "groups_out": str(run / "notebooks" / "groups.json")})
    print(f"wrote {nb['ipynb']} and {nb['html']}")

    _step("4. train FGFA with the softmax head and with the BAGS head")
    overrides = [f"data.root={data_dir}", f"data.groups_file={run / 'groups.json'}"]
    if quick:
        overrides += ["train.epochs=1", "train.warmup_iters=5", "train.log_interval=5"]
    runs = {name: (cfg, run / name) for name, cfg in HEADS.items()}
    train_side_by_side(runs, overrides, poll=5.0 if quick else 30.0)

    _step("5. evaluate both on the demo val split")
    metrics = {}
    for name, (cfg, work_dir) in runs.items():
        code = test_main(cfg, str(work_dir / "latest.pth"), out=str(work_dir / "results.json"),
                         overrides=overrides, progress=False)
        if code:
            return code
        metrics[name] = json.loads((work_dir / "metrics.json").read_text())

    _step("6. notebook 04: per-group comparison")
    report = run / "report"
    nb = run_notebook(NOTEBOOK_DIR / "04_per_group_ap_analysis.ipynb", report, {
        "runs": {name: str(work_dir) for name, (_, work_dir) in runs.items()}, "baseline": "softmax",
        "val_ann": str(val_json), "images_root": str(data_dir / "Data" / "VID"),
        "train_stats": str(run / "stats" / "class_stats.csv"), "groups_file": str(run / "groups.json"),
        "run_dir": str(report)})
    table = summary_table(metrics)
    with atomic_write(report / "summary.md", "w", encoding="utf-8") as fh:
        fh.write(f"# lvod main job: FGFA softmax vs BAGS on the demo val split\n\n{table}\n")
    print(f"\n{table}\n\nmain job finished in {time.perf_counter() - t0:.0f} s")
    print(f"report: {nb['html'].resolve()}\nrun folder: {run.resolve()}")
    return 0
