"""Temporal RoI Align (Gong et al., AAAI 2021) on SELSA, as mmtracking 0.14's ``troialign``
configs define it (``selsa_troialign_faster_rcnn_r50_dc5_7e_imagenetvid``, 79.8 AP@50).

``SelsaTRoIAlign`` = ``detector`` (Faster R-CNN R50-DC5 parts) whose RoI head is a
``TemporalRoIHead``: the key frame's RoI features come from ``TemporalRoIAlign``
(``roi_head.bbox_roi_extractor``) instead of plain RoIAlign, and its ``SelsaBBoxHead``
(``roi_head.bbox_head``) has 3 shared FCs with a ``SelsaAggregator`` after each
(``aggregator.0/1/2``), mmtracking's module names, so its checkpoints import key for key.

``TemporalRoIAlign``, for the RoIs of a key frame:

1. *most similar RoI align*: each of the ``7 x 7`` RoIAlign points of a key RoI is compared,
   by cosine similarity over channels, with every position of each reference frame's
   feature map; the ``num_most_similar_points`` (2) best positions per reference frame are
   averaged with the softmax of their similarities as weights: one ``(C, 7, 7)`` "most
   similar RoI feature" per reference frame;
2. *temporal attention*: the key RoI feature and its most similar RoI features are embedded
   by one 3x3 conv (``embed_network.conv``, no activation), split into
   ``num_temporal_attention_blocks`` (4) channel groups; per group and point, the dot
   product with the key's embedding over ``sqrt(C / blocks)``, softmax over the frames,
   weighted sum of the (un-embedded) features. With 0 blocks: the plain average.

Reference RoIs (the RPN's test-time proposals on each reference frame) are pooled with plain
RoIAlign and feed the SELSA aggregators, as in ``lvod.models.selsa``.

Training (key + refs, usually 2): one backbone batch; RPN losses and sampled RoIs on the key;
the key RoIs are aligned over the reference frames' maps; the reference RoIs feed the
aggregators. Inference: ``test_refs`` (14) references spread uniformly over the whole video
(``lvod.models.selsa.ref_indices``), and, as mmtracking's test path does, the key frame itself
joins them: its own map is one more map of step 1 and its own RoIs join the aggregators'
references. A reference frame drawn twice (short videos) counts twice, as in mmtracking; its
most similar features are computed once and weighted by their multiplicity. Every frame's
backbone runs once (``detect_video`` has the two reading modes of SELSA's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lvod.models.detector import FasterRCNN, to_original
from lvod.models.roi_head import BBoxHead, RoIHead
from lvod.models.selsa import SELSA, ref_indices


class TemporalRoIAlign(nn.Module):
    """mmtracking ``TemporalRoIAlign``'s two steps on already pooled key RoI features.

    ``forward(roi_feats (R, C, s, s), ref_maps (U, C, h, w), counts (U,) | None) ->
    (R, C, s, s)``; ``counts``: how many times each reference map is in the frame list
    (default 1 each). Parameters: ``embed_network.conv`` (3x3, with bias) when
    ``num_temporal_attention_blocks > 0``.
    """

    def __init__(self, channels: int = 512, num_most_similar_points: int = 2, num_temporal_attention_blocks: int = 4):
        super().__init__()
        if num_most_similar_points < 1:
            raise ValueError(f"num_most_similar_points must be >= 1, got {num_most_similar_points}")
        if num_temporal_attention_blocks < 0 or (
            num_temporal_attention_blocks and channels % num_temporal_attention_blocks
        ):
            raise ValueError(
                f"num_temporal_attention_blocks must be >= 0 and divide channels {channels}, "
                f"got {num_temporal_attention_blocks}"
            )
        self.channels = channels
        self.num_most_similar_points = int(num_most_similar_points)
        self.num_temporal_attention_blocks = int(num_temporal_attention_blocks)
        if self.num_temporal_attention_blocks > 0:
            self.embed_network = nn.Module()  # mmcv ConvModule: the conv is its ``.conv``
            self.embed_network.conv = nn.Conv2d(channels, channels, 3, padding=1)
            nn.init.kaiming_normal_(self.embed_network.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.embed_network.conv.bias)

    def most_similar(self, roi_feats: Tensor, ref_maps: Tensor) -> Tensor:
        """Step 1: ``(U, R, C, s, s)`` most similar RoI features of ``roi_feats (R, C, s, s)``
        in each map of ``ref_maps (U, C, h, w)`` (float32; one map at a time in memory)."""
        r, c, s1, s2 = roi_feats.shape
        q = roi_feats.float()
        q = q / q.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
        q = q.permute(0, 2, 3, 1).reshape(-1, c)  # (R*s*s, C)
        out = []
        for m in ref_maps.float():
            flat = m.flatten(1)  # (C, h*w)
            emb = flat / flat.norm(p=2, dim=0, keepdim=True).clamp_min(1e-12)
            values, index = (q @ emb).topk(min(self.num_most_similar_points, flat.shape[1]), dim=1)
            weights = values.softmax(dim=1)  # (R*s*s, k)
            out.append(torch.einsum("nk,nkc->nc", weights, flat.t()[index]))  # (R*s*s, C)
        ms = torch.stack(out) if out else q.new_zeros((0, q.shape[0], c))
        return ms.view(-1, r, s1, s2, c).permute(0, 1, 4, 2, 3)

    def aggregate(self, roi_feats: Tensor, ms_feats: Tensor, counts: Tensor | None = None) -> Tensor:
        """Step 2: ``roi_feats (R, C, s, s)`` with ``ms_feats (U, R, C, s, s)`` -> ``(R, C, s, s)``
        (float32). A map counted ``n`` times enters the softmax (or the average) ``n`` times."""
        x = torch.cat([roi_feats.float()[None], ms_feats.float()])  # (U + 1, R, C, s, s)
        n, r, c, s1, s2 = x.shape
        mult = x.new_ones(n)
        if counts is not None:
            mult[1:] = counts.to(x)
        if self.num_temporal_attention_blocks == 0:
            return (x * mult.view(-1, 1, 1, 1, 1)).sum(0) / mult.sum()
        blocks = self.num_temporal_attention_blocks
        emb = self.embed_network.conv(x.flatten(0, 1)).float().view(n, r, blocks, c // blocks, s1, s2)
        logits = (emb * emb[:1]).sum(dim=3) / (c / blocks) ** 0.5  # (n, R, blocks, s, s)
        weights = (logits + mult.log().view(-1, 1, 1, 1, 1)).softmax(dim=0)
        return (x.view(n, r, blocks, c // blocks, s1, s2) * weights.unsqueeze(3)).sum(0).view(r, c, s1, s2)

    def forward(self, roi_feats: Tensor, ref_maps: Tensor, counts: Tensor | None = None) -> Tensor:
        out = self.aggregate(roi_feats, self.most_similar(roi_feats, ref_maps), counts)
        return out.to(roi_feats.dtype)


class SelsaBBoxHead(BBoxHead):
    """``BBoxHead`` with ``num_shared_fcs`` shared FCs (mmdet ``ConvFCBBoxHead``; 3 in the
    troialign configs), one aggregator after each: ``len(aggregators) == num_shared_fcs``."""

    def __init__(
        self,
        in_features: int,
        fc_channels: int,
        predictor: nn.Module,
        aggregators: list[nn.Module],
        *,
        num_shared_fcs: int = 3,
    ):
        if num_shared_fcs < 1 or len(aggregators) != num_shared_fcs:
            raise ValueError(f"need num_shared_fcs >= 1 aggregators, got {len(aggregators)} for {num_shared_fcs}")
        super().__init__(in_features, fc_channels, predictor, aggregators)
        fcs = list(self.shared_fcs)[:num_shared_fcs]
        for _ in range(num_shared_fcs - len(fcs)):
            fc = nn.Linear(fc_channels, fc_channels)
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
            fcs.append(fc)
        self.shared_fcs = nn.ModuleList(fcs)


class TemporalRoIHead(RoIHead):
    """``RoIHead`` whose key-frame RoI features go through ``bbox_roi_extractor``
    (``TemporalRoIAlign``) over the reference frames' maps before the bbox head."""

    def __init__(self, bbox_head: BBoxHead, bbox_roi_extractor: TemporalRoIAlign, **settings):
        super().__init__(bbox_head, **settings)
        self.bbox_roi_extractor = bbox_roi_extractor

    def losses(
        self,
        feats: Tensor,
        proposals: list[Tensor],
        targets: list[dict],
        refs: list[list[Tensor]] | None = None,
        ref_maps: list[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Predictor losses on the sampled key RoIs. ``refs[b]``: reference RoI embeddings of
        image ``b`` (``BBoxHead.ref_embeddings``); ``ref_maps[b] (T, C, h, w)``: its
        reference frames' feature maps."""
        if refs is None or ref_maps is None:
            raise ValueError("Temporal RoI Align needs the reference embeddings and feature maps")
        samples = [self.sample(p, t["boxes"], t["labels"]) for p, t in zip(proposals, targets)]
        pooled = self.pool(feats, [s[0] for s in samples])
        parts = pooled.split([s[0].shape[0] for s in samples])
        x = torch.cat(
            [self.bbox_head.embed(self.bbox_roi_extractor(p, m), r) for p, m, r in zip(parts, ref_maps, refs)]
        )
        cls_logits, box_deltas = self.predictor(x)
        return self.predictor.losses(
            cls_logits.float(),
            box_deltas.float(),
            torch.cat([s[1] for s in samples]),
            torch.cat([s[2] for s in samples]),
            torch.cat([s[3] for s in samples]),
        )


class SelsaTRoIAlign(SELSA):
    """SELSA with Temporal RoI Align (see the module docstring): SELSA's checks, test
    references and reference embeddings; the RoI head also aligns each RoI against the
    reference feature maps.

    ``detector``: a ``FasterRCNN`` whose ``roi_head`` is a ``TemporalRoIHead`` and whose
    bbox head has one aggregator per shared FC; ``test_refs``: reference frames per video
    at test time (``model.selsa_test_refs``).
    """

    def __init__(self, detector: FasterRCNN, *, test_refs: int = 14):
        if not isinstance(detector.roi_head, TemporalRoIHead):
            raise ValueError("Temporal RoI Align needs a TemporalRoIHead")
        super().__init__(detector, test_refs=test_refs)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict[str, Tensor]:
        """Training losses (``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``
        + head extras). ``images (B, T, 3, H, W)``: ``[:, 0]`` key, ``[:, 1:]`` refs (T >= 2)."""
        feats = self.detector.extract_clip_feats(images, image_sizes, targets)
        b, t = feats.shape[:2]
        refs = [self._ref_embeddings(feats[i, 1:], [image_sizes[i]] * (t - 1)) for i in range(b)]
        key = feats[:, 0]
        losses, props = self.detector.rpn_train(key, image_sizes, [x["boxes"] for x in targets])
        losses.update(self.detector.roi_head.losses(key, props, targets, refs, [feats[i, 1:] for i in range(b)]))
        return losses

    def _detect(self, feat: Tensor, meta: dict, t: int, refs: dict) -> dict:
        """One frame ``feat (C, h, w)`` against the video's references ``refs`` (see
        ``detect_video``); the frame's own map and RoIs join them."""
        roi_head = self.detector.roi_head
        size = tuple(meta["img_size"])
        props = self.detector.rpn_test(feat[None], [size])[0]
        pooled = roi_head.pool(feat[None], [props])
        own = roi_head.bbox_head.ref_embeddings(pooled)
        emb_refs = [torch.cat([r, o]) for r, o in zip(refs["emb"], own)]
        counts = refs["counts"]
        if t in refs["pos"]:  # the key is also a reference frame: its map counts once more
            counts = counts.clone()
            counts[refs["pos"][t]] += 1
            maps = refs["maps"]
        else:
            maps = torch.cat([refs["maps"], feat[None].to(refs["maps"].dtype)])
            counts = torch.cat([counts, counts.new_ones(1)])
        x = roi_head.bbox_roi_extractor(pooled, maps, counts)
        emb = roi_head.bbox_head.embed(x, emb_refs)
        return to_original(roi_head.predict(emb, props, size), meta)

    @torch.no_grad()
    def detect_video(self, frames: Iterable[tuple[Tensor, dict]], num_frames: int) -> Iterator[dict]:
        """Per frame ``{"boxes" (K,4) original pixels, "scores" (K,), "labels" (K,) 1..C}``.

        ``frames`` a ``Sequence`` (random access): the reference frames are read first and
        their maps kept for the whole video (``test_refs`` feature maps); memory holds the
        references only. Any other iterable is read once: each frame's feature map waits
        until the last reference (the last frame) has been read, so memory grows with the
        video length by one map per frame (``C x H/16 x W/16`` floats, 4.9 MB at 600x1000; on
        an accelerator the waiting maps are kept in host memory).
        """
        ids = ref_indices(num_frames, self.test_refs)
        wanted = sorted(set(ids))
        n_fcs = len(self.detector.roi_head.bbox_head.shared_fcs)
        maps: dict[int, Tensor] = {}
        emb: dict[int, list[Tensor]] = {}

        def gather() -> dict:
            times = Counter(ids)
            stack = torch.stack([maps[i] for i in wanted])
            return {
                "maps": stack,
                "counts": torch.tensor([times[i] for i in wanted], dtype=torch.float32, device=stack.device),
                "pos": {i: j for j, i in enumerate(wanted)},
                "emb": [torch.cat([emb[i][k] for i in ids]) for k in range(n_fcs)],
            }

        def read(img: Tensor, meta: dict, t: int) -> Tensor:
            feat = self.detector.extract_feat(img[None])
            if t in wanted:
                maps[t] = feat[0]
                emb[t] = self._ref_embeddings(feat, [meta["img_size"]])
            return feat[0]

        if isinstance(frames, Sequence):
            for i in wanted:
                read(*frames[i], i)
            refs = gather()
            for t in range(num_frames):
                img, meta = frames[t]
                feat = maps[t] if t in maps else self.detector.extract_feat(img[None])[0]
                yield self._detect(feat, meta, t, refs)
            return
        pending, refs, seen = [], None, 0
        for t, (img, meta) in enumerate(frames):
            if t >= num_frames:
                raise ValueError(f"detect_video: more frames than num_frames={num_frames}")
            feat = read(img, meta, t)
            seen = t + 1
            if len(maps) < len(wanted):
                pending.append((feat.cpu() if feat.device.type != "cpu" else feat, meta, t))
                continue
            refs = refs if refs is not None else gather()
            for f, m, i in pending:
                yield self._detect(f.to(feat.device), m, i, refs)
            pending = []
            yield self._detect(feat, meta, t, refs)
        if seen != num_frames:
            raise ValueError(f"detect_video: num_frames={num_frames} but the frames ran out after {seen}")
