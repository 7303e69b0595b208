"""Temporal rescoring of a video's per-frame detections: Seq-NMS (Han et al., 2016).

:func:`seq_nms` is a pure function on one video's detections (numpy arrays per frame, as
the detectors yield them): per class,

1. **link** every detection to the detections of the same class in the next frame whose
   IoU exceeds ``link_iou`` (0.5, REFERENCE section 7);
2. **select** the sequence (a path through consecutive frames) with the largest sum of
   scores, by dynamic programming;
3. **rescore** its boxes with the mean (``rescore="avg"``) or the max (``"max"``) of its
   scores;
4. **suppress** (``suppress=True``) the detections of the same class that overlap a box of
   the sequence in its frame by IoU > ``suppress_iou`` (0.3, as the public reference
   implementations); they are dropped. With ``suppress=False`` they stay in the pool and
   are rescored by their own sequences (rescoring only; the detector's per-frame NMS stays
   the only suppression);
5. repeat on the detections left until none is left. A detection linked to nothing is a
   sequence of one and keeps its score.

lvod runs it on the detector's output (after its per-class NMS and ``test_max_dets``), the
usual place for post-processing a video detector's results; the paper ran it on the boxes
before NMS. Detections of different classes never link. Frames keep their detections'
order; only scores change and suppressed detections leave.

Cost: the dynamic programme is computed once; after each selection only the detections
whose best path ran through a removed one are recomputed (a worklist in frame order), so a
video costs about (detections + links) x log(detections) per class, not one full pass per
sequence. Memory: the one video's detections (``lvod test`` streams video by video).

:func:`rescore_detections` applies it to a results file's columns (``Detections``) using
the ground truth's video/frame order, e.g. to rescore results already on disk.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESCORINGS = ("none", "seq_nms")
RESCORE_MODES = ("avg", "max")


@dataclass(frozen=True)
class SeqNmsOptions:
    """Seq-NMS settings (``test.seq_nms_*`` in the config)."""

    link_iou: float = 0.5
    rescore: str = "avg"
    suppress: bool = True
    suppress_iou: float = 0.3

    def __post_init__(self):
        if self.rescore not in RESCORE_MODES:
            raise ValueError(f"seq_nms rescore must be one of {RESCORE_MODES}, got {self.rescore!r}")
        for name in ("link_iou", "suppress_iou"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"seq_nms {name} must be in [0, 1), got {v}")

    def to_dict(self) -> dict:
        return {"method": "seq_nms", **asdict(self)}


def rescoring_options(test_cfg, name: str | None = None) -> SeqNmsOptions | None:
    """The Seq-NMS options of a ``TestConfig`` (``test.seq_nms_*``), or None when the
    rescoring is ``"none"``. ``name`` (``--rescoring``) overrides ``test.rescoring``."""
    from lvod.errors import DataError

    name = test_cfg.rescoring if name is None else name
    if name not in RESCORINGS:
        raise DataError("--rescoring", str(name), "unknown rescoring", f"use one of: {', '.join(RESCORINGS)}")
    if name == "none":
        return None
    return SeqNmsOptions(
        link_iou=test_cfg.seq_nms_link_iou,
        rescore=test_cfg.seq_nms_rescore,
        suppress=test_cfg.seq_nms_suppress,
        suppress_iou=test_cfg.seq_nms_suppress_iou,
    )


def rescorer(options: SeqNmsOptions | None):
    """``frames -> frames`` for ``run_inference(rescore=...)`` (None when off)."""
    if options is None:
        return None
    return functools.partial(seq_nms, **asdict(options))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``(len(a), len(b))`` of ``x1y1x2y2`` boxes (continuous coordinates, as
    ``lvod.evaluation.boxes``; an empty union gives 0)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _numpy(x, dtype):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def seq_nms(
    frames: Sequence[dict],
    *,
    link_iou: float = 0.5,
    rescore: str = "avg",
    suppress: bool = True,
    suppress_iou: float = 0.3,
) -> list[dict]:
    """Seq-NMS over one video (see the module docstring).

    Args:
        frames: per frame in order, ``{"boxes" (K, 4) x1y1x2y2, "scores" (K,), "labels"
            (K,)}`` (numpy arrays or tensors; any extra keys are ignored).

    Returns:
        per frame ``{"boxes" float32 (K', 4), "scores" float32 (K',), "labels" int64 (K',),
        "index" int64 (K',)}`` with K' <= K: the frame's detections in their order,
        suppressed ones removed, scores rescored; ``index`` = their rows in the input frame.
    """
    SeqNmsOptions(link_iou, rescore, suppress, suppress_iou)  # checks the values
    boxes = [_numpy(f["boxes"], np.float32).reshape(-1, 4) for f in frames]
    scores = [_numpy(f["scores"], np.float64).reshape(-1) for f in frames]
    labels = [_numpy(f["labels"], np.int64).reshape(-1) for f in frames]
    new_scores = [s.copy() for s in scores]
    keep = [np.ones(len(s), dtype=bool) for s in scores]
    classes = np.unique(np.concatenate(labels)) if labels else np.zeros(0, np.int64)
    for c in classes:
        # the class's detections: node n = (frame[n], row[n] in that frame)
        per_frame = [np.flatnonzero(lab == c) for lab in labels]
        starts = np.cumsum([0] + [len(r) for r in per_frame])
        frame = np.repeat(np.arange(len(frames)), [len(r) for r in per_frame])
        xyxy = np.concatenate([boxes[t][r] for t, r in enumerate(per_frame)]).astype(np.float64)
        score = np.concatenate([scores[t][r] for t, r in enumerate(per_frame)])
        new, kept = _select_sequences(xyxy, score, frame, starts, link_iou, rescore, suppress, suppress_iou)
        for t, r in enumerate(per_frame):
            new_scores[t][r] = new[starts[t] : starts[t + 1]]
            keep[t][r] = kept[starts[t] : starts[t + 1]]
    return [
        {"boxes": b[k], "scores": s[k].astype(np.float32), "labels": lab[k], "index": np.flatnonzero(k)}
        for b, s, lab, k in zip(boxes, new_scores, labels, keep)
    ]


def _pairs(xyxy: np.ndarray, frame: np.ndarray, starts: np.ndarray, offset: int, thr: float) -> list[list[int]]:
    """For every node i, the nodes j of frame ``frame[i] + offset`` (``j != i``) whose box
    overlaps i's by IoU > ``thr``, in ascending order (all pairs in one vectorised pass)."""
    n, num_frames = len(frame), len(starts) - 1
    target = frame + offset
    valid = target < num_frames
    begin = np.where(valid, starts[np.minimum(target, num_frames - 1)], 0)
    length = np.where(valid, starts[np.minimum(target + 1, num_frames)] - begin, 0)
    total = int(length.sum())
    out: list[list[int]] = [[] for _ in range(n)]
    if total == 0:
        return out
    i = np.repeat(np.arange(n), length)
    j = np.repeat(begin, length) + np.arange(total) - np.repeat(np.cumsum(length) - length, length)
    if offset == 0:
        i, j = i[i != j], j[i != j]
    a, b = xyxy[i], xyxy[j]
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    hit = (union > 0) & (inter > thr * union)
    for x, y in zip(i[hit].tolist(), j[hit].tolist()):
        out[x].append(y)
    return out


def _select_sequences(xyxy, score, frame, starts, link_iou, rescore, suppress, suppress_iou):
    """Seq-NMS on one class's N detections (nodes sorted by frame; ``starts[t]`` = first
    node of frame t). Returns ``(new scores (N,), kept (N,) bool)``."""
    n = len(score)
    succ = _pairs(xyxy, frame, starts, 1, link_iou)
    pred: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in succ[i]:
            pred[j].append(i)  # ascending i: the lowest index comes first
    overlap = _pairs(xyxy, frame, starts, 0, suppress_iou) if suppress else [[] for _ in range(n)]
    frame_of = frame.tolist()
    sc = score.tolist()
    active = [True] * n
    kept = np.ones(n, dtype=bool)
    new = score.copy()
    best = list(sc)  # best path sum ending at each node
    back = [-1] * n  # predecessor on that path

    def relax(v: int) -> None:
        """Recompute node v from its active predecessors (lowest index wins ties)."""
        u_best, value = -1, 0.0
        for u in pred[v]:
            if active[u] and (u_best < 0 or best[u] > value):
                u_best, value = u, best[u]
        best[v], back[v] = sc[v] + value, u_best

    for v in range(n):  # nodes are in frame order: predecessors are final before v
        relax(v)
    heap = [(-best[v], v) for v in range(n)]
    heapq.heapify(heap)
    while heap:
        neg, v = heapq.heappop(heap)
        if not active[v] or -neg != best[v]:
            continue  # removed, or an outdated entry
        path = [v]
        while back[path[-1]] >= 0:
            path.append(back[path[-1]])
        path_scores = [sc[p] for p in path]
        new[path] = sum(path_scores) / len(path) if rescore == "avg" else max(path_scores)
        for p in path:
            active[p] = False
        removed = list(path)
        for p in path:  # suppression in the path's frames
            for q in overlap[p]:
                if active[q]:
                    active[q] = False
                    kept[q] = False
                    removed.append(q)
        # recompute, in frame order, the nodes whose best path went through a removed one
        gone = set(removed)
        work = [(frame_of[w], w) for r in removed for w in succ[r] if active[w] and back[w] in gone]
        heapq.heapify(work)
        queued = {w for _, w in work}
        while work:
            _, w = heapq.heappop(work)
            old = best[w]
            relax(w)
            if best[w] != old:
                heapq.heappush(heap, (-best[w], w))
                for x in succ[w]:
                    if active[x] and back[x] == w and x not in queued:
                        queued.add(x)
                        heapq.heappush(work, (frame_of[x], x))
    return new, kept


def rescore_detections(dets, gt, options: SeqNmsOptions | None = None):
    """Seq-NMS on a results file's columns (``lvod.evaluation.Detections``, boxes xywh),
    video by video in ``gt``'s frame order (``gt``: the ``CocoVid`` they were computed on).
    Detections of images not in ``gt`` are kept unchanged. Returns new ``Detections``."""
    options = options or SeqNmsOptions()
    order = np.argsort(dets.image_id, kind="stable")
    ids = dets.image_id[order]
    score = dets.score.copy()
    keep = np.ones(len(dets), dtype=bool)
    for v in gt.videos:
        rows = gt.frame_rows(v["id"])
        sels = [order[slice(*np.searchsorted(ids, [gt.img_ids[r], gt.img_ids[r] + 1]))] for r in rows]
        frames = [{"boxes": _xyxy(dets.bbox[s]), "scores": dets.score[s], "labels": dets.category_id[s]} for s in sels]
        for sel, f in zip(sels, seq_nms(frames, **asdict(options))):
            keep[sel] = False
            keep[sel[f["index"]]] = True
            score[sel[f["index"]]] = f["scores"]
    out = dets.subset(keep)
    out.score = score[keep].astype(dets.score.dtype)
    return out


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
