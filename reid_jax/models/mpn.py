"""MPN: "Multi-task Learning with Coarse Priors for Robust Part-aware Person Re-identification"
(Ding, Wang, Wang, Tao; TPAMI 2020). Official code: WangKan0128/MPN (``models/mpn_no_ca.py``,
``train_mpn_no_ca.py``); docs/mpn.md has the details and our choices.

Network: ResNet-50 (stem ReLU, last stride 1) -> feature map ``[B, h, w, 2048]``; ``K`` parts
(6), each with a pair of shared 1x1 conv blocks ``local_conv[k]`` (2048 -> 512, bias, BN, ReLU)
and ``local_conv2[k]`` (512 -> 512, bias, BN, ReLU) used by two tasks:

* main task MT_k: ``local_conv[k]`` on the whole map -> global max pool -> ``local_conv2[k]`` (on
  a 1x1 map, so its BN normalises over the batch only) -> ``s_k [B, 512]`` -> ``mt_classifiers[k]``;
* auxiliary task AT_k: the same ``local_conv[k]`` on part ``k``'s region only (its BN takes its
  statistics over that region) -> max pool over the region -> the same ``local_conv2[k]`` ->
  ``t_k [B, 512]`` -> ``at_classifiers[k]``.

Each shared BatchNorm therefore runs twice per training step, and its running statistics are
updated twice, MT first then AT, as in the official forward (all MT passes, then all AT passes).

Part regions (the coarse prior, ``prior``):
* ``'stripes'`` (the released code): ``K`` horizontal stripes of ``int(h / K)`` rows from the top
  (rows past ``K * int(h / K)`` belong to no stripe, as in the official slicing);
* ``'parsing'`` (the paper's full version): from a human-parsing mask ``[B, H, W]`` (0 =
  background) at input resolution, the person's vertical extent (top to bottom foreground row)
  split into ``K`` equal bands; feature row ``i`` (covering input rows ``[i*H/h, (i+1)*H/h)``)
  belongs to band ``k`` when its centre ``(i + 0.5) * H/h`` lies in the band (a band that no
  centre falls into takes the row holding its own centre); inside a band, the region is the
  feature cells that contain any foreground pixel. A band with no foreground cell uses the whole
  band; an image with an empty mask uses the stripes.
Both priors run the same code: a ``[B, K, h, w]`` region mask, masked BatchNorm statistics and a
masked max pool. For stripes this equals the official slicing.

Optional channel attention (``channel_attention=True``, the README's "MPN with CA"; the official
``models/CA_2.py::SoftAttn`` is not wired into the released model, so where it acts is our
design, docs/mpn.md): per part, ``x * sigmoid(conv2(relu(conv1(maxpool(x)))))`` (1x1 conv + BN
blocks, reduction 4) on the backbone map before ``local_conv[k]``, the pooling taken over the
whole map for MT and over the part's region for AT.

Train mode: ``model(x, parsing=None) -> {'mt_feat': [B, K, 512], 'mt_logits': [B, K, C],
'at_feat': [B, K, 512], 'at_logits': [B, K, C]}``. Eval mode: ``model(x) -> [B, K * 512]``, the
MT features concatenated in part order (the official test model's output, before flip and
normalisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax import losses
from reid_jax.models import registry
from reid_jax.models.layers import BatchNorm, conv
from reid_jax.models.resnet import ResNet, resnet_from_config

Array = jax.Array

PRIORS = ('stripes', 'parsing')


class ConvBNReLU(nnx.Module):
  """``Conv2d(in, out, 1, bias) -> BatchNorm2d -> ReLU`` (PyTorch keys ``.0.*``, ``.1.*``).

  ``mask [B, h, w]`` (train mode): the BN statistics are taken over the masked positions only.
  """

  def __init__(self, in_features: int, out_features: int, *, dtype=None, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(out_features)

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    return jax.nn.relu(self.bn(self.conv(x), mask=mask))


class ChannelAttention(nnx.Module):
  """``models/CA_2.py::SoftAttn``: ``sigmoid(BN(conv(relu(BN(conv(maxpool(x)))))))`` with 1x1
  convs ``C -> C/4 -> C`` (bias); returns ``x`` scaled channel-wise. ``[B, h, w, C]``."""

  def __init__(self, channels: int, reduction: int = 4, *, dtype=None, rngs: nnx.Rngs):
    if channels % reduction:
      raise ValueError(f'MPN channel attention: {channels} channels do not divide by {reduction}')
    self.conv1 = conv(channels, channels // reduction, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(channels // reduction)
    self.conv2 = conv(channels // reduction, channels, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(channels)

  def __call__(self, x: Array, mask: Array) -> Array:
    pooled = masked_max_pool(x, mask)[:, None, None, :]
    a = self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(pooled)))))
    return x * jax.nn.sigmoid(a.astype(jnp.float32)).astype(x.dtype)


def masked_max_pool(x: Array, mask: Array) -> Array:
  """``[B, h, w, C]``, ``[B, h, w]`` bool -> ``[B, C]``: max over the masked positions.

  Taken as the value at the first maximal position (``argmax``), so the gradient goes to that
  one position, as ``F.max_pool2d``'s does. (``jnp.max``'s gradient finds the maximum by
  comparing the operand with the result for equality, which fails when XLA recomputes the
  operand differently inside another fusion: seen on XLA:CPU with
  ``--xla_backend_optimization_level=0``, where it dropped most of the gradient.)
  """
  b, h, w, c = x.shape
  flat = x.reshape(b, h * w, c)
  masked = jnp.where(mask.reshape(b, h * w, 1), flat, jnp.asarray(-jnp.inf, x.dtype))
  index = jnp.argmax(masked, axis=1)                                      # [B, C]
  return jnp.take_along_axis(flat, index[:, None, :], axis=1)[:, 0, :]


def stripe_regions(batch: int, h: int, w: int, parts: int) -> Array:
  """The released code's stripes: ``[B, K, h, w]`` bool, part ``k`` = rows
  ``[k*s, (k+1)*s)`` with ``s = int(h / K)``."""
  s = h // parts
  if s == 0:
    raise ValueError(f'MPN: a feature map of height {h} cannot hold {parts} stripes; use a taller '
                     f'input (config.input.size) or fewer parts (config.model.parts)')
  rows = np.arange(h)
  stripes = np.stack([(rows >= k * s) & (rows < (k + 1) * s) for k in range(parts)])  # [K, h]
  out = np.broadcast_to(stripes[:, :, None], (parts, h, w))
  return jnp.broadcast_to(jnp.asarray(out), (batch, parts, h, w))


def parsing_regions(parsing: Array, h: int, w: int, parts: int) -> Array:
  """The paper's parsing prior (module docstring): ``parsing [B, H, W]`` (0 = background) ->
  ``[B, K, h, w]`` bool regions on the ``h x w`` feature map."""
  b, height, width = parsing.shape
  if height % h or width % w:
    raise ValueError(f'MPN parsing prior: the input {height}x{width} must be a whole multiple of '
                     f'the feature map {h}x{w}')
  fg = parsing > 0
  cell = fg.reshape(b, h, height // h, w, width // w).any(axis=(2, 4))       # [B, h, w]
  rows_fg = fg.any(axis=2)                                                   # [B, H]
  has_fg = rows_fg.any(axis=1)                                               # [B]
  index = jnp.arange(height)
  top = jnp.min(jnp.where(rows_fg, index, height), axis=1).astype(jnp.float32)
  bottom = jnp.max(jnp.where(rows_fg, index + 1, 0), axis=1).astype(jnp.float32)
  k = jnp.arange(parts, dtype=jnp.float32)
  lo = top[:, None] + (bottom - top)[:, None] * k / parts                   # [B, K] input rows
  hi = top[:, None] + (bottom - top)[:, None] * (k + 1) / parts
  step = height / h
  centres = (jnp.arange(h, dtype=jnp.float32) + 0.5) * step                  # [h]
  band = (centres >= lo[..., None]) & (centres < hi[..., None])              # [B, K, h]
  mid_row = jnp.clip(jnp.floor((lo + hi) / 2 / step), 0, h - 1).astype(jnp.int32)
  band = jnp.where(band.any(-1, keepdims=True), band,
                   jnp.arange(h) == mid_row[..., None])
  region = band[..., None] & cell[:, None]                                   # [B, K, h, w]
  whole_band = jnp.broadcast_to(band[..., None], region.shape)
  region = jnp.where(region.any(axis=(2, 3), keepdims=True), region, whole_band)
  stripes = stripe_regions(b, h, w, parts)
  return jnp.where(has_fg[:, None, None, None], region, stripes)


class MPN(nnx.Module):
  """MPN on a ResNet backbone (see the module docstring).

  Args:
    backbone: the ResNet (stem ReLU and last stride 1 for the official recipe).
    num_classes: classifier rows of every MT and AT classifier.
    parts: K.
    channels: width of the part features (512).
    prior: ``'stripes'`` or ``'parsing'`` (the AT regions in training).
    channel_attention: per-part channel attention ("MPN with CA").
  """

  def __init__(self, backbone: ResNet, num_classes: int, *, parts: int = 6, channels: int = 512,
               prior: str = 'stripes', channel_attention: bool = False, rngs: nnx.Rngs):
    if prior not in PRIORS:
      raise ValueError(f'config.model.prior must be one of {PRIORS}, got {prior!r}')
    if parts < 1:
      raise ValueError(f'config.model.parts must be >= 1, got {parts}')
    self.parts = parts
    self.prior = prior
    self.base = backbone
    d, dtype = backbone.out_features, backbone.dtype
    self.local_conv = nnx.List([ConvBNReLU(d, channels, dtype=dtype, rngs=rngs)
                                for _ in range(parts)])
    self.local_conv2 = nnx.List([ConvBNReLU(channels, channels, dtype=dtype, rngs=rngs)
                                 for _ in range(parts)])
    classifier = lambda: nnx.Linear(channels, num_classes, use_bias=True,
                                    kernel_init=nnx.initializers.normal(stddev=0.001),
                                    bias_init=nnx.initializers.zeros, rngs=rngs)
    self.mt_classifiers = nnx.List([classifier() for _ in range(parts)])
    self.at_classifiers = nnx.List([classifier() for _ in range(parts)])
    self.channel_attention = nnx.List(
        [ChannelAttention(d, dtype=dtype, rngs=rngs) for _ in range(parts)]
    ) if channel_attention else None
    self.use_running_average = False  # flipped by model.eval() / model.train()

  def _part(self, k: int, feat: Array, region: Array | None) -> Array:
    """Part ``k``'s feature ``[B, 512]`` over ``region [B, h, w]`` (None: the whole map)."""
    whole = jnp.ones(feat.shape[:3], bool) if region is None else region
    x = feat
    if self.channel_attention is not None:
      x = self.channel_attention[k](x, whole)
    y = self.local_conv[k](x, mask=region)
    pooled = masked_max_pool(y, whole)
    return self.local_conv2[k](pooled[:, None, None, :])[:, 0, 0, :].astype(jnp.float32)

  def regions(self, parsing: Array | None, feat_shape) -> Array:
    """``[B, K, h, w]`` bool AT regions under ``self.prior``."""
    b, h, w, _ = feat_shape
    if self.prior == 'stripes':
      return stripe_regions(b, h, w, self.parts)
    if parsing is None:
      raise ValueError("MPN with config.model.prior='parsing' needs the batch's 'parsing' mask "
                       '(config.input.parsing=True on a dataset with parsing masks)')
    return parsing_regions(parsing, h, w, self.parts)

  def __call__(self, x: Array, parsing: Array | None = None):
    feat = self.base(x)
    mt_feat = jnp.stack([self._part(k, feat, None) for k in range(self.parts)], axis=1)
    if self.use_running_average:
      return mt_feat.reshape(mt_feat.shape[0], -1)
    regions = self.regions(parsing, feat.shape)
    at_feat = jnp.stack([self._part(k, feat, regions[:, k]) for k in range(self.parts)], axis=1)
    logits = lambda fcs, f: jnp.stack([fc(f[:, k]) for k, fc in enumerate(fcs)],
                                      axis=1).astype(jnp.float32)
    return {'mt_feat': mt_feat, 'mt_logits': logits(self.mt_classifiers, mt_feat),
            'at_feat': at_feat, 'at_logits': logits(self.at_classifiers, at_feat)}


def build_mpn(model_config, num_classes: int, *, rngs: nnx.Rngs) -> MPN:
  get = model_config.get
  return MPN(resnet_from_config(model_config, rngs=rngs), num_classes, parts=get('parts', 6),
             channels=get('part_channels', 512), prior=get('prior', 'stripes'),
             channel_attention=get('channel_attention', False), rngs=rngs)


# ------------------------------------------------------------------------------------ losses
def class_alignment_loss(s: Array, t: Array, labels: Array, num_classes: int,
                         eps: float = 1e-6) -> Array:
  """MPN's class-wise feature-space alignment: for every identity in the batch, ``1 - cos`` of
  the mean MT and mean AT features (``torch.nn.CosineSimilarity(eps=1e-6)``:
  ``a.b / sqrt(max(|a|^2 |b|^2, eps^2))``), averaged over the identities present.

  ``s, t [B, D]`` (the concatenated part features), ``labels [B]``. The official code takes the
  identities as the sampler's contiguous groups of K; grouping by label is the same.
  """
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)   # [B, C]
  counts = onehot.sum(0)                                            # [C]
  present = counts > 0
  mean = lambda f: (onehot.T @ f.astype(jnp.float32)) / jnp.maximum(counts, 1)[:, None]
  ms, mt = mean(s), mean(t)
  dot = jnp.sum(ms * mt, axis=1)
  norms = jnp.sum(ms * ms, axis=1) * jnp.sum(mt * mt, axis=1)
  cos = dot / jnp.sqrt(jnp.maximum(norms, eps * eps))
  return jnp.sum(jnp.where(present, 1.0 - cos, 0.0)) / jnp.sum(present)


def mpn_triplet_loss(features: Array, labels: Array, margin: float = 0.4) -> Array:
  """MPN's online triplet loss (``utils/triplet_sampling_hardestP.py`` + ``utils/losses.py``).

  On ``features [B, D]`` (the L2-normalised MT concatenation), with squared Euclidean distances:
  for every anchor with another image of its identity, the hardest positive (largest distance,
  the anchor itself excluded) and, among the other identities, the negative with the largest
  ``d_ap - d_an + margin``; the triplet is kept when that value is > 0. The loss is the mean of
  ``relu(d_ap - d_an + margin)`` over the kept triplets; when none is kept, the official code
  falls back to one triplet (the last anchor with a positive, its hardest positive and the first
  negative in batch order), whose value is used instead.
  """
  f = features.astype(jnp.float32)
  b = f.shape[0]
  d = jnp.sum(jnp.square(f[:, None, :] - f[None, :, :]), axis=-1)  # [B, B]
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(b, dtype=bool)
  pos = same & ~eye
  neg = ~same
  has_pos = pos.any(axis=1)
  has_neg = neg.any(axis=1)
  d_ap = jnp.max(jnp.where(pos, d, -jnp.inf), axis=1)
  d_an = jnp.min(jnp.where(neg, d, jnp.inf), axis=1)
  value = d_ap - d_an + margin
  kept = has_pos & has_neg & (value > 0)
  count = jnp.sum(kept)
  # The fallback triplet: the last anchor with a positive, the first negative of that anchor.
  last = jnp.max(jnp.where(has_pos & has_neg, jnp.arange(b), -1))
  anchor = jnp.maximum(last, 0)
  first_neg = jnp.argmax(neg[anchor])
  fallback = jnp.maximum(d_ap[anchor] - d[anchor, first_neg] + margin, 0.0)
  kept_mean = jnp.sum(jnp.where(kept, value, 0.0)) / jnp.maximum(count, 1)
  return jnp.where(count > 0, kept_mean, jnp.where(last >= 0, fallback, 0.0))


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """``x / (|x| + eps)`` as the official training script (eps added to the norm, not clamped)."""
  return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + eps)


def mpn_batch_fields(config) -> tuple[str, ...]:
  if config.model.get('prior', 'stripes') == 'parsing':
    if not config.input.get('parsing'):
      raise ValueError("config.model.prior='parsing' needs config.input.parsing=True (and a "
                       'dataset with parsing masks, e.g. synthetic_reid)')
    return ('image', 'label', 'parsing')
  return ('image', 'label')


def mpn_loss(model, batch, *, extra, config, context=None):
  """MPN's loss (``train_mpn_no_ca.py``): ``sum_k CE(MT_k) + sum_k CE(AT_k) + alignment +
  triplet``, every weight 1 (``config.loss.{mt,at,align,triplet}_weight``); plain CE (no label
  smoothing; ``config.loss.ce_epsilon`` if set otherwise)."""
  del extra, context
  c = config.loss
  labels = batch['label']
  out = model(batch['image'], parsing=batch.get('parsing'))
  eps = c.get('ce_epsilon', 0.0)
  ce = lambda logits: sum(losses.cross_entropy_label_smooth(logits[:, k], labels, eps)
                          for k in range(logits.shape[1]))
  mt_ce, at_ce = ce(out['mt_logits']), ce(out['at_logits'])
  b = labels.shape[0]
  s = out['mt_feat'].reshape(b, -1)
  t = out['at_feat'].reshape(b, -1)
  align = class_alignment_loss(s, t, labels, out['mt_logits'].shape[-1])
  triplet = mpn_triplet_loss(l2_normalize(s), labels, c.get('triplet_margin', 0.4))
  total = (c.get('mt_weight', 1.0) * mt_ce + c.get('at_weight', 1.0) * at_ce
           + c.get('align_weight', 1.0) * align + c.get('triplet_weight', 1.0) * triplet)
  accuracy = jnp.mean(jnp.argmax(out['mt_logits'].mean(axis=1), -1) == labels)
  metrics = {'loss': total, 'mt_ce': mt_ce, 'at_ce': at_ce, 'align': align, 'triplet': triplet,
             'accuracy': accuracy}
  return {'loss': total}, metrics, None


METHOD = registry.register_method(registry.Method(
    name='mpn', build=build_mpn, loss=mpn_loss, batch_fields=mpn_batch_fields))
