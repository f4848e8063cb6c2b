"""PyTorch references for the evaluation benchmark (bench/gpu_suite.py), on any torch device.

* ``torch_evaluate``: distances with a torch matmul (squared Euclidean, ``|q|^2 + |g|^2 - 2 q.g``)
  and the torchreid ``rank.py`` protocol (drop same-id-same-camera gallery entries, step AP,
  mINP, CMC) from a full ``argsort`` of every row, vectorised over blocks of queries.
* ``torch_part_distance``: BPBreID's part-based distance with bool visibility (Somers et al.,
  WACV 2023), ranked by ``torch_evaluate(..., distmat=...)``.
* ``torch_rerank``: the classic k-reciprocal re-ranking (Zhong et al., CVPR 2017; the NumPy code
  of the official repository, reproduced in ``bench/eval.numpy_rerank``) with dense ``N x N``
  arrays on the device, its per-row loops vectorised: reciprocal sets as masks over the top-K
  neighbour lists, the 2/3 expansion as a membership test, V as a dense masked softmax, the
  Jaccard distance from each query row's non-zero columns.

Only numpy and torch are imported: these run where jax's stack is partial (the GPU machine).
"""

from __future__ import annotations

import numpy as np
import torch


def _t(x, device, dtype=None):
  return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


def torch_evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, *, device, max_rank: int = 50,
                   block: int = 1024, distmat=None) -> dict:
  """CMC / mAP / mINP from features, squared Euclidean; numpy inputs, results as Python floats.
  With ``distmat`` (a ``[Q, G]`` torch tensor on ``device``), its rows are ranked instead and
  ``qf``, ``gf`` are not used."""
  if distmat is None:
    qf, gf = _t(qf, device, torch.float32), _t(gf, device, torch.float32)
    g_sq = (gf * gf).sum(1)
  qp, gp = _t(q_pids, device, torch.int64), _t(g_pids, device, torch.int64)
  qc, gc = _t(q_camids, device, torch.int64), _t(g_camids, device, torch.int64)
  cmc_sum = torch.zeros(max_rank, dtype=torch.float64, device=device)
  ap_sum = torch.zeros((), dtype=torch.float64, device=device)
  inp_sum = torch.zeros((), dtype=torch.float64, device=device)
  valid = torch.zeros((), dtype=torch.int64, device=device)
  ranks = torch.arange(1, max_rank + 1, device=device)
  for lo in range(0, len(q_pids), block):
    if distmat is None:
      q = qf[lo:lo + block]
      d = (q * q).sum(1, keepdim=True) + g_sq[None] - 2.0 * (q @ gf.T)
    else:
      d = distmat[lo:lo + block]
    order = torch.argsort(d, dim=1, stable=True)
    gpo, gco = gp[order], gc[order]
    qpb, qcb = qp[lo:lo + block, None], qc[lo:lo + block, None]
    keep = (gpo >= 0) & ~((gpo == qpb) & (gco == qcb))
    match = (gpo == qpb) & keep
    pos = torch.cumsum(keep, 1)                  # rank among the kept entries (1-based)
    hits = torch.cumsum(match, 1)
    n_match = match.sum(1)
    ok = n_match > 0
    big = torch.iinfo(pos.dtype).max
    first = torch.where(match, pos, big).min(1).values
    last = torch.where(match, pos, 0).max(1).values
    ap = (torch.where(match, hits / pos, 0.0)).sum(1, dtype=torch.float64) / n_match.clamp(min=1)
    cmc_sum += ((first[:, None] <= ranks[None]) & ok[:, None]).sum(0)
    ap_sum += ap[ok].sum()
    inp_sum += (n_match[ok] / last[ok]).sum(dtype=torch.float64)
    valid += ok.sum()
  n = valid.item()
  cmc = (cmc_sum / n).cpu().numpy()
  return dict(cmc=cmc, R1=float(cmc[0]), mAP=float(ap_sum / n), mINP=float(inp_sum / n),
              num_valid_queries=int(n))


def torch_part_distance(q: dict, g: dict, *, device, block: int = 256) -> torch.Tensor:
  """BPBreID's part distance, bool visibility, 'mean' (VlSomers/bpbreid
  ``torchreid/metrics/distance.py``), as a ``[Q, G]`` float32 tensor on ``device``: per part
  ``sqrt(relu(|q|^2 - 2 q.g + |g|^2))``, the mean over the parts visible in both images, pairs with
  no such part at the largest counted part distance of the whole matrix + 1."""
  qf, gf = _t(q['feat'], device, torch.float32), _t(g['feat'], device, torch.float32)
  qv, gv = _t(q['visibility'], device, torch.bool), _t(g['visibility'], device, torch.bool)
  gt = gf.transpose(0, 1)                                   # [P, G, D]
  g_sq = (gt * gt).sum(-1)                                  # [P, G]
  out = torch.empty((qf.shape[0], gf.shape[0]), dtype=torch.float32, device=device)
  largest = torch.tensor(-1.0, device=device)
  for lo in range(0, qf.shape[0], block):
    qt = qf[lo:lo + block].transpose(0, 1)                  # [P, b, D]
    d = ((qt * qt).sum(-1)[:, :, None] - 2.0 * torch.bmm(qt, gt.transpose(1, 2))
         + g_sq[:, None, :]).clamp_min(0.0).sqrt()          # [P, b, G]
    both = qv[lo:lo + block].T[:, :, None] & gv.T[:, None, :]
    n = both.sum(0)
    out[lo:lo + block] = torch.where(n > 0, (d * both).sum(0) / n.clamp_min(1), -1.0)
    largest = torch.maximum(largest, torch.where(both, d, -1.0).max())
  return torch.where(out < 0, largest + 1.0, out)


def torch_rerank(q_g, q_q, g_g, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
                 device, query_block: int = 32) -> np.ndarray:
  """The classic re-ranking (Euclidean distances in, squared inside), ``[Q, G]`` float32 out."""
  q_g, q_q, g_g = (_t(x, device, torch.float32) for x in (q_g, q_q, g_g))
  nq = q_g.shape[0]
  original = torch.cat([torch.cat([q_q, q_g], 1), torch.cat([q_g.T, g_g], 1)], 0)
  del q_q, g_g
  original = original.square_()
  original = (original / original.max(0).values[None]).T.contiguous()
  n = original.shape[0]
  kh = int(np.around(k1 / 2.0))
  kk = max(k1 + 1, k2)
  top = torch.topk(original, kk, dim=1, largest=False, sorted=True).indices   # [N, K]
  rows = torch.arange(n, device=device)

  def reciprocal(k):  # mask [N, k]: is i among the k nearest of its own k nearest?
    f = top[:, :k]
    return (top[f, :k] == rows[:, None, None]).any(-1)

  r1, rh = reciprocal(k1 + 1), reciprocal(kh + 1)
  f1, fh = top[:, :k1 + 1], top[:, :kh + 1]
  # Candidate c = f1[i, s] in R(i, k1): its set R(c, kh) = fh[c][rh[c]]; accepted when more than
  # 2/3 of it lies in R(i, k1).
  cand_set, cand_mask = fh[f1], rh[f1]                                        # [N, k1+1, kh+1]
  in_r = ((cand_set[..., None] == f1[:, None, None, :]) & r1[:, None, None, :]).any(-1)
  inter = (in_r & cand_mask).sum(-1)
  accept = r1 & (inter > 2.0 / 3 * cand_mask.sum(-1))
  member = torch.zeros((n, n), dtype=torch.bool, device=device)
  member[rows[:, None].expand_as(f1)[r1], f1[r1]] = True
  sel = accept[..., None] & cand_mask
  member[rows[:, None, None].expand_as(cand_set)[sel], cand_set[sel]] = True
  v = torch.where(member, torch.exp(-original), 0.0)
  del member
  v /= v.sum(1, keepdim=True)
  original = original[:nq]
  if k2 != 1:
    vqe = torch.empty_like(v)
    for lo in range(0, n, 512):
      vqe[lo:lo + 512] = v[top[lo:lo + 512, :k2]].mean(1)
    v = vqe
    del vqe
  vt = v.T.contiguous()
  jac = torch.empty((nq, n), dtype=torch.float32, device=device)
  for lo in range(0, nq, query_block):
    vq = v[lo:min(lo + query_block, nq)]                           # [b, N]
    width = int((vq != 0).sum(1).max())
    val, idx = torch.topk(vq, width, dim=1)                        # each row's non-zero columns
    tmin = torch.minimum(val[..., None], vt[idx]).sum(1)           # [b, N]
    jac[lo:lo + query_block] = 1 - tmin / (2.0 - tmin)
  final = jac * (1 - lambda_value) + original * lambda_value
  return final[:, nq:].cpu().numpy()
