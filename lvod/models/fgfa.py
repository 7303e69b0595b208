"""FGFA: flow-guided feature aggregation (Zhu et al. 2017) as mmtracking trains it.

``FGFA`` = ``detector`` (Faster R-CNN R50-DC5 parts) + ``motion`` (``FlowNetSimple``) +
``aggregator`` (``EmbedAggregator``). Training (key + refs): every frame's features are
computed in one batch, each ref is warped to the key by the flow of the (key, ref) image
pair, and the warped refs (not the key) are aggregated into the key map, which feeds the
RPN and the RoI head. Inference (``detect_video``): a window of ``window`` frames
centred on the key, edges padded by repeating the first/last frame; every frame's backbone
features are computed once when the frame is read and kept while it is inside the window
(memory: ``window`` images + feature maps); the key's own features enter unwarped.
Flow is computed once per distinct window frame, so the repeated edge frames share one
flow, and each distinct frame is embedded once (``EmbedAggregator.aggregate_window``: a
repeated frame's softmax weights are summed); each frame's FlowNet input half is prepared
once and cached with its features. The copies of the key frame itself (window edges) also
enter unwarped, where mmtracking warps them by the (near-zero) flow of the key onto itself.
``warp_grid`` (``model.flow_warp``) picks the sampling grid of the warp (``lvod.models.flownet``):
``"aligned"`` (zero flow = identity) or ``"mmtracking"`` (its zoo checkpoints' grid). Under
the mmtracking grid, a warp by near-zero flow is no longer near the identity, so the key's
edge copies are then warped by the flow of (key, key) exactly as mmtracking does (one more
FlowNet pair, in the first and last ``window // 2`` frames of a video only); the
centre slot keeps the unwarped key, as in mmtracking.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from lvod.models.detector import FasterRCNN, to_original
from lvod.models.flownet import FlowNetSimple, warp


class EmbedAggregator(nn.Module):
    """mmtracking ``EmbedAggregator``: ``embed_convs.{i}.conv`` (3x3, ReLU between convs,
    none after the last), cosine similarity per pixel, softmax over frames, weighted sum.

    ``forward(x (1, C, h, w), refs (T, C, h, w)) -> (1, C, h, w)``.
    """

    def __init__(self, channels: int = 512, num_convs: int = 1, kernel_size: int = 3):
        super().__init__()
        self.embed_convs = nn.ModuleList()
        for _ in range(num_convs):
            m = nn.Module()
            m.conv = nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.conv.bias)
            self.embed_convs.append(m)

    def embed(self, x: Tensor) -> Tensor:
        """``(N, C, h, w)`` -> L2-normalised embeddings ``(N, C, h, w)`` (float32)."""
        for i, m in enumerate(self.embed_convs):
            x = m.conv(x)
            if i < len(self.embed_convs) - 1:
                x = torch.relu(x)
        x = x.float()
        return x / x.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)

    def weights(self, x: Tensor, refs: Tensor) -> Tensor:
        """``(T, 1, h, w)`` softmax-over-frames weights of ``refs`` for key ``x``."""
        sim = (self.embed(refs) * self.embed(x)).sum(dim=1, keepdim=True)
        return sim.softmax(dim=0)

    def forward(self, x: Tensor, refs: Tensor) -> Tensor:
        w = self.weights(x, refs)
        return (refs.float() * w).sum(dim=0, keepdim=True).to(refs.dtype)

    def aggregate_window(self, feats: Tensor, index: Tensor, key: int = 0) -> Tensor:
        """``forward(feats[key:key+1], feats[index])`` without embedding a frame twice.

        ``feats (U, C, h, w)``: the distinct frames of a window (the key among them, at
        ``key``); ``index (T,)`` int64: the window as positions in ``feats`` (edge padding
        repeats a position). Returns ``(1, C, h, w)``. A repeated frame has the same
        embedding and weight each time, so its weights are summed before the weighted sum.
        """
        emb = self.embed(feats)
        sim = (emb * emb[key : key + 1]).sum(dim=1, keepdim=True)  # (U, 1, h, w)
        w = sim.index_select(0, index).softmax(dim=0)  # (T, 1, h, w)
        w = torch.zeros_like(sim).index_add_(0, index, w)  # (U, 1, h, w)
        return (feats.float() * w).sum(dim=0, keepdim=True).to(feats.dtype)


def window_indices(t: int, num_frames: int, window: int) -> list[int]:
    """Frame indices of the window centred on ``t``, out-of-range ones clamped (edge padding)."""
    half = window // 2
    return [min(max(i, 0), num_frames - 1) for i in range(t - half, t + half + 1)]


class FGFA(nn.Module):
    """Flow-guided feature aggregation detector (see the module docstring).

    Parts: ``detector`` (``FasterRCNN``), ``motion`` (``FlowNetSimple``), ``aggregator``
    (``EmbedAggregator``). ``window``: test-time frames centred on the key (odd);
    ``warp_grid``: ``"aligned"`` or ``"mmtracking"`` (``lvod.models.flownet.warp``).
    """

    def __init__(
        self,
        detector: FasterRCNN,
        motion: FlowNetSimple,
        aggregator: EmbedAggregator,
        *,
        window: int = 31,
        warp_grid: str = "aligned",
    ):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be odd and >= 1, got {window}")
        self.detector = detector
        self.motion = motion
        self.aggregator = aggregator
        self.window = int(window)
        self.warp_grid = warp_grid

    def aggregate(
        self, key_img: Tensor, ref_imgs: Tensor, key_feat: Tensor, ref_feats: Tensor, img_size: tuple[int, int]
    ) -> Tensor:
        """Warp ``ref_feats (T, C, h, w)`` to the key and aggregate them: ``(1, C, h, w)``."""
        flows = self.motion(key_img[None], ref_imgs, img_size)
        return self.aggregator(key_feat[None], warp(ref_feats, flows, self.warp_grid))

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict[str, Tensor]:
        """Training losses (``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``
        + head extras). ``images (B, T, 3, H, W)``: ``[:, 0]`` key, ``[:, 1:]`` refs (T >= 2)."""
        feats = self.detector.extract_clip_feats(images, image_sizes, targets)  # (B, T, C, h, w)
        agg = torch.cat(
            [
                self.aggregate(images[i, 0], images[i, 1:], feats[i, 0], feats[i, 1:], image_sizes[i])
                for i in range(len(feats))
            ]
        )
        losses, props = self.detector.rpn_train(agg, image_sizes, [x["boxes"] for x in targets])
        losses.update(self.detector.roi_head.losses(agg, props, targets))
        return losses

    @torch.no_grad()
    def detect_video(self, frames: Iterable[tuple[Tensor, dict]], num_frames: int) -> Iterator[dict]:
        """Per frame ``{"boxes" (K,4) original pixels, "scores" (K,), "labels" (K,) 1..C}``,
        in frame order. Frames are read ``window // 2`` ahead of the one detected."""
        it = iter(frames)
        # idx -> [image, meta, features, (FlowNet half of the image, the img_size it used)]
        cache: OrderedDict[int, list] = OrderedDict()
        read = 0
        for t in range(num_frames):
            idx = window_indices(t, num_frames, self.window)
            while read <= idx[-1]:
                item = next(it, None)
                if item is None:
                    raise ValueError(f"detect_video: num_frames={num_frames} but the frames ran out after {read}")
                img, meta = item
                cache[read] = [img, meta, self.detector.extract_feat(img[None])[0], None]
                read += 1
            while next(iter(cache)) < idx[0]:
                cache.popitem(last=False)
            _, meta, key_feat, _ = cache[t]
            size = tuple(meta["img_size"])
            units = [t] + sorted({i for i in idx if i != t})  # distinct window frames, key first
            centre = len(idx) // 2
            # mmtracking keeps only the centre slot unwarped; its grid makes the key's edge
            # copies, warped by the flow of (key, key), differ from the key: one more unit
            warped_key = self.warp_grid == "mmtracking" and idx.count(t) > 1
            warped = units[1:] + ([t] if warped_key else [])
            feats = key_feat[None]
            if warped:
                flow_in = [self._flow_half(cache[i], size) for i in [t] + warped]
                key_half = flow_in[0].expand(len(warped), -1, -1, -1)
                flows = self.motion.predict(torch.cat([key_half, torch.stack(flow_in[1:])], dim=1))
                ref_feats = torch.stack([cache[i][2] for i in warped])
                feats = torch.cat([feats, warp(ref_feats, flows, self.warp_grid)])
            pos = {f: j for j, f in enumerate(units)}
            slots = [pos[i] for i in idx]
            if warped_key:  # the key's edge copies read the warped key, the last unit
                slots = [len(units) if i == t and j != centre else s for j, (i, s) in enumerate(zip(idx, slots))]
            index = torch.tensor(slots, dtype=torch.int64, device=key_feat.device)
            agg = self.aggregator.aggregate_window(feats, index, key=0)
            props = self.detector.rpn_test(agg, [meta["img_size"]])
            det = self.detector.roi_head.detect(agg, props, [meta["img_size"]])[0]
            yield to_original(det, meta)

    def _flow_half(self, entry: list, size: tuple[int, int]) -> Tensor:
        """A cached frame's FlowNet input half ``(3, h, w)`` for a key of unpadded ``size``,
        prepared once per frame (again only if the key's size differs)."""
        if entry[3] is None or entry[3][1] != size:
            entry[3] = (self.motion.prepare_image(entry[0][None], size)[0], size)
        return entry[3][0]
