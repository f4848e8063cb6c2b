"""CMC / mAP / mINP on device, by counting ranks of positives instead of sorting gallery rows.

Protocol (Market-1501 / torchreid / fast-reid, reid-protocols.md §2.1-2.5):
  * for each query, gallery items with the same pid AND the same camid are dropped (junk);
  * gallery items with pid < 0 are junk and dropped; pid 0 (distractors) are ordinary negatives;
  * a query without a remaining positive (or with pid < 0) is skipped (not in any mean);
  * the ranking is ascending distance, ties broken by gallery index (a stable argsort);
  * ``ap='step'``: AP = mean over positives of precision at that positive (torchreid/fast-reid);
    ``ap='trapezoid'``: the official Market-1501 / layumi / MPN AP,
    sum over hits of (1/n)(old_precision + precision)/2 with old_precision = (m-1)/rank (1 at rank 0);
  * INP = n / (1 + 0-based rank of the hardest positive) (fast-reid, Ye et al.); CMC clipped cumsum.

How: no row sort (XLA's CPU sort is ~10x slower than counting). The 0-based rank of a positive p
of query q is ``#{k kept for q: (d_qk, k) < (d_qp, p)}``. Distances reach the kernel in blocks of
query rows with every dropped item (junk, same pid and camera, column padding) set to NaN, whose
sort key is above +inf: the kernel needs no labels. The host finds each query's positives from the
labels alone and cuts them into *work items* (a query row and up to 8 of its positives); the
kernel takes ``W`` items at a time and, in a loop over 128-column chunks, compares each chunk with
the 8 thresholds into a ``[W, 8, 128]`` int32 accumulator (4 KiB per item; 128 items fit a CPU L2
cache). Distances are compared as order-preserving int32 keys, so the tie-break by gallery index
is one integer add on the threshold. Work is Q * G * (positives rounded up to 8), however
positives are spread over queries, and the kernel has one static shape per evaluation, so it
compiles once (~0.2 s on a 2-core CPU). What leaves the device is the rank of every positive
(int32, O(number of positives)); AP, INP and the first hit are finished on the host in float64.
"""

from __future__ import annotations

import collections
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from reid_jax.evaluation import features as feature_lib
from reid_jax.evaluation.distance import (check_metric, check_part_combine, check_part_metric,
                                          ranking_distance_fn)

_LANES = 128      # gallery columns per counting step
_SLOTS = 8        # positives per work item
_NO_POSITIVE = 2**30
AP_KINDS = ('step', 'trapezoid')
DEFAULT_ITEMS = 128  # work items per kernel call: a [128, 8, 128] int32 accumulator = 512 KiB
DEFAULT_BLOCK = 256  # query rows per distance block in evaluate(): [256, G] float32 in flight


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
  if x.size and (x.min() < -2**31 or x.max() >= 2**31):
    raise ValueError(f'{name} must fit in int32, got values in [{x.min()}, {x.max()}]')
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
  if shape[0] == 0 or shape[1] == 0:
    raise ValueError(f'distmat must have at least one query and one gallery item, got {shape}')
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


# ----------------------------------------------------------------------------- device kernels


_NAN_KEY = 0x7FC00000  # the key of the canonical NaN: above +inf (0x7F800000)


def _sort_key(d: jax.Array) -> jax.Array:
  """Order-preserving int32 key of float32: ``a < b`` iff ``key(a) < key(b)``; every NaN maps
  to one key above +inf. XLA:CPU flushes subnormals: they compare (and key) as 0."""
  d = lax.select(d == 0, lax.full_like(d, 0), d)  # -0.0 == +0.0, as for argsort
  d = lax.select(d != d, lax.full_like(d, np.nan), d)  # sign or payload of a NaN: one key
  bits = lax.bitcast_convert_type(d, jnp.int32)
  return bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negatives: reverse the magnitude order


_ROW_CHUNK = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,),
                                        start_index_map=(0, 1))
_POINT = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0, 1),
                                    start_index_map=(0, 1))
_IN_BOUNDS = lax.GatherScatterMode.PROMISE_IN_BOUNDS  # indices come from the host plan


@jax.jit
def _count_before(dist, rows, pos, lane, acc0):
  """Per work item and positive slot, the number of items ranked before the positive.

  dist [R, Gp] float32, Gp a multiple of L, dropped items (junk, padding) NaN. Per work item:
  rows [W, 1] its row of ``dist``; pos [W, S] the column of each of its positives (any column in
  unused slots). lane [L] = arange(L); acc0 [W, S, L] zeros (both passed in: each op the kernel
  builds itself is one more XLA:CPU kernel to compile, ~20 ms each). Returns ``[W, S]`` int32:
  the number of items before each positive in ascending distance, ties broken by column index
  (NaN items never count: their key is above every number), or -1 where the positive's own
  distance is NaN (it has no rank). Written with lax: it traces faster than jnp.
  """
  w, s, lanes = acc0.shape
  point = lax.concatenate([lax.broadcast_in_dim(rows, (w, s, 1), (0, 2)), pos[..., None]], 2)
  t = _sort_key(lax.gather(dist, point, _POINT, (1, 1), mode=_IN_BOUNDS))  # [W, S]

  def wide(a, dims):
    return lax.broadcast_in_dim(a, (w, s, lanes), dims)

  def column(j, acc):
    at = lax.concatenate([rows, lax.full_like(rows, j * lanes)], 1)
    key = _sort_key(lax.gather(dist, at, _ROW_CHUNK, (1, lanes), mode=_IN_BOUNDS))  # [W, L]
    # (x, k) < (t, p)  <=>  key < t + [k < p]  for integer keys: one add is the stable tie-break.
    tie = (wide(j * lanes + lane, (2,)) < wide(pos, (0, 1))).astype(jnp.int32)
    return acc + (wide(key, (0, 2)) < wide(t, (0, 1)) + tie).astype(jnp.int32)

  counts = lax.reduce(lax.fori_loop(0, dist.shape[1] // lanes, column, acc0), np.int32(0), lax.add,
                      (2,))
  return lax.select(t == _NAN_KEY, lax.full_like(counts, -1), counts)


@functools.partial(jax.jit, static_argnames=('metric', 'part_combine', 'padded'))
def _masked_distances(qf, gf, q_pid, q_cam, g_pid, g_cam, *, metric, part_combine, padded):
  """``[B, padded]`` distances of ``qf`` (``[B, D]`` or part features of B images) to ``gf``
  (``[G, D]`` or part features), dropped items and padding NaN."""
  d = ranking_distance_fn(qf, gf, metric, part_combine)
  drop = (g_pid[None, :] < 0) | ((g_pid[None, :] == q_pid[:, None])
                                 & (g_cam[None, :] == q_cam[:, None]))
  d = jnp.where(drop, jnp.nan, d)
  return jnp.pad(d, ((0, 0), (0, padded - d.shape[1])), constant_values=jnp.nan)


def scores_from_ranks(ranks: np.ndarray) -> dict[str, np.ndarray]:
  """Per-query scores from the 0-based ranks ``[Q, P]`` of its positives (>= 2**30: no positive).

  Host-side float64. Returns ``[Q]`` arrays ap_step, ap_trap, inp, first (-1 if no positive),
  num_pos, valid.
  """
  r = np.sort(np.asarray(ranks, np.int64), axis=1)
  hit = r < _NO_POSITIVE
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


class _Work:
  """Work items and dropped items, from labels only (host, O(G log G + Q * max same-pid items)).

  Item i ranks up to 8 positives ``pos[i]`` (-1: unused slot) of query ``query[i]``; items are
  ordered by query, so the items of a block of queries are contiguous. ``drop_q`` / ``drop_g``:
  the (query, gallery) pairs of same pid and camera (sorted by query); ``junk``: gallery columns
  with pid < 0.
  """

  def __init__(self, q_pids, g_pids, q_camids, g_camids):
    nq, ng = q_pids.shape[0], g_pids.shape[0]
    order = np.argsort(g_pids, kind='stable')  # within a pid: ascending gallery index
    pid_sorted = g_pids[order]
    start = np.searchsorted(pid_sorted, q_pids, side='left')
    cnt = np.where(q_pids >= 0, np.searchsorted(pid_sorted, q_pids, side='right') - start, 0)
    width = max(1, int(cnt.max(initial=0)))
    slot = np.arange(width)
    cand = order[np.minimum(start[:, None] + slot[None, :], ng - 1)]
    same_pid = slot[None, :] < cnt[:, None]
    same_cam = g_camids[cand] == q_camids[:, None]
    is_pos = same_pid & ~same_cam
    self.drop_q, col = np.nonzero(same_pid & same_cam)
    self.drop_g = cand[self.drop_q, col]
    self.junk = np.flatnonzero(g_pids < 0)
    front = np.argsort(~is_pos, axis=1, kind='stable')  # positives first
    packed = np.where(np.take_along_axis(is_pos, front, 1), np.take_along_axis(cand, front, 1), -1)
    self.num_slots = _SLOTS * -(-width // _SLOTS)
    per_query = np.full((nq, self.num_slots), -1, np.int64)
    per_query[:, :width] = packed
    chunks = -(-is_pos.sum(axis=1) // _SLOTS)
    self.query = np.repeat(np.arange(nq), chunks)
    self.chunk = np.arange(self.query.size) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    self.pos = per_query.reshape(nq, -1, _SLOTS)[self.query, self.chunk]  # [N, S]
    self.nq, self.ng = nq, ng
    self.padded = _LANES * max(1, -(-ng // _LANES))

  def ranks(self, counts: np.ndarray) -> np.ndarray:
    """``[Q, num_slots]`` ranks (2**30 where no positive) from the items' counts ``[N, S]``."""
    out = np.full((self.nq, self.num_slots), _NO_POSITIVE, np.int64)
    out.reshape(self.nq, -1, _SLOTS)[self.query, self.chunk] = np.where(
        self.pos >= 0, counts, _NO_POSITIVE)
    return out

  def masked_rows(self, distmat: np.ndarray, queries: np.ndarray, rows: int) -> np.ndarray:
    """Rows ``queries`` (sorted, at most ``rows``) of ``distmat`` as a fresh 64-byte-aligned
    ``[rows, padded]`` float32 array, dropped items and padding NaN.

    The CPU client adopts a 64-byte-aligned NumPy buffer without copying; an unaligned one (NumPy
    gives 16) it copies into freshly mapped memory, whose page faults cost ~0.3 s per GiB.
    """
    n = rows * self.padded
    buf = np.empty(n + 16, np.float32)
    off = ((-buf.ctypes.data) % 64) // 4
    out = buf[off:off + n].reshape(rows, self.padded)
    m = len(queries)
    if m and queries[-1] - queries[0] == m - 1:  # a contiguous run: a plain slice copy
      out[:m, :self.ng] = distmat[queries[0]:queries[0] + m]
    else:
      out[:m, :self.ng] = distmat[queries]
    out[:, self.ng:] = np.nan
    out[m:] = np.nan
    if self.junk.size:
      out[:, self.junk] = np.nan
    if m:
      a, b = np.searchsorted(self.drop_q, (queries[0], queries[-1] + 1))
      r = np.minimum(np.searchsorted(queries, self.drop_q[a:b]), m - 1)
      hit = queries[r] == self.drop_q[a:b]
      out[r[hit], self.drop_g[a:b][hit]] = np.nan
    return out


class _Device:
  """Where the kernel runs: one device, or items sharded over the mesh axis 'data'."""

  def __init__(self, mesh, block_size: int, nq: int, items_per_call: int = DEFAULT_ITEMS):
    self.mesh = mesh
    self.ndev = 1
    if mesh is not None:
      if 'data' not in mesh.shape:
        raise ValueError(f"mesh must have an axis named 'data', got axes {tuple(mesh.shape)}")
      self.ndev = int(mesh.shape['data'])
      self.sharded = NamedSharding(mesh, PartitionSpec('data'))
      self.rep = NamedSharding(mesh, PartitionSpec())
    if block_size < 1:
      raise ValueError(f'block_size must be >= 1, got {block_size}')
    nblocks = max(1, -(-nq // block_size))
    self.rows = self.round(-(-nq // nblocks))  # query rows per distance block: even blocks
    self.items = self.round(min(items_per_call, self.rows))  # one call spans <= rows queries
    self.lane = self.put(np.arange(_LANES, dtype=np.int32), replicate=True)
    self.acc0 = self.put(np.zeros((self.items, _SLOTS, _LANES), np.int32))

  def round(self, n: int) -> int:
    return self.ndev * max(1, -(-int(n) // self.ndev))

  def put(self, x, replicate=False):
    if self.mesh is None:
      return jax.device_put(x)  # not jnp.asarray: that compiles a conversion per dtype
    return jax.device_put(x, self.rep if replicate else self.sharded)


def _rank_items(block_distances, rows: int, work: _Work, dev: _Device) -> np.ndarray:
  """Counts ``[N, S]`` of all work items: the ranks of their positives.

  Calls take ``dev.items`` consecutive work items (only the last call is padded). Blocks hold the
  distances of ``rows`` consecutive queries among those with work: ``block_distances(queries)``
  returns them as a device ``[rows, padded]`` array. A call's items belong to at most
  ``dev.items <= rows`` queries, so a block that starts at its first query holds them all.
  """
  n, w = work.query.size, dev.items
  active = np.unique(work.query)  # queries with at least one positive, ascending
  slot = np.searchsorted(active, work.query)  # each item's query, as an index into ``active``
  out = np.empty((n, _SLOTS), np.int64)
  pending = collections.deque()

  def fetch():
    lo, m, res = pending.popleft()
    out[lo:lo + m] = np.asarray(jax.device_get(res))[:m]

  start, dist = None, None
  for lo in range(0, n, w):
    m = min(w, n - lo)
    idx = np.minimum(np.arange(lo, lo + w), n - 1)  # pad: repeat the last item
    if start is None or slot[idx[-1]] >= start + rows:
      start = int(slot[idx[0]])
      dist = block_distances(active[start:start + rows])
    res = _count_before(dist, dev.put((slot[idx] - start)[:, None].astype(np.int32)),
                        dev.put(np.maximum(work.pos[idx], 0).astype(np.int32)), dev.lane,
                        dev.acc0)
    pending.append((lo, m, res))
    if len(pending) > 2:  # fetch while the next calls run; bounded host memory
      fetch()
  while pending:
    fetch()
  bad = (out < 0) & (work.pos >= 0)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise ValueError(f'the distance between query {work.query[i]} and its positive (gallery '
                     f'{work.pos[i, j]}) is NaN: distances must be numbers or +-inf (features '
                     f'with NaN, or so large that |q|^2 + |g|^2 - 2 q.g overflows?)')
  return out


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
  The matrix goes to the device ``block_size`` query rows at a time (a jax array is fetched to
  the host first); with ``mesh`` the work items are sharded over 'data', the rows replicated.
  Distances are ranked as float32 (float64 values that round to one float32 tie, broken by
  gallery index); they may be +-inf; a NaN distance to a positive is an error, to any other item
  ranks it last.
  """
  check_ap(ap)
  nq, ng = check_distmat(distmat)
  q_pids, q_camids, g_pids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
  max_rank = _clamp_max_rank(max_rank, ng)
  dev = _Device(mesh, block_size, nq)
  work = _Work(q_pids, g_pids, q_camids, g_camids)
  distmat = np.asarray(distmat)
  counts = _rank_items(
      lambda queries: dev.put(work.masked_rows(distmat, queries, dev.rows), replicate=True),
      dev.rows, work, dev)
  return summarize(scores_from_ranks(work.ranks(counts)), max_rank, ap)


def evaluate(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, *, metric: str = 'sqeuclidean',
             rerank: bool | str | dict = False, max_rank: int = 50, ap: str = 'step',
             block_size: int = DEFAULT_BLOCK, mesh=None, part_combine: str = 'mean'
             ) -> dict[str, Any]:
  """Distances + CMC/mAP/mINP from features ``q_feats [Q, D]``, ``g_feats [G, D]``, or from
  part-based features on both sides (dicts ``{'feat': [N, P, D], 'visibility': [N, P]}``, see
  ``reid_jax.evaluation.features``) compared by BPBreID's part distance
  (:func:`reid_jax.evaluation.distance.part_distance`; ``metric`` must then be 'euclidean',
  ``part_combine`` is 'mean' or 'max').

  Distances are formed for ``block_size`` query rows at a time (rows sharded over the mesh axis
  'data', AxisType.Auto; the gallery replicated), then ranked by the counting kernel of
  :func:`rank_metrics`. Peak device memory is about ``G*D*4 + 2*block_size*G*4`` bytes (part
  features: ``G*P*D*4`` for the gallery and a few ``block_size*G*4`` for the per-part
  accumulators); the ``[Q, G]`` matrix is never formed. Part pairs with no common visible part rank after every other
  gallery item of their query, as under BPBreID's whole-matrix ``max + 1`` rule.
  ``metric``: 'euclidean' | 'sqeuclidean' | 'cosine'. ``rerank``: False, True (paper 20/6/0.3)
  or a preset name of :data:`reid_jax.evaluation.rerank.PRESETS` / a dict of re_rank kwargs;
  re-ranking needs the ``[Q, G]``, ``[Q, Q]`` and ``[G, G]`` distances (see rerank.py).
  Returns the dict of :func:`rank_metrics`.
  """
  check_metric(metric)
  check_ap(ap)
  check_part_combine(part_combine)
  q_feats, g_feats = feature_lib.check_pair(q_feats, g_feats)
  if feature_lib.is_parts(q_feats):
    check_part_metric(metric)
  nq, ng = feature_lib.num_rows(q_feats), feature_lib.num_rows(g_feats)
  q_pids, q_camids, g_pids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
  if rerank:
    from reid_jax.evaluation import rerank as rr  # noqa: PLC0415
    distmat = rr.re_rank_features(q_feats, g_feats, rerank, metric=metric,
                                  part_combine=part_combine)
    return rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap,
                        block_size=block_size, mesh=mesh)
  max_rank = _clamp_max_rank(max_rank, ng)
  dev = _Device(mesh, block_size, nq)
  rows = dev.rows
  work = _Work(q_pids, g_pids, q_camids, g_camids)
  gallery = [dev.put(x, replicate=True) for x in (g_feats, g_pids, g_camids)]

  def padded_rows(a, queries):  # rows ``queries`` of a, zero (False) rows below: never ranked
    out = np.zeros((rows,) + a.shape[1:], a.dtype)
    out[:len(queries)] = a[queries]
    return out

  def block_distances(queries):
    m = len(queries)
    qf = feature_lib.map_rows(lambda a: padded_rows(a, queries), q_feats)
    labels = np.full((2, rows), -1, np.int32)  # padding rows: pid -1, never ranked
    labels[:, :m] = q_pids[queries], q_camids[queries]
    d = _masked_distances(dev.put(qf), gallery[0], dev.put(labels[0]), dev.put(labels[1]),
                          gallery[1], gallery[2], metric=metric, part_combine=part_combine,
                          padded=work.padded)
    return d if mesh is None else jax.device_put(d, dev.rep)  # items may rank any row

  counts = _rank_items(block_distances, rows, work, dev)
  return summarize(scores_from_ranks(work.ranks(counts)), max_rank, ap)


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
