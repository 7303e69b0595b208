"""Build CocoVID ground truth of ImageNet VID val from the official devkit cache.

Inputs (in ``../shared/external-data/imagenet-vid/``): the devkit's
``ILSVRC2015_vid_validation_ground_truth_whole.mat`` (boxes and labels per val frame, in
global frame order) and FGFA's ``VID_val_videos.txt`` (video name, first global frame,
frame count). Output: a CocoVID JSON as mmtracking's converter writes it - image id = the
global frame index (1..176126), frame_id 0-based, annotations in XML object order,
``bbox = [xmin, ymin, xmax - xmin, ymax - ymin]``, category ids 1..30 (``map_vid.txt``).

What the cache lacks: track ids (``instance_id`` = -1; use the official motion-IoU file,
``lvod eval --motion-iou``), ``occluded``/``generated`` flags (False), image sizes (every
frame 1280x720, the largest val size; every cached box fits inside it).

    python benchmarks/make_vid_val_gt.py --out /tmp/vid_val.json [--videos 111]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "external-data" / "imagenet-vid"
CACHE = DATA / "fanyix_STMN" / "external" / "VID_devkit_data" / "ILSVRC2015_vid_validation_ground_truth_whole.mat"
MAP = DATA / "fanyix_STMN" / "external" / "VID_devkit_data" / "map_vid.txt"
VIDEOS = DATA / "msracver_Flow-Guided-Feature-Aggregation" / "data" / "ILSVRC2015" / "ImageSets" / "VID_val_videos.txt"


def build(cache=CACHE, videos_txt=VIDEOS, map_txt=MAP, *, num_videos=None) -> dict:
    """CocoVID dict of the first ``num_videos`` val videos (all when None)."""
    from scipy.io import loadmat

    mat = loadmat(cache)
    img_ids = mat["gt_img_ids"].reshape(-1).astype(np.int64)
    boxes, labels = mat["gt_obj_bboxes"].reshape(-1), mat["gt_obj_labels"].reshape(-1)
    cats = []
    for line in Path(map_txt).read_text().split("\n"):
        if line.strip():
            wnid, cid, name = line.split()
            cats.append({"id": int(cid), "name": name, "encode_name": wnid})
    rows = [ln.split() for ln in Path(videos_txt).read_text().split("\n") if ln.strip()]
    rows = rows[:num_videos] if num_videos else rows
    videos, images, anns = [], [], []
    for vid, (name, start, _, n) in enumerate(rows, 1):
        videos.append({"id": vid, "name": name})
        for f in range(int(n)):
            gid = int(start) + f
            k = gid - 1  # cache row of this frame
            if img_ids[k] != gid:
                raise ValueError(f"{cache}: row {k} holds frame {img_ids[k]}, expected {gid}")
            images.append(
                {
                    "id": gid,
                    "file_name": f"{name}/{f:06d}.JPEG",
                    "width": 1280,
                    "height": 720,
                    "video_id": vid,
                    "frame_id": f,
                    "is_vid_train_frame": True,
                }
            )
            b = boxes[k].astype(np.int64).reshape(4, -1) if boxes[k].size else np.zeros((4, 0), np.int64)
            lab = labels[k].reshape(-1)
            for j in range(b.shape[1]):
                x1, y1, x2, y2 = (int(v) for v in b[:, j])
                w, h = x2 - x1, y2 - y1
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "video_id": vid,
                        "image_id": gid,
                        "category_id": int(lab[j]),
                        "instance_id": -1,
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": False,
                        "occluded": False,
                        "generated": False,
                    }
                )
    return {"categories": cats, "videos": videos, "images": images, "annotations": anns}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--videos", type=int, default=None, help="only the first N videos of VID_val_videos.txt")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from lvod.io import save_json

    d = build(num_videos=a.videos)
    save_json(d, a.out, indent=None)
    print(f"wrote {a.out}: {len(d['videos'])} videos, {len(d['images'])} frames, {len(d['annotations'])} boxes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
