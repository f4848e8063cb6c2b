"""One key map per architecture: PyTorch state_dict key -> (NNX variable, layout kind).

A key map is a function ``model -> dict[str, Target]``. The converter core (``reid_jax.convert``)
checks shapes, transposes by kind and assigns; key maps only name things. Register a new method's
map with ``@register(ModelClass)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx

from reid_jax.models.bot import Baseline
from reid_jax.models.layers import IBN, BatchNorm
from reid_jax.models.resnet import ResNet

# Layout kinds: how a PyTorch tensor becomes the NNX value.
CONV = 'conv'      # (O, I, kH, kW) -> (kH, kW, I, O)
LINEAR = 'linear'  # (out, in) -> (in, out)
VECTOR = 'vector'  # unchanged

KeyMap = dict[str, 'Target']
_KEYMAPS: dict[type, Callable[[nnx.Module], KeyMap]] = {}


@dataclasses.dataclass(frozen=True)
class Target:
  variable: nnx.Variable
  kind: str


def register(model_cls: type):
  def wrap(fn):
    _KEYMAPS[model_cls] = fn
    return fn
  return wrap


def keymap_for(model: nnx.Module) -> KeyMap:
  for cls in type(model).__mro__:
    if cls in _KEYMAPS:
      return _KEYMAPS[cls](model)
  raise ValueError(f'no PyTorch key map for {type(model).__name__}; known: '
                   f'{sorted(c.__name__ for c in _KEYMAPS)}')


def conv_keys(prefix: str, conv: nnx.Conv) -> KeyMap:
  out = {prefix + 'weight': Target(conv.kernel, CONV)}
  if conv.bias is not None:
    out[prefix + 'bias'] = Target(conv.bias, VECTOR)
  return out


def linear_keys(prefix: str, linear: nnx.Linear) -> KeyMap:
  out = {prefix + 'weight': Target(linear.kernel, LINEAR)}
  if linear.bias is not None:
    out[prefix + 'bias'] = Target(linear.bias, VECTOR)
  return out


def bn_keys(prefix: str, bn: BatchNorm | IBN) -> KeyMap:
  """``weight, bias, running_mean, running_var`` (``num_batches_tracked`` is dropped)."""
  if isinstance(bn, IBN):
    return {prefix + 'IN.weight': Target(bn.IN.scale, VECTOR),
            prefix + 'IN.bias': Target(bn.IN.bias, VECTOR),
            **bn_keys(prefix + 'BN.', bn.BN)}
  out = {prefix + 'weight': Target(bn.scale, VECTOR),
         prefix + 'running_mean': Target(bn.mean, VECTOR),
         prefix + 'running_var': Target(bn.var, VECTOR)}
  if bn.bias is not None:
    out[prefix + 'bias'] = Target(bn.bias, VECTOR)
  return out


@register(ResNet)
def resnet_keys(model: ResNet, prefix: str = '') -> KeyMap:
  """torchvision ResNet layout (methods.md §0.3); ``fc.*`` has no counterpart and stays unused."""
  out = {**conv_keys(prefix + 'conv1.', model.conv1), **bn_keys(prefix + 'bn1.', model.bn1)}
  for li in range(1, 5):
    for bi, block in enumerate(getattr(model, f'layer{li}')):
      p = f'{prefix}layer{li}.{bi}.'
      for ci in (1, 2, 3):
        if hasattr(block, f'conv{ci}'):
          out.update(conv_keys(f'{p}conv{ci}.', getattr(block, f'conv{ci}')))
          out.update(bn_keys(f'{p}bn{ci}.', getattr(block, f'bn{ci}')))
      if block.downsample_conv is not None:
        out.update(conv_keys(p + 'downsample.0.', block.downsample_conv))
        out.update(bn_keys(p + 'downsample.1.', block.downsample_bn))
  return out


def bnneck_keys(head) -> KeyMap:
  """BoT head: ``bottleneck.*`` (BN1d, frozen bias) and ``classifier.weight``."""
  return {**bn_keys('bottleneck.', head.bottleneck),
          **linear_keys('classifier.', head.classifier)}


@register(Baseline)
def baseline_keys(model: Baseline) -> KeyMap:
  """reid-strong-baseline checkpoint: ``base.*`` + ``bottleneck.*`` + ``classifier.weight``."""
  return {**resnet_keys(model.base, 'base.'), **bnneck_keys(model.head)}
