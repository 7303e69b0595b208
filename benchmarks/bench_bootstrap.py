"""Cost of bootstrap intervals: one plain evaluation vs the same with N resamples of videos.

Cases:

- ``demo``: the built-in demo val split (``lvod data demo``, 12 videos, 288 frames) with
  generated detections (``lvod.evaluation.synth``, 100 per frame), 1,000 resamples; the
  target is <= 10 s for the resamples.
- ``vid``: the real ImageNet VID val boxes (``make_vid_val_gt.py``: 555 videos, 176,126
  frames) with 100 generated detections per frame (17.6 M), 200 resamples; the target is
  <= 3x the plain evaluation and within 8 GB.

Each case runs in a fresh subprocess that reports wall times and peak RSS (``VmHWM``).

    nice -n 10 python benchmarks/bench_bootstrap.py demo
    nice -n 10 python benchmarks/bench_bootstrap.py vid --gt /tmp/vid_val.json [--videos 555]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(gt_json: str, resamples: int, per_frame: int) -> dict:
    """Load, generate detections, evaluate plainly, then with ``resamples`` resamples."""
    from lvod.data.cocovid import load_cocovid
    from lvod.evaluation import evaluate
    from lvod.evaluation.synth import synthetic_detections

    gt = load_cocovid(gt_json)
    dets = synthetic_detections(gt, per_frame=per_frame, seed=0)
    t0 = time.perf_counter()
    plain = evaluate(gt, dets)
    t1 = time.perf_counter()
    boot = evaluate(gt, dets, bootstrap=resamples, seed=0)
    t2 = time.perf_counter()
    assert boot["bbox_mAP_50"] == plain["bbox_mAP_50"]
    return {
        "frames": len(gt.img_ids),
        "videos": boot["bootstrap"]["num_videos"],
        "detections": len(dets),
        "resamples": resamples,
        "plain_s": round(t1 - t0, 2),
        "with_bootstrap_s": round(t2 - t1, 2),
        "resampling_s": boot["bootstrap"]["seconds"],
        "ratio": round((t2 - t1) / (t1 - t0), 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "bbox_mAP_50": plain["bbox_mAP_50"],
        "bbox_mAP_50_ci": boot["bbox_mAP_50_ci"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=("demo", "vid", "child"))
    ap.add_argument("--gt", default=None, help="vid: the VID val CocoVid json from make_vid_val_gt.py")
    ap.add_argument("--resamples", type=int, default=None)
    ap.add_argument("--per-frame", type=int, default=100)
    args = ap.parse_args(argv)
    if args.case == "child":
        print(json.dumps(measure(args.gt, args.resamples, args.per_frame)))
        return 0
    if args.case == "demo":
        from lvod.data.demo import make_demo

        tmp = tempfile.mkdtemp(prefix="lvod_bench_boot_")
        gt = str(make_demo(Path(tmp) / "demo", seed=0)["val_json"])
        resamples = args.resamples or 1000
    else:
        if not args.gt:
            ap.error("vid needs --gt (python benchmarks/make_vid_val_gt.py --out /tmp/vid_val.json)")
        gt, resamples = args.gt, args.resamples or 200
    cmd = [sys.executable, __file__, "child", "--gt", gt, "--resamples", str(resamples)]
    out = subprocess.run(cmd + ["--per-frame", str(args.per_frame)], capture_output=True, text=True, check=True)
    print(out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
