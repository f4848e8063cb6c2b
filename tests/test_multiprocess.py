"""Two processes x 4 CPU devices on loopback (gloo collectives) train like one process with 8
devices on the same global batch: same losses and parameters after a few steps."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from reid_jax import prepare
from tests.test_train import ROOT, TINY_CONFIG, final_state

STEPS = 3


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env(devices, cache):
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def cmd(cfg, workdir, *extra):
  return [sys.executable, '-m', 'reid_jax.main', f'--config={cfg}', f'--workdir={workdir}',
          f'--config.max_steps={STEPS}', '--config.checkpoint.every_steps=1000', *extra]


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f if line.strip()]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('mp')
  data_dir = str(root / 'tfds')
  prepare.prepare('synthetic_reid/tiny', data_dir=data_dir)
  cfg = root / 'cfg.py'
  cfg.write_text(TINY_CONFIG.format(root=ROOT, data_dir=data_dir))
  return root, str(cfg)


def test_two_processes_match_one_process(setup):
  root, cfg = setup
  cache = str(root / 'cache')
  single = str(root / 'single')
  proc = subprocess.run(cmd(cfg, single), cwd=ROOT, env=env(8, cache), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = str(root / 'multi')
  address = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen(
      cmd(cfg, multi, f'--coordinator_address={address}', '--num_processes=2',
          f'--process_id={i}'), cwd=ROOT, env=env(4, cache), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]

  assert len(losses(single)) == len(losses(multi)) == STEPS
  np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)
  (step_s, state_s), (step_m, state_m) = final_state(single), final_state(multi)
  assert step_s == step_m == STEPS
  # Cross-process all-reduces sum in another order; Adam turns that rounding noise into up to
  # ~lr-sized steps where the second moment is ~0. Bound: a tenth of one step (lr 1e-3), and
  # all but a handful of elements equal to 1e-6.
  for key, value in state_s.items():
    np.testing.assert_allclose(state_m[key], value, rtol=1e-4, atol=1e-4, err_msg=key)
  total = sum(v.size for v in state_s.values())
  loose = sum(int(np.sum(~np.isclose(state_m[k], v, rtol=1e-5, atol=1e-6)))
              for k, v in state_s.items())
  assert loose <= total * 1e-4, f'{loose} of {total} values differ by more than 1e-6'
