"""Evaluation at ImageNet VID val scale: lvod vs pycocotools vs faster-coco-eval.

Ground truth: the real VID val boxes (``make_vid_val_gt.py``, 555 videos, 176,126 frames,
273,505 boxes). Detections: generated, deterministic, exactly 100 per frame (17.6 M):
jittered copies of the GT boxes plus random boxes (``lvod.evaluation.synth``).
Subsets are the first N videos of ``VID_val_videos.txt`` (GT and detections restricted).

Each measurement runs in a fresh ``nice -n 10`` subprocess that reports its wall time and
peak RSS (``VmHWM``, interpreter and imports included). lvod reads the compact ``.npz``
(the ``lvod test`` output) and also reports the time of ``evaluate()`` alone; the libraries
read the COCO results JSON (their only input). On every subset where a library runs, lvod's
AP, AP50 and per-class values are compared with it.

    nice -n 10 python benchmarks/bench_eval.py --work /tmp/lvod_bench \\
        --pycocotools 0.05 0.1 --faster 0.1 0.2 [--lvod-json]

The machine is shared: run it once, and read the numbers with that in mind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
MOTION = (
    REPO.parent
    / "shared"
    / "external-data"
    / "imagenet-vid"
    / "msracver_Flow-Guided-Feature-Aggregation"
    / "lib"
    / "dataset"
    / "imagenet_vid_groundtruth_motion_iou.mat"
)

CHILD = r"""
import json, sys, time, io, contextlib
t0 = time.time()
tool, gt_path, res_path, motion = sys.argv[1:5]
out = {"tool": tool}
if tool == "lvod":
    sys.path.insert(0, sys.argv[5])
    from lvod.data.cocovid import load_cocovid
    from lvod.evaluation import evaluate, load_results
    gt = load_cocovid(gt_path); dets = load_results(res_path)
    t1 = time.time()
    m = evaluate(gt, dets, motion_iou=motion if motion != "-" else None)
    out["eval_s"] = time.time() - t1
    out.update(ap=m["bbox_mAP"], ap50=m["bbox_mAP_50"], motion=m["motion"],
               per_class=[[c["ap"], c["ap50"]] for c in m["classwise"]])
else:
    if tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as E
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as E
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(gt_path); cd = cg.loadRes(res_path)
        t1 = time.time()
        e = E(cg, cd, "bbox"); e.evaluate(); e.accumulate(); e.summarize()
    out["eval_s"] = time.time() - t1
    p = e.eval["precision"][:, :, :, 0, -1]
    def mean(a):
        a = a[a > -1]
        return float(a.mean()) if a.size else None
    out.update(ap=float(e.stats[0]), ap50=float(e.stats[1]),
               per_class=[[mean(p[:, :, k]), mean(p[0, :, k])] for k in range(p.shape[2])])
out["wall_s"] = time.time() - t0
# VmHWM: this process's own peak RSS (ru_maxrss would inherit the parent's across fork/exec)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0]
out["peak_rss_gb"] = int(hwm.split()[1]) / 2 ** 20
print("RESULT " + json.dumps(out))
"""


def run_child(tool, gt_path, res_path, motion="-", timeout=1800) -> dict:
    cmd = ["nice", "-n", "10", sys.executable, "-c", CHILD, tool, str(gt_path), str(res_path), motion, str(REPO)]
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "error": f"timeout after {timeout} s"}
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        return {"tool": tool, "error": f"exit {p.returncode}: {p.stderr[-500:]}", "wall_s": time.time() - t}
    return json.loads(line[0][7:])


def max_diff(a: dict, b: dict) -> float:
    """Largest |difference| of AP, AP50 and every per-class value (None must match None)."""
    d = [abs(a["ap"] - b["ap"]), abs(a["ap50"] - b["ap50"])]
    for x, y in zip(a["per_class"], b["per_class"]):
        for u, v in zip(x, y):
            if (u is None) != (v is None):
                return float("inf")
            if u is not None:
                d.append(abs(u - v))
    return max(d)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="scratch folder for GT, detections, results")
    ap.add_argument("--pycocotools", nargs="*", type=float, default=[0.05], help="fractions of the val videos")
    ap.add_argument("--faster", nargs="*", type=float, default=[0.1], help="fractions for faster-coco-eval")
    ap.add_argument("--lvod-json", action="store_true", help="also time lvod reading the full COCO JSON")
    a = ap.parse_args(argv)
    from make_vid_val_gt import build

    from lvod.data.cocovid import load_cocovid
    from lvod.evaluation import save_results_npz, write_coco_json
    from lvod.evaluation.synth import synthetic_detections
    from lvod.io import save_json

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    n_videos = 555
    fracs = sorted(set(a.pycocotools) | set(a.faster))
    subsets = {f: max(1, round(n_videos * f)) for f in fracs}
    for f, nv in [(1.0, None)] + list(subsets.items()):
        path = work / f"gt_{f:g}.json"
        if not path.exists():
            save_json(build(num_videos=nv), path, indent=None)
    gt = load_cocovid(work / "gt_1.json")
    dets = synthetic_detections(gt, per_frame=100, seed=0)
    save_results_npz(dets, work / "dets_1.npz")
    if a.lvod_json:
        write_coco_json(dets, work / "dets_1.json")
    for f in fracs:
        sub = load_cocovid(work / f"gt_{f:g}.json")
        keep = np.isin(dets.image_id, sub.img_ids)
        write_coco_json(dets.subset(keep), work / f"dets_{f:g}.json")
        save_results_npz(dets.subset(keep), work / f"dets_{f:g}.npz")
    n_full = len(dets)
    del dets, gt

    results = [
        dict(
            run_child("lvod", work / "gt_1.json", work / "dets_1.npz", str(MOTION)),
            subset=1.0,
            input="npz",
            detections=n_full,
        )
    ]
    print(json.dumps(results[-1])[:400], flush=True)
    if a.lvod_json:
        results.append(
            dict(
                run_child("lvod", work / "gt_1.json", work / "dets_1.json", str(MOTION)),
                subset=1.0,
                input="json",
                detections=n_full,
            )
        )
        print(json.dumps(results[-1])[:400], flush=True)
    for f in fracs:
        lv = run_child("lvod", work / f"gt_{f:g}.json", work / f"dets_{f:g}.npz")
        results.append(dict(lv, subset=f, input="npz"))
        for tool, wanted in (("pycocotools", a.pycocotools), ("faster-coco-eval", a.faster)):
            if f in wanted:
                r = run_child(tool, work / f"gt_{f:g}.json", work / f"dets_{f:g}.json")
                if "error" not in r and "error" not in lv:
                    r["max_abs_diff_vs_lvod"] = max_diff(lv, r)
                results.append(dict(r, subset=f, input="json"))
                print(json.dumps(results[-1])[:400], flush=True)
    for r in results:
        r.pop("per_class", None)
    save_json(results, work / "bench_results.json")
    print("| tool | subset | input | wall s | eval s | peak RSS GB | AP50 | AP | max diff vs lvod |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['tool']} | {r['subset']:g} | {r.get('input')} | {r['error']} |")
            continue
        diff = r.get("max_abs_diff_vs_lvod")
        print(
            f"| {r['tool']} | {r['subset']:g} | {r['input']} | {r['wall_s']:.1f} | {r['eval_s']:.1f} | "
            f"{r['peak_rss_gb']:.2f} | {r['ap50']:.4f} | {r['ap']:.4f} | "
            f"{'-' if diff is None else f'{diff:.1e}'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
