"""layers.max_pool's gradient (custom VJP) against PyTorch's ``max_pool2d`` backward in float64,
with many exact ties (PyTorch routes each output's gradient to the first maximum of its window in
row-major order), for the stems ResNet uses (3/2 pad 1; fast-reid's 3/2 pad 0 ceil_mode) and
other window / stride / size combinations, odd and even sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reid_jax.models.layers import max_pool

U = 2.0**-24


def torch_grad(x, g, window, stride, padding, ceil_mode):
  t = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2).requires_grad_(True)
  y = torch.nn.functional.max_pool2d(t, window, stride, padding, ceil_mode=ceil_mode)
  y.backward(torch.from_numpy(g.astype(np.float64)).permute(0, 3, 1, 2))
  return y.detach().permute(0, 2, 3, 1).numpy(), t.grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize('window,stride,padding,ceil_mode', [
    (3, 2, 1, False), (3, 2, 0, True), (2, 2, 0, False), (3, 1, 1, False), (5, 3, 2, True)])
@pytest.mark.parametrize('hw', [(9, 7), (8, 6)])
@pytest.mark.parametrize('ties', [True, False])
def test_max_pool_gradient_matches_torch(window, stride, padding, ceil_mode, hw, ties):
  rng = np.random.default_rng(hw[0] * 10 + window + stride + ties)
  shape = (2, *hw, 3)
  if ties:  # few distinct values: most windows hold several maxima
    x = rng.integers(0, 3, shape).astype(np.float32)
  else:
    x = rng.standard_normal(shape).astype(np.float32)
  y, vjp = jax.vjp(lambda v: max_pool(v, window, stride, padding, ceil_mode), jnp.asarray(x))
  g = rng.standard_normal(y.shape).astype(np.float32)
  y_ref, dx_ref = torch_grad(x, g, window, stride, padding, ceil_mode)
  np.testing.assert_array_equal(np.asarray(y), y_ref)
  (dx,) = vjp(jnp.asarray(g))
  # Each input receives the gradients of the <= ceil(window / stride)**2 outputs whose first
  # maximum it is: a float32 sum of that many terms against the float64 one.
  terms = -(-window // stride)**2
  bound = terms * U * terms * np.abs(g).max()
  err = np.abs(np.asarray(dx, np.float64) - dx_ref)
  assert err.max() <= bound, (err.max(), bound)
  # And the routing is right to the element: a gradient lands exactly where torch puts one.
  np.testing.assert_array_equal(np.asarray(dx) != 0, dx_ref != 0)


def test_max_pool_gradient_bfloat16_and_under_jit():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 6, 4)).astype(np.float32)
  xb = jnp.asarray(x, jnp.bfloat16)
  dx = jax.jit(jax.grad(lambda v: jnp.sum(max_pool(v).astype(jnp.float32) ** 2)))(xb)
  assert dx.dtype == jnp.bfloat16
  xr = np.asarray(xb, np.float32)  # the bf16 values, exactly
  y_ref, dx_ref = torch_grad(xr, 2 * torch_grad(xr, np.zeros((2, 4, 3, 4), np.float32),
                                                3, 2, 1, False)[0], 3, 2, 1, False)
  # g = 2 y is exact in bf16; an input sums <= 4 such terms with <= 3 bf16 roundings (2**-9 of
  # the running sum each, itself <= 4 max|g|).
  bound = 3 * 2.0**-9 * 4 * 2 * np.abs(y_ref).max()
  assert np.abs(np.asarray(dx, np.float64) - dx_ref).max() <= bound
  np.testing.assert_array_equal(np.asarray(dx, np.float32) != 0, dx_ref != 0)
