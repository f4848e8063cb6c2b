"""Pairwise distances between query and gallery features.

Vector features ``[N, D]`` (reid-protocols.md §2.3-2.4):
  'sqeuclidean'  ||q - g||^2 = |q|^2 + |g|^2 - 2 q.g, clamped at 0 (BoT/TransReID/torchreid 'euclidean').
  'euclidean'    sqrt of the above, clamped at 1e-12 before the sqrt (torchreid/fast-reid style).
  'cosine'       1 - cos(q, g) on L2-normalised features (fast-reid default), clipped to [0, 2].

Part-based features (``reid_jax.evaluation.features``: ``feat [N, P, D]``, ``visibility [N, P]``):
BPBreID's rule (Somers et al., "Body Part-Based Representation Learning for Occluded Person
Re-Identification", WACV 2023; VlSomers/bpbreid ``torchreid/metrics/distance.py``,
``compute_distance_matrix_using_bp_features``, with ``torchreid/utils/tensortools.py``
``masked_mean``), see :func:`part_distance` and docs/evaluation.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from reid_jax.evaluation import features as feature_lib

METRICS = ('euclidean', 'sqeuclidean', 'cosine')
PART_COMBINES = ('mean', 'max')
DEFAULT_PART_BLOCK = 256  # query rows per block of part_distance: a few [256, G] float32


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
  return metric


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of ``x [N, D]`` divided by max(||x||, eps) (torch ``F.normalize`` semantics)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def _dot(q, g):
  # HIGHEST: on TPU/GPU the default matmul precision is bf16-ish, which reorders near neighbours.
  return jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST)


def pairwise_distance_fn(q: jax.Array, g: jax.Array, metric: str) -> jax.Array:
  """Traceable body of :func:`pairwise_distance` (use inside other jitted code)."""
  q = q.astype(jnp.float32)
  g = g.astype(jnp.float32)
  if metric == 'cosine':
    return jnp.clip(1.0 - _dot(l2_normalize(q), l2_normalize(g)), 0.0, 2.0)
  sq = (jnp.sum(jnp.square(q), axis=1)[:, None] + jnp.sum(jnp.square(g), axis=1)[None, :]
        - 2.0 * _dot(q, g))
  if metric == 'sqeuclidean':
    return jnp.maximum(sq, 0.0)
  if metric == 'euclidean':
    return jnp.sqrt(jnp.maximum(sq, 1e-12))
  raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')


@functools.partial(jax.jit, static_argnames='metric')
def _pairwise_distance(q, g, metric):
  return pairwise_distance_fn(q, g, metric)


def pairwise_distance(q, g, metric: str = 'sqeuclidean') -> jax.Array:
  """Distance matrix ``[Q, G]`` (float32) between features ``q [Q, D]`` and ``g [G, D]``.

  ``metric`` is 'euclidean', 'sqeuclidean' or 'cosine' (1 - cos). Features are not normalised
  here except inside 'cosine'; use ``normalize=True`` at extraction for the BoT convention.
  """
  check_metric(metric)
  q = jnp.asarray(q)
  g = jnp.asarray(g)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
    raise ValueError(f'q and g must be [Q, D] and [G, D] with the same D, got {q.shape} and {g.shape}')
  return _pairwise_distance(q, g, metric)


# ----------------------------------------------------------------------------- part features


def check_part_combine(combine: str) -> str:
  if combine not in PART_COMBINES:
    raise ValueError(f'part_combine must be one of {PART_COMBINES}, got {combine!r}')
  return combine


def check_part_metric(metric: str) -> str:
  check_metric(metric)
  if metric != 'euclidean':
    raise ValueError(f"part features are compared by BPBreID's per-part Euclidean distance: "
                     f"metric (config.eval.metric) must be 'euclidean', got {metric!r}")
  return metric


def _one_part_distance(qp: jax.Array, gp: jax.Array, q_sq: jax.Array, g_sq: jax.Array):
  """``[Q, G]`` distances of one embedding, ``qp [Q, D]`` to ``gp [G, D]`` with their squared
  norms: BPBreID's non-squared Euclidean distance by the expansion, ``sqrt(relu(|q|^2 - 2 q.g +
  |g|^2))`` (no clamp above 0, so identical vectors give the square root of a rounding-level
  residual, ~1e-4 for unit vectors, as the official code does)."""
  return jnp.sqrt(jnp.maximum(q_sq[:, None] - 2.0 * _dot(qp, gp) + g_sq[None, :], 0.0))


def part_distance_fn(q: dict, g: dict, combine: str = 'mean'):
  """Traceable core of :func:`part_distance` on one block: ``(pair [Q, G], part_max [])``.

  ``q``, ``g``: part features (dicts with ``feat`` ``[N, P, D]`` and ``visibility`` ``[N, P]``,
  which may be None). ``pair`` holds -1 where no embedding counts for both images (no common
  visible part, or a zero weight sum); ``part_max`` is the block's largest part distance that
  BPBreID's sentinel is built from: over the counted (both-visible) entries with bool visibility
  (-1 if none), over all entries otherwise. :func:`fill_no_common_part` turns the -1 into the
  whole matrix's ``max + 1``.

  One loop over the P embeddings accumulates a weight per entry (bool: 1 if visible in both, else
  0; float: ``sqrt(v_q v_g)``; no visibility: 1) and the weighted sum (or the maximum over
  weighted-in entries), so only a few ``[Q, G]`` arrays are in flight, never ``[P, Q, G]``.
  """
  qf = q['feat'].astype(jnp.float32)
  gf = g['feat'].astype(jnp.float32)
  qv, gv = q.get('visibility'), g.get('visibility')
  kind = 'none' if qv is None else 'bool' if qv.dtype == jnp.bool_ else 'float'
  q_sq = jnp.sum(jnp.square(qf), axis=-1)  # [Q, P]
  g_sq = jnp.sum(jnp.square(gf), axis=-1)  # [G, P]
  shape = (qf.shape[0], gf.shape[0])

  def column(a, p):
    return jax.lax.dynamic_index_in_dim(a, p, axis=1, keepdims=False)

  def body(p, carry):
    acc, w_sum, part_max = carry
    d = _one_part_distance(column(qf, p), column(gf, p), column(q_sq, p), column(g_sq, p))
    if kind == 'none':
      w = jnp.ones(shape, jnp.float32)
    elif kind == 'bool':  # masked_mean: the entries visible in both
      w = (column(qv, p)[:, None] & column(gv, p)[None, :]).astype(jnp.float32)
    else:  # continuous visibility: sqrt(v_q * v_g)
      w = jnp.sqrt(column(qv, p).astype(jnp.float32)[:, None]
                   * column(gv, p).astype(jnp.float32)[None, :])
    counted = jnp.where(w > 0, d, -1.0)
    acc = acc + w * d if combine == 'mean' else jnp.maximum(acc, counted)
    part_max = jnp.maximum(part_max, jnp.max(counted if kind == 'bool' else d))
    return acc, w_sum + w, part_max

  init = (jnp.full(shape, 0.0 if combine == 'mean' else -1.0, jnp.float32),
          jnp.zeros(shape, jnp.float32), jnp.float32(-1.0))
  acc, w_sum, part_max = jax.lax.fori_loop(0, qf.shape[1], body, init)
  pair = acc / jnp.where(w_sum == 0, 1.0, w_sum) if combine == 'mean' else acc
  if kind == 'none':  # BPBreID without mask filtering: every embedding, unweighted
    return pair, part_max
  # 'max' with float scores has no official counterpart (BPBreID always averages there).
  return jnp.where(w_sum == 0, -1.0, pair), part_max


def fill_no_common_part(pair: jax.Array, part_max) -> jax.Array:
  """BPBreID's fix-up: every -1 of ``pair`` (no common visible part) becomes ``part_max + 1``,
  with ``part_max`` the largest part distance of the whole query x gallery matrix."""
  return jnp.where(pair < 0, jnp.asarray(part_max, jnp.float32) + 1.0, pair)


def ranking_distance_fn(q, g, metric: str, part_combine: str = 'mean') -> jax.Array:
  """Traceable ``[Q, G]`` distances for ranking one block of queries: :func:`pairwise_distance_fn`
  for vectors; for part features :func:`part_distance_fn` with the pairs that have no common
  visible part at +inf. Within a query row that ranks them exactly as BPBreID's whole-matrix
  ``max + 1`` does (after every other pair, ties by gallery index), without a second pass."""
  if not feature_lib.is_parts(q):
    return pairwise_distance_fn(q, g, metric)
  pair, _ = part_distance_fn(q, g, part_combine)
  return jnp.where(pair < 0, jnp.inf, pair)


@functools.partial(jax.jit, static_argnames=('combine', 'rows'))
def _part_block(q, g, start, *, combine, rows):
  qb = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, rows), q)
  return part_distance_fn(qb, g, combine)


@jax.jit
def _fill_blocks(pairs, maxima):
  return fill_no_common_part(jnp.concatenate(pairs, axis=0), jnp.max(jnp.stack(maxima)))


def part_distance(q_feat, g_feat, q_vis=None, g_vis=None, combine: str = 'mean', *,
                  block_size: int = DEFAULT_PART_BLOCK) -> jax.Array:
  """BPBreID's part-based distance matrix ``[Q, G]`` (float32).

  ``q_feat [Q, P, D]``, ``g_feat [G, P, D]``: the P = 1 + K embeddings of each image (L2-normalise
  them first, per embedding, as BPBreID's engine does). ``q_vis [Q, P]``, ``g_vis [G, P]``: their
  visibility, bool or float scores, or None on both sides. Per embedding p, ``D_p`` is the
  non-squared Euclidean distance by the expansion (:func:`_one_part_distance`). Then, as VlSomers/
  bpbreid ``torchreid/metrics/distance.py``:

  * bool visibility: entry p counts for (q, g) iff visible in both; ``combine='mean'``: the mean of
    ``D_p`` over those entries (``masked_mean``), ``'max'``: their maximum;
  * float visibility: weights ``sqrt(v_q[p] * v_g[p])``, the weighted mean of ``D_p`` (BPBreID
    ignores ``combine`` here; ``'max'`` takes the maximum over entries of positive weight);
  * no visibility: the plain mean (or max) over the P entries;
  * a pair with no entry that counts (no common visible part, zero weight sum) gets the largest
    part distance of the **whole** matrix plus one (bool: over the entries that count; float and
    none: over all entries), so it ranks after every other pair.

  Computed on device ``block_size`` query rows at a time (a few ``[block_size, G]`` arrays): the
  blocks' -1 markers are filled once every block's maximum is known, so the result is the
  whole-matrix rule whatever ``block_size``. Bool visibility on one side and scores on the other
  use the scores rule (both as float), as BPBreID does.
  """
  check_part_combine(combine)
  q = {'feat': q_feat, 'visibility': q_vis}
  g = {'feat': g_feat, 'visibility': g_vis}
  q, g = feature_lib.check_pair(q, g, 'q_feat', 'g_feat')
  return _part_distance(q, g, combine, block_size)


def _part_distance(q: dict, g: dict, combine: str, block_size: int) -> jax.Array:
  """:func:`part_distance` of validated host features."""
  if int(block_size) < 1:
    raise ValueError(f'block_size must be >= 1, got {block_size}')
  nq = feature_lib.num_rows(q)
  if nq == 0 or feature_lib.num_rows(g) == 0:
    raise ValueError(f'need at least one query and one gallery item, got {nq} and '
                     f'{feature_lib.num_rows(g)}')
  rows = min(int(block_size), nq)
  qd, gd = jax.device_put(q), jax.device_put(g)
  pairs, maxima = [], []
  for r0 in range(0, nq, rows):
    start = min(r0, nq - rows)  # the last block overlaps the previous one: one compiled shape
    pair, part_max = _part_block(qd, gd, start, combine=combine, rows=rows)
    pairs.append(pair[r0 - start:])
    maxima.append(part_max)
  return _fill_blocks(pairs, maxima)


def distance_matrix(q, g, metric: str = 'sqeuclidean', *, part_combine: str = 'mean',
                    block_size: int = DEFAULT_PART_BLOCK) -> jax.Array:
  """The ``[Q, G]`` distance matrix of either form of features (``reid_jax.evaluation.features``):
  :func:`pairwise_distance` for vectors ``[N, D]``, :func:`part_distance` (``part_combine``,
  ``metric`` must be 'euclidean') for part features. For the whole-matrix consumers: re-ranking,
  ROC, pictures; ranking itself never forms the matrix (``evaluate``)."""
  if not feature_lib.is_parts(q) and not feature_lib.is_parts(g):
    return pairwise_distance(q, g, metric)
  check_part_metric(metric)
  check_part_combine(part_combine)
  q, g = feature_lib.check_pair(q, g, 'q', 'g')
  return _part_distance(q, g, part_combine, block_size)
