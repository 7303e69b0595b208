"""SELSA: sequence-level semantics aggregation (Wu et al. 2019) as mmtracking runs it.

``SELSA`` = ``detector`` (Faster R-CNN R50-DC5 parts) whose ``roi_head.bbox_head`` has one
``SelsaAggregator`` after each of its two shared FCs (``aggregator.0/1``): key-frame RoI
features attend to the RoI features of reference frames (multi-head scaled dot-product,
16 heads, over all reference proposals).

Training (key + refs, usually 2): one backbone batch; RPN losses and sampled RoIs on the
key; reference proposals are the RPN's test-time proposals (``rpn_test_post_nms`` per ref).
Inference: ``test_refs`` (``model.selsa_test_refs``, 14) references spread uniformly over the whole video
(mmtracking's "adaptive stride": frame ``round(i * (N-1) / (K-1))``, ``i = 0..K-1``), plus
the key frame's own RoIs, which mmtracking's test path appends to the references. Each
reference's RoI embeddings are computed once per video and every frame's backbone runs once
(see ``SELSA.detect_video`` for the two reading modes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lvod.models.detector import FasterRCNN, to_original


class SelsaAggregator(nn.Module):
    """mmtracking ``SelsaAggregator``: ``fc_embed``, ``ref_fc_embed``, ``fc``, ``ref_fc``.

    ``forward(x (R, D), ref (M, D)) -> (R, D)``: per head, softmax over the M references of
    ``<fc_embed(x), ref_fc_embed(ref)> / sqrt(D / heads)``, weighted sum of ``ref_fc(ref)``,
    heads concatenated, then ``fc``.
    """

    def __init__(self, channels: int = 1024, num_heads: int = 16):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.fc_embed = nn.Linear(channels, channels)
        self.ref_fc_embed = nn.Linear(channels, channels)
        self.fc = nn.Linear(channels, channels)
        self.ref_fc = nn.Linear(channels, channels)

    def attention(self, x: Tensor, ref: Tensor) -> Tensor:
        """``(heads, R, M)`` attention weights (each row sums to 1)."""
        r, d = x.shape
        m = ref.shape[0]
        dh = d // self.num_heads
        q = self.fc_embed(x).view(r, self.num_heads, dh).transpose(0, 1)  # (H, R, dh)
        k = self.ref_fc_embed(ref).view(m, self.num_heads, dh).permute(1, 2, 0)  # (H, dh, M)
        return (torch.bmm(q, k) / dh**0.5).softmax(dim=2)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        r, d = x.shape
        w = self.attention(x, ref)
        v = self.ref_fc(ref).view(ref.shape[0], self.num_heads, -1).transpose(0, 1)  # (H, M, dh)
        out = torch.bmm(w.to(v.dtype), v).transpose(0, 1).reshape(r, d)  # (R, D)
        return self.fc(out)


def ref_indices(num_frames: int, num_refs: int) -> list[int]:
    """Uniform references over the video: ``round(i * (N-1) / (K-1))`` for ``i < K``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_refs == 1:
        return [0]
    stride = (num_frames - 1) / (num_refs - 1)
    return [int(round(i * stride)) for i in range(num_refs)]


class SELSA(nn.Module):
    """SELSA detector (see the module docstring).

    ``detector``: a ``FasterRCNN`` whose ``roi_head.bbox_head`` carries the two
    ``SelsaAggregator`` s; ``test_refs``: reference frames per video at test time.
    """

    def __init__(self, detector: FasterRCNN, *, test_refs: int = 14):
        super().__init__()
        bbox_head = detector.roi_head.bbox_head
        aggregators = bbox_head.aggregator
        if aggregators is None or len(aggregators) != len(bbox_head.shared_fcs):
            raise ValueError(f"SELSA needs a bbox head with one aggregator per shared FC ({len(bbox_head.shared_fcs)})")
        self.detector = detector
        self.test_refs = int(test_refs)

    def _ref_embeddings(self, feats: Tensor, image_sizes) -> list[Tensor]:
        """RoI embeddings (per shared FC, ``(M, D)``) of the test proposals of ``feats (T,C,h,w)``."""
        props = self.detector.rpn_test(feats, image_sizes)
        pooled = self.detector.roi_head.pool(feats, props)
        return self.detector.roi_head.bbox_head.ref_embeddings(pooled)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict[str, Tensor]:
        """Training losses (``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``
        + head extras). ``images (B, T, 3, H, W)``: ``[:, 0]`` key, ``[:, 1:]`` refs (T >= 2)."""
        feats = self.detector.extract_clip_feats(images, image_sizes, targets)
        b, t = feats.shape[:2]
        refs = [self._ref_embeddings(feats[i, 1:], [image_sizes[i]] * (t - 1)) for i in range(b)]
        key = feats[:, 0]
        losses, props = self.detector.rpn_train(key, image_sizes, [x["boxes"] for x in targets])
        losses.update(self.detector.roi_head.losses(key, props, targets, refs))
        return losses

    def _key_stage(self, feat: Tensor, meta: dict) -> tuple[Tensor, Tensor, dict]:
        """Proposals and first-FC output (before aggregation) of one frame."""
        props = self.detector.rpn_test(feat[None], [meta["img_size"]])[0]
        pooled = self.detector.roi_head.pool(feat[None], [props])
        return props, self.detector.roi_head.bbox_head.shared_fcs[0](pooled.flatten(1)), meta

    def _finish(self, stage: tuple[Tensor, Tensor, dict], refs: list[Tensor]) -> dict:
        """Aggregate and classify one frame. As in mmtracking's test path, the key frame's own
        RoIs join the references (``ref_x = cat(refs, key)``), so each key RoI also attends to
        the key's proposals; in training only the reference frames' RoIs do."""
        props, x0, meta = stage
        bbox_head = self.detector.roi_head.bbox_head
        own = bbox_head.ref_embeddings(x0, fcs_done=1)
        refs = [torch.cat([r, o]) for r, o in zip(refs, own)]
        emb = bbox_head.embed(x0, refs, fcs_done=1)
        return to_original(self.detector.roi_head.predict(emb, props, meta["img_size"]), meta)

    @torch.no_grad()
    def detect_video(self, frames: Iterable[tuple[Tensor, dict]], num_frames: int) -> Iterator[dict]:
        """Per frame ``{"boxes" (K,4) original pixels, "scores" (K,), "labels" (K,) 1..C}``.

        ``frames`` a ``Sequence`` (random access): the reference frames are read first, their
        features kept and reused when the pass reaches them; memory holds the references only.
        Any other iterable is read once: each frame's proposals and first-FC features
        (``rpn_test_post_nms x fc_channels`` floats) wait until the last reference (the last
        frame) has been read, so memory grows with the video length.
        """
        ids = ref_indices(num_frames, self.test_refs)
        wanted = set(ids)
        ref_emb: dict[int, list[Tensor]] = {}

        def gather() -> list[Tensor]:
            return [torch.cat([ref_emb[i][k] for i in ids]) for k in range(2)]

        if isinstance(frames, Sequence):
            kept = {}
            for i in sorted(wanted):
                img, meta = frames[i]
                kept[i] = self.detector.extract_feat(img[None])
                ref_emb[i] = self._ref_embeddings(kept[i], [meta["img_size"]])
            refs = gather()
            for t in range(num_frames):
                img, meta = frames[t]
                feat = kept.pop(t) if t in kept else self.detector.extract_feat(img[None])
                yield self._finish(self._key_stage(feat[0], meta), refs)
            return
        pending, refs, seen = [], None, 0
        for t, (img, meta) in enumerate(frames):
            if t >= num_frames:
                raise ValueError(f"detect_video: more frames than num_frames={num_frames}")
            feat = self.detector.extract_feat(img[None])
            if t in wanted:
                ref_emb[t] = self._ref_embeddings(feat, [meta["img_size"]])
            pending.append(self._key_stage(feat[0], meta))
            seen = t + 1
            if len(ref_emb) == len(wanted):
                refs = refs if refs is not None else gather()
                for stage in pending:
                    yield self._finish(stage, refs)
                pending = []
        if seen != num_frames:
            raise ValueError(f"detect_video: num_frames={num_frames} but the frames ran out after {seen}")
