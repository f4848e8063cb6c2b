"""Pairwise distances between query and gallery features.

Conventions (torchreid ``torchreid/metrics/distance.py``, fast-reid
``fastreid/utils/compute_dist.py``, BoT ``utils/reid_metric.py``):
  'sqeuclidean'  ||q - g||^2 = |q|^2 + |g|^2 - 2 q.g, clamped at 0 (BoT/TransReID/torchreid 'euclidean').
  'euclidean'    sqrt of the above, clamped at 1e-12 before the sqrt (torchreid/fast-reid style).
  'cosine'       1 - cos(q, g) on L2-normalised features (fast-reid default), clipped to [0, 2].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

METRICS = ('euclidean', 'sqeuclidean', 'cosine')


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
