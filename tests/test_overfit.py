"""End-to-end learning check: a tiny FGFA trained on three synthetic frames must detect the
shapes on them (AP@50 near 1), once per classification head. Budget about 12 s per head
on one core (backbone frozen so only the detector-specific parts learn)."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from lvod.models.detector import ModelConfig, build_detector

H, W = 64, 96
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 230)]


def synthetic_frames():
    """Three frames of a grey noisy scene with three solid rectangles moving a few pixels
    (every object in every frame, as in a video: FGFA trains the key on its refs' features)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for f in range(3):
        img = torch.full((3, H, W), 120.0) + torch.randn(3, H, W, generator=g) * 8
        rects = [(8 + 3 * f, 10, 24, 24), (50 - 2 * f, 30, 30, 20), (30, 4 + 2 * f, 16, 28)]
        boxes, labels = [], []
        for c, (x, y, w, h) in enumerate(rects):
            img[:, y:y + h, x:x + w] = torch.tensor(COLOURS[c], dtype=torch.float32).view(3, 1, 1)
            boxes.append([x, y, x + w, y + h])
            labels.append(c + 1)
        out.append(((img - MEAN) / STD, torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)))
    return out


def ap50(dets, gts, num_classes):
    """Mean over classes of all-point-interpolated AP at IoU 0.5 (greedy matching by score)."""
    aps = []
    for c in range(1, num_classes + 1):
        scored, n_gt = [], 0
        for det, (boxes, labels) in zip(dets, gts):
            gt = boxes[labels == c]
            n_gt += len(gt)
            sel = det["labels"] == c
            db, ds = det["boxes"][sel], det["scores"][sel]
            used = torch.zeros(len(gt), dtype=torch.bool)
            for i in torch.argsort(ds, descending=True).tolist():
                tp = False
                if len(gt):
                    iou = box_iou(db[i:i + 1], gt)[0]
                    iou[used] = -1
                    j = int(iou.argmax())
                    if iou[j] >= 0.5:
                        used[j], tp = True, True
                scored.append((float(ds[i]), tp))
        if n_gt == 0:
            continue
        scored.sort(key=lambda s: -s[0])
        tps = np.cumsum([s[1] for s in scored])
        prec = tps / np.arange(1, len(scored) + 1)
        rec = tps / n_gt
        prec = np.maximum.accumulate(prec[::-1])[::-1]
        r_prev, ap = 0.0, 0.0
        for p, r in zip(prec, rec):
            ap += p * (r - r_prev)
            r_prev = r
        aps.append(ap)
    return float(np.mean(aps))


def test_ap50_helper_counts_misses_and_false_positives():
    gts = [(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([1, 1]))]
    perfect = [{"boxes": gts[0][0], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}]
    assert ap50(perfect, gts, 1) == pytest.approx(1.0)
    half = [{"boxes": torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10]]), "scores": torch.tensor([0.9, 0.8]),
             "labels": torch.tensor([1, 1])}]
    assert ap50(half, gts, 1) == pytest.approx(0.25)  # precision 1/2 at recall 1/2


def head_kwargs(head):
    if head == "bags":
        from lvod.groups import build_groups
        return {"groups": build_groups([1, 2, 3], [100, 10, 1], method="edges", edges=(5, 50))}
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "bags", "seesaw"])
def test_tiny_fgfa_overfits_three_frames(head):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = ModelConfig.tiny(kind="fgfa", num_classes=3, head=head, head_kwargs=head_kwargs(head),
                               frozen_stages=4)
        model = build_detector(cfg)
        frames = synthetic_frames()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=2e-3)
        n = len(frames)
        for step in range(200):
            k = step % n
            images = torch.stack([frames[k][0], frames[(k + 1) % n][0], frames[(k - 1) % n][0]])[None]
            losses = model(images, [(H, W)], [{"boxes": frames[k][1], "labels": frames[k][2]}])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        model.eval()
        meta = {"img_size": (H, W), "orig_size": (H, W)}
        dets = list(model.detect_video([(f[0], meta) for f in frames], n))
    finally:
        torch.set_num_threads(threads)
    assert ap50(dets, [(f[1], f[2]) for f in frames], 3) >= 0.9
