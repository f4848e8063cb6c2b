"""PyTorch reference APNet-C written for the parity tests from the paper (Chen et al., TIP 2021) and
the module layout of CHENGY12/APNet ``modeling/baseline.py`` (not from the official
code): the BoT backbone regrouped into five stages, after each stage the pyramid
``[SAMS -> frozen-bias BN2d] per split level (finest first) -> SE``, then the BoT head.

Module names reproduce the official state_dict, including the ``base_1`` .. ``base_5``
duplicates: the stage groups are ``nn.Sequential`` wrappers of the very modules of ``base``, so
``state_dict()`` lists each backbone tensor twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import TorchResNet


class TorchSE(nn.Module):
  """SELayer: GAP -> Linear(C, hidden, no bias) -> ReLU -> Linear(hidden, C, no bias) ->
  sigmoid; returns the attention ``(B, C, 1, 1)``. Keys ``fc.0.weight``, ``fc.2.weight``."""

  def __init__(self, channels, hidden):
    super().__init__()
    self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                            nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

  def forward(self, x):
    return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class TorchSAMS(nn.Module):
  """SAMS with ``r`` splits of ``G = C / r`` contiguous channels:
  ``u = sum_i x_i``; ``z = relu(bn1(fc1(GAP(u))))`` (1x1 convs with bias, inter = max(C r // 4,
  32)); ``a = softmax over the split axis of fc2(z)`` viewed as (B, r, G); out = concat a_i x_i."""

  def __init__(self, channels, radix):
    super().__init__()
    assert channels % radix == 0
    self.radix, self.group = radix, channels // radix
    inter = max(channels * radix // 4, 32)
    self.fc1 = nn.Conv2d(self.group, inter, 1)
    self.bn1 = nn.BatchNorm2d(inter)
    self.fc2 = nn.Conv2d(inter, channels, 1)

  def forward(self, x):
    b = x.shape[0]
    parts = [x[:, i * self.group:(i + 1) * self.group] for i in range(self.radix)]
    u = torch.stack(parts, 0).sum(0)
    z = F.relu(self.bn1(self.fc1(F.adaptive_avg_pool2d(u, 1))))
    a = F.softmax(self.fc2(z).reshape(b, self.radix, self.group), dim=1)
    return torch.cat([a[:, i, :, None, None] * parts[i] for i in range(self.radix)], dim=1)


class TorchBN2d(nn.Module):
  """BatchNorm2d with the bias frozen at 0, under the official attribute name ``bottleneck2``."""

  def __init__(self, channels):
    super().__init__()
    self.bottleneck2 = nn.BatchNorm2d(channels)
    self.bottleneck2.bias.requires_grad_(False)

  def forward(self, x):
    return self.bottleneck2(x)


class TorchAPNet(nn.Module):
  """APNet-C. ``splits``: the SAMS split counts of levels L .. 2 in application order, e.g. ``(2,)``
  for level 2, ``(4, 2)`` for the paper's level 3, ``(3, 3)`` for the official level 3. Level-l
  modules are named ``att_{'s' * (l - 1)}k`` and ``BN{'_' * (l - 2)}k``."""

  def __init__(self, num_classes, level=2, splits=None, se_hidden=8, logits_as_feature=False,
               **resnet_kwargs):
    super().__init__()
    if splits is None:
      splits = (level,) * max(level - 1, 0)
    assert len(splits) == max(level - 1, 0)
    self.level = level
    self.logits_as_feature = logits_as_feature
    self.base = TorchResNet(stem_relu=False, **resnet_kwargs)
    b = self.base
    self.base_1 = nn.Sequential(b.conv1, b.bn1, b.maxpool)
    self.base_2 = nn.Sequential(b.layer1)
    self.base_3 = nn.Sequential(b.layer2)
    self.base_4 = nn.Sequential(b.layer3)
    self.base_5 = nn.Sequential(b.layer4)
    width = b.conv1.out_channels
    expansion = b.out_features // (8 * width)
    channels = [width] + [width * 2**i * expansion for i in range(4)]
    self.order = []  # per stage: names of the modules applied, in order
    for k, c in enumerate(channels, start=1):
      names = []
      for l, r in zip(range(level, 1, -1), splits):
        att, bn = f'att_{"s" * (l - 1)}{k}', f'BN{"_" * (l - 2)}{k}'
        setattr(self, att, TorchSAMS(c, r))
        setattr(self, bn, TorchBN2d(c))
        names += [att, bn]
      if level >= 1:
        setattr(self, f'att{k}', TorchSE(c, se_hidden))
        names.append(f'att{k}')
      self.order.append(names)
    dim = b.out_features
    self.bottleneck = nn.BatchNorm1d(dim)
    self.bottleneck.bias.requires_grad_(False)
    self.classifier = nn.Linear(dim, num_classes, bias=False)

  def forward(self, x):
    for k, group in enumerate([self.base_1, self.base_2, self.base_3, self.base_4, self.base_5]):
      x = group(x)
      for name in self.order[k]:
        module = getattr(self, name)
        x = x * module(x) if isinstance(module, TorchSE) else module(x)
    global_feat = x.mean(dim=(2, 3))
    feat = self.bottleneck(global_feat)
    if self.training:
      return self.classifier(feat), global_feat
    return self.classifier(feat) if self.logits_as_feature else feat
