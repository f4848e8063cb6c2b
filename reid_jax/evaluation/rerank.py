"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) on device from top-k neighbour lists.

Same result as the classic NumPy implementation (reid-protocols.md §2.6, steps 1-8) to float32
rounding, without its N x N arrays (N = Q + G):

  1. ``original_dist = D**2`` (``square=True``, the original code squares its input distances),
     each column divided by its max, then transposed. Row i of that matrix is column i of D, so
     it is streamed in row blocks from ``q_g``, ``q_q``, ``g_g``; only ``[N, K]`` top-K neighbour
     lists (``K = max(k1 + 1, k2)``, via ``lax.top_k``) and the ``[N]`` column maxima are kept.
  2-4. k-reciprocal sets R(i, k1), R(j, round(k1/2)) and the 2/3 expansion from the neighbour lists,
     as fixed-size masks ``[N, k1+1]``; the expanded set is a padded, de-duplicated index list
     ``[N, S]``, S = (k1+1) * (round(k1/2) + 2).
  5-6. V (Gaussian weights on the expanded set) and the k2 query expansion V_qe as sparse rows
     ``[N, L]`` (indices sorted, L = the largest row support).
  7. Jaccard through an inverted index of the query rows of V_qe (a sort of Q*L packed keys) and
     a scatter-add of ``min(V_qe[i, k], V_qe[j, k])`` over the (query, gallery) pairs that share a
     column k, in chunks of ``pair_chunk`` pairs.
  8. ``(1 - lambda) * jaccard + lambda * original_dist`` on the query x gallery block.

Deviations from N*k memory: the inputs ``g_g [G, G]`` and ``q_q`` are dense (the algorithm's
definition); the Jaccard accumulator and the output are ``[Q, G]`` (inherent: every pair gets a
distance). Nothing N x N is allocated. V is kept in float32 (BoT/TransReID store it as float16).

Which distance goes in (see PRESETS):
  * the original code takes Euclidean distances and squares them (``square=True``);
  * torchreid passes *squared* Euclidean distances into that code, so it squares twice (4th power
    of the Euclidean distance): preset 'torchreid' = sqeuclidean inputs with ``square=True``;
  * BoT / TransReID / CLIP-ReID compute squared Euclidean from features and do not square again:
    presets 'bot' (20/6/0.3) and 'transreid' (50/15/0.3, also CLIP-ReID).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from reid_jax.evaluation import features as feature_lib
from reid_jax.evaluation.distance import check_metric, distance_matrix

# name -> (re_rank kwargs, metric of the input distances)
PRESETS = {
    'zhong2017': (dict(k1=20, k2=6, lambda_value=0.3, square=True), 'euclidean'),
    'torchreid': (dict(k1=20, k2=6, lambda_value=0.3, square=True), 'sqeuclidean'),
    'bot': (dict(k1=20, k2=6, lambda_value=0.3, square=False), 'sqeuclidean'),
    'transreid': (dict(k1=50, k2=15, lambda_value=0.3, square=False), 'sqeuclidean'),
}


# ----------------------------------------------------------------------------- step 1


@functools.partial(jax.jit, static_argnames=('k', 'square', 'gallery_rows', 'b'))
def _row_block_topk(q_g, q_q, g_g, r0, *, k, square, gallery_rows, b):
  """Rows r0..r0+b of original_dist^T (query rows or gallery rows): top-k indices and max."""
  if gallery_rows:  # row Q+j = column j of D = [q_g[:, j]; g_g[:, j]]
    left = lax.dynamic_slice_in_dim(q_g, r0, b, axis=1).T
    right = lax.dynamic_slice_in_dim(g_g, r0, b, axis=1).T
  else:             # row i = column i of D = [q_q[:, i]; q_g[i, :]]
    left = lax.dynamic_slice_in_dim(q_q, r0, b, axis=1).T
    right = lax.dynamic_slice_in_dim(q_g, r0, b, axis=0)
  rows = jnp.concatenate([left, right], axis=1).astype(jnp.float32)
  if square:
    rows = rows * rows
  cmax = jnp.max(rows, axis=1)
  o = rows / cmax[:, None]
  _, idx = lax.top_k(-o, k)  # ascending distance; lax.top_k keeps index order on ties
  return idx.astype(jnp.int32), cmax


def _neighbours(q_g, q_q, g_g, k, square, block):
  nq, ng = q_g.shape
  idx, cmax = [], []
  for gallery_rows, n in ((False, nq), (True, ng)):
    b = min(block, n)
    for r0 in range(0, n, b):
      start = min(r0, n - b)  # last block overlaps the previous one: one compiled shape
      i, c = _row_block_topk(q_g, q_q, g_g, start, k=k, square=square, gallery_rows=gallery_rows,
                             b=b)
      idx.append(i[r0 - start:])
      cmax.append(c[r0 - start:])
  return jnp.concatenate(idx), jnp.concatenate(cmax)


# ----------------------------------------------------------------------------- steps 2-6


def _orig(q_g, q_q, g_g, rows, cols, cmax, square, nq):
  """original_dist[rows, cols] (normalised, transposed convention) by gathering the inputs."""
  rq, cq = rows < nq, cols < nq
  rg, cg = jnp.maximum(rows - nq, 0), jnp.maximum(cols - nq, 0)
  rqi, cqi = jnp.minimum(rows, nq - 1), jnp.minimum(cols, nq - 1)
  # original_dist^T[r, c] = D[c, r]
  v = jnp.where(rq & cq, q_q[cqi, rqi],
                jnp.where(rq & ~cq, q_g[rqi, cg],
                          jnp.where(~rq & cq, q_g[cqi, rg], g_g[cg, rg])))
  v = v.astype(jnp.float32)
  if square:
    v = v * v
  return v / cmax[rows]


def _reciprocal(top, k):
  """Mask [N, k+1]: top[i, a] is in R(i, k) (i is in its own top-(k+1) too)."""
  n = top.shape[0]
  fwd = top[:, :k + 1]
  back = top[fwd, :k + 1]  # [N, k+1, k+1]
  return jnp.any(back == jnp.arange(n, dtype=jnp.int32)[:, None, None], axis=2)


def _dedupe_sorted(idx, sentinel):
  """idx sorted per row; later copies of a value become the sentinel (then re-sorted)."""
  dup = jnp.concatenate([jnp.zeros_like(idx[:, :1], bool), idx[:, 1:] == idx[:, :-1]], axis=1)
  return lax.sort(jnp.where(dup, sentinel, idx), dimension=1)


@functools.partial(jax.jit, static_argnames=('k1', 'square', 'nq'))
def _build_v(q_g, q_q, g_g, top, cmax, *, k1, square, nq):
  n = top.shape[0]
  kh = int(np.around(k1 / 2.0))  # NumPy rounding (half to even), as the original
  fwd = top[:, :k1 + 1]                       # [N, K1]
  rmask = _reciprocal(top, k1)                # [N, K1]
  hmask = _reciprocal(top, kh)                # [N, KH]
  cand_h = top[fwd, :kh + 1]                  # R(c, kh) candidates of each c in fwd: [N, K1, KH]
  cand_hmask = hmask[fwd]                     # [N, K1, KH]
  in_r = jnp.any((cand_h[..., None] == fwd[:, None, None, :]) & rmask[:, None, None, :], axis=-1)
  inter = jnp.sum(cand_hmask & in_r, axis=-1)
  size = jnp.sum(cand_hmask, axis=-1)
  take = rmask & (inter > 2.0 / 3.0 * size)  # [N, K1]
  ext = jnp.where(take[..., None] & cand_hmask, cand_h, n).reshape(n, -1)
  idx = jnp.concatenate([jnp.where(rmask, fwd, n), ext], axis=1)
  idx = _dedupe_sorted(lax.sort(idx, dimension=1), n)
  valid = idx < n
  rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], idx.shape)
  w = jnp.where(valid, jnp.exp(-_orig(q_g, q_q, g_g, rows, jnp.minimum(idx, n - 1), cmax, square,
                                      nq)), 0.0)
  return idx, w / jnp.sum(w, axis=1, keepdims=True)


def _pack_bits(n):
  return max(1, int(n).bit_length())


@functools.partial(jax.jit, static_argnames=('k2',))
def _query_expand(vidx, vval, top, r0, *, k2):
  """Rows r0.. of V_qe = mean of V over each row's k2 nearest rows: sorted idx and summed vals."""
  n, s = vidx.shape
  b = top.shape[0]
  nb = top[:, :k2]                                   # [b, k2]
  idx = vidx[nb].reshape(b, k2 * s)
  val = vval[nb].reshape(b, k2 * s) / k2
  slot_bits = _pack_bits(k2 * s - 1)
  if _pack_bits(n) + slot_bits <= 31:  # one int32 key sorts ~10x faster than a 2-operand sort
    key = lax.sort((idx << slot_bits) | jnp.arange(k2 * s, dtype=jnp.int32)[None, :], dimension=1)
    sidx, slot = key >> slot_bits, key & ((1 << slot_bits) - 1)
    sval = jnp.take_along_axis(val, slot, axis=1)
  else:
    sidx, sval = lax.sort((idx, val), dimension=1, num_keys=1)
  # Sum each run of equal indices into its last element; the rest become the sentinel.
  cs = jnp.cumsum(sval, axis=1)
  run_end = jnp.concatenate([sidx[:, 1:] != sidx[:, :-1], jnp.ones((b, 1), bool)], axis=1)
  end_cs = jnp.where(run_end, cs, -jnp.inf)
  prev_end = jnp.concatenate([jnp.zeros((b, 1)), lax.cummax(end_cs, axis=1)[:, :-1]], axis=1)
  prev_end = jnp.maximum(prev_end, 0.0)
  keep = run_end & (sidx < n)
  total = jnp.where(keep, cs - prev_end, 0.0)
  out_idx, out_val = lax.sort((jnp.where(keep, sidx, n), total), dimension=1, num_keys=1)
  return out_idx, out_val, jnp.max(jnp.sum(keep, axis=1))


def _v_qe(vidx, vval, top, k2, block):
  n = vidx.shape[0]
  if k2 == 1:
    return vidx, vval
  parts = []
  b = min(block, n)
  for r0 in range(0, n, b):
    start = min(r0, n - b)
    parts.append((r0 - start,) + _query_expand(vidx, vval, lax.dynamic_slice_in_dim(top, start, b),
                                               start, k2=k2))
  width = max(1, max(int(p[3]) for p in parts))
  idx = jnp.concatenate([p[1][p[0]:, :width] for p in parts])
  val = jnp.concatenate([p[2][p[0]:, :width] for p in parts])
  return idx, val


# ----------------------------------------------------------------------------- step 7


@functools.partial(jax.jit, static_argnames=('n',))
def _inverted_query_index(qidx, qval, *, n):
  """Query entries of V_qe sorted by (column, row): rows [Q*L], values [Q*L], column ids."""
  nq, width = qidx.shape
  row_bits = _pack_bits(nq - 1)
  rows = jnp.broadcast_to(jnp.arange(nq, dtype=jnp.int32)[:, None], qidx.shape).reshape(-1)
  cols = qidx.reshape(-1)
  if _pack_bits(n) + row_bits <= 31:
    key = lax.sort((cols << row_bits) | rows)  # one int32 operand: the fast XLA sort
    cols, rows = key >> row_bits, key & ((1 << row_bits) - 1)
    # Value of (row, col): binary search in the row's sorted index list.
    lo = jnp.zeros_like(rows)
    hi = jnp.full_like(rows, width - 1)
    for _ in range(max(1, (width - 1).bit_length())):
      mid = (lo + hi) // 2
      go_right = qidx[rows, mid] < cols
      lo = jnp.where(go_right, mid + 1, lo)
      hi = jnp.where(go_right, hi, mid)
    vals = qval[rows, lo]
  else:
    cols, rows, vals = lax.sort((cols, rows, qval.reshape(-1)), num_keys=2)
  return cols, rows, vals


@functools.partial(jax.jit, static_argnames=('cap', 'rows_max'), donate_argnames=('acc',))
def _jaccard_chunk(acc, gidx, gval, col_start, col_cnt, q_rows, q_vals, j0, nrows, *, cap,
                   rows_max):
  """acc [G, Q] += min(V_qe[i, k], V_qe[Q + j, k]) over pairs sharing column k, rows j0..+nrows."""
  width = gidx.shape[1]
  gi = lax.dynamic_slice_in_dim(gidx, j0, rows_max).reshape(-1)   # gallery entries, row-major
  gv = lax.dynamic_slice_in_dim(gval, j0, rows_max).reshape(-1)
  row = j0 + jnp.arange(rows_max * width, dtype=jnp.int32) // width
  cnt = jnp.where(row < j0 + nrows, col_cnt[gi], 0)
  total = jnp.sum(cnt)
  ent = jnp.repeat(jnp.arange(gi.shape[0], dtype=jnp.int32), cnt, total_repeat_length=cap)
  offs = jnp.cumsum(cnt) - cnt
  t = jnp.arange(cap, dtype=jnp.int32)
  live = t < total
  qpos = col_start[gi[ent]] + (t - offs[ent])
  qpos = jnp.where(live, qpos, 0)
  contrib = jnp.where(live, jnp.minimum(q_vals[qpos], gv[ent]), 0.0)
  return acc.at[row[ent], q_rows[qpos]].add(contrib, mode='drop')


def _jaccard(qidx, qval, gidx, gval, n, pair_chunk):
  nq = qidx.shape[0]
  ng = gidx.shape[0]
  cols, rows, vals = _inverted_query_index(qidx, qval, n=n)
  col_start = jnp.searchsorted(cols, jnp.arange(n + 1, dtype=jnp.int32), side='left')
  col_cnt = jnp.concatenate([col_start[1:] - col_start[:-1], jnp.zeros(1, col_start.dtype)])
  col_start = jnp.concatenate([col_start, col_start[-1:]]).astype(jnp.int32)  # sentinel col N
  col_cnt = col_cnt.astype(jnp.int32)
  # Pairs per gallery row (host) -> chunks of whole rows with at most pair_chunk pairs.
  per_row = np.asarray(jnp.sum(col_cnt[gidx], axis=1))
  rows_max = 1
  chunks = []
  j = 0
  while j < ng:
    total, r = 0, 0
    while j + r < ng and (r == 0 or total + per_row[j + r] <= pair_chunk):
      total += int(per_row[j + r])
      r += 1
    chunks.append((j, r, total))
    rows_max = max(rows_max, r)
    j += r
  cap = max(1, max(c[2] for c in chunks))
  cap = 1 << (cap - 1).bit_length()
  pad = jnp.full((rows_max, gidx.shape[1]), n, gidx.dtype)
  gidx_p = jnp.concatenate([gidx, pad])
  gval_p = jnp.concatenate([gval, jnp.zeros((rows_max, gidx.shape[1]), gval.dtype)])
  acc = jnp.zeros((ng, nq), jnp.float32)
  for j0, r, _ in chunks:
    acc = _jaccard_chunk(acc, gidx_p, gval_p, col_start, col_cnt, rows, vals, jnp.int32(j0),
                         jnp.int32(r), cap=cap, rows_max=rows_max)
  return acc.T  # [Q, G] sum of minima


@functools.partial(jax.jit, static_argnames=('square',))
def _final(s, q_g, cmax_q, lambda_value, *, square):
  jac = 1.0 - s / (2.0 - s)
  d = q_g.astype(jnp.float32)
  if square:
    d = d * d
  return jac * (1.0 - lambda_value) + (d / cmax_q[:, None]) * lambda_value


# ----------------------------------------------------------------------------- API


def re_rank(q_g, q_q, g_g, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
            square: bool = True, block_size: int = 1024, pair_chunk: int = 1 << 23) -> jax.Array:
  """Re-ranked distance ``[Q, G]`` from distances ``q_g [Q, G]``, ``q_q [Q, Q]``, ``g_g [G, G]``.

  ``k1``, ``k2``, ``lambda_value``: the paper's parameters (20, 6, 0.3 by default).
  ``square=True`` squares the inputs first, as the original implementation does (pass Euclidean
  distances); see :data:`PRESETS` for torchreid's double squaring and the BoT/TransReID settings.
  ``block_size`` rows of the N x N matrix are formed at a time; ``pair_chunk`` bounds the
  Jaccard pairs in flight (about 16 bytes each).
  """
  q_g, q_q, g_g = (jnp.asarray(x, jnp.float32) for x in (q_g, q_q, g_g))
  if q_g.ndim != 2 or q_q.shape != (q_g.shape[0],) * 2 or g_g.shape != (q_g.shape[1],) * 2:
    raise ValueError(f'expected q_g [Q, G], q_q [Q, Q], g_g [G, G], got {q_g.shape}, '
                     f'{q_q.shape}, {g_g.shape}')
  if int(k1) < 1 or int(k2) < 1:
    raise ValueError(f'k1 and k2 must be >= 1, got k1={k1}, k2={k2}')
  if not 0.0 <= lambda_value <= 1.0:
    raise ValueError(f'lambda_value must be in [0, 1], got {lambda_value}')
  nq, ng = q_g.shape
  n = nq + ng
  k = min(n, max(int(k1) + 1, int(k2)))
  if int(k1) + 1 > n:
    raise ValueError(f'k1 + 1 = {k1 + 1} exceeds the number of images {n}')
  top, cmax = _neighbours(q_g, q_q, g_g, k, bool(square), int(block_size))
  vidx, vval = _build_v(q_g, q_q, g_g, top, cmax, k1=int(k1), square=bool(square), nq=nq)
  vidx, vval = _v_qe(vidx, vval, top, int(k2), int(block_size))
  s = _jaccard(vidx[:nq], vval[:nq], vidx[nq:], vval[nq:], n, int(pair_chunk))
  return _final(s, q_g, cmax[:nq], jnp.float32(lambda_value), square=bool(square))


def re_rank_features(q_feats, g_feats, rerank=True, *, metric: str = 'sqeuclidean',
                     part_combine: str = 'mean') -> jax.Array:
  """Re-ranked ``[Q, G]`` from features. ``rerank``: True (paper defaults 20/6/0.3 on the
  distances of ``metric``, not squared again: the BoT convention), a PRESETS name (its own metric
  and squaring), or a dict of :func:`re_rank` kwargs applied to ``metric`` distances.

  Part-based features (dicts, ``reid_jax.evaluation.features``) have one distance, BPBreID's
  part distance (``part_combine``), for ``q_g``, ``q_q`` and ``g_g`` alike, each matrix with its
  own no-common-part value (its own max + 1), as BPBreID's engine computes them; a preset's input
  metric does not apply to them (its k1/k2/lambda and squaring do). BPBreID passes its part
  distances to the classic code, which squares them: the 'zhong2017' preset.
  """
  if rerank is True:
    kwargs = dict(PRESETS['bot'][0])
  elif isinstance(rerank, str):
    if rerank not in PRESETS:
      raise ValueError(f'unknown rerank preset {rerank!r}; known: {sorted(PRESETS)}')
    kwargs, metric = dict(PRESETS[rerank][0]), PRESETS[rerank][1]
  elif isinstance(rerank, dict):
    kwargs = dict(rerank)
  else:
    raise ValueError(f'rerank must be True, a preset name or a dict, got {rerank!r}')
  check_metric(metric)
  if feature_lib.is_parts(q_feats):
    metric = 'euclidean'  # BPBreID's per-part distance; the only one for part features
  q, g = feature_lib.check_pair(q_feats, g_feats)

  def dist(a, b):
    return distance_matrix(a, b, metric, part_combine=part_combine)

  return re_rank(dist(q, g), dist(q, q), dist(g, g), **kwargs)
