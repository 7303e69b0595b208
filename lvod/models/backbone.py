"""ResNet-DC5 backbone and the one-conv neck of the R50-DC5 detectors.

``ResNetDC5`` is a torchvision ResNet (module names ``conv1, bn1, layer1..layer4`` kept, so
torchvision ImageNet weights and mmtracking's ``detector.backbone.*`` keys load 1:1) changed
to mmdet's ``strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)``: stage 4 has stride 1 and every
block of it is dilated by 2 (mmdet dilates the first block too, torchvision's own
``replace_stride_with_dilation`` does not, so the change is made here by hand; for the
BasicBlock of depth 18/34 only ``conv1`` is dilated, as in mmdet). Output: one map of
stride 16 with 2048 (50/101) or 512 (18/34) channels.

Normalisation (``norm``); whatever it is, the stem and the first ``frozen_stages`` stages
get ``requires_grad=False`` (mmdet ``frozen_stages``, 1 in mmtracking):

- ``"eval"`` (the default, exactly mmtracking's R50-DC5 configs: ``norm_cfg=dict(type='BN',
  requires_grad=True), norm_eval=True``): ``EvalBatchNorm2d``, BatchNorm that never leaves
  eval mode, so its running statistics stay those of the pretrained weights, while its
  affine weight and bias keep training (and take weight decay) outside the frozen stages;
- ``"frozen"``: ``FrozenBatchNorm2d`` (statistics and affine fixed, buffers only, as in
  torchvision/detectron2 detectors); the same function at inference, fewer trained
  parameters (53,120 fewer for ResNet-50) and no batch counter in the state dict;
- ``"group"``: GroupNorm (32 groups or fewer, trained). BatchNorm of a randomly
  initialised network is the identity, so training from scratch uses ``"group"`` or
  ``"batch"``;
- ``"batch"``: BatchNorm in training mode (mmdet ``norm_eval=False``, the from-scratch
  recipe): batch statistics in training, running statistics at inference, affine trained.
  Under DDP each process normalises over its own frames (no SyncBN). As in mmdet, the
  frozen stem and stages stay in eval mode, so their running statistics never move.

``stages=3`` stops after stage 3 (``layer4`` is not built): the Faster R-CNN "C4" backbone,
stride 16 with 256 (18/34) or 1024 (50/101) channels. Stage 4 of DC5 is the most expensive
part of a small detector (at stride 16 and 512 channels its dilated convolutions took ~60 %
of a demo FGFA training step on a CPU), so the CPU demo models use ``stages=3``. Torchvision
weights then load without their ``layer4.*`` keys (reported as dropped).

``ChannelMapperNeck``: mmdet ``ChannelMapper`` with one 3x3 conv + ReLU, key
``convs.0.conv.{weight,bias}`` as in mmtracking checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

_ARCH = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
    101: (resnet.Bottleneck, [3, 4, 23, 3]),
}


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class EvalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm kept in eval mode (mmdet ``norm_eval=True``): ``train()`` leaves it in eval,
    so running statistics are used and never updated; weight and bias still get gradients."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.training = False  # from construction on, not only after the first train()/eval()

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


NORMS = {"eval": EvalBatchNorm2d, "frozen": FrozenBatchNorm2d, "group": _group_norm, "batch": nn.BatchNorm2d}


class ResNetDC5(resnet.ResNet):
    """ResNet with a dilated stride-1 stage 4: ``forward(x (B,3,H,W)) -> (B, C, H/16, W/16)``
    (``stages=3``: no stage 4, the C4 map)."""

    def __init__(self, depth: int = 50, frozen_stages: int = 1, norm: str = "eval", stages: int = 4):
        if depth not in _ARCH:
            raise ValueError(f"ResNet depth must be one of {sorted(_ARCH)}, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"backbone norm must be one of {sorted(NORMS)}, got {norm!r}")
        if stages not in (3, 4):
            raise ValueError(f"backbone stages must be 3 (C4) or 4 (DC5), got {stages}")
        if frozen_stages > stages:
            raise ValueError(f"frozen_stages {frozen_stages} freezes more than the backbone's {stages} stages")
        block, layers = _ARCH[depth]
        super().__init__(block, layers, norm_layer=NORMS[norm])
        del self.fc, self.avgpool
        self.depth = depth
        self.stages = stages
        self.out_channels = (512 if stages == 4 else 256) * block.expansion
        if stages == 3:
            del self.layer4
        for i, blk in enumerate(self.layer4 if stages == 4 else ()):
            conv = blk.conv2 if block is resnet.Bottleneck else blk.conv1
            conv.stride = (1, 1)
            conv.dilation = (2, 2)
            conv.padding = (2, 2)
            if i == 0 and blk.downsample is not None:
                blk.downsample[0].stride = (1, 1)
            blk.stride = 1
        self.frozen_stages = frozen_stages
        self._frozen = ([self.conv1, self.bn1] if frozen_stages >= 0 else []) + [
            getattr(self, f"layer{i}") for i in range(1, frozen_stages + 1)
        ]
        for m in self._frozen:
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetDC5:
        """mmdet ``_freeze_stages``: the frozen stem and stages stay in eval mode, so a
        ``"batch"`` norm there keeps its running statistics (a no-op for the other norms)."""
        super().train(mode)
        for m in self._frozen:
            m.train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(x) if self.stages == 4 else x


class ChannelMapperNeck(nn.Module):
    """One 3x3 conv + ReLU: ``(B, in_channels, h, w) -> (B, out_channels, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int = 512):
        super().__init__()
        self.convs = nn.ModuleList([_ConvReLU(in_channels, out_channels)])
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.convs[0](x)


class _ConvReLU(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x))
