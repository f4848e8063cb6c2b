"""APNet, "Person Re-identification via Attention Pyramid" (Chen et al., TIP 2021); official code
CHENGY12/APNet ``modeling/baseline.py``.

A BoT network (ResNet-50, last stride 1, no stem ReLU, BNNeck head) with an attention pyramid after
each of the five backbone groups ``[stem, layer1, layer2, layer3, layer4]`` (64, 256, 512, 1024,
2048 channels). For pyramid ``level = L`` the groups' outputs go through, in this order:

* APNet-C (``attention='channel'``, the official code):
    for each pyramid level l = L .. 2 (finest first): ``SAMS(splits_l)`` -> frozen-bias BN2d;
    then level 1: ``SELayer`` (whole-map channel attention, hidden width 8), ``x * sigmoid(...)``.
  ``splits_l`` is ``L`` at every level with ``pyramid='official'`` (the released code; it only runs
  when every stage's channels divide by L, so L = 3 fails at the real widths) and ``2**(l-1)``
  (1/2/4...) with ``pyramid='paper'``. The two agree for L <= 2.
* APNet-S (``attention='spatial'``, reid_jax's design from the paper's description; no official
  code exists): for l = L .. 1, ``x <- x + x * PartSpatialAttention(parts_l)(x)``.

Level 0 is plain BoT. Train mode returns ``{'logits', 'global_feat'}`` as BoT; eval mode returns
the BNNeck feature, or the classifier logits with ``logits_as_feature`` (the official MSMT17
setting). docs/apnet.md has the details.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax.models import registry
from reid_jax.models.bot import BNNeckHead, bnneck_loss, init_centers, update_centers
from reid_jax.models.layers import BatchNorm, conv, global_avg_pool, torch_default_uniform
from reid_jax.models.resnet import ResNet, resnet_from_config

Array = jax.Array

ATTENTIONS = ('channel', 'spatial')
PYRAMIDS = ('official', 'paper')
OFFICIAL_MAX_LEVEL = 3  # the released code refuses levels above 3


def pyramid_splits(level: int, pyramid: str = 'official') -> tuple[int, ...]:
  """Split counts of the pyramid levels in the order they are applied (finest first).

  ``pyramid_splits(2) == (2, 1)``; ``pyramid_splits(3, 'official') == (3, 3, 1)`` (radix = L at
  every SAMS, as the released code); ``pyramid_splits(3, 'paper') == (4, 2, 1)``. The last entry,
  1, is the whole-map level (SE for APNet-C). ``level=0`` gives ``()``.
  """
  if pyramid not in PYRAMIDS:
    raise ValueError(f'config.model.pyramid must be one of {PYRAMIDS}, got {pyramid!r}')
  if not isinstance(level, (int, np.integer)) or level < 0:
    raise ValueError(f'config.model.level must be an int >= 0, got {level!r}')
  if pyramid == 'official':
    if level > OFFICIAL_MAX_LEVEL:
      raise ValueError(f'config.model.level={level} with pyramid=\'official\': the official code '
                       f'supports levels 0..{OFFICIAL_MAX_LEVEL}; use pyramid=\'paper\'')
    return tuple([level] * (level - 1) + [1]) if level else ()
  return tuple(2**(l - 1) for l in range(level, 0, -1))


class SELayer(nnx.Module):
  """Whole-map channel attention ``x * sigmoid(W2 relu(W1 GAP(x)))``, both linears bias-free.

  ``[B, H, W, C] -> [B, H, W, C]``. PyTorch keys ``attk.fc.0.weight (hidden, C)`` and
  ``attk.fc.2.weight (C, hidden)``; PyTorch's default init.
  """

  def __init__(self, channels: int, hidden: int = 8, *, dtype=None, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(channels, hidden, use_bias=False, dtype=dtype,
                          kernel_init=torch_default_uniform(channels), rngs=rngs)
    self.fc2 = nnx.Linear(hidden, channels, use_bias=False, dtype=dtype,
                          kernel_init=torch_default_uniform(hidden), rngs=rngs)

  def __call__(self, x: Array) -> Array:
    a = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(global_avg_pool(x)))))
    return x * a[:, None, None, :].astype(x.dtype)


class SAMS(nnx.Module):
  """Split-attend-merge-stack channel attention (ResNeSt-style split attention), ``radix`` splits.

  ``x [B, H, W, C]`` is split along channels into ``radix`` contiguous groups ``x_i [B, H, W, G]``
  (``G = C / radix``); ``s = GAP(sum_i x_i) [B, 1, 1, G]``; ``z = relu(bn1(fc1(s)))`` with ``fc1``
  a 1x1 conv ``G -> inter = max(C * radix // 4, 32)``; ``a = fc2(z) [B, 1, 1, C]`` viewed as
  ``[radix, G]`` with a softmax over the radix axis; out = ``concat_i(a_i * x_i)``. ``bn1`` sees a
  ``[B, 1, 1, inter]`` map, so in train mode it normalises over the batch only.
  """

  def __init__(self, channels: int, radix: int, *, reduction: int = 4, dtype=None,
               rngs: nnx.Rngs):
    if radix < 1 or channels % radix:
      raise ValueError(f'SAMS: {channels} channels do not split into {radix} equal groups')
    self.radix = radix
    self.group = channels // radix
    inter = max(channels * radix // reduction, 32)
    self.fc1 = conv(self.group, inter, 1, use_bias=True, dtype=dtype,
                    kernel_init=torch_default_uniform(self.group), rngs=rngs)
    self.bn1 = BatchNorm(inter)
    self.fc2 = conv(inter, channels, 1, use_bias=True, dtype=dtype,
                    kernel_init=torch_default_uniform(inter), rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    splits = x.reshape(b, h, w, self.radix, self.group)
    merged = jnp.sum(splits, axis=3)
    s = jnp.mean(merged.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    z = jax.nn.relu(self.bn1(self.fc1(s)))
    a = self.fc2(z).reshape(b, 1, 1, self.radix, self.group)
    a = jax.nn.softmax(a.astype(jnp.float32), axis=3).astype(x.dtype)
    return (splits * a).reshape(b, h, w, c)


class ChannelPyramid(nnx.Module):
  """APNet-C after one backbone stage: ``SAMS -> BN2d`` per split count in ``splits[:-1]``
  (finest first), then the whole-map ``SELayer``. ``[B, H, W, C] -> [B, H, W, C]``; identity for
  ``splits == ()`` (level 0)."""

  def __init__(self, channels: int, splits: tuple[int, ...], *, se_hidden: int = 8, dtype=None,
               rngs: nnx.Rngs):
    self.splits = tuple(splits)
    self.sams = nnx.List([SAMS(channels, r, dtype=dtype, rngs=rngs) for r in splits[:-1]])
    # BN2d with the bias frozen at 0 ("no shift"), weight 1 (PyTorch key BNk.bottleneck2.*).
    self.bns = nnx.List([BatchNorm(channels, bias='frozen') for _ in splits[:-1]])
    self.se = SELayer(channels, se_hidden, dtype=dtype, rngs=rngs) if splits else None

  def __call__(self, x: Array) -> Array:
    for sams, bn in zip(self.sams, self.bns):
      x = bn(sams(x))
    return x if self.se is None else self.se(x)


class PartSpatialAttention(nnx.Module):
  """One APNet-S pyramid level: a sigmoid spatial attention map computed per horizontal part.

  ``x [B, H, W, C]``: ``z = relu(bn(reduce(x))) [B, H, W, m]`` (1x1 conv, ``m = max(C // 16, 8)``);
  the rows are split into ``parts`` horizontal stripes (row ``i`` is in part ``floor(i * parts /
  H)``); each stripe's context is the mean of ``z`` over it, ``[B, parts, m]``; the score of a
  position is a 1x1 conv of ``concat(z, context of its stripe)`` (``2m -> 1``). Returns the merged
  attention map ``sigmoid(score) [B, H, W, 1]``. ``parts = 1`` is whole-map attention.
  """

  def __init__(self, channels: int, parts: int, *, reduction: int = 16, dtype=None,
               rngs: nnx.Rngs):
    if parts < 1:
      raise ValueError(f'PartSpatialAttention: parts must be >= 1, got {parts}')
    self.parts = parts
    hidden = max(channels // reduction, 8)
    self.reduce = conv(channels, hidden, 1, use_bias=True, dtype=dtype,
                       kernel_init=torch_default_uniform(channels), rngs=rngs)
    self.bn = BatchNorm(hidden)
    self.score = conv(2 * hidden, 1, 1, use_bias=True, dtype=dtype,
                      kernel_init=torch_default_uniform(2 * hidden), rngs=rngs)

  def part_matrix(self, height: int) -> np.ndarray:
    """``[H, parts]`` one-hot assignment of rows to stripes (static)."""
    if height < self.parts:
      raise ValueError(f'APNet-S: a map of height {height} cannot be split into {self.parts} parts')
    part_of_row = (np.arange(height) * self.parts) // height
    return np.eye(self.parts, dtype=np.float32)[part_of_row]

  def __call__(self, x: Array) -> Array:
    b, h, w, _ = x.shape
    z = jax.nn.relu(self.bn(self.reduce(x)))
    onehot = self.part_matrix(h)
    rows = jnp.mean(z.astype(jnp.float32), axis=2)                        # [B, H, m]
    context = jnp.einsum('bhm,hp->bpm', rows, onehot / onehot.sum(0))     # per-part mean
    context = jnp.einsum('bpm,hp->bhm', context, onehot)                  # back to rows
    context = jnp.broadcast_to(context[:, :, None, :], z.shape).astype(z.dtype)
    return jax.nn.sigmoid(self.score(jnp.concatenate([z, context], axis=-1)))


class SpatialPyramid(nnx.Module):
  """APNet-S after one backbone stage: ``x <- x + x * a_l(x)`` for each level (finest first).
  ``[B, H, W, C] -> [B, H, W, C]``."""

  def __init__(self, channels: int, splits: tuple[int, ...], *, dtype=None, rngs: nnx.Rngs):
    self.splits = tuple(splits)
    self.levels = nnx.List([PartSpatialAttention(channels, p, dtype=dtype, rngs=rngs)
                            for p in splits])

  def __call__(self, x: Array) -> Array:
    for att in self.levels:
      x = x + x * att(x).astype(x.dtype)
    return x


class APNet(nnx.Module):
  """APNet: ResNet stages interleaved with an attention pyramid, then the BoT BNNeck head.

  Args:
    backbone: the ResNet (built without stem ReLU for official checkpoints).
    num_classes: classifier rows.
    level: pyramid level L (0 = BoT, 1 = SE only, 2 = the official setting).
    attention: ``'channel'`` (APNet-C) or ``'spatial'`` (APNet-S, reid_jax's design).
    pyramid: split progression, ``'official'`` (L splits at every level; the released code) or
      ``'paper'`` (1/2/4...); identical for L <= 2.
    se_hidden: SE hidden width (8 in every official stage).
    logits_as_feature: eval mode returns ``classifier(bnneck(x))`` (official MSMT17 setting).
    neck_feat: ``'after'``/``'before'`` BNNeck test feature (``BNNeckHead``).

  Train mode: ``[B, H, W, 3] -> {'logits': [B, num_classes], 'global_feat': [B, D]}``.
  Eval mode: ``[B, H, W, 3] -> [B, D]`` (or ``[B, num_classes]`` with ``logits_as_feature``).
  """

  def __init__(self, backbone: ResNet, num_classes: int, *, level: int = 2,
               attention: str = 'channel', pyramid: str = 'official', se_hidden: int = 8,
               logits_as_feature: bool = False, neck_feat: str = 'after', rngs: nnx.Rngs):
    if attention not in ATTENTIONS:
      raise ValueError(f'config.model.attention must be one of {ATTENTIONS}, got {attention!r}')
    splits = pyramid_splits(level, pyramid)
    if attention == 'channel' and pyramid == 'official' and level >= 3:
      bad = [c for c in backbone.stage_channels if c % level]
      if bad:
        raise ValueError(
            f"config.model.level={level} with pyramid='official': stage channels {bad} do not "
            f'split into {level} equal groups. The official code crashes here ("running_mean '
            f'should contain 63 elements not 64"); use config.model.pyramid=\'paper\' for the '
            f"paper's 1/2/4 split progression")
    self.level = level
    self.attention = attention
    self.pyramid_kind = pyramid
    self.splits = splits
    self.logits_as_feature = bool(logits_as_feature)
    self.base = backbone
    dtype = backbone.dtype
    if attention == 'channel':
      stages = [ChannelPyramid(c, splits, se_hidden=se_hidden, dtype=dtype, rngs=rngs)
                for c in backbone.stage_channels]
    else:
      stages = [SpatialPyramid(c, splits, dtype=dtype, rngs=rngs)
                for c in backbone.stage_channels]
    self.pyramid = nnx.List(stages)
    self.head = BNNeckHead(backbone.out_features, num_classes, neck_feat=neck_feat, rngs=rngs)
    self.use_running_average = False  # flipped by model.eval() / model.train()

  def features(self, x: Array) -> Array:
    """``[B, H, W, 3] -> [B, h, w, D]``: the backbone with the pyramid after every stage."""
    for i, att in enumerate(self.pyramid):
      x = att(self.base.stage(i, x))
    return x

  def __call__(self, x: Array):
    global_feat = global_avg_pool(self.features(x))
    if not self.use_running_average:
      return self.head(global_feat, train=True)
    if self.logits_as_feature:
      return self.head.classifier(self.head.bottleneck(global_feat)).astype(jnp.float32)
    return self.head(global_feat, train=False)


def build_apnet(model_config, num_classes: int, *, rngs: nnx.Rngs) -> APNet:
  get = model_config.get
  return APNet(resnet_from_config(model_config, rngs=rngs), num_classes,
               level=get('level', 2), attention=get('attention', 'channel'),
               pyramid=get('pyramid', 'official'), se_hidden=get('se_hidden', 8),
               logits_as_feature=get('logits_as_feature', False),
               neck_feat=get('neck_feat', 'after'), rngs=rngs)


METHOD = registry.register_method(registry.Method(
    name='apnet', build=build_apnet, loss=bnneck_loss, init_extra=init_centers,
    update_extra=update_centers))
