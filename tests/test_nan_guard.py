"""A non-finite loss stops training with a message naming the step and the loss terms; the last
good checkpoint is kept and no checkpoint is written after the non-finite step.

The NaN comes from a method registered by the test's config file (the baseline whose loss turns
NaN from the 5th update on): training code has no switch for it."""

import math
import os
import subprocess
import sys

import numpy as np

from tests.test_train import ROOT, final_state, tiny_config_file

NAN_METHOD = '''
import dataclasses
import jax.numpy as jnp
from reid_jax.models import registry

NAN_FROM = 4  # state step (0-based) of the first non-finite update: loop step 5


def _loss(model, batch, *, extra, config, context):
  base = registry.get_method('baseline')
  objectives, metrics, aux = base.loss(model, batch, extra=extra, config=config, context=context)
  scale = jnp.where(context.step >= NAN_FROM, jnp.nan, 1.0)
  return ({k: v * scale for k, v in objectives.items()},
          dict(metrics, loss=metrics['loss'] * scale), aux)


if 'nan_baseline' not in registry.names():
  registry.register_method(dataclasses.replace(registry.get_method('baseline'),
                                               name='nan_baseline', loss=_loss))
_tiny = get_config


def get_config(arg=None):
  c = _tiny(arg)
  c.model.name = 'nan_baseline'
  c.max_steps = 8
  c.log_every_steps = 100     # no log line before the checkpoint saves: the save checks
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 10
  return c
'''


def test_nan_loss_stops_before_the_next_checkpoint(tmp_path):
  cfg = tmp_path / 'nan_config.py'
  cfg.write_text(open(tiny_config_file(tmp_path)).read() + NAN_METHOD)
  workdir = tmp_path / 'work'
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, '-m', 'reid_jax.main', f'--config={cfg}',
                         f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  error = next(line for line in proc.stderr.splitlines() if line.startswith('error: '))
  assert 'non-finite loss at step 5 ' in error, error
  terms = dict(item.split('=') for item in
               error.split('): ', 1)[1].split('. Training stopped')[0].split(', '))
  assert math.isnan(float(terms['loss']))
  # The other terms were computed from the (still finite) parameters of step 4.
  assert math.isfinite(float(terms['ce'])) and math.isfinite(float(terms['triplet']))
  assert 'the last checkpoint, step 4, holds finite values' in error
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [2, 4]
  step, arrays = final_state(str(workdir))
  assert step == 4
  for key, value in arrays.items():
    if np.issubdtype(value.dtype, np.floating):
      assert np.isfinite(value).all(), key
