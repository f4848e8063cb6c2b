"""Evaluation benchmark: reid_jax.evaluation against NumPy references, printing JSON.

  python bench/eval.py                 # everything (several minutes on a 2-core CPU)
  python bench/eval.py --only=market   # one part: market | market_features | msmt | rerank | parts
  python bench/eval.py --quick         # small sizes, seconds (smoke run)

Each measurement runs in its own subprocess so that its peak RSS (``ru_maxrss``) and its first
call (compilation included: no persistent compilation cache) are its own; the Market first call
is measured in ``--repeats`` fresh processes (median, min, max: this VM's timings are noisy).
Synthetic data: Market-like / MSMT17-like labels (bench/synthetic.py) and unit-norm identity
centre + noise features (D = 2048, noise 3: Market-size mAP ~0.88, mINP ~0.44, like a trained
BoT). References in the same run, on the same distance matrix:
  * a vectorised NumPy implementation of the torchreid ``rank.py`` protocol (full argsort per
    row, in chunks of rows); results must agree;
  * ``np.argsort(distmat, axis=1)`` alone: the first step of fast-reid's (and torchreid's) Cython
    evaluator, so a lower bound on its time (that evaluator, not installed here, takes ~2.7 s on
    this machine; the quoted number is also reported).

``parts``: BPBreID's part-based distance (Somers et al., WACV 2023) at Occluded-Duke size
(2,210 queries x 17,661 gallery, P = 9 embeddings of D = 512, random bool visibility: the first
entry visible with probability 0.9, the others 0.6, so ~0.5 % of the pairs share no visible part)
through ``reid_jax.evaluation.evaluate``, against ``numpy_part_distance`` (float64, part by part
over query blocks, the whole-matrix ``max + 1`` applied at the end) ranked by ``numpy_rank``. The
bound checked: peak host RSS <= 2 GiB for the reid_jax side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FASTREID_CYTHON_MARKET_S = 2.7  # external: fast-reid eval_market1501_cy on the Market matrix here


def rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def numpy_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, chunk=512):
  """torchreid rank.py protocol, vectorised per chunk of rows (step AP, mINP, CMC)."""
  cmc_sum = np.zeros(max_rank)
  aps, inps = [], []
  for lo in range(0, distmat.shape[0], chunk):
    d = distmat[lo:lo + chunk]
    qp, qc = q_pids[lo:lo + chunk, None], q_camids[lo:lo + chunk, None]
    order = np.argsort(d, axis=1, kind='stable')
    gp, gc = g_pids[order], g_camids[order]
    keep = (gp >= 0) & ~((gp == qp) & (gc == qc))
    match = (gp == qp) & keep
    for i in range(d.shape[0]):
      m = match[i][keep[i]]
      if not m.any():
        continue
      hits = np.flatnonzero(m)
      cmc = np.zeros(max_rank)
      cmc[hits[0]:] = 1
      cmc_sum += cmc
      aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
      inps.append(len(hits) / (hits[-1] + 1))
  return dict(cmc=cmc_sum / len(aps), mAP=float(np.mean(aps)), mINP=float(np.mean(inps)),
              num_valid_queries=len(aps))


def numpy_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
  """The classic k-reciprocal re-ranking (dense N x N, inverted index Jaccard), NumPy float32."""
  original = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
  np.square(original, out=original)
  original = np.transpose(original / np.max(original, axis=0))
  nq = q_g.shape[0]
  n = original.shape[0]
  v = np.zeros_like(original)
  rank = np.argsort(original, axis=1).astype(np.int32)
  kh = int(np.around(k1 / 2.0))
  for i in range(n):
    fwd = rank[i, :k1 + 1]
    r = fwd[np.where(rank[fwd, :k1 + 1] == i)[0]]
    exp = r
    for c in r:
      fc = rank[c, :kh + 1]
      rc = fc[np.where(rank[fc, :kh + 1] == c)[0]]
      if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
        exp = np.append(exp, rc)
    exp = np.unique(exp)
    w = np.exp(-original[i, exp])
    v[i, exp] = w / np.sum(w)
  original = original[:nq]
  if k2 != 1:
    vqe = np.zeros_like(v)
    for i in range(n):
      vqe[i] = np.mean(v[rank[i, :k2]], axis=0)
    v = vqe
    del vqe
  del rank
  inv = [np.where(v[:, i] != 0)[0] for i in range(n)]
  jac = np.zeros((nq, n), np.float32)
  for i in range(nq):
    tmin = np.zeros(n, np.float32)
    nz = np.where(v[i] != 0)[0]
    for k in nz:
      tmin[inv[k]] += np.minimum(v[i, k], v[inv[k], k])
    jac[i] = 1 - tmin / (2.0 - tmin)
  return (jac * (1 - lambda_value) + original * lambda_value)[:, nq:]


PARTS_RSS_BOUND_GIB = 2.0
PART_SIZES = {'occluded_duke': (9, 512), 'small': (9, 64)}  # size -> (P, D)


def numpy_part_distance(q, g, block=256):
  """BPBreID's part distance with bool visibility, 'mean' (VlSomers/bpbreid
  ``torchreid/metrics/distance.py``), NumPy float64, one part at a time over query blocks: per
  part sqrt(relu(|q|^2 - 2 q.g + |g|^2)), summed over the parts visible in both images and divided
  by their count; pairs with no such part get the largest counted part distance + 1."""
  qf, gf, qv, gv = q['feat'], g['feat'], q['visibility'], g['visibility']
  nq, ng, parts = qf.shape[0], gf.shape[0], qf.shape[1]
  total = np.zeros((nq, ng))
  count = np.zeros((nq, ng), np.int16)
  largest = -1.0
  for p in range(parts):
    gp = gf[:, p].astype(np.float64)
    g_sq = (gp * gp).sum(1)
    for lo in range(0, nq, block):
      qp = qf[lo:lo + block, p].astype(np.float64)
      d = np.sqrt(np.maximum((qp * qp).sum(1)[:, None] - 2.0 * (qp @ gp.T) + g_sq[None], 0.0))
      both = qv[lo:lo + block, p][:, None] & gv[None, :, p]
      total[lo:lo + block] += np.where(both, d, 0.0)
      count[lo:lo + block] += both
      if both.any():
        largest = max(largest, float(d[both].max()))
  pair = total / np.maximum(count, 1)
  pair[count == 0] = largest + 1.0
  return pair.astype(np.float32), int((count == 0).sum())


# ----------------------------------------------------------------------------- workers


def _data(size, seed=0, noise=3.0):
  from bench import synthetic
  qp, gp, qc, gc = synthetic.labels(size, seed)
  qf, gf = synthetic.features(qp, gp, 2048 if size != 'small' else 256, noise=noise, seed=seed)
  return qf, gf, qp, gp, qc, gc


def worker(task, size):
  out = {'task': task, 'size': size}
  if task in ('metrics_jax', 'metrics_numpy', 'metrics_argsort'):
    qf, gf, qp, gp, qc, gc = _data(size)
    d = qf @ gf.T
    d = np.maximum(2.0 - 2.0 * d, 0.0).astype(np.float32)  # sqeuclidean of unit vectors
    del qf, gf
    out['rss_gib_before'] = rss_gib()
    if task == 'metrics_jax':
      from reid_jax import evaluation as ev
      t0 = time.perf_counter()
      r = ev.rank_metrics(d, qp, gp, qc, gc)
      out['first_call_s'] = time.perf_counter() - t0
      warm = []
      for _ in range(3):
        t0 = time.perf_counter()
        r = ev.rank_metrics(d, qp, gp, qc, gc)
        warm.append(time.perf_counter() - t0)
      out['warm_s'] = float(np.median(warm))
    elif task == 'metrics_argsort':
      times = []
      for _ in range(3):
        t0 = time.perf_counter()
        np.argsort(d, axis=1)
        times.append(time.perf_counter() - t0)
      out['time_s'] = float(np.median(times))
      print('RESULT ' + json.dumps(dict(out, peak_rss_gib=rss_gib())))
      return
    else:
      t0 = time.perf_counter()
      r = numpy_rank(d, qp, gp, qc, gc)
      out['time_s'] = time.perf_counter() - t0
    out.update(mAP=r['mAP'], mINP=r['mINP'], R1=float(r['cmc'][0]))
  elif task in ('evaluate_jax', 'evaluate_numpy'):
    qf, gf, qp, gp, qc, gc = _data(size)
    out['rss_gib_before'] = rss_gib()
    if task == 'evaluate_jax':
      from reid_jax import evaluation as ev
      t0 = time.perf_counter()
      r = ev.evaluate(qf, gf, qp, gp, qc, gc, metric='sqeuclidean')
      out['first_call_s'] = time.perf_counter() - t0
      if size != 'msmt':
        t0 = time.perf_counter()
        r = ev.evaluate(qf, gf, qp, gp, qc, gc, metric='sqeuclidean')
        out['warm_s'] = time.perf_counter() - t0
      import jax
      stats = jax.devices()[0].memory_stats() or {}
      if 'peak_bytes_in_use' in stats:
        out['device_peak_gib'] = stats['peak_bytes_in_use'] / 2**30
    else:  # NumPy: distances + metrics in query chunks (the full matrix would be 3.6 GiB on MSMT)
      t0 = time.perf_counter()
      nq = len(qp) if size != 'msmt' else 1024  # MSMT: first 1024 queries, time extrapolated
      d = np.empty((nq, len(gp)), np.float32)
      for lo in range(0, nq, 256):
        d[lo:lo + 256] = np.maximum(2.0 - 2.0 * qf[lo:min(nq, lo + 256)] @ gf.T, 0.0)
      r = numpy_rank(d, qp[:nq], gp, qc[:nq], gc)
      out['time_s'] = time.perf_counter() - t0
      out['queries'] = nq
      if nq < len(qp):
        out['time_s_extrapolated'] = out['time_s'] * len(qp) / nq
    out.update(mAP=r['mAP'], mINP=r['mINP'], R1=float(r['cmc'][0]))
  elif task in ('parts_jax', 'parts_numpy'):
    from bench import synthetic
    qp, gp, qc, gc = synthetic.labels(size, 0)
    parts, dim = PART_SIZES[size]
    q, g = synthetic.part_features(qp, gp, parts, dim, noise=3.0, seed=0)
    out.update(num_query=len(qp), num_gallery=len(gp), parts=parts, dim=dim,
               rss_gib_before=rss_gib())
    if task == 'parts_jax':
      from reid_jax import evaluation as ev
      t0 = time.perf_counter()
      r = ev.evaluate(q, g, qp, gp, qc, gc, metric='euclidean')
      out['first_call_s'] = time.perf_counter() - t0
      t0 = time.perf_counter()
      r = ev.evaluate(q, g, qp, gp, qc, gc, metric='euclidean')
      out['warm_s'] = time.perf_counter() - t0
    else:
      t0 = time.perf_counter()
      d, out['pairs_without_common_part'] = numpy_part_distance(q, g)
      r = numpy_rank(d, qp, gp, qc, gc)
      out['time_s'] = time.perf_counter() - t0
    out.update(mAP=r['mAP'], mINP=r['mINP'], R1=float(r['cmc'][0]))
  elif task in ('rerank_jax', 'rerank_numpy'):
    qf, gf, qp, gp, qc, gc = _data(size)
    from reid_jax.evaluation.distance import pairwise_distance
    dists = [np.asarray(pairwise_distance(a, b, 'euclidean')) for a, b in
             ((qf, gf), (qf, qf), (gf, gf))]
    del qf, gf
    out['rss_gib_before'] = rss_gib()
    t0 = time.perf_counter()
    if task == 'rerank_jax':
      from reid_jax import evaluation as ev
      final = np.asarray(ev.re_rank(*dists))
    else:
      final = numpy_rerank(*dists)
    out['time_s'] = time.perf_counter() - t0
    out['checksum'] = float(final[:50].astype(np.float64).sum())
    out['sample'] = final[:2, :5].tolist()
  out['peak_rss_gib'] = rss_gib()
  print('RESULT ' + json.dumps(out))


def run(task, size, timeout=1800):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', task, '--size', size],
                     env=env, capture_output=True, text=True, timeout=timeout)
  for line in p.stdout.splitlines():
    if line.startswith('RESULT '):
      res = json.loads(line[7:])
      res['process_s'] = time.perf_counter() - t0
      return res
  return {'task': task, 'size': size, 'error': p.stderr[-2000:]}


def parts_report(size):
  """The part-distance case: reid_jax and the NumPy reference, each in its own process."""
  j, n = run('parts_jax', size), run('parts_numpy', size)
  out = dict(jax=j, numpy_reference=n)
  if 'mAP' in j and 'mAP' in n:
    # float32 on device against float64: only near-ties can swap, moving a metric by ~1/G.
    out['max_abs_diff'] = max(abs(j[m] - n[m]) for m in ('mAP', 'mINP', 'R1'))
    out['agrees_with_numpy'] = out['max_abs_diff'] < 1e-4
    out['rss_bound_gib'] = PARTS_RSS_BOUND_GIB
    out['within_rss_bound'] = j['peak_rss_gib'] <= PARTS_RSS_BOUND_GIB
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--only', choices=['market', 'market_features', 'msmt', 'rerank', 'parts'])
  ap.add_argument('--quick', action='store_true', help='small synthetic set instead')
  ap.add_argument('--worker')
  ap.add_argument('--size', default='market')
  ap.add_argument('--repeats', type=int, default=5,
                  help='fresh processes for the Market first-call timing')
  args = ap.parse_args()
  if args.worker:
    worker(args.worker, args.size)
    return
  big = 'small' if args.quick else None
  parts = [args.only] if args.only else ['market', 'market_features', 'msmt', 'rerank', 'parts']
  report = {'device': 'CPU (2 cores, shared)', 'quick': args.quick}
  for part in parts:
    if part == 'market':
      s = big or 'market'
      runs = [run('metrics_jax', s) for _ in range(args.repeats)]
      n, a = run('metrics_numpy', s), run('metrics_argsort', s)
      first = [r['first_call_s'] for r in runs if 'first_call_s' in r]
      m = dict(jax_runs=runs, numpy_reference=n, argsort_only=a)
      if first:
        med = float(np.median(first))
        m['jax_first_call_s'] = dict(median=med, min=min(first), max=max(first), runs=len(first))
        m['jax_warm_s_median'] = float(np.median([r['warm_s'] for r in runs if 'warm_s' in r]))
        m['agrees_with_numpy'] = all(
            abs(r['mAP'] - n['mAP']) < 1e-6 and abs(r['mINP'] - n['mINP']) < 1e-6
            and r['R1'] == n['R1'] for r in runs if 'mAP' in r) if 'mAP' in n else None
        m['speedup_first_call_vs_numpy'] = n.get('time_s', 0) / med
        m['speedup_first_call_vs_argsort_only'] = a.get('time_s', 0) / med
        m['speedup_first_call_vs_fastreid_cython_2.7s_external'] = FASTREID_CYTHON_MARKET_S / med
      report['market_metrics'] = m
    elif part == 'market_features':
      s = big or 'market'
      report['market_distances_and_metrics'] = dict(jax=run('evaluate_jax', s),
                                                    numpy_reference=run('evaluate_numpy', s))
    elif part == 'msmt':
      s = big or 'msmt'
      report['msmt_distances_and_metrics'] = dict(
          jax=run('evaluate_jax', s), numpy_reference_first_1024_queries=run('evaluate_numpy', s))
    elif part == 'rerank':
      s = big or 'market'
      report['market_rerank'] = dict(jax=run('rerank_jax', s), numpy_reference=run('rerank_numpy', s))
    elif part == 'parts':
      report['occluded_duke_part_distance'] = parts_report(big or 'occluded_duke')
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
