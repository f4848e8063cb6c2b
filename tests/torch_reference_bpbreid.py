"""PyTorch reference BPBreID written for the parity tests from the paper (Somers et al., WACV 2023)
and the module layout of VlSomers/bpbreid ``torchreid/models/bpbreid.py`` (attribute names
reproduce its state_dict keys), not copied from it; plus its training loss (``part_based``: GiLt
with the part-averaged triplet, ``torchreid/losses/GiLt_loss.py``,
``part_averaged_triplet_loss.py``, and the body-part attention loss,
``body_part_attention_loss.py``, as ``part_based_engine.py`` combines them).

* ``TorchBPBreID(backbone, num_classes, parts, dim)``: any backbone module ``[N, 3, H, W] ->
  [N, C, h, w]`` with ``out_features = C``; NCHW throughout. ``forward`` returns the official
  6-tuple ``(embeddings, visibility, id_logits, pixel_scores, spatial_features, masks)`` (dicts
  keyed ``globl, backg, foreg, conct, parts`` and ``bn_*``), in train and eval mode alike.
* ``TorchReidResNet``: torchreid's ResNet as BPBreID builds it (``loss='part_based'`` returns the
  ``layer4`` map; its unused ``classifier`` Linear is in the state_dict).
* ``torch_part_based_loss``: the training objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import TorchResNet


class TorchReidResNet(TorchResNet):
  """torchreid's ``resnet50(loss='part_based', last_stride=1)``: the feature map; the ImageNet
  style ``classifier`` (Linear C -> num_classes) exists but is never called."""

  def __init__(self, num_classes, **kwargs):
    super().__init__(**kwargs)
    self.classifier = nn.Linear(self.out_features, num_classes)


class TorchBNClassifier(nn.Module):

  def __init__(self, dim, num_classes):
    super().__init__()
    self.bn = nn.BatchNorm1d(dim)
    self.bn.bias.requires_grad_(False)
    self.classifier = nn.Linear(dim, num_classes, bias=False)

  def forward(self, x):
    feat = self.bn(x)
    return feat, self.classifier(feat)


class TorchDimReduce(nn.Module):

  def __init__(self, cin, dim):
    super().__init__()
    self.layers = nn.Sequential(nn.Linear(cin, dim), nn.BatchNorm1d(dim), nn.ReLU())

  def forward(self, x):
    if x.dim() == 3:  # [N, K, C]: the parts share the layer, BN over N * K rows
      n, k, _ = x.shape
      return self.layers(x.reshape(n * k, -1)).reshape(n, k, -1)
    return self.layers(x)


class TorchPixelClassifier(nn.Module):

  def __init__(self, cin, parts):
    super().__init__()
    self.bn = nn.BatchNorm2d(cin)
    self.classifier = nn.Conv2d(cin, parts + 1, 1)

  def forward(self, x):
    return self.classifier(self.bn(x))


class TorchBPBreID(nn.Module):

  def __init__(self, backbone, num_classes, parts=8, dim=512, binary_train=True,
               binary_test=True):
    super().__init__()
    self.parts, self.dim = parts, dim
    self.binary_train, self.binary_test = binary_train, binary_test
    self.backbone_appearance_feature_extractor = backbone
    c = backbone.out_features
    for name in ('global', 'foreground', 'background', 'parts'):
      setattr(self, f'{name}_after_pooling_dim_reduce', TorchDimReduce(c, dim))
    self.pixel_classifier = TorchPixelClassifier(c, parts)
    self.global_identity_classifier = TorchBNClassifier(dim, num_classes)
    self.background_identity_classifier = TorchBNClassifier(dim, num_classes)
    self.foreground_identity_classifier = TorchBNClassifier(dim, num_classes)
    self.concat_parts_identity_classifier = TorchBNClassifier(parts * dim, num_classes)
    self.parts_identity_classifier = nn.ModuleList(
        [TorchBNClassifier(dim, num_classes) for _ in range(parts)])

  def forward(self, x):
    f = self.backbone_appearance_feature_extractor(x)                    # [N, C, h, w]
    n = f.shape[0]
    scores = self.pixel_classifier(f)                                    # [N, K+1, h, w]
    probs = torch.softmax(scores, dim=1)
    background, parts = probs[:, 0], probs[:, 1:]
    foreground = parts.max(dim=1)[0]
    binary = self.binary_train if self.training else self.binary_test
    if binary:
      winners = F.one_hot(probs.argmax(dim=1), self.parts + 1)          # [N, h, w, K+1]
      vis = winners.amax(dim=(1, 2)).bool()
    else:
      vis = probs.amax(dim=(2, 3))
    fg_vis = vis.amax(dim=1)
    emb = {
        'globl': self.global_after_pooling_dim_reduce(f.mean(dim=(2, 3))),
        'foreg': self.foreground_after_pooling_dim_reduce(
            (f * foreground.unsqueeze(1)).mean(dim=(2, 3))),
        'backg': self.background_after_pooling_dim_reduce(
            (f * background.unsqueeze(1)).mean(dim=(2, 3))),
    }
    weighted = (parts.unsqueeze(2) * f.unsqueeze(1)).sum(dim=(3, 4))   # [N, K, C]
    mass = parts.sum(dim=(2, 3)).clamp(min=1e-6).unsqueeze(2)
    emb['parts'] = self.parts_after_pooling_dim_reduce(weighted / mass)
    emb['conct'] = emb['parts'].flatten(1, 2)
    logits = {}
    for name, head in (('globl', self.global_identity_classifier),
                       ('backg', self.background_identity_classifier),
                       ('foreg', self.foreground_identity_classifier),
                       ('conct', self.concat_parts_identity_classifier)):
      emb['bn_' + name], logits[name] = head(emb[name])
    outs = [head(emb['parts'][:, k]) for k, head in enumerate(self.parts_identity_classifier)]
    emb['bn_parts'] = torch.stack([o[0] for o in outs], dim=1)
    logits['parts'] = torch.stack([o[1] for o in outs], dim=1)
    visibility = {'globl': torch.ones_like(fg_vis), 'backg': vis[:, 0], 'foreg': fg_vis,
                  'conct': fg_vis, 'parts': vis[:, 1:]}
    masks = {'globl': torch.ones_like(foreground), 'backg': background, 'foreg': foreground,
             'conct': foreground, 'parts': parts}
    del n
    return emb, visibility, logits, scores, f, masks


def torch_test_feature(outputs, names=('bn_foreg', 'parts')):
  """The engine's test embeddings ``[N, P, D]`` and visibility ``[N, P]``."""
  emb, vis = outputs[0], outputs[1]
  feats = [emb[n] if emb[n].dim() == 3 else emb[n].unsqueeze(1) for n in names]
  v = [vis[n.replace('bn_', '')] for n in names]
  v = [x if x.dim() == 2 else x.unsqueeze(1) for x in v]
  return torch.cat(feats, dim=1), torch.cat(v, dim=1)


# ------------------------------------------------------------------------------------ loss
def label_smoothed_ce(logits, labels, eps=0.1):
  log_p = torch.log_softmax(logits, dim=1)
  target = torch.zeros_like(log_p).scatter_(1, labels.unsqueeze(1), 1)
  target = (1 - eps) * target + eps / logits.shape[1]
  return (-target * log_p).sum(dim=1).mean()


def part_averaged_triplet(emb, labels, margin=0.3):
  """Batch-hard triplet on the part-averaged Euclidean distance, written from the paper: for
  each anchor the farthest other image of its identity and the closest image of another identity;
  mean of ``relu(d_ap - d_an + margin)`` over the anchors that have both."""
  n = emb.shape[0]
  parts = []
  for k in range(emb.shape[1]):  # Euclidean distance by the expansion |a|^2 - 2 a.b + |b|^2
    e = emb[:, k]
    sq = (e * e).sum(dim=1)
    d2 = F.relu(sq[:, None] - 2 * e @ e.T + sq[None, :])
    zero = d2 == 0  # the diagonal: sqrt's slope is infinite at 0, keep its gradient 0
    parts.append(torch.where(zero, torch.ones_like(d2), d2).sqrt() * ~zero)
  d = torch.stack(parts).mean(0)
  loss = []
  for i in range(n):
    pos = [d[i, j] for j in range(n) if j != i and labels[j] == labels[i]]
    neg = [d[i, j] for j in range(n) if labels[j] != labels[i]]
    if pos and neg:
      loss.append(F.relu(torch.stack(pos).max() - torch.stack(neg).min() + margin))
  return torch.stack(loss).mean()


def torch_part_based_loss(outputs, labels, part_masks, pixel_weight=0.35, eps=0.1, margin=0.3):
  """The official objective with the Occluded-Duke weights: CE-LS on the global, foreground and
  concatenated-parts logits, part-averaged triplet on the non-BN part embeddings, and pixel CE
  (``F.cross_entropy(label_smoothing=0.1)``) against the argmax of the part masks
  ``[N, K+1, Hm, Wm]`` resized with ``F.interpolate(bilinear, align_corners=True)``."""
  emb, _, logits, scores, _, _ = outputs
  terms = {f'ce_{n}': label_smoothed_ce(logits[n], labels, eps)
           for n in ('globl', 'foreg', 'conct')}
  terms['triplet_parts'] = part_averaged_triplet(emb['parts'], labels, margin)
  target = F.interpolate(part_masks, scores.shape[2:], mode='bilinear', align_corners=True)
  target = target.argmax(dim=1)
  terms['pixel_ce'] = F.cross_entropy(scores, target, label_smoothing=eps)
  total = sum(v for k, v in terms.items() if k != 'pixel_ce') + pixel_weight * terms['pixel_ce']
  return total, terms
