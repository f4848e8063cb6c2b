"""ResNet-18/34/50/101/152 in the torchvision layout (v1.5 bottleneck: the stride sits on the 3x3).

Attribute names follow the PyTorch state_dict (``conv1``, ``bn1``, ``layer1[0].downsample_conv``...)
so that the converter's key maps stay readable. Channels-last: input ``[B, H, W, 3]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.models.layers import IBN, BatchNorm, conv, max_pool

Array = jax.Array

# depth -> (block kind, blocks per stage)
DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, in_ch: int, planes: int, stride: int, ibn: bool, *, dtype, rngs: nnx.Rngs):
    self.conv1 = conv(in_ch, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
    self.bn1 = IBN(planes) if ibn else BatchNorm(planes)
    self.conv2 = conv(planes, planes, 3, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(planes)
    self.downsample_conv, self.downsample_bn = _downsample(in_ch, planes, stride, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return jax.nn.relu(out + _shortcut(self, x))


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, in_ch: int, planes: int, stride: int, ibn: bool, *, dtype, rngs: nnx.Rngs):
    out_ch = planes * self.expansion
    self.conv1 = conv(in_ch, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = IBN(planes) if ibn else BatchNorm(planes)
    self.conv2 = conv(planes, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(planes)
    self.conv3 = conv(planes, out_ch, 1, dtype=dtype, rngs=rngs)
    self.bn3 = BatchNorm(out_ch)
    self.downsample_conv, self.downsample_bn = _downsample(in_ch, out_ch, stride, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return jax.nn.relu(out + _shortcut(self, x))


def _downsample(in_ch, out_ch, stride, dtype, rngs):
  if stride == 1 and in_ch == out_ch:
    return None, None
  return conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs), BatchNorm(out_ch)


def _shortcut(block, x):
  if block.downsample_conv is None:
    return x
  return block.downsample_bn(block.downsample_conv(x))


class ResNet(nnx.Module):
  """torchvision ResNet without the ImageNet ``fc``.

  Args:
    depth: 18, 34, 50, 101 or 152.
    last_stride: stride of ``layer4`` (1 in every ReID recipe here: output stride 16).
    stem_relu: ReLU after the stem BN. torchvision, MPN and SAN have it; BoT and APNet do not.
    maxpool_ceil_mode: fast-reid's stem pool, ``MaxPool2d(3, 2, padding=0, ceil_mode=True)``,
      instead of torchvision's ``MaxPool2d(3, 2, padding=1)``.
    ibn: IBN-a (InstanceNorm on half of ``bn1``'s channels in every block of layer1-3).
    width: channels of the stem (64 in the real networks; smaller for tests and demos).
    dtype: compute dtype (parameters stay float32).

  ``__call__(x)`` maps ``[B, H, W, 3]`` to the ``layer4`` map ``[B, H/16, W/16, C]`` (last stride
  1), or with ``return_stages=True`` to ``[stem, layer1, layer2, layer3, layer4]``. ``stem(x)`` and
  ``stage(i, x)`` run the groups one at a time (``stage_channels[i]`` channels out), for methods
  that insert modules between them.
  """

  def __init__(self, depth: int = 50, *, last_stride: int = 1, stem_relu: bool = True,
               maxpool_ceil_mode: bool = False, ibn: bool = False, width: int = 64,
               dtype=None, rngs: nnx.Rngs):
    if depth not in DEPTHS:
      raise ValueError(f'ResNet depth must be one of {sorted(DEPTHS)}, got {depth}')
    if last_stride not in (1, 2):
      raise ValueError(f'last_stride must be 1 or 2, got {last_stride}')
    kind, blocks = DEPTHS[depth]
    block_cls = Bottleneck if kind == 'bottleneck' else BasicBlock
    self.depth = depth
    self.stem_relu = stem_relu
    self.maxpool_ceil_mode = maxpool_ceil_mode
    self.dtype = dtype
    self.conv1 = conv(3, width, 7, stride=2, padding=3, dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(width)
    in_ch = width
    self.stage_channels = [width]
    strides = (1, 2, 2, last_stride)
    for i, (n, stride) in enumerate(zip(blocks, strides)):
      planes = width * 2**i
      layer = []
      for b in range(n):
        # IBN-a: layers 1-3 only (planes 512 in the full-width net has none).
        layer.append(block_cls(in_ch, planes, stride if b == 0 else 1, ibn and i < 3,
                               dtype=dtype, rngs=rngs))
        in_ch = planes * block_cls.expansion
      setattr(self, f'layer{i + 1}', nnx.List(layer))
      self.stage_channels.append(in_ch)
    self.out_features = in_ch

  num_stages = 5  # stem, layer1, layer2, layer3, layer4

  def stem(self, x: Array) -> Array:
    """conv1 -> bn1 (-> ReLU if ``stem_relu``) -> maxpool: ``[B, H, W, 3] -> [B, H/4, W/4, width]``.

    Casts the input to the compute dtype first.
    """
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = self.bn1(self.conv1(x))
    if self.stem_relu:
      x = jax.nn.relu(x)
    if self.maxpool_ceil_mode:
      return max_pool(x, 3, 2, padding=0, ceil_mode=True)
    return max_pool(x, 3, 2, padding=1)

  def stage(self, index: int, x: Array) -> Array:
    """Runs one of the ``num_stages`` groups ``[stem, layer1, layer2, layer3, layer4]``.

    ``stage(0, image [B, H, W, 3])`` is ``stem``; ``stage(i, x)`` for i = 1..4 runs the blocks of
    ``layer{i}`` on the previous stage's map ``[B, h, w, stage_channels[i - 1]]`` and returns
    ``[B, h', w', stage_channels[i]]``. Methods that insert modules between stages (APNet) call
    this in a loop; ``__call__`` is the same loop without insertions.
    """
    if index == 0:
      return self.stem(x)
    if not 1 <= index < self.num_stages:
      raise ValueError(f'ResNet stage index must be 0..{self.num_stages - 1}, got {index}')
    for block in getattr(self, f'layer{index}'):
      x = block(x)
    return x

  def __call__(self, x: Array, *, return_stages: bool = False):
    stages = []
    for i in range(self.num_stages):
      x = self.stage(i, x)
      stages.append(x)
    return stages if return_stages else x


def resnet_from_config(model_config, *, rngs: nnx.Rngs) -> ResNet:
  """Builds the backbone from the shared ``config.model`` fields."""
  get = model_config.get
  dtype = get('dtype', 'float32')
  return ResNet(
      depth=get('depth', 50), last_stride=get('last_stride', 1),
      stem_relu=get('stem_relu', True), maxpool_ceil_mode=get('maxpool_ceil_mode', False),
      ibn=get('ibn', False), width=get('width', 64),
      dtype=None if dtype in (None, 'float32') else jnp.dtype(dtype), rngs=rngs)
