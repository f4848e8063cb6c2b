"""ReID losses with the PyTorch formulas of the official code (BoT's ``layers/triplet_loss.py`` and
``layers/center_loss.py`` in michuanhaohao/reid-strong-baseline; Luo et al., "Bag of Tricks and a
Strong Baseline for Deep Person Re-identification", CVPRW 2019).

All functions are pure and jittable. Features are ``[B, D]``, logits ``[B, C]``, integer labels
``[B]``. Every loss returns a float32 scalar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_label_smooth(logits: Array, labels: Array, epsilon: float = 0.1,
                               num_classes: int | None = None) -> Array:
  """Label-smoothed cross entropy, ``mean_b sum_c -q_c log_softmax(logits)_c``.

  ``q = (1 - epsilon) * onehot + epsilon / K`` with ``K = num_classes`` if given, else
  ``logits.shape[-1]``. A fixed ``num_classes`` different from the logits' width reproduces
  APNet's quirk (K = 751 whatever the dataset), where ``q`` no longer sums to 1.
  """
  logits = logits.astype(jnp.float32)
  width = logits.shape[-1]
  k = width if num_classes is None else num_classes
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, width, dtype=jnp.float32)
  targets = (1.0 - epsilon) * onehot + epsilon / k
  return jnp.mean(jnp.sum(-targets * log_probs, axis=-1))


def euclidean_dist(x: Array, y: Array) -> Array:
  """``[N, D], [M, D] -> [N, M]``: ``sqrt(clamp(|x|² + |y|² - 2 x·y, min=1e-12))``, as BoT/torchreid."""
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  xx = jnp.sum(x * x, axis=1, keepdims=True)
  yy = jnp.sum(y * y, axis=1, keepdims=True).T
  d2 = xx + yy - 2.0 * (x @ y.T)
  return jnp.sqrt(jnp.maximum(d2, 1e-12))


def hard_example_mining(dist: Array, labels: Array) -> tuple[Array, Array]:
  """Batch-hard mining on ``dist [B, B]``: hardest positive (anchor itself included, as the
  official code) and hardest negative per anchor, each ``[B]``."""
  same = labels[:, None] == labels[None, :]
  dist_ap = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
  dist_an = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
  return dist_ap, dist_an


def triplet_loss_batch_hard(features: Array, labels: Array, margin: float | None = 0.3) -> Array:
  """Batch-hard triplet loss on raw (not normalised) features ``[B, D]``.

  ``margin`` given: ``mean_i max(0, d_ap - d_an + margin)`` (``nn.MarginRankingLoss``).
  ``margin=None``: the soft-margin variant ``mean_i softplus(d_ap - d_an)`` (``nn.SoftMarginLoss``).
  An anchor without a negative in the batch contributes ``max(0, -inf)`` = 0 (hinge) and is
  excluded from the soft-margin mean.
  """
  dist = euclidean_dist(features, features)
  dist_ap, dist_an = hard_example_mining(dist, labels)
  if margin is None:
    valid = jnp.isfinite(dist_an)
    per_anchor = jnp.where(valid, jax.nn.softplus(dist_ap - jnp.where(valid, dist_an, 0.0)), 0.0)
    return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(valid), 1)
  return jnp.mean(jnp.maximum(dist_ap - dist_an + margin, 0.0))


def center_loss(features: Array, labels: Array, centers: Array) -> Array:
  """BoT center loss ``(1/B) sum_i clamp(|f_i - c_{y_i}|², 1e-12, 1e12)``, ``centers [C, D]``.

  The official code clamps the whole masked ``[B, C]`` matrix, which adds ``(C - 1) * 1e-12``
  per row; that constant is kept so values match to the last digit.
  """
  features = features.astype(jnp.float32)
  c = centers[labels].astype(jnp.float32)
  d = jnp.clip(jnp.sum(jnp.square(features - c), axis=1), 1e-12, 1e12)
  num_classes = centers.shape[0]
  return jnp.mean(d + (num_classes - 1) * 1e-12)
