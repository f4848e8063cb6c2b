"""Verification ROC: TPR at fixed FPR, the standard way (fast-reid ``fastreid/evaluation/roc.py``).

Pairs (query i, gallery j), with the ranking protocol's junk rule: gallery pid < 0 and same-pid
same-camera pairs are dropped, queries with pid < 0 are dropped. Genuine = same pid, impostor =
different pid. A pair is accepted when its distance is below a threshold (score = -distance).
TPR@FPR=x is the genuine acceptance rate at the most permissive threshold whose impostor
acceptance rate is <= x. Exact: the threshold is the (floor(x * #impostors) + 1)-th smallest
impostor distance, found on device by a 32-step bisection over order-preserving uint32 keys.

Mapping to fast-reid's ``evaluate_roc``: it labels *impostor* pairs 1 and scores by distance, so its
"TPR@FPR=x" is the fraction of impostor pairs rejected when a fraction x of genuine pairs is
rejected. That is 1 - FPR at FNR = x in the terms used here, not this TPR@FPR.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from reid_jax.evaluation.rank import check_distmat, check_labels

DEFAULT_FPRS = (1e-4, 1e-3, 1e-2)


def _order_key(d):
  """float32 -> uint32 with the same order (negative floats flipped, positives offset)."""
  b = lax.bitcast_convert_type(d, jnp.uint32)
  return jnp.where(b >> 31 == 1, ~b, b | jnp.uint32(0x80000000))


@jax.jit
def _roc(d, q_pid, q_cam, g_pid, g_cam, fprs):
  same = g_pid[None, :] == q_pid[:, None]
  pair = (q_pid[:, None] >= 0) & (g_pid[None, :] >= 0) & ~(same & (g_cam[None, :] == q_cam[:, None]))
  gen = pair & same
  imp = pair & ~same
  key = _order_key(d.astype(jnp.float32))
  n_imp = jnp.sum(imp, dtype=jnp.int32)
  n_gen = jnp.sum(gen, dtype=jnp.int32)
  need = jnp.floor(fprs * n_imp.astype(jnp.float32)).astype(jnp.int32) + 1  # [F]

  def step(_, lohi):
    lo, hi = lohi  # answer in [lo, hi]
    mid = lo + (hi - lo) // 2
    cnt = jax.vmap(lambda v: jnp.sum(imp & (key <= v), dtype=jnp.int32))(mid)
    ok = cnt >= need
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  f = fprs.shape[0]
  lo, _ = lax.fori_loop(0, 33, step, (jnp.zeros(f, jnp.uint32), jnp.full(f, 2**32 - 1, jnp.uint32)))
  reachable = need <= n_imp  # otherwise every pair is accepted
  acc = jax.vmap(lambda v: jnp.sum(gen & (key < v), dtype=jnp.int32))(lo)
  acc = jnp.where(reachable, acc, jnp.sum(gen & (key < jnp.uint32(0xFF800000)), dtype=jnp.int32))
  return acc, n_gen, n_imp, lo


def tpr_at_fpr(distmat, q_pids, g_pids, q_camids, g_camids, fprs=DEFAULT_FPRS) -> dict:
  """TPR at each FPR in ``fprs`` from ``distmat [Q, G]`` (needs the whole matrix on device).

  Returns ``{'tpr@fpr=1e-04': float, ..., 'num_genuine': int, 'num_impostor': int}``; TPR is a
  fraction in [0, 1]. Raises ValueError when there is no genuine or no impostor pair.
  """
  d = jnp.asarray(distmat, jnp.float32)
  nq, ng = check_distmat(d)
  q_pids, q_camids, g_pids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
  fprs_np = np.asarray(fprs, np.float32).reshape(-1)
  if fprs_np.size == 0 or np.any((fprs_np <= 0) | (fprs_np > 1)):
    raise ValueError(f'fprs must be values in (0, 1], got {fprs}')
  acc, n_gen, n_imp, _ = _roc(d, jnp.asarray(q_pids), jnp.asarray(q_camids), jnp.asarray(g_pids),
                              jnp.asarray(g_camids), jnp.asarray(fprs_np))
  n_gen, n_imp = int(n_gen), int(n_imp)
  if n_gen == 0 or n_imp == 0:
    raise ValueError(f'ROC needs genuine and impostor pairs, got {n_gen} and {n_imp}')
  out = {f'tpr@fpr={f:.0e}': float(a) / n_gen for f, a in zip(np.asarray(fprs, float), np.asarray(acc))}
  out.update(num_genuine=n_gen, num_impostor=n_imp)
  return out
