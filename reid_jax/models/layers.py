"""Building blocks shared by every backbone and head, written to match PyTorch numerics.

All tensors are channels-last: images and maps are ``[B, H, W, C]``, vectors ``[B, C]``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax import xla_options

Array = jax.Array


class FrozenParam(nnx.Variable):
  """A parameter that is loaded and saved but never trained (e.g. the BNNeck bias).

  It is not an ``nnx.Param``, so optimizers built with ``wrt=nnx.Param`` and gradients taken
  with respect to ``nnx.Param`` skip it, as ``requires_grad_(False)`` does in PyTorch.
  """


def kaiming_normal_fan_out() -> nnx.Initializer:
  """torchvision's conv init: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``."""
  return nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_default_uniform(fan_in: int) -> nnx.Initializer:
  """PyTorch's default Linear/Conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weight and bias."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# Bound at import: ONNX export (jax2onnx, ``reid_jax.export``) swaps ``nnx.Conv.__call__`` for a
# shim of its own while it traces, and that shim fails on explicit padding pairs (it passes
# flax's padding list as an unhashable primitive parameter).
_flax_conv_call = nnx.Conv.__call__


class Conv(nnx.Conv):
  """``nnx.Conv`` calling flax's own ``__call__`` (bound before any exporter can swap it), so the
  trace holds the plain ``lax.conv_general_dilated``, which the ONNX exporter converts. Same
  variables, so checkpoints are unchanged.

  The input first passes ``cpu_fusion_barrier`` (the identity; on XLA:CPU it keeps the train
  step from recomputing the input's producers inside the weight gradient's layout change).
  """

  def __call__(self, inputs: Array, *args, **kwargs) -> Array:
    return _flax_conv_call(self, cpu_fusion_barrier(inputs), *args, **kwargs)


def _materialized(x: Array) -> Array:
  """``x``, as the carry of a while loop of at most one iteration whose trip count XLA cannot
  know at compile time (it depends on a value of ``x``; the body selects ``x`` itself, since JAX
  hoists a carry the body leaves unchanged), so no fusion crosses it: consumers read ``x`` from
  memory instead of recomputing its producers. On a multi-device mesh reading that value costs
  one scalar all-reduce per call."""
  if x.size == 0:
    return x
  runs = (x[(0,) * x.ndim] != jnp.asarray(1.2345e-7, x.dtype)).astype(jnp.int32)
  _, out = jax.lax.while_loop(lambda c: c[0] < runs,
                              lambda c: (c[0] + 1, jnp.where(c[0] < 1, c[1], -c[1])),
                              (jnp.int32(0), x))
  return out


# custom_jvp rather than custom_vjp: the loop sits in the primal computation only (tangents pass
# straight through), so forward mode, grad of grad and the linearise-transpose of jax.vjp all
# work, and a plain (undifferentiated) trace holds the identity.
@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _fusion_barrier(x: Array, materialize: bool = False) -> Array:
  return _materialized(x) if materialize else x


_fusion_barrier.defjvp(
    lambda materialize, primals, tangents: (_fusion_barrier(primals[0], True), tangents[0]))


def cpu_fusion_barrier(x: Array) -> Array:
  """The identity, values and derivatives. When ``x`` carries a derivative on XLA:CPU its value is
  materialised (``_materialized``); plain evaluation and export trace only the identity (a
  ``custom_jvp_call`` of it), and so does an input without a derivative (the images at the
  stem).

  Why: XLA:CPU computes a convolution's weight gradient with the input in a ``[C, H, W, B]``
  layout, and its fusion pass builds that copy by recomputing the input's elementwise producers
  (a ResNet's whole residual chain of BatchNorm affines, ReLUs and adds: up to 16 full-size
  operands) while writing with a stride of ``B`` elements. For ResNet-50 at batch 16 those
  copies took 1.75 s of a 3.3 s step; reading the materialised input instead, 0.3 s
  (docs/benchmarks.md). Off on other backends (fusion is what GPUs and TPUs want) and with
  ``REID_JAX_CPU_FUSION_BARRIER=0`` (``xla_options.fusion_barriers_enabled``).
  """
  return _fusion_barrier(x) if xla_options.fusion_barriers_enabled() else x


def conv(in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
         padding: int | None = None, use_bias: bool = False, rngs: nnx.Rngs,
         kernel_init: nnx.Initializer | None = None, dtype=None) -> nnx.Conv:
  """A 2-D convolution with PyTorch's symmetric explicit padding (default ``kernel_size // 2``).

  'SAME' padding is never used: for stride 2 on even sizes it pads (0, 1) where PyTorch pads (1, 1).
  """
  pad = kernel_size // 2 if padding is None else padding
  fan_in = in_features * kernel_size * kernel_size
  return Conv(
      in_features, out_features, (kernel_size, kernel_size), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), use_bias=use_bias,
      kernel_init=kernel_init or kaiming_normal_fan_out(),
      bias_init=torch_default_uniform(fan_in), dtype=dtype, rngs=rngs)


def _normalize(xf: Array, mean: Array, var: Array, scale: Array, bias: Array | None,
               epsilon: float) -> Array:
  """``(xf - mean) / sqrt(var + eps) * scale + bias`` as one scale and shift per channel:
  ``a = scale * rsqrt(var + eps)``, ``b = bias - mean * a``, ``y = xf * a + b``.

  Same function as the textbook form (the statistics are computed as before, by the caller); the
  folded form reads ``xf`` once and creates no full-size ``xf - mean`` for the output (nor for
  its gradient), which cuts the step's temporaries (docs/benchmarks.md). Rounding:
  ``xf * a - mean * a`` loses about ``eps32 * |mean * a|`` against ``(xf - mean) * a`` (a few
  float32 ulps of the output for the activations a network feeds a BatchNorm). ``mean``,
  ``var``, ``scale``, ``bias`` broadcast against ``xf`` (per channel, or ``[B, 1, 1, C]`` for
  InstanceNorm).
  """
  a = scale * jax.lax.rsqrt(var + epsilon)
  b = -mean * a if bias is None else bias - mean * a
  return xf * a + b


class BatchNorm(nnx.Module):
  """BatchNorm over every axis but the last, with PyTorch semantics.

  * Train mode (``use_running_average=False``) normalises with the biased batch variance and
    updates the running variance with the *unbiased* one (n / (n - 1)), as ``torch.nn.BatchNorm``
    does. ``momentum`` is PyTorch's (weight of the new batch statistic, default 0.1).
  * Eval mode normalises with the running statistics.
  * ``bias='frozen'`` keeps a bias that is loaded but never trained (BNNeck); ``bias=False``
    has none.
  Statistics are always computed in float32; the output takes the input's dtype.
  Input ``[..., C]``: ``[B, C]`` for BatchNorm1d, ``[B, H, W, C]`` for BatchNorm2d.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
               bias: bool | str = True, use_running_average: bool = False):
    if bias not in (True, False, 'frozen'):
      raise ValueError(f"BatchNorm bias must be True, False or 'frozen', got {bias!r}")
    self.num_features = num_features
    self.momentum = momentum
    self.epsilon = epsilon
    self.use_running_average = use_running_average
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    if bias == 'frozen':
      self.bias = FrozenParam(jnp.zeros((num_features,), jnp.float32))
    elif bias:
      self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    else:
      self.bias = None
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    """``mask`` (train mode only; shape ``x.shape[:-1]``, bool): take the batch statistics over
    the masked positions alone (every position is still normalised), as a BatchNorm applied to
    just those positions would (MPN's part regions). Ignored in eval mode."""
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      if mask is None:
        n = 1
        for a in axes:
          n *= x.shape[a]
        mean = jnp.mean(xf, axes)
        var = jnp.mean(jnp.square(xf - mean), axes)
        unbiased = var * (n / max(n - 1, 1))
      else:
        m = mask.astype(jnp.float32)[..., None]
        n = jnp.sum(m)
        mean = jnp.sum(xf * m, axes) / n
        var = jnp.sum(jnp.square(xf - mean) * m, axes) / n
        unbiased = var * (n / jnp.maximum(n - 1, 1))
      m = self.momentum
      self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
      self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
    bias = None if self.bias is None else self.bias[...]
    return _normalize(xf, mean, var, self.scale[...], bias, self.epsilon).astype(dtype)


class InstanceNorm(nnx.Module):
  """``torch.nn.InstanceNorm2d(C, affine=True)``: per-sample, per-channel over H, W. ``[B, H, W, C]``."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-5):
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    return _normalize(xf, mean, var, self.scale[...], self.bias[...], self.epsilon).astype(x.dtype)


class IBN(nnx.Module):
  """IBN-a normalisation (Pan et al. 2018): InstanceNorm on the first ``C // 2`` channels,
  BatchNorm on the rest (PyTorch keys ``bn1.IN.*`` and ``bn1.BN.*``). ``[B, H, W, C]``."""

  def __init__(self, num_features: int):
    self.half = num_features // 2
    self.IN = InstanceNorm(self.half)
    self.BN = BatchNorm(num_features - self.half)

  def __call__(self, x: Array) -> Array:
    return jnp.concatenate([self.IN(x[..., :self.half]), self.BN(x[..., self.half:])], axis=-1)


def max_pool(x: Array, window: int = 3, stride: int = 2, padding: int = 1,
             ceil_mode: bool = False) -> Array:
  """``torch.nn.MaxPool2d(window, stride, padding, ceil_mode)`` on ``[B, H, W, C]``.

  Padding is -inf. With ``ceil_mode`` the last window may start inside the right/bottom padding
  region only if it starts inside the input or left padding, as PyTorch rules. The gradient goes
  to the first maximum of each window (row-major), as PyTorch's; see ``_max_pool_bwd``.
  """
  pads = []
  for size in x.shape[1:3]:
    eff = size + 2 * padding - window
    if ceil_mode:
      out = -(-eff // stride) + 1
      if (out - 1) * stride >= size + padding:
        out -= 1
    else:
      out = eff // stride + 1
    extra = max((out - 1) * stride + window - (size + 2 * padding), 0)
    pads.append((padding, padding + extra))
  pool = _max_pool_portable if _PORTABLE_POOL.get() else _max_pool
  return pool(x, window, stride, tuple(pads))


_PORTABLE_POOL = contextvars.ContextVar('reid_jax_portable_pool', default=False)


@contextlib.contextmanager
def portable_max_pool():
  """Within this context ``max_pool`` is traced as the maximum of ``window**2`` strided slices of
  the -inf-padded input instead of one ``reduce_window`` (the same values, exactly).

  For ONNX export: jax2onnx turns a ``reduce_window`` over ``[B, H, W, C]`` into a ``MaxPool``
  with four spatial axes, which ONNX Runtime rejects ("Unsupported pooling size"); slices and
  elementwise maxima run anywhere. Training and evaluation keep ``reduce_window``. The form is
  chosen when a function is traced: a function jitted before (or inside) the context keeps the
  form of its first trace, so export traces a fresh function.
  """
  token = _PORTABLE_POOL.set(True)
  try:
    yield
  finally:
    _PORTABLE_POOL.reset(token)


def _window_max(x, window, stride, pads):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), ((0, 0), pads[0], pads[1], (0, 0)))


def _window_max_slices(x, window, stride, pads):
  """``_window_max`` as the maximum of ``window**2`` strided slices of the padded input."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  ho = (xp.shape[1] - window) // stride + 1
  wo = (xp.shape[2] - window) // stride + 1
  views = [xp[:, di:di + stride * (ho - 1) + 1:stride, dj:dj + stride * (wo - 1) + 1:stride]
           for di in range(window) for dj in range(window)]
  return functools.reduce(jnp.maximum, views)


def _custom_vjp_pool(forward):
  """``forward`` with PyTorch's max-pool gradient (``_max_pool_bwd``). One function object per
  forward form, so jax's trace caches never hand one form to the other."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
  def pool(x, window, stride, pads):
    return forward(x, window, stride, pads)

  def pool_fwd(x, window, stride, pads):
    y = forward(x, window, stride, pads)
    return y, (x, y)

  pool.defvjp(pool_fwd, _max_pool_bwd)
  return pool


def _max_pool_bwd(window, stride, pads, res, g):
  """PyTorch's max-pool gradient: each output's gradient goes to the first maximum of its window
  in row-major order (ties and all). XLA's own rule (``select_and_scatter``) runs ~20-50x slower
  than the forward pool on XLA:CPU (docs/benchmarks.md); this one is elementwise work on
  output-sized arrays: the padded input is split into ``stride x stride`` phases (window offset
  ``d`` reads phase ``d % stride`` shifted by ``d // stride``), each offset's first-maximum mask
  routes ``g`` into its phase with a plain shift, and the phases are interleaved back."""
  x, y = res
  b, h, w, c = x.shape
  ho, wo = y.shape[1:3]
  s = stride
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  hp, wp = xp.shape[1:3]
  hq, wq = -(-hp // s), -(-wp // s)
  xq = jnp.pad(xp, ((0, 0), (0, hq * s - hp), (0, wq * s - wp), (0, 0)),
               constant_values=-jnp.inf).reshape(b, hq, s, wq, s, c)
  zero = jnp.zeros((), g.dtype)
  acc = {}
  taken = jnp.zeros(y.shape, bool)
  for di in range(window):
    for dj in range(window):
      (pi, qi), (pj, qj) = (di % s, di // s), (dj % s, dj // s)
      shifted = xq[:, qi:qi + ho, pi, qj:qj + wo, pj, :]   # xp[:, di + s * i, dj + s * j]
      hit = (shifted == y) & ~taken
      taken = taken | hit
      routed = jnp.pad(jnp.where(hit, g, zero),
                       ((0, 0), (qi, hq - qi - ho), (qj, wq - qj - wo), (0, 0)))
      acc[pi, pj] = routed if (pi, pj) not in acc else acc[pi, pj] + routed
  zeros = jnp.zeros((b, hq, wq, c), g.dtype)
  dq = jnp.stack([jnp.stack([acc.get((pi, pj), zeros) for pj in range(s)], axis=3)
                  for pi in range(s)], axis=2)                   # [b, hq, s, wq, s, c]
  dxp = dq.reshape(b, hq * s, wq * s, c)
  return (dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w, :],)


_max_pool = _custom_vjp_pool(_window_max)
_max_pool_portable = _custom_vjp_pool(_window_max_slices)


def global_avg_pool(x: Array) -> Array:
  """``[B, H, W, C] -> [B, C]``, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def flip_width(images: Array) -> Array:
  """Horizontal flip of ``[B, H, W, C]``."""
  return images[:, :, ::-1, :]


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` float32 weights of a linear resize with ``align_corners=True``: row ``i``
  interpolates at source coordinate ``i * ((n_in - 1) / (n_out - 1))`` (PyTorch's float32
  arithmetic), two non-zero taps ``1 - t`` and ``t``."""
  if n_out > 1:
    src = np.arange(n_out, dtype=np.float32) * (np.float32(n_in - 1) / np.float32(n_out - 1))
  else:
    src = np.zeros((1,), np.float32)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  t = (src - i0.astype(np.float32)).astype(np.float32)
  m = np.zeros((n_out, n_in), np.float32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), 1 - t)
  np.add.at(m, (rows, i1), t)
  return m


def resize_bilinear_align_corners(x: Array, size: tuple[int, int]) -> Array:
  """``F.interpolate(x, size, mode='bilinear', align_corners=True)`` on ``[B, h, w, C]``:
  separable linear interpolation at source coordinates ``i * (in - 1) / (out - 1)`` (JAX's
  ``jax.image.resize`` has only half-pixel centres), as two products with constant two-tap
  matrices at full float32 precision."""
  mh = jnp.asarray(align_corners_matrix(x.shape[1], size[0]), x.dtype)
  mw = jnp.asarray(align_corners_matrix(x.shape[2], size[1]), x.dtype)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,bhwc->bowc', mh, x, precision=hi)
  return jnp.einsum('ow,bhwc->bhoc', mw, x, precision=hi)
