"""PyTorch reference SAN written for the parity tests from the published architecture (docs/san.md;
microsoft/Semantics-Aligned-Representation-Learning-for-Person-Re-identification
``torchreid/models/resnet.py::resnet50_fc512`` and ``main.py::ConvResDecoder``), not copied
from the official code.

* ``TorchSANEncoder``: torchvision ResNet (stem ReLU, last stride 1) with the modules at the top
  level (keys ``conv1``, ``bn1``, ``layer1..4``), GAP -> ``fc`` = [Linear, BN1d, ReLU] -> ``v`` ->
  ``classifier``. Train returns ``(y, v, f, x_down1, x_down2, x_down3)``, eval returns ``v``.
* ``TorchSANDecoder``: reduce_dim / embed_layer{3,2,1} (1x1 conv + BN + ReLU), up1..up4
  (ConvResBlock), final_layer (ReflectionPad(3) + 7x7 conv), then a bilinear resize with
  ``align_corners=True`` to the texture size. Returns ``(texture, (x_sim1, ..., x_sim4))``.
* The losses of ``main.py::train`` (``reid_loss``, ``decoder_loss``) and its step
  (``train_step``, with ``set_head`` for ``close_specified_layers`` / ``open_all_layers``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import TorchResNet


class TorchSANEncoder(TorchResNet):

  def __init__(self, num_classes, feature_dim=512, depth=50, width=64):
    super().__init__(depth=depth, last_stride=1, stem_relu=True, width=width)
    self.global_avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Sequential(nn.Linear(self.out_features, feature_dim), nn.BatchNorm1d(feature_dim),
                            nn.ReLU())
    self.classifier = nn.Linear(feature_dim, num_classes)

  def maps(self, x):
    """``(f, x_down1, x_down2, x_down3)``."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x1 = self.layer1(x)
    x2 = self.layer2(x1)
    x3 = self.layer3(x2)
    return self.layer4(x3), x1, x2, x3

  def backbone_parameters(self):
    return [p for n, p in self.named_parameters() if not n.startswith(('fc.', 'classifier.'))]

  def forward(self, x):
    f, x1, x2, x3 = self.maps(x)
    v = self.fc(self.global_avgpool(f).flatten(1))
    if not self.training:
      return v
    return self.classifier(v), v, f, x1, x2, x3

  def head_modules(self):
    return (self.fc, self.classifier)


def conv_bn_relu(cin, cout):
  return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU())


class TorchResidual(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.res = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

  def forward(self, x):
    return F.relu(x + self.res(x))


class TorchConvResBlock(nn.Module):

  def __init__(self, cin, cout):
    super().__init__()
    self.res = TorchResidual(cin)
    self.conv = nn.Sequential(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False),
                              nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, 1, 0))

  def forward(self, x):
    return self.conv(self.res(x))


class TorchSANDecoder(nn.Module):

  def __init__(self, stage_channels=(256, 512, 1024, 2048), channels=(512, 256, 64, 32, 16),
               texture_size=256):
    super().__init__()
    c1, c2, c3, c4 = stage_channels
    d0, d1, d2, d3, d4 = channels
    self.texture_size = texture_size
    self.reduce_dim = conv_bn_relu(c4, d0)
    self.embed_layer3 = conv_bn_relu(c3, d0)
    self.up1 = TorchConvResBlock(d0, d1)
    self.embed_layer2 = conv_bn_relu(c2, d1)
    self.up2 = TorchConvResBlock(d1, d2)
    self.embed_layer1 = conv_bn_relu(c1, d2)
    self.up3 = TorchConvResBlock(d2, d3)
    self.up4 = TorchConvResBlock(d3, d4)
    self.final_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(d4, 3, 7, 1, 0))

  def forward(self, f, x1, x2, x3):
    s1 = self.up1(self.embed_layer3(x3) + self.reduce_dim(f))
    s2 = self.up2(self.embed_layer2(x2) + s1)
    s3 = self.up3(self.embed_layer1(x1) + s2)
    s4 = self.up4(s3)
    out = self.final_layer(s4)
    t = self.texture_size
    return F.interpolate(out, size=(t, t), mode='bilinear', align_corners=True), (s1, s2, s3, s4)


def checkpoint_dict(encoder, decoder, epoch=1):
  """The layout of SAN's ``checkpoint_ep{N}.pth.tar``."""
  return {'state_dict': encoder.state_dict(), 'decoder_state_dict': decoder.state_dict(),
          'rank1': 0.5, 'epoch': epoch}


def label_smooth_ce(logits, labels, epsilon=0.1):
  log_probs = F.log_softmax(logits, dim=1)
  targets = torch.zeros_like(log_probs).scatter_(1, labels[:, None], 1)
  targets = (1 - epsilon) * targets + epsilon / logits.shape[1]
  return (-targets * log_probs).mean(0).sum()


def batch_hard_triplet(v, labels, margin=0.3):
  n = v.shape[0]
  dist = (v.pow(2).sum(1, keepdim=True).expand(n, n)
          + v.pow(2).sum(1, keepdim=True).expand(n, n).t()) - 2 * v @ v.t()
  dist = dist.clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  ap = torch.stack([dist[i][same[i]].max() for i in range(n)])
  an = torch.stack([dist[i][~same[i]].min() for i in range(n)])
  return F.relu(ap - an + margin).mean()


def reid_loss(y, v, labels):
  return label_smooth_ce(y, labels) + batch_hard_triplet(v, labels)


def decoder_loss(texture, target, sims, k=4, margin=0.3, valid=None):
  """L1 + the decoder triplet with the official fixed index pattern (K = 4), written with
  loops. ``valid`` (bool ``[B]``, optional): images with a texture; the L1 is their mean and a
  triplet term involving another image is left out."""
  b = texture.shape[0]
  valid = [True] * b if valid is None else [bool(x) for x in valid]
  errors = [(texture[j] - target[j]).abs().mean() for j in range(b) if valid[j]]
  rec = torch.stack(errors).mean() if errors else texture.new_zeros(())
  d = lambda m, i, j: ((m[i] - m[j]) ** 2).mean()  # noqa: E731
  tr = texture.new_zeros(())
  for i in range(0, b - k, k):
    for level, (a, p, a2, n) in enumerate(((i, i + 1, i, i + 4), (i + 1, i + 2, i + 1, i + 5),
                                            (i + 2, i + 3, i + 2, i + 6),
                                            (i, i + 3, i + 3, i + 4))):
      if all(valid[j] for j in (a, p, a2, n)):
        m = sims[level]
        tr = tr + F.relu(d(m, a, p) - d(m, a2, n) + margin)
  return rec + tr, rec, tr


def set_head(encoder, closed):
  """``close_specified_layers(model, ['fc', 'classifier'])`` (``closed``: those two in eval mode
  without gradients, the rest in train mode) or ``open_all_layers(model)``
  (``torchreid/utils/torchtools.py``)."""
  encoder.train()
  for m in encoder.head_modules():
    m.train(not closed)
    for p in m.parameters():
      p.requires_grad_(not closed)


def train_step(encoder, decoder, optimizers, images, labels, textures, *, k=4, valid=None,
               autocast=contextlib.nullcontext):
  """One batch of ``main.py::train`` (NCHW tensors), as PyTorch 1.x ran it, except that both
  gradients are taken at the same weights (the official code steps the main optimizer between its
  two backward passes).

  ``optimizers``: ``{'main': over encoder.parameters(), 'encoder': over encoder.parameters(),
  'decoder': over decoder.parameters()}``, zeroed with ``set_to_none=False`` (PyTorch 1.x zeroes
  gradients rather than freeing them, so a frozen parameter is still stepped with a zero
  gradient). The ReID gradient goes to the parameters that require one when the step starts;
  then the head is closed (``close_specified_layers``) for the decoder step and left closed: the
  caller reopens it (``set_head(encoder, False)``) where the official loop does.
  Returns ``{'loss', 'decoder', 'rec_l1', 'decoder_triplet'}`` as floats.
  """
  for o in optimizers.values():
    o.zero_grad(set_to_none=False)
  with autocast():
    y, v, f, x1, x2, x3 = encoder(images)
    texture, sims = decoder(f, x1, x2, x3)
  l_reid = reid_loss(y.float(), v.float(), labels)
  l_dec, rec, trip = decoder_loss(texture.float(), textures, [m.float() for m in sims], k,
                                  valid=valid)
  trained = [p for p in encoder.parameters() if p.requires_grad]
  g_reid = torch.autograd.grad(l_reid, trained, retain_graph=True)
  set_head(encoder, closed=True)
  dec_params = [p for p in encoder.parameters() if p.requires_grad] + list(decoder.parameters())
  g_dec = torch.autograd.grad(l_dec, dec_params)
  for p, g in zip(trained, g_reid):
    p.grad = g.clone()
  optimizers['main'].step()
  optimizers['encoder'].zero_grad(set_to_none=False)
  for p, g in zip(dec_params, g_dec):
    p.grad = g.clone()
  optimizers['encoder'].step()
  optimizers['decoder'].step()
  return {'loss': l_reid.item(), 'decoder': l_dec.item(), 'rec_l1': rec.item(),
          'decoder_triplet': trip.item()}


class TorchSAN(nn.Module):
  """SA-Enc and SA-Dec side by side (``encoder``, ``decoder``). ``state_dict()`` has the layout
  ``load_torch_checkpoint`` gives an official ``checkpoint_ep{N}.pth.tar``: the encoder's keys as
  they are, the decoder's prefixed ``decoder.``."""

  def __init__(self, encoder, decoder):
    super().__init__()
    self.encoder = encoder
    self.decoder = decoder

  def state_dict(self, *args, **kwargs):
    del args, kwargs
    return {**self.encoder.state_dict(),
            **{'decoder.' + k: v for k, v in self.decoder.state_dict().items()}}
