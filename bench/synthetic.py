"""Synthetic ReID evaluation sets with realistic label structure (bench and tests)."""

from __future__ import annotations

import numpy as np

# (num_query, num_gallery, num_ids, num_cams, distractors with pid 0)
SIZES = {
    'market': (3368, 15913, 751, 6, 2798),
    'msmt': (11659, 82161, 3060, 15, 0),
    'small': (300, 1500, 60, 6, 200),
    'occluded_duke': (2210, 17661, 1110, 8, 0),
}


def labels(name: str, seed: int = 0):
  """q_pids, g_pids, q_camids, g_camids with Market/MSMT-like counts (pids 1..num_ids)."""
  nq, ng, nid, ncam, ndis = SIZES[name]
  rng = np.random.default_rng(seed)
  # Gallery: every identity at least once, the rest drawn with a skewed (gamma) popularity.
  w = rng.gamma(2.0, 1.0, nid)
  rest = rng.choice(nid, ng - ndis - nid, p=w / w.sum())
  g_pids = np.concatenate([np.arange(nid), rest]) + 1
  g_pids = np.concatenate([g_pids, np.zeros(ndis, np.int64)])
  g_cam = rng.integers(0, ncam, ng)
  q_pids = rng.permutation(np.arange(nq) % nid) + 1  # ~nq/nid queries per identity, as in Market
  q_cam = rng.integers(0, ncam, nq)
  perm = rng.permutation(ng)
  return q_pids.astype(np.int32), g_pids[perm].astype(np.int32), q_cam.astype(np.int32), \
      g_cam[perm].astype(np.int32)


def features(q_pids, g_pids, dim: int, noise: float = 1.0, seed: int = 0):
  """Unit-norm features: identity centre + Gaussian noise (pid 0 / junk get their own noise)."""
  rng = np.random.default_rng(seed + 1)
  nid = int(max(q_pids.max(), g_pids.max())) + 1
  centres = rng.standard_normal((nid, dim), dtype=np.float32)

  def make(pids):
    f = rng.standard_normal((len(pids), dim), dtype=np.float32) * noise
    f += np.where((pids > 0)[:, None], centres[np.maximum(pids, 0)], 0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f

  return make(q_pids), make(g_pids)


def part_features(q_pids, g_pids, parts: int, dim: int, noise: float = 1.0, seed: int = 0,
                  visible: tuple[float, float] = (0.9, 0.6)):
  """Part-based features (``reid_jax.evaluation.features``): ``{'feat': [N, parts, dim]`` unit
  per part, each part an identity centre + noise as :func:`features` ``, 'visibility': [N, parts]
  bool}``, the first entry visible with probability ``visible[0]``, the others ``visible[1]``."""
  out = []
  for pids in (q_pids, g_pids):
    out.append({'feat': np.empty((len(pids), parts, dim), np.float32)})
  for p in range(parts):  # one part at a time: peak memory ~ the result plus one part
    for o, f in zip(out, features(q_pids, g_pids, dim, noise, seed + 7 * p)):
      o['feat'][:, p] = f
  rng = np.random.default_rng(seed + 2)
  prob = np.array([visible[0]] + [visible[1]] * (parts - 1))
  for o in out:
    o['visibility'] = rng.random(o['feat'].shape[:2]) < prob
  return out[0], out[1]
