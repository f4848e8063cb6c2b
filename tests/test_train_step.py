"""The jitted train step in-process: one step equals a hand-written step (independent of the
step's plumbing), gradient accumulation equals one big batch when the loss is per-example, and
bfloat16 compute tracks float32."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from reid_jax import config_lib, models, train
from tests.tolerances import U, U_BF16, assert_close_scaled, sum_tol


def tiny_config(**kw):
  """A narrow network and plain SGD: an update linear in the gradient keeps the comparisons tight
  (Adam's first step is ~lr * sign(g) and turns rounding noise on ~0 gradients into lr-sized
  differences; Adam itself is checked against torch.optim in test_optim.py)."""
  c = config_lib.base_config()
  c.optim.update(name='sgd', momentum=0.0, nesterov=False)
  c.model.update(depth=18, width=8, stem_relu=False)
  c.input.update(p=4, k=2, size=(32, 16))
  c.loss.update(kw.pop('loss', {}))
  c.update(kw)
  return c


def batch(c, seed=0):
  rng = np.random.RandomState(seed)
  b = c.input.p * c.input.k
  return {'image': rng.randn(b, *c.input.size, 3).astype(np.float32),
          'label': np.repeat(np.arange(c.input.p), c.input.k).astype(np.int32)}


def run_step(c, data, num_classes=6):
  mesh = train.make_mesh(c)
  with jax.set_mesh(mesh):
    graphdef, state, tx = train.init_state(c, num_classes, mesh)
    step = train.make_train_step(graphdef, tx, c, mesh)
    new_state, metrics = step(state, train.put_batch(mesh, data), jnp.float32(1e-3))
  return graphdef, jax.device_get(new_state), jax.device_get(metrics)


def test_one_step_equals_hand_written_step():
  c = tiny_config()
  data = batch(c)
  _, state, metrics = run_step(c, data)
  # Independent re-statement: fresh model (same seed), grad of the registered loss, coupled-L2
  # SGD written out: p - lr * (g + weight_decay * p).
  model = models.build_model(c.model, 6, seed=c.seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    m = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest))  # fresh BN variables per trace
    b = {'image': jnp.asarray(data['image']), 'label': jnp.asarray(data['label'])}
    return models.get_method('baseline').loss(m, b, extra=None, config=c)[0]['loss']

  value, grads = jax.value_and_grad(loss)(params)
  wd = c.optim.weight_decay
  expected = jax.tree.map(lambda p, g: p - 1e-3 * (g + wd * p), params, grads)
  assert_loss_close(metrics['loss'], value, c)
  assert_params_close(state['params'], expected, params, c)


def error_terms(c):
  """``(terms, depth)`` of the step's rounding error (tests/tolerances.py): the longest
  reduction is over every stem output position of the batch (BatchNorm statistics, the stem
  kernel's gradient), B * H/2 * W/2 terms, chained through the network's ``depth`` layers."""
  h, w = c.input.size
  return c.input.p * c.input.k * (h // 2) * (w // 2), c.model.depth


def assert_loss_close(got, want, c):
  # Forward pass: BatchNorm renormalises every layer's output, so the layers' independent
  # errors add in quadrature (terms * depth roundings, depth 1): 8 U sqrt(18 * 1024) ~ 6.5e-5
  # relative here. A missing loss term (triplet ~0.3, centre) or a wrong mean (x2) is >= 1e-2.
  terms, depth = error_terms(c)
  assert_close_scaled(got, want, terms=terms * depth)


def assert_params_close(got_tree, want_tree, start_tree, c):
  """Parameters after one SGD step from ``start_tree``. The update is lr * d, d the reference's
  gradient (+ weight decay), so its error is lr times the gradient's: backward through
  BatchNorm cancels and amplifies, so the chained layers add linearly (depth), and an error made
  in one layer reaches every earlier layer, so the scale is the largest update in the whole
  network (lr max |d|), not the leaf's own: atol = 8 U depth sqrt(terms) lr max |d|
  (~2.7e-4 lr max |d| here; measured <= 3.0e-5 lr max |d| under AVX-512, 1.2e-5 AVX2, 7.8e-6
  SSE4.2). rtol 2U: the stored parameters' own rounding. Still catches a wrong gradient scale (x2, 1/accum), a missing loss term or a wrong
  sign: each moves d by a fraction of max |d|, >= 1e-2."""
  got, want, start = (jax.tree.leaves(t) for t in (got_tree, want_tree, start_tree))
  assert len(got) == len(want) == len(start)
  update = max(np.max(np.abs(np.asarray(s, np.float64) - w)) for s, w in zip(start, want))
  terms, depth = error_terms(c)
  atol = sum_tol(terms, update, depth=depth)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2 * U, atol=atol)


def initial_params(c, num_classes=6):
  """The parameters run_step starts from (train.init_state builds the same model)."""
  return nnx.split(models.build_model(c.model, num_classes, seed=c.seed), nnx.Param, ...)[1]


def test_grad_accumulation_matches_full_batch_for_per_example_loss():
  # Two identical halves: each micro-batch then sees the full batch's BN statistics, triplet
  # distances and CE terms, so the averaged micro-batch gradients must equal the full-batch one;
  # this checks the split, the scan, the averaging and the BN-statistics carry.
  c1 = tiny_config()
  data = batch(c1)
  half = len(data['label']) // 2
  data = {k: np.concatenate([v[:half], v[:half]]) for k, v in data.items()}
  c2 = tiny_config(grad_accum_steps=2)
  _, s1, m1 = run_step(c1, data)
  _, s2, m2 = run_step(c2, data)
  assert_loss_close(m2['loss'], m1['loss'], c1)
  assert_params_close(s2['params'], s1['params'], initial_params(c1), c1)


def test_grad_accumulation_rejects_split_identities():
  with pytest.raises(ValueError, match='grad_accum_steps'):
    run_step(tiny_config(grad_accum_steps=3), batch(tiny_config()))


def test_bfloat16_compute_tracks_float32_and_keeps_float32_params():
  c32 = tiny_config()
  cbf = tiny_config()
  cbf.model.dtype = 'bfloat16'
  data = batch(c32, seed=1)
  _, s32, m32 = run_step(c32, data)
  _, sbf, mbf = run_step(cbf, data)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(sbf['params']))
  # bfloat16 rounds every layer's output (relative U_BF16, float32 accumulation): the layers'
  # errors add in quadrature and the loss averages them over the B examples, about
  # U_BF16 sqrt(depth / B) (measured 2.1 U_BF16 = 8e-3). A bfloat16 accumulation of the 1,024-term
  # BatchNorm statistics alone would be off by ~sqrt(1024) U_BF16 = 12 %.
  assert_close_scaled(mbf['loss'], m32['loss'], unit=U_BF16,
                      terms=c32.model.depth / len(data['label']))


def test_center_loss_centres_follow_bot_sgd_rule():
  # BoT: centre grads are rescaled by 1/center_weight, then SGD(lr=center_lr). For
  # L_c = (1/B) sum_i |f_i - c_{y_i}|^2 that is c_j -= center_lr * (-(2/B) sum_{y_i=j} (f_i - c_j)).
  c = tiny_config(loss={'center_weight': 5e-4})
  data = batch(c, seed=2)
  mesh = train.make_mesh(c)
  with jax.set_mesh(mesh):
    graphdef, state, _ = train.init_state(c, 6, mesh)
    centers0 = np.asarray(state['extra']['centers'])
    model = train.model_from_state(graphdef, jax.device_get(state))
    feats = np.asarray(nnx.jit(lambda m, x: m(x))(model, data['image'])['global_feat'])
  _, new_state, metrics = run_step(c, data)
  b = len(feats)
  expected = centers0.copy()
  for j in range(6):
    members = data['label'] == j
    grad = -(2.0 / b) * np.sum(feats[members] - centers0[j], axis=0)
    expected[j] = centers0[j] - c.optim.center_lr * grad
  # The centres inherit the features' forward error (as in assert_loss_close) times
  # center_lr * 2K/B; the terms summed are f - c. rtol 2U: the centres' own rounding. A wrong
  # rescaling (1/center_weight), sign or mean moves them by ~center_lr * |f - c|, 1e3x more.
  terms, depth = error_terms(c)
  scale = c.optim.center_lr * 2 * c.input.k / b * (np.abs(feats).max() + np.abs(centers0).max())
  assert_close_scaled(new_state['extra']['centers'], expected, terms=terms * depth, scale=scale,
                      rtol=2 * U)
  assert 'center' in metrics


def test_fsdp_mesh_step_matches_data_parallel_step():
  c1 = tiny_config()
  c2 = tiny_config()
  c2.mesh = (('data', -1), ('fsdp', 2))
  data = batch(c1, seed=3)
  mesh = train.make_mesh(c2)
  with jax.set_mesh(mesh):
    _, state, _ = train.init_state(c2, 6, mesh)
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state['params'])]
  assert any('fsdp' in tuple(spec) for spec in specs)  # the large kernels are split
  _, s1, m1 = run_step(c1, data)
  _, s2, m2 = run_step(c2, data)
  assert_loss_close(m2['loss'], m1['loss'], c1)
  assert_params_close(s2['params'], s1['params'], initial_params(c1), c1)
