"""PyTorch reference MPN written for the parity tests from the paper's architecture (Ding et al.,
TPAMI 2020) and the layout of the released ``TS`` (WangKan0128/MPN ``models/mpn_no_ca.py``), not
copied from it, plus the IDE network whose snapshot initialises its backbone
(``models/base.py::FtNet``) and the MPN training loss (``train_mpn_no_ca.py``).

* ``TorchMPN``: ``base = Sequential(conv1, bn1, relu, maxpool, layer1..layer4)`` (state_dict
  indices 0, 1, 4..7); per part ``k`` a ``local_conv_list[k]`` and a ``local_conv_list2[k]``
  (``Sequential(Conv2d 1x1 with bias, BatchNorm2d, ReLU)``) shared by the main task (MT: the whole
  map, max-pooled) and the auxiliary task (AT: stripe ``k``, ``int(h / K)`` rows from the top,
  max-pooled); linear classifiers ``Sfc_list[k]`` (MT) and ``Tfc_list[k]`` (AT). Train mode
  returns ``(mt_feats, mt_logits, at_feats, at_logits)`` (lists over the parts, all MT passes
  first), eval mode the MT features concatenated ``[B, K * 512]``. ``ca=True`` adds the channel
  attention of reid_jax's "MPN with CA" (docs/mpn.md; not in the released model): a
  ``ca_list[k]`` of ``models/CA_2.py``-style ``SoftAttn`` scaling the map (or the stripe) before
  ``local_conv_list[k]``.
* ``TorchFtNet``: the IDE model (``model`` = ResNet + ``fc = Sequential(Linear(2048, 512),
  BatchNorm1d, LeakyReLU(0.1), Dropout)``, ``classifier = Sequential(Linear(512, C))``).
* ``torch_mpn_loss``: the official objective (see its docstring).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import TorchResNet


def conv_bn_relu(cin, cout):
  return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU())


class TorchConvBlock(nn.Module):
  """1x1 conv (bias) -> BN, attributes ``conv`` and ``bn``."""

  def __init__(self, cin, cout):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 1)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return self.bn(self.conv(x))


class TorchChannelAttn(nn.Module):

  def __init__(self, channels, reduction=4):
    super().__init__()
    self.conv1 = TorchConvBlock(channels, channels // reduction)
    self.conv2 = TorchConvBlock(channels // reduction, channels)

  def forward(self, x):
    pooled = torch.amax(x, dim=(2, 3), keepdim=True)
    return self.conv2(F.relu(self.conv1(pooled)))


class TorchSoftAttn(nn.Module):
  """``sigmoid(channel_attn(x))``: the ``[B, C, 1, 1]`` channel weights."""

  def __init__(self, channels):
    super().__init__()
    self.channel_attn = TorchChannelAttn(channels)

  def forward(self, x):
    return torch.sigmoid(self.channel_attn(x))


class TorchMPN(nn.Module):

  def __init__(self, num_classes, parts=6, channels=512, ca=False, **resnet_kwargs):
    super().__init__()
    r = TorchResNet(stem_relu=True, **resnet_kwargs)
    self.base = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3,
                              r.layer4)
    d = r.out_features
    self.parts = parts
    self.local_conv_list = nn.ModuleList([conv_bn_relu(d, channels) for _ in range(parts)])
    self.local_conv_list2 = nn.ModuleList([conv_bn_relu(channels, channels)
                                           for _ in range(parts)])
    self.Sfc_list = nn.ModuleList([nn.Linear(channels, num_classes) for _ in range(parts)])
    self.Tfc_list = nn.ModuleList([nn.Linear(channels, num_classes) for _ in range(parts)])
    self.ca_list = nn.ModuleList([TorchSoftAttn(d) for _ in range(parts)]) if ca else None

  def part(self, k, x):
    if self.ca_list is not None:
      x = x * self.ca_list[k](x)
    y = self.local_conv_list[k](x)
    y = torch.amax(y, dim=(2, 3), keepdim=True)
    return self.local_conv_list2[k](y).flatten(1)

  def forward(self, x):
    feat = self.base(x)
    mt = [self.part(k, feat) for k in range(self.parts)]
    if not self.training:
      return torch.cat(mt, dim=1)
    s = feat.shape[2] // self.parts
    at = [self.part(k, feat[:, :, k * s:(k + 1) * s]) for k in range(self.parts)]
    return (mt, [fc(f) for fc, f in zip(self.Sfc_list, mt)],
            at, [fc(f) for fc, f in zip(self.Tfc_list, at)])


class TorchFtNet(nn.Module):
  """The IDE network of the official ``data/1501.pth`` snapshot (327 entries at ResNet-50)."""

  def __init__(self, num_classes, bottleneck=512, **resnet_kwargs):
    super().__init__()
    self.model = TorchResNet(stem_relu=True, **resnet_kwargs)
    self.model.fc = nn.Sequential(nn.Linear(self.model.out_features, bottleneck),
                                  nn.BatchNorm1d(bottleneck), nn.LeakyReLU(0.1), nn.Dropout(0.5))
    self.classifier = nn.Sequential(nn.Linear(bottleneck, num_classes))

  def forward(self, x):
    return self.classifier(self.model.fc(self.model(x).mean(dim=(2, 3))))


def hardest_triplets(emb: torch.Tensor, labels: np.ndarray, margin: float) -> np.ndarray:
  """The official selection (hardest positive, hardest violating negative), as index triplets
  ``[N, 3]``: distances ``|a|^2 + |b|^2 - 2 a.b``; per anchor with a positive, the positive at the
  largest distance (first in batch order on ties), then the negative maximising
  ``d_ap - d_an + margin``, kept when that is > 0. With no triplet kept: one triplet made of the
  last anchor with a positive, its hardest positive and its first negative."""
  e = emb.detach().cpu().double()
  sq = (e * e).sum(1)
  d = (sq[None, :] + sq[:, None] - 2 * e @ e.t()).numpy()
  out, last = [], None
  for a in range(len(labels)):
    positives = [i for i in range(len(labels)) if labels[i] == labels[a] and i != a]
    if not positives:
      continue
    negatives = [i for i in range(len(labels)) if labels[i] != labels[a]]
    p = positives[int(np.argmax(d[a, positives]))]
    values = d[a, p] - d[a, negatives] + margin
    last = (a, p, negatives[0])
    j = int(np.argmax(values))
    if values[j] > 0:
      out.append((a, p, negatives[j]))
  if not out:
    out.append(last)
  return np.asarray(out)


def torch_mpn_loss(mt_feats, mt_logits, at_feats, at_logits, labels, p, k, margin=0.4):
  """``train_mpn_no_ca.py``'s objective: plain CE summed over the MT and over the AT logits; the
  class-wise alignment ``mean over the P identities (contiguous groups of K) of 1 - cos(mean MT,
  mean AT)`` (``nn.CosineSimilarity(dim=0, eps=1e-6)``); the triplet loss on the MT
  concatenation divided by ``(norm + 1e-12)``, squared distances, ``relu(d_ap - d_an + margin)``
  averaged over the selected triplets. Returns ``(total, parts)``."""
  mt_ce = sum(F.cross_entropy(z, labels) for z in mt_logits)
  at_ce = sum(F.cross_entropy(z, labels) for z in at_logits)
  s, t = torch.cat(mt_feats, 1), torch.cat(at_feats, 1)
  cos = nn.CosineSimilarity(dim=0, eps=1e-6)
  align = sum(1 - cos(s[i * k:(i + 1) * k].mean(0), t[i * k:(i + 1) * k].mean(0))
              for i in range(p)) / p
  emb = s / (s.norm(2, 1, keepdim=True) + 1e-12)
  tri = torch.as_tensor(hardest_triplets(emb, labels.cpu().numpy(), margin), device=emb.device)
  ap = (emb[tri[:, 0]] - emb[tri[:, 1]]).pow(2).sum(1)
  an = (emb[tri[:, 0]] - emb[tri[:, 2]]).pow(2).sum(1)
  triplet = F.relu(ap - an + margin).mean()
  total = mt_ce + at_ce + align + triplet
  return total, {'mt_ce': mt_ce, 'at_ce': at_ce, 'align': align, 'triplet': triplet}
