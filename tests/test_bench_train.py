"""Smoke tests of the training benchmarks. ``bench/train.py --quick`` (ResNet-18 width 8, 64x32,
batch 8, 1 warm-up + 2 timed steps per side) in its own process, for BoT, MPN (96x32) and SAN
(its two objectives and four optimizers, 256x256 textures); the JSON has both sides' numbers.

The process gets one CPU device (not the 8 simulated ones of conftest) and XLA flags that cut
compile time (this checks the plumbing, not the speed). ``bench/conv_layers.py --quick``: the
per-convolution times (ResNet-18 width 4, 32x16, batch 2), jax and torch."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('model', ['baseline', 'mpn', 'san'])
def test_bench_train_quick(model, tmp_path):
  # TORCHINDUCTOR_CACHE_DIR: torch's optimizers import torch._dynamo, which would otherwise leave
  # a cache folder in the session's temp dir.
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2',
             TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'),
             XLA_FLAGS='--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')
  t = time.time()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'train.py'), '--quick',
                         f'--model={model}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  elapsed = time.time() - t
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert out['model'] == model and out['batch'] == 8 and out['p'] * out['k'] == 8
  for side in ('jax', 'torch'):
    r = out[side]
    for key in ('images_per_s', 'step_s_median', 'host_rss_added_gib', 'last_loss', 'first_loss'):
      assert r[key] > 0, (side, key, r[key])
    assert len(r['step_s']) == 2
  j = out['jax']
  for key in ('lower_s', 'compile_s', 'first_call_s', 'init_s'):
    assert j[key] > 0, (key, j[key])
  assert j['device_count'] == 1 and j['platform'] == 'cpu'
  assert out['torch']['amp'] == 'none'
  assert out['ratio_jax_over_torch'] > 0
  assert out['host_rss']['peak_gib'] > 0
  # Same losses on both sides: with CE over 16 classes and a random net both start near ln(16) +
  # a triplet term of a few tenths, never wildly apart.
  assert abs(j['first_loss'] - out['torch']['first_loss']) < 3.0
  if model == 'mpn':
    # MPN's first loss (12 CE terms + alignment + triplet) from the same weights and batch: the
    # two sides agree to float32 rounding (later steps drift: this runs XLA unoptimised).
    assert out['size'] == [96, 32]
    assert abs(j['first_loss'] - out['torch']['first_loss']) <= 1e-5 * out['torch']['first_loss']
  if model == 'san':
    # The ReID loss of the first step, same weights and batch (the decoder's texture does not
    # enter it); the main phase's learning rates: AMSGrad live, the warm-up Adam off.
    assert abs(j['first_loss'] - out['torch']['first_loss']) <= 1e-5 * out['torch']['first_loss']
    assert j['learning_rates'] == {'warmup': 0.0, 'main': pytest.approx(8e-4),
                                   'encoder': pytest.approx(1e-5), 'decoder': pytest.approx(1e-5)}
  print(f'bench/train.py --quick --model={model}: {elapsed:.1f} s')


def test_bench_conv_layers_quick(tmp_path):
  """``bench/conv_layers.py --quick``: the convolutions it reads from the ResNet-18 are the
  architecture's 20 (7x7 stem, 16 3x3 in four stages, three 1x1 downsamples), each timed on every
  side, and the step total skips only the stem's input gradient."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')
  out_file = tmp_path / 'conv.json'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'conv_layers.py'), '--quick',
                         f'--out={out_file}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert json.loads(out_file.read_text()) == out
  layers = out['layers']
  kernels = {}
  for layer in layers:
    k = layer['conv'].split(', ')[1].split('/')[0]
    kernels[k] = kernels.get(k, 0) + layer['count']
  assert kernels == {'7x7': 1, '3x3': 16, '1x1': 3}, kernels
  assert [layer['reads_images'] for layer in layers] == [True] + [False] * (len(layers) - 1)
  assert layers[0]['conv'].startswith('2x32x16x3 -> 4, 7x7/2')
  sides = ('reid_jax', 'xla_default', 'torch_nchw', 'torch_channels_last')
  # Every time in the JSON is rounded to 3 decimals: each summed term is off by <= 5e-4 ms.
  terms = sum(layer['count'] * (2 if layer['reads_images'] else 3) for layer in layers)
  for side in sides:
    expected = sum(layer['count'] * (layer[side]['fwd'] + layer[side]['wgrad']
                                     + (0 if layer['reads_images'] else layer[side]['dgrad']))
                   for layer in layers)
    assert out['step_ms'][side] > 0
    assert abs(out['step_ms'][side] - expected) <= 5e-4 * (terms + 1), side
