"""Speed of ``evaluate(backend="lvod")`` vs ``evaluate(backend="pycocotools")`` (COCOeval per chunk).

Reads the subsets that ``bench_eval.py`` writes into ``--work`` (``gt_<frac>.json``: the
first videos of the real ImageNet VID val GT; ``dets_<frac>.npz``: 100 generated
detections per frame). Each (backend, subset) runs in a fresh child process that reports
the time of ``evaluate()`` alone, seconds per million detections, its peak RSS
(``VmHWM``) and AP; the two backends' AP, AP50 and per-class values are compared.

    nice -n 10 python benchmarks/bench_eval_backends.py --work /tmp/lvod_bench 0.05 0.1 0.2

``--synthetic-motion`` instead times both with motion buckets on generated videos with
tracks (30 videos x 100 frames, 30 classes, 100 detections per frame = 0.3 M), written
to ``--work`` as ``gt_synth.json`` / ``dets_synth.npz``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from lvod.data.cocovid import load_cocovid
from lvod.evaluation import evaluate, load_results
backend, gt_path, res_path, motion = sys.argv[1:4] + [sys.argv[5] == "1"]
gt = load_cocovid(gt_path); dets = load_results(res_path)
t = time.time()
m = evaluate(gt, dets, backend=backend, motion=motion)
dt = time.time() - t
rss = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"backend": backend, "dets": len(dets), "eval_s": dt, "s_per_M": dt / len(dets) * 1e6,
                  "peak_rss_gb": rss / 1e9, "ap": m["bbox_mAP"], "ap50": m["bbox_mAP_50"],
                  "per_class": [[c["ap"], c["ap50"]] for c in m["classwise"]]
                  + [[v] for v in (m["motion"] or {}).values()]}))
"""


def run(backend: str, work: Path, frac: str, motion: bool) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            backend,
            str(work / f"gt_{frac}.json"),
            str(work / f"dets_{frac}.npz"),
            str(REPO),
            "1" if motion else "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder bench_eval.py wrote its subsets to")
    ap.add_argument("fracs", nargs="*", help="subset names, e.g. 0.05 0.1 0.2")
    ap.add_argument("--synthetic-motion", action="store_true", help="generated videos, motion buckets on")
    args = ap.parse_args(argv)
    if args.synthetic_motion:
        sys.path.insert(0, str(REPO))
        from lvod.data.cocovid import load_cocovid
        from lvod.evaluation import save_results_npz
        from lvod.evaluation.synth import synthetic_cocovid, synthetic_detections
        from lvod.io import save_json

        args.work.mkdir(parents=True, exist_ok=True)
        save_json(synthetic_cocovid(num_videos=30, frames=100, num_cats=30, cats_unused=3), args.work / "gt_synth.json")
        save_results_npz(
            synthetic_detections(load_cocovid(args.work / "gt_synth.json"), per_frame=100, seed=1),
            args.work / "dets_synth.npz",
        )
        args.fracs = ["synth"]
    if not args.fracs:
        ap.error("name subsets, or pass --synthetic-motion")
    print("| backend | subset | detections | eval s | s per M | peak RSS GB | AP50 | AP | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for frac in args.fracs:
        res = {b: run(b, args.work, frac, args.synthetic_motion) for b in ("lvod", "pycocotools")}
        a, b = res["lvod"], res["pycocotools"]
        vals = [(a["ap"], b["ap"]), (a["ap50"], b["ap50"])] + [
            (x, y) for pa, pb in zip(a["per_class"], b["per_class"]) for x, y in zip(pa, pb)
        ]
        if any((x is None) != (y is None) for x, y in vals):
            raise SystemExit(f"subset {frac}: the backends disagree on which classes have GT")
        diff = max(abs(x - y) for x, y in vals if x is not None)
        for r in (a, b):
            print(
                f"| {r['backend']} | {frac} | {r['dets']:,} | {r['eval_s']:.1f} | {r['s_per_M']:.2f} | "
                f"{r['peak_rss_gb']:.2f} | {r['ap50']:.4f} | {r['ap']:.4f} | {diff:.1e} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
