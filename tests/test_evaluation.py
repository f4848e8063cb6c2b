"""reid_jax.evaluation against independent NumPy references (tests/eval_reference.py)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from reid_jax import evaluation as ev
from tests.eval_reference import ref_distance, ref_rank, ref_re_ranking, ref_tpr_at_fpr
from tests.tolerances import assert_close_scaled

# ----------------------------------------------------------------------------- data


def random_case(seed, nq=37, ng=211, nid=15, ncam=3):
  """Random labels with junk (pid -1), distractors (pid 0), same-camera matches, queries without
  positives, and continuous distances (no ties)."""
  rng = np.random.default_rng(seed)
  q_pids = rng.integers(1, nid + 3, nq)      # ids > nid have no gallery image
  q_pids[:2] = -1                            # junk queries are skipped
  g_pids = rng.integers(-1, nid + 1, ng)     # -1 junk, 0 distractor
  q_cam = rng.integers(0, ncam, nq)
  g_cam = rng.integers(0, ncam, ng)
  dist = rng.random((nq, ng)).astype(np.float32)
  return dist, q_pids, g_pids, q_cam, g_cam


# Hand-computed golden case (3 queries x 5 gallery), worked out in the comments.
GOLD_D = np.array([[0.1, 0.5, 0.3, 0.9, 0.7],
                   [0.15, 0.2, 0.6, 0.4, 0.1],
                   [0.3, 0.9, 0.2, 0.5, 0.6]], np.float32)
GOLD_QP = np.array([1, 2, 3])
GOLD_QC = np.array([0, 0, 0])
GOLD_GP = np.array([1, 2, 1, 2, -1])
GOLD_GC = np.array([1, 1, 0, 1, 1])
# q0: g0 (+), g2 dropped (same pid+cam), g1 (-), g4 junk, g3 (-): hit at rank 0 -> AP 1, INP 1.
# q1: g4 junk, g0 (-), g1 (+), g3 (+), g2 (-): hits at ranks 1, 2 -> step AP (1/2 + 2/3)/2 = 7/12,
#     trapezoid ((0 + 1/2)/2 + (1/2 + 2/3)/2)/2 = 5/12, INP 2/3.  q2: pid 3 absent -> skipped.


def test_golden_3x5():
  r = ev.rank_metrics(GOLD_D, GOLD_QP, GOLD_GP, GOLD_QC, GOLD_GC, max_rank=5)
  assert r['num_valid_queries'] == 2
  np.testing.assert_allclose(r['mAP'], (1 + 7 / 12) / 2, atol=1e-7)
  np.testing.assert_allclose(r['mINP'], (1 + 2 / 3) / 2, atol=1e-7)
  np.testing.assert_allclose(r['cmc'], [0.5, 1, 1, 1, 1])
  np.testing.assert_array_equal(r['first_hit'], [0, 1, -1])
  t = ev.rank_metrics(GOLD_D, GOLD_QP, GOLD_GP, GOLD_QC, GOLD_GC, max_rank=5, ap='trapezoid')
  np.testing.assert_allclose(t['mAP'], (1 + 5 / 12) / 2, atol=1e-7)


@pytest.mark.parametrize('seed,block', [(0, 1024), (1, 8), (2, 5)])
def test_rank_metrics_matches_reference(seed, block):
  d, qp, gp, qc, gc = random_case(seed)
  ref = ref_rank(d, qp, gp, qc, gc, max_rank=20)
  for ap, key in (('step', 'mAP_step'), ('trapezoid', 'mAP_trap')):
    r = ev.rank_metrics(d, qp, gp, qc, gc, max_rank=20, ap=ap, block_size=block)
    assert r['num_valid_queries'] == ref['num_valid']
    np.testing.assert_allclose(r['mAP'], ref[key], atol=1e-6)
    np.testing.assert_allclose(r['mINP'], ref['mINP'], atol=1e-6)
    np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-6)
    np.testing.assert_allclose(r['all_AP'], ref['ap_step' if ap == 'step' else 'ap_trap'],
                               atol=1e-6)


def test_rank_metrics_on_device_array_and_many_positives():
  # > 8 positives per query exercises several counting passes; a jax array input stays on device.
  rng = np.random.default_rng(3)
  qp = rng.integers(0, 4, 20)
  gp = rng.integers(0, 4, 300)
  qc, gc = rng.integers(0, 2, 20), rng.integers(0, 2, 300)
  d = rng.random((20, 300)).astype(np.float32)
  ref = ref_rank(d, qp, gp, qc, gc, max_rank=50)
  import jax.numpy as jnp
  r = ev.rank_metrics(jnp.asarray(d), qp, gp, qc, gc, block_size=7)
  np.testing.assert_allclose(r['mAP'], ref['mAP_step'], atol=1e-6)
  np.testing.assert_allclose(r['mINP'], ref['mINP'], atol=1e-6)
  np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-6)


def test_ties_are_broken_by_gallery_index():
  rng = np.random.default_rng(4)
  d, qp, gp, qc, gc = random_case(4, nq=25, ng=120, nid=6)
  d = np.round(d * 4) / 4  # heavy ties
  ref = ref_rank(d, qp, gp, qc, gc, max_rank=10)  # stable argsort
  r = ev.rank_metrics(d, qp, gp, qc, gc, max_rank=10, block_size=6)
  np.testing.assert_allclose(r['mAP'], ref['mAP_step'], atol=1e-6)
  np.testing.assert_allclose(r['mINP'], ref['mINP'], atol=1e-6)
  np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-6)
  del rng


@pytest.mark.parametrize('ng', [120, 300])
def test_special_values_rank_like_a_stable_argsort(ng):
  # Signed zeros compare equal (so they tie by gallery index), +-inf and negative distances order
  # as NumPy's stable argsort does; ng=300 is padded to 384 columns inside.
  d, qp, gp, qc, gc = random_case(7, nq=25, ng=ng, nid=6)
  d = np.round(d * 6 - 3)  # integers in [-3, 3]: many ties, negatives
  rng = np.random.default_rng(7)
  d[rng.random(d.shape) < 0.1] = 0.0
  d[rng.random(d.shape) < 0.1] = -0.0
  d[rng.random(d.shape) < 0.05] = np.inf
  d[rng.random(d.shape) < 0.05] = -np.inf
  d = d.astype(np.float32)
  ref = ref_rank(d, qp, gp, qc, gc, max_rank=10)
  for block in (4, 256):
    r = ev.rank_metrics(d, qp, gp, qc, gc, max_rank=10, block_size=block)
    np.testing.assert_allclose(r['all_AP'], ref['ap_step'], atol=1e-6)
    np.testing.assert_allclose(r['all_INP'], ref['inp'], atol=1e-6)
    np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-6)


def test_nan_inputs_are_refused():
  d, qp, gp, qc, gc = random_case(8)
  q = int(np.flatnonzero(qp > 0)[0])
  pos = np.flatnonzero((gp == qp[q]) & (gc != qc[q]))
  d[q, pos[0]] = np.nan
  with pytest.raises(ValueError, match=f'between query {q} and its positive \\(gallery {pos[0]}\\) '
                                       'is NaN'):
    ev.rank_metrics(d, qp, gp, qc, gc)
  # NaN at a negative ranks last, as in argsort, whatever its sign bit (inf - inf sets it on x86).
  neg = np.flatnonzero(gp != qp[q])[:2]
  d[q, pos[0]] = 0.5
  d[q, neg[0]] = np.nan
  d[q, neg[1]] = -np.float32(np.nan)
  assert np.signbit(d[q, neg[1]])
  ref = ref_rank(d, qp, gp, qc, gc)
  np.testing.assert_allclose(ev.rank_metrics(d, qp, gp, qc, gc)['all_AP'], ref['ap_step'],
                             atol=1e-6)
  f = np.ones((len(qp), 4), np.float32)
  f[3, 1] = np.nan
  with pytest.raises(ValueError, match='q_feats has NaN or inf at rows \\[3\\]'):
    ev.evaluate(f, np.ones((len(gp), 4), np.float32), qp, gp, qc, gc)
  # Finite features whose squared distance overflows: inf - inf = NaN at a positive.
  qf = np.array([[1e20, 0.0]], np.float32)
  gf = np.array([[2e20, 0.0], [1e20, 1.0], [0.0, 0.0]], np.float32)
  with pytest.raises(ValueError, match='between query 0 and its positive \\(gallery 0\\) is NaN'):
    ev.evaluate(qf, gf, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=3)


def test_empty_and_out_of_range_inputs_are_refused():
  with pytest.raises(ValueError, match='at least one query and one gallery item'):
    ev.rank_metrics(np.zeros((2, 0), np.float32), [1, 1], [], [0, 0], [])
  with pytest.raises(ValueError, match='at least one query and one gallery item'):
    ev.rank_metrics(np.zeros((0, 3), np.float32), [], [1, 1, 1], [], [0, 0, 0])
  with pytest.raises(ValueError, match='q_pids must fit in int32'):
    ev.rank_metrics(np.zeros((1, 2), np.float32), [2**32 + 1], [1, 2], [0], [1, 1])


@pytest.mark.parametrize('metric', ev.METRICS)
def test_pairwise_distance(metric):
  rng = np.random.default_rng(5)
  q, g = rng.standard_normal((7, 12)), rng.standard_normal((9, 12))
  out = np.asarray(ev.pairwise_distance(q.astype(np.float32), g.astype(np.float32), metric))
  # float32 |q|^2 + |g|^2 - 2 q.g against float64: sums of D terms whose partial sums are <=
  # max |q|^2 + max |g|^2; the sqrt divides the error by 2d; cosine: dots of unit vectors and two
  # normalisations (partial sums <= 1 each). A wrong metric or a missing term is O(|q|^2).
  ref = ref_distance(q, g, metric)
  sq_max = (q ** 2).sum(1).max() + (g ** 2).sum(1).max()
  scale = {'sqeuclidean': sq_max, 'euclidean': sq_max / (2 * ref.min()), 'cosine': 3.0}[metric]
  assert_close_scaled(out, ref, terms=q.shape[1], scale=scale)


@pytest.mark.parametrize('metric', ev.METRICS)
def test_evaluate_from_features(metric):
  rng = np.random.default_rng(6)
  _, qp, gp, qc, gc = random_case(6, nq=30, ng=150, nid=10)
  qf = rng.standard_normal((30, 16)).astype(np.float32)
  gf = rng.standard_normal((150, 16)).astype(np.float32)
  ref = ref_rank(ref_distance(qf, gf, metric), qp, gp, qc, gc, max_rank=50)
  r = ev.evaluate(qf, gf, qp, gp, qc, gc, metric=metric, block_size=8)
  np.testing.assert_allclose(r['mAP'], ref['mAP_step'], atol=1e-6)
  np.testing.assert_allclose(r['mINP'], ref['mINP'], atol=1e-6)
  np.testing.assert_allclose(r['cmc'], ref['cmc'], atol=1e-6)


def test_bad_inputs_raise():
  d, qp, gp, qc, gc = random_case(0)
  with pytest.raises(ValueError, match='ap must be'):
    ev.rank_metrics(d, qp, gp, qc, gc, ap='interp')
  with pytest.raises(ValueError, match='q_pids has'):
    ev.rank_metrics(d, qp[:-1], gp, qc, gc)
  with pytest.raises(ValueError, match='metric must be'):
    ev.pairwise_distance(d, d, 'manhattan')
  with pytest.raises(ValueError, match='no query has a positive'):
    ev.rank_metrics(d, np.full(len(qp), 999), gp, qc, gc)


def test_max_rank_clamped_to_gallery_size():
  with pytest.warns(UserWarning, match='clamped'):
    r = ev.rank_metrics(GOLD_D, GOLD_QP, GOLD_GP, GOLD_QC, GOLD_GC, max_rank=50)
  assert r['cmc'].shape == (5,)


# ----------------------------------------------------------------------------- CUHK03


def ref_cuhk03_expected_cmc(d, qp, gp, qc, gc, max_rank):
  """Exact expectation of the single-gallery-shot CMC over all draws (one image per identity)."""
  cmcs = []
  for i in range(d.shape[0]):
    kept = (gp >= 0) & ~((gp == qp[i]) & (gc == qc[i]))
    if qp[i] < 0 or not (kept & (gp == qp[i])).any():
      continue
    groups = [np.flatnonzero(kept & (gp == p)) for p in np.unique(gp[kept])]
    acc = np.zeros(max_rank)
    combos = list(itertools.product(*groups))
    for pick in combos:
      pick = np.asarray(pick)
      order = pick[np.argsort(d[i, pick], kind='stable')]
      first = np.flatnonzero(gp[order] == qp[i])[0]
      acc[first:] += 1
    cmcs.append(acc / len(combos))
  return np.mean(cmcs, axis=0)


def test_cuhk03_single_shot():
  rng = np.random.default_rng(7)
  qp, qc = np.array([1, 2, 3, 1]), np.array([0, 0, 1, 1])
  gp = np.array([1, 1, 2, 2, 3, 3, 4, 1, 2])
  gc = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0])
  d = rng.random((4, 9)).astype(np.float32)
  want = ref_cuhk03_expected_cmc(d, qp, gp, qc, gc, 4)
  r = ev.cuhk03_metrics(d, qp, gp, qc, gc, max_rank=4, num_repeats=4000, seed=1)
  np.testing.assert_allclose(r['cmc'], want, atol=0.03)
  # AP on the full filtered list, not per draw.
  np.testing.assert_allclose(r['mAP'], ref_rank(d, qp, gp, qc, gc, 4)['mAP_step'], atol=1e-6)
  again = ev.cuhk03_metrics(d, qp, gp, qc, gc, max_rank=4, num_repeats=10, seed=3)
  np.testing.assert_array_equal(
      again['cmc'], ev.cuhk03_metrics(d, qp, gp, qc, gc, max_rank=4, num_repeats=10, seed=3)['cmc'])


def test_cuhk03_one_image_per_id_equals_cmc():
  d, qp, gp, qc, gc = random_case(8, nq=12, ng=40, nid=40, ncam=2)
  gp = np.arange(40) + 1  # one gallery image per identity: every draw is the full list
  r = ev.cuhk03_metrics(d, qp, gp, qc, gc, max_rank=10, num_repeats=3)
  np.testing.assert_allclose(r['cmc'], ref_rank(d, qp, gp, qc, gc, 10)['cmc'], atol=1e-6)


# ----------------------------------------------------------------------------- ROC


def test_tpr_at_fpr_matches_reference():
  d, qp, gp, qc, gc = random_case(9, nq=20, ng=100, nid=5)
  fprs = (1e-2, 5e-2, 0.2)
  want = ref_tpr_at_fpr(d, qp, gp, qc, gc, fprs)
  got = ev.tpr_at_fpr(d, qp, gp, qc, gc, fprs)
  np.testing.assert_allclose([got[f'tpr@fpr={f:.0e}'] for f in fprs], want, atol=1e-6)


# ----------------------------------------------------------------------------- re-ranking


@pytest.mark.parametrize('nq,ng,k1,k2,square', [(10, 40, 5, 3, True), (30, 90, 20, 6, True),
                                                (20, 80, 20, 1, False), (25, 120, 50, 15, False)])
def test_re_rank_matches_reference(nq, ng, k1, k2, square):
  rng = np.random.default_rng(nq + ng)
  q, g = rng.standard_normal((nq, 16)), rng.standard_normal((ng, 16))
  metric = 'euclidean' if square else 'sqeuclidean'
  qg, qq, gg = ref_distance(q, g, metric), ref_distance(q, q, metric), ref_distance(g, g, metric)
  want = ref_re_ranking(qg, qq, gg, k1, k2, 0.3, square=square)
  got = np.asarray(ev.re_rank(qg, qq, gg, k1, k2, 0.3, square=square, block_size=16,
                              pair_chunk=300))
  # float32 on both sides, other orders: three chained sums over the N = nq + ng items (V's
  # normalisation, the k2 mean, the Jaccard sum s <= 1) add in quadrature; 1 - s / (2 - s)
  # doubles the error at most. A wrong neighbour set or lambda moves entries by >= 1e-2.
  assert_close_scaled(got, want, terms=3 * (nq + ng), scale=2.0)


def test_evaluate_with_rerank_preset():
  rng = np.random.default_rng(10)
  _, qp, gp, qc, gc = random_case(10, nq=15, ng=60, nid=8)
  qf, gf = rng.standard_normal((15, 8)), rng.standard_normal((60, 8))
  qg, qq, gg = (ref_distance(a, b, 'sqeuclidean') for a, b in ((qf, gf), (qf, qf), (gf, gf)))
  want = ref_rank(ref_re_ranking(qg, qq, gg, 50, 15, 0.3, square=False), qp, gp, qc, gc, 50)
  r = ev.evaluate(qf, gf, qp, gp, qc, gc, metric='sqeuclidean', rerank='transreid')
  np.testing.assert_allclose(r['mAP'], want['mAP_step'], atol=1e-5)


# ----------------------------------------------------------------------------- report


def test_format_and_write(tmp_path):
  r = ev.rank_metrics(GOLD_D, GOLD_QP, GOLD_GP, GOLD_QC, GOLD_GC, max_rank=5)
  text = ev.format_metrics(r)
  assert text.startswith('R1 50.0  R5 100.0  mAP 79.2  mINP 83.3')
  path = tmp_path / 'sub' / 'metrics.json'
  ev.write_metrics_json(r, str(path))
  data = json.loads(path.read_text())
  assert data['num_valid_queries'] == 2 and 'all_AP' not in data
  assert not [p for p in os.listdir(path.parent) if p.startswith('.metrics-')]


# ----------------------------------------------------------------------------- sharded


def test_sharded_evaluate_on_8_devices():
  """Queries sharded over an 8-device 'data' mesh (fresh process: the device count is fixed at
  the first jax import)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  out = subprocess.run([sys.executable, '-m', 'tests.sharded_eval_check'], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'OK 8' in out.stdout
