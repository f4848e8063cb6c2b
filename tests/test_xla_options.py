"""reid_jax.xla_options: the CPU compiler option keeps convolutions off YNNPACK, is dropped off
CPU / on unknown jaxlib versions / when XLA rejects it, and reaches the train step's jit; the
convolution inputs' fusion barrier (``layers.cpu_fusion_barrier``) is the identity, acts only
under differentiation on CPU, and reaches the train step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reid_jax import xla_options


def _conv_grad(x, w):
  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(y * y)
  return jax.grad(f, argnums=(0, 1))(x, w)


def ynn_convolutions(hlo_text: str) -> int:
  """How many ``__ynn_fusion`` fusions of compiled HLO text fuse a convolution."""
  bodies, name, lines = {}, None, []
  for line in hlo_text.splitlines():
    m = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if m:
      name, lines = m.group(1), []
    elif line.startswith('}') and name:
      bodies[name] = '\n'.join(lines)
      name = None
    elif name:
      lines.append(line)
  count = 0
  for body in bodies.values():
    for line in body.splitlines():
      if '__ynn_fusion' in line:
        called = re.search(r'calls=%([\w.\-]+)', line).group(1)
        count += ' convolution(' in bodies.get(called, '')
  return count


def _compiled_text(fn, *args, options):
  return jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()


def test_options_on_cpu_name_the_default_list_without_convolutions():
  opts = xla_options.cpu_compiler_options()
  assert opts == {'xla_cpu_experimental_ynn_fusion_type':
                  'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
  assert 'CONVOLUTION' not in opts['xla_cpu_experimental_ynn_fusion_type']
  opts['x'] = 1  # a fresh dict each call
  assert 'x' not in xla_options.cpu_compiler_options()


def test_no_options_off_cpu_on_unknown_jaxlib_or_when_disabled(monkeypatch):
  assert xla_options.cpu_compiler_options(backend='gpu') == {}
  assert xla_options.cpu_compiler_options(backend='tpu') == {}
  for version in ((0, 9), (0, 13), (1, 0), None):
    monkeypatch.setattr(xla_options, '_jaxlib_version', lambda v=version: v)
    assert xla_options.cpu_compiler_options() == {}, version
  monkeypatch.undo()
  monkeypatch.setenv(xla_options.DISABLE_ENV, '1')
  assert xla_options.cpu_compiler_options() == {}


def test_rejected_option_is_caught_and_dropped(monkeypatch):
  # What an unknown option or value does in XLA: a catchable INVALID_ARGUMENT, not an abort.
  assert not xla_options._option_accepted({'xla_cpu_no_such_option_x': 'y'}, 'cpu')
  monkeypatch.setattr(xla_options, 'YNN_FUSION_WITHOUT_CONV', 'LIBRARY_FUSION_TYPE_NO_SUCH')
  xla_options._probe.cache_clear()
  try:
    assert xla_options.cpu_compiler_options() == {}
  finally:
    monkeypatch.undo()
    xla_options._probe.cache_clear()
  assert xla_options.cpu_compiler_options() != {}


def test_weight_gradient_convolution_leaves_ynnpack_with_same_result():
  rng = np.random.default_rng(0)
  # Large enough for XLA:CPU (0.10) to pick YNNPACK for the weight gradient (small ones stay).
  x = jnp.asarray(rng.standard_normal((32, 64, 32, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 16)) * 0.1, jnp.float32)
  default = _compiled_text(_conv_grad, x, w, options={})
  ours = _compiled_text(_conv_grad, x, w, options=xla_options.cpu_compiler_options())
  assert ynn_convolutions(ours) == 0
  if ynn_convolutions(default) == 0:
    pytest.skip('this XLA sends no convolution to YNNPACK by default (nothing to route)')
  # Same gradients either way, to float32 accumulation error: each weight-gradient entry sums
  # B * H * W = 65,536 products, each input-gradient entry 3 * 3 * 16 = 144.
  gx0, gw0 = jax.jit(_conv_grad)(x, w)
  gx1, gw1 = jax.jit(_conv_grad, compiler_options=xla_options.cpu_compiler_options())(x, w)
  y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  u = 2.0**-24
  gw_scale = 2 * float(jnp.abs(x).max() * jnp.abs(y).max())
  gx_scale = 2 * float(jnp.abs(w).max() * jnp.abs(y).max())
  np.testing.assert_allclose(gw1, gw0, rtol=0, atol=2 * 65536 * u * gw_scale)
  np.testing.assert_allclose(gx1, gx0, rtol=0, atol=2 * 144 * u * gx_scale)


def test_train_step_is_compiled_without_ynnpack_convolutions(monkeypatch):
  from tests.test_train_step import batch, tiny_config
  monkeypatch.delenv(xla_options.FUSION_BARRIER_ENV, raising=False)

  from reid_jax import train
  c = tiny_config()
  mesh = train.make_mesh(c)
  with jax.set_mesh(mesh):
    graphdef, state, tx = train.init_state(c, 6, mesh)
    step = train.make_train_step(graphdef, tx, c, mesh)
    text = step.lower(state, train.put_batch(mesh, batch(c)), jnp.float32(1e-3)).compile().as_text()
  assert ' convolution(' in text
  assert ynn_convolutions(text) == 0
  # layers.Conv's fusion barriers reach the train step: a loop per convolution but the stem's
  # (its input, the images, carries no gradient).
  convs = sum(1 for path, leaf in jax.tree_util.tree_leaves_with_path(state['params'])
              if 'kernel' in jax.tree_util.keystr(path) and leaf.ndim == 4)
  assert text.count(' while(') == convs - 1


def test_probe_inside_a_mesh_context_still_accepts_the_option():
  # The training loop builds its step inside ``with jax.set_mesh(mesh)``: the probe must not
  # fail there (a committed probe argument clashed with the mesh and silently disabled the
  # option for the whole process).
  from reid_jax import config_lib, train
  xla_options._probe.cache_clear()
  try:
    with jax.set_mesh(train.make_mesh(config_lib.base_config())):
      opts = xla_options.cpu_compiler_options()
  finally:
    xla_options._probe.cache_clear()
  assert opts == {'xla_cpu_experimental_ynn_fusion_type':
                  'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


# ----------------------------------------------------------------- fusion barrier (layers.Conv)
def _residual_chain_grads(x, kernels):
  """A ResNet-like chain: each convolution reads ``relu(x * a + b + previous)`` (the elementwise
  producers XLA would otherwise recompute inside the weight gradient's layout change)."""
  from reid_jax.models import layers

  def f(kernels, x):
    h = x
    for i, w in enumerate(kernels):
      y = jax.lax.conv_general_dilated(layers.cpu_fusion_barrier(h), w, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      h = jax.nn.relu(y * (1.0 + 0.1 * i) + 0.05 + h)
    return jnp.sum(h * h)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


def _chain_inputs():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(4, 8, 6, 8).astype(np.float32))
  kernels = [jnp.asarray(rng.randn(1, 1, 8, 8).astype(np.float32) * 0.3) for _ in range(3)]
  return x, kernels


def test_fusion_barrier_is_the_identity_in_value_and_derivatives(monkeypatch):
  from reid_jax.models import layers
  monkeypatch.delenv(xla_options.FUSION_BARRIER_ENV, raising=False)
  x = jnp.asarray(np.random.RandomState(1).randn(3, 5, 4, 2).astype(np.float32))
  special = x.at[0, 0, 0, 0].set(1.2345e-7)  # the value that skips the loop's one iteration
  special = special.at[1, 0, 0, 0].set(-0.0).at[1, 1, 0, 0].set(jnp.nan)
  barrier = layers.cpu_fusion_barrier

  def bits(a):  # bit for bit: the sign of -0.0 and the NaN must survive
    a = np.asarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)

  for v in (x, special, x.astype(jnp.bfloat16)):
    for f in (barrier, layers._materialized):
      out = jax.jit(f)(v)
      assert out.dtype == v.dtype
      np.testing.assert_array_equal(bits(out), bits(v))
  grad = jax.jit(jax.grad(lambda t: jnp.sum(jnp.sin(barrier(t)))))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(jnp.cos(x)))
  # Forward mode and second order as for the identity (custom_jvp: the loop is primal-only).
  _, tangent = jax.jvp(barrier, (x,), (2 * x,))
  np.testing.assert_array_equal(np.asarray(tangent), np.asarray(2 * x))
  second = jax.jit(jax.grad(lambda t: jnp.sum(jax.grad(lambda u: jnp.sum(barrier(u) ** 3))(t))))(x)
  np.testing.assert_allclose(np.asarray(second), np.asarray(6 * x), rtol=1e-6)
  empty = jnp.zeros((0, 3), jnp.float32)
  assert jax.grad(lambda t: jnp.sum(barrier(t)))(empty).shape == (0, 3)


def test_fusion_barrier_materialises_only_under_differentiation_on_cpu(monkeypatch):
  from reid_jax.models import layers
  monkeypatch.delenv(xla_options.FUSION_BARRIER_ENV, raising=False)
  x, kernels = _chain_inputs()
  forward = jax.jit(lambda v: layers.cpu_fusion_barrier(v) * 2.0).lower(x).as_text()
  assert 'while' not in forward  # evaluation and export trace the identity
  # One loop per convolution whose input carries a gradient (all three here).
  assert _residual_chain_grads(x, kernels).lower(kernels, x).as_text().count('stablehlo.while') == 3
  assert not xla_options.fusion_barriers_enabled('gpu')
  assert not xla_options.fusion_barriers_enabled('tpu')
  monkeypatch.setenv(xla_options.FUSION_BARRIER_ENV, '0')
  assert not xla_options.fusion_barriers_enabled()
  assert 'while' not in _residual_chain_grads(x, kernels).lower(kernels, x).as_text()


def test_fusion_barrier_keeps_loss_and_gradients(monkeypatch):
  monkeypatch.delenv(xla_options.FUSION_BARRIER_ENV, raising=False)
  x, kernels = _chain_inputs()
  loss1, (gk1, gx1) = _residual_chain_grads(x, kernels)(kernels, x)
  monkeypatch.setenv(xla_options.FUSION_BARRIER_ENV, '0')
  loss0, (gk0, gx0) = _residual_chain_grads(x, kernels)(kernels, x)
  # Same arithmetic; only the fusion differs, so at most reassociation inside XLA's kernels:
  # a few ulps of each sum of 8 products per output (and of the 4*8*6-term kernel gradient).
  u = float(np.finfo(np.float32).eps)
  assert float(loss1) == pytest.approx(float(loss0), rel=64 * u)
  for a, b in zip(gk1, gk0):
    np.testing.assert_allclose(a, b, rtol=0, atol=4 * 192 * u * float(jnp.abs(b).max()))
  np.testing.assert_allclose(gx1, gx0, rtol=0, atol=4 * 3 * 8 * u * float(jnp.abs(gx0).max()))
