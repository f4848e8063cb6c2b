"""reid_jax.evaluation: distances, CMC/mAP/mINP, CUHK03, ROC and re-ranking on device.

Public API:
  pairwise_distance(q [Q, D], g [G, D], metric) -> [Q, G]
  part_distance(q_feat [Q, P, D], g_feat [G, P, D], q_vis, g_vis, combine='mean') -> [Q, G]
  distance_matrix(q, g, metric, *, part_combine='mean') -> [Q, G] for either form of features
  rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap='step') -> dict
  evaluate(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, *, metric, rerank=False, ...)
    (features: [N, D] arrays, or part features {'feat': [N, P, D], 'visibility': [N, P]})
  cuhk03_metrics(distmat, ..., max_rank=50, num_repeats=10, seed=0) -> dict
  tpr_at_fpr(distmat, ..., fprs=(1e-4, 1e-3, 1e-2)) -> dict
  re_rank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3) -> [Q, G]
  format_metrics(results) -> str; write_metrics_json(results, path)
See docs/evaluation.md for the protocol.
"""

from reid_jax.evaluation import features  # noqa: F401
from reid_jax.evaluation.distance import (METRICS, PART_COMBINES, distance_matrix,  # noqa: F401
                                          l2_normalize, pairwise_distance, part_distance)
from reid_jax.evaluation.rank import (AP_KINDS, cuhk03_metrics, evaluate,  # noqa: F401
                                      rank_metrics)
from reid_jax.evaluation.report import format_metrics, write_metrics_json  # noqa: F401
from reid_jax.evaluation.rerank import PRESETS as RERANK_PRESETS  # noqa: F401
from reid_jax.evaluation.rerank import re_rank, re_rank_features  # noqa: F401
from reid_jax.evaluation.roc import tpr_at_fpr  # noqa: F401
