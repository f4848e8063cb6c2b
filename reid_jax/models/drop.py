"""DROP: "Decouple Re-Identification and Human Parsing with Task-specific Features for Occluded
Person Re-identification" (Dou, Jiang, Tu, Gao, Qu, Zhao, Zhao; arXiv 2401.18032, 2024; journal
version in IEEE T-BIOM). The authors released no code (shuguang-52/DROP holds a README only);
DROP is built on BPBreID (VlSomers/bpbreid), and so is this implementation: ``DROP`` subclasses
``reid_jax.models.bpbreid.BPBreID`` and changes only where its features come from and how parts
are pooled. Every piece the paper's public text does not pin down is a switch marked
*provisional*; the DROP page of the docs folder says which is the paper's and which is ours.

Network (channels-last), on the shared HRNet-W32 backbone:

* ReID features: BPBreID's ``[N, H/4, W/4, 1920]`` one-step upsample-and-concat of the four
  branches (unchanged);
* parsing features (``upsampling='dpu'``, provisional design of the paper's Detail-Preserving
  Upsampling): the four incre-module maps ``S_1..S_4`` each reduced by ``CR_i`` (1x1 conv + BN +
  ReLU) to ``C_p`` channels (``parsing_channels``, 128), fused top-down ``D_4 = CR_4(S_4)``,
  ``D_i = CR_i(S_i) (+) Up(D_{i+1})`` (bilinear to ``S_i``'s grid, ``align_corners=True``; ``(+)``
  a sum, or with ``dpu_fuse='concat'`` a concat then 1x1 conv + BN + ReLU back to ``C_p``), then
  a 3x3 conv + BN + ReLU: ``[N, H/4, W/4, C_p]``. ``upsampling='none'``: the parsing side reads
  the ReID features. On BPBreID's ResNet option (``backbone='resnet'``, the CPU demo) the DPU
  fuses ``layer1..layer4`` the same way: the parts are predicted on layer1's 1/4 grid, finer
  than the 1/16 ReID map, and pooled with the probabilities averaged over each block of the
  finer grid (``pooling_probs``; visibility from the fine grid);
* pedestrian position encoding on the parsing side only (``position_encoding``): a height
  embedding ``E [h, C]`` broadcast over the width and added to the parsing features before the
  pixel-to-part classifier; ``'learned'`` (a table, init N(0, 0.02^2), ``position_rows`` = h
  rows), ``'sinusoidal'`` (fixed, transformer-style over the row index) or ``'none'``;
* parsing-guided part pooling (``part_pooling``): ``'gwap+gmp'`` sums BPBreID's weighted average
  and the global max of ``mask_k * f`` per part; ``'gwap'`` is BPBreID's;
* ``detach_parsing_for_pooling`` (the gradient decoupling switch): the part masks used to pool the
  part embeddings are stop-gradiented, so the ReID losses do not reach the parsing branch through
  the part pooling (foreground and background pooling are unchanged).

With ``upsampling='none'``, ``position_encoding='none'``, ``part_pooling='gwap'`` and
``detach_parsing_for_pooling=False`` the network is BPBreID's, with the same parameters.

Loss (``drop_loss``): BPBreID's ``part_based`` terms with, when ``config.loss.pct`` is on, the
parts' triplet replaced by ``pct_weight`` x the part-aware compactness triplet loss
(``part_compactness_triplet_loss``, provisional) whose negatives also come from a memory bank of
part embeddings (``config.loss.bank``: a FIFO ring of past batches of ``bank_size`` rows, one
momentum-averaged row per identity, or 'none'), kept as the method's extra training state
(checkpointed and restored with the optimizer state).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.evaluation import distance
from reid_jax.models import bpbreid as bp
from reid_jax.models import registry
from reid_jax.models.hrnet import ConvBN
from reid_jax.models.layers import resize_bilinear_align_corners

Array = jax.Array

UPSAMPLINGS = ('dpu', 'none')
DPU_FUSIONS = ('sum', 'concat')
POSITION_ENCODINGS = ('learned', 'sinusoidal', 'none')
PART_POOLINGS = ('gwap+gmp', 'gwap')
PCT_POSITIVES = ('center', 'hardest')


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f'config.{field} must be one of {choices}, got {value!r}')


class DetailPreservingUpsampling(nnx.Module):
  """Provisional DPU: multi-scale maps ``[N, h / 2**i, w / 2**i, in_channels[i]]`` (finest
  first) -> ``[N, h, w, channels]`` by channel reduction and progressive 2x bilinear upsampling
  (module docstring)."""

  def __init__(self, in_channels, channels: int = 128, *, fuse: str = 'sum', dtype=None,
               rngs: nnx.Rngs):
    _check_choice('model.dpu_fuse', fuse, DPU_FUSIONS)
    self.fuse = fuse
    self.reduce = nnx.List([ConvBN(c, channels, 1, relu=True, dtype=dtype, rngs=rngs)
                            for c in in_channels])
    self.merge = nnx.List([ConvBN(2 * channels, channels, 1, relu=True, dtype=dtype, rngs=rngs)
                           for _ in in_channels[:-1]]) if fuse == 'concat' else None
    self.smooth = ConvBN(channels, channels, 3, relu=True, dtype=dtype, rngs=rngs)

  def __call__(self, maps) -> Array:
    d = self.reduce[-1](maps[-1])
    for i in reversed(range(len(maps) - 1)):
      up = resize_bilinear_align_corners(d, tuple(maps[i].shape[1:3])).astype(d.dtype)
      r = self.reduce[i](maps[i])
      d = r + up if self.merge is None else self.merge[i](jnp.concatenate([r, up], axis=-1))
    return self.smooth(d)


def sinusoidal_rows(rows: int, channels: int) -> Array:
  """``[rows, channels]``: ``sin(p / 10000^(2i / C))`` at channel ``2i``, ``cos`` at ``2i + 1``
  for row index ``p`` (Vaswani et al. 2017, over the height only)."""
  p = jnp.arange(rows, dtype=jnp.float32)[:, None]
  i = jnp.arange(channels) // 2
  angle = p / jnp.power(10000.0, 2.0 * i / channels)
  return jnp.where(jnp.arange(channels) % 2 == 0, jnp.sin(angle), jnp.cos(angle))


class HeightPositionEncoding(nnx.Module):
  """Provisional pedestrian position encoder: ``x [N, h, w, C] -> x + E[:, None, :]`` with a
  height embedding ``E [h, C]``, learned (``rows`` = h, N(0, 0.02^2)) or sinusoidal."""

  def __init__(self, channels: int, *, kind: str = 'learned', rows: int | None = None,
               rngs: nnx.Rngs):
    _check_choice('model.position_encoding', kind, POSITION_ENCODINGS[:2])
    self.kind = kind
    self.channels = channels
    if kind == 'learned':
      if not rows or rows < 1:
        raise ValueError("config.model.position_rows must be the feature map's height (input "
                         f"height / 4) for position_encoding='learned', got {rows!r}")
      self.table = nnx.Param(nnx.initializers.normal(stddev=0.02)(rngs.params(),
                                                                   (rows, channels)))

  def __call__(self, x: Array) -> Array:
    h = x.shape[1]
    if self.kind == 'learned':
      table = self.table[...]
      if table.shape[0] != h:
        raise ValueError(f'DROP position encoding: config.model.position_rows = '
                         f'{table.shape[0]} but the parsing feature map has {h} rows (input '
                         'height / 4)')
    else:
      table = sinusoidal_rows(h, self.channels)
    return x + table[None, :, None, :].astype(x.dtype)


class DROP(bp.BPBreID):
  """DROP on BPBreID (module docstring). ``bpbreid_kwargs`` are ``BPBreID``'s."""

  def __init__(self, backbone: nnx.Module, num_classes: int, *, upsampling: str = 'dpu',
               parsing_channels: int = 128, dpu_fuse: str = 'sum',
               position_encoding: str = 'learned', position_rows: int | None = None,
               part_pooling: str = 'gwap+gmp', detach_parsing_for_pooling: bool = False,
               rngs: nnx.Rngs, **bpbreid_kwargs):
    _check_choice('model.upsampling', upsampling, UPSAMPLINGS)
    _check_choice('model.dpu_fuse', dpu_fuse, DPU_FUSIONS)
    _check_choice('model.position_encoding', position_encoding, POSITION_ENCODINGS)
    _check_choice('model.part_pooling', part_pooling, PART_POOLINGS)
    super().__init__(backbone, num_classes, rngs=rngs, **bpbreid_kwargs)
    self.upsampling = upsampling
    self.part_pooling = part_pooling
    self.detach_parsing_for_pooling = bool(detach_parsing_for_pooling)
    dtype = getattr(backbone, 'dtype', None)
    parsing_width = backbone.out_features
    if upsampling == 'dpu':
      # HRNet: its four incre-module maps (1/4 ... 1/32); ResNet: layer1..layer4 (1/4 ...).
      levels = getattr(backbone, 'concat_channels', None)
      if levels is None:
        levels = tuple(backbone.stage_channels[1:])
      parsing_width = parsing_channels
      self.dpu = DetailPreservingUpsampling(levels, parsing_channels,
                                            fuse=dpu_fuse, dtype=dtype, rngs=rngs)
      # The pixel classifier reads the C_p-wide parsing features instead of the ReID map.
      self.pixel_classifier = bp.PixelToPartClassifier(parsing_width, self.parts, dtype=dtype,
                                                       rngs=rngs)
    if position_encoding != 'none':
      self.position = HeightPositionEncoding(parsing_width, kind=position_encoding,
                                             rows=position_rows, rngs=rngs)

  def features(self, x: Array) -> tuple[Array, Array]:
    """``(ReID features [N, h, w, C], parsing features [N, h, w, C_p])``."""
    if self.upsampling == 'dpu':
      if hasattr(self.base, 'concat_channels'):
        feat, maps = self.base(x, return_maps=True)
      else:
        maps = self.base(x, return_stages=True)[1:]
        feat = maps[-1]
      parsing = self.dpu(maps)
    else:
      feat = self.base(x)
      parsing = feat
    if hasattr(self, 'position'):
      parsing = self.position(parsing)
    return feat, parsing

  def pooling_probs(self, probs: Array, size: tuple[int, int]) -> Array:
    """The part probabilities on the ReID map's grid: as they are on HRNet (both at 1/4), and
    averaged over each ``f x f`` block (area downsampling) where the parsing grid is ``f`` times
    finer (the DPU's 1/4 grid over a ResNet's 1/16 map)."""
    n, hp, wp, c = probs.shape
    h, w = size
    if (hp, wp) == (h, w):
      return probs
    if hp % h or wp % w or hp // h != wp // w:
      raise ValueError(f'DROP: the parsing map ({hp}x{wp}) must be a whole multiple of the ReID '
                       f'map ({h}x{w})')
    f = hp // h
    return probs.reshape(n, h, f, w, f, c).mean(axis=(2, 4))

  def pool_parts(self, parts_masks: Array, feat: Array) -> Array:
    """``[N, h, w, K]``, ``[N, h, w, C]`` -> ``[N, K, C]``: GWAP (+ GMP, the max over the map of
    ``mask_k * f``, with ``part_pooling='gwap+gmp'``)."""
    if self.detach_parsing_for_pooling:
      parts_masks = jax.lax.stop_gradient(parts_masks)
    pooled = super().pool_parts(parts_masks, feat)
    if self.part_pooling == 'gwap+gmp':
      # One part at a time: the [N, h, w, K, C] product would not fit at 1920 channels.
      gmp = jnp.stack([jnp.max(parts_masks[..., k, None] * feat, axis=(1, 2))
                       for k in range(parts_masks.shape[-1])], axis=1)
      pooled = pooled + gmp
    return pooled


def build_drop(model_config, num_classes: int, *, rngs: nnx.Rngs) -> DROP:
  get = model_config.get
  return DROP(bp.backbone_from_config(model_config, rngs=rngs), num_classes,
              upsampling=get('upsampling', 'dpu'), parsing_channels=get('parsing_channels', 128),
              dpu_fuse=get('dpu_fuse', 'sum'),
              position_encoding=get('position_encoding', 'learned'),
              position_rows=get('position_rows'), part_pooling=get('part_pooling', 'gwap+gmp'),
              detach_parsing_for_pooling=get('detach_parsing_for_pooling', False),
              parts=get('parts', 8), dim=get('dim', 512),
              test_embeddings=tuple(get('test_embeddings', bp.DEFAULT_TEST_EMBEDDINGS)),
              binary_visibility_train=get('binary_visibility_train', True),
              binary_visibility_test=get('binary_visibility_test', True), rngs=rngs)


# ------------------------------------------------------------------------------------ PCT loss
def _safe_norm(x: Array, axis: int = -1) -> Array:
  """Euclidean norm with a zero gradient (not NaN) at an exact 0."""
  sq = jnp.sum(x * x, axis=axis)
  zero = sq == 0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def _cross_distances(a: Array, b: Array) -> Array:
  """``[K, N, D], [K, M, D] -> [K, N, M]`` Euclidean distances (zero-safe square root)."""
  d = (jnp.sum(a * a, -1)[:, :, None] - 2.0 * jnp.einsum('knd,kmd->knm', a, b)
       + jnp.sum(b * b, -1)[:, None, :])
  d = jax.nn.relu(d)
  zero = d == 0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, d)))


def l2_normalize(x: Array) -> Array:
  """float32 ``x / max(|x|, 1e-12)`` along the last axis (torch ``F.normalize``; the
  evaluation's helper)."""
  return distance.l2_normalize(x.astype(jnp.float32))


def part_compactness_triplet_loss(parts: Array, labels: Array, visible: Array, *,
                                  margin: float = 0.3, positive: str = 'center',
                                  bank: dict | None = None) -> tuple[Array, dict]:
  """Provisional part-aware compactness triplet (PCT) loss.

  ``parts [N, K, D]`` (L2-normalised here), ``labels [N]``, ``visible [N, K]`` (bool). For each
  anchor ``i`` and part ``k`` visible in it:

  * positive distance (``positive='center'``): ``|f_k^i - c_k^{y_i}|`` with ``c_k^y`` the mean
    of the visible part-``k`` embeddings of identity ``y`` in the batch (the anchor included);
    ``'hardest'``: the largest ``|f_k^i - f_k^j|`` over the other images ``j`` of ``y_i`` showing
    part ``k`` (batch-hard per part);
  * negative distance: the smallest ``|f_k^i - g_k|`` over the part-``k`` embeddings ``g`` of
    other identities that show part ``k``, in the batch and in ``bank`` (``{'features' [Q, K, D]
    (normalised, no gradient), 'labels' [Q], 'visible' [Q, K] (float 0/1)}``, or None);

  the loss is the mean of ``relu(d_pos - d_neg + margin)`` over the (anchor, part) pairs that
  have a positive and a negative (0 when none). Returns ``(loss, {'valid_pairs': fraction of
  the N * K pairs used, 'bank_negatives': fraction of the hardest negatives taken from the
  bank})``.
  """
  _check_choice('loss.pct_positive', positive, PCT_POSITIVES)
  f = jnp.swapaxes(l2_normalize(parts), 0, 1)                          # [K, N, D]
  vis = jnp.swapaxes(visible.astype(bool), 0, 1)                       # [K, N]
  n = labels.shape[0]
  same = labels[:, None] == labels[None, :]                            # [N, N]
  dist = _cross_distances(f, f)                                        # [K, N, N]
  if positive == 'center':
    members = (same[None] & vis[:, None, :]).astype(jnp.float32)       # [K, anchor, member]
    count = jnp.sum(members, axis=-1)                                  # [K, N]
    center = jnp.einsum('kij,kjd->kid', members, f) / jnp.maximum(count, 1.0)[..., None]
    d_pos = _safe_norm(f - center)
    has_pos = count > 0
  else:
    pos = same[None] & ~jnp.eye(n, dtype=bool)[None] & vis[:, None, :]
    d_pos = jnp.max(jnp.where(pos, dist, -1.0), axis=-1)
    has_pos = jnp.any(pos, axis=-1)
  big = jnp.finfo(jnp.float32).max
  neg = ~same[None] & vis[:, None, :]
  d_neg = jnp.min(jnp.where(neg, dist, big), axis=-1)                  # [K, N]
  from_bank = jnp.zeros_like(d_neg, dtype=bool)
  if bank is not None:
    g = jax.lax.stop_gradient(jnp.swapaxes(bank['features'], 0, 1))    # [K, Q, D]
    bank_neg = ((labels[:, None] != bank['labels'][None, :])[None]
                & (jnp.swapaxes(bank['visible'], 0, 1) > 0)[:, None, :])  # [K, N, Q]
    d_bank = jnp.min(jnp.where(bank_neg, _cross_distances(f, g), big), axis=-1)
    from_bank = d_bank < d_neg
    d_neg = jnp.minimum(d_neg, d_bank)
  valid = vis & has_pos & (d_neg != big)
  count = jnp.sum(valid)
  per_pair = jax.nn.relu(jnp.where(valid, d_pos - d_neg, 0.0) + margin)
  loss = jnp.sum(jnp.where(valid, per_pair, 0.0)) / jnp.maximum(count, 1)
  info = {'valid_pairs': count / valid.size,
          'bank_negatives': jnp.sum(valid & from_bank) / jnp.maximum(count, 1)}
  return loss, info


def _training_visibility(vis: Array) -> Array:
  """Part visibility as bool: binary scores as they are, continuous ones above 0.5."""
  return vis if vis.dtype == jnp.bool_ else vis > 0.5


def drop_loss(model, batch, *, extra, config, context=None):
  """BPBreID's ``part_based`` terms (``bpbreid.part_based_terms``: ID, triplet and pixel losses,
  ``config.loss.pixel_targets`` 'argmax' or the provisional 'soft') and, with
  ``config.loss.pct`` (True), the parts' triplet replaced by ``pct_weight`` (1.0) x the PCT loss
  (``pct_margin`` 0.3, ``pct_positive`` 'center'), its extra negatives from the memory bank
  ``extra`` (or none). ``aux``: the batch's normalised part embeddings, labels and visibility,
  for the bank's update."""
  del context
  c = config.loss
  out = model.outputs(batch['image'])
  use_pct = bool(c.get('pct', True))
  weights = c.get('weights')
  weights = bp.DEFAULT_LOSS_WEIGHTS if weights is None else weights
  if use_pct:
    weights = {name: dict(w or {}) for name, w in weights.items()}
    weights.setdefault(bp.PARTS, {})['tr'] = 0.0
  total, metrics = bp.part_based_terms(out, batch, c, weights)
  parts = out['embeddings'][bp.PARTS]
  visible = _training_visibility(out['visibility'][bp.PARTS])
  if use_pct:
    pct, info = part_compactness_triplet_loss(
        parts, batch['label'], visible, margin=c.get('pct_margin', 0.3),
        positive=c.get('pct_positive', 'center'), bank=extra)
    total = total + float(c.get('pct_weight', 1.0)) * pct
    metrics['pct'] = pct
    metrics['pct_valid_pairs'] = info['valid_pairs']
    if extra is not None:
      metrics['pct_bank_negatives'] = info['bank_negatives']
  metrics['loss'] = total
  aux = None
  if extra is not None:
    aux = {'features': jax.lax.stop_gradient(l2_normalize(parts)),
           'labels': batch['label'].astype(jnp.int32),
           'visible': visible.astype(jnp.float32)}
  return {'loss': total}, metrics, aux


# ------------------------------------------------------------------------------------ memory bank
BANKS = ('fifo', 'id_momentum', 'none')


def bank_kind(config) -> str:
  """``config.loss.bank`` ('fifo' by default), 'none' without PCT."""
  c = config.loss
  kind = c.get('bank', 'fifo')
  _check_choice('loss.bank', kind, BANKS)
  return kind if c.get('pct', True) else 'none'


def init_bank(config, model, num_classes: int, key):
  """The parts-embedding memory bank (provisional), or None (``config.loss.bank='none'`` or no
  PCT). Both kinds are ``{'features' [Q, K, D] float32 (zeros), 'labels' [Q] int32, 'visible'
  [Q, K] float32 (0: an empty slot is never a negative)}``, read the same way by the PCT loss:

  * ``'fifo'``: a ring of the last ``config.loss.bank_size`` (Q) part embeddings of past batches,
    labels -1 until filled, plus ``'pointer' [] int32``;
  * ``'id_momentum'``: one row per training identity (Q = ``num_classes``, labels ``0..Q-1``), a
    momentum average of its normalised part-``k`` embeddings (``config.loss.bank_momentum``).
  """
  del key
  kind = bank_kind(config)
  if kind == 'none':
    return None
  k, d = model.parts, model.dim
  if kind == 'id_momentum':
    momentum = float(config.loss.get('bank_momentum', 0.2))
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f'config.loss.bank_momentum must be in [0, 1), got {momentum}')
    return {'features': jnp.zeros((num_classes, k, d), jnp.float32),
            'labels': jnp.arange(num_classes, dtype=jnp.int32),
            'visible': jnp.zeros((num_classes, k), jnp.float32)}
  size = int(config.loss.get('bank_size', 0) or 0)
  batch = config.input.p * config.input.k
  if size < batch:
    raise ValueError(f"config.loss.bank_size ({size}) must hold one batch at least "
                     f"(config.input.p * config.input.k = {batch}) for loss.bank='fifo'; "
                     "loss.bank='none' trains without a bank")
  return {'features': jnp.zeros((size, k, d), jnp.float32),
          'labels': jnp.full((size,), -1, jnp.int32),
          'visible': jnp.zeros((size, k), jnp.float32),
          'pointer': jnp.zeros([], jnp.int32)}


def update_bank(extra, grads, aux, config):
  """Writes the step's ``B`` normalised part embeddings into the bank (it is not descended: its
  gradients are ignored).

  * FIFO: enqueued at ``pointer`` (wrapping around), overwriting the oldest; ``pointer += B``
    mod Q.
  * ``id_momentum`` (momentum ``m``, 0.2 by default, the convention of memory-based ReID such as
    Cluster Contrast, Dai et al. 2021: the weight of the old entry): for each identity ``y`` and
    part ``k`` visible in at least one of its batch images, ``e = mean`` of those visible
    embeddings, ``M_k^y <- normalise(m M_k^y + (1 - m) e)`` (an unseen entry becomes
    ``normalise(e)``) and its visibility becomes 1; other entries are unchanged.
  """
  del grads
  if bank_kind(config) == 'id_momentum':
    momentum = float(config.loss.get('bank_momentum', 0.2))
    classes = extra['labels'].shape[0]
    vis = aux['visible']                                                # [B, K]
    sums = jax.ops.segment_sum(aux['features'] * vis[..., None], aux['labels'],
                               num_segments=classes)                    # [Q, K, D]
    counts = jax.ops.segment_sum(vis, aux['labels'], num_segments=classes)  # [Q, K]
    seen = counts > 0
    mean = sums / jnp.maximum(counts, 1.0)[..., None]
    blended = l2_normalize(momentum * extra['features'] + (1.0 - momentum) * mean)
    return {'features': jnp.where(seen[..., None], blended, extra['features']),
            'labels': extra['labels'],
            'visible': jnp.where(seen, 1.0, extra['visible'])}
  size = extra['labels'].shape[0]
  b = aux['labels'].shape[0]
  if b > size:
    raise ValueError(f'config.loss.bank_size ({size}) is smaller than the batch ({b})')
  slots = (extra['pointer'] + jnp.arange(b, dtype=jnp.int32)) % size
  return {'features': extra['features'].at[slots].set(aux['features']),
          'labels': extra['labels'].at[slots].set(aux['labels']),
          'visible': extra['visible'].at[slots].set(aux['visible']),
          'pointer': (extra['pointer'] + b) % size}


METHOD = registry.register_method(registry.Method(
    name='drop', build=build_drop, loss=drop_loss, batch_fields=bp.bpbreid_batch_fields,
    init_extra=init_bank, update_extra=update_bank, pictures=bp.bpbreid_pictures))
