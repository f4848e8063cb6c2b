"""One key map per architecture: PyTorch state_dict key -> (NNX variable, layout kind).

A key map is a function ``model -> dict[str, Target]``. The converter core (``reid_jax.convert``)
checks shapes, transposes by kind and assigns; key maps only name things. Register a new method's
map with ``@register(ModelClass)``.

Some checkpoints store the same tensor under two names (APNet's ``base_1.*`` ... ``base_5.*`` are
the modules of ``base.*`` registered twice). ``@register_aliases(ModelClass)`` declares such
duplicates as ``{alias_key: canonical_key}``; the converter core then checks that every alias
present in a checkpoint equals its canonical tensor, and does not report it as unused.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx

from reid_jax.models.apnet import APNet
from reid_jax.models.bot import Baseline
from reid_jax.models.layers import IBN, BatchNorm
from reid_jax.models.resnet import ResNet
from reid_jax.models.san import SAN

# Layout kinds: how a PyTorch tensor becomes the NNX value.
CONV = 'conv'      # (O, I, kH, kW) -> (kH, kW, I, O)
LINEAR = 'linear'  # (out, in) -> (in, out)
VECTOR = 'vector'  # unchanged

KeyMap = dict[str, 'Target']
Aliases = dict[str, str]  # duplicate checkpoint key -> the canonical key it must equal
_KEYMAPS: dict[type, Callable[[nnx.Module], KeyMap]] = {}
_ALIASES: dict[type, Callable[[nnx.Module], Aliases]] = {}


@dataclasses.dataclass(frozen=True)
class Target:
  variable: nnx.Variable
  kind: str


def register(model_cls: type):
  def wrap(fn):
    _KEYMAPS[model_cls] = fn
    return fn
  return wrap


def register_aliases(model_cls: type):
  """Decorator: ``@register_aliases(Model) def f(model) -> {alias_key: canonical_key}``."""
  def wrap(fn):
    _ALIASES[model_cls] = fn
    return fn
  return wrap


def aliases_for(model: nnx.Module) -> Aliases:
  """The model's duplicate-key declarations (empty for most architectures)."""
  for cls in type(model).__mro__:
    if cls in _ALIASES:
      return _ALIASES[cls](model)
  return {}


def prefix_aliases(keys, renames: dict[str, str]) -> Aliases:
  """``{alias: canonical}`` for every canonical key in ``keys`` that starts with a prefix in
  ``renames`` (canonical prefix -> alias prefix), e.g. ``{'base.conv1.': 'base_1.0.'}``."""
  out = {}
  for key in keys:
    for prefix, alias_prefix in renames.items():
      if key.startswith(prefix):
        out[alias_prefix + key[len(prefix):]] = key
        break
  return out


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


def _apnet_level_names(level: int, k: int) -> tuple[str, str]:
  """Official names of the level-``level`` SAMS and its BN2d after stage ``k`` (1-based):
  level 2 -> ``att_s{k}``, ``BN{k}``; level 3 -> ``att_ss{k}``, ``BN_{k}``; and so on."""
  return f'att_{"s" * (level - 1)}{k}.', f'BN{"_" * (level - 2)}{k}.bottleneck2.'


@register(APNet)
def apnet_keys(model: APNet) -> KeyMap:
  """CHENGY12/APNet checkpoint (methods.md §2.8): ``base.*`` (§0.3), per stage k = 1..5
  ``att{k}.fc.{0,2}.weight`` (SE), ``att_s{k}.{fc1,bn1,fc2}.*`` + ``BN{k}.bottleneck2.*`` (level 2),
  ``att_ss{k}.*`` + ``BN_{k}.*`` (level 3), then ``bottleneck.*`` and ``classifier.weight``. The
  ``base_1.*`` ... ``base_5.*`` duplicates are declared in ``apnet_aliases``."""
  if model.attention != 'channel':
    raise ValueError('APNet-S (config.model.attention=\'spatial\') has no official PyTorch '
                     'checkpoint layout (the official code is APNet-C only); load a backbone with '
                     'load_torch_weights(model.base, state_dict) instead')
  out = resnet_keys(model.base, 'base.')
  for k, stage in enumerate(model.pyramid, start=1):
    levels = range(len(stage.splits), 1, -1)  # the SAMS levels, finest first (as applied)
    for level, sams, bn in zip(levels, stage.sams, stage.bns):
      att, bn_prefix = _apnet_level_names(level, k)
      out.update(conv_keys(att + 'fc1.', sams.fc1))
      out.update(bn_keys(att + 'bn1.', sams.bn1))
      out.update(conv_keys(att + 'fc2.', sams.fc2))
      out.update(bn_keys(bn_prefix, bn))
    if stage.se is not None:
      out.update(linear_keys(f'att{k}.fc.0.', stage.se.fc1))
      out.update(linear_keys(f'att{k}.fc.2.', stage.se.fc2))
  out.update(bnneck_keys(model.head))
  return out


# APNet regroups its backbone as base_1 = (conv1, bn1, maxpool), base_2..base_5 = (layer1..layer4,)
# on top of keeping it as ``base``: the state_dict holds both names for the same tensors.
APNET_BASE_ALIASES = {'base.conv1.': 'base_1.0.', 'base.bn1.': 'base_1.1.',
                      'base.layer1.': 'base_2.0.', 'base.layer2.': 'base_3.0.',
                      'base.layer3.': 'base_4.0.', 'base.layer4.': 'base_5.0.'}


@register_aliases(APNet)
def apnet_aliases(model: APNet) -> Aliases:
  return prefix_aliases(resnet_keys(model.base, 'base.'), APNET_BASE_ALIASES)


def conv_bn_keys(prefix: str, block) -> KeyMap:
  """``nn.Sequential(Conv2d, BatchNorm2d, ReLU)`` blocks (``mpn.ConvBNReLU``): ``.0.*``, ``.1.*``."""
  return {**conv_keys(prefix + '0.', block.conv), **bn_keys(prefix + '1.', block.bn)}


SAN_DECODER_PREFIX = 'decoder.'  # where load_torch_checkpoint puts a SAN checkpoint's decoder


@register(SAN)
def san_keys(model: SAN) -> KeyMap:
  """SAN's ``checkpoint_ep{N}.pth.tar`` (microsoft/Semantics-Aligned-Representation-Learning-for-
  Person-Re-identification ``main.py``): the encoder ``resnet50_fc512`` at the top level
  (``conv1``, ``bn1``, ``layer1..4`` as torchvision, ``fc.0`` Linear, ``fc.1`` BN1d,
  ``classifier``) and the decoder's ``decoder_state_dict`` under ``decoder.``
  (``reduce_dim.{0,1}``, ``embed_layer{3,2,1}.{0,1}``, ``up{j}.res.res.{0,1,3,4}``,
  ``up{j}.conv.2``, ``final_layer.1``)."""
  out = {**resnet_keys(model.base), **linear_keys('fc.0.', model.fc.linear),
         **bn_keys('fc.1.', model.fc.bn), **linear_keys('classifier.', model.classifier)}
  d, p = model.decoder, SAN_DECODER_PREFIX
  for name in ('reduce_dim', 'embed_layer3', 'embed_layer2', 'embed_layer1'):
    out.update(conv_bn_keys(f'{p}{name}.', getattr(d, name)))
  for j in range(1, 5):
    up = getattr(d, f'up{j}')
    q = f'{p}up{j}.'
    out.update(conv_keys(q + 'res.res.0.', up.res.conv1))
    out.update(bn_keys(q + 'res.res.1.', up.res.bn1))
    out.update(conv_keys(q + 'res.res.3.', up.res.conv2))
    out.update(bn_keys(q + 'res.res.4.', up.res.bn2))
    out.update(conv_keys(q + 'conv.2.', up.conv))
  out.update(conv_keys(p + 'final_layer.1.', d.final_layer))
  return out
