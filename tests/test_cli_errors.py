"""User mistakes at the command lines end in one ``error: ...`` message and exit status 2, with no
Python traceback (reid_jax/cli.py); ``REID_JAX_TRACEBACK=1`` keeps the traceback. Every case fails
before any training starts."""

import os
import subprocess
import sys

import pytest

from reid_jax import checkpoint, models
from tests.test_train import ROOT, load_config, tiny_config_file


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli')
  return root, tiny_config_file(root)


def cli(module, *args, traceback=False):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  env.pop('REID_JAX_TRACEBACK', None)
  if traceback:
    env['REID_JAX_TRACEBACK'] = '1'
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_user_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  text = proc.stderr[proc.stderr.index('error: '):]
  for fragment in fragments:
    assert fragment in text, (fragment, text)


def test_flag_and_config_mistakes(setup, tmp_path):
  root, cfg = setup
  work = f'--workdir={tmp_path / "w"}'
  assert_user_error(cli('reid_jax.main', '--config=configs/baseline.py:foo=1', work),
                    "--config=configs/baseline.py:foo=1", "unknown key 'foo'",
                    "known: ['center', 'dataset', 'epochs']")
  assert_user_error(cli('reid_jax.main', f'--config={cfg}', '--config.input.sizes=1', work),
                    "--config.input.sizes=1: the config has no field 'sizes'; did you mean 'size'?")
  assert_user_error(cli('reid_jax.main', f'--config={cfg}', '--config.optim.zzz=1', work),
                    "--config.optim.zzz=1: the config has no field 'zzz'")
  assert_user_error(cli('reid_jax.main', f'--config={cfg}', '--config.seed=abc', work),
                    '--config.seed=abc', "invalid literal for int()")
  assert_user_error(cli('reid_jax.main', '--config=configs/nosuch.py', work),
                    '--config', 'nosuch.py', 'No such file')
  assert_user_error(cli('reid_jax.main', f'--config={cfg}', '--mode=eval', work),
                    '--mode=eval needs --checkpoint=DIR')
  assert_user_error(cli('reid_jax.prepare', 'synthetic_reid/nosuch'),
                    "unknown config 'synthetic_reid/nosuch'", 'synthetic_reid/tiny')


def test_dataset_mistakes(setup, tmp_path):
  _, cfg = setup
  work = f'--workdir={tmp_path / "w"}'
  assert_user_error(cli('reid_jax.main', f'--config={cfg}', '--config.input.dataset=market', work),
                    "unknown dataset 'market'", 'market1501')
  assert_user_error(cli('reid_jax.main', f'--config={cfg}', '--config.input.dataset=market1501',
                        f'--config.input.data_dir={tmp_path / "empty"}', work),
                    "dataset 'market1501' is not prepared",
                    'python -m reid_jax.prepare market1501 --manual_dir=')


def test_checkpoint_mistakes(setup, tmp_path):
  _, cfg = setup
  work = f'--workdir={tmp_path / "w"}'
  main = ('reid_jax.main', f'--config={cfg}', '--mode=eval', work)
  assert_user_error(cli(*main, f'--checkpoint={tmp_path / "nope"}'),
                    f"checkpoint directory '{tmp_path / 'nope'}' does not exist")
  (tmp_path / 'empty').mkdir()
  assert_user_error(cli(*main, f'--checkpoint={tmp_path / "empty"}'),
                    f"no reid_jax checkpoint under '{tmp_path / 'empty'}'")
  assert_user_error(cli('reid_jax.extract', f'--config={cfg}', f'--checkpoint={tmp_path / "empty"}',
                        f'--images={tmp_path}', f'--out={tmp_path / "f.npz"}'),
                    'no reid_jax checkpoint')
  # A BoT checkpoint evaluated with the APNet config: refused naming both methods.
  config = load_config(cfg)
  checkpoint.save_model(models.build_model(config.model, 10), tmp_path / 'bot',
                        num_classes=10, model_config=config.model)
  data_dir = config.input.data_dir
  assert_user_error(cli('reid_jax.main', '--config=configs/apnet.py:synthetic', '--mode=eval',
                        work, f'--checkpoint={tmp_path / "bot"}',
                        '--config.input.dataset=synthetic_reid/tiny',
                        f'--config.input.data_dir={data_dir}'),
                    "holds a 'baseline' model", "config.model.name='apnet'", 'configs/baseline.py')


def test_pytorch_file_mistakes_and_the_traceback_switch(tmp_path):
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a checkpoint')
  args = ('reid_jax.convert', '--config=configs/baseline.py', f'--torch_checkpoint={junk}',
          f'--out={tmp_path / "out"}')
  assert_user_error(cli(*args), f'{junk}: not a PyTorch checkpoint')
  import torch
  listed = tmp_path / 'list.pth'
  torch.save([torch.zeros(3)], listed)
  assert_user_error(cli(args[0], args[1], f'--torch_checkpoint={listed}', args[3]),
                    f'{listed}: expected a state_dict', 'got list')
  debug = cli(*args, traceback=True)
  assert debug.returncode != 0 and 'Traceback (most recent call last)' in debug.stderr
  assert not (tmp_path / 'out').exists()
