"""Detector speed: training step time and streaming inference time per frame.

Random weights, random images at the real input size (600x1000 padded to 608x1008), the
R50-DC5 detectors at their mmtracking defaults unless overridden. Training step = key + refs
forward, backward, gradient clipping (35) and one SGD step (lr 0.01, momentum 0.9, wd 1e-4),
timed after ``--warmup`` steps. Inference = ``detect_video`` over a stream of frames, timed per
yielded frame after the first (which pays for filling the window / reference cache); for FGFA
the steady-state number averages only the frames whose window holds ``--window`` distinct
frames (FlowNet on window-1 pairs); frames near the video's ends repeat frames and are
cheaper, so a video shorter than the window has no steady-state frame at all.

    nice -n 10 python benchmarks/bench_detector.py --kind fgfa --threads 2
    nice -n 10 python benchmarks/bench_detector.py --size 304 496 --window 11 --threads 1 --skip-train
    python benchmarks/bench_detector.py --kind fgfa --device cuda --amp --train-steps 20 --infer-frames 60

Prints one JSON object: step seconds (mean, median, min), inference seconds per frame (mean
of the steady-state frames) and fps, peak CUDA memory (GiB) on CUDA, and on Linux the peak
resident memory of each phase (``VmHWM``, reset through ``/proc/self/clear_refs`` before the
phase; the model and the libraries are included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lvod.config import ModelConfig
from lvod.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS counter (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float | None:
    """``VmHWM`` of this process in GiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def random_targets(n: int, h: int, w: int, num_classes: int, g: torch.Generator) -> dict:
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = 48 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
    return {"boxes": boxes, "labels": torch.randint(1, num_classes + 1, (n,), generator=g)}


def bench_train(model, cfg, args, device) -> dict:
    h, w = args.size
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
    t = 1 if cfg.kind == "single" else 1 + args.refs
    g = torch.Generator().manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    model.train()
    times = []
    rss = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.train_steps):
        images = torch.randn(1, t, 3, ph, pw, generator=g).to(device)
        targets = [{k: v.to(device) for k, v in random_targets(4, h, w, cfg.num_classes, g).items()}]
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(
            device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=args.amp
        ):
            losses = model(images, [(h, w)], targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        scaler.step(opt)
        scaler.update()
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        print(f"train step {step}: {time.perf_counter() - t0:.2f} s", flush=True)
    out = {
        "train_step_s_mean": statistics.mean(times),
        "train_step_s_median": statistics.median(times),
        "train_step_s_min": min(times),
        "train_frames_per_step": t,
    }
    if rss:
        out["train_peak_rss_gib"] = peak_rss_gib()
    if device.type == "cuda":
        out["train_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def bench_infer(model, cfg, args, device) -> dict:
    h, w = args.size
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
    g = torch.Generator().manual_seed(1)
    n = args.infer_frames
    meta = {"img_size": (h, w), "orig_size": (h, w)}

    def frames():
        for _ in range(n):
            yield torch.randn(3, ph, pw, generator=g).to(device), meta

    model.eval()
    rss = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gaps = []
    with torch.autocast(
        device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=args.amp
    ):
        sync(device)
        t0 = time.perf_counter()
        for i, _ in enumerate(model.detect_video(frames(), n)):
            sync(device)
            now = time.perf_counter()
            gaps.append(now - t0)
            print(f"frame {i}: {now - t0:.2f} s", flush=True)
            t0 = now
    steady = gaps[1:] if len(gaps) > 1 else gaps
    out = {"infer_first_frame_s": gaps[0]}
    if cfg.kind == "fgfa":
        # only frames whose window holds `window` distinct frames pay the full FGFA cost
        # (FlowNet on window-1 pairs, window embeddings); edge frames repeat frames
        half = cfg.fgfa_window // 2
        full = [g for t, g in enumerate(gaps) if half <= t < n - half and t > 0]
        out["infer_s_per_frame_edge_mean"] = statistics.mean(steady)
        out["infer_full_window_frames"] = len(full)
        if full:
            steady = full
        else:
            print(f"warning: no frame has a full window; use --infer-frames >= {cfg.fgfa_window + 1}", flush=True)
    out.update(
        {
            "infer_s_per_frame": statistics.mean(steady),
            "infer_fps": 1.0 / statistics.mean(steady),
            "infer_frames_timed": len(steady),
        }
    )
    if rss:
        out["infer_peak_rss_gib"] = peak_rss_gib()
    if device.type == "cuda":
        out["infer_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="fgfa", choices=["single", "fgfa", "selsa"])
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--size", type=int, nargs=2, default=(600, 1000), metavar=("H", "W"))
    ap.add_argument("--refs", type=int, default=2, help="training refs per key")
    ap.add_argument("--window", type=int, default=31, help="FGFA test window")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument(
        "--infer-frames",
        type=int,
        default=None,
        help="frames of the video (default: window + 2 for fgfa, giving 3 full-window frames; 4 otherwise)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-infer", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.infer_frames is None:
        args.infer_frames = args.window + 2 if args.kind == "fgfa" else 4
    device = torch.device(args.device)
    cfg = ModelConfig(kind=args.kind, depth=args.depth, fgfa_window=args.window)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    result = {
        "kind": args.kind,
        "depth": args.depth,
        "size": list(args.size),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": args.amp,
        "threads": torch.get_num_threads(),
        "window": args.window,
        "torch": torch.__version__,
    }
    if not args.skip_train:
        result.update(bench_train(model, cfg, args, device))
    if not args.skip_infer:
        result.update(bench_infer(model, cfg, args, device))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
