"""One key map per architecture: PyTorch state_dict key -> (NNX variable, layout kind).

A key map is a function ``model -> dict[str, Target]``. The converter core (``reid_jax.convert``)
checks shapes, transposes by kind and assigns; key maps only name things. Register a new method's
map with ``@register(ModelClass)``.

Some checkpoints store the same tensor under two names (APNet's ``base_1.*`` ... ``base_5.*`` are
the modules of ``base.*`` registered twice). ``@register_aliases(ModelClass)`` declares such
duplicates as ``{alias_key: canonical_key}``; the converter core then checks that every alias
present in a checkpoint equals its canonical tensor, and does not report it as unused.

A ``Target`` may carry three annotations the core acts on: ``classifier=True`` marks a
per-class weight (its first axis has one row per training identity), which
``load_torch_weights(..., skip_mismatched_classifiers=True)`` leaves at its initial value when the
checkpoint was trained on another number of classes; ``missing_hint`` is appended to the error
when the key is absent from a checkpoint (e.g. a module that the official code does not have);
``optional=True`` marks a key that some official files lack by design (HRNet's ``cls_head.*`` is
not in the ImageNet HRNet-W32-C file): when absent it keeps its initial value and is listed in
``LoadReport.absent`` instead of failing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx

from reid_jax.models.apnet import APNet
from reid_jax.models.bot import Baseline
from reid_jax.models.bpbreid import BPBreID
from reid_jax.models.hrnet import HRNet, HighResolutionModule
from reid_jax.models.layers import IBN, BatchNorm
from reid_jax.models.mpn import MPN
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
  classifier: bool = False  # rows = classes: skippable on a class-count mismatch
  missing_hint: str = ''    # appended to the error when a checkpoint lacks the key
  optional: bool = False    # absent from a checkpoint: keeps its initial value (reported)


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


def _renamed_key(key: str, renames: dict[str, str]) -> str | None:
  """``key`` with its first matching prefix in ``renames`` (old -> new) replaced, else None."""
  for old, new in renames.items():
    if key.startswith(old):
      return new + key[len(old):]
  return None


def prefix_aliases(keys, renames: dict[str, str]) -> Aliases:
  """``{alias: canonical}`` for every canonical key in ``keys`` that starts with a prefix in
  ``renames`` (canonical prefix -> alias prefix), e.g. ``{'base.conv1.': 'base_1.0.'}``."""
  return {alias: key for key in keys
          if (alias := _renamed_key(key, renames)) is not None}


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


def linear_keys(prefix: str, linear: nnx.Linear, *, classifier: bool = False) -> KeyMap:
  """``weight`` (+ ``bias``); ``classifier=True`` for an identity classifier (one row per
  class), which a checkpoint of another dataset may have in another size."""
  out = {prefix + 'weight': Target(linear.kernel, LINEAR, classifier=classifier)}
  if linear.bias is not None:
    out[prefix + 'bias'] = Target(linear.bias, VECTOR, classifier=classifier)
  return out


def renamed(keymap: KeyMap, renames: dict[str, str]) -> KeyMap:
  """``keymap`` with each key's first matching prefix in ``renames`` (old -> new) replaced."""
  return {_renamed_key(k, renames) or k: t for k, t in keymap.items()}


def with_hint(keymap: KeyMap, hint: str) -> KeyMap:
  return {k: dataclasses.replace(t, missing_hint=hint) for k, t in keymap.items()}


def as_optional(keymap: KeyMap) -> KeyMap:
  """``keymap`` with every target ``optional``: a checkpoint without these keys leaves them at
  their initial value (listed in ``LoadReport.absent``)."""
  return {k: dataclasses.replace(t, optional=True) for k, t in keymap.items()}


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


def block_keys(prefix: str, block) -> KeyMap:
  """A torchvision ``BasicBlock`` / ``Bottleneck`` (``reid_jax.models.resnet``; HRNet's are the
  same): ``conv{1,2[,3]}``, ``bn{1,2[,3]}`` and, with a projection shortcut, ``downsample.0``
  (1x1 conv) and ``downsample.1`` (BN)."""
  out = {}
  for ci in (1, 2, 3):
    if hasattr(block, f'conv{ci}'):
      out.update(conv_keys(f'{prefix}conv{ci}.', getattr(block, f'conv{ci}')))
      out.update(bn_keys(f'{prefix}bn{ci}.', getattr(block, f'bn{ci}')))
  if block.downsample_conv is not None:
    out.update(conv_keys(prefix + 'downsample.0.', block.downsample_conv))
    out.update(bn_keys(prefix + 'downsample.1.', block.downsample_bn))
  return out


@register(ResNet)
def resnet_keys(model: ResNet, prefix: str = '') -> KeyMap:
  """torchvision ResNet layout (``torchvision/models/resnet.py``, also the ``resnet.py`` of BoT,
  APNet, MPN and SAN); ``fc.*`` has no counterpart and stays unused."""
  out = {**conv_keys(prefix + 'conv1.', model.conv1), **bn_keys(prefix + 'bn1.', model.bn1)}
  for li in range(1, 5):
    for bi, block in enumerate(getattr(model, f'layer{li}')):
      out.update(block_keys(f'{prefix}layer{li}.{bi}.', block))
  return out


def bnneck_keys(head) -> KeyMap:
  """BoT head: ``bottleneck.*`` (BN1d, frozen bias) and ``classifier.weight``."""
  return {**bn_keys('bottleneck.', head.bottleneck),
          **linear_keys('classifier.', head.classifier, classifier=True)}


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
  """CHENGY12/APNet checkpoint (``modeling/baseline.py``): ``base.*`` (torchvision ResNet), per
  stage k = 1..5
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


# MPN's ``TS.base`` is ``nn.Sequential(*list(resnet50.children())[:-2])``: conv1, bn1, relu,
# maxpool, layer1..layer4 under the indices 0..7 (2 and 3 hold no weights).
MPN_BASE_NAMES = {'base.conv1.': 'base.0.', 'base.bn1.': 'base.1.', 'base.layer1.': 'base.4.',
                  'base.layer2.': 'base.5.', 'base.layer3.': 'base.6.', 'base.layer4.': 'base.7.'}

MPN_CA_HINT = ("the official MPN checkpoints (WangKan0128/MPN models/mpn_no_ca.py) have no "
               "channel attention: load them into a model built with "
               "config.model.channel_attention=False, or pass exclude=['ca_list.*'] to keep the "
               "attention at its initial value")


def conv_bn_keys(prefix: str, conv, bn) -> KeyMap:
  """``nn.Sequential(Conv2d, BatchNorm2d, ...)``: ``{prefix}0.*`` and ``{prefix}1.*``."""
  return {**conv_keys(prefix + '0.', conv), **bn_keys(prefix + '1.', bn)}


@register(MPN)
def mpn_keys(model: MPN) -> KeyMap:
  """WangKan0128/MPN ``TS`` (``models/mpn_no_ca.py``; 426 entries for K = 6, ResNet-50, C = 751):
  ``base.{0,1,4,5,6,7}.*`` (conv1, bn1, layer1..layer4), per part k ``local_conv_list.{k}.{0,1}.*``
  and ``local_conv_list2.{k}.{0,1}.*`` (1x1 conv with bias, BN2d), ``Sfc_list.{k}.*`` (MT
  classifiers) and ``Tfc_list.{k}.*`` (AT classifiers).

  Channel attention (``channel_attention=True``, our design: not in the released model) takes
  the names a ``nn.ModuleList`` of ``models/CA_2.py::SoftAttn`` would give it,
  ``ca_list.{k}.channel_attn.conv{1,2}.{conv,bn}.*``, so a reid_jax-trained CA model round-trips;
  an official checkpoint lacks them (the error says so)."""
  out = renamed(resnet_keys(model.base, 'base.'), MPN_BASE_NAMES)
  for k in range(model.parts):
    out.update(conv_bn_keys(f'local_conv_list.{k}.', model.local_conv[k].conv,
                            model.local_conv[k].bn))
    out.update(conv_bn_keys(f'local_conv_list2.{k}.', model.local_conv2[k].conv,
                            model.local_conv2[k].bn))
    out.update(linear_keys(f'Sfc_list.{k}.', model.mt_classifiers[k], classifier=True))
    out.update(linear_keys(f'Tfc_list.{k}.', model.at_classifiers[k], classifier=True))
  if model.channel_attention is not None:
    for k, ca in enumerate(model.channel_attention):
      p = f'ca_list.{k}.channel_attn.'
      out.update(with_hint({**conv_keys(p + 'conv1.conv.', ca.conv1),
                            **bn_keys(p + 'conv1.bn.', ca.bn1),
                            **conv_keys(p + 'conv2.conv.', ca.conv2),
                            **bn_keys(p + 'conv2.bn.', ca.bn2)}, MPN_CA_HINT))
  return out


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
         **bn_keys('fc.1.', model.fc.bn),
         **linear_keys('classifier.', model.classifier, classifier=True)}
  d, p = model.decoder, SAN_DECODER_PREFIX
  for name in ('reduce_dim', 'embed_layer3', 'embed_layer2', 'embed_layer1'):
    block = getattr(d, name)
    out.update(conv_bn_keys(f'{p}{name}.', block.conv, block.bn))
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


def _sequential_conv_bn_keys(prefix: str, layer) -> KeyMap:
  """A ``ConvBN`` (keys ``{prefix}0.*``, ``{prefix}1.*``) or an ``nnx.List`` of them, a
  ``nn.Sequential`` of such Sequentials (``{prefix}{k}.0.*``, ``{prefix}{k}.1.*``)."""
  if isinstance(layer, nnx.List):
    out = {}
    for k, step in enumerate(layer):
      out.update(conv_bn_keys(f'{prefix}{k}.', step.conv, step.bn))
    return out
  return conv_bn_keys(prefix, layer.conv, layer.bn)


def hr_module_keys(prefix: str, module: HighResolutionModule) -> KeyMap:
  """``branches.{b}.{n}.*`` (BasicBlocks) and ``fuse_layers.{i}.{j}.*``: ``0``/``1`` (1x1 conv,
  BN; the Upsample at ``2`` has no weights) for ``j > i``, ``{k}.0``/``{k}.1`` for the stride-2
  chain of ``j < i``; nothing for ``j = i``."""
  out = {}
  for b, branch in enumerate(module.branches):
    for n, block in enumerate(branch):
      out.update(block_keys(f'{prefix}branches.{b}.{n}.', block))
  for i, row in enumerate(module.fuse_layers):
    for j, layer in enumerate(row):
      if layer is not None:
        out.update(_sequential_conv_bn_keys(f'{prefix}fuse_layers.{i}.{j}.', layer))
  return out


@register(HRNet)
def hrnet_keys(model: HRNet, prefix: str = '') -> KeyMap:
  """BPBreID's HRNet-W32 (VlSomers/bpbreid ``torchreid/models/hrnet.py``; 1933 entries with
  ``num_batches_tracked``): ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1.{0..3}`` (Bottlenecks),
  ``transition{1,2,3}.{i}`` (``.0``/``.1`` for a width change, ``.{k}.0``/``.{k}.1`` for a new
  branch), ``stage{2,3,4}.{m}`` (``hr_module_keys``), ``incre_modules.{i}.0`` (Bottlenecks) and
  ``cls_head.0`` (conv with bias) / ``cls_head.1`` (BN).

  ``cls_head`` is optional: the ImageNet file ``hrnetv2_w32_imagenet_pretrained.pth``
  (HRNet/HRNet-Image-Classification ``lib/models/cls_hrnet.py``) has no such module, and BPBreID
  keeps its random init then; that file's ``downsamp_modules.*``, ``final_layer.*`` and
  ``classifier.*`` (the ImageNet head) have no counterpart and are reported unused. ``prefix``
  places the backbone inside a larger model (BPBreID:
  ``'backbone_appearance_feature_extractor.'``)."""
  out = {**conv_keys(prefix + 'conv1.', model.conv1), **bn_keys(prefix + 'bn1.', model.bn1),
         **conv_keys(prefix + 'conv2.', model.conv2), **bn_keys(prefix + 'bn2.', model.bn2)}
  for b, block in enumerate(model.layer1):
    out.update(block_keys(f'{prefix}layer1.{b}.', block))
  for s in (2, 3, 4):
    for i, layer in enumerate(getattr(model, f'transition{s - 1}')):
      if layer is not None:
        out.update(_sequential_conv_bn_keys(f'{prefix}transition{s - 1}.{i}.', layer))
    for m, module in enumerate(getattr(model, f'stage{s}')):
      out.update(hr_module_keys(f'{prefix}stage{s}.{m}.', module))
  for i, block in enumerate(model.incre_modules):
    out.update(block_keys(f'{prefix}incre_modules.{i}.0.', block))
  out.update(as_optional(conv_bn_keys(prefix + 'cls_head.', model.cls_head.conv,
                                      model.cls_head.bn)))
  return out


BPBREID_BACKBONE_PREFIX = 'backbone_appearance_feature_extractor.'


def bn_classifier_keys(prefix: str, head) -> KeyMap:
  """``BNClassifier``: ``{prefix}bn.*`` (BN1d, frozen zero bias), ``{prefix}classifier.weight``."""
  return {**bn_keys(prefix + 'bn.', head.bn),
          **linear_keys(prefix + 'classifier.', head.classifier, classifier=True)}


@register(BPBreID)
def bpbreid_keys(model: BPBreID) -> KeyMap:
  """VlSomers/bpbreid ``torchreid/models/bpbreid.py`` (2,040 entries for HRNet-W32, K = 8):
  the backbone under ``backbone_appearance_feature_extractor.`` (its own key map: HRNet, with
  the unused ``cls_head``; or torchreid's ResNet, whose ``classifier.*`` is reported unused),
  ``{global,foreground,background,parts}_after_pooling_dim_reduce.layers.{0,1}.*`` (Linear, BN1d),
  ``pixel_classifier.{bn,classifier}.*`` (BN2d, 1x1 conv), the ``BNClassifier``s
  ``{global,background,foreground,concat_parts}_identity_classifier.{bn,classifier}.*`` and
  ``parts_identity_classifier.{k}.*``."""
  out = {BPBREID_BACKBONE_PREFIX + k: t for k, t in keymap_for(model.base).items()}
  for name, layer in (('global', model.global_reduce), ('foreground', model.foreground_reduce),
                      ('background', model.background_reduce), ('parts', model.parts_reduce)):
    p = f'{name}_after_pooling_dim_reduce.layers.'
    out.update(linear_keys(p + '0.', layer.linear))
    out.update(bn_keys(p + '1.', layer.bn))
  out.update(bn_keys('pixel_classifier.bn.', model.pixel_classifier.bn))
  out.update(conv_keys('pixel_classifier.classifier.', model.pixel_classifier.classifier))
  for name, head in (('global', model.global_classifier),
                     ('background', model.background_classifier),
                     ('foreground', model.foreground_classifier),
                     ('concat_parts', model.concat_classifier)):
    out.update(bn_classifier_keys(f'{name}_identity_classifier.', head))
  for k, head in enumerate(model.parts_classifiers):
    out.update(bn_classifier_keys(f'parts_identity_classifier.{k}.', head))
  return out
