"""Per-jit XLA compiler options that make the CPU train step faster (docs/benchmarks.md).

``cpu_compiler_options()`` returns the options to pass as ``jax.jit(..., compiler_options=...)``:

* On XLA:CPU (jaxlib 0.10–0.12) convolutions are not sent to YNNPACK. XLA:CPU rewrites the
  weight-gradient convolutions of a backward pass into YNNPACK fusions (``"__ynn_fusion"`` in the
  compiled HLO), which on the x86 CPU measured run up to 5x slower than XLA's own (Eigen)
  convolution for the large ones that dominate a ResNet step (a few small shapes are faster on
  YNNPACK; the option is per jit, all or nothing). ``xla_cpu_experimental_ynn_fusion_type`` is
  set to XLA's default list of library fusion types without ``LIBRARY_FUSION_TYPE_CONVOLUTION``
  (dots and reductions stay on YNNPACK).
* Anywhere else (GPU, TPU), or on a jaxlib outside the known range, or when the installed jaxlib
  rejects the option (a probe compile fails with a catchable error): ``{}``, i.e. XLA's defaults.
  The per-jit option is used rather than ``XLA_FLAGS`` because an unknown ``XLA_FLAGS`` entry
  aborts the process, while an unknown compiler option only raises.

``fusion_barriers_enabled()`` says whether ``reid_jax.models.layers.cpu_fusion_barrier``
materialises convolution inputs in differentiated traces (CPU backend only; see there).

The probe runs once per process and backend and is cached. ``REID_JAX_CPU_YNN_CONV=1`` in the
environment keeps XLA's default (convolutions on YNNPACK), for A/B measurements.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

YNN_FUSION_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# XLA's default list (xla/debug_options_flags.cc, jaxlib 0.10) without
# LIBRARY_FUSION_TYPE_CONVOLUTION.
YNN_FUSION_WITHOUT_CONV = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
# jaxlib (major, minor) versions whose default list this module knows: [first, last].
KNOWN_JAXLIB = ((0, 10), (0, 12))
DISABLE_ENV = 'REID_JAX_CPU_YNN_CONV'


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    import jaxlib
    major, minor = jaxlib.__version__.split('.')[:2]
    return int(major), int(minor)
  except Exception:  # noqa: BLE001 (an unparsable version: not a known one)
    return None


def _option_accepted(options: dict, backend: str) -> bool:
  """Compiles a tiny function with ``options`` on ``backend``; False if XLA rejects them."""
  try:
    # An abstract argument: a committed one would clash with a mesh set by the caller
    # (``with jax.set_mesh(mesh): make_train_step(...)``) and make the probe fail.
    x = jax.ShapeDtypeStruct((), np.float32)
    jax.jit(lambda x: x + 1, compiler_options=options).lower(x).compile()
    return True
  except Exception:  # noqa: BLE001 (XLA raises JaxRuntimeError: INVALID_ARGUMENT)
    return False


@functools.cache
def _probe(backend: str, jaxlib_version: tuple[int, int] | None) -> tuple[tuple[str, str], ...]:
  if backend != 'cpu':
    return ()
  if jaxlib_version is None or not KNOWN_JAXLIB[0] <= jaxlib_version <= KNOWN_JAXLIB[1]:
    return ()
  options = {YNN_FUSION_OPTION: YNN_FUSION_WITHOUT_CONV}
  return tuple(options.items()) if _option_accepted(options, backend) else ()


def cpu_compiler_options(backend: str | None = None) -> dict[str, str]:
  """Compiler options for a ``jax.jit`` of model code on ``backend`` (default: JAX's default
  backend): the YNNPACK-off-convolutions option on XLA:CPU, ``{}`` elsewhere (see module doc).

  A fresh dict each call (the caller may add to it)."""
  if os.environ.get(DISABLE_ENV, '') not in ('', '0'):
    return {}
  backend = backend or jax.default_backend()
  return dict(_probe(backend, _jaxlib_version()))


FUSION_BARRIER_ENV = 'REID_JAX_CPU_FUSION_BARRIER'


def fusion_barriers_enabled(backend: str | None = None) -> bool:
  """Whether ``layers.cpu_fusion_barrier`` materialises convolution inputs in a differentiated
  trace: on the CPU backend (JAX's default backend unless given), unless
  ``REID_JAX_CPU_FUSION_BARRIER=0`` (for A/B measurements). Decided when a function is traced."""
  if os.environ.get(FUSION_BARRIER_ENV, '1') == '0':
    return False
  return (backend or jax.default_backend()) == 'cpu'
