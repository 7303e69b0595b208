"""The built-in demo dataset: a deterministic, synthetic, long-tailed video detection set.

``make_demo(out_dir, seed=0)`` draws small videos of coloured shapes that move, change
scale, occlude one another and leave the frame over textured, slowly panning
backgrounds, degrades some frames (motion blur, defocus, noise, a distractor patch) and
writes them the way mmtracking lays out ImageNet VID:

- frames: ``out_dir/Data/VID/{train,val}/demo_<split>_<nnnn>/<frame:06d>.JPEG``;
- annotations: ``out_dir/annotations/{train,val}.json`` (CocoVID, ``file_name`` relative
  to ``out_dir/Data/VID``), plus ``out_dir/README.md``.

Train is long-tailed (the head class has over 50x the boxes of the rarest class); val
holds every class in several tracks so that per-class AP means something. The same seed
and sizes give byte-identical files. Video ``k`` of a split depends only on
``(seed, split, k)`` and the size options.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lvod.io import atomic_write, save_json

# (name, shape, fill RGB or None for a pattern, aspect w/h, description)
CLASSES = (
    ("red_disk", "disk", (220, 30, 30), 1.0, "solid red disk"),
    ("blue_square", "square", (30, 60, 220), 1.0, "solid blue square"),
    ("green_triangle", "triangle", (30, 175, 45), 1.1, "green upward triangle"),
    ("yellow_star", "star", (250, 220, 20), 1.0, "yellow five-pointed star"),
    ("magenta_cross", "cross", (215, 40, 200), 1.0, "magenta plus sign"),
    ("cyan_ring", "ring", (30, 210, 225), 1.0, "cyan ring (background shows inside)"),
    ("orange_diamond", "diamond", (250, 140, 20), 0.8, "orange rhombus, taller than wide"),
    ("striped_square", "stripes", None, 1.0, "square of black and white horizontal stripes"),
    ("purple_hexagon", "hexagon", (120, 40, 170), 1.1, "purple hexagon"),
    ("pink_heart", "heart", (255, 120, 170), 1.0, "pink heart"),
    ("lime_arrow", "arrow", (150, 235, 60), 1.7, "lime arrow pointing right, wide"),
    ("white_crescent", "crescent", (238, 238, 238), 0.8, "white crescent opening right"),
)
# Train tracks per class for 40 train videos (scaled with the number of videos). The
# rarest class gets one short track, so the head/tail box ratio is about 60.
TRAIN_TRACKS = {
    "blue_square": 32,
    "red_disk": 22,
    "green_triangle": 15,
    "yellow_star": 11,
    "pink_heart": 8,
    "orange_diamond": 6,
    "magenta_cross": 5,
    "purple_hexagon": 4,
    "lime_arrow": 3,
    "cyan_ring": 2,
    "white_crescent": 2,
    "striped_square": 1,
}
VAL_TRACKS_PER_CLASS = 4  # for 12 val videos (scaled, at least 2)
SPEEDS = {
    "slow": (0.0, 0.003, 0.0015),
    "medium": (0.007, 0.014, 0.005),
    "fast": (0.03, 0.11, 0.02),
}  # (min, max) speed in object sizes/frame, max |scale rate|
DEGRADATIONS = ("motion_blur", "defocus", "noise", "distractor")
MIN_BOX_SIDE = 4  # a box clipped to the image narrower than this is dropped
MAX_COVERED = 0.9  # an object with this share of its pixels covered gets no box
KEY_FRAMES_PER_VIDEO = 15
SS = 4  # supersampling factor of sprite drawing


def key_frames(num_frames: int, k: int = KEY_FRAMES_PER_VIDEO) -> list[int]:
    """Up to ``k`` evenly spaced 0-based frames, centred in their slots like FGFA's list
    (300 frames -> 10, 30, ..., 290)."""
    k = min(k, num_frames)
    return [int((i + 0.5) * num_frames / k) for i in range(k)]


def _shape_mask(shape: str, w: int, h: int) -> Image.Image:
    """Anti-aliased ``L`` mask of one class shape filling a ``w`` x ``h`` box."""
    W, H = w * SS, h * SS
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    if shape in ("disk",):
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
    elif shape in ("square", "stripes"):
        d.rectangle([0, 0, W - 1, H - 1], fill=255)
    elif shape == "triangle":
        d.polygon([(W / 2, 0), (W - 1, H - 1), (0, H - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(W / 2, 0), (W - 1, H / 2), (W / 2, H - 1), (0, H / 2)], fill=255)
    elif shape == "hexagon":
        d.polygon(
            [(W / 4, 0), (3 * W / 4, 0), (W - 1, H / 2), (3 * W / 4, H - 1), (W / 4, H - 1), (0, H / 2)], fill=255
        )
    elif shape == "cross":
        d.rectangle([0, H / 3, W - 1, 2 * H / 3], fill=255)
        d.rectangle([W / 3, 0, 2 * W / 3, H - 1], fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
        t = 0.3 * min(W, H)
        d.ellipse([t, t, W - 1 - t, H - 1 - t], fill=0)
    elif shape == "star":
        pts = []
        for i in range(10):
            r = 0.5 if i % 2 == 0 else 0.2
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((W / 2 + r * W * math.cos(a) / 0.95, H * 0.55 + r * H * math.sin(a) * 1.1))
        d.polygon(pts, fill=255)
    elif shape == "heart":
        d.ellipse([0, 0, W / 2 + 1, H / 2 + 1], fill=255)
        d.ellipse([W / 2 - 1, 0, W - 1, H / 2 + 1], fill=255)
        d.polygon([(0, H / 4 + 2), (W - 1, H / 4 + 2), (W / 2, H - 1)], fill=255)
    elif shape == "arrow":
        d.rectangle([0, H / 3, W * 0.55, 2 * H / 3], fill=255)
        d.polygon([(W * 0.5, 0), (W - 1, H / 2), (W * 0.5, H - 1)], fill=255)
    elif shape == "crescent":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
        d.ellipse([W * 0.38, -H * 0.05, W * 1.3, H * 1.05], fill=0)
    else:  # pragma: no cover - CLASSES is a constant
        raise ValueError(f"unknown shape {shape}")
    return m.resize((w, h), Image.BOX)


def render_sprite(cls: int, w: int, h: int, tint: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw class index ``cls`` (0-based) in a ``w`` x ``h`` box.

    Returns ``rgb`` float32 (h, w, 3) in 0..255 and ``alpha`` float32 (h, w) in 0..1.
    ``tint`` scales brightness (per-track variation); a soft top-left highlight and a
    darker rim give the shapes some shading.
    """
    _, shape, fill, _, _ = CLASSES[cls]
    alpha = np.asarray(_shape_mask(shape, w, h), dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if fill is None:  # black/white stripes, about 4 stripes per object
        period = max(4.0, h / 4.0)
        band = (np.floor(yy / (period / 2)) % 2)[..., None]
        rgb = np.where(band > 0, 20.0, 235.0) * np.ones((1, 1, 3), np.float32)
    else:
        rgb = np.broadcast_to(np.asarray(fill, np.float32), (h, w, 3)).copy()
    shade = 1.12 - 0.24 * ((xx / max(w - 1, 1) + yy / max(h - 1, 1)) / 2)
    rgb = np.clip(rgb * (tint * shade)[..., None], 0, 255)
    rim = (
        np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(3)), np.float32) / 255.0
    )
    rgb = rgb * (0.6 + 0.4 * rim[..., None])
    return rgb.astype(np.float32), alpha


def _background(rng: np.random.Generator, W: int, H: int) -> np.ndarray:
    """Textured, cluttered, low-saturation background, float32 (H, W, 3)."""
    base = rng.uniform(70, 170)
    tint = rng.uniform(-18, 18, size=3)
    img = np.full((H, W, 3), base, np.float32) + tint
    img += np.linspace(-20, 20, H, dtype=np.float32)[:, None, None] * rng.choice([-1.0, 1.0])
    coarse = rng.normal(0, 14, size=(H // 16 + 2, W // 16 + 2)).astype(np.float32)
    img += np.asarray(Image.fromarray(coarse, mode="F").resize((W, H), Image.BILINEAR))[..., None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(W * H / 500)):
        c = tuple(int(v) for v in np.clip(base + tint + rng.uniform(-45, 45) + rng.uniform(-8, 8, 3), 0, 255))
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        s = rng.uniform(2, 9)
        kind = rng.integers(3)
        if kind == 0:
            d.ellipse([x - s, y - s * rng.uniform(0.4, 1), x + s, y + s], fill=c)
        elif kind == 1:
            d.rectangle([x - s, y - s / 2, x + s, y + s / 2], fill=c)
        else:
            d.line([x, y, x + rng.uniform(-3, 3) * s, y + rng.uniform(-3, 3) * s], fill=c, width=1)
    img = np.asarray(pil, np.float32) + rng.normal(0, 4, size=(H, W, 3)).astype(np.float32)
    return img


def _plan_tracks(
    rng, cls_counts: dict[int, int], num_videos: int, num_frames: int, W: int, H: int, short: set[int]
) -> list[list[dict]]:
    """Assign tracks to videos and draw their motion. Returns per video a list of tracks:
    ``{cls, t0, t1, cx, cy, vx, vy, s, rate, aspect, tint, z, speed}`` with ``t1`` exclusive."""
    tracks = [c for c, n in sorted(cls_counts.items()) for _ in range(n)]
    order = rng.permutation(len(tracks))
    per_video: list[list[dict]] = [[] for _ in range(num_videos)]
    base = min(W, H) / 128.0
    for slot, i in enumerate(order):
        cls = tracks[i]
        # the rarest class's single short track is slow or medium so that it stays in frame
        speed = rng.choice(list(SPEEDS), p=[0.5, 0.5, 0.0] if cls in short else [0.3, 0.3, 0.4])
        lo, hi, max_rate = SPEEDS[speed]
        s = rng.uniform(22, 40) * base
        v = rng.uniform(lo, hi) * s
        ang = rng.uniform(0, 2 * math.pi)
        t0, t1 = 0, num_frames
        if cls in short:  # the rarest class: one short track near the image centre
            length = max(4, num_frames * 5 // 12)
            t0 = int(rng.integers(0, num_frames - length + 1))
            t1 = t0 + length
        else:
            u = rng.uniform()
            if u < 0.15:
                t0 = int(rng.integers(1, max(2, num_frames // 3)))
            elif u < 0.3:
                t1 = int(rng.integers(max(t0 + 2, 2 * num_frames // 3), num_frames))
        margin = 0.15 if cls not in short else 0.35
        per_video[slot % num_videos].append(
            dict(
                cls=cls,
                t0=t0,
                t1=t1,
                speed=str(speed),
                cx=rng.uniform(margin, 1 - margin) * W,
                cy=rng.uniform(margin, 1 - margin) * H,
                vx=v * math.cos(ang),
                vy=v * math.sin(ang),
                s=s,
                rate=rng.uniform(-max_rate, max_rate),
                aspect=CLASSES[cls][3] * rng.uniform(0.9, 1.1),
                tint=rng.uniform(0.85, 1.1),
                z=rng.uniform(),
            )
        )
    return per_video


def _degrade(kind: str, frame: np.ndarray, rng) -> np.ndarray:
    """Apply a whole-frame degradation; ``frame`` float32 (H, W, 3)."""
    if kind == "motion_blur":
        length = int(rng.integers(6, 11))
        dx, dy = (1, 0) if rng.uniform() < 0.5 else (1, 1)
        H, W = frame.shape[:2]
        pad = np.pad(frame, ((length, length), (length, length), (0, 0)), mode="edge")
        acc = np.zeros_like(frame)
        for k in range(length):
            o = k - length // 2
            acc += pad[length + o * dy : length + o * dy + H, length + o * dx : length + o * dx + W]
        return acc / length
    if kind == "defocus":
        pil = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
        return np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(1.8, 2.6))), np.float32)
    if kind == "noise":
        return frame + rng.normal(0, rng.uniform(22, 32), size=frame.shape).astype(np.float32)
    raise ValueError(kind)


def _render_video(rng, tracks: list[dict], num_frames: int, W: int, H: int, degraded: dict[int, str]):
    """Yield ``(frame uint8 (H, W, 3), boxes)`` per frame; boxes are
    ``(track index, [x, y, w, h] ints, occluded)`` for visible objects."""
    pan = rng.uniform(-1.0, 1.0, size=2) * rng.choice([0.0, 1.0], p=[0.4, 0.6])
    M = int(math.ceil(np.abs(pan).max() * num_frames)) + 2
    bg = _background(rng, W + 2 * M, H + 2 * M)
    cache: dict[tuple, tuple] = {}
    order = sorted(range(len(tracks)), key=lambda i: tracks[i]["z"])
    for t in range(num_frames):
        ox, oy = (M + np.round(pan * t)).astype(int)
        frame = bg[oy : oy + H, ox : ox + W].copy() + rng.normal(0, 2, size=(H, W, 3)).astype(np.float32)
        masks, boxes = [], []
        for i in order:
            tr = tracks[i]
            if not tr["t0"] <= t < tr["t1"]:
                continue
            dt = t - (tr["t0"] + tr["t1"] - 1) / 2
            s = tr["s"] * math.exp(tr["rate"] * dt)
            s = min(max(s, 20.0), 0.55 * min(W, H))
            w = max(16, int(round(s * math.sqrt(tr["aspect"]))))
            h = max(16, int(round(s / math.sqrt(tr["aspect"]))))
            x = int(round(tr["cx"] + tr["vx"] * dt - w / 2))
            y = int(round(tr["cy"] + tr["vy"] * dt - h / 2))
            key = (i, w, h)
            if key not in cache:
                rgb, alpha = render_sprite(tr["cls"], w, h, tr["tint"])
                ys, xs = np.nonzero(alpha > 0.5)
                cache[key] = (rgb, alpha, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            rgb, alpha, (bx0, by0, bx1, by1) = cache[key]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
            if x1 <= x0 or y1 <= y0:
                continue
            a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
            frame[y0:y1, x0:x1] = a * rgb[y0 - y : y1 - y, x0 - x : x1 - x] + (1 - a) * frame[y0:y1, x0:x1]
            m = np.zeros((H, W), bool)
            m[y0:y1, x0:x1] = a[..., 0] > 0.5
            bx = (max(x + bx0, 0), max(y + by0, 0), min(x + bx1, W), min(y + by1, H))
            masks.append(m)
            boxes.append((i, bx))
        kind = degraded.get(t)
        if kind == "distractor" and boxes:
            _, (bx0, by0, bx1, by1) = boxes[int(rng.integers(len(boxes)))]
            pw, ph = int(rng.uniform(0.5, 0.8) * (bx1 - bx0)) + 4, int(rng.uniform(0.5, 0.8) * (by1 - by0)) + 4
            px, py = int(rng.choice([bx0 - pw // 3, bx1 - 2 * pw // 3])), int(rng.uniform(by0 - ph / 3, by1 - ph / 2))
            px0, py0, px1, py1 = max(px, 0), max(py, 0), min(px + pw, W), min(py + ph, H)
            if px1 > px0 and py1 > py0:
                frame[py0:py1, px0:px1] = rng.uniform(60, 190) + rng.normal(0, 30, (py1 - py0, px1 - px0, 1))
                m = np.zeros((H, W), bool)
                m[py0:py1, px0:px1] = True
                masks.append(m)
        elif kind is not None:
            frame = _degrade(kind, frame, rng)
        out = []
        for j, (i, (x0, y0, x1, y1)) in enumerate(boxes):
            if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
                continue
            own = masks[j].sum()
            above = np.any(np.stack(masks[j + 1 :]), axis=0) if j + 1 < len(masks) else None
            covered = 0 if above is None or own == 0 else (masks[j] & above).sum() / own
            if covered >= MAX_COVERED:  # hidden behind other objects: nothing to annotate
                continue
            out.append((i, [int(x0), int(y0), int(x1 - x0), int(y1 - y0)], bool(covered >= 0.2)))
        yield np.clip(frame, 0, 255).astype(np.uint8), out


def _pick_degraded(rng, num_frames: int, fraction: float = 0.1) -> dict[int, str]:
    """Frame -> degradation kind for about ``fraction`` of the frames; never the first or
    last frame and never two neighbours, so each degraded frame has clean neighbours."""
    want = max(1, int(round(fraction * num_frames))) if num_frames >= 3 else 0
    chosen: list[int] = []
    for t in rng.permutation(np.arange(1, num_frames - 1)):
        if len(chosen) == want:
            break
        if all(abs(int(t) - c) > 1 for c in chosen):
            chosen.append(int(t))
    start = int(rng.integers(len(DEGRADATIONS)))
    return {t: DEGRADATIONS[(start + j) % len(DEGRADATIONS)] for j, t in enumerate(sorted(chosen))}


def _scaled_counts(split: str, num_videos: int) -> dict[int, int]:
    """Tracks per class index for a split of ``num_videos`` videos."""
    names = [c[0] for c in CLASSES]
    if split in ("train", "heldout"):  # heldout is drawn like train, from its own seeds
        f = num_videos / 40.0
        return {
            names.index(n): (1 if n == "striped_square" else max(1, int(round(k * f)))) for n, k in TRAIN_TRACKS.items()
        }
    k = max(2, int(round(VAL_TRACKS_PER_CLASS * num_videos / 12.0)))
    return {i: k for i in range(len(CLASSES))}


def _write_split(
    out_dir: Path, split: str, seed: int, num_videos: int, num_frames: int, W: int, H: int, quality: int
) -> dict:
    """Render and write one split; returns the CocoVID dict (not yet saved)."""
    code = {"train": 1, "val": 2, "heldout": 3}[split]
    like_train = split in ("train", "heldout")
    plan_rng = np.random.default_rng(np.random.SeedSequence([seed, code]))
    short = {[c[0] for c in CLASSES].index("striped_square")} if like_train else set()
    plan = _plan_tracks(plan_rng, _scaled_counts(split, num_videos), num_videos, num_frames, W, H, short)
    data = {
        "categories": [{"id": i + 1, "name": c[0], "description": c[4]} for i, c in enumerate(CLASSES)],
        "videos": [],
        "images": [],
        "annotations": [],
    }
    degraded_log = []
    next_instance = 1
    for k, tracks in enumerate(plan):
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, 1000 + k]))
        vid_id = k + 1
        name = f"{split}/demo_{split}_{k:04d}"
        keys = key_frames(num_frames) if like_train else []
        data["videos"].append({"id": vid_id, "name": name, "vid_train_frames": keys})
        degraded = _pick_degraded(rng, num_frames)
        instance = {i: next_instance + i for i in range(len(tracks))}
        next_instance += len(tracks)
        for t, (frame, boxes) in enumerate(_render_video(rng, tracks, num_frames, W, H, degraded)):
            img_id = len(data["images"]) + 1
            file_name = f"{name}/{t:06d}.JPEG"
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, "JPEG", quality=quality)
            with atomic_write(out_dir / "Data" / "VID" / file_name, "wb") as fh:
                fh.write(buf.getvalue())
            data["images"].append(
                {
                    "id": img_id,
                    "file_name": file_name,
                    "width": W,
                    "height": H,
                    "video_id": vid_id,
                    "frame_id": t,
                    "is_vid_train_frame": t in keys,
                }
            )
            if t in degraded:
                degraded_log.append({"image_id": img_id, "video_id": vid_id, "frame_id": t, "kind": degraded[t]})
            for i, bbox, occluded in boxes:
                tr = tracks[i]
                data["annotations"].append(
                    {
                        "id": len(data["annotations"]) + 1,
                        "image_id": img_id,
                        "video_id": vid_id,
                        "category_id": tr["cls"] + 1,
                        "instance_id": instance[i],
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": False,
                        "occluded": occluded,
                        "generated": False,
                        "speed": tr["speed"],
                    }
                )
    data["info"] = {
        "description": f"lvod demo dataset, {split} split (synthetic)",
        "generator": "lvod.data.demo.make_demo",
        "seed": seed,
        "image_size": [W, H],
        "frames_per_video": num_frames,
        "degraded_frames": degraded_log,
    }
    return data


def _class_counts(data: dict) -> list[int]:
    counts = [0] * len(CLASSES)
    for a in data["annotations"]:
        counts[a["category_id"] - 1] += 1
    return counts


def make_demo(
    out_dir,
    *,
    seed: int = 0,
    num_train_videos: int = 40,
    num_val_videos: int = 12,
    num_heldout_videos: int = 12,
    frames_per_video: int = 24,
    image_size: tuple[int, int] = (160, 128),
    jpeg_quality: int = 90,
) -> dict:
    """Write the demo dataset under ``out_dir`` and return what was written.

    ``image_size`` is ``(width, height)``. Returned keys: ``out_dir``, ``images_root``
    (prefix of every ``file_name``), ``train_json``, ``val_json``, ``heldout_json``,
    ``readme`` (Paths); ``classes`` (names in category-id order); ``train`` / ``val`` /
    ``heldout``: ``{videos, images, boxes, key_frames, degraded_frames, per_class (list of
    box counts, id order)}``; ``head_tail_ratio`` (train boxes of the most / least
    frequent class).

    ``heldout`` (``num_heldout_videos``, 0 = none): more videos drawn like the training
    ones (the same long-tailed plan, scaled, key frames flagged) from their own seeds,
    never trained on and never reported: where post-hoc parameters are chosen (``lvod
    calibrate --split``). Adding it leaves the train and val files byte-identical.
    """
    W, H = (int(v) for v in image_size)
    if W < 64 or H < 64 or frames_per_video < 4 or num_train_videos < 1 or num_val_videos < 1:
        raise ValueError(
            "make_demo needs images of at least 64x64, 4+ frames per video and at least one video per split"
        )
    out_dir = Path(out_dir)
    result = {"out_dir": out_dir, "images_root": out_dir / "Data" / "VID", "classes": [c[0] for c in CLASSES]}
    splits = [("train", num_train_videos), ("val", num_val_videos)]
    if num_heldout_videos > 0:
        splits.append(("heldout", num_heldout_videos))
    for split, n in splits:
        data = _write_split(out_dir, split, seed, n, frames_per_video, W, H, jpeg_quality)
        path = save_json(data, out_dir / "annotations" / f"{split}.json", indent=None)
        result[f"{split}_json"] = path
        result[split] = {
            "videos": len(data["videos"]),
            "images": len(data["images"]),
            "boxes": len(data["annotations"]),
            "key_frames": sum(im["is_vid_train_frame"] for im in data["images"]),
            "degraded_frames": len(data["info"]["degraded_frames"]),
            "per_class": _class_counts(data),
        }
    tc = result["train"]["per_class"]
    result["head_tail_ratio"] = max(tc) / max(min(tc), 1)
    readme = out_dir / "README.md"
    with atomic_write(readme, "w", encoding="utf-8") as fh:
        fh.write(_readme_text(result, seed, W, H, frames_per_video))
    result["readme"] = readme
    return result


def _readme_text(r: dict, seed: int, W: int, H: int, n: int) -> str:
    lines = [
        "# lvod demo dataset (synthetic)",
        "",
        f"Generated by `lvod.data.demo.make_demo(seed={seed})` (`lvod data demo --seed {seed}`): "
        f"{r['train']['videos']} train and {r['val']['videos']} val videos"
        + (f" (+ {r['heldout']['videos']} held-out videos drawn like train)" if "heldout" in r else "")
        + f" of {n} frames, "
        f"{W}x{H} JPEG. The same seed and sizes give byte-identical files.",
        "",
        "Layout (as mmtracking converts ImageNet VID): frames in `Data/VID/<split>/<video>/%06d.JPEG`, "
        "CocoVID annotations in `annotations/{train,val,heldout}.json` whose `file_name` is relative to "
        "`Data/VID`. Frame ids are 0-based; instance ids run over all videos of a file. Train "
        f"videos flag up to {KEY_FRAMES_PER_VIDEO} evenly spaced frames as `is_vid_train_frame` "
        "(like FGFA's list); val frames are not flagged, as in mmtracking's val file.",
        "",
        "Scenes: coloured shapes move at slow, medium or fast speed (each annotation carries a "
        "`speed` field), change scale, occlude one another (draw order; `occluded` is set when "
        "20% or more of an object is covered; one 90% covered gets no box) and leave the frame "
        "(boxes are clipped to the "
        f"image; a clipped box narrower than {MIN_BOX_SIDE} px is dropped). Backgrounds are "
        "textured clutter that pans slowly. About 10% of the frames are degraded (motion blur, "
        "defocus, noise, or a distractor patch over part of an object); `info.degraded_frames` "
        "in each json lists them.",
        "",
        "| id | class | looks like | train boxes | val boxes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, c in enumerate(CLASSES):
        lines.append(f"| {i + 1} | {c[0]} | {c[4]} | {r['train']['per_class'][i]} | {r['val']['per_class'][i]} |")
    lines += ["", f"Train head/tail ratio (boxes of the most / least frequent class): {r['head_tail_ratio']:.1f}.", ""]
    return "\n".join(lines)


def format_summary(r: dict) -> str:
    """The console summary of :func:`make_demo`'s result ``r`` (``lvod data demo``):
    where the files are, per split counts, the per-class box table and the head/tail ratio."""
    lines = [
        f"demo dataset written to {r['out_dir']}",
        f"  images root: {r['images_root']}",
        f"  annotations: {r['train_json']}, {r['val_json']}" + (f", {r['heldout_json']}" if "heldout" in r else ""),
    ]
    for split in [s for s in ("train", "val", "heldout") if s in r]:
        s = r[split]
        lines.append(
            f"  {split}: {s['videos']} videos, {s['images']} frames ({s['key_frames']} key), "
            f"{s['boxes']} boxes, {s['degraded_frames']} degraded frames"
        )
    lines.append(f"  {'class':<16} {'train':>6} {'val':>6}")
    for i, name in enumerate(r["classes"]):
        lines.append(f"  {name:<16} {r['train']['per_class'][i]:>6} {r['val']['per_class'][i]:>6}")
    lines.append(f"  head/tail ratio (train boxes): {r['head_tail_ratio']:.1f}")
    return "\n".join(lines)
