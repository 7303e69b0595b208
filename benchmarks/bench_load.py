"""Scale benchmark for ``lvod.data.cocovid.load_cocovid`` at ImageNet VID train size.

Writes a deterministic synthetic CocoVID file shaped like mmtracking's
``imagenet_vid_train.json`` (3,862 videos, 1,122,397 frames, ~1.7 M boxes, the same fields the
converter writes) into ``benchmarks/_out/`` (git-ignored), then loads it in a fresh
subprocess and prints load+index wall time and peak RSS (the child's ``ru_maxrss``).

    nice -n 10 python benchmarks/bench_load.py            # generate once, then measure
    python benchmarks/bench_load.py --parser orjson       # the same load with orjson.loads
    python benchmarks/bench_load.py --videos 40 --frames 11000 --boxes 17000   # quick check

Prints one JSON object: file size, counts, ``load_s``, ``peak_rss_mb``, ``parser``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lvod.io import atomic_write

CLASSES = (
    "airplane",
    "antelope",
    "bear",
    "bicycle",
    "bird",
    "bus",
    "car",
    "cattle",
    "dog",
    "domestic_cat",
    "elephant",
    "fox",
    "giant_panda",
    "hamster",
    "horse",
    "lion",
    "lizard",
    "monkey",
    "motorcycle",
    "rabbit",
    "red_panda",
    "sheep",
    "snake",
    "squirrel",
    "tiger",
    "train",
    "turtle",
    "watercraft",
    "whale",
    "zebra",
)
SIZES = ((1280, 720), (500, 375), (960, 540), (640, 360), (1920, 1080), (480, 360))

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # the generator works without orjson, only slower

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


def video_lengths(n_videos: int, n_frames: int, seed: int) -> np.ndarray:
    """Frames per video: at least 6, skewed like real VID (a few very long videos)."""
    rng = np.random.default_rng([seed, 0])
    weights = rng.lognormal(0.0, 0.9, n_videos)
    return 6 + rng.multinomial(n_frames - 6 * n_videos, weights / weights.sum())


def video_records(v: int, n: int, first_img: int, first_inst: int, box_rate: float, seed: int):
    """Image and annotation dicts of video ``v`` (deterministic in ``(seed, v)``).

    Tracks cover random contiguous spans; ``box_rate`` scales how many tracks a video has.
    Returns ``(images, annotations_without_ids, n_tracks)``.
    """
    rng = np.random.default_rng([seed, 1, v])
    w, h = SIZES[v % len(SIZES)]
    folder = f"train/ILSVRC2015_VID_train_{v // 1000:04d}/ILSVRC2015_train_{v:08d}"
    key = np.zeros(n, bool)
    key[np.round(np.linspace(0, n - 1, min(15, n))).astype(int)] = True
    images = [
        {
            "file_name": f"{folder}/{f:06d}.JPEG",
            "height": h,
            "width": w,
            "id": first_img + f,
            "frame_id": f,
            "video_id": v + 1,
            "is_vid_train_frame": bool(key[f]),
        }
        for f in range(n)
    ]
    n_tracks = 1 + rng.poisson(max(box_rate / 0.7 - 1.0, 0.0))
    p = np.arange(1, 31, dtype=float) ** -0.8
    anns = []
    for t in range(n_tracks):
        span = max(1, int(n * rng.uniform(0.4, 1.0)))
        start = int(rng.integers(0, n - span + 1))
        cat = int(rng.choice(30, p=p / p.sum())) + 1
        bw, bh = rng.uniform(0.1, 0.6) * w, rng.uniform(0.1, 0.6) * h
        cx = np.clip(rng.uniform(0, w) + np.cumsum(rng.normal(0, 2, span)), bw / 2, w - bw / 2)
        cy = np.clip(rng.uniform(0, h) + np.cumsum(rng.normal(0, 2, span)), bh / 2, h - bh / 2)
        x1, y1 = np.floor(cx - bw / 2).astype(int), np.floor(cy - bh / 2).astype(int)
        bwi, bhi = int(bw), int(bh)
        occl = rng.random(span) < 0.1
        gen = rng.random(span) < 0.05
        for k in range(span):
            anns.append(
                {
                    "video_id": v + 1,
                    "image_id": first_img + start + k,
                    "category_id": cat,
                    "instance_id": first_inst + t,
                    "bbox": [int(x1[k]), int(y1[k]), bwi, bhi],
                    "area": bwi * bhi,
                    "iscrowd": False,
                    "occluded": bool(occl[k]),
                    "generated": bool(gen[k]),
                }
            )
    anns.sort(key=lambda a: a["image_id"])
    return images, anns, n_tracks


def generate(path: Path, n_videos: int, n_frames: int, n_boxes: int, seed: int) -> dict:
    """Write the synthetic file section by section (bounded memory). Returns counts."""
    lengths = video_lengths(n_videos, n_frames, seed)
    box_rate = n_boxes / n_frames
    firsts = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]])
    counts = {"videos": n_videos, "images": int(lengths.sum()), "annotations": 0}
    with atomic_write(path, "wb") as fh:
        cats = [{"id": i + 1, "name": c, "encode_name": f"n{i:08d}"} for i, c in enumerate(CLASSES)]
        vids = [
            {"id": v + 1, "name": f"train/ILSVRC2015_VID_train_{v // 1000:04d}/ILSVRC2015_train_{v:08d}"}
            for v in range(n_videos)
        ]
        fh.write(b'{"categories":' + _dumps(cats) + b',"videos":' + _dumps(vids))
        for section in ("images", "annotations"):
            fh.write(b',"' + section.encode() + b'":[')
            ann_id, inst, wrote = 1, 1, False
            for v in range(n_videos):
                imgs, anns, n_tracks = video_records(v, int(lengths[v]), int(firsts[v]), inst, box_rate, seed)
                inst += n_tracks
                if section == "annotations":
                    for a in anns:
                        a["id"] = ann_id
                        ann_id += 1
                    counts["annotations"] += len(anns)
                rows = imgs if section == "images" else anns
                if rows:
                    fh.write((b"," if wrote else b"") + _dumps(rows)[1:-1])
                    wrote = True
            fh.write(b"]")
        fh.write(b"}")
    return counts


CHILD = """
import json, sys, time
import lvod.data.cocovid as m
if sys.argv[2] == "orjson":  # comparison only: the loader itself uses the stdlib json
    import orjson
    m._loads = orjson.loads
t = time.perf_counter()
cv = m.load_cocovid(sys.argv[1])
dt = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"load_s": round(dt, 2), "vm_hwm_mb": round(int(hwm) / 1024),
                  "parser": sys.argv[2],
                  "videos": len(cv.videos), "images": cv.num_images, "annotations": cv.num_anns,
                  "key_frames": int(cv.img_is_key.sum()), "repairs": len(cv.report.repairs)}))
"""


def measure(path: Path, parser: str) -> dict:
    """Load ``path`` in a fresh interpreter; wall time inside the child, peak RSS of the child."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), parser], check=True, capture_output=True, text=True
    ).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=3862)
    ap.add_argument("--frames", type=int, default=1_122_397)
    ap.add_argument("--boxes", type=int, default=1_700_000, help="target; the count is approximate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "_out")
    ap.add_argument(
        "--parser",
        choices=("stdlib", "orjson"),
        default="stdlib",
        help="orjson: swap the loader's json.loads for orjson.loads (comparison)",
    )
    ap.add_argument("--regenerate", action="store_true", help="rewrite the file even if present")
    args = ap.parse_args(argv)
    path = args.out_dir / f"vid_synth_v{args.videos}_f{args.frames}_b{args.boxes}_s{args.seed}.json"
    gen_s = None
    if args.regenerate or not path.exists():
        t = time.perf_counter()
        generate(path, args.videos, args.frames, args.boxes, args.seed)
        gen_s = round(time.perf_counter() - t, 1)
    res = {
        "file": str(path),
        "file_mb": round(path.stat().st_size / 2**20),
        "generate_s": gen_s,
        **measure(path, args.parser),
    }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
