"""Optical flow for FGFA: ``FlowNetSimple`` and feature warping.

``FlowNetSimple`` reproduces mmtracking 0.x's layer structure, parameter names and shapes
(``conv1.0.conv`` .. ``conv6.1.conv`` with bias, LeakyReLU 0.1; ``deconv5..2``,
``predict_flow6..3``, ``upsample_flow5..2`` and ``predict_flow``, all without bias), so the
Flying-Chairs weights mmtracking ships load under ``motion.`` with an identity key mapping.
Only ``width=1.0`` loads those weights; smaller widths (every channel count scaled) exist for
tiny CPU configs.

Input conventions (mmtracking's): the key and reference images, normalised with the data
pipeline's mean/std on the 0..255 RGB scale, are de-normalised, divided by 255, centred by
``(0.411, 0.432, 0.450)``, zeroed outside the key's unpadded size, concatenated (6
channels) and resized by ``img_scale=0.5``. The flow, predicted at 1/4 of that resolution,
is resized back to the input resolution and multiplied by ``4 / img_scale`` (pixels) and by
``flow_scale_factor=5``.

``warp(feats, flow)``: bilinear ``grid_sample`` (border padding, ``align_corners=True``) at
``position + flow``, the flow first resized to the feature map with its values scaled by
the same factor per axis. ``grid="aligned"`` (lvod's default) samples pixel ``j`` at
``j + flow``, so zero flow is the identity. ``grid="mmtracking"`` reproduces mmtracking
0.x's ``flow_warp_feats``, which normalises positions by ``W`` (and ``H``) where
``align_corners=True`` wants ``W - 1``: pixel ``j`` is sampled at ``(j + flow) * (W - 1) / W``,
a pull towards the top-left that grows to one feature cell (16 input pixels) at the right and
bottom edges, even at zero flow. Its model-zoo FGFA weights were trained so; use that grid to
reproduce their numbers (``model.flow_warp = "mmtracking"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvod.config import WARP_GRIDS

_CONV_CH = (64, 128, 256, 512, 512, 1024)
_CONV_K = (7, 5, 5, 3, 3, 3)
_CONV_N = (1, 1, 2, 2, 2, 2)
FLOW_MEAN = (0.411, 0.432, 0.450)


class _Conv(nn.Module):
    """``conv`` (+ LeakyReLU 0.1 when ``act``): the ``.conv`` name matches mmcv's ConvModule."""

    def __init__(self, cin, cout, k, stride=1, padding=None, bias=True, act=True, transposed=False):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose2d(cin, cout, k, stride, 1, bias=bias)
        else:
            self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 if padding is None else padding, bias=bias)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.leaky_relu(x, 0.1) if self.act else x


class FlowNetSimple(nn.Module):
    """``forward(key (N|1,3,H,W), ref (N,3,H,W), img_size (h, w)) -> flow (N, 2, H, W)``.

    Args:
        img_scale: resize factor applied to the images before the network (0.5).
        flow_scale_factor: multiplier on the predicted flow (5).
        image_mean, image_std: the data pipeline's normalisation (RGB, 0..255 scale).
        width: channel multiplier; 1.0 is the only width pretrained weights exist for.
    """

    def __init__(
        self,
        img_scale: float = 0.5,
        flow_scale_factor: float = 5.0,
        image_mean=(123.675, 116.28, 103.53),
        image_std=(58.395, 57.12, 57.375),
        width: float = 1.0,
    ):
        super().__init__()
        self.img_scale, self.flow_scale_factor, self.width = img_scale, flow_scale_factor, width
        ch = [max(2, int(round(c * width))) for c in _CONV_CH]
        cin = 6
        for i, (c, k, n) in enumerate(zip(ch, _CONV_K, _CONV_N)):
            layers = [_Conv(cin, c, k, stride=2)]
            layers += [_Conv(c, c, 3 if i == 2 else k) for _ in range(n - 1)]
            setattr(self, f"conv{i + 1}", nn.ModuleList(layers))
            cin = c
        # decoder: level 6 (coarsest) down to level 2
        dec_out = {5: ch[5] // 2, 4: ch[5] // 4, 3: ch[5] // 8, 2: ch[5] // 16}
        concat_in = ch[5]
        for lvl in (5, 4, 3, 2):
            setattr(self, f"deconv{lvl}", _Conv(concat_in, dec_out[lvl], 4, 2, bias=False, transposed=True))
            setattr(self, f"predict_flow{lvl + 1}", _Conv(concat_in, 2, 3, bias=False, act=False))
            setattr(self, f"upsample_flow{lvl}", _Conv(2, 2, 4, 2, bias=False, act=False, transposed=True))
            concat_in = ch[lvl - 1] + dec_out[lvl] + 2
        self.predict_flow = _Conv(concat_in, 2, 3, bias=False, act=False)
        # Random weights (no Flying-Chairs file) start from the identity warp: a zero last
        # layer gives zero flow, so an untrained FlowNet cannot scramble the refs.
        nn.init.zeros_(self.predict_flow.conv.weight)
        self.register_buffer("img_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("flow_mean", torch.tensor(FLOW_MEAN).view(1, 3, 1, 1), persistent=False)

    def prepare_image(self, img: Tensor, img_size: tuple[int, int]) -> Tensor:
        """``img (N, 3, H, W)`` -> its half of the network input ``(N, 3, H*img_scale,
        W*img_scale)``: de-normalised, /255, centred, zeroed outside ``img_size`` (the key's
        unpadded size), resized. Per channel, so a (key, ref) input is the concatenation of
        the two halves; a video can prepare each frame once and reuse it for every pair."""
        x = img.float() * self.img_std + self.img_mean
        x = x / 255.0 - self.flow_mean
        h, w = img_size
        x[:, :, h:, :] = 0.0
        x[:, :, :, w:] = 0.0
        return F.interpolate(x, scale_factor=self.img_scale, mode="bilinear", align_corners=False)

    def prepare(self, key: Tensor, ref: Tensor, img_size: tuple[int, int]) -> Tensor:
        """``(N, 6, H*img_scale, W*img_scale)`` network input (see the module docstring);
        ``key`` may be ``(1, 3, H, W)``, prepared once and shared by every ref."""
        k = self.prepare_image(key, img_size)
        r = self.prepare_image(ref, img_size)
        return torch.cat([k.expand(r.shape[0], -1, -1, -1), r], dim=1)

    def forward(self, key: Tensor, ref: Tensor, img_size: tuple[int, int]) -> Tensor:
        return self.predict(self.prepare(key, ref, img_size))

    def predict(self, x: Tensor) -> Tensor:
        """Flow ``(N, 2, H, W)`` (input pixels, scaled) from a ``prepare``d ``(N, 6, h, w)``."""
        outs = []
        for i in range(1, 7):
            for layer in getattr(self, f"conv{i}"):
                x = layer(x)
            if i >= 2:
                outs.append(x)  # levels 2..6
        concat = outs[-1]
        for lvl in (5, 4, 3, 2):
            skip = outs[lvl - 2]
            flow = getattr(self, f"predict_flow{lvl + 1}")(concat)
            up = _crop_like(getattr(self, f"upsample_flow{lvl}")(flow), skip)
            dec = _crop_like(getattr(self, f"deconv{lvl}")(concat), skip)
            concat = torch.cat([skip, dec, up.to(skip.dtype)], dim=1)
        flow = self.predict_flow(concat).float()
        factor = 4 / self.img_scale
        flow = F.interpolate(flow, scale_factor=factor, mode="bilinear", align_corners=False)
        return flow * (factor * self.flow_scale_factor)


def _crop_like(x: Tensor, target: Tensor) -> Tensor:
    return x[:, :, : target.shape[2], : target.shape[3]]


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``flow (N, 2, H, W)`` to ``size``; values scaled per axis."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = out.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)
    return out * scale


def warp(feats: Tensor, flow: Tensor, grid: str = "aligned") -> Tensor:
    """Sample ``feats (N, C, h, w)`` at ``position + flow``: ``(N, C, h, w)``.

    ``flow (N, 2, H, W)`` holds (dx, dy) in pixels of its own resolution. ``grid``:
    ``"aligned"`` or ``"mmtracking"`` (see the module docstring).
    """
    if grid not in WARP_GRIDS:
        raise ValueError(f"grid must be one of {WARP_GRIDS}, got {grid!r}")
    n, _, h, w = feats.shape
    flow = resize_flow(flow.float(), (h, w))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=feats.device, dtype=torch.float32),
        torch.arange(w, device=feats.device, dtype=torch.float32),
        indexing="ij",
    )
    dw, dh = (w, h) if grid == "mmtracking" else (max(w - 1, 1), max(h - 1, 1))
    gx = (xs[None] + flow[:, 0]) * (2.0 / dw) - 1.0
    gy = (ys[None] + flow[:, 1]) * (2.0 / dh) - 1.0
    grid = torch.stack([gx, gy], dim=-1)  # (N, h, w, 2)
    return F.grid_sample(feats.float(), grid, mode="bilinear", padding_mode="border", align_corners=True).to(
        feats.dtype
    )
