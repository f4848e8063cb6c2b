"""PyTorch HRNet written for the parity tests from the public architecture.

``TorchHRNet`` is HRNet-W32 as BPBreID builds it (VlSomers/bpbreid ``torchreid/models/hrnet.py``,
from HRNet/HRNet-Image-Classification ``lib/models/cls_hrnet.py``; Wang et al., TPAMI 2020):
two-conv stem, ``layer1`` (4 Bottlenecks), stages 2-4 with transitions and fuse layers,
``incre_modules``, bilinear ``align_corners=True`` upsampling of branches 1-3 and the concatenation,
``cls_head`` applied only with ``dim_reduction``. Module names reproduce the official state_dict
(1933 entries for W32). ``imagenet_head=True`` adds the ImageNet classification head of
``cls_hrnet.py`` (``downsamp_modules``, ``final_layer``, ``classifier``) and drops ``cls_head``,
giving the key layout of the HRNet-W32-C file ``hrnetv2_w32_imagenet_pretrained.pth`` (the head is
built, not run). ``forward(x, return_branches=True)`` also returns the four stage-4 outputs.

``width``, ``stage_modules``, ``blocks``, ``stem_width`` narrow the network as
``reid_jax.models.hrnet.HRNet``'s options do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import TorchBasicBlock, TorchBottleneck


def conv_bn(cin, cout, kernel, stride=1, relu=True):
  layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def bottleneck_layer(cin, planes, n):
  """``_make_layer(Bottleneck, cin, planes, n)``: block 0 with a 1x1 conv + BN shortcut when the
  width changes."""
  cout = planes * 4
  down = None
  if cin != cout:
    down = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
  return nn.Sequential(TorchBottleneck(cin, planes, 1, down),
                       *[TorchBottleneck(cout, planes) for _ in range(n - 1)])


class TorchHRModule(nn.Module):

  def __init__(self, channels, blocks):
    super().__init__()
    self.branches = nn.ModuleList(
        nn.Sequential(*[TorchBasicBlock(c, c) for _ in range(blocks)]) for c in channels)
    rows = []
    for i, ci in enumerate(channels):
      row = []
      for j, cj in enumerate(channels):
        if j > i:
          row.append(nn.Sequential(nn.Conv2d(cj, ci, 1, bias=False), nn.BatchNorm2d(ci),
                                   nn.Upsample(scale_factor=2 ** (j - i), mode='nearest')))
        elif j == i:
          row.append(None)
        else:
          chain = [conv_bn(cj, cj, 3, 2) for _ in range(i - j - 1)]
          row.append(nn.Sequential(*chain, conv_bn(cj, ci, 3, 2, relu=False)))
      rows.append(nn.ModuleList(row))
    self.fuse_layers = nn.ModuleList(rows)

  def forward(self, xs):
    xs = [branch(x) for branch, x in zip(self.branches, xs)]
    out = []
    for i, row in enumerate(self.fuse_layers):
      y = xs[0] if i == 0 else row[0](xs[0])
      for j in range(1, len(xs)):
        y = y + (xs[j] if j == i else row[j](xs[j]))
      out.append(F.relu(y))
    return out


class TorchHRNet(nn.Module):

  def __init__(self, width=32, stage_modules=(1, 4, 3), blocks=4, stem_width=64,
               dim_reduction=False, dim_reduction_channels=512, imagenet_head=False):
    super().__init__()
    self.dim_reduction = dim_reduction
    self.conv1 = nn.Conv2d(3, stem_width, 3, 2, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_width)
    self.conv2 = nn.Conv2d(stem_width, stem_width, 3, 2, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(stem_width)
    self.layer1 = bottleneck_layer(stem_width, stem_width, 4)
    channels = [width * 2**k for k in range(4)]
    pre = [stem_width * 4]
    for s, modules in zip((2, 3, 4), stage_modules):
      cur = channels[:s]
      transition = []
      for i, c in enumerate(cur):
        if i < len(pre):
          transition.append(None if c == pre[i] else conv_bn(pre[i], c, 3))
        else:  # one new branch per stage: one stride-2 step from the last branch
          transition.append(nn.Sequential(conv_bn(pre[-1], c, 3, 2)))
      setattr(self, f'transition{s - 1}', nn.ModuleList(transition))
      setattr(self, f'stage{s}', nn.Sequential(*[TorchHRModule(cur, blocks)
                                                 for _ in range(modules)]))
      pre = cur
    self.incre_modules = nn.ModuleList(bottleneck_layer(c, c, 1) for c in channels)
    head = [4 * c for c in channels]
    if imagenet_head:
      self.downsamp_modules = nn.ModuleList(
          nn.Sequential(nn.Conv2d(head[i], head[i + 1], 3, 2, 1), nn.BatchNorm2d(head[i + 1]),
                        nn.ReLU()) for i in range(3))
      self.final_layer = nn.Sequential(nn.Conv2d(head[3], 2048, 1), nn.BatchNorm2d(2048),
                                       nn.ReLU())
      self.classifier = nn.Linear(2048, 1000)
    else:
      self.cls_head = nn.Sequential(nn.Conv2d(sum(head), dim_reduction_channels, 1),
                                    nn.BatchNorm2d(dim_reduction_channels), nn.ReLU())

  def forward(self, x, return_branches=False):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    ys = [self.layer1(x)]
    for s in (2, 3, 4):
      xs = [ys[i] if t is None else t(ys[-1])
            for i, t in enumerate(getattr(self, f'transition{s - 1}'))]
      ys = getattr(self, f'stage{s}')(xs)
    branches = ys
    maps = [incre(y) for incre, y in zip(self.incre_modules, branches)]
    size = maps[0].shape[2:]
    out = torch.cat([maps[0]] + [F.interpolate(m, size=size, mode='bilinear', align_corners=True)
                                 for m in maps[1:]], dim=1)
    if self.dim_reduction:
      out = self.cls_head(out)
    return (out, branches) if return_branches else out
