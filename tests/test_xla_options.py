"""reid_jax.xla_options: the CPU compiler option keeps convolutions off YNNPACK, is dropped off
CPU / on unknown jaxlib versions / when XLA rejects it, and reaches the train step's jit."""

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


def test_train_step_is_compiled_without_ynnpack_convolutions():
  from tests.test_train_step import batch, tiny_config

  from reid_jax import train
  c = tiny_config()
  mesh = train.make_mesh(c)
  with jax.set_mesh(mesh):
    graphdef, state, tx = train.init_state(c, 6, mesh)
    step = train.make_train_step(graphdef, tx, c, mesh)
    text = step.lower(state, train.put_batch(mesh, batch(c)), jnp.float32(1e-3)).compile().as_text()
  assert ' convolution(' in text
  assert ynn_convolutions(text) == 0


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
