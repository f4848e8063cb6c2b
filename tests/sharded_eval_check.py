"""Run in a fresh process with 8 CPU devices by tests/test_evaluation.py."""

import jax
import numpy as np

from reid_jax import evaluation as ev
from tests.eval_reference import ref_distance, ref_rank


def main():
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  nq, ng = 45, 130  # 45 queries: padded to a multiple of 8 per block
  qp, gp = rng.integers(-1, 12, nq), rng.integers(-1, 12, ng)
  qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
  qf = rng.standard_normal((nq, 8)).astype(np.float32)
  gf = rng.standard_normal((ng, 8)).astype(np.float32)
  ref = ref_rank(ref_distance(qf, gf, 'cosine'), qp, gp, qc, gc, 50)
  r = ev.evaluate(qf, gf, qp, gp, qc, gc, metric='cosine', block_size=16, mesh=mesh)
  np.testing.assert_allclose(r['mAP'], ref['mAP_step'], atol=1e-6)
  np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-6)
  d = np.asarray(ev.pairwise_distance(qf, gf, 'cosine'))
  r2 = ev.rank_metrics(d, qp, gp, qc, gc, block_size=16, mesh=mesh)
  np.testing.assert_allclose(r2['mINP'], ref['mINP'], atol=1e-6)
  print('OK', jax.device_count())


if __name__ == '__main__':
  main()
