"""PyTorch reference modules written for the parity tests from the public architectures.

* ``TorchResNet``: the torchvision ResNet layout (v1.5 bottleneck, stride on the 3x3 conv, 1x1
  downsample + BN), with the ReID switches: ``last_stride``, ``stem_relu`` (absent in BoT/APNet),
  fast-reid's ``ceil_mode`` stem pool and IBN-a.
* ``TorchBoT``: reid-strong-baseline's head (GAP -> BNNeck with frozen zero bias -> bias-free
  classifier); train returns ``(logits, global_feat)``, eval returns the test feature.
Attribute names reproduce the official state_dict keys (torchvision ``models/resnet.py``; BoT's
``modeling/baseline.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from flax import nnx
from torch import nn


class TorchIBN(nn.Module):

  def __init__(self, planes):
    super().__init__()
    self.half = planes // 2
    self.IN = nn.InstanceNorm2d(self.half, affine=True)
    self.BN = nn.BatchNorm2d(planes - self.half)

  def forward(self, x):
    a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
    return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, ibn=False):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = TorchIBN(planes) if ibn else nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, ibn=False):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = TorchIBN(planes) if ibn else nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


TORCH_DEPTHS = {18: (TorchBasicBlock, (2, 2, 2, 2)), 34: (TorchBasicBlock, (3, 4, 6, 3)),
                50: (TorchBottleneck, (3, 4, 6, 3)), 101: (TorchBottleneck, (3, 4, 23, 3))}


class TorchResNet(nn.Module):

  def __init__(self, depth=50, last_stride=1, stem_relu=True, ceil_mode=False, ibn=False,
               width=64):
    super().__init__()
    block, layers = TORCH_DEPTHS[depth]
    self.stem_relu = stem_relu
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU()
    self.maxpool = (nn.MaxPool2d(3, 2, 0, ceil_mode=True) if ceil_mode
                    else nn.MaxPool2d(3, 2, 1))
    self.inplanes = width
    for i, (n, stride) in enumerate(zip(layers, (1, 2, 2, last_stride))):
      planes = width * 2**i
      blocks = []
      for b in range(n):
        s = stride if b == 0 else 1
        down = None
        if b == 0 and (s != 1 or self.inplanes != planes * block.expansion):
          down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, s,
                                         bias=False),
                               nn.BatchNorm2d(planes * block.expansion))
        blocks.append(block(self.inplanes, planes, s, down, ibn=ibn and i < 3))
        self.inplanes = planes * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.out_features = self.inplanes

  def forward(self, x):
    x = self.bn1(self.conv1(x))
    if self.stem_relu:
      x = self.relu(x)
    x = self.maxpool(x)
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TorchBoT(nn.Module):

  def __init__(self, num_classes, neck_feat='after', **resnet_kwargs):
    super().__init__()
    self.base = TorchResNet(stem_relu=False, **resnet_kwargs)
    dim = self.base.out_features
    self.gap = nn.AdaptiveAvgPool2d(1)
    self.bottleneck = nn.BatchNorm1d(dim)
    self.bottleneck.bias.requires_grad_(False)
    self.classifier = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(self.classifier.weight, std=0.001)
    self.neck_feat = neck_feat

  def forward(self, x):
    global_feat = self.gap(self.base(x)).flatten(1)
    feat = self.bottleneck(global_feat)
    if self.training:
      return self.classifier(feat), global_feat
    return feat if self.neck_feat == 'after' else global_feat


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and random BN statistics (running stats far from 0/1), so a wrong mapping of
  any tensor shows in the output. BN biases that are frozen keep their zero value."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if not p.requires_grad:
        continue
      if p.ndim > 1:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      elif name.endswith('weight'):
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
    for name, b in module.named_buffers():
      if name.endswith('running_mean'):
        b.copy_(0.1 * torch.randn(b.shape, generator=g))
      elif name.endswith('running_var'):
        b.copy_(0.5 + torch.rand(b.shape, generator=g))
  return module


def numpy_state_dict(module: nn.Module) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def nchw(x_nhwc):
  """NumPy ``[B, H, W, C]`` -> torch ``[B, C, H, W]``."""
  return torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()


REL_BOUND = 1e-4
"""The issues' parity requirement, max |diff| <= 1e-4 max |reference|, for converted float32
networks against PyTorch (another summation order on every CPU). Error model (tests/tolerances.py):
BatchNorm rescales each layer's error with its signal, so the L layers' independent errors add in
quadrature, a standard deviation of about U sqrt(L n) of max |feature| for dots of n terms:
3e-5 for ResNet-50 (50 layers, n <= 3*3*512), 6e-6 for the narrow (width 8) ResNet-18 nets.
Measured with XLA's AVX-512, AVX2 and SSE4.2 code: <= 5.9e-6 for the ResNet-50 features; the
narrow APNet's train-mode logits are the suite's narrowest margin, 3.4e-5 (AVX-512, AVX2) and
4.9e-5 (SSE4.2), where SAMS's train-mode BatchNorm normalises pooled features over only the 8
images of the batch (statistics of 8 values; not analysed further). A
wrong layer (stride, padding, missing ReLU, BN eps, key map) moves features by >= 1e-2 of
max |feature|, 100x the bound."""


def assert_close_rel(got, ref, bound=REL_BOUND, err_msg=''):
  """max |got - ref| <= bound * max |ref| (the parity bound of the issues, :data:`REL_BOUND`)."""
  got, ref = np.asarray(got), np.asarray(ref)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  err = np.abs(got - ref).max()
  assert err <= bound * np.abs(ref).max(), (
      f'{err_msg} max |diff| {err} vs max |ref| {np.abs(ref).max()}')


def images(b=2, h=256, w=128, seed=0):
  """Random NHWC float32 images."""
  return np.random.RandomState(seed).randn(b, h, w, 3).astype(np.float32)


def assert_embeds_like(model, torch_model, x) -> np.ndarray:
  """Eval-mode feature of the converted NNX ``model`` for NHWC ``x`` equals that of
  ``torch_model`` (within :data:`REL_BOUND`); returns the NNX feature."""
  from reid_jax import models
  with torch.no_grad():
    ref = torch_model.eval()(nchw(x)).numpy()
  got = np.asarray(models.embed(model, x))
  assert_close_rel(got, ref)
  return got


def check_train_mode_parity(torch_model, model, x) -> list[str]:
  """One train-mode forward of the PyTorch module and of the converted NNX ``model`` (already
  loaded from ``torch_model``'s state_dict, in train mode): logits, pre-BN feature and every
  BN running statistic of the key map must agree. Returns the statistic keys compared."""
  torch_model.train()
  logits_ref, feat_ref = torch_model(nchw(x))
  out = nnx.jit(lambda m, x: m(x))(model, x)
  assert_close_rel(out['logits'], logits_ref.detach().numpy())
  assert_close_rel(out['global_feat'], feat_ref.detach().numpy())
  return assert_running_stats_match(torch_model, model)


def assert_running_stats_match(torch_model, model) -> list[str]:
  """Every BN running statistic of ``model``'s key map equals ``torch_model``'s (after a
  train-mode forward of each). Returns the keys compared."""
  from reid_jax.convert.keymaps import keymap_for
  after = numpy_state_dict(torch_model)
  targets = keymap_for(model)
  keys = [k for k in targets if k.endswith(('running_mean', 'running_var'))]
  for key in keys:
    # A running statistic blends a batch mean (variance) of an activation that matches within
    # the parity bound, so it is held to the same bound, on its own scale.
    assert_close_rel(np.asarray(targets[key].variable[...]), after[key], err_msg=key)
  return keys
