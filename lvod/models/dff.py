"""DFF: deep feature flow (Zhu et al., CVPR 2017) as mmtracking 0.14 trains and runs it.

``DFF`` = ``detector`` (Faster R-CNN R50-DC5 parts) + ``motion`` (``FlowNetSimple``), the
parameter names of mmtracking's checkpoints (``detector.*``, ``motion.*``).

Inference (``detect_video``): frames ``0, k, 2k, ...`` (``k = key_frame_interval``,
``model.dff_key_frame_interval``, 10) are key frames: backbone and neck run on them and only
on them. Every other frame takes the features of the nearest earlier key frame warped by the
FlowNetSimple flow of the pair (frame, key frame) -- the frame first, as mmtracking's
``torch.cat((img, memo.img))`` -- with the same flow scaling as FGFA (images at half size,
flow x ``4 / img_scale`` and x ``flow_scale_factor`` = 5, resized to the feature map with its
values scaled by the same factor). The key frame's FlowNet input half is prepared once.
Memory: one key frame (image + feature map).

Training (key + one reference): as mmtracking, only the reference frame goes through the
backbone; its features are warped to the key by the flow of (key, reference) and feed the
RPN and the RoI head with the key's targets, so FlowNet learns from the detection losses.
``images[:, 1]`` is the reference; further frames (a two-ref data config) are ignored, as
mmtracking's ``ref_img[:, 0]``. A clip whose reference is the key image itself (ImageNet DET
images, ``load_as_video = false``: refs are key copies) uses the unwarped features, as
mmtracking does for non-video data (``0 * warped + ref``, so FlowNet stays in the graph with a
zero gradient). ``warp_grid`` (``model.flow_warp``): ``"aligned"`` or ``"mmtracking"``
(``lvod.models.flownet.warp``; mmtracking's zoo weights were trained with its grid).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from lvod.models.detector import FasterRCNN, check_inputs, to_original
from lvod.models.flownet import FlowNetSimple, warp


def is_key_frame(t: int, interval: int) -> bool:
    """DFF's test-time schedule: frame ``t`` (0-based in its video) is a key frame."""
    return t % interval == 0


class DFF(nn.Module):
    """Deep feature flow detector (see the module docstring).

    Parts: ``detector`` (``FasterRCNN``), ``motion`` (``FlowNetSimple``).
    ``key_frame_interval``: test-time key frame every that many frames (>= 1; 1 = every frame
    is a key frame, the single-frame detector); ``warp_grid``: ``"aligned"`` or ``"mmtracking"``.
    """

    def __init__(
        self,
        detector: FasterRCNN,
        motion: FlowNetSimple,
        *,
        key_frame_interval: int = 10,
        warp_grid: str = "aligned",
    ):
        super().__init__()
        if key_frame_interval < 1:
            raise ValueError(f"key_frame_interval must be >= 1, got {key_frame_interval}")
        self.detector = detector
        self.motion = motion
        self.key_frame_interval = int(key_frame_interval)
        self.warp_grid = warp_grid

    def propagate(self, key_feat: Tensor, flow_input: Tensor) -> Tensor:
        """Warp key-frame features ``(N, C, h, w)`` by the flow of a ``FlowNetSimple.prepare``d
        ``(N, 6, ...)`` input (the current frame's half first, the key frame's second)."""
        return warp(key_feat, self.motion.predict(flow_input), self.warp_grid)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict[str, Tensor]:
        """Training losses (``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``
        + head extras). ``images (B, T, 3, H, W)``: ``[:, 0]`` key, ``[:, 1]`` its reference."""
        check_inputs(images, image_sizes, targets, min_frames=2)
        key, ref = images[:, 0], images[:, 1]
        ref_feats = self.detector.extract_feat(ref)
        flow_in = torch.cat(
            [self.motion.prepare(key[i : i + 1], ref[i : i + 1], tuple(image_sizes[i])) for i in range(len(images))]
        )
        feats = self.propagate(ref_feats, flow_in)
        still = torch.tensor([bool(torch.equal(key[i], ref[i])) for i in range(len(images))], device=feats.device)
        if bool(still.any()):  # key copies (image data): no motion to follow
            feats = torch.where(still.view(-1, 1, 1, 1), ref_feats.to(feats.dtype), feats)
        losses, props = self.detector.rpn_train(feats, image_sizes, [t["boxes"] for t in targets])
        losses.update(self.detector.roi_head.losses(feats, props, targets))
        return losses

    @torch.no_grad()
    def detect_video(self, frames: Iterable[tuple[Tensor, dict]], num_frames: int) -> Iterator[dict]:
        """Per frame ``{"boxes" (K,4) original pixels, "scores" (K,), "labels" (K,) 1..C}``,
        in frame order, each yielded as soon as its frame is read."""
        key_img = key_feat = key_half = None
        seen = 0
        for t, (img, meta) in enumerate(frames):
            if t >= num_frames:
                raise ValueError(f"detect_video: more frames than num_frames={num_frames}")
            size = tuple(meta["img_size"])
            if is_key_frame(t, self.key_frame_interval):
                key_img, key_half = img, None
                key_feat = feat = self.detector.extract_feat(img[None])
            else:
                if key_half is None or key_half[1] != size:  # prepared once per key frame (and size)
                    key_half = (self.motion.prepare_image(key_img[None], size), size)
                flow_in = torch.cat([self.motion.prepare_image(img[None], size), key_half[0]], dim=1)
                feat = self.propagate(key_feat, flow_in)
            props = self.detector.rpn_test(feat, [size])
            det = self.detector.roi_head.detect(feat, props, [size])[0]
            seen = t + 1
            yield to_original(det, meta)
        if seen != num_frames:
            raise ValueError(f"detect_video: num_frames={num_frames} but the frames ran out after {seen}")
