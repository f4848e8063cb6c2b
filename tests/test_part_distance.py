"""Part-based features: BPBreID's visibility-aware part distance and every evaluation path.

Reference: ``ref_part_distance`` below, written in NumPy float64 from the rule of BPBreID
(Somers et al., WACV 2023; VlSomers/bpbreid ``torchreid/metrics/distance.py`` and
``torchreid/utils/tensortools.py::masked_mean``): per part the Euclidean distance (here from the
difference, exact); bool visibility: mean (or max) over the parts visible in both images; float
visibility: weights sqrt(v_q v_g), weighted mean; no visibility: plain mean; a pair with nothing to
average gets the largest counted part distance of the whole matrix plus one. Rankings are checked
with the protocol reference of tests/eval_reference.py fed that matrix.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reid_jax import evaluation as ev
from reid_jax.evaluation import features as feature_lib
from tests.eval_reference import ref_rank, ref_re_ranking
from tests.tolerances import U, assert_close_scaled, sum_tol

# ----------------------------------------------------------------------------- reference


def ref_part_distance(qf, gf, qv=None, gv=None, combine='mean'):
  """[Q, G] float64 from the rule (see the module docstring)."""
  qf, gf = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
  d = np.sqrt(((qf[:, None] - gf[None]) ** 2).sum(-1))  # [Q, G, P]
  if qv is None:
    return d.mean(-1) if combine == 'mean' else d.max(-1)
  qv, gv = np.asarray(qv), np.asarray(gv)
  if qv.dtype == bool and gv.dtype == bool:
    counted = qv[:, None, :] & gv[None, :, :]
    n = counted.sum(-1)
    if combine == 'mean':
      pair = np.where(counted, d, 0).sum(-1) / np.maximum(n, 1)
    else:
      pair = np.where(counted, d, -np.inf).max(-1)
    nothing = n == 0
    largest = d[counted].max() if counted.any() else -1.0
  else:
    w = np.sqrt(qv.astype(np.float64)[:, None, :] * gv.astype(np.float64)[None, :, :])
    ws = w.sum(-1)
    if combine == 'mean':
      pair = (w * d).sum(-1) / np.where(ws > 0, ws, 1)
    else:
      pair = np.where(w > 0, d, -np.inf).max(-1)
    nothing = ws == 0
    largest = d.max()
  return np.where(nothing, largest + 1.0, pair)


def unit_parts(rng, n, p, dim, scale=None):
  f = rng.standard_normal((n, p, dim)).astype(np.float32)
  f /= np.linalg.norm(f, axis=-1, keepdims=True)
  if scale is not None:
    f *= np.asarray(scale, np.float32).reshape(-1, 1, 1)
  return f


def bool_visibility(rng, n, p, prob=0.5):
  """Random visibility with constructed cases: an image that shows nothing, images showing only
  parts {1, 2} and only {3, 4} (a pair with no common part), an image showing everything."""
  v = rng.random((n, p)) < prob
  v[0] = False
  v[1] = False
  v[1, 1:3] = True
  v[2] = False
  v[2, 3:5] = True
  v[3] = True
  return v


def float_visibility(rng, n, p):
  v = rng.random((n, p)).astype(np.float32)
  v[rng.random((n, p)) < 0.3] = 0.0  # exact zeros: weight 0
  v[0] = 0.0                          # nothing: zero weight sum with every image
  v[1, :] = 0.0
  v[1, 1] = 0.7
  v[2, :] = 0.0
  v[2, 2] = 0.4                       # 1 and 2: zero weight sum between them
  return v


def random_parts(rng, nq, ng, p, dim, vis, prob=0.5):
  """``(qf, gf, qv, gv)``: unit parts and visibility 'bool', 'float', 'none' or 'mixed' (bool on
  the query side, scores on the gallery side)."""
  qf, gf = unit_parts(rng, nq, p, dim), unit_parts(rng, ng, p, dim)
  if vis == 'none':
    return qf, gf, None, None

  def binary(n):
    return bool_visibility(rng, n, p, prob)

  def scores(n):
    return float_visibility(rng, n, p)
  make_q, make_g = {'bool': (binary, binary), 'float': (scores, scores),
                    'mixed': (binary, scores)}[vis]
  return qf, gf, make_q(nq), make_g(ng)


def distance_tol(qf, gf):
  """Absolute error bound ``[Q, G]`` of each pair distance: |q|^2 - 2 q.g + |g|^2 in float32 is a
  dot of D terms plus three roundings with partial sums up to max |q|^2 + max |g|^2; the square
  root divides that error by 2 D_p, so a pair's parts are within that over 2 min_p D_p (the
  no-common-part value, 1 + the largest D_p, within less). Means and weighted means of them add
  only relative roundings (the ``rtol`` of the checks). A wrong part, weight or no-common-part
  value moves entries by >= 1e-2."""
  sq = float((qf ** 2).sum(-1).max() + (gf ** 2).sum(-1).max())
  d = np.sqrt(((np.asarray(qf, np.float64)[:, None] - gf[None]) ** 2).sum(-1))  # [Q, G, P]
  return sum_tol(qf.shape[-1] + 3, sq) / (2 * d.min(-1))


def assert_within(got, want, tol, *, rtol, what=''):
  """``|got - want| <= tol + rtol |want|`` elementwise, ``tol`` an array (``distance_tol``)."""
  err = np.abs(np.asarray(got, np.float64) - want)
  bound = tol + rtol * np.abs(want)
  i = np.unravel_index(np.argmax(err - bound), err.shape)
  assert np.all(err <= bound), f'{what}: at {i} got {got[i]}, want {want[i]}, bound {bound[i]}'


# ----------------------------------------------------------------------------- the distance


@pytest.mark.parametrize('vis', ['bool', 'float', 'none', 'mixed'])
@pytest.mark.parametrize('combine', ['mean', 'max'])
def test_part_distance_matches_reference(vis, combine):
  nq, ng, p = 11, 29, 6
  qf, gf, qv, gv = random_parts(np.random.default_rng(1), nq, ng, p, 16, vis)
  want = ref_part_distance(qf, gf, qv, gv, combine)
  if vis in ('bool', 'float', 'mixed'):
    assert (want > 2.0).any() and (want <= 2.0).any()  # both kinds of pairs occur
  tol = distance_tol(qf, gf)
  # Weighted means: P products, square roots and divisions in float32 (relative 2^-24 each).
  for block in (4, 5, 11, 64):  # uneven splits of the 11 queries, and one block
    got = np.asarray(ev.part_distance(qf, gf, qv, gv, combine, block_size=block))
    assert got.shape == (nq, ng) and got.dtype == np.float32
    assert_within(got, want, tol, rtol=8 * p * U, what=f'block {block}')
  # The dispatcher and the dict form give the same matrix.
  q = {'feat': qf, 'visibility': qv}
  g = {'feat': gf, 'visibility': gv}
  got = np.asarray(ev.distance_matrix(q, g, 'euclidean', part_combine=combine))
  assert_within(got, want, tol, rtol=8 * p * U)


def test_no_common_part_value_is_the_whole_matrix_max_plus_one():
  """Blocks of 3 queries: the largest part distance is in the first block (a query at 5x norm),
  the pairs without a common part in the last ones, so a per-block max would give ~3, not ~7."""
  rng = np.random.default_rng(2)
  nq, ng, p, dim = 10, 13, 5, 8
  scale = np.ones(nq)
  scale[0] = 5.0
  qf, gf = unit_parts(rng, nq, p, dim, scale), unit_parts(rng, ng, p, dim)
  qv = np.ones((nq, p), bool)
  gv = np.ones((ng, p), bool)
  qv[9] = False
  qv[9, 0] = True       # query 9 sees only part 0 ...
  gv[4] = False
  gv[4, 1] = True       # ... gallery 4 only part 1: no common part
  want = ref_part_distance(qf, gf, qv, gv)
  assert want[9, 4] > 6.0  # the sentinel is 1 + the distance of the 5x-norm query
  for block in (3, 4, 7):
    got = np.asarray(ev.part_distance(qf, gf, qv, gv, block_size=block))
    assert_within(got, want, distance_tol(qf, gf), rtol=8 * p * U, what=f'block {block}')


def test_identical_parts_give_the_rounding_residual_not_zero():
  """As the official expansion: sqrt of a rounding-level residual. Bound: the residual is within
  sum_tol(D + 3, |q|^2 + |g|^2) of 0, so its root within the root of that."""
  rng = np.random.default_rng(3)
  f = unit_parts(rng, 6, 3, 512)
  got = np.asarray(ev.part_distance(f, f))
  bound = math.sqrt(sum_tol(512 + 3, 2.0))
  assert np.all(np.diag(got) <= bound)
  off = ~np.eye(6, dtype=bool)
  assert np.all(got[off] > 0.5)  # random unit vectors in 512-D are ~sqrt(2) apart


def test_bad_part_inputs_raise():
  rng = np.random.default_rng(4)
  qf, gf = unit_parts(rng, 3, 2, 4), unit_parts(rng, 5, 2, 4)
  with pytest.raises(ValueError, match='visibility is given for one side only'):
    ev.part_distance(qf, gf, np.ones((3, 2), bool), None)
  with pytest.raises(ValueError, match=r"q_feat\['visibility'\] must be \[N, P\]"):
    ev.part_distance(qf, gf, np.ones((3, 3), bool), np.ones((5, 2), bool))
  with pytest.raises(ValueError, match='same P and D'):
    ev.part_distance(qf, unit_parts(rng, 5, 3, 4))
  with pytest.raises(ValueError, match='part_combine must be one of'):
    ev.part_distance(qf, gf, combine='median')
  with pytest.raises(ValueError, match='scores >= 0'):
    ev.part_distance(qf, gf, -np.ones((3, 2)), np.ones((5, 2)))
  q, g = {'feat': qf}, {'feat': gf}
  labels = ([1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 0], [1, 1, 1, 1, 1])
  with pytest.raises(ValueError, match="metric \\(config.eval.metric\\) must be 'euclidean'"):
    ev.evaluate(q, g, *labels, metric='sqeuclidean')
  with pytest.raises(ValueError, match='both be part features or both be'):
    ev.evaluate(q, gf[:, 0], *labels, metric='euclidean')
  bad = qf.copy()
  bad[1, 1, 2] = np.nan
  with pytest.raises(ValueError, match=r'q_feats has NaN or inf at rows \[1\]'):
    ev.evaluate({'feat': bad}, g, *labels, metric='euclidean')


# ----------------------------------------------------------------------------- ranking


def labels_case(rng, nq, ng, nid=6, ncam=3):
  qp = rng.integers(1, nid + 2, nq)
  qp[0] = -1
  gp = rng.integers(-1, nid + 1, ng)
  return qp, gp, rng.integers(0, ncam, nq), rng.integers(0, ncam, ng)


def assert_separated(want, tol, qp, gp, qc, gc):
  """Precondition of comparing rankings: each positive's reference distance differs from every
  other kept item's of its query by more than their two error bounds ``tol [Q, G]``, unless they tie
  exactly (no-common-part pairs tie on both sides, broken by gallery index). Only such pairs
  decide the metrics; the seeds below are chosen so that it holds (checked here, in float64)."""
  for i in range(len(qp)):
    kept = (gp >= 0) & ~((gp == qp[i]) & (gc == qc[i]))
    pos = kept & (gp == qp[i])
    if qp[i] < 0 or not pos.any():
      continue
    gap = np.abs(want[i, pos][:, None] - want[i, kept & ~pos][None, :])
    both = tol[i, pos][:, None] + tol[i, kept & ~pos][None, :]
    assert np.all((gap == 0) | (gap > both)), f'query {i}: a near-tie, pick another seed'


@pytest.mark.parametrize('vis,combine', [('bool', 'mean'), ('bool', 'max'), ('float', 'mean'),
                                         ('none', 'mean')])
def test_evaluate_part_features_against_protocol_reference(vis, combine):
  rng = np.random.default_rng(7)
  nq, ng = 23, 61
  qf, gf, qv, gv = random_parts(rng, nq, ng, 5, 8, vis, prob=0.4)
  qp, gp, qc, gc = labels_case(rng, nq, ng)
  want_d = ref_part_distance(qf, gf, qv, gv, combine)
  assert_separated(want_d, distance_tol(qf, gf), qp, gp, qc, gc)
  want = ref_rank(want_d, qp, gp, qc, gc, max_rank=50)
  q, g = {'feat': qf, 'visibility': qv}, {'feat': gf, 'visibility': gv}
  for block in (7, 64):
    r = ev.evaluate(q, g, qp, gp, qc, gc, metric='euclidean', part_combine=combine,
                    block_size=block)
    assert r['num_valid_queries'] == want['num_valid']
    np.testing.assert_allclose(r['all_AP'], want['ap_step'], atol=1e-12)
    np.testing.assert_allclose(r['all_INP'], want['inp'], atol=1e-12)
    np.testing.assert_allclose(r['cmc'], want['cmc'], atol=1e-12)
  # The same through the whole matrix and rank_metrics, and sharded over the 8 CPU devices.
  d = np.asarray(ev.part_distance(qf, gf, qv, gv, combine))
  np.testing.assert_allclose(ev.rank_metrics(d, qp, gp, qc, gc)['all_AP'], want['ap_step'],
                             atol=1e-12)
  if vis == 'bool' and jax.device_count() > 1:
    mesh = jax.make_mesh((jax.device_count(),), ('data',),
                         axis_types=(jax.sharding.AxisType.Auto,))
    r = ev.evaluate(q, g, qp, gp, qc, gc, metric='euclidean', part_combine=combine,
                    block_size=16, mesh=mesh)
    np.testing.assert_allclose(r['all_AP'], want['ap_step'], atol=1e-12)


def test_rerank_with_part_features():
  """BPBreID re-ranks q-g, q-q and g-g part distances (each with its own no-common-part value)
  with the classic algorithm, which squares them: preset 'zhong2017'."""
  rng = np.random.default_rng(8)
  nq, ng, p, dim = 12, 40, 4, 8
  qf, gf = unit_parts(rng, nq, p, dim), unit_parts(rng, ng, p, dim)
  qv, gv = bool_visibility(rng, nq, p, 0.6), bool_visibility(rng, ng, p, 0.6)
  q, g = {'feat': qf, 'visibility': qv}, {'feat': gf, 'visibility': gv}
  qg, qq, gg = (ref_part_distance(a['feat'], b['feat'], a['visibility'], b['visibility'])
                for a, b in ((q, g), (q, q), (g, g)))
  want = ref_re_ranking(qg, qq, gg, 20, 6, 0.3, square=True)
  got = np.asarray(ev.re_rank_features(q, g, 'zhong2017'))
  # As test_evaluation's re-ranking check: three chained sums over N items, float32 both sides.
  assert_close_scaled(got, want, terms=3 * (nq + ng), scale=2.0)
  qp, gp, qc, gc = labels_case(rng, nq, ng)
  r = ev.evaluate(q, g, qp, gp, qc, gc, metric='euclidean', rerank='zhong2017')
  np.testing.assert_allclose(r['mAP'], ref_rank(want, qp, gp, qc, gc)['mAP_step'], atol=1e-6)


# ----------------------------------------------------------------------------- feature helpers


def test_flip_and_normalisation_of_part_features():
  rng = np.random.default_rng(9)
  f = {'feat': rng.standard_normal((3, 4, 5)).astype(np.float32),
       'visibility': rng.random((3, 4)) < 0.5}
  g = {'feat': rng.standard_normal((3, 4, 5)).astype(np.float32),
       'visibility': rng.random((3, 4)) < 0.5}
  m = feature_lib.combine_flip(f, g, 'mean')
  np.testing.assert_array_equal(m['feat'], (f['feat'] + g['feat']) * 0.5)
  np.testing.assert_array_equal(m['visibility'], f['visibility'] | g['visibility'])
  fs = dict(f, visibility=rng.random((3, 4)).astype(np.float32))
  gs = dict(g, visibility=rng.random((3, 4)).astype(np.float32))
  s = feature_lib.combine_flip(fs, gs, 'sum')
  np.testing.assert_array_equal(s['feat'], f['feat'] + g['feat'])
  np.testing.assert_array_equal(s['visibility'], np.maximum(fs['visibility'], gs['visibility']))
  n = feature_lib.normalize(f)
  # Each of the P embeddings separately: a sum of 5 squares, then a division.
  assert_close_scaled(np.linalg.norm(n['feat'], axis=-1), np.ones((3, 4)), terms=5 + 2)
  np.testing.assert_array_equal(n['visibility'], f['visibility'])
  np.testing.assert_array_equal(feature_lib.normalize({'feat': np.zeros((1, 2, 3), np.float32)})
                                ['feat'], 0.0)  # a zero embedding stays zero (F.normalize)


# ----------------------------------------------------------------------------- end to end

_METHOD = 'test_dummy_parts'
_K = 3  # parts: P = 1 + K


class DummyParts(nnx.Module):
  """A toy part-based method: a 3x3 convolution (not mirror-symmetric, so flipping matters),
  then the mean over the whole map (the 'foreground' entry) and over K horizontal bands (the
  parts). The foreground is always visible; part k iff the mean of input channel 0 over the left
  half of band k is positive (so the mirror image may show other parts)."""

  def __init__(self, model_config, num_classes, *, rngs):
    del model_config, num_classes
    self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)

  def __call__(self, x):
    y = self.conv(x)  # [B, H, W, 6]
    feat = jnp.concatenate([y.mean(axis=(1, 2))[:, None], band_means(y)], axis=1)  # [B, 1+K, 6]
    vis = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), left_band_means(x) > 0], axis=1)
    return {'feat': feat, 'visibility': vis}


def band_means(y):
  b, h, w, c = y.shape
  return y[:, :h - h % _K].reshape(b, _K, -1, w, c).mean(axis=(2, 3))  # [B, K, C]


def left_band_means(x):
  return band_means(x[:, :, :x.shape[2] // 2])[..., 0]  # [B, K]


def _register():
  from reid_jax.models import registry
  if _METHOD not in registry.names():
    registry.register_method(registry.Method(
        name=_METHOD, build=DummyParts,
        loss=lambda model, batch, **kw: ({'loss': jnp.float32(0)}, {}, None)))


def test_part_method_through_extraction_and_eval(tmp_path):
  """``--mode=eval`` (train.evaluate_checkpoint) of a registered part-based method on the tiny
  synthetic dataset, with flip 'mean', per-part L2 normalisation, BPBreID's distance and the
  ranked-list pictures. References: the features from ``models.embed`` of the images and their
  mirrors, combined and normalised in NumPy; the metrics from the NumPy distance and protocol."""
  from reid_jax import checkpoint, config_lib, data, extract, models, train
  from reid_jax.feature_extractor import FeatureExtractor
  from tests import synthetic_tiny
  _register()
  data_dir = synthetic_tiny.data_dir()
  config = config_lib.base_config()
  config.model = config_lib.model_config('baseline')
  config.model.name = _METHOD
  config.input = synthetic_tiny.input_config(data_dir=data_dir)
  config.eval.update(flip='mean', normalize=True, metric='euclidean', pictures=2)
  model = models.build_model(config.model, 5, seed=0)
  checkpoint.save_model(model, tmp_path / 'ckpt', num_classes=5, model_config=config.model)

  out = train.evaluate_checkpoint(config, str(tmp_path / 'ckpt'), str(tmp_path / 'work'))
  assert json.loads((tmp_path / 'work' / 'eval_metrics.json').read_text()) == pytest.approx(out)
  pictures = sorted(p.name for p in (tmp_path / 'work' / 'pictures').iterdir())
  assert pictures == ['cmc.png', 'rank_query0000.png', 'rank_query0001.png']

  side = {}
  for split in ('query', 'gallery'):
    # The batches evaluate_model reads, so extract_features returns its very features.
    batches = list(data.eval_batches(config.input, split, batch_size=config.input.eval_batch_size,
                                     multiple_of=jax.device_count(), data_dir=data_dir))
    feats, pids, camids = extract.extract_features(model, batches, flip='mean', normalize=True,
                                                   progress=False)
    x = np.concatenate([np.asarray(b['image'])[np.asarray(b['valid'], bool)] for b in batches])
    a, m = models.embed(model, x), models.embed(model, x[:, :, ::-1])
    want = (np.asarray(a['feat']) + np.asarray(m['feat'])) / 2
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    # The visibility rule has no rounding margin issue: the band means are far from 0.
    lm, lm_flip = np.asarray(left_band_means(x)), np.asarray(left_band_means(x[:, :, ::-1]))
    assert min(np.abs(lm).min(), np.abs(lm_flip).min()) > 1e-5
    want_vis = np.concatenate([np.ones((len(x), 1), bool), (lm > 0) | (lm_flip > 0)], axis=1)
    np.testing.assert_array_equal(feats['visibility'], want_vis)
    assert not want_vis.all()  # some parts are hidden in both views
    # Other batch shapes: a 27-term convolution, then means of up to H*W = 2048 terms whose
    # magnitudes may exceed the normalised result ~10x. A missing flip or mean moves them by O(1).
    assert_close_scaled(feats['feat'], want, terms=27 * 2048, scale=10.0)
    if split == 'query':
      fx = FeatureExtractor(config, str(tmp_path / 'ckpt'), batch_size=8)
      got = fx.embed_prepared(x)
      np.testing.assert_array_equal(got['visibility'], want_vis)
      assert_close_scaled(got['feat'], want, terms=27 * 2048, scale=10.0)
      extract.save_npz(str(tmp_path / 'f.npz'), feats, pids, camids)
      z = np.load(tmp_path / 'f.npz')
      np.testing.assert_array_equal(z['feats'], feats['feat'])
      np.testing.assert_array_equal(z['visibility'], feats['visibility'])
    side[split] = (feats, pids, camids)
  (qf, qp, qc), (gf, gp, gc) = side['query'], side['gallery']
  want_d = ref_part_distance(qf['feat'], gf['feat'], qf['visibility'], gf['visibility'])
  assert_separated(want_d, distance_tol(qf['feat'], gf['feat']), qp, gp, qc, gc)
  want = ref_rank(want_d, qp, gp, qc, gc, max_rank=50)
  assert out['mAP'] == pytest.approx(100 * want['mAP_step'], abs=1e-9)
  assert out['mINP'] == pytest.approx(100 * want['mINP'], abs=1e-9)
  assert out['R1'] == pytest.approx(100 * want['cmc'][0], abs=1e-9)


def test_bench_eval_parts_quick():
  """bench/eval.py's part-distance case at tiny size (300 x 1,500, P = 9, D = 64) in its own
  processes: reid_jax and the NumPy reference agree and the JSON carries time and peak RSS."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, os.path.join(root, 'bench', 'eval.py'), '--only=parts',
                         '--quick'], cwd=root, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(proc.stdout)['occluded_duke_part_distance']
  assert 'error' not in r['jax'] and 'error' not in r['numpy_reference'], r
  assert r['numpy_reference']['pairs_without_common_part'] > 0
  assert r['agrees_with_numpy'] and r['within_rss_bound']
  assert r['jax']['first_call_s'] > 0 and r['jax']['peak_rss_gib'] > 0
