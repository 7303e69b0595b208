"""GPU check: one script that proves lvod on CUDA and measures it against the model zoo.

Run from the repository root on a machine with one NVIDIA GPU (random weights and
generated inputs, no dataset; about 3-5 minutes on an H200 by estimate, and ``--budget-s``,
420 s by default, stops starting new cases before 8 minutes)::

    python benchmarks/gpu_check.py --out benchmarks/_out/gpu_check.json
    bash benchmarks/gpu_check.sh          # the same, report (+ log) in $OUT or benchmarks/_out
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gc.json   # toy sizes, CPU, ~30 s

Sections, in this order; each one catches and records its own failure, so a broken
section never loses the others, and the JSON report is rewritten (atomically) after each:

- ``env``: GPU name, memory, capability, CUDA / cuDNN / NCCL / torch / torchvision
  versions, the TF32 and cuDNN flags the timings ran with.
- ``correctness``: random-weight FGFA R50-DC5 and SELSA (the same weights on both devices)
  on one generated 600x1000 clip of a few frames, CUDA vs CPU fp32: detections matched per
  frame (same label, IoU >= 0.5, greedy by CPU score), the share of the CPU's top-10
  found, max score and box differences, and the max relative difference of the
  backbone+neck features of frame 0. Variants: ``fp32_strict`` (TF32 off: the
  numerics to compare), ``fp32_default`` (torch's default flags, TF32 convolutions on
  Ampere+) and ``amp`` (fp16 autocast).
- ``train``: FGFA and SELSA, key + 2 refs at 600x1000, one fixed batch, ``--warmup``
  steps then ``--train-steps`` timed steps, in fp32, bf16 autocast and fp16 autocast with
  the grad scaler (SGD, gradient clipping and lr as lvod's TrainConfig for one image):
  median step time, peak memory (``torch.cuda.max_memory_allocated``), the loss per step
  (it must go down on a fixed batch), FLOPs of one step (``FlopCounterMode``) and, on
  CUDA, the host-device synchronisations of one step (``torch.cuda.set_sync_debug_mode``).
- ``infer``: ``detect_video`` streaming for FGFA (31-frame window), SELSA (14 refs),
  single-frame, DFF (key frame every 10) and Temporal RoI Align (14 refs), fp32 and AMP
  (fp16 autocast on CUDA, bf16 on CPU): steady-state fps, the whole clip's fps, the
  first frame's latency and peak memory.
- ``ddp``: ``torchrun --nproc_per_node 1`` running this script's worker on a tiny generated
  CocoVID set (``lvod.data.demo.make_demo``): it joins an NCCL process group (gloo on the
  CPU) as lvod's multi-GPU training does (``lvod train`` with one process joins none, so
  one GPU reaches NCCL only this way), runs lvod's collectives there (an all-reduce of
  float64, ``all_gather_object`` of the RNG state as checkpoints gather it, two steps of
  a DDP-wrapped model on the real data pipeline), then ``lvod train CONFIG --gpus 1``
  (the command line, in that process and group: the EQLv2 head all-reduces its float64
  statistics) for 20 iterations with checkpoints; then ``lvod train CONFIG --gpus 1
  --resume`` in a fresh process continues to 30.

Random weights: a random ResNet with identity BatchNorm grows activations to ~50 and
saturates every score at 1.0, and untrained classifiers score everything alike, so any
ranking (top-k proposals, NMS, the top 100) would rest on float noise. Every model here is
made *decisive* first (:func:`decisive_random_weights`): BatchNorm statistics taken from
the clip (unit-scale activations), RPN and classification logits with a standard deviation
of about 2. The architecture and the kernels are the real ones.

``--device cpu --tiny`` runs every step at toy size (``ModelConfig.tiny()``, 64x96 frames,
a few steps) on the CPU; ``tests/test_gpu_check.py`` runs it so the script cannot rot.
What to compare the numbers with (the model zoo on V100-class GPUs, the FLOP counts of
``benchmarks/README.md``) is in the report's ``reference`` entry and in that README.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from lvod.config import DataConfig, ModelConfig, TrainConfig, load_config  # noqa: E402
from lvod.engine.checkpointing import load_checkpoint, rng_state  # noqa: E402
from lvod.engine.inference import build_test_transform  # noqa: E402
from lvod.engine.train import _build_optimizer, scaled_lr, split_losses  # noqa: E402
from lvod.io import save_json  # noqa: E402
from lvod.models import build_model  # noqa: E402
from lvod.monitor import train_command  # noqa: E402

# The model zoo (mmtracking 0.14, V100-class GPUs, fp32 unless said) and the FLOP counts
# benchmarks/README.md derives for FGFA R50-DC5 at 600x1000.
REFERENCE = {
    "source": "mmtracking 0.14 model zoo (V100-class GPUs); FLOPs: benchmarks/README.md 'Detector speed'",
    "fgfa": {"fps": 6.9, "train_mem_gb": 4.1},
    "selsa": {"fps": 7.5, "train_mem_gb": 3.49, "train_mem_gb_fp16": 2.71},
    "dff": {"fps": 44.0},
    "fgfa_train_step_tflop": 1.97,
    "fgfa_full_window_frame_tflop": 1.35,
}
SECTIONS = ("env", "correctness", "train", "infer", "ddp")
# rough cost of one case on an H200 (seconds), used to stop before --budget-s runs out
ESTIMATE_S = {"correctness": 120, "train": 35, "infer": 25, "ddp": 100}


@dataclass
class Plan:
    """Sizes and step counts of one run (``full`` on a GPU, ``tiny`` for the CPU test)."""

    tiny: bool
    size: tuple[int, int]  # (h, w) of the generated frames
    warmup: int
    train_steps: int
    amp_warmup: int
    amp_train_steps: int
    correctness_frames: int
    infer_frames: dict
    amp_infer_frames: dict
    dff_interval: int
    ddp_iters: int
    ddp_resume_iters: int
    budget_s: float
    train_kinds: tuple = ("fgfa", "selsa")
    infer_kinds: tuple = ("fgfa", "selsa", "single", "dff", "temporal_roi_align")
    correctness_kinds: tuple = ("fgfa", "selsa")


def make_plan(tiny: bool, args) -> Plan:
    if tiny:
        plan = Plan(
            tiny=True,
            size=(48, 64),
            warmup=1,
            train_steps=3,
            amp_warmup=0,  # reduced precision is slow on CPUs: one step shows the code path
            amp_train_steps=1,
            correctness_frames=2,
            infer_frames={"fgfa": 7, "selsa": 5, "single": 3, "dff": 5, "temporal_roi_align": 5},
            amp_infer_frames={"fgfa": 3, "selsa": 3, "single": 2, "dff": 3, "temporal_roi_align": 3},
            dff_interval=2,
            ddp_iters=2,
            ddp_resume_iters=3,
            budget_s=600.0,
        )
    else:
        # FGFA: 31-frame window + 10 full-window frames; DFF: 2 key frames + 18 warped ones
        frames = {"fgfa": 41, "selsa": 30, "single": 30, "dff": 21, "temporal_roi_align": 30}
        plan = Plan(
            tiny=False,
            size=(600, 1000),
            warmup=3,
            train_steps=20,
            amp_warmup=3,
            amp_train_steps=20,
            correctness_frames=3,
            infer_frames=frames,
            amp_infer_frames=frames,
            dff_interval=10,
            ddp_iters=20,
            ddp_resume_iters=30,
            budget_s=420.0,
        )
    if args.train_steps is not None:
        plan.train_steps = plan.amp_train_steps = args.train_steps
    if args.warmup is not None:
        plan.warmup = plan.amp_warmup = args.warmup
    if args.budget_s is not None:
        plan.budget_s = args.budget_s
    return plan


def model_config(kind: str, plan: Plan, **overrides) -> ModelConfig:
    """R50-DC5 at the mmtracking defaults (30 classes), or the CPU preset in tiny mode with
    the whole backbone frozen (the weight gradients of its convolutions are torch's code,
    not lvod's, and take seconds per step on a CPU in reduced precision)."""
    if plan.tiny:
        return ModelConfig.tiny(kind=kind, dff_key_frame_interval=plan.dff_interval, frozen_stages=4, **overrides)
    return ModelConfig(kind=kind, dff_key_frame_interval=plan.dff_interval, **overrides)


# ----------------------------------------------------------------------------- inputs


def make_clip(num_frames: int, size: tuple[int, int], num_classes: int, seed: int = 0):
    """A generated clip: ``(frames, targets)``, ``frames[t]`` uint8 ``(3, h, w)`` RGB (a
    smooth colour field with noise and four textured boxes moving across it),
    ``targets[t]`` ``{"boxes" float32 (4, 4) x1y1x2y2, "labels" int64 (4,) in 1..C}``."""
    h, w = size
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, h // 50), max(2, w // 50), generator=g) * 140 + 50
    bg = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]  # (3, h, w)
    k = 4
    hw = torch.tensor([float(h), float(w)])
    extent = (0.15 + 0.25 * torch.rand(k, 2, generator=g)) * hw  # (k, 2) box (h, w)
    start = torch.rand(k, 2, generator=g) * (hw - extent)
    velocity = (torch.rand(k, 2, generator=g) - 0.5) * hw * 0.02  # pixels per frame
    labels = torch.randint(1, num_classes + 1, (k,), generator=g)
    colours = torch.rand(num_classes + 1, 3, generator=g) * 255
    frames, targets = [], []
    for t in range(num_frames):
        img = bg + torch.randn(3, h, w, generator=g) * 4
        boxes = []
        for j in range(k):
            y0, x0 = (start[j] + velocity[j] * t).clamp(min=torch.zeros(2), max=hw - extent[j]).tolist()
            y1, x1 = y0 + float(extent[j, 0]), x0 + float(extent[j, 1])
            ys, xs, ye, xe = int(y0), int(x0), int(y1), int(x1)
            period = 4 + 2 * int(labels[j])  # class-specific stripes
            rows = torch.arange(ys, ye)
            stripes = ((rows // period) % 2).float().view(1, -1, 1) * 0.4 + 0.6
            img[:, ys:ye, xs:xe] = colours[labels[j]].view(3, 1, 1) * stripes
            boxes.append([xs, ys, xe, ye])
        frames.append(img.clamp(0, 255).to(torch.uint8))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels.clone()})
    return frames, targets


def transformed(frames, size: tuple[int, int], cfg: ModelConfig) -> list[tuple[torch.Tensor, dict]]:
    """The clip through lvod's test transform (resize to ``data.img_scale``, normalise by the
    model's mean/std, pad to 16): ``[(Tensor[3, Hp, Wp], meta), ...]`` on the CPU."""
    h, w = size
    transform = build_test_transform(DataConfig(img_scale=[max(h, w), min(h, w)]), cfg.image_mean, cfg.image_std)
    out = [transform(f) for f in frames]
    if tuple(out[0][1]["img_size"]) != (h, w):
        raise AssertionError(f"test transform resized the clip: {out[0][1]} for {size}")
    return out


def training_batch(items, targets, key: int = 2, refs=(0, 4)):
    """Key frame ``key`` with reference frames ``refs``: ``(images (1, 3, 3, Hp, Wp),
    image_sizes, targets)`` as the training pipeline's collate gives them."""
    images = torch.stack([items[i][0] for i in (key, *refs)])[None]
    return images, [tuple(items[key][1]["img_size"])], [targets[key]]


class DeviceFrames(Sequence):
    """A random-access clip whose frames go to ``device`` when read (SELSA and Temporal
    RoI Align read their reference frames first from a ``Sequence``)."""

    def __init__(self, items, device):
        self.items, self.device = items, device

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x, meta = self.items[i]
        return x.to(self.device, non_blocking=True), meta


def stream(items, device):
    for x, meta in items:
        yield x.to(device, non_blocking=True), meta


# ----------------------------------------------------------------------------- random weights


@torch.no_grad()
def decisive_random_weights(model: nn.Module, items, logit_std: float = 2.0) -> nn.Module:
    """Make a randomly initialised detector rank things by something other than float noise.

    1. Every BatchNorm (``EvalBatchNorm2d`` / ``FrozenBatchNorm2d``) of the backbone gets the
       per-channel mean and variance of its input on the frames of ``items`` (``[(x, meta),
       ...]`` as the test transform gives them): unit-scale activations, as pretrained
       statistics give (identity BatchNorm grows them to ~50).
    2. The RPN's objectness layer and the box predictor's classifier are re-drawn so that
       their logits have a standard deviation of about ``logit_std`` on those frames.
    Runs on the model's device; uses torch's global RNG (the caller seeds it).
    """
    device = next(model.parameters()).device
    images = torch.stack([x for x, _ in items]).to(device)
    hooks = []

    def set_stats(mod, inputs):
        x = inputs[0].float()
        mod.running_mean.copy_(x.mean((0, 2, 3)))
        mod.running_var.copy_(x.var((0, 2, 3), unbiased=False))

    for m in model.detector.backbone.modules():
        if hasattr(m, "running_mean") and hasattr(m, "running_var"):
            hooks.append(m.register_forward_pre_hook(set_stats))
    was_training = model.training
    model.eval()
    try:
        feats = model.detector.extract_feat(images)
    finally:
        for h in hooks:
            h.remove()
    rpn = model.detector.rpn_head
    hidden = F.relu(rpn.rpn_conv(feats))
    norm = hidden.pow(2).sum(1).mean().sqrt().clamp_min(1e-6)  # rms length of a position's feature vector
    nn.init.normal_(rpn.rpn_cls.weight, std=float(logit_std / norm))
    predictor = model.detector.roi_head.predictor
    seen = []
    hook = predictor.register_forward_pre_hook(lambda mod, inputs: seen.append(inputs[0].detach().float()))
    try:
        x, meta = items[0]
        list(model.detect_video(iter([(x.to(device), meta)]), 1))
    finally:
        hook.remove()
    norm = torch.cat(seen).pow(2).sum(1).mean().sqrt().clamp_min(1e-6)
    nn.init.normal_(predictor.fc_cls.weight, std=float(logit_std / norm))
    model.train(was_training)
    return model


def build(kind: str, plan: Plan, items, device) -> nn.Module:
    """The detector ``kind`` with seed-0 random weights on ``device``, made decisive on the
    frames of ``items``."""
    torch.manual_seed(0)
    model = build_model(model_config(kind, plan)).to(device)
    torch.manual_seed(1)
    return decisive_random_weights(model, items)


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def amp_dtype(device: torch.device) -> torch.dtype:
    """What AMP means on this device: fp16 on CUDA (``train.amp``), bf16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 for cuDNN convolutions and cuBLAS matmuls on (True), off (False) or as they are."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def count_syncs(device: torch.device):
    """``{"syncs": n}`` after the block: CUDA host-device synchronisations inside it
    (``torch.cuda.set_sync_debug_mode("warn")``); None off CUDA."""
    out = {"syncs": None}
    if device.type != "cuda":
        yield out
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield out
        finally:
            torch.cuda.set_sync_debug_mode("default")
    out["syncs"] = sum("synchroniz" in str(w.message) for w in caught)


def case(fn, *args, **kwargs) -> dict:
    """Run one case; an exception becomes ``{"status": "error", "error", "traceback"}``."""
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
        out.setdefault("status", "ok")
    except Exception as exc:  # every case records its own failure
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


class Budget:
    """Wall-clock budget of the whole run: a case starts only if its estimate fits."""

    def __init__(self, seconds: float, tiny: bool):
        self.deadline = time.monotonic() + seconds
        self.tiny = tiny

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, section: str, reserve: float = 0.0) -> bool:
        return self.tiny or self.left() - reserve >= ESTIMATE_S[section]


def skipped(budget: Budget) -> dict:
    return {"status": "skipped", "error": f"time budget: {budget.left():.0f} s left"}


def section_status(cases: dict) -> str:
    states = {c.get("status") for c in cases.values()}
    if states <= {"ok"}:
        return "ok"
    return "error" if states == {"error"} else "partial"


# ----------------------------------------------------------------------------- env


def _nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # no NCCL in this build
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def section_env(device: torch.device, plan: Plan) -> dict:
    import torchvision

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 2),
            capability=f"{p.major}.{p.minor}",
            multiprocessors=p.multi_processor_count,
            gpu_count=torch.cuda.device_count(),
            nccl=_nccl_version(),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            out["nvidia_smi"] = f"unavailable: {exc}"
    else:
        out["gpu"] = None
    return out


# ----------------------------------------------------------------------------- correctness


def match_detections(a: dict, b: dict, iou_thr: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of detections ``b`` to ``a`` (dicts of ``boxes (K, 4)``,
    ``scores (K,)``, ``labels (K,)``): in order of ``a``'s score, each takes the unmatched
    ``b`` of the same label with the highest IoU, if >= ``iou_thr``. Returns ``(i, j, iou)``."""
    if len(a["scores"]) == 0 or len(b["scores"]) == 0:
        return []
    iou = box_iou(a["boxes"].double(), b["boxes"].double())
    iou[a["labels"][:, None] != b["labels"][None, :]] = -1.0
    taken = torch.zeros(len(b["scores"]), dtype=torch.bool)
    pairs = []
    for i in torch.argsort(a["scores"], descending=True, stable=True).tolist():
        row = iou[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_thr:
            taken[j] = True
            pairs.append((i, j, float(row[j])))
    return pairs


def compare_detections(ref: list[dict], other: list[dict]) -> dict:
    """Per-frame agreement of two detection lists of the same clip (``ref``: the CPU's)."""
    n_ref = n_other = matched = top_found = top_total = 0
    score_diffs, box_diffs, per_frame = [], [], []
    for a, b in zip(ref, other):
        pairs = match_detections(a, b)
        n_ref, n_other, matched = n_ref + len(a["scores"]), n_other + len(b["scores"]), matched + len(pairs)
        top = set(torch.argsort(a["scores"], descending=True, stable=True)[:10].tolist())
        found = sum(1 for i, _, _ in pairs if i in top)
        top_found, top_total = top_found + found, top_total + len(top)
        for i, j, _ in pairs:
            score_diffs.append(abs(float(a["scores"][i]) - float(b["scores"][j])))
            box_diffs.append(float((a["boxes"][i] - b["boxes"][j]).abs().max()))
        per_frame.append({"ref": len(a["scores"]), "other": len(b["scores"]), "matched": len(pairs), "top10": found})
    return {
        "frames": len(ref),
        "detections_ref": n_ref,
        "detections_other": n_other,
        "matched": matched,
        "matched_share": matched / max(n_ref, n_other, 1),
        "top10_found_share": top_found / max(top_total, 1),
        "max_score_diff": max(score_diffs, default=0.0),
        "median_score_diff": statistics.median(score_diffs) if score_diffs else 0.0,
        "max_box_diff_px": max(box_diffs, default=0.0),
        "per_frame": per_frame,
    }


def run_clip(model, kind: str, items, device, dtype=None) -> list[dict]:
    """``detect_video`` over the clip ``items`` on ``device`` (``dtype``: autocast)."""
    source = DeviceFrames(items, device) if kind in ("selsa", "temporal_roi_align") else stream(items, device)
    with torch.inference_mode(), autocast(device, dtype):
        return list(model.detect_video(source, len(items)))


def correctness_case(kind: str, plan: Plan, device: torch.device) -> dict:
    cfg = model_config(kind, plan)
    frames, _ = make_clip(plan.correctness_frames, plan.size, cfg.num_classes, seed=3)
    items = transformed(frames, plan.size, cfg)
    model = build(kind, plan, items, device).eval()
    cpu = torch.device("cpu")
    ref_model = copy.deepcopy(model).to(cpu)  # the same weights on the CPU
    with torch.inference_mode():
        feat_ref = ref_model.detector.extract_feat(items[0][0][None])
    ref = run_clip(ref_model, kind, items, cpu)
    del ref_model
    variants = {"fp32_strict": (False, None), "fp32_default": (None, None), "amp": (None, amp_dtype(device))}
    if device.type == "cpu":  # the same device twice: the code path, and an exact repeat
        variants = {"fp32_repeat": (None, None)}
    out = {"kind": kind, "frames": len(items), "size": list(plan.size), "variants": {}}
    for name, (tf, dtype) in variants.items():
        with tf32(tf):
            with torch.inference_mode(), autocast(device, dtype):
                feat = model.detector.extract_feat(items[0][0][None].to(device)).float().cpu()
            dets = run_clip(model, kind, items, device, dtype)
        cmp = compare_detections(ref, dets)
        cmp["feature_max_rel_diff"] = float((feat - feat_ref).abs().max() / feat_ref.abs().max().clamp_min(1e-12))
        cmp["tf32"] = {False: "off", None: "torch default"}[tf]
        cmp["autocast"] = None if dtype is None else str(dtype).replace("torch.", "")
        out["variants"][name] = cmp
    return out


def section_correctness(device, plan, budget) -> dict:
    cases = {}
    for kind in plan.correctness_kinds:
        cases[kind] = (
            case(correctness_case, kind, plan, device)
            if budget.allows("correctness", ESTIMATE_S["ddp"])
            else skipped(budget)
        )
    return {"status": section_status(cases), "cases": cases}


# ----------------------------------------------------------------------------- training


def train_step(model, batch, optimizer, scaler, params, device, dtype, clip: float) -> torch.Tensor:
    """One step as ``lvod.engine.train.train_one_epoch`` takes it: autocast forward, the
    ``loss_*`` terms summed in fp32, scaled backward, unscale + clip, step, scaler update."""
    images, sizes, targets = batch
    with autocast(device, dtype):
        losses = model(images, sizes, targets)
    names, _ = split_losses(losses)
    loss = sum(losses[k].float() for k in names)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train_case(kind: str, precision: str, plan: Plan, device: torch.device) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model_config(kind, plan)
    frames, targets = make_clip(5, plan.size, cfg.num_classes, seed=7)
    items = transformed(frames, plan.size, cfg)
    images, sizes, tgts = training_batch(items, targets)
    reset_memory(device)
    model = build(kind, plan, items[:3], device).train()
    batch = (images.to(device), sizes, [{k: v.to(device) for k, v in t.items()} for t in tgts])
    tc = TrainConfig()
    lr = scaled_lr(tc.lr, tc.lr_base_batch, 1)  # the recipe's lr for one image per step
    params, optimizer, _, _ = _build_optimizer(model, replace(tc, amp=False), lr, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    warmup, steps = (plan.warmup, plan.train_steps) if precision == "fp32" else (plan.amp_warmup, plan.amp_train_steps)
    times, losses, flops, syncs = [], [], None, {"syncs": None}
    for s in range(warmup + steps):
        with contextlib.ExitStack() as probes:  # on warm-up steps only: they are not timed
            if s == 0 and precision == "fp32":
                flops = probes.enter_context(FlopCounterMode(display=False))
            if s == warmup - 1:
                syncs = probes.enter_context(count_syncs(device))
            sync(device)
            t0 = time.perf_counter()
            loss = train_step(model, batch, optimizer, scaler, params, device, dtype, tc.grad_clip)
            sync(device)
            if s >= warmup:
                times.append(time.perf_counter() - t0)
            losses.append(float(loss))
    k = max(1, len(losses) // 4)
    out = {
        "kind": kind,
        "precision": precision,
        "size": list(plan.size),
        "frames_per_step": int(images.shape[1]),
        "lr": lr,
        "warmup_steps": warmup,
        "timed_steps": len(times),
        "median_step_s": statistics.median(times),
        "mean_step_s": statistics.mean(times),
        "min_step_s": min(times),
        "peak_mem_gib": peak_gib(device),
        "losses": [round(v, 5) for v in losses],
        "losses_finite": all(math.isfinite(v) for v in losses),
        "loss_first": statistics.mean(losses[:k]),
        "loss_last": statistics.mean(losses[-k:]),
        "scaler_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
        "syncs_per_step": syncs["syncs"],
        "step_tflop": None if flops is None else flops.get_total_flops() / 1e12,
    }
    out["loss_decreased"] = out["loss_last"] < out["loss_first"]
    out["achieved_tflops"] = None if flops is None else out["step_tflop"] / out["median_step_s"]
    del model, optimizer, batch
    reset_memory(device)
    return out


def section_train(device, plan, budget) -> dict:
    cases = {}
    for kind in plan.train_kinds:
        for precision in ("fp32", "bf16", "fp16"):
            ok = budget.allows("train", ESTIMATE_S["ddp"] + ESTIMATE_S["infer"] * 4)
            cases[f"{kind}_{precision}"] = case(train_case, kind, precision, plan, device) if ok else skipped(budget)
    return {"status": section_status(cases), "cases": cases}


# ----------------------------------------------------------------------------- inference


def steady_gaps(kind: str, gaps: list[float], cfg: ModelConfig) -> tuple[list[float], str]:
    """The per-frame times that are the detector's steady state, and what they are."""
    n = len(gaps)
    if kind == "fgfa":
        half = cfg.fgfa_window // 2
        full = [g for t, g in enumerate(gaps) if half <= t < n - half and t > 0]
        return (full, f"frames whose {cfg.fgfa_window}-frame window is full") if full else (gaps[1:], "frames 1..")
    if kind == "dff":
        return gaps[1:], f"frames 1.. (key frame every {cfg.dff_key_frame_interval}: the video-long mix)"
    if kind in ("selsa", "temporal_roi_align"):
        return gaps[1:], f"frames 1.. (frame 0 also reads the {cfg.selsa_test_refs} reference frames)"
    return gaps[1:], "frames 1.."


def infer_case(kind: str, precision: str, plan: Plan, device: torch.device, model, items) -> dict:
    cfg = model_config(kind, plan)
    n = len(items)
    dtype = None if precision == "fp32" else amp_dtype(device)
    source = DeviceFrames(items, device) if kind in ("selsa", "temporal_roi_align") else stream(items, device)
    reset_memory(device)
    gaps, dets = [], 0
    with torch.inference_mode(), autocast(device, dtype):
        sync(device)
        t0 = time.perf_counter()
        for det in model.detect_video(source, n):  # each result is on the CPU: the device is done
            now = time.perf_counter()
            gaps.append(now - t0)
            t0 = now
            dets += len(det["scores"])
    steady, what = steady_gaps(kind, gaps, cfg)
    mean = statistics.mean(steady) if steady else float("nan")
    setting = {
        "fgfa": {"window": cfg.fgfa_window},
        "selsa": {"refs": cfg.selsa_test_refs},
        "temporal_roi_align": {"refs": cfg.selsa_test_refs},
        "dff": {"key_frame_interval": cfg.dff_key_frame_interval},
    }.get(kind, {})
    return {
        "kind": kind,
        "precision": "fp32" if dtype is None else str(dtype).replace("torch.", ""),
        **setting,
        "frames": n,
        "size": list(plan.size),
        "first_frame_s": gaps[0],
        "steady_s_per_frame": mean,
        "steady_fps": 1.0 / mean if steady else None,
        "steady_frames": len(steady),
        "steady_is": what,
        "video_fps": n / sum(gaps),
        "detections_per_frame": dets / n,
        "peak_mem_gib": peak_gib(device),
    }


def section_infer(device, plan, budget) -> dict:
    cases = {}
    cfg0 = model_config("single", plan)
    frames, _ = make_clip(max(plan.infer_frames.values()), plan.size, cfg0.num_classes, seed=11)
    items = transformed(frames, plan.size, cfg0)  # every config here normalises alike
    del frames
    for kind in plan.infer_kinds:
        model, error = None, None
        for precision in ("fp32", "amp"):
            name = f"{kind}_{precision}"
            if not budget.allows("infer", ESTIMATE_S["ddp"]):
                cases[name] = skipped(budget)
                continue
            if model is None and error is None:
                built = case(lambda k=kind: {"model": build(k, plan, items[:3], device).eval()})
                model, error = built.pop("model", None), (None if built["status"] == "ok" else built)
            n = (plan.infer_frames if precision == "fp32" else plan.amp_infer_frames)[kind]
            cases[name] = error or case(infer_case, kind, precision, plan, device, model, items[:n])
        del model
        reset_memory(device)
    return {"status": section_status(cases), "cases": cases}


# ----------------------------------------------------------------------------- ddp


def ddp_config(path: Path, data: dict, plan: Plan, device: torch.device, stop: int) -> Path:
    """A training config over the generated set (``make_demo``'s result ``data``): the
    demo's tiny FGFA (R18) with the EQLv2 head (float64 statistics all-reduced under
    torch.distributed), AMP on (it applies on CUDA), checkpoints every half run (tiny:
    at the end only, and the backbone frozen: its 3 stages, the demo model being the C4 one)."""
    base = (REPO / "configs" / "_base_" / "models" / "fgfa_r18_demo.toml").as_posix()
    root = Path(data["out_dir"]).as_posix()
    path.write_text(
        f"""include = ["{base}"]
[model]
head = "eqlv2"
frozen_stages = {3 if plan.tiny else 1}
[data]
root = "{root}"
train = [{{ ann_file = "annotations/train.json", images_root = "Data/VID" }}]
val = {{ ann_file = "annotations/val.json", images_root = "Data/VID", key_frames_only = false }}
img_scale = [{max(data["image_size"])}, {min(data["image_size"])}]
imgs_per_gpu = 2
workers_per_gpu = {1 if device.type == "cuda" else 0}
[train]
lr = 0.02
lr_base_batch = 2
epochs = 20
lr_steps = [15]
warmup_iters = 5
amp = true
checkpoint_interval = {plan.ddp_iters if plan.tiny else max(1, plan.ddp_iters // 2)}
log_interval = 1
progress_bar = false
stop_after_iters = {stop}
"""
    )
    return path


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run(cmd: list[str], timeout: float, log: Path) -> dict:
    """Run ``cmd`` from the repository root (output to ``log``, killed after ``timeout`` s):
    ``{"cmd", "rc" ("timeout" when killed), "seconds", "tail" (end of its output)}``."""
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=_child_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
            rc = rc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = log.read_text(errors="replace")
    seconds = round(time.perf_counter() - t0, 2)
    return {"cmd": " ".join(map(str, cmd)), "rc": rc, "seconds": seconds, "tail": text[-1500:]}


def _log_summary(run_dir: Path) -> dict:
    from lvod.engine.runlog import read_records

    records = read_records(run_dir / "log.jsonl")
    train_recs = [r for r in records if r.get("event") == "train"]
    starts = [r for r in records if r.get("event") == "start"]
    last = train_recs[-1] if train_recs else {}
    return {
        "starts": [{k: s.get(k) for k in ("iter", "device", "world_size", "amp", "resumed_from")} for s in starts],
        "last_iter": last.get("iter"),
        "last_loss": last.get("loss"),
        "s_per_iter": last.get("time"),
        "memory_mb": last.get("memory_mb"),
        "losses_finite": all(math.isfinite(r.get("loss", float("nan"))) for r in train_recs),
    }


def section_ddp(device, plan, budget, workdir: Path) -> dict:
    """``torchrun --nproc_per_node 1`` running this script's worker (NCCL group on CUDA,
    gloo on the CPU): lvod's collectives, then ``lvod train CONFIG --gpus 1`` inside the
    group; then ``lvod train CONFIG --gpus 1 --resume`` as a fresh process."""
    from lvod.data.demo import make_demo

    if not budget.allows("ddp"):
        return {"status": "skipped", "error": skipped(budget)["error"]}
    workdir.mkdir(parents=True, exist_ok=True)
    size = (96, 64) if plan.tiny else (160, 128)
    data = make_demo(
        workdir / "data",
        seed=0,
        num_train_videos=2,
        num_val_videos=1,
        num_heldout_videos=0,
        frames_per_video=6 if plan.tiny else 10,
        image_size=size,
    )
    data["image_size"] = size
    out = {"data": {k: data["train"][k] for k in ("videos", "images", "boxes", "key_frames")}, "steps": {}}
    steps = out["steps"]
    cfg_path = ddp_config(workdir / "ddp.toml", data, plan, device, plan.ddp_iters)
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd += [str(Path(__file__).resolve()), "--ddp-worker", str(run_dir), "--device", device.type]
    cmd += ["--worker-config", str(cfg_path)]
    limit = lambda: max(60.0, min(300.0, budget.left()))  # a hung NCCL call must not eat the budget
    worker = _run(cmd, limit(), workdir / "worker.log")
    report = run_dir / "worker.json"
    worker["checks"] = json.loads(report.read_text()) if report.exists() else None
    worker["ok"] = (
        worker["rc"] == 0
        and bool(worker["checks"])
        and all(c.get("status") == "ok" for c in worker["checks"]["checks"].values())
    )
    steps["torchrun_lvod_train"] = worker
    if (run_dir / "latest.pth").exists():
        stop = [f"train.stop_after_iters={plan.ddp_resume_iters}"]
        resume = _run(
            train_command(cfg_path, run_dir, gpus=1, resume=True, overrides=stop), limit(), workdir / "resume.log"
        )
        if resume["rc"] == 0:
            resume["checkpoint_iter"] = load_checkpoint(run_dir / "latest.pth")["iter"]
            resume["log"] = _log_summary(run_dir)
            starts = resume["log"]["starts"]
            resume["ok"] = (
                resume["checkpoint_iter"] == plan.ddp_resume_iters
                and len(starts) == 2
                and starts[1]["iter"] == plan.ddp_iters
                and bool(starts[1]["resumed_from"])
                and resume["log"]["losses_finite"]
            )
        steps["lvod_train_resume"] = resume
    fine = all(s.get("ok") for s in steps.values()) and len(steps) == 2
    out["status"] = "ok" if fine else "error"
    if not fine:
        out["error"] = "failed: " + (", ".join(k for k, s in steps.items() if not s.get("ok")) or "no checkpoint")
    return out


def ddp_worker(args) -> int:
    """``--ddp-worker RUN_DIR``, run under ``torchrun --nproc_per_node 1``: joins a process
    group as lvod's training does with several GPUs (NCCL after ``set_device`` on CUDA, gloo
    on the CPU; ``lvod train`` with one process joins none), runs lvod's collectives there,
    then ``lvod train CONFIG --gpus 1`` in this process, inside the group (the EQLv2 head
    all-reduces its float64 statistics). Writes ``RUN_DIR/worker.json``."""
    from lvod import cli
    from lvod.engine.data import build_train_loader

    run_dir = Path(args.ddp_worker)
    run_dir.mkdir(parents=True, exist_ok=True)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = args.device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    checks = {}
    result = {"backend": backend, "world_size": dist.get_world_size(), "device": str(device), "checks": checks}
    cfg = load_config(args.worker_config)

    def all_reduce_float64():
        t = torch.arange(4, dtype=torch.float64, device=device) + 0.5
        dist.all_reduce(t)
        return {"value": t.tolist(), "ok": t.tolist() == [v * dist.get_world_size() for v in (0.5, 1.5, 2.5, 3.5)]}

    def gather_rng():
        got = [None] * dist.get_world_size()
        dist.all_gather_object(got, rng_state())  # what CheckpointWriter gathers from every rank
        return {"ranks": len(got), "cuda_states": len(got[0]["cuda"])}

    def ddp_steps():
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).train()
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if use_cuda else None)
        _, _, loader = build_train_loader(cfg.data, dist.get_rank(), dist.get_world_size(), 0)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=use_cuda)  # fp16 autocast as train.amp
        losses = []
        for i, b in enumerate(loader):
            if i == 2:
                break
            targets = [{k: v.to(device) for k, v in t.items()} for t in b["targets"]]
            with autocast(device, torch.float16 if use_cuda else None):
                ls = net(b["images"].to(device), b["image_sizes"], targets)
            loss = sum(ls[k].float() for k in split_losses(ls)[0])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
        return {"losses": losses, "ok": len(losses) == 2 and all(math.isfinite(v) for v in losses)}

    def lvod_train():  # last: the command line leaves the process group when it is done
        rc = cli.main(["train", str(args.worker_config), "--gpus", "1", "--work-dir", str(run_dir)])
        state = load_checkpoint(run_dir / "latest.pth")
        stats = [v for k, v in state["model"].items() if k.endswith(("pos_grad", "neg_grad"))]
        return {
            "rc": rc,
            "checkpoint_iter": state["iter"],
            "eqlv2_stats_dtype": str(stats[0].dtype),
            "eqlv2_stats_sum": float(sum(g.sum() for g in stats)),
            "log": _log_summary(run_dir),
            "ok": rc == 0
            and state["iter"] == cfg.train.stop_after_iters
            and all(torch.isfinite(g).all() for g in stats),
        }

    try:
        for name, fn in (
            ("all_reduce_float64", all_reduce_float64),
            ("all_gather_object_rng", gather_rng),
            ("ddp_steps", ddp_steps),
            ("lvod_train", lvod_train),
        ):
            checks[name] = case(fn)
            if checks[name]["status"] == "ok" and checks[name].get("ok") is False:
                checks[name]["status"] = "error"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        save_json(result, run_dir / "worker.json")
    return 0 if all(c["status"] == "ok" for c in checks.values()) else 1


# ----------------------------------------------------------------------------- report


def fmt(v, spec=".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def format_table(report: dict) -> str:
    """The report as text tables (what the script prints at the end)."""
    s = report["sections"]
    lines = [f"lvod GPU check, {report['mode']} mode on {report['device']}, {report['started']}"]
    for name in SECTIONS:
        sec = s.get(name, {})
        extra = f"  ({sec['error']})" if sec.get("error") else ""
        lines.append(f"  {name:<12} {sec.get('status', 'not run'):<8} {fmt(sec.get('seconds'), '.1f'):>7} s{extra}")
    env = s.get("env", {})
    if env.get("status") == "ok":
        lines.append(
            f"env: {env.get('gpu') or 'CPU'}"
            + (f", {env['gpu_memory_gib']} GiB, cc {env['capability']}" if env.get("gpu") else "")
            + f"; torch {env['torch']}, torchvision {env['torchvision']}, CUDA {env['cuda_runtime']}, "
            f"cuDNN {env['cudnn']}, NCCL {env.get('nccl')}; TF32 conv {env['cudnn_allow_tf32']}, "
            f"matmul {env['matmul_allow_tf32']}"
        )
    rows = []
    for kind, c in s.get("correctness", {}).get("cases", {}).items():
        for var, v in c.get("variants", {}).items():
            rows.append(
                f"  {kind:<6} {var:<13} {v['frames']:>3} {v['detections_ref']:>5} {v['detections_other']:>5} "
                f"{v['matched_share']:>8.3f} {v['top10_found_share']:>6.2f} {v['max_score_diff']:>10.2e} "
                f"{v['max_box_diff_px']:>8.2e} {v['feature_max_rel_diff']:>9.2e}"
            )
        if c.get("status") != "ok":
            rows.append(f"  {kind:<6} {c.get('status')}: {c.get('error')}")
    if rows:
        lines.append("correctness (device vs CPU fp32)")
        lines.append("  kind   variant      frm   cpu   dev  matched  top10  max|dscore|  max|dbox|  feat rel")
        lines += rows
    rows = []
    zoo_mem = {"fgfa": {"fp32": 4.1}, "selsa": {"fp32": 3.49, "fp16": 2.71}}
    for c in s.get("train", {}).get("cases", {}).values():
        if c.get("status") != "ok":
            rows.append(f"  {c.get('status')}: {c.get('error')}")
            continue
        zoo = zoo_mem.get(c["kind"], {}).get(c["precision"])
        rows.append(
            f"  {c['kind']:<6} {c['precision']:<5} {c['median_step_s']:>9.4f} {fmt(c['peak_mem_gib'], '.2f'):>8} "
            f"{fmt(zoo):>6} {c['loss_first']:>8.3f} -> {c['loss_last']:<8.3f} {str(c['loss_decreased']):<6} "
            f"{fmt(c.get('step_tflop'), '.3f'):>7} {fmt(c.get('achieved_tflops'), '.1f'):>6} "
            f"{fmt(c['syncs_per_step']):>6}"
        )
    if rows:
        lines.append("training (key + 2 refs, fixed batch)")
        lines.append("  kind   prec  median s  peak GiB  zoo GB  loss first -> last  down   TFLOP  TFLOP/s  syncs")
        lines += rows
    rows = []
    zoo_fps = {"fgfa": 6.9, "selsa": 7.5, "dff": 44.0}
    for c in s.get("infer", {}).get("cases", {}).values():
        if c.get("status") != "ok":
            rows.append(f"  {c.get('status')}: {c.get('error')}")
            continue
        rows.append(
            f"  {c['kind']:<18} {c['precision']:<8} {fmt(c['steady_fps'], '.2f'):>8} {c['video_fps']:>8.2f} "
            f"{fmt(zoo_fps.get(c['kind'])):>6} {c['first_frame_s']:>8.3f} {fmt(c['peak_mem_gib'], '.2f'):>8} "
            f"{c['frames']:>4}"
        )
    if rows:
        lines.append("inference (detect_video stream)")
        lines.append("  kind               prec     steady fps  clip fps  zoo fps  first s  peak GiB  frames")
        lines += rows
    ddp = s.get("ddp", {})
    for name, step in ddp.get("steps", {}).items():
        lines.append(f"ddp {name}: rc {step.get('rc')}, ok {step.get('ok')}, {step.get('seconds')} s")
        for cname, chk in ((step.get("checks") or {}).get("checks") or {}).items():
            lines.append(f"    {cname}: {chk.get('status')} {chk.get('error', '')}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "_out" / "gpu_check.json"), help="JSON report")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (ModelConfig.tiny(), 64x96, few steps)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 20; tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 3; tiny 1)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 420 s; tiny none)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--workdir", default=None, help="where the DDP runs write (default: a temporary folder)")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-config", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the child processes too
    if args.ddp_worker:
        return ddp_worker(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu (with --tiny for the quick CPU run)", file=sys.stderr)
        return 2
    wanted = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    plan = make_plan(args.tiny, args)
    budget = Budget(plan.budget_s, plan.tiny)
    out = Path(args.out)
    report = {
        "tool": "benchmarks/gpu_check.py",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "mode": "tiny" if plan.tiny else "full",
        "device": str(device),
        "plan": asdict(plan),
        "reference": REFERENCE,
        "sections": {},
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        runners = {
            "env": lambda: {"status": "ok", **section_env(device, plan)},
            "correctness": lambda: section_correctness(device, plan, budget),
            "train": lambda: section_train(device, plan, budget),
            "infer": lambda: section_infer(device, plan, budget),
            "ddp": lambda: section_ddp(device, plan, budget, workdir / "ddp"),
        }
        for name in SECTIONS:
            if name not in wanted:
                continue
            print(f"[gpu_check] {name} ... ({budget.left():.0f} s of budget left)", flush=True)
            result = case(runners[name])
            report["sections"][name] = result
            print(f"[gpu_check] {name}: {result.get('status')} in {result['seconds']} s", flush=True)
            report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            save_json(report, out)
    print(format_table(report), flush=True)
    print(f"report: {out}", flush=True)
    return 0 if all(s.get("status") == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
