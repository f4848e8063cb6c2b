"""Training loop: exact resume after SIGKILL, clean exit on SIGTERM (preemption), and the main job
on the tiny synthetic dataset. Each run is a real ``python -m reid_jax.main`` process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from reid_jax import prepare
from tests.tolerances import assert_close_scaled, resnet_forward_terms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_SETTINGS = '''
def tiny(c, dataset):
  c.input.dataset = dataset
  c.input.data_dir = {data_dir!r}
  c.input.size = (64, 32)
  c.input.pad = 4
  c.input.p, c.input.k = 4, 4
  c.input.threads = 2
  c.num_epochs = 4
  c.optim.update(warmup_epochs=1, milestones=(3,))
  c.eval.at_end = False
  c.log_every_steps = 1
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 2
  return c
'''

TINY_CONFIG = TINY_SETTINGS + '''
from reid_jax import config_lib
import importlib.util, os
spec = importlib.util.spec_from_file_location('baseline', os.path.join({root!r}, 'configs', 'baseline.py'))
baseline = importlib.util.module_from_spec(spec); spec.loader.exec_module(baseline)

def get_config(arg=None):
  c = tiny(baseline.get_config('synthetic'), 'synthetic_reid/tiny')
  c.model.update(depth=18, width=8)
  return c
'''


def tiny_config_file(root, datasets=('synthetic_reid/tiny',)) -> str:
  """Builds ``datasets`` under ``root/tfds`` and writes ``root/tiny_config.py`` (TINY_CONFIG)."""
  data_dir = str(root / 'tfds')
  for name in datasets:
    prepare.prepare(name, data_dir=data_dir)
  cfg = root / 'tiny_config.py'
  cfg.write_text(TINY_CONFIG.format(root=ROOT, data_dir=data_dir))
  return str(cfg)


def load_config(cfg, **overrides):
  """``get_config()`` of a config file, with ``{'section.field': value}`` overrides."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('tiny_cfg', cfg)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def reference_metrics(model, config):
  """R1/mAP/mINP in percent of ``model`` on ``config.input.dataset``, and the query features:
  ``models.embed`` on the eval loader's images, L2-normalised, squared Euclidean distances,
  scored by the NumPy reference of the Market protocol (tests/eval_reference.py)."""
  from reid_jax import data, models
  from tests import eval_reference
  feats = {}
  for split in ('query', 'gallery'):
    fs, ps, cs = [], [], []
    for b in data.eval_batches(config.input, split, batch_size=16):
      v = np.asarray(b['valid'])
      fs.append(np.asarray(models.embed(model, b['image']))[v])
      ps.append(np.asarray(b['pid'])[v])
      cs.append(np.asarray(b['camid'])[v])
    f = np.concatenate(fs)
    f /= np.linalg.norm(f, axis=1, keepdims=True)  # config.eval.normalize
    feats[split] = (f, np.concatenate(ps), np.concatenate(cs))
  (qf, qp, qc), (gf, gp, gc) = feats['query'], feats['gallery']
  dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)  # sqeuclidean
  ref = eval_reference.ref_rank(dist, qp, gp, qc, gc, max_rank=50)
  return ({'R1': 100 * ref['cmc'][0], 'mAP': 100 * ref['mAP_step'], 'mINP': 100 * ref['mINP']},
          (qf, qp))


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
  global CACHE_DIR
  root = tmp_path_factory.mktemp('train')
  CACHE_DIR = str(root / 'jax_cache')
  return root, tiny_config_file(root)


def main_cmd(cfg, workdir, *extra):
  return [sys.executable, '-m', 'reid_jax.main', f'--config={cfg}', f'--workdir={workdir}',
          *extra]


CACHE_DIR = None


def env():
  # A persistent compilation cache shared by the runs: the step compiles once per test session.
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=1',
              JAX_COMPILATION_CACHE_DIR=CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')


def run(cfg, workdir, *extra):
  proc = subprocess.run(main_cmd(cfg, workdir, *extra), cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def final_state(workdir):
  """The newest checkpoint's model variables, as NumPy, keyed by path."""
  import orbax.checkpoint as ocp
  directory = os.path.join(workdir, 'checkpoints')
  handlers = {'model': ocp.StandardCheckpointHandler(), 'train': ocp.StandardCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as mngr:
    step = mngr.latest_step()
    # Targets on this process's first device: the run that wrote it may have had other devices.
    metadata = mngr.item_metadata(step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = lambda m: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), m)
    restored = mngr.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(target(metadata['model'])),
        train=ocp.args.StandardRestore(target(metadata['train']))))
  leaves = jax.tree_util.tree_leaves_with_path({'model': restored.model, 'train': restored.train})
  return step, {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def wait_for_step(workdir, proc, min_step, timeout=300):
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, 'training ended before it could be interrupted'
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(line)['step'] for line in f if line.strip()]
      if steps and steps[-1] >= min_step:
        return steps[-1]
    time.sleep(0.05)
  raise TimeoutError(f'no step {min_step} within {timeout}s')


@pytest.fixture(scope='module')
def reference(tiny_setup):
  root, cfg = tiny_setup
  workdir = str(root / 'reference')
  run(cfg, workdir)
  return final_state(workdir)


def assert_same_state(a, b):
  (step_a, state_a), (step_b, state_b) = a, b
  assert step_a == step_b
  assert sorted(state_a) == sorted(state_b)
  for key in state_a:
    np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


def test_preempted_then_killed_then_resumed_is_bitwise_identical(tiny_setup, reference):
  """SIGTERM (preemption) saves at the next step and exits 0; the same command resumes; a SIGKILL
  at a random later step loses only unsaved steps; the final state equals the uninterrupted run's
  bit for bit."""
  root, cfg = tiny_setup
  workdir = str(root / 'interrupted')
  total = reference[0]
  proc = subprocess.Popen(main_cmd(cfg, workdir), cwd=ROOT, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = wait_for_step(workdir, proc, 3)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-2000:]
  preempted_step, _ = final_state(workdir)
  assert seen <= preempted_step < total  # saved at the step after the signal, before the end
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))

  kill_at = int(np.random.default_rng().integers(preempted_step + 2, total - 1))
  kill_then_resume(cfg, workdir, kill_at)
  assert_same_state(final_state(workdir), reference)


def kill_then_resume(cfg, workdir, kill_at):
  """Runs training in ``workdir``, SIGKILLs it once step ``kill_at`` is logged, checks it had
  not finished, and runs the same command again to the end."""
  proc = subprocess.Popen(main_cmd(cfg, workdir), cwd=ROOT, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    wait_for_step(workdir, proc, kill_at)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))
  run(cfg, workdir)


@pytest.mark.parametrize('item', ['model', 'train'])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_setup, reference, item):
  """A damaged newest step (e.g. a torn write on a broken disk) is moved aside with a warning;
  training resumes from the step before it and still ends bit-identical to the reference. With
  the ``train`` item damaged, the ``data`` item may already have been restored into the live
  iterator when the step fails: the iterator must be put back."""
  root, cfg = tiny_setup
  workdir = root / f'corrupt_{item}'
  shutil.copytree(root / 'reference', workdir)
  ckpt = workdir / 'checkpoints'
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert len(steps) == 2  # keep=2
  for f in (ckpt / str(steps[-1]) / item).rglob('*'):
    if f.is_file():
      f.write_bytes(b'garbage')
  os.remove(workdir / 'metrics.json')
  proc = run(cfg, str(workdir))
  assert 'unreadable' in proc.stderr
  assert any(p.name.startswith(f'corrupt-{steps[-1]}-') for p in ckpt.iterdir())
  assert_same_state(final_state(str(workdir)), reference)


def test_eval_mode_and_extract_cli_on_the_trained_checkpoint(tiny_setup, reference):
  """``--mode=eval`` on a training checkpoint gives the metrics of an independent computation:
  features from ``models.embed`` on the eval loader's images, scored by the NumPy reference of the
  Market protocol (tests/eval_reference.py). ``reid_jax.extract`` writes the same query features."""
  from reid_jax import checkpoint
  root, cfg = tiny_setup
  out = root / 'evaluated'
  ckpt = str(root / 'reference' / 'checkpoints')
  run(cfg, str(out), '--mode=eval', f'--checkpoint={ckpt}', '--config.eval.pictures=2')
  with open(out / 'eval_metrics.json') as f:
    got = json.load(f)
  assert (out / 'pictures' / 'cmc.png').exists() and (out / 'pictures' / 'rank_query0001.png').exists()

  config = load_config(cfg)
  ref, (qf, qp) = reference_metrics(checkpoint.restore_model(config.model, ckpt), config)
  for k in ('R1', 'mAP', 'mINP'):
    np.testing.assert_allclose(got[k], ref[k], atol=1e-3, err_msg=k)

  npz = root / 'query_feats.npz'
  proc = subprocess.run([sys.executable, '-m', 'reid_jax.extract', f'--config={cfg}',
                         f'--checkpoint={ckpt}', '--dataset=synthetic_reid/tiny', '--split=query',
                         f'--out={npz}'], cwd=ROOT, env=env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = np.load(npz)
  # Normalised by config; another process and batching: the network's forward error on unit
  # features. A wrong checkpoint, split or normalisation moves them by >= 1e-2.
  assert_close_scaled(saved['feats'], qf, scale=1.0,
                      terms=resnet_forward_terms(config.model.depth, config.model.width))
  np.testing.assert_array_equal(saved['pids'], qp)


DROP_TINY_CONFIG = TINY_SETTINGS + '''
import os, runpy

def get_config(arg=None):
  c = runpy.run_path(os.path.join({root!r}, 'configs', 'drop.py'))['get_config']('synthetic')
  c = tiny(c, 'synthetic_reid/tiny_occluded')
  c.model.update(width=8, parsing_channels=8, dim=16, position_rows=16)
  c.loss.bank_size = 40         # 2.5 batches: the ring wraps at a different slot each time
  c.num_epochs = 3
  c.optim.milestones = (2,)
  return c
'''


def test_drop_with_its_memory_bank_resumes_bitwise_after_sigkill(tiny_setup):
  """DROP's parts memory bank is training state: a run killed at a random step and resumed with
  the same command ends bit-identical to an uninterrupted run, bank included (its ring pointer,
  labels, visibilities and embeddings are in the checkpoint and not at their initial values)."""
  root, _ = tiny_setup
  data_dir = str(root / 'tfds')
  prepare.prepare('synthetic_reid/tiny_occluded', data_dir=data_dir)
  cfg = root / 'drop_tiny_config.py'
  cfg.write_text(DROP_TINY_CONFIG.format(root=ROOT, data_dir=data_dir))
  cfg = str(cfg)
  run(cfg, str(root / 'drop_reference'))
  reference = final_state(str(root / 'drop_reference'))
  total, state = reference
  bank = {k.rsplit("'", 2)[-2]: v for k, v in state.items() if "['extra']" in k}
  assert sorted(bank) == ['features', 'labels', 'pointer', 'visible']
  assert int(bank['pointer']) == (16 * total) % 40 and np.all(bank['labels'] >= 0)
  assert np.any(bank['visible']) and np.any(bank['features'])

  workdir = str(root / 'drop_interrupted')
  kill_then_resume(cfg, workdir, int(np.random.default_rng().integers(3, total - 1)))
  assert_same_state(final_state(workdir), reference)


def _config(name, arg):
  from reid_jax.feature_extractor import load_config as load_config_path
  return load_config_path(f"{os.path.join(ROOT, 'configs', name)}:{arg}")


def test_demo_presets_bot_longer_others_share_30_epochs():
  """The README demo (BoT) trains 48 epochs with the schedule stretched (milestones at 2/3 and
  13/15, three evaluations); ``:synthetic,epochs=30`` is the budget the other demos share."""
  bot = _config('baseline.py', 'synthetic')
  assert (bot.num_epochs, tuple(bot.optim.milestones), bot.eval.every_epochs) == (48, (32, 42), 16)
  assert bot.optim.warmup_epochs == 2 and bot.input.dataset == 'synthetic_reid/demo'
  bot30 = _config('baseline.py', 'synthetic,epochs=30')
  assert (bot30.num_epochs, tuple(bot30.optim.milestones), bot30.eval.every_epochs) == (30, (20, 26), 10)
  for name in ('apnet.py', 'bpbreid.py'):
    other = _config(name, 'synthetic')
    assert (other.num_epochs, tuple(other.optim.milestones), other.eval.every_epochs,
            other.optim.warmup_epochs, other.optim.lr) == (
                bot30.num_epochs, tuple(bot30.optim.milestones), bot30.eval.every_epochs,
                bot30.optim.warmup_epochs, bot30.optim.lr), name
  with pytest.raises(ValueError, match='epochs= sets the synthetic demo'):
    _config('baseline.py', 'market1501,epochs=30')
  with pytest.raises(ValueError, match='num_epochs must be >= 3'):
    _config('baseline.py', 'synthetic,epochs=2')
