"""Per-convolution benchmark: each convolution of a reid_jax ResNet, forward, weight gradient and
input gradient, on XLA (reid_jax's compiler options and XLA's defaults) against PyTorch, printing
JSON. It says which layers make up the gap between the two train steps of ``bench/train.py``.

  python bench/conv_layers.py                                  # demo net: R18 width 16, 256x128, b64
  python bench/conv_layers.py --depth=50 --width=64 --batch=16 # BoT's ResNet-50
  python bench/conv_layers.py --quick                          # tiny: a smoke run

The convolutions are read from the model itself: ``jax.make_jaxpr`` of
``reid_jax.models.resnet.ResNet`` (eval mode) on a ``[B, H, W, 3]`` input, every
``conv_general_dilated`` in it with its exact parameters (also inside ``jit`` / ``custom_jvp`` /
``custom_vjp`` bodies; one inside ``scan`` / ``while`` / ``cond`` stops the run, its count per
step being unknown); equal ones are timed once and counted.
Each is then run alone:

* ``fwd``: the convolution; ``wgrad``: its weight gradient (``jax.vjp`` in the kernel);
  ``dgrad``: its input gradient. A train step runs all three, except the first convolution's
  input gradient (the images have no derivative): ``step_ms`` sums what a step runs, times the
  count.
* jax sides: ``reid_jax`` (``xla_options.cpu_compiler_options()``, what the train step uses) and
  ``xla_default`` (no options: on XLA:CPU the convolutions go to YNNPACK).
* torch sides (when torch imports): ``torch.nn.functional.conv2d``,
  ``torch.nn.grad.conv2d_weight`` and ``conv2d_input`` in ``torch_nchw`` (contiguous: what
  ``bench/train.py`` runs on a CPU) and ``torch_channels_last``.

Times are medians of ``--reps`` calls after one warm-up call, in milliseconds, each call
synchronised. Compare columns of one run; on a shared CPU all of them include other jobs' time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.extend  # noqa: E402,F401  (jax.extend.core: the jaxpr types the walk looks for)
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from reid_jax import xla_options  # noqa: E402
from reid_jax.models import resnet  # noqa: E402

PASSES = ('fwd', 'wgrad', 'dgrad')
# Primitives whose bodies run a number of times (or not at all) that the jaxpr does not fix: a
# convolution inside one could not be counted per step.
CONTROL_FLOW = ('scan', 'while', 'cond')
NHWC = ('NHWC', 'HWIO', 'NHWC')


def _sub_jaxprs(params: dict):
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def model_convolutions(depth: int, width: int, batch: int, height: int, width_px: int,
                       last_stride: int = 1) -> list[dict]:
  """The ``conv_general_dilated`` equations of the ResNet's forward pass, in order: one dict per
  distinct convolution with ``lhs``/``rhs`` shapes, its ``params`` and ``count``; the first
  convolution (``first``) reads the images."""
  model = resnet.ResNet(depth, width=width, last_stride=last_stride, rngs=nnx.Rngs(0))
  model.eval()
  images = jax.ShapeDtypeStruct((batch, height, width_px, 3), jnp.float32)
  closed = jax.make_jaxpr(lambda x: model(x))(images)
  found: dict = {}

  def walk(jaxpr, control_flow: str | None = None):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        if control_flow:
          raise SystemExit(f'a convolution inside {control_flow!r}: its count per step is not '
                           f'fixed by the jaxpr; this benchmark covers straight-line models')
        lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
        key = (lhs, rhs, repr(sorted(eqn.params.items())))
        if key not in found:
          found[key] = {'lhs': lhs, 'rhs': rhs, 'params': dict(eqn.params), 'count': 0,
                        'first': not found}
        found[key]['count'] += 1
      inner = eqn.primitive.name if eqn.primitive.name in CONTROL_FLOW else control_flow
      for sub in _sub_jaxprs(eqn.params):
        walk(sub, inner)

  walk(closed.jaxpr)
  return list(found.values())


def _median_ms(fn, reps: int) -> float:
  fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3


def jax_times(conv: dict, compiler_options: dict, reps: int, rng) -> dict:
  """``fwd`` / ``wgrad`` / ``dgrad`` of one convolution, each its own jit, in ms."""
  params = conv['params']

  def apply(x, w):
    return jax.lax.conv_general_dilated_p.bind(x, w, **params)

  x = jnp.asarray(rng.standard_normal(conv['lhs'], np.float32))
  w = jnp.asarray(rng.standard_normal(conv['rhs'], np.float32) * 0.1)
  y = jax.eval_shape(apply, x, w)
  conv['out'] = tuple(y.shape)
  dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
  fns = {
      'fwd': (apply, (x, w)),
      'wgrad': (lambda x, w, dy: jax.vjp(lambda w: apply(x, w), w)[1](dy)[0], (x, w, dy)),
      'dgrad': (lambda x, w, dy: jax.vjp(lambda x: apply(x, w), x)[1](dy)[0], (x, w, dy)),
  }
  out = {}
  for name, (fn, args) in fns.items():
    compiled = jax.jit(fn, compiler_options=compiler_options).lower(*args).compile()
    out[name] = _median_ms(lambda: compiled(*args).block_until_ready(), reps)
  return out


def torch_times(conv: dict, channels_last: bool, reps: int, rng) -> dict | None:
  """The same convolution in PyTorch (NCHW tensors, optionally channels_last memory), in ms;
  None where this converter does not map the convolution (not NHWC / HWIO, asymmetric padding,
  dilation, groups). Needs ``conv['out']`` (set by ``jax_times``): the output shapes must
  agree."""
  import torch
  p = conv['params']
  pads = p['padding']
  nhwc = jax.lax.conv_dimension_numbers(conv['lhs'], conv['rhs'], NHWC)
  if (p['dimension_numbers'] != nhwc or any(lo != hi for lo, hi in pads)
      or any(d != 1 for d in p['lhs_dilation'])
      or any(d != 1 for d in p['rhs_dilation']) or p['feature_group_count'] != 1
      or p['batch_group_count'] != 1):
    return None
  b, h, w, c = conv['lhs']
  kh, kw, _, o = conv['rhs']
  stride = tuple(p['window_strides'])
  padding = tuple(lo for lo, _ in pads)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.from_numpy(rng.standard_normal((b, c, h, w), np.float32)).contiguous(memory_format=fmt)
  weight = torch.from_numpy(rng.standard_normal((o, c, kh, kw), np.float32) * 0.1)
  weight = weight.contiguous(memory_format=fmt)
  with torch.no_grad():
    y = torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding)
    jax_out = conv['out']  # [B, H, W, C]
    if tuple(y.shape) != (jax_out[0], jax_out[3], jax_out[1], jax_out[2]):
      raise AssertionError(f'{describe(conv)}: torch output {tuple(y.shape)} is not the NCHW '
                           f'form of jax output {jax_out}')
    dy = torch.from_numpy(rng.standard_normal(tuple(y.shape), np.float32))
    dy = dy.contiguous(memory_format=fmt)
    return {
        'fwd': _median_ms(lambda: torch.nn.functional.conv2d(x, weight, stride=stride,
                                                             padding=padding), reps),
        'wgrad': _median_ms(lambda: torch.nn.grad.conv2d_weight(x, weight.shape, dy,
                                                                stride=stride, padding=padding),
                            reps),
        'dgrad': _median_ms(lambda: torch.nn.grad.conv2d_input(x.shape, weight, dy,
                                                               stride=stride, padding=padding),
                            reps),
    }


def _rounded(x, digits: int = 3):
  if isinstance(x, float):
    return round(x, digits)
  if isinstance(x, dict):
    return {k: _rounded(v, digits) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_rounded(v, digits) for v in x]
  return x


def describe(conv: dict) -> str:
  b, h, w, c = conv['lhs']
  kh, kw, _, o = conv['rhs']
  s = conv['params']['window_strides'][0]
  return f'{b}x{h}x{w}x{c} -> {o}, {kh}x{kw}/{s}'


def step_ms(layers: list[dict], side: str) -> float | None:
  """What one train step spends in ``side``'s convolutions: fwd + wgrad (+ dgrad except for the
  convolution that reads the images), times each convolution's count."""
  total = 0.0
  for layer in layers:
    t = layer.get(side)
    if t is None:
      return None
    passes = ('fwd', 'wgrad') if layer['first'] else PASSES
    total += layer['count'] * sum(t[k] for k in passes)
  return total


def _torch_threads() -> int:
  import torch
  return torch.get_num_threads()


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--depth', type=int, default=18, choices=sorted(resnet.DEPTHS))
  ap.add_argument('--width', type=int, default=16, help='stem channels (64: the real networks)')
  ap.add_argument('--size', default='256x128', help='input HxW')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--last_stride', type=int, default=1, choices=(1, 2))
  ap.add_argument('--reps', type=int, default=7)
  ap.add_argument('--no_torch', action='store_true', help='jax sides only')
  ap.add_argument('--quick', action='store_true', help='R18 width 4, 32x16, batch 2, 2 reps')
  ap.add_argument('--out', default=None, help='also write the JSON here')
  args = ap.parse_args(argv)
  if args.quick:
    args.depth, args.width, args.size, args.batch, args.reps = 18, 4, '32x16', 2, 2
  try:
    args.height, args.width_px = (int(v) for v in args.size.lower().split('x'))
  except ValueError:
    ap.error(f'--size={args.size!r}: expected HxW, e.g. 256x128')
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  try:
    import torch
    torch_version = None if args.no_torch else torch.__version__
  except ImportError:
    torch_version = None
  rng = np.random.default_rng(0)
  layers = model_convolutions(args.depth, args.width, args.batch, args.height, args.width_px,
                              args.last_stride)
  sides = {'reid_jax': xla_options.cpu_compiler_options(), 'xla_default': {}}
  for conv in layers:
    for side, options in sides.items():
      conv[side] = jax_times(conv, options, args.reps, rng)
    if torch_version:
      conv['torch_nchw'] = torch_times(conv, False, args.reps, rng)
      conv['torch_channels_last'] = torch_times(conv, True, args.reps, rng)
    print(json.dumps(_rounded({'conv': describe(conv), 'count': conv['count'],
                               **{s: conv.get(s) for s in ('reid_jax', 'xla_default',
                                                           'torch_nchw')}}, 2)),
          file=sys.stderr, flush=True)
  side_names = list(sides) + (['torch_nchw', 'torch_channels_last'] if torch_version else [])
  result = {
      'command': ' '.join(['bench/conv_layers.py'] + (sys.argv[1:] if argv is None
                                                      else list(argv))),
      'model': {'depth': args.depth, 'width': args.width, 'size': [args.height, args.width_px],
                'batch': args.batch, 'last_stride': args.last_stride},
      'machine': {'processor': platform.processor() or platform.machine(),
                  'cpu_count': os.cpu_count(), 'jax': jax.__version__,
                  'backend': jax.default_backend(), 'torch': torch_version,
                  'torch_threads': _torch_threads() if torch_version else None},
      'compiler_options': sides['reid_jax'],
      'layers': [{'conv': describe(c), 'count': c['count'], 'reads_images': c['first'],
                  **{s: c.get(s) for s in side_names}} for c in layers],
      'step_ms': {s: step_ms(layers, s) for s in side_names},
  }
  text = json.dumps(_rounded(result), indent=1)
  print(text)
  if args.out:
    tmp = args.out + '.tmp'
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, args.out)
  return result


if __name__ == '__main__':
  main()
