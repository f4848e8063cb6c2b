"""BPBreID: "Body Part-Based Representation Learning for Occluded Person Re-Identification"
(Somers, De Vleeschouwer, Alahi; WACV 2023). Official code: VlSomers/bpbreid
(``torchreid/models/bpbreid.py``, ``torchreid/engine/image/part_based_engine.py``,
``torchreid/losses/{GiLt_loss,part_averaged_triplet_loss,body_part_attention_loss}.py``);
the BPBreID page of the docs folder has the details and our choices.

Network, for ``K`` body parts (8 with the 'eight' grouping), channels-last:

* backbone (``model.base``): HRNet-W32 (``[N, H/4, W/4, 1920]``) or a ResNet (last stride 1,
  ``[N, H/16, W/16, 2048]``) -> spatial features ``f [N, h, w, C]``;
* pixel-to-part classifier: BN2d(C) -> 1x1 conv C -> K+1 (bias) -> ``scores [N, h, w, K+1]``;
  ``probs = softmax(scores)``; channel 0 is the background, channels 1..K the parts;
* masks: background ``probs[..., 0]``, parts ``probs[..., 1:]``, foreground = max over the parts
  (a max, not a sum), global = ones;
* pooling: global average of ``f``; foreground and background: ``mean_hw(mask * f)`` (divided by
  ``h * w``, not by the mask's sum, as the official ``GlobalAveragePoolingHead``); parts: the
  weighted average ``sum_hw(mask_k * f) / max(sum_hw(mask_k), 1e-6)`` (``GWAP``);
* four after-pooling dim-reduce layers Linear(C -> D) -> BN1d(D) -> ReLU (global, foreground,
  background, parts); the parts one is shared by the K parts, so its batch statistics are taken
  over the ``N * K`` part rows;
* the concatenated parts ``[N, K * D]``;
* identity classifiers ``BNClassifier`` (BN1d with a bias frozen at 0, then a bias-free Linear)
  for global, background, foreground, concatenated parts and one per part.

Visibility (``[N, K+1]`` before being split): binary (default) -- class ``k`` is visible iff it
wins the per-pixel argmax at one feature-map pixel at least; continuous -- the maximum of its
probability over the map. Foreground visibility is the max over all K+1 columns (always True when
binary), concatenated-parts visibility the foreground's, global visibility ones.

``model.outputs(x)`` returns every output of the official forward (its 6-tuple as a dict, in
either mode). ``model(x)`` in train mode returns the same; in eval mode it returns the test
feature ``{'feat': [N, P, D], 'visibility': [N, P]}`` (``test_embeddings``, default
``('bn_foreg', 'parts')``: P = 1 + K), before L2 normalisation, as the official
``ImagePartBasedEngine.extract_test_embeddings``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax import losses
from reid_jax.models import registry
from reid_jax.models.layers import BatchNorm, conv, resize_bilinear_align_corners
from reid_jax.models.resnet import resnet_from_config

Array = jax.Array

# Output names of the official code (torchreid/utils/constants.py).
GLOBAL, BACKGROUND, FOREGROUND, CONCAT, PARTS = 'globl', 'backg', 'foreg', 'conct', 'parts'
EMBEDDING_NAMES = (GLOBAL, BACKGROUND, FOREGROUND, CONCAT, PARTS)
BACKBONES = ('hrnet', 'resnet')
DEFAULT_TEST_EMBEDDINGS = ('bn_foreg', 'parts')
# The GiLt loss weights of the official Occluded-Duke config (GiLt_loss.py defaults).
DEFAULT_LOSS_WEIGHTS = {GLOBAL: {'id': 1.0, 'tr': 0.0}, FOREGROUND: {'id': 1.0, 'tr': 0.0},
                        CONCAT: {'id': 1.0, 'tr': 0.0}, PARTS: {'id': 0.0, 'tr': 1.0}}


class DimReduce(nnx.Module):
  """``AfterPoolingDimReduceLayer``: Linear(in -> out, bias) -> BN1d(out) -> ReLU on ``[..., in]``.

  For ``[N, K, in]`` the BN statistics are taken over all ``N * K`` rows (the official layer
  flattens the parts into the batch). Init: Linear N(0, 0.01^2), bias 0; BN 1 / 0.
  """

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, use_bias=True,
                             kernel_init=nnx.initializers.normal(stddev=0.01),
                             bias_init=nnx.initializers.zeros, rngs=rngs)
    self.bn = BatchNorm(out_features)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.bn(self.linear(x)))


class BNClassifier(nnx.Module):
  """``BNClassifier``: BN1d(D) with its bias frozen at 0, then Linear(D -> C) without bias,
  N(0, 0.001^2). ``[N, D] -> ([N, D] BN feature, [N, C] logits)``."""

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
    self.bn = BatchNorm(in_features, bias='frozen')
    self.classifier = nnx.Linear(in_features, num_classes, use_bias=False,
                                 kernel_init=nnx.initializers.normal(stddev=0.001), rngs=rngs)

  def __call__(self, x: Array) -> tuple[Array, Array]:
    feat = self.bn(x)
    return feat, self.classifier(feat)


class PixelToPartClassifier(nnx.Module):
  """BN2d(C) -> 1x1 conv C -> K+1 with bias: ``[N, h, w, C] -> [N, h, w, K+1]`` part scores.
  Init: BN 1 / 0; conv N(0, 0.001^2), bias 0."""

  def __init__(self, in_features: int, parts: int, *, dtype=None, rngs: nnx.Rngs):
    self.bn = BatchNorm(in_features)
    self.classifier = conv(in_features, parts + 1, 1, use_bias=True, dtype=dtype, rngs=rngs,
                           kernel_init=nnx.initializers.normal(stddev=0.001))
    self.classifier.bias.set_value(jnp.zeros((parts + 1,), jnp.float32))

  def __call__(self, x: Array) -> Array:
    return self.classifier(self.bn(x))


def visibility_scores(probs: Array, binary: bool) -> Array:
  """``probs [N, h, w, K+1]`` -> ``[N, K+1]``: bool (class wins the argmax at >= 1 pixel; the
  first class on ties, as ``torch.argmax``) or, ``binary=False``, the max probability."""
  if binary:
    winners = jnp.argmax(probs, axis=-1)                                # [N, h, w]
    classes = jnp.arange(probs.shape[-1])
    return jnp.any(winners[..., None] == classes, axis=(1, 2))
  return jnp.max(probs, axis=(1, 2))


class BPBreID(nnx.Module):
  """BPBreID on a backbone (see the module docstring).

  Args:
    backbone: an NNX module ``[N, H, W, 3] -> [N, h, w, C]`` with attribute ``out_features`` (C).
    num_classes: rows of every identity classifier.
    parts: K.
    dim: D, the width of every embedding after the dim-reduce layers (512).
    test_embeddings: the eval-mode feature, names among ``globl, backg, foreg, parts`` and their
      ``bn_`` versions (stacked along P; ``conct`` is K * D wide and cannot be stacked).
    binary_visibility_train / binary_visibility_test: binary or continuous visibility scores.
  """

  def __init__(self, backbone: nnx.Module, num_classes: int, *, parts: int = 8, dim: int = 512,
               test_embeddings=DEFAULT_TEST_EMBEDDINGS, binary_visibility_train: bool = True,
               binary_visibility_test: bool = True, rngs: nnx.Rngs):
    if parts < 1:
      raise ValueError(f'config.model.parts must be >= 1, got {parts}')
    test_embeddings = tuple(test_embeddings)
    for name in test_embeddings:
      base = name[3:] if name.startswith('bn_') else name
      if base not in EMBEDDING_NAMES or base == CONCAT:
        raise ValueError(f'config.model.test_embeddings: {name!r} is not one of '
                         f"{[n for n in EMBEDDING_NAMES if n != CONCAT]} (or their 'bn_' "
                         'versions)')
    if not test_embeddings:
      raise ValueError('config.model.test_embeddings is empty')
    self.parts = parts
    self.dim = dim
    self.test_embeddings = test_embeddings
    self.binary_visibility_train = binary_visibility_train
    self.binary_visibility_test = binary_visibility_test
    self.base = backbone
    c = backbone.out_features
    self.pixel_classifier = PixelToPartClassifier(c, parts, dtype=getattr(backbone, 'dtype', None),
                                                  rngs=rngs)
    self.global_reduce = DimReduce(c, dim, rngs=rngs)
    self.foreground_reduce = DimReduce(c, dim, rngs=rngs)
    self.background_reduce = DimReduce(c, dim, rngs=rngs)
    self.parts_reduce = DimReduce(c, dim, rngs=rngs)
    self.global_classifier = BNClassifier(dim, num_classes, rngs=rngs)
    self.background_classifier = BNClassifier(dim, num_classes, rngs=rngs)
    self.foreground_classifier = BNClassifier(dim, num_classes, rngs=rngs)
    self.concat_classifier = BNClassifier(parts * dim, num_classes, rngs=rngs)
    self.parts_classifiers = nnx.List([BNClassifier(dim, num_classes, rngs=rngs)
                                       for _ in range(parts)])
    self.use_running_average = False  # flipped by model.eval() / model.train()

  def outputs(self, x: Array) -> dict:
    """Every output of the official forward, for images ``x [N, H, W, 3]``:

    * ``embeddings``: ``globl, backg, foreg [N, D]``, ``conct [N, K*D]``, ``parts [N, K, D]``
      (after the dim-reduce layers) and their BN versions ``bn_globl`` ... ``bn_parts``;
    * ``visibility``: ``globl, backg, foreg, conct [N]``, ``parts [N, K]`` (bool, or float when
      continuous);
    * ``logits``: ``globl, backg, foreg, conct [N, C]``, ``parts [N, K, C]``;
    * ``pixel_scores [N, h, w, K+1]`` (before the softmax), ``spatial_features [N, h, w, C]``;
    * ``masks``: ``globl, backg, foreg, conct [N, h, w]``, ``parts [N, h, w, K]`` (the pooling
      masks, on the ReID map's grid; visibility is taken from the scores' own grid).
    All float outputs are float32.
    """
    feat, parsing_feat = self.features(x)
    n, h, w, _ = feat.shape
    scores = self.pixel_classifier(parsing_feat).astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1)
    binary = self.binary_visibility_test if self.use_running_average \
        else self.binary_visibility_train
    vis = visibility_scores(probs, binary)
    foreground_vis = jnp.any(vis, axis=1) if vis.dtype == jnp.bool_ else jnp.max(vis, axis=1)
    probs = self.pooling_probs(probs, (h, w))
    background = probs[..., 0]
    parts_masks = probs[..., 1:]
    foreground = jnp.max(parts_masks, axis=-1)
    featf = feat.astype(jnp.float32)
    global_emb = jnp.mean(featf, axis=(1, 2))
    foreground_emb = jnp.mean(featf * foreground[..., None], axis=(1, 2))
    background_emb = jnp.mean(featf * background[..., None], axis=(1, 2))
    parts_emb = self.pool_parts(parts_masks, featf)
    embeddings = {GLOBAL: self.global_reduce(global_emb),
                  FOREGROUND: self.foreground_reduce(foreground_emb),
                  BACKGROUND: self.background_reduce(background_emb),
                  PARTS: self.parts_reduce(parts_emb)}
    embeddings[CONCAT] = embeddings[PARTS].reshape(n, self.parts * self.dim)
    logits = {}
    for name, head in ((GLOBAL, self.global_classifier), (BACKGROUND, self.background_classifier),
                       (FOREGROUND, self.foreground_classifier),
                       (CONCAT, self.concat_classifier)):
      embeddings['bn_' + name], logits[name] = head(embeddings[name])
    bn_parts, parts_logits = zip(*(head(embeddings[PARTS][:, k])
                                   for k, head in enumerate(self.parts_classifiers)))
    embeddings['bn_' + PARTS] = jnp.stack(bn_parts, axis=1)
    logits[PARTS] = jnp.stack(parts_logits, axis=1)
    visibility = {GLOBAL: jnp.ones_like(foreground_vis), BACKGROUND: vis[:, 0],
                  FOREGROUND: foreground_vis, CONCAT: foreground_vis, PARTS: vis[:, 1:]}
    masks = {GLOBAL: jnp.ones_like(foreground), BACKGROUND: background, FOREGROUND: foreground,
             CONCAT: foreground, PARTS: parts_masks}
    return {'embeddings': {k: v.astype(jnp.float32) for k, v in embeddings.items()},
            'visibility': visibility,
            'logits': {k: v.astype(jnp.float32) for k, v in logits.items()},
            'pixel_scores': scores, 'spatial_features': featf, 'masks': masks}

  def features(self, x: Array) -> tuple[Array, Array]:
    """``(ReID features, parsing features)`` for images ``x [N, H, W, 3]``: both the backbone's
    ``[N, h, w, C]`` map in BPBreID (one shared feature; subclasses such as DROP decouple them:
    their parsing grid is the ReID map's or a whole multiple of it, see ``pooling_probs``)."""
    feat = self.base(x)
    return feat, feat

  def pooling_probs(self, probs: Array, size: tuple[int, int]) -> Array:
    """The part probabilities ``[N, h', w', K+1]`` the embeddings are pooled with, on the ReID
    map's ``size`` ``(h, w)``: the pixel classifier's own in BPBreID (same grid)."""
    del size
    return probs

  def pool_parts(self, parts_masks: Array, feat: Array) -> Array:
    """Part embeddings before the dim-reduce layer: ``parts_masks [N, h, w, K]`` and float32
    ``feat [N, h, w, C]`` -> ``[N, K, C]``, the weighted average (``GWAP``)
    ``sum_hw(mask_k * f) / max(sum_hw(mask_k), 1e-6)``."""
    mass = jnp.maximum(jnp.sum(parts_masks, axis=(1, 2)), 1e-6)         # [N, K]
    return jnp.einsum('nhwk,nhwc->nkc', parts_masks, feat) / mass[..., None]

  def test_feature(self, out: dict) -> dict:
    """``{'feat': [N, P, D], 'visibility': [N, P]}`` from ``outputs``: the ``test_embeddings``
    stacked in order (a ``bn_`` embedding takes the visibility of its non-BN one)."""
    feats, vis = [], []
    for name in self.test_embeddings:
      e = out['embeddings'][name]
      feats.append(e if e.ndim == 3 else e[:, None])
      v = out['visibility'][name[3:] if name.startswith('bn_') else name]
      vis.append(v if v.ndim == 2 else v[:, None])
    return {'feat': jnp.concatenate(feats, axis=1), 'visibility': jnp.concatenate(vis, axis=1)}

  def __call__(self, x: Array):
    out = self.outputs(x)
    if self.use_running_average:
      return self.test_feature(out)
    return out


def backbone_from_config(model_config, *, rngs: nnx.Rngs) -> nnx.Module:
  """``config.model.backbone``: ``'hrnet'`` (HRNet-W``hrnet_width``, ``hrnet_stage_modules``,
  ``hrnet_blocks``, ``hrnet_stem_width``; W32 = 32, (1, 4, 3), 4, 64) or ``'resnet'`` (the shared ResNet fields ``depth``,
  ``width``, ``last_stride``...)."""
  get = model_config.get
  name = get('backbone', 'hrnet')
  if name == 'resnet':
    return resnet_from_config(model_config, rngs=rngs)
  if name == 'hrnet':
    from reid_jax.models.hrnet import HRNet
    dtype = get('dtype', 'float32')
    return HRNet(width=get('hrnet_width', 32),
                 stage_modules=tuple(get('hrnet_stage_modules', (1, 4, 3))),
                 blocks=get('hrnet_blocks', 4), stem_width=get('hrnet_stem_width', 64),
                 dim_reduction=False,
                 dim_reduction_channels=get('hrnet_dim_reduction_channels', 512),
                 dtype=None if dtype in (None, 'float32') else jnp.dtype(dtype), rngs=rngs)
  raise ValueError(f'config.model.backbone must be one of {BACKBONES}, got {name!r}')


def build_bpbreid(model_config, num_classes: int, *, rngs: nnx.Rngs) -> BPBreID:
  get = model_config.get
  return BPBreID(backbone_from_config(model_config, rngs=rngs), num_classes,
                 parts=get('parts', 8), dim=get('dim', 512),
                 test_embeddings=tuple(get('test_embeddings', DEFAULT_TEST_EMBEDDINGS)),
                 binary_visibility_train=get('binary_visibility_train', True),
                 binary_visibility_test=get('binary_visibility_test', True), rngs=rngs)


# ------------------------------------------------------------------------------------ losses
def part_pairwise_distances(embeddings: Array, epsilon: float = 1e-16) -> Array:
  """``[N, K, D] -> [K, N, N]`` Euclidean (not squared) distances per part, by the official
  expansion ``sqrt(relu(|a|^2 - 2 a.b + |b|^2))``; an exact 0 stays 0 with a zero gradient (the
  official ``+ eps``, ``* (1 - mask)`` guard against sqrt's infinite slope)."""
  e = jnp.swapaxes(embeddings.astype(jnp.float32), 0, 1)             # [K, N, D]
  dot = jnp.einsum('knd,kmd->knm', e, e)
  sq = jnp.diagonal(dot, axis1=1, axis2=2)                           # [K, N]
  d = jax.nn.relu(sq[:, :, None] - 2.0 * dot + sq[:, None, :])
  zero = d == 0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, epsilon, d)))


def masked_mean_distance(part_dist: Array, valid: Array) -> Array:
  """``torchreid/utils/tensortools.py::masked_mean`` over parts: ``[K, N, N]`` distances and
  ``[K, N, N]`` weights (bool or float) -> ``[N, N]``, -1 where no part has weight."""
  weights = valid.astype(jnp.float32)
  total = jnp.sum(weights, axis=0)
  mean = jnp.sum(part_dist * weights, axis=0) / (total + (total == 0))
  return jnp.where(total == 0, -1.0, mean)


def part_averaged_triplet_loss(embeddings: Array, labels: Array, margin: float = 0.3,
                               visibility: Array | None = None) -> tuple[Array, dict]:
  """BPBreID's part-averaged batch-hard triplet loss (``PartAveragedTripletLoss``).

  ``embeddings [N, K, D]`` (K = 1 for a single embedding), ``labels [N]``. The K per-part
  Euclidean distance matrices are averaged into one ``[N, N]`` matrix (with ``visibility [N, K]``:
  over the parts visible in both images, bool, or weighted by ``sqrt(v_i v_j)`` when float; a pair
  without a common part is -1 and ignored). Then, per anchor, the hardest positive (the anchor
  itself excluded) and hardest negative among the valid pairs; anchors lacking either give no
  triplet; the loss is the mean of ``relu(d_ap - d_an + margin)`` over the valid triplets (0 when
  there is none: the official code returns None and would fail). Returns ``(loss, info)`` with
  the trivial-triplet and valid-triplet ratios.
  """
  part_dist = part_pairwise_distances(embeddings)
  if visibility is None:
    dist = jnp.mean(part_dist, axis=0)
  else:
    v = visibility.T                                                   # [K, N]
    if v.dtype == jnp.bool_:
      valid = v[:, None, :] & v[:, :, None]
    else:
      valid = jnp.sqrt(v[:, None, :] * v[:, :, None])
    dist = masked_mean_distance(part_dist, valid)
  n = labels.shape[0]
  usable = dist != -1
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(n, dtype=bool) & usable
  negative = ~same & usable
  big = jnp.finfo(jnp.float32).max
  hardest_pos = jnp.max(jnp.where(positive, dist, -1.0), axis=1)
  hardest_neg = jnp.min(jnp.where(negative, dist, big), axis=1)
  valid_triplet = (hardest_pos != -1) & (hardest_neg != big)
  count = jnp.sum(valid_triplet)
  per_anchor = jax.nn.relu(jnp.where(valid_triplet, hardest_pos - hardest_neg, 0.0) + margin)
  loss = jnp.sum(jnp.where(valid_triplet, per_anchor, 0.0)) / jnp.maximum(count, 1)
  trivial = jnp.sum(valid_triplet & (per_anchor == 0)) / jnp.maximum(count, 1)
  return loss, {'trivial_triplets': trivial, 'valid_triplets': count / n}


def weighted_cross_entropy(logits: Array, labels: Array, epsilon: float,
                           weights: Array | None = None) -> Array:
  """torchreid's label-smoothed ``CrossEntropyLoss``: the batch mean, or with ``weights [N]``
  the sum of the per-row losses times ``weights / sum |weights|`` (bool weights: the mean over
  the selected rows)."""
  if weights is None:
    return losses.cross_entropy_label_smooth(logits, labels, epsilon)
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  c = logits.shape[-1]
  targets = (1.0 - epsilon) * jax.nn.one_hot(labels, c, dtype=jnp.float32) + epsilon / c
  per_row = jnp.sum(-targets * log_probs, axis=-1)
  w = weights.astype(jnp.float32)
  return jnp.sum(per_row * w / jnp.maximum(jnp.sum(jnp.abs(w)), 1e-12))


def pixel_targets(part_masks: Array, size: tuple[int, int]) -> Array:
  """``part_masks [N, Hm, Wm, K+1]`` (background first) -> ``[N, h, w]`` int32 labels: resized
  bilinearly with ``align_corners=True`` to the feature map ``size`` and arg-maxed (first index on
  ties), as ``ImagePartBasedEngine.combine_losses``."""
  masks = part_masks.astype(jnp.float32)
  if tuple(masks.shape[1:3]) != tuple(size):
    masks = resize_bilinear_align_corners(masks, tuple(size))
  return jnp.argmax(masks, axis=-1).astype(jnp.int32)


def soft_pixel_cross_entropy(scores: Array, part_masks: Array) -> Array:
  """CE of ``scores [N, h, w, K+1]`` against soft targets: ``part_masks [N, Hm, Wm, K+1]``
  resized bilinearly (``align_corners=True``) to the map, clipped at 0 and normalised to sum 1
  over the K+1 classes per pixel (uniform where they sum to 0); mean over the ``N * h * w``
  pixels. DROP's provisional "spatially smoothed" reading (docs/drop.md)."""
  masks = part_masks.astype(jnp.float32)
  if tuple(masks.shape[1:3]) != tuple(scores.shape[1:3]):
    masks = resize_bilinear_align_corners(masks, tuple(scores.shape[1:3]))
  masks = jnp.maximum(masks, 0.0)
  mass = jnp.sum(masks, axis=-1, keepdims=True)
  targets = jnp.where(mass > 0, masks / jnp.where(mass > 0, mass, 1.0), 1.0 / masks.shape[-1])
  log_probs = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(-targets * log_probs, axis=-1))


def bpbreid_batch_fields(config) -> tuple[str, ...]:
  parts = config.input.get('parts')
  if not parts:
    raise ValueError(f'config.model.name={config.model.name!r} trains on human-parsing part '
                     "masks: set config.input.parts (e.g. 'eight') on a dataset with parsing "
                     'labels')
  return ('image', 'label', 'part_masks')


LOSS_TERMS = (GLOBAL, FOREGROUND, CONCAT, PARTS)  # the official GiLt loss's embeddings


def part_based_loss(model, batch, *, extra, config, context=None):
  """BPBreID's ``part_based`` loss: the GiLt loss plus the body-part attention loss.

  * ``config.loss.weights[name]['id']`` x label-smoothed CE (``ce_epsilon``, 0.1) on the logits
    and ``['tr']`` x the part-averaged triplet (``triplet_margin``, 0.3) on the (non-BN)
    embeddings, for ``name`` in ``globl, foreg, conct, parts`` (defaults: id 1 for globl, foreg,
    conct; tr 1 for parts); the parts' CE would run over the ``N * K`` rows.
  * ``config.loss.visibility_in_training`` (official ``mask_filtering_training``, False): the
    visibility scores select (bool) or weight (float) the CE rows and mask the part distances.
  * ``config.loss.pixel_weight`` (0.35) x CE with label smoothing ``pixel_epsilon`` (0.1) of the
    pixel-to-part scores against the argmax of ``batch['part_masks']`` resized to the map, mean
    over the ``N * h * w`` pixels; ``config.loss.pixel_targets='soft'`` (DROP's provisional
    option, ``soft_pixel_cross_entropy``) uses the resized masks as soft targets instead.
  """
  del extra, context
  out = model.outputs(batch['image'])
  total, metrics = part_based_terms(out, batch, config.loss)
  metrics['loss'] = total
  return {'loss': total}, metrics, None


def part_based_terms(out: dict, batch, c, weights: dict | None = None) -> tuple[Array, dict]:
  """``part_based_loss``'s total and metrics from the model's ``outputs`` ``out``, the batch and
  the ``config.loss`` section ``c``; ``weights`` (default ``c.weights``) the GiLt weights."""
  labels = batch['label']
  use_vis = bool(c.get('visibility_in_training', False))
  eps = c.get('ce_epsilon', 0.1)
  margin = c.get('triplet_margin', 0.3)
  weights = c.get('weights') if weights is None else weights
  weights = DEFAULT_LOSS_WEIGHTS if weights is None else weights
  total = jnp.zeros([], jnp.float32)
  metrics = {}
  for name in LOSS_TERMS:
    w = weights.get(name) or {}
    id_w = float(w.get('id', 0.0))
    tr_w = float(w.get('tr', 0.0))
    vis = out['visibility'][name]
    if id_w > 0:
      logits = out['logits'][name]
      rows_labels = labels
      rows_vis = vis
      if logits.ndim == 3:
        k = logits.shape[1]
        logits = logits.reshape(-1, logits.shape[-1])
        rows_labels = jnp.repeat(labels, k)
        rows_vis = vis.reshape(-1)
      ce = weighted_cross_entropy(logits, rows_labels, eps, rows_vis if use_vis else None)
      total = total + id_w * ce
      metrics[f'ce_{name}'] = ce
      metrics[f'accuracy_{name}'] = jnp.mean(jnp.argmax(logits, -1) == rows_labels)
    if tr_w > 0:
      emb = out['embeddings'][name]
      emb = emb if emb.ndim == 3 else emb[:, None]
      v = (vis if vis.ndim == 2 else vis[:, None]) if use_vis else None
      tr, info = part_averaged_triplet_loss(emb, labels, margin, v)
      total = total + tr_w * tr
      metrics[f'triplet_{name}'] = tr
      metrics[f'trivial_triplets_{name}'] = info['trivial_triplets']
  pixel_w = float(c.get('pixel_weight', 0.35))
  if pixel_w > 0:
    scores = out['pixel_scores']
    masks = batch['part_masks']
    if masks.shape[-1] != scores.shape[-1]:
      raise ValueError(f"BPBreID: batch['part_masks'] has {masks.shape[-1]} channels, the model "
                       f'predicts K+1 = {scores.shape[-1]} (background + config.model.parts); '
                       'config.input.parts and config.model.parts must agree')
    targets = pixel_targets(masks, scores.shape[1:3])
    mode = c.get('pixel_targets', 'argmax')
    if mode == 'argmax':
      pixel_ce = losses.cross_entropy_label_smooth(
          scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), c.get('pixel_epsilon', 0.1))
    elif mode == 'soft':
      pixel_ce = soft_pixel_cross_entropy(scores, masks)
    else:
      raise ValueError(f"config.loss.pixel_targets must be 'argmax' or 'soft', got {mode!r}")
    total = total + pixel_w * pixel_ce
    metrics['pixel_ce'] = pixel_ce
    metrics['pixel_accuracy'] = jnp.mean(jnp.argmax(scores, -1) == targets)
  return total, metrics


# ------------------------------------------------------------------------------------ pictures
@jax.jit
def _eval_masks_and_feature(graphdef, state, images):
  model = nnx.merge(graphdef, state)  # a copy: the caller's module keeps its mode
  model.eval()
  out = model.outputs(images)
  return out['masks'][PARTS], model.test_feature(out)


def bpbreid_pictures(model, batch, config, directory, count: int = 4, topk: int = 8) -> list[str]:
  """``parts_rank_NNNN.png``: ranked lists within a training batch (P identities of K images),
  every image drawn with its predicted part masks and part visibility
  (``visualize.part_masks_tile``). The queries are the first image of the first ``count``
  identities; the rest of the batch is the gallery, ranked by the evaluation's distance of the
  test feature (eval mode; ``config.eval`` normalisation, metric and part combination)."""
  from reid_jax import evaluation
  from reid_jax.evaluation import visualize
  from reid_jax.models.san import _to_uint8
  images = np.asarray(batch['image'], np.float32)
  labels = np.asarray(batch['label'])
  graphdef, state = nnx.split(model)
  masks, feature = _eval_masks_and_feature(graphdef, state, jnp.asarray(images))
  feature = evaluation.features.normalize(feature) if config.eval.get('normalize', True) \
      else feature
  dist = np.asarray(evaluation.distance_matrix(
      feature, feature, config.eval.get('metric', 'euclidean'),
      part_combine=config.eval.get('part_combine', 'mean')))
  masks = np.asarray(masks)
  vis = np.asarray(feature['visibility'])[:, -masks.shape[-1]:]   # the K part entries
  size = tuple(config.input.size)
  tiles = [visualize.part_masks_tile(_to_uint8(images[i], config.input.mean, config.input.std),
                                     masks[i], vis[i], size=size) for i in range(len(images))]
  tile_size = (tiles[0].height, tiles[0].width)
  _, first = np.unique(labels, return_index=True)
  paths = []
  camids = np.arange(len(images))  # only the query itself is junk (skipped)
  for q in sorted(first)[:count]:
    path = os.path.join(directory, f'parts_rank_{len(paths):04d}.png')
    visualize.ranked_list(tiles[q], tiles, dist[q], labels[q], camids[q], labels, camids, path,
                          topk=topk, size=tile_size, skip_junk=True)
    paths.append(path)
  return paths


METHOD = registry.register_method(registry.Method(
    name='bpbreid', build=build_bpbreid, loss=part_based_loss,
    batch_fields=bpbreid_batch_fields, pictures=bpbreid_pictures))
