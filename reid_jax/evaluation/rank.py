"""CMC / mAP / mINP on device, in query blocks, without sorting gallery rows.

Protocol (Market-1501 / torchreid / fast-reid, reid-protocols.md §2.1-2.5):
  * for each query, gallery items with the same pid AND the same camid are dropped (junk);
  * gallery items with pid < 0 are junk and dropped; pid 0 (distractors) are ordinary negatives;
  * a query without a remaining positive (or with pid < 0) is skipped (not in any mean);
  * the ranking is ascending distance, ties broken by gallery index (a stable argsort);
  * ``ap='step'``: AP = mean over positives of precision at that positive (torchreid/fast-reid);
    ``ap='trapezoid'``: the official Market-1501 / layumi / MPN AP,
    sum over hits of (1/n)(old_precision + precision)/2 with old_precision = (m-1)/rank (1 at rank 0);
  * INP = n / (1 + 0-based rank of the hardest positive) (fast-reid, Ye et al.); CMC clipped cumsum.

How: no row sort. For a block of queries the distances ``[B, G]`` stay on device; each query's
positives (``P`` at most, found from a pid-sorted gallery) get their 0-based rank by *counting* the
kept gallery items that come before them: ``#{k kept: d_k < d_p or (d_k == d_p and k < p)}``.
The count runs over lane-chunks of 128 gallery columns with a ``[B, 8, 128]`` accumulator (this
form vectorises well on CPU; XLA's CPU sort is ~10x slower). Cost is O(B * G * P_block), with
queries ordered by their number of positives so each block loops only over as many positives as
its queries have. What leaves the device is the ``[B, P]`` int32 ranks of each query's positives
(never ``[Q, G]``); AP / INP / first hit are finished on the host in float64, because doing that
on device costs more XLA:CPU compile time (~0.6 s) than the whole metric computation.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from reid_jax.evaluation.distance import check_metric, pairwise_distance_fn

_LANES = 128  # gallery columns per counting step
_CHUNK = 8    # positives ranked per pass over the block
AP_KINDS = ('step', 'trapezoid')
DEFAULT_BLOCK = 256  # query rows per block: [256, G] float32 in flight


# ----------------------------------------------------------------------------- input checks


def _labels(name: str, x, n: int | None = None) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f'{name} must be a 1-D integer array, got shape {x.shape}')
  if x.size and not np.issubdtype(x.dtype, np.integer):
    if not np.all(np.equal(np.mod(x, 1), 0)):
      raise ValueError(f'{name} must hold integers, got dtype {x.dtype}')
  if n is not None and x.shape[0] != n:
    raise ValueError(f'{name} has {x.shape[0]} entries, expected {n}')
  return x.astype(np.int32)


def check_labels(nq: int, ng: int, q_pids, g_pids, q_camids, g_camids):
  """Validated ``(q_pids, q_camids, g_pids, g_camids)`` as int arrays of lengths Q and G."""
  return (_labels('q_pids', q_pids, nq), _labels('q_camids', q_camids, nq),
          _labels('g_pids', g_pids, ng), _labels('g_camids', g_camids, ng))


def check_distmat(distmat) -> tuple[int, int]:
  """``(Q, G)`` of a ``[Q, G]`` distance matrix, or a ValueError."""
  shape = getattr(distmat, 'shape', None)
  if shape is None or len(shape) != 2:
    raise ValueError(f'distmat must be a [Q, G] matrix, got {shape if shape is not None else type(distmat)}')
  return int(shape[0]), int(shape[1])


def check_ap(ap: str) -> str:
  if ap not in AP_KINDS:
    raise ValueError(f"ap must be one of {AP_KINDS}, got {ap!r}")
  return ap


def _clamp_max_rank(max_rank: int, num_g: int) -> int:
  if int(max_rank) < 1:
    raise ValueError(f'max_rank must be >= 1, got {max_rank}')
  if num_g < max_rank:
    warnings.warn(f'max_rank={max_rank} > gallery size {num_g}: clamped to {num_g} (as torchreid)')
    return int(num_g)
  return int(max_rank)


# ----------------------------------------------------------------------------- device kernel


def _positive_ranks(d, kept_fn, pos_d, pos_i, n_chunks) -> jax.Array:
  """0-based ranks ``[B, P]`` of positives in the filtered ranking.

  d [B, Gp]: distances, Gp a multiple of 128. kept_fn(j) -> [B, 128] bool: which items of
  column chunk j stay in the ranking (recomputed in the loop: cheaper than materialising a masked
  copy of ``d``). pos_d / pos_i [B, P]: each positive's distance and gallery index (P a multiple
  of 8). n_chunks (traced int): how many groups of 8 positives to rank; later ones keep 2**30.
  """
  b, gp = d.shape
  p = pos_d.shape[1]
  dr = d.reshape(b, gp // _LANES, _LANES)
  lane = jnp.arange(_LANES, dtype=jnp.int32)

  def chunk(c, ranks):
    t = lax.dynamic_slice_in_dim(pos_d, c * _CHUNK, _CHUNK, axis=1)[:, :, None]  # [B, C, 1]
    ti = lax.dynamic_slice_in_dim(pos_i, c * _CHUNK, _CHUNK, axis=1)[:, :, None]

    def column(j, acc):
      x = lax.dynamic_index_in_dim(dr, j, axis=1, keepdims=False)
      x = jnp.where(kept_fn(j), x, jnp.inf)[:, None, :]  # [B, 1, 128]
      k = j * _LANES + lane
      before = (x < t) | ((x == t) & (k < ti))  # stable tie-break by gallery index
      return acc + before.astype(jnp.float32)   # exact: each lane counts <= Gp / 128 items

    acc = lax.fori_loop(0, gp // _LANES, column, jnp.zeros((b, _CHUNK, _LANES), jnp.float32))
    r = jnp.sum(acc, axis=-1).astype(jnp.int32)
    return lax.dynamic_update_slice_in_dim(ranks, r, c * _CHUNK, axis=1)

  return lax.fori_loop(0, n_chunks, chunk, jnp.full((b, p), 2**30, jnp.int32))


def _block_ranks(d, q_pid, q_cam, g_pid, g_cam, pos_i, n_chunks):
  """0-based ranks ``[B, P]`` (int32) of each query's positives in its filtered ranking.

  d [B, Gp] distances (Gp a multiple of 128), q_pid / q_cam [B], g_pid / g_cam [Gp] (g_pid < 0:
  junk or padding), pos_i [B, P] gallery indices of each query's positives, packed to the front,
  Gp where none (found on the host from labels only). Slots without a positive hold 2**30.
  """
  b, gp = d.shape
  d = d.astype(jnp.float32)
  gpid = g_pid.reshape(gp // _LANES, _LANES)
  gcam = g_cam.reshape(gp // _LANES, _LANES)

  def kept_fn(j):
    gpj = lax.dynamic_index_in_dim(gpid, j, keepdims=True)  # [1, 128]
    gcj = lax.dynamic_index_in_dim(gcam, j, keepdims=True)
    return (gpj >= 0) & ~((gpj == q_pid[:, None]) & (gcj == q_cam[:, None]))

  is_pos = pos_i < gp
  pos_d = jnp.where(is_pos, jnp.take_along_axis(d, jnp.minimum(pos_i, gp - 1), axis=1), jnp.inf)
  ranks = _positive_ranks(d, kept_fn, pos_d, pos_i, n_chunks)
  return jnp.where(is_pos, ranks, 2**30)


@jax.jit
def _ranks_from_distances(d, q_pid, q_cam, g_pid, g_cam, pos_i, n_chunks):
  return _block_ranks(d, q_pid, q_cam, g_pid, g_cam, pos_i, n_chunks)


@functools.partial(jax.jit, static_argnames=('metric',))
def _ranks_from_features(qf, gf, q_pid, q_cam, g_pid, g_cam, pos_i, n_chunks, *, metric):
  return _block_ranks(pairwise_distance_fn(qf, gf, metric), q_pid, q_cam, g_pid, g_cam, pos_i,
                      n_chunks)


def scores_from_ranks(ranks: np.ndarray) -> dict[str, np.ndarray]:
  """Per-query scores from the 0-based ranks ``[Q, P]`` of its positives (>= 2**30: no positive).

  Host-side float64 (the ``[Q, P]`` int32 ranks are all that leaves the device; doing this on
  device costs more XLA compile time than it saves). Returns ``[Q]`` arrays ap_step, ap_trap,
  inp, first (-1 if no positive), num_pos, valid.
  """
  r = np.sort(np.asarray(ranks, np.int64), axis=1)
  hit = r < 2**30
  n = hit.sum(axis=1)
  m = np.arange(1, r.shape[1] + 1, dtype=np.float64)[None, :]
  rf = np.where(hit, r, 0).astype(np.float64)
  precision = m / (rf + 1.0)
  old_precision = np.where(rf == 0, 1.0, (m - 1.0) / np.maximum(rf, 1.0))
  nf = np.maximum(n, 1)
  valid = n > 0
  last = np.where(hit, r, -1).max(axis=1, initial=-1)
  with np.errstate(divide='ignore', invalid='ignore'):
    return dict(
        ap_step=np.where(valid, np.where(hit, precision, 0).sum(1) / nf, 0.0),
        ap_trap=np.where(valid, np.where(hit, 0.5 * (old_precision + precision), 0).sum(1) / nf,
                         0.0),
        inp=np.where(valid, n / (last + 1.0), 0.0),
        first=np.where(valid, r[:, 0], -1).astype(np.int64),
        num_pos=n, valid=valid)


# ----------------------------------------------------------------------------- host driver


class _Plan:
  """Label bookkeeping shared by the distance and feature paths (host, O(G log G + Q * P))."""

  def __init__(self, q_pids, g_pids, q_camids, g_camids, block_size, mesh):
    self.g = g_pids.shape[0]
    self.gp = _LANES * max(1, -(-self.g // _LANES))
    pad = self.gp - self.g
    self.g_pid = np.concatenate([g_pids, np.full(pad, -1, np.int32)])
    self.g_cam = np.concatenate([g_camids, np.full(pad, -1, np.int32)])
    self.g_order = np.argsort(self.g_pid, kind='stable').astype(np.int32)
    g_pid_sorted = self.g_pid[self.g_order]
    # Candidate positives of a query: the run of its pid in the pid-sorted gallery.
    self.start = np.searchsorted(g_pid_sorted, q_pids, side='left')
    cnt = np.searchsorted(g_pid_sorted, q_pids, side='right') - self.start
    cnt = np.where(q_pids >= 0, cnt, 0)
    self.num_pos = _CHUNK * max(1, -(-int(cnt.max(initial=0)) // _CHUNK))
    # Queries ordered by their positive count: a block ranks only as many positives as it needs.
    self.order = np.argsort(cnt, kind='stable')
    self.cnt = cnt
    self.q_pids, self.q_camids = q_pids, q_camids
    q = q_pids.shape[0]
    ndev = 1 if mesh is None else int(np.prod(list(mesh.shape.values())))
    if block_size < 1:
      raise ValueError(f'block_size must be >= 1, got {block_size}')
    nblocks = max(1, -(-q // block_size))
    # Even blocks, each a multiple of the device count: little padding, one compiled shape.
    self.block = ndev * max(1, -(-q // (nblocks * ndev)))
    self.nblocks = max(1, -(-q // self.block))
    self.q = q
    self.mesh = mesh
    if mesh is not None:
      if 'data' not in mesh.shape:
        raise ValueError(f"mesh must have an axis named 'data', got axes {tuple(mesh.shape)}")
      self.rows = NamedSharding(mesh, PartitionSpec('data'))
      self.rep = NamedSharding(mesh, PartitionSpec())
    self.gallery_labels = (self.put(self.g_pid, replicate=True),
                           self.put(self.g_cam, replicate=True))

  def put(self, x, replicate=False):
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, self.rep if replicate else self.rows)

  def blocks(self):
    """Yields per block: (query indices [block], #real rows, q_pid, q_cam, pos_i, n_chunks)."""
    slot = np.arange(self.num_pos)
    for i in range(self.nblocks):
      lo = i * self.block
      hi = min(self.q, lo + self.block)
      qi = self.order[np.minimum(np.arange(lo, lo + self.block), self.q - 1)]
      nreal = hi - lo
      qp = self.q_pids[qi].copy()
      qp[nreal:] = -1  # padding rows repeat the last query; pid -1 makes them invalid
      qc = self.q_camids[qi]
      cnt = np.where(np.arange(self.block) < nreal, self.cnt[qi], 0)
      cand = self.g_order[np.minimum(self.start[qi][:, None] + slot[None, :], self.gp - 1)]
      is_pos = (slot[None, :] < cnt[:, None]) & (self.g_cam[cand] != qc[:, None])
      pos_i = np.where(is_pos, cand, self.gp)
      pos_i = np.sort(pos_i, axis=1).astype(np.int32)  # real positives first (Gp sorts last)
      need = int(is_pos.sum(axis=1).max(initial=0))
      yield qi, nreal, qp, qc, pos_i, -(-need // _CHUNK)


def _run(plan: _Plan, rank_block) -> dict[str, np.ndarray]:
  out = []
  pending = None
  for qi, nreal, qp, qc, pos_i, n_chunks in plan.blocks():
    res = rank_block(qi, plan.put(qp), plan.put(qc), plan.put(pos_i), jnp.int32(n_chunks))
    if pending is not None:  # fetch the previous block while this one runs
      out.append(np.asarray(jax.device_get(pending[0]))[:pending[1]])
    pending = (res, nreal)
  out.append(np.asarray(jax.device_get(pending[0]))[:pending[1]])
  ranks = np.empty((plan.q, plan.num_pos), np.int32)
  ranks[plan.order] = np.concatenate(out)  # back to the caller's query order
  return scores_from_ranks(ranks)


def summarize(per_query: dict[str, np.ndarray], max_rank: int, ap: str) -> dict[str, Any]:
  """Per-query scores -> ``dict(cmc=[max_rank], mAP, mINP, num_valid_queries, ...)``."""
  valid = per_query['valid']
  nv = int(valid.sum())
  if nv == 0:
    raise ValueError('no query has a positive in the gallery (after dropping same-pid '
                     'same-camera and pid < 0 items): check q_pids/g_pids/camids')
  first = per_query['first'][valid]
  cmc = (first[:, None] <= np.arange(max_rank)[None, :]).mean(axis=0)
  all_ap = per_query['ap_step' if ap == 'step' else 'ap_trap']
  return dict(
      cmc=cmc.astype(np.float64),
      mAP=float(all_ap[valid].mean()),
      mINP=float(per_query['inp'][valid].mean()),
      num_valid_queries=nv,
      all_AP=np.where(valid, all_ap, np.nan),
      all_INP=np.where(valid, per_query['inp'], np.nan),
      first_hit=per_query['first'],  # 0-based rank of the first true match; -1 if skipped
  )


def rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                 ap: str = 'step', *, block_size: int = DEFAULT_BLOCK, mesh=None) -> dict[str, Any]:
  """CMC / mAP / mINP from a distance matrix ``distmat [Q, G]`` (NumPy or jax array).

  Returns ``dict(cmc=[max_rank] float, mAP=float, mINP=float, num_valid_queries=int,
  all_AP=[Q], all_INP=[Q] (NaN for skipped queries), first_hit=[Q] int (-1 if skipped))``.
  AP and mINP are fractions in [0, 1] (not percent). ``ap`` is 'step' or 'trapezoid'.
  Rows are processed ``block_size`` at a time; with ``mesh`` each block is sharded over 'data'.
  """
  check_ap(ap)
  nq, ng = check_distmat(distmat)
  q_pids, q_camids, g_pids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
  max_rank = _clamp_max_rank(max_rank, ng)
  plan = _Plan(q_pids, g_pids, q_camids, g_camids, block_size, mesh)
  if isinstance(distmat, jax.Array):
    distmat = jnp.pad(distmat, ((0, 0), (0, plan.gp - ng)), constant_values=jnp.inf)
  else:
    distmat = np.asarray(distmat)
  def rank_block(qi, qp, qc, pos_i, n_chunks):
    if isinstance(distmat, jax.Array):
      rows = jnp.take(distmat, jnp.asarray(qi), axis=0)
    else:
      rows = np.empty((plan.block, plan.gp), np.float32)  # fresh: the device may alias it
      rows[:, ng:] = np.inf
      rows[:, :ng] = distmat[qi]
    return _ranks_from_distances(plan.put(rows), qp, qc, *plan.gallery_labels, pos_i, n_chunks)

  return summarize(_run(plan, rank_block), max_rank, ap)


def evaluate(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, *, metric: str = 'sqeuclidean',
             rerank: bool | str | dict = False, max_rank: int = 50, ap: str = 'step',
             block_size: int = DEFAULT_BLOCK, mesh=None) -> dict[str, Any]:
  """Distances + CMC/mAP/mINP from features ``q_feats [Q, D]``, ``g_feats [G, D]``.

  Query blocks of ``block_size`` rows (padded to a multiple of the device count, padding masked)
  are sharded over the mesh axis 'data' (AxisType.Auto); the gallery is replicated. Peak device
  memory is about ``G*D*4 + 2*block_size*G*4`` bytes; the ``[Q, G]`` matrix is never formed.
  ``metric``: 'euclidean' | 'sqeuclidean' | 'cosine'. ``rerank``: False, True (paper 20/6/0.3)
  or a preset name of :data:`reid_jax.evaluation.rerank.PRESETS` / a dict of re_rank kwargs;
  re-ranking needs the ``[Q, G]``, ``[Q, Q]`` and ``[G, G]`` distances (see rerank.py).
  Returns the dict of :func:`rank_metrics`.
  """
  check_metric(metric)
  check_ap(ap)
  q_feats = np.asarray(q_feats, np.float32) if not isinstance(q_feats, jax.Array) else q_feats
  g_feats = np.asarray(g_feats, np.float32) if not isinstance(g_feats, jax.Array) else g_feats
  if q_feats.ndim != 2 or g_feats.ndim != 2 or q_feats.shape[1] != g_feats.shape[1]:
    raise ValueError(f'q_feats and g_feats must be [Q, D] and [G, D] with one D, got '
                     f'{q_feats.shape} and {g_feats.shape}')
  nq, ng = q_feats.shape[0], g_feats.shape[0]
  q_pids, q_camids, g_pids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
  if rerank:
    from reid_jax.evaluation import rerank as rr  # noqa: PLC0415
    distmat = rr.re_rank_features(q_feats, g_feats, rerank, metric=metric)
    return rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap,
                        block_size=block_size, mesh=mesh)
  max_rank = _clamp_max_rank(max_rank, ng)
  plan = _Plan(q_pids, g_pids, q_camids, g_camids, block_size, mesh)
  gf = np.zeros((plan.gp, g_feats.shape[1]), np.float32)
  gf[:ng] = np.asarray(g_feats)
  gf = plan.put(gf, replicate=True)
  qf_all = np.asarray(q_feats)

  def rank_block(qi, qp, qc, pos_i, n_chunks):
    return _ranks_from_features(plan.put(qf_all[qi]), gf, qp, qc, *plan.gallery_labels, pos_i,
                                n_chunks, metric=metric)

  return summarize(_run(plan, rank_block), max_rank, ap)


# ----------------------------------------------------------------------------- CUHK03 classic


@functools.partial(jax.jit, static_argnames=('num_repeats', 'max_rank', 'num_ids'))
def _cuhk03_cmc(d, q_pid, q_cam, g_pid, g_cam, g_uid, key, *, num_repeats, max_rank, num_ids):
  nq, ng = d.shape
  kept = (g_pid[None, :] >= 0) & ~((g_pid[None, :] == q_pid[:, None])
                                   & (g_cam[None, :] == q_cam[:, None]))
  pos = kept & (g_pid[None, :] == q_pid[:, None]) & (q_pid[:, None] >= 0)
  valid = jnp.any(pos, axis=1)
  gidx = jnp.arange(ng, dtype=jnp.int32)
  seg = jnp.where(g_uid >= 0, g_uid, num_ids)  # junk goes to a spare segment

  def one(key):
    u = jnp.where(kept, jax.random.uniform(key, (nq, ng)), -1.0)
    umax = jax.ops.segment_max(u.T, seg, num_segments=num_ids + 1).T  # [Q, U+1]
    chosen = kept & (u == jnp.take(umax, seg, axis=1))  # one uniform pick per (query, identity)
    sel_pos = chosen & pos
    t = jnp.min(jnp.where(sel_pos, d, jnp.inf), axis=1, keepdims=True)
    ti = jnp.min(jnp.where(sel_pos & (d == t), gidx[None, :], ng), axis=1, keepdims=True)
    before = chosen & ((d < t) | ((d == t) & (gidx[None, :] < ti)))
    rank = jnp.sum(before, axis=1)
    return (rank[:, None] <= jnp.arange(max_rank)[None, :]).astype(jnp.float32)

  cmc = jnp.mean(jax.vmap(one)(jax.random.split(key, num_repeats)), axis=0)  # [Q, max_rank]
  return cmc, valid


def cuhk03_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                   num_repeats: int = 10, seed: int = 0, ap: str = 'step') -> dict[str, Any]:
  """Classic CUHK03 single-gallery-shot CMC (torchreid ``eval_cuhk03``, reid-protocols.md §2.2).

  Same junk rule as :func:`rank_metrics`. For each valid query and each of ``num_repeats``
  repeats, one gallery image per identity is drawn uniformly (seeded by ``seed``; torchreid's draw
  is unseeded) among the kept items; the CMC is the clipped cumsum on that one-per-identity list,
  averaged over repeats and valid queries. mAP / mINP are computed ONCE on the full filtered list
  (current torchreid), not per draw (the older SAN-vendored variant averaged per-draw APs).
  Small datasets only: works on the whole ``[Q, G]`` matrix (``num_repeats`` copies in flight).
  """
  d = np.asarray(distmat, np.float32)
  nq, ng = check_distmat(d)
  q_pids, q_camids, g_pids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
  if num_repeats < 1:
    raise ValueError(f'num_repeats must be >= 1, got {num_repeats}')
  full = rank_metrics(d, q_pids, g_pids, q_camids, g_camids, max_rank, ap)
  max_rank = len(full['cmc'])
  uniq, g_uid = np.unique(np.where(g_pids >= 0, g_pids, -1), return_inverse=True)
  g_uid = np.where(g_pids >= 0, g_uid - int((uniq < 0).any()), -1).astype(np.int32)
  cmc, valid = _cuhk03_cmc(jnp.asarray(d), jnp.asarray(q_pids), jnp.asarray(q_camids),
                           jnp.asarray(g_pids), jnp.asarray(g_camids), jnp.asarray(g_uid),
                           jax.random.key(seed), num_repeats=int(num_repeats),
                           max_rank=max_rank, num_ids=max(1, len(uniq)))
  cmc, valid = np.asarray(cmc), np.asarray(valid)
  return dict(full, cmc=cmc[valid].mean(axis=0).astype(np.float64), cmc_all_gallery=full['cmc'])
