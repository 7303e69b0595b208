"""Deterministic synthetic ground truth and detections for evaluator tests and benchmarks.

- :func:`synthetic_cocovid` - a CocoVID dict: videos of moving, tracked objects (some fast,
  some still), crowd boxes, empty frames, an annotation with id 0, and classes that never
  occur (so "classes without GT" is exercised).
- :func:`synthetic_detections` - ``per_frame`` detections on every frame of a ground truth:
  jittered copies of its boxes (mostly the right class, high scores) and random boxes (any
  class, low scores). Vectorised: 17.6 M detections over ImageNet VID val in seconds.
"""

from __future__ import annotations

import numpy as np

from lvod.evaluation.results import Detections


def synthetic_cocovid(
    *, num_videos=20, frames=100, num_cats=12, cats_unused=2, seed=0, size=(640, 480), crowd_frac=0.05, empty_frac=0.05
) -> dict:
    """CocoVID dict (``categories``, ``videos``, ``images``, ``annotations``).

    Category ids are ``1..num_cats``; the last ``cats_unused`` never get GT. Each video has
    1-4 tracks moving at random speeds. Annotation ids start at 0 (pycocotools quirk test).
    """
    rng = np.random.default_rng(seed)
    W, H = size
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, num_cats + 1)]
    videos, images, anns = [], [], []
    img_id, inst_id = 1, 0
    for v in range(1, num_videos + 1):
        videos.append({"id": v, "name": f"video{v}"})
        ntrack = int(rng.integers(1, 5))
        cat = rng.integers(1, num_cats - cats_unused + 1, ntrack)
        wh = rng.uniform(8, 200, (ntrack, 2))
        xy = rng.uniform(0, 1, (ntrack, 2)) * (np.array([W, H]) - wh)
        vel = rng.normal(0, 1, (ntrack, 2)) * rng.choice([0.2, 2.0, 8.0], (ntrack, 1))
        grow = np.exp(rng.normal(0, 0.003, (ntrack, 1)))
        crowd = rng.random(ntrack) < crowd_frac
        ids = np.arange(inst_id, inst_id + ntrack)
        inst_id += ntrack
        for f in range(frames):
            images.append(
                {
                    "id": img_id,
                    "file_name": f"video{v}/{f:06d}.JPEG",
                    "width": W,
                    "height": H,
                    "video_id": v,
                    "frame_id": f,
                }
            )
            if rng.random() >= empty_frac:
                for t in range(ntrack):
                    w, h = np.minimum(wh[t] * grow[t] ** f, [W / 2, H / 2])
                    x, y = np.clip(xy[t] + vel[t] * f, 0, [W - w, H - h])
                    box = [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)]
                    anns.append(
                        {
                            "id": len(anns),
                            "image_id": img_id,
                            "video_id": v,
                            "category_id": int(cat[t]),
                            "instance_id": int(ids[t]),
                            "bbox": box,
                            "area": box[2] * box[3],
                            "iscrowd": int(crowd[t]),
                            "occluded": False,
                            "generated": False,
                        }
                    )
            img_id += 1
    return {"categories": cats, "videos": videos, "images": images, "annotations": anns}


def synthetic_detections(
    gt, *, per_frame=100, seed=0, copies=(0, 3), right_class=0.9, score_decimals=None
) -> Detections:
    """Exactly ``per_frame`` detections per image of ``gt`` (a ``CocoVid``), image-sorted.

    Every GT gets ``copies`` (low, high exclusive) jittered copies (scores 0.3-1.0, right
    class with probability ``right_class``); the rest are random boxes (scores 0-0.5,
    uniform class). ``score_decimals`` rounds scores to create ties.
    """
    rng = np.random.default_rng(seed)
    n_img = len(gt.img_ids)
    cat_ids = np.asarray(gt.cat_ids)
    box = np.asarray(gt.ann_boxes, np.float64)
    ncopy = rng.integers(copies[0], copies[1], len(box))
    src = np.repeat(np.arange(len(box)), ncopy)
    jit = box[src].copy()
    wh = jit[:, 2:]
    jit[:, :2] += rng.normal(0, 0.08, (len(src), 2)) * wh
    jit[:, 2:] = wh * np.exp(rng.normal(0, 0.1, (len(src), 2)))
    j_cat = np.where(rng.random(len(src)) < right_class, np.asarray(gt.ann_cat_ids)[src], rng.choice(cat_ids, len(src)))
    j_img = np.asarray(gt.ann_image_idx)[src]
    j_score = 0.3 + 0.7 * rng.random(len(src))
    # cap the jittered copies at per_frame per image (keep the first ones of each image)
    order = np.argsort(j_img, kind="stable")
    j_img, jit, j_cat, j_score = j_img[order], jit[order], j_cat[order], j_score[order]
    first = np.searchsorted(j_img, j_img)
    ok = np.arange(len(j_img)) - first < per_frame
    j_img, jit, j_cat, j_score = j_img[ok], jit[ok], j_cat[ok], j_score[ok]
    n_rand = per_frame - np.bincount(j_img, minlength=n_img)
    r_img = np.repeat(np.arange(n_img), n_rand)
    Wd = np.asarray(gt.img_width, np.float64)[r_img]
    Hd = np.asarray(gt.img_height, np.float64)[r_img]
    rw = rng.uniform(0.02, 0.5, len(r_img)) * Wd
    rh = rng.uniform(0.02, 0.5, len(r_img)) * Hd
    rnd = np.stack([rng.random(len(r_img)) * (Wd - rw), rng.random(len(r_img)) * (Hd - rh), rw, rh], 1)
    r_cat = rng.choice(cat_ids, len(r_img))
    r_score = 0.5 * rng.random(len(r_img))
    img = np.concatenate([j_img, r_img])
    order = np.argsort(img, kind="stable")
    score = np.concatenate([j_score, r_score])[order]
    if score_decimals is not None:
        score = np.round(score, score_decimals)
    return Detections(
        np.asarray(gt.img_ids)[img[order]],
        np.concatenate([j_cat, r_cat])[order],
        np.concatenate([jit, rnd])[order].astype(np.float32),
        score.astype(np.float32),
    )
