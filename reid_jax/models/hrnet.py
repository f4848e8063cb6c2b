"""HRNet-W32 as BPBreID uses it: a 1920-channel feature map at 1/4 of the input resolution.

HRNet (Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI
2020) keeps a high-resolution branch through the whole network and adds one lower-resolution
branch per stage, exchanging information between branches after every module. This is the
backbone of BPBreID (VlSomers/bpbreid ``torchreid/models/hrnet.py``), itself the ImageNet model
of HRNet/HRNet-Image-Classification ``lib/models/cls_hrnet.py`` with the classification head
replaced by an upsample-and-concatenate of the four branches:

* stem: two 3x3 stride-2 convolutions (64 channels, BN, ReLU), no max-pool: 1/4 resolution;
* ``layer1``: 4 torchvision Bottlenecks (planes 64) -> 256 channels;
* stages 2, 3, 4 (1, 4 and 3 modules) with 2, 3, 4 branches of ``width * [1, 2, 4, 8]`` channels
  (32, 64, 128, 256 for W32) at 1/4, 1/8, 1/16, 1/32, each branch 4 BasicBlocks per module, then
  the module's fuse layers; ``transition{1,2,3}`` before each stage adapts the channel count of an
  existing branch (3x3 conv, only ``transition1.0``) and creates the new branch from the previous
  stage's lowest-resolution output (3x3 stride-2 conv);
* ``incre_modules``: one Bottleneck per branch (planes ``width * [1, 2, 4, 8]``) -> 128, 256, 512,
  1024 channels;
* branches 1-3 resized to branch 0's size (bilinear, ``align_corners=True``) and concatenated in
  branch order: ``[B, H/4, W/4, 60 * width]`` (1920 for W32);
* ``cls_head`` (1x1 conv with bias 1920 -> 512, BN, ReLU), applied only with ``dim_reduction``
  (off in BPBreID's configs) but always present, as its state_dict has it.

Every BatchNorm is PyTorch's (momentum 0.1, eps 1e-5); channels-last: input ``[B, H, W, 3]``.
Attribute names follow the PyTorch state_dict (``reid_jax.convert.keymaps.hrnet_keys``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.models.layers import BatchNorm, conv, resize_bilinear_align_corners
from reid_jax.models.mpn import ConvBNReLU
from reid_jax.models.resnet import BasicBlock, Bottleneck

Array = jax.Array

NUM_BRANCHES = 4
OUTPUT_STRIDE = 32  # of the lowest-resolution branch: input sizes must be multiples of it


class ConvBN(nnx.Module):
  """``nn.Sequential(Conv2d(bias=False), BatchNorm2d[, ReLU])``: PyTorch keys ``0.*``, ``1.*``.

  ``[B, H, W, in] -> [B, H / stride, W / stride, out]``; padding ``kernel // 2``.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
               relu: bool, dtype=None, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, kernel_size, stride=stride, dtype=dtype,
                     rngs=rngs)
    self.bn = BatchNorm(out_features)
    self.relu = relu

  def __call__(self, x: Array) -> Array:
    x = self.bn(self.conv(x))
    return jax.nn.relu(x) if self.relu else x


def upsample_nearest(x: Array, factor: int) -> Array:
  """``nn.Upsample(scale_factor=factor, mode='nearest')`` on ``[B, h, w, C]`` for an integer
  factor: every pixel repeated ``factor x factor`` times -> ``[B, h * factor, w * factor, C]``."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


class HighResolutionModule(nnx.Module):
  """One HRNet module on ``len(channels)`` branches: ``blocks`` BasicBlocks per branch, then the
  fuse layers. Input and output: a list of ``[B, H / 2**i, W / 2**i, channels[i]]``.

  Output ``i`` is ``ReLU(sum_j f_ij(x_j))`` over the branches ``x_j`` after their blocks, summed
  from ``j = 0`` up (PyTorch's order), with ``f_ii`` the identity, ``f_ij`` for ``j > i`` a 1x1
  conv + BN to ``channels[i]`` then nearest upsampling by ``2**(j - i)``, and ``f_ij`` for
  ``j < i`` a chain of ``i - j`` 3x3 stride-2 conv + BN (ReLU between them, not after the last;
  all but the last keep ``channels[j]``).
  """

  def __init__(self, channels, blocks: int, *, dtype=None, rngs: nnx.Rngs):
    self.branches = nnx.List([
        nnx.List([BasicBlock(c, c, 1, False, dtype=dtype, rngs=rngs) for _ in range(blocks)])
        for c in channels])
    fuse_layers = []
    for i, ci in enumerate(channels):
      row = []
      for j, cj in enumerate(channels):
        if j > i:
          row.append(ConvBN(cj, ci, 1, relu=False, dtype=dtype, rngs=rngs))
        elif j == i:
          row.append(None)
        else:
          last = i - j - 1
          row.append(nnx.List([
              ConvBN(cj, ci if k == last else cj, 3, stride=2, relu=k != last, dtype=dtype,
                     rngs=rngs) for k in range(i - j)]))
      fuse_layers.append(nnx.List(row))
    self.fuse_layers = nnx.List(fuse_layers)

  def _fused(self, i: int, j: int, x: Array) -> Array:
    """``f_ij(x_j)``: branch ``j``'s map brought to branch ``i``'s resolution and width."""
    f = self.fuse_layers[i][j]
    if j > i:
      return upsample_nearest(f(x), 2 ** (j - i))
    for layer in f:
      x = layer(x)
    return x

  def __call__(self, xs: list[Array]) -> list[Array]:
    xs = list(xs)
    for b, branch in enumerate(self.branches):
      for block in branch:
        xs[b] = block(xs[b])
    out = []
    for i in range(len(self.fuse_layers)):
      y = xs[0] if i == 0 else self._fused(i, 0, xs[0])
      for j in range(1, len(xs)):
        y = y + (xs[j] if i == j else self._fused(i, j, xs[j]))
      out.append(jax.nn.relu(y))
    return out


def _transition(pre_channels, cur_channels, *, dtype, rngs) -> nnx.List:
  """``_make_transition_layer``: per branch of the next stage, ``None`` (unchanged branch), a 3x3
  conv + BN + ReLU (an existing branch whose width changes) or, for a new branch, a chain of 3x3
  stride-2 conv + BN + ReLU from the previous stage's last branch (one conv per new level)."""
  layers = []
  for i, c in enumerate(cur_channels):
    if i < len(pre_channels):
      layers.append(None if c == pre_channels[i] else
                    ConvBN(pre_channels[i], c, 3, relu=True, dtype=dtype, rngs=rngs))
    else:
      steps = i + 1 - len(pre_channels)
      src = pre_channels[-1]
      layers.append(nnx.List([
          ConvBN(src, c if k == steps - 1 else src, 3, stride=2, relu=True, dtype=dtype,
                 rngs=rngs) for k in range(steps)]))
  return nnx.List(layers)


def _run_transition(layer, x: Array) -> Array:
  if isinstance(layer, ConvBN):
    return layer(x)
  for step in layer:
    x = step(x)
  return x


class HRNet(nnx.Module):
  """HRNet backbone as BPBreID builds it (``hrnet32``; module docstring).

  Args:
    width: channels of branch 0 (32 = HRNet-W32). Branch ``k`` has ``width * 2**k`` channels and
      its incre module Bottleneck ``width * 2**k`` planes (``4 * width * 2**k`` out), so the
      output has ``60 * width`` channels. Other widths are narrow networks for tests and demos
      (HRNet-W18/W48-C keep the W32 incre planes; they are not these).
    stage_modules: modules of stages 2, 3, 4 (W32: 1, 4, 3).
    blocks: BasicBlocks per branch in every module (W32: 4).
    dim_reduction: apply ``cls_head`` (1x1 conv with bias -> BN -> ReLU) to the concatenated
      map (BPBreID's ``enable_dim_reduction``, i.e. ``dim_reduce='before_pooling'``).
    dim_reduction_channels: ``cls_head``'s output channels (BPBreID: 512). ``cls_head`` exists
      either way, since every BPBreID state_dict has it.
    stem_width: channels of the stem and planes of ``layer1`` (64 in every HRNet; ``layer1``
      outputs ``4 * stem_width``). Smaller only for narrow demo networks.
    dtype: compute dtype (parameters stay float32).

  ``__call__(x [B, H, W, 3])`` -> ``[B, H/4, W/4, out_features]`` with ``out_features`` =
  ``60 * width`` (``dim_reduction_channels`` with ``dim_reduction``); H and W must be multiples
  of 32. ``return_branches=True`` also returns the four stage-4 outputs
  ``[B, H / 2**(k+2), W / 2**(k+2), width * 2**k]``, k = 0..3 (before the incre modules);
  ``return_maps=True`` instead the four incre-module outputs
  ``[B, H / 2**(k+2), W / 2**(k+2), concat_channels[k]]`` (before the resize and concat).
  Initialisation as BPBreID's ``random_init``: kaiming-normal (fan_out, relu) convolutions,
  BN weight 1 and bias 0 (``cls_head``'s conv bias keeps PyTorch's default uniform init).
  """

  def __init__(self, *, width: int = 32, stage_modules=(1, 4, 3), blocks: int = 4,
               dim_reduction: bool = False, dim_reduction_channels: int = 512,
               stem_width: int = 64, dtype=None, rngs: nnx.Rngs):
    stage_modules = tuple(stage_modules)
    if len(stage_modules) != 3 or any(int(m) < 1 for m in stage_modules):
      raise ValueError(f'HRNet stage_modules must be 3 positive module counts (stages 2, 3, 4), '
                       f'got {stage_modules}')
    for name, value in (('width', width), ('blocks', blocks), ('stem_width', stem_width),
                        ('dim_reduction_channels', dim_reduction_channels)):
      if int(value) < 1:
        raise ValueError(f'HRNet {name} must be a positive integer, got {value}')
    self.width = width
    self.dtype = dtype
    self.dim_reduction = dim_reduction
    self.conv1 = conv(3, stem_width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(stem_width)
    self.conv2 = conv(stem_width, stem_width, 3, stride=2, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(stem_width)
    layer1_out = stem_width * Bottleneck.expansion
    self.layer1 = nnx.List([
        Bottleneck(stem_width if b == 0 else layer1_out, stem_width, 1, False, dtype=dtype,
                   rngs=rngs) for b in range(4)])
    self.branch_channels = tuple(width * 2**k for k in range(NUM_BRANCHES))
    pre = (layer1_out,)
    for s, modules in zip((2, 3, 4), stage_modules):
      cur = self.branch_channels[:s]
      setattr(self, f'transition{s - 1}', _transition(pre, cur, dtype=dtype, rngs=rngs))
      setattr(self, f'stage{s}', nnx.List([
          HighResolutionModule(cur, blocks, dtype=dtype, rngs=rngs) for _ in range(modules)]))
      pre = cur
    self.incre_modules = nnx.List([Bottleneck(c, c, 1, False, dtype=dtype, rngs=rngs)
                                   for c in self.branch_channels])
    self.concat_channels = tuple(c * Bottleneck.expansion for c in self.branch_channels)
    concat = sum(self.concat_channels)
    self.cls_head = ConvBNReLU(concat, dim_reduction_channels, dtype=dtype, rngs=rngs)
    self.out_features = dim_reduction_channels if dim_reduction else concat

  def stem(self, x: Array) -> Array:
    """conv1 -> bn1 -> ReLU -> conv2 -> bn2 -> ReLU -> layer1: ``[B, H, W, 3]`` ->
    ``[B, H/4, W/4, 4 * stem_width]``. Casts the input to the compute dtype first."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    for block in self.layer1:
      x = block(x)
    return x

  def __call__(self, x: Array, *, return_branches: bool = False, return_maps: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'HRNet expects images [B, H, W, 3], got shape {tuple(x.shape)}')
    h, w = x.shape[1:3]
    if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
      raise ValueError(f'HRNet input height and width must be multiples of {OUTPUT_STRIDE} (its '
                       f'lowest-resolution branch is at 1/{OUTPUT_STRIDE} and is upsampled back '
                       f'exactly), got {h}x{w}')
    ys = [self.stem(x)]
    for s in (2, 3, 4):
      transition = getattr(self, f'transition{s - 1}')
      # A branch without a transition keeps its map; a transition reads the previous stage's
      # lowest-resolution output, as the official forward does for every branch that has one
      # (before stage 2 that is the one layer1 map).
      xs = [ys[i] if layer is None else _run_transition(layer, ys[-1])
            for i, layer in enumerate(transition)]
      for module in getattr(self, f'stage{s}'):
        xs = module(xs)
      ys = xs
    branches = ys
    maps = [incre(y) for incre, y in zip(self.incre_modules, branches)]
    size = maps[0].shape[1:3]
    out = jnp.concatenate([maps[0]] + [resize_bilinear_align_corners(m, size) for m in maps[1:]],
                          axis=-1)
    if self.dim_reduction:
      out = self.cls_head(out)
    if return_maps:
      return out, maps
    return (out, branches) if return_branches else out

