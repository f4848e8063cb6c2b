"""Independent NumPy references of the evaluation protocols (test oracles).

Written from the protocol definitions (Market-1501 as torchreid ``torchreid/metrics/rank.py`` and
BoT ``data/datasets/eval_reid.py`` evaluate it), one query at a time, with a stable
argsort (ties broken by gallery index). Not used by the library.
"""

from __future__ import annotations

import numpy as np


def ref_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
  """Returns dict(cmc, mAP_step, mAP_trap, mINP, num_valid, ap_step[Q], ap_trap[Q], inp[Q])."""
  distmat = np.asarray(distmat, np.float64)
  nq, ng = distmat.shape
  max_rank = min(max_rank, ng)
  cmcs, aps, traps, inps = [], [], [], []
  ap_q = np.full(nq, np.nan)
  trap_q = np.full(nq, np.nan)
  inp_q = np.full(nq, np.nan)
  for i in range(nq):
    order = np.argsort(distmat[i], kind='stable')
    junk = ((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])) | (g_pids[order] < 0)
    good = (g_pids[order] == q_pids[i])[~junk]
    if q_pids[i] < 0 or not good.any():
      continue
    hits = np.flatnonzero(good)  # 0-based ranks of the positives in the filtered list
    n = len(hits)
    cmc = np.zeros(max_rank)
    cmc[hits[0]:] = 1
    step = np.mean([(m + 1) / (r + 1) for m, r in enumerate(hits)])
    trap = 0.0
    for m, r in enumerate(hits):
      precision = (m + 1) / (r + 1)
      old = 1.0 if r == 0 else m / r
      trap += (old + precision) / 2 / n
    inp = n / (hits[-1] + 1)
    cmcs.append(cmc)
    aps.append(step)
    traps.append(trap)
    inps.append(inp)
    ap_q[i], trap_q[i], inp_q[i] = step, trap, inp
  return dict(cmc=np.mean(cmcs, 0), mAP_step=np.mean(aps), mAP_trap=np.mean(traps),
              mINP=np.mean(inps), num_valid=len(aps), ap_step=ap_q, ap_trap=trap_q, inp=inp_q)


def ref_distance(q, g, metric):
  q = np.asarray(q, np.float64)
  g = np.asarray(g, np.float64)
  if metric == 'cosine':
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return 1.0 - qn @ gn.T
  sq = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
  return sq if metric == 'sqeuclidean' else np.sqrt(sq)


def ref_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, square=True):
  """Classic k-reciprocal re-ranking (Zhong et al., CVPR 2017; zhunzhong07/person-re-ranking
  ``python-version/re_ranking_ranklist.py``), steps 1-8 of ``reid_jax.evaluation.rerank``.

  Dense N x N, one row at a time, float32 like the original. Inputs are distances; ``square``
  squares them first as the original implementation does.
  """
  q_g, q_q, g_g = (np.asarray(x, np.float32) for x in (q_g, q_q, g_g))
  nq = q_g.shape[0]
  dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
  if square:
    dist = dist ** 2
  dist = (dist / dist.max(axis=0)).T  # divide columns by their max, then transpose
  n = dist.shape[0]
  rank = np.argsort(dist, axis=1, kind='stable')
  k1h = int(np.around(k1 / 2.0))

  def recip(i, k):
    fwd = rank[i, :k + 1]
    back = rank[fwd, :k + 1]
    return fwd[(back == i).any(axis=1)]

  v = np.zeros((n, n), np.float32)
  for i in range(n):
    r = recip(i, k1)
    expanded = list(r)
    for c in r:
      rc = recip(c, k1h)
      if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
        expanded.extend(rc)
    expanded = np.unique(np.asarray(expanded, np.int64))
    w = np.exp(-dist[i, expanded])
    v[i, expanded] = w / w.sum()
  if k2 != 1:
    v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float32)
  jac = np.zeros((nq, n), np.float32)
  for i in range(nq):
    s = np.minimum(v[i][None, :], v).sum(axis=1)  # sum_k min(V[i,k], V[j,k]) for every j
    jac[i] = 1.0 - s / (2.0 - s)
  final = jac * (1 - lambda_value) + dist[:nq] * lambda_value
  return final[:, nq:]


def ref_tpr_at_fpr(distmat, q_pids, g_pids, q_camids, g_camids, fprs):
  """Standard verification ROC: genuine = same pid (>= 0), different camera; impostor = different
  pid; gallery pid < 0 and same-pid-same-camera pairs dropped; accept a pair iff d < threshold.
  TPR at the most permissive threshold with FPR <= target."""
  gen, imp = [], []
  for i in range(distmat.shape[0]):
    if q_pids[i] < 0:
      continue
    for j in range(distmat.shape[1]):
      if g_pids[j] < 0 or (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]):
        continue
      (gen if g_pids[j] == q_pids[i] else imp).append(distmat[i, j])
  gen, imp = np.sort(gen), np.sort(imp)
  out = []
  for f in fprs:
    best = 0.0
    # candidate thresholds: every impostor distance and +inf
    for thr in list(imp) + [np.inf]:
      if (imp < thr).mean() <= f:
        best = max(best, (gen < thr).mean())
    out.append(best)
  return np.asarray(out)
