"""BatchNorm / InstanceNorm (folded scale-and-shift form) against float64 PyTorch references:
outputs and gradients in train mode, eval mode, and with inputs whose mean is large against their
spread (where the folded form ``x * a + (bias - mean * a)`` rounds differently from
``(x - mean) * a + bias``).

Tolerances (float32 unit roundoff u = 2**-24 against a float64 reference):
* output: the fold adds ~3 roundings of terms of size |x * a|, |mean * a|, |bias|; the float32
  mean and variance (sums of n terms) carry up to ~n * u relative error, which moves the output
  by |a| * |x - mean| times that; bound = 8 u (|x a| + |mean a| + |bias|) + 2 n u |a| (|x - mean|
  + |mean|).
* input gradient: dx = a / n (n g - sum g - xhat sum(g xhat)); each sum of n terms is within
  n u of its magnitude: bound = 4 n u |a| max|g| (1 + max|xhat|)**2 (plus the output term above,
  propagated through the same a).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from reid_jax.models.layers import BatchNorm, InstanceNorm

U = 2.0**-24


def _bn_params(bn, c, rng):
  bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
  if bn.bias is not None:
    bn.bias[...] = jnp.asarray(rng.uniform(-1.0, 1.0, c), jnp.float32)


def _torch_bn64(x, scale, bias, mean=None, var=None, eps=1e-5):
  """float64 torch batch norm on NHWC/NC numpy input; train mode when mean is None."""
  t = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
  tc = t.permute(0, 3, 1, 2) if t.ndim == 4 else t
  w = torch.from_numpy(np.asarray(scale, np.float64)).requires_grad_(True)
  b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float64)).requires_grad_(True)
  training = mean is None
  rm = None if training else torch.from_numpy(np.asarray(mean, np.float64))
  rv = None if training else torch.from_numpy(np.asarray(var, np.float64))
  y = torch.nn.functional.batch_norm(tc, rm, rv, w, b, training=training, eps=eps)
  y = y.permute(0, 2, 3, 1) if t.ndim == 4 else y
  return t, w, b, y


def _assert_within(got, want, bound):
  err = np.abs(np.asarray(got, np.float64) - want.detach().numpy())
  assert (err <= bound).all(), (err.max(), np.min(bound))


def _out_bound(x, a, mean, bias):
  n = x.size // x.shape[-1]
  b = 0.0 if bias is None else np.abs(bias)
  return (8 * U * (np.abs(x * a) + np.abs(mean * a) + b)
          + 2 * n * U * np.abs(a) * (np.abs(x - mean) + np.abs(mean)))


@pytest.mark.parametrize('offset', [0.0, 2.0, 30.0])  # |mean| / std up to 10
@pytest.mark.parametrize('shape,bias', [((6, 5, 4, 3), True), ((8, 7), True),
                                        ((4, 6, 5, 8), False)])
def test_batchnorm_train_output_and_grads_match_float64_torch(shape, bias, offset):
  rng = np.random.default_rng(int(offset) + len(shape))
  c = shape[-1]
  x = (offset + 3 * rng.standard_normal(shape)).astype(np.float32)
  g = rng.standard_normal(shape).astype(np.float32)  # cotangent
  bn = BatchNorm(c, bias=bias)
  _bn_params(bn, c, rng)
  scale = np.asarray(bn.scale[...])
  bias_v = None if bn.bias is None else np.asarray(bn.bias[...])

  graphdef, params, rest = nnx.split(bn, nnx.Param, ...)

  def f(x, params):
    return nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))(x)

  y, vjp = jax.vjp(f, jnp.asarray(x), params)
  dx, dparams = vjp(jnp.asarray(g))
  dscale = dparams['scale'][...]
  dbias = dparams['bias'][...] if bias_v is not None else None

  t, w, b, y_ref = _torch_bn64(x, scale, bias_v)
  (y_ref * torch.from_numpy(g.astype(np.float64))).sum().backward()
  x64 = x.astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  mean, var = x64.mean(axes), x64.var(axes)
  a = scale / np.sqrt(var + 1e-5)
  bound = _out_bound(x64, a, mean, bias_v)
  err = np.abs(np.asarray(y, np.float64) - y_ref.detach().numpy())
  assert (err <= bound).all(), (err.max(), bound.min())

  n = x.size // c
  xhat = (x64 - mean) * np.sqrt(1 / (var + 1e-5))
  gmax = np.abs(g).max(axes)
  dx_bound = 4 * n * U * np.abs(a) * gmax * (1 + np.abs(xhat).max(axes))**2
  _assert_within(dx, t.grad, dx_bound)
  # dscale = sum(g * xhat), dbias = sum(g): sums of n terms.
  ds_bound = 4 * n * U * (np.abs(g * xhat).sum(axes) + gmax * np.abs(xhat).max(axes))
  _assert_within(dscale, w.grad, ds_bound)
  if b is not None:
    db_bound = 2 * n * U * np.abs(g).sum(axes)
    _assert_within(dbias, b.grad, db_bound)


def test_batchnorm_running_statistics_update_unchanged():
  """The running statistics stay PyTorch's: momentum 0.1, unbiased variance (float64 reference)."""
  rng = np.random.default_rng(3)
  x = (5 + 2 * rng.standard_normal((4, 3, 5, 6))).astype(np.float32)
  bn = BatchNorm(6)
  bn(x)
  x64 = x.astype(np.float64).reshape(-1, 6)
  n = x64.shape[0]
  want_mean = 0.9 * 0 + 0.1 * x64.mean(0)
  want_var = 0.9 * 1 + 0.1 * x64.var(0, ddof=1)
  np.testing.assert_allclose(bn.mean[...], want_mean, rtol=4 * n * U)
  np.testing.assert_allclose(bn.var[...], want_var, rtol=4 * n * U)


@pytest.mark.parametrize('bias', [True, 'frozen'])
def test_batchnorm_eval_mode_matches_float64_torch(bias):
  rng = np.random.default_rng(11)
  c = 5
  x = (3 + 2 * rng.standard_normal((3, 4, 4, c))).astype(np.float32)
  bn = BatchNorm(c, bias=bias, use_running_average=True)
  _bn_params(bn, c, rng)
  mean = rng.uniform(2, 4, c).astype(np.float32)
  var = rng.uniform(0.5, 3, c).astype(np.float32)
  bn.mean[...], bn.var[...] = jnp.asarray(mean), jnp.asarray(var)
  scale, bias_v = np.asarray(bn.scale[...]), np.asarray(bn.bias[...])
  _, _, _, y_ref = _torch_bn64(x, scale, bias_v, mean, var)
  a = scale / np.sqrt(var.astype(np.float64) + 1e-5)
  bound = 8 * U * (np.abs(x * a) + np.abs(mean * a) + np.abs(bias_v))  # exact statistics here
  err = np.abs(np.asarray(bn(x), np.float64) - y_ref.detach().numpy())
  assert (err <= bound).all(), (err.max(), bound.min())


def test_batchnorm_bfloat16_input_keeps_dtype_and_tracks_float32():
  rng = np.random.default_rng(5)
  x = (1 + rng.standard_normal((4, 3, 3, 8))).astype(np.float32)
  bn32, bn16 = BatchNorm(8), BatchNorm(8)
  y32 = np.asarray(bn32(jnp.asarray(x)))
  xb = jnp.asarray(x, jnp.bfloat16)
  y16 = bn16(xb)
  assert y16.dtype == jnp.bfloat16
  # bf16 input rounding (2**-9 relative of |x|, times |a| ~ 1) plus bf16 output rounding.
  bound = 2.0**-8 * (np.abs(x) * np.abs(y32).max() + np.abs(y32)) + 1e-3
  assert (np.abs(np.asarray(y16, np.float32) - y32) <= bound).all()


@pytest.mark.parametrize('offset', [0.0, 20.0])
def test_instancenorm_matches_float64_torch(offset):
  rng = np.random.default_rng(2)
  c = 4
  x = (offset + 2 * rng.standard_normal((3, 5, 6, c))).astype(np.float32)
  inorm = InstanceNorm(c)
  inorm.scale[...] = jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32)
  inorm.bias[...] = jnp.asarray(rng.uniform(-1, 1, c), jnp.float32)
  ref = torch.nn.InstanceNorm2d(c, affine=True).double()
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(np.asarray(inorm.scale[...], np.float64)))
    ref.bias.copy_(torch.from_numpy(np.asarray(inorm.bias[...], np.float64)))
    want = ref(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  x64 = x.astype(np.float64)
  mean = x64.mean((1, 2), keepdims=True)
  a = np.asarray(inorm.scale[...]) / np.sqrt(x64.var((1, 2), keepdims=True) + 1e-5)
  n = 5 * 6  # per-sample statistics: sums over H * W terms
  bound = (8 * U * (np.abs(x64 * a) + np.abs(mean * a) + np.abs(np.asarray(inorm.bias[...])))
           + 2 * n * U * np.abs(a) * (np.abs(x64 - mean) + np.abs(mean)))
  err = np.abs(np.asarray(inorm(x), np.float64) - want.numpy())
  assert (err <= bound).all(), (err.max(), bound.min())
