"""Per-class diagnostics for comparing long-tail heads (notebook 04).

Pure functions on arrays and tables:
- ``compare_runs``: per-class AP@50 of several runs side by side, with training counts;
- ``group_frame``: per-group AP of several runs;
- ``confusions``: which class a ground-truth box was detected as, when it was not its own;
- ``classifier_weight_norms``: the L2 norm of each class's classifier weights (BAGS paper,
  Fig. 1: under softmax, tail classes get small norms).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvod.errors import DataError
from lvod.evaluation.boxes import pairwise_iou_xywh
from lvod.evaluation.report import group_label


def load_metrics(path) -> dict:
    return json.loads(Path(path).read_text())


@dataclass
class Run:
    """A finished run folder: its metrics, detections and classifier weight norms."""

    name: str
    metrics: dict
    dets: object  # lvod.evaluation.results.Detections
    head: str
    weight_norms: np.ndarray  # (C,), label order


def load_run(path, *, table=None, checkpoint: str = "latest.pth", results: str = "results.npz") -> Run:
    """Read ``metrics.json``, ``results.npz`` and the checkpoint's classifier of a run folder.

    The head comes from the resolved config stored in the checkpoint, read (and migrated
    when old) by :func:`lvod.config.config_from_dict`; the checkpoint is read with
    ``weights_only=True``. A BAGS head's weight layout needs the group table: ``table``,
    else the one the checkpoint carries, else (older checkpoints) the checkpoint config's
    ``model.groups_file`` (:func:`lvod.models.read_group_table`).

    A folder without its own checkpoint (a calibrated or rescored variant that
    ``lvod test`` wrote from another run's weights) reads the checkpoint its
    ``metrics.json`` names (``inference.checkpoint``); its weight norms are that
    checkpoint's, before any post-hoc calibration. A run that kept a moving average of
    its weights (``train.ema_decay``) is read with the weights it was tested with
    (``metrics.json``'s ``inference.weights``).
    """
    import torch

    from lvod.config import config_from_dict
    from lvod.engine.checkpointing import state_dict_of
    from lvod.evaluation.results import load_results

    path = Path(path)
    metrics = load_metrics(path / "metrics.json")
    file = path / checkpoint
    recorded = (metrics.get("inference") or {}).get("checkpoint")
    if not file.exists() and recorded and Path(recorded).exists():
        file = Path(recorded)
    if not file.exists():
        raise DataError(
            file,
            "file",
            "the run folder has no checkpoint and its metrics.json names none that exists",
            "pass the folder lvod train wrote, or re-run lvod test so metrics.json records the checkpoint",
        )
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    tested_raw = (metrics.get("inference") or {}).get("weights") == "model"  # lvod test with test.use_ema=false
    model = (
        state_dict_of(ckpt, use_ema=not tested_raw)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
        else None
    )
    if not isinstance(model, dict):
        raise DataError(
            file,
            "model",
            "the checkpoint has no 'model' state dict",
            "pass a checkpoint written by lvod train (latest.pth or epoch_N.pth)",
        )
    cfg = config_from_dict(ckpt.get("config") or {}, source=str(file))
    head = cfg.model.head
    weight = next((v for k, v in model.items() if k.endswith("fc_cls.weight")), None)
    if weight is None:
        raise DataError(
            file,
            "model",
            "no '*fc_cls.weight' in the model state dict (the detector has no classification head lvod knows)",
            "pass the checkpoint of a detector lvod trained with one of lvod's heads (lvod.models.heads.HEADS)",
        )
    if table is None and head == "bags":
        if isinstance(ckpt.get("groups"), dict):  # the table the run trained with, stored in its checkpoint
            from lvod.bags_io import groups_from_dict

            table = groups_from_dict(ckpt["groups"], f"{file} (its group table)")
        else:
            from lvod.models import read_group_table

            classes = ckpt.get("classes")
            cat_ids = classes.get("cat_ids") if isinstance(classes, dict) else None
            table = read_group_table(cfg.model, cat_ids)
    return Run(
        name=path.name,
        metrics=metrics,
        dets=load_results(path / results),
        head=head,
        weight_norms=classifier_weight_norms(weight.float().numpy(), head=head, table=table),
    )


def frame_detections(dets, image_id: int, cat_ids):
    """One frame's detections as ``(boxes x1y1x2y2, contiguous labels 1..C, scores)``."""
    sel = np.flatnonzero(np.asarray(dets.image_id) == image_id)
    xywh = np.asarray(dets.bbox)[sel].astype(np.float64)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    labels = np.searchsorted(np.asarray(cat_ids), np.asarray(dets.category_id)[sel]) + 1
    return boxes, labels, np.asarray(dets.score)[sel]


def frame_ground_truth(gt, row: int):
    """One frame's non-crowd ground truth as ``(boxes x1y1x2y2, contiguous labels 1..C)``."""
    sel = np.flatnonzero((np.asarray(gt.ann_image_idx) == row) & ~np.asarray(gt.ann_iscrowd, dtype=bool))
    xywh = np.asarray(gt.ann_boxes, dtype=np.float64).reshape(-1, 4)[sel]
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return boxes, np.asarray(gt.ann_labels)[sel]


def pick_frames(gt, n: int, *, rare=()) -> list[int]:
    """Image rows to show: frames holding rare-class boxes first, then the most crowded ones."""
    valid = ~gt.ann_iscrowd
    rows = gt.ann_image_idx[valid]
    per_image = np.bincount(rows, minlength=gt.num_images)
    rare_rows = np.unique(rows[np.isin(gt.ann_cat_ids[valid], list(rare))])
    order = [int(r) for r in rare_rows[np.argsort(-per_image[rare_rows], kind="stable")]]
    order += [int(r) for r in np.argsort(-per_image, kind="stable") if r not in set(order)]
    chosen, videos = [], set()
    for r in order:  # one frame per video, for variety
        v = int(gt.img_video_ids[r])
        if v not in videos:
            chosen.append(r)
            videos.add(v)
        if len(chosen) == n:
            break
    return chosen


def compare_runs(metrics: dict, stats=None, *, baseline: str | None = None):
    """Per-class AP@50 of each run (columns ``ap50_<run>``) plus ``gain_<run>`` over ``baseline``.

    ``metrics``: ``{run_name: metrics.json dict}``; ``stats``: optional class_stats DataFrame
    whose ``boxes`` column becomes ``train_boxes``. Classes without ground truth (ap50 None or
    num_gt 0) stay NaN, never 0. Runs tested with ``--bootstrap`` also get their 95 %
    interval as ``ap50_lo_<run>`` / ``ap50_hi_<run>`` (NaN without one).
    """
    import pandas as pd

    frame = None
    for run, m in metrics.items():
        rows = [
            {
                "category_id": r["category_id"],
                "name": r["name"],
                "num_gt": r.get("num_gt"),
                f"ap50_{run}": _nan(r.get("ap50"), r.get("num_gt")),
                f"ap50_lo_{run}": _nan((r.get("ap50_ci") or [None, None])[0], r.get("num_gt")),
                f"ap50_hi_{run}": _nan((r.get("ap50_ci") or [None, None])[1], r.get("num_gt")),
            }
            for r in m["classwise"]
        ]
        df = pd.DataFrame(rows)
        frame = df if frame is None else frame.merge(df.drop(columns=["name", "num_gt"]), on="category_id")
    if stats is not None:
        frame = frame.merge(
            stats[["category_id", "boxes"]].rename(columns={"boxes": "train_boxes"}), on="category_id", how="left"
        )
    base = baseline or next(iter(metrics))
    for run in metrics:
        if run != base:
            frame[f"gain_{run}"] = frame[f"ap50_{run}"] - frame[f"ap50_{base}"]
    return frame


def _nan(value, num_gt):
    if value is None or (num_gt is not None and num_gt == 0) or (value is not None and value < 0):
        return np.nan
    return float(value)


def group_frame(metrics: dict, part: str = "ap50"):
    """Rows = groups (named as :func:`lvod.evaluation.report.group_label`, e.g. ``'rare [0, 90)'``),
    columns = runs, values = the group's mean AP@50 (``part="ap50"``) or the low / high end
    of its 95 % bootstrap interval (``"lo"`` / ``"hi"``; NaN for a run tested without one)."""
    import pandas as pd

    if part not in ("ap50", "lo", "hi"):
        raise ValueError(f"part must be ap50, lo or hi, got {part!r}")

    def value(g):
        if part == "ap50":
            return g["ap50"]
        ci = g.get("ap50_ci")
        return np.nan if ci is None or ci[0] is None else ci[0 if part == "lo" else 1]

    data = {run: {group_label(g): value(g) for g in m.get("groups", [])} for run, m in metrics.items()}
    return pd.DataFrame(data).astype(float)


def confusions(gt, dets: dict, *, iou_thr: float = 0.5, score_thr: float = 0.3):
    """Count, per ground-truth class, what the best overlapping detection called it.

    ``gt``: a ``CocoVid``; ``dets``: ``Detections`` (``image_id``, ``category_id``, ``bbox``
    (N,4 xywh), ``score``). For every non-crowd GT box, the highest-scoring detection with IoU >= ``iou_thr``
    and score >= ``score_thr`` gives the predicted class (``-1`` = missed). Returns a DataFrame
    ``gt_category_id, pred_category_id, count``.
    """
    import pandas as pd

    keep = np.asarray(dets.score) >= score_thr
    d_img = np.asarray(dets.image_id)[keep]
    d_cat = np.asarray(dets.category_id)[keep]
    d_box = np.asarray(dets.bbox, dtype=np.float64).reshape(-1, 4)[keep]
    d_score = np.asarray(dets.score)[keep]
    order = np.argsort(d_img, kind="stable")
    d_img, d_cat, d_box, d_score = d_img[order], d_cat[order], d_box[order], d_score[order]
    pairs = []
    valid = ~gt.ann_iscrowd
    g_img = gt.img_ids[gt.ann_image_idx[valid]]
    g_cat, g_box = gt.ann_cat_ids[valid], gt.ann_boxes[valid]
    for img in np.unique(g_img):
        gi = np.flatnonzero(g_img == img)
        lo, hi = np.searchsorted(d_img, img, "left"), np.searchsorted(d_img, img, "right")
        if hi == lo:
            pairs.extend((int(g_cat[i]), -1) for i in gi)
            continue
        iou = pairwise_iou_xywh(g_box[gi], d_box[lo:hi])
        cand = np.where(iou >= iou_thr, d_score[lo:hi][None], -np.inf)
        best = cand.argmax(axis=1)
        for row, i in enumerate(gi):
            pred = int(d_cat[lo + best[row]]) if np.isfinite(cand[row, best[row]]) else -1
            pairs.append((int(g_cat[i]), pred))
    df = pd.DataFrame(pairs, columns=["gt_category_id", "pred_category_id"])
    return df.value_counts().rename("count").reset_index()


def classifier_weight_norms(fc_cls_weight, *, head: str, table=None) -> np.ndarray:
    """L2 norm of each object class's classifier row, in label order 1..C (returns shape (C,)).

    softmax: rows ``1..C`` of the (C+1, D) weight (row 0 = background). BAGS: class ``l``
    sits in its group's slice at ``start_g + rank`` (``table`` gives the layout). Seesaw
    (mmdet layout, C+2 rows): rows ``0..C-1`` are the classes, then object and background
    (see ``lvod.models.heads.SeesawHead``). EQLv2 (mmdet layout, C+1 rows): rows ``0..C-1``,
    then the unused background row. Federated loss: C rows, one per class.
    """
    w = np.asarray(fc_cls_weight, dtype=np.float64)
    norms = np.linalg.norm(w, axis=1)
    if head == "softmax":
        return norms[1:]
    if head == "seesaw":
        return norms[:-2]
    if head == "eqlv2":
        return norms[:-1]
    if head == "fedloss":
        return norms
    if head == "bags":
        if table is None:
            raise ValueError("classifier_weight_norms: head 'bags' needs the group table")
        l2b = np.asarray(table.label2binlabel)
        slices = np.asarray(table.pred_slice)
        out = np.empty(l2b.shape[1] - 1)
        for label in range(1, l2b.shape[1]):
            g = int(np.flatnonzero(l2b[1:, label] > 0)[0]) + 1
            out[label - 1] = norms[slices[g, 0] + l2b[g, label]]
        return out
    raise ValueError(f"unknown head {head!r}; valid: softmax, bags, seesaw, eqlv2, fedloss")
