"""Float tolerances from the computation's rounding error, not from one machine's output.

XLA:CPU emits different code per CPU (4, 8 or 16 float32 lanes under SSE4.2, AVX2 and AVX-512,
FMA contraction or not, other blockings of dots and reductions), so every reduction is summed in
another order on another machine, as it is between a sharded and an unsharded step, between
micro-batches and one batch, and between XLA and PyTorch. A tolerance must therefore cover the
rounding error of the computation on any machine, and be derived from it:

* float32 unit roundoff ``U = 2**-24`` (about 6e-8): one rounding of ``x`` is off by <= U |x|;
* a sum or dot product of ``n`` terms whose partial sums are of magnitude <= S is off by
  <= n U S in the worst case (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1);
  the roundings are in practice independent and zero-mean, so the error has a standard deviation
  of about sqrt(n) U S (Higham §2.8), whatever the order. S is the result's magnitude when the
  terms do not cancel, the sum of the terms' magnitudes in general;
* chained reductions (layers): in a forward pass BatchNorm rescales each layer's error with its
  signal, so the layers' independent errors add in quadrature (``terms`` = the count over all
  layers, ``depth`` 1); in a backward pass through BatchNorm, which subtracts two batch means
  from the incoming gradient and cancels, an error is carried and amplified by every earlier
  layer, so the layers' errors add linearly (``depth`` = the number of layers).

:func:`sum_tol` is ``SIGMAS * U * depth * sqrt(terms) * scale``, with ``SIGMAS = 8``: the largest
of up to ~1e6 compared elements lies within ~5.3 standard deviations of zero (Gaussian tail,
sqrt(2 ln 1e6)), and the difference of two independently rounded computations has sqrt(2) times
the standard deviation of one (5.3 * 1.41 = 7.5 -> 8).

A tolerance derived this way still catches real bugs: a wrong scale, a missing term or a wrong
sign changes a result by a fraction of its magnitude (a factor 2, the size of the term), many
orders above ``U * depth * sqrt(terms)``; each use states the bug it still catches.
"""

import math

import numpy as np

U = 2.0 ** -24
U_BF16 = 2.0 ** -8  # bfloat16: 8 significant bits
SIGMAS = 8


def sum_tol(terms: float, scale: float, *, depth: int = 1, unit: float = U) -> float:
  """``SIGMAS * unit * depth * sqrt(terms) * scale``: the absolute rounding error, on any summation
  order, of ``depth`` chained reductions (whose errors add linearly) of at most ``terms`` terms
  each, with partial sums of magnitude <= ``scale``, in a format of unit roundoff ``unit``."""
  return SIGMAS * unit * depth * math.sqrt(terms) * float(scale)


def assert_close_scaled(got, want, *, terms: float, depth: int = 1, scale=None, rtol: float = 0.0,
                        unit: float = U, err_msg: str = '') -> None:
  """``|got - want| <= sum_tol(terms, scale, depth=depth) + rtol * |want|`` elementwise.

  ``scale`` defaults to ``max |want|``: the magnitude of the compared quantity bounds its partial
  sums unless the sum cancels (then pass the terms' magnitude). ``rtol`` is for the rounding of
  the stored results themselves (``2 * U``: two results rounded from nearly equal values may land
  one float apart).
  """
  want = np.asarray(want)
  if scale is None:
    scale = np.max(np.abs(want)) if want.size else 0.0
  np.testing.assert_allclose(got, want, rtol=rtol,
                             atol=sum_tol(terms, scale, depth=depth, unit=unit), err_msg=err_msg)


def resnet_forward_terms(depth: int, width: int = 64) -> int:
  """Roundings behind an eval-mode ResNet feature, for :func:`sum_tol` with depth 1: ``depth``
  layers, each a dot of at most 3 * 3 * 8 * width terms (the last stage's 3x3 convolution on
  8 * width channels), whose independent errors add in quadrature because BatchNorm rescales each
  layer's error with its signal."""
  return depth * 72 * width
