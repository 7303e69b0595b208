"""DFF vs FGFA: streaming inference frames per second on the CPU at the real input size.

Both R50-DC5 detectors at their mmtracking defaults, random weights, random 600x1000 frames
(padded to 608x1008), ``detect_video`` over one stream, fp32. Each yielded frame is timed
from the previous one.

- DFF (key frame every ``--interval`` = 10 frames): ``2 * interval + 1`` frames by default;
  frame 0 (the first key frame, model warm-up) is left out, so the timed frames 1..2k hold
  exactly 2 key frames (10, 20) and 18 flow-warped frames: the video-long average, as
  mmtracking's zoo reports fps. Key and non-key frame means are reported too.
- FGFA (31-frame window): the stream is stopped after ``--fgfa-full-frames`` frames whose
  window holds 31 distinct frames (steady state: 1 backbone pass, FlowNet on 30 pairs, 31
  embeddings); frames before them fill the window and are not timed.

    nice -n 10 python benchmarks/bench_dff_vs_fgfa.py --threads 2
    python benchmarks/bench_dff_vs_fgfa.py --size 64 96 --depth 18 --window 5 --threads 1   # smoke run

Prints progress lines, then one JSON object (seconds per frame, fps, the DFF / FGFA ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lvod.config import ModelConfig
from lvod.models import build_model


def frames(n: int, h: int, w: int, seed: int):
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
    g = torch.Generator().manual_seed(seed)
    meta = {"img_size": (h, w), "orig_size": (h, w)}
    for _ in range(n):
        yield torch.randn(3, ph, pw, generator=g), meta


def timed_stream(model, n: int, size, stop_after: int | None = None) -> list[float]:
    """Seconds between consecutive yielded frames (the first from the start)."""
    gaps = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i, _ in enumerate(model.detect_video(frames(n, *size, seed=1), n)):
            now = time.perf_counter()
            gaps.append(now - t0)
            print(f"{type(model).__name__} frame {i}: {now - t0:.2f} s", flush=True)
            t0 = now
            if stop_after is not None and i + 1 >= stop_after:
                break
    return gaps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(600, 1000), metavar=("H", "W"))
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--interval", type=int, default=10, help="DFF key frame interval")
    ap.add_argument("--dff-frames", type=int, default=None, help="default 2 * interval + 1")
    ap.add_argument("--window", type=int, default=31, help="FGFA test window")
    ap.add_argument("--fgfa-full-frames", type=int, default=1, help="full-window FGFA frames to time")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip-fgfa", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size)
    out = {"size": list(size), "depth": args.depth, "threads": torch.get_num_threads(), "torch": torch.__version__}

    torch.manual_seed(0)
    dff = build_model(ModelConfig(kind="dff", depth=args.depth, dff_key_frame_interval=args.interval)).eval()
    n = args.dff_frames or 2 * args.interval + 1
    gaps = timed_stream(dff, n, size)[1:]
    key = [g for t, g in enumerate(gaps, start=1) if t % args.interval == 0]
    other = [g for t, g in enumerate(gaps, start=1) if t % args.interval]
    out["dff"] = {
        "interval": args.interval,
        "frames_timed": len(gaps),
        "key_frames_timed": len(key),
        "s_per_frame": statistics.mean(gaps),
        "fps": 1.0 / statistics.mean(gaps),
        "key_frame_s": statistics.mean(key) if key else None,
        "non_key_frame_s": statistics.mean(other) if other else None,
    }
    del dff

    if not args.skip_fgfa:
        torch.manual_seed(0)
        fgfa = build_model(ModelConfig(kind="fgfa", depth=args.depth, fgfa_window=args.window)).eval()
        half, full = args.window // 2, args.fgfa_full_frames
        n = args.window + full - 1  # frames half .. half + full - 1 see a full window
        gaps = timed_stream(fgfa, n, size, stop_after=half + full)[half:]
        out["fgfa"] = {
            "window": args.window,
            "frames_timed": len(gaps),
            "s_per_frame": statistics.mean(gaps),
            "fps": 1.0 / statistics.mean(gaps),
        }
        out["dff_speedup_over_fgfa"] = out["fgfa"]["s_per_frame"] / out["dff"]["s_per_frame"]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
