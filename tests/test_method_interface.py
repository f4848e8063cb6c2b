"""The method interface (``reid_jax.models.registry.Method``) through the one training loop.

A toy method registered here uses every hook: extra batch fields, extra training state updated
from per-example ``aux`` and from its own gradient, and two optimizer groups descending different
objectives over different parameters with different config sections. One jitted step of the loop
must equal the step written out by hand from ``jax.grad`` of the same objectives.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from reid_jax import config_lib, models, train
from reid_jax.models import registry
from reid_jax.models.layers import BatchNorm


class Toy(nnx.Module):
  """``[B, H, W, 3]`` -> mean over pixels -> ``base`` (Linear 3 -> 4, BN) -> ``head`` (4 -> C)."""

  def __init__(self, num_classes, *, rngs):
    self.base = nnx.Linear(3, 4, rngs=rngs)
    self.bn = BatchNorm(4)
    self.head = nnx.Linear(4, num_classes, rngs=rngs)

  def __call__(self, x, weight=None):
    f = self.bn(self.base(x.mean(axis=(1, 2))))
    if weight is not None:
      f = f * weight[:, None]
    return f, self.head(f)


def toy_loss(model, batch, *, extra, config, context):
  feat, logits = model(batch['image'], batch['weight'])
  ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch['label'][:, None], 1))
  # The extra vector enters the first objective, so it has a gradient there.
  pull = jnp.mean(jnp.sum(jnp.square(feat - extra['anchor']), axis=1))
  objectives = {'loss': ce + 0.1 * pull, 'feature_norm': jnp.mean(jnp.sum(feat * feat, 1))}
  metrics = {'ce': ce, 'pull': pull, 'epoch_seen': context.epoch.astype(jnp.float32),
             'epoch_step_seen': context.epoch_step.astype(jnp.float32)}
  return objectives, metrics, {'feat': jax.lax.stop_gradient(feat)}


def toy_init_extra(config, model, num_classes, key):
  return {'anchor': jax.random.normal(key, (4,)), 'bank': jnp.zeros((4,)),
          'updates': jnp.zeros([], jnp.int32)}


def toy_update_extra(extra, grads, aux, config):
  return {'anchor': extra['anchor'] - 0.5 * grads['loss']['anchor'],
          'bank': 0.9 * extra['bank'] + 0.1 * aux['feat'].mean(0),
          'updates': extra['updates'] + 1}


def toy_groups(config):
  return (registry.OptimizerGroup('head', 'loss', lambda p: p.startswith('head/'), 'optim'),
          registry.OptimizerGroup('backbone', 'feature_norm', lambda p: not p.startswith('head/'),
                                  'optim_backbone'))


if 'toy' not in registry.names():
  registry.register_method(registry.Method(
      name='toy', build=lambda mc, n, *, rngs: Toy(n, rngs=rngs), loss=toy_loss,
      batch_fields=lambda config: ('image', 'label', 'weight'), init_extra=toy_init_extra,
      update_extra=toy_update_extra, optimizer_groups=toy_groups))


def toy_config(accum=1):
  c = config_lib.base_config()
  c.model = ml_collections.ConfigDict({'name': 'toy'})
  c.input.update(p=4, k=2, size=(4, 4))
  c.optim.update(name='sgd', momentum=0.0, weight_decay=0.0, weight_decay_bias=0.0)
  c.optim_backbone = ml_collections.ConfigDict(dict(c.optim.to_dict()))
  c.grad_accum_steps = accum
  return c


def toy_batch(seed=0):
  rng = np.random.RandomState(seed)
  return {'image': rng.randn(8, 4, 4, 3).astype(np.float32),
          'label': np.repeat(np.arange(4), 2).astype(np.int32),
          'weight': rng.uniform(0.5, 1.5, 8).astype(np.float32),
          'epoch': np.zeros(8, np.int32)}


def test_two_groups_extra_state_and_fields_equal_the_hand_written_step():
  c = toy_config()
  data = toy_batch()
  mesh = train.make_mesh(c)
  lrs = {'head': 0.1, 'backbone': 0.01}
  with jax.set_mesh(mesh):
    graphdef, state, optimizers = train.init_state(c, 5, mesh)
    state0 = jax.device_get(state)
    step = train.make_train_step(graphdef, optimizers, c, mesh)
    fields = models.get_method('toy').batch_fields(c)
    new, metrics = step(state, train.put_batch(mesh, data, fields),
                        {k: jnp.float32(v) for k, v in lrs.items()},
                        {'epoch': jnp.int32(3), 'epoch_step': jnp.int32(7)})
  new = jax.device_get(new)

  # By hand: the gradient of each objective at the same parameters.
  batch = {k: jnp.asarray(v) for k, v in data.items()}
  _, params, rest = nnx.split(train.model_from_state(graphdef, state0), nnx.Param, ...)
  ctx = registry.StepContext(step=jnp.int32(0), epoch=jnp.int32(3), epoch_step=jnp.int32(7))

  def objective(name, p, extra):
    model = nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, rest))
    return toy_loss(model, batch, extra=extra, config=c, context=ctx)[0][name]

  g_loss, g_anchor = jax.grad(lambda p, e: objective('loss', p, e), (0, 1), allow_int=True)(
      params,
      state0['extra'])
  g_norm = jax.grad(lambda p: objective('feature_norm', p, state0['extra']))(params)
  flat = lambda t: {train._path_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  p0, gl, gn, p1 = flat(params), flat(g_loss), flat(g_norm), flat(new['params'])
  assert set(p1) == {'base/kernel', 'base/bias', 'bn/scale', 'bn/bias', 'head/kernel',
                     'head/bias'}
  for path in p1:
    lr, g = (lrs['head'], gl[path]) if path.startswith('head/') else (lrs['backbone'], gn[path])
    # One SGD step: p1 - p0 = -lr * g exactly up to float32 rounding of g (a handful of terms).
    np.testing.assert_allclose(p1[path], p0[path] - lr * np.asarray(g), rtol=1e-6,
                               atol=1e-6 * lr * (1 + float(np.abs(g).max())))
    # Each group moved only its own parameters, by its own objective's gradient.
    other = gn[path] if path.startswith('head/') else gl[path]
    if np.abs(np.asarray(other) - np.asarray(g)).max() > 1e-3:
      assert not np.allclose(p1[path], p0[path] - lr * np.asarray(other), rtol=1e-6, atol=0)

  feat = np.asarray(nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))(
      batch['image'], batch['weight'])[0])
  np.testing.assert_allclose(new['extra']['anchor'],
                             state0['extra']['anchor'] - 0.5 * np.asarray(g_anchor['anchor']),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(new['extra']['bank'], 0.1 * feat.mean(0), rtol=1e-5, atol=1e-7)
  assert int(new['extra']['updates']) == 1 and int(new['step']) == 1
  assert float(metrics['epoch_seen']) == 3 and float(metrics['epoch_step_seen']) == 7
  assert float(metrics['lr/head']) == pytest.approx(0.1)
  assert float(metrics['lr/backbone']) == pytest.approx(0.01)
  # BatchNorm statistics moved (train-mode forward threaded through the step).
  assert not np.allclose(flat(new['rest'])['bn/mean'], flat(rest)['bn/mean'])


def test_a_group_at_learning_rate_zero_keeps_its_parameters_and_state():
  c = toy_config()
  c.optim_backbone.update(name='adam')
  mesh = train.make_mesh(c)
  with jax.set_mesh(mesh):
    graphdef, state, optimizers = train.init_state(c, 5, mesh)
    before = jax.device_get(state)
    step = train.make_train_step(graphdef, optimizers, c, mesh)
    fields = models.get_method('toy').batch_fields(c)
    new, _ = step(state, train.put_batch(mesh, toy_batch(), fields),
                  {'head': jnp.float32(0.1), 'backbone': jnp.float32(0.0)})
  new = jax.device_get(new)
  np.testing.assert_array_equal(new['params']['base']['kernel'][...],
                                before['params']['base']['kernel'][...])
  for a, b in zip(jax.tree.leaves(new['opt_state']['backbone']),
                  jax.tree.leaves(before['opt_state']['backbone'])):
    np.testing.assert_array_equal(a, b)  # Adam's moments and count did not advance
  assert not np.array_equal(new['params']['head']['kernel'][...],
                            before['params']['head']['kernel'][...])


def test_gradient_accumulation_concatenates_aux_over_micro_batches():
  # Identical halves: the mean of aux over the concatenated micro-batches is the full batch's.
  data = toy_batch(1)
  data = {k: np.concatenate([v[:4], v[:4]]) for k, v in data.items()}
  out = {}
  for accum in (1, 2):
    c = toy_config(accum)
    c.input.update(p=4, k=1)  # whole identities per micro-batch: P*K/accum a multiple of K
    mesh = train.make_mesh(c)
    with jax.set_mesh(mesh):
      graphdef, state, optimizers = train.init_state(c, 5, mesh)
      step = train.make_train_step(graphdef, optimizers, c, mesh)
      new, _ = step(state, train.put_batch(mesh, data, ('image', 'label', 'weight')),
                    jnp.float32(0.05))
    out[accum] = jax.device_get(new)
  # Bank = 0.1 * mean(feat): with accumulation the BN of each micro-batch sees the same rows,
  # so the features, and their mean, agree up to float32 rounding of a few terms.
  np.testing.assert_allclose(out[2]['extra']['bank'], out[1]['extra']['bank'], rtol=1e-5,
                             atol=1e-6)


def test_missing_batch_field_names_the_config_switch():
  c = toy_config()
  mesh = train.make_mesh(c)
  data = toy_batch()
  del data['weight']
  with pytest.raises(ValueError, match=r"\['weight'\].*config.input"):
    train.put_batch(mesh, data, ('image', 'label', 'weight'))


def test_the_loop_names_no_method():
  source = (pathlib.Path(train.__file__)).read_text()
  code = re.sub(r'""".*?"""', '', source, flags=re.S)  # docstrings may mention examples
  for name in registry.names():
    assert not re.search(rf"['\"]{name}['\"]", code), f'train.py names method {name!r}'
  assert 'center' not in code and 'centers' not in code


def test_unknown_method_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown config.model.name 'nope'.*baseline"):
    registry.get_method('nope')
