"""bench/gpu_suite.py: the CPU dry run (``--cpu_smoke``) end to end with ml_collections, clu,
grain and TensorFlow(-Datasets) unimportable (as on the GPU machine), the import chain alone,
the frozen method configs, and the largest-batch estimate."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ('ml_collections', 'clu', 'grain', 'tensorflow', 'tensorflow_datasets')
U = 2.0**-24

BLOCKER = textwrap.dedent(f'''
    import sys

    # Absent, as on the GPU machine: ``import x`` raises ModuleNotFoundError and
    # ``importlib.util.find_spec('x')`` returns None (torch._dynamo probes optional packages so).
    for _name in {BLOCKED!r}:
      sys.modules[_name] = None

    class _Blocked:
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
          raise ModuleNotFoundError('blocked for the GPU-suite test: ' + name, name=name)
        return None

    sys.meta_path.insert(0, _Blocked())
''')


def _env(tmp_path):
  """Subprocess env: a sitecustomize that blocks the modules (so every worker process inherits
  the block), one CPU device, XLA flags that cut compile time (plumbing, not speed)."""
  site = tmp_path / 'site'
  site.mkdir(exist_ok=True)
  (site / 'sitecustomize.py').write_text(BLOCKER)
  flags = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  if 'xla_cpu_max_isa' in os.environ.get('XLA_FLAGS', ''):
    flags += ' --xla_cpu_max_isa=AVX2'
  # torch (its optimizers import torch._dynamo) keeps a cache under the temp dir unless told.
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), ROOT]), XLA_FLAGS=flags,
              TF_CPP_MIN_LOG_LEVEL='2', TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'))


def test_suite_import_chain_needs_no_blocked_module(tmp_path):
  code = textwrap.dedent('''
      import importlib, sys
      mods = ['bench.gpu_suite', 'bench.train', 'bench.torch_eval', 'bench.synthetic',
              'reid_jax.train', 'reid_jax.models', 'reid_jax.evaluation', 'reid_jax.optim',
              'reid_jax.losses', 'reid_jax.convert', 'reid_jax.xla_options',
              'tests.torch_reference', 'tests.torch_reference_apnet']
      for m in mods:
        importlib.import_module(m)
      # the block is live: a blocked module really cannot be imported here
      try:
        import ml_collections  # noqa: F401
        raise SystemExit('blocker inactive')
      except ImportError:
        pass
      print('LOADED', sorted(k for k, v in sys.modules.items()
                             if v is not None and k.split('.')[0] in %r))
  ''' % (BLOCKED,))
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=_env(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'LOADED []' in proc.stdout


def test_cpu_smoke_run_writes_json_with_agreeing_results(tmp_path):
  out = tmp_path / 'suite.json'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu_suite.py'),
                         '--cpu_smoke', f'--out={out}'], cwd=ROOT, env=_env(tmp_path),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| eval market' in proc.stdout  # the summary table
  r = json.loads(out.read_text())
  assert r['cpu_smoke'] and r['device']['jax'] and r['device']['torch'] == 'cpu'
  for part in ('market', 'msmt', 'rerank', 'parts'):
    e = r['eval'][part]
    assert 'error' not in e, e
    for key in ('jax_first_s', 'jax_warm_s', 'torch_first_s', 'torch_warm_s'):
      assert e[key] > 0, (part, key)
    nq, ng = e['num_query'], e['num_gallery']
    if part == 'rerank':
      # Jaccard: float32 sums of up to (k1+1)(round(k1/2)+2)k2 = 1512 terms of total <= 1 (both
      # sides, different orders), amplified at most 2x by 1 - t / (2 - t).
      bound = 2 * 2 * 1512 * U
    elif part == 'parts':
      # Part distances: P per-part matmuls and a masked mean in other orders on each side, so a
      # float32 near-tie may swap two adjacent items of one query: <= 1/Q on a metric. A wrong
      # visibility rule or no-common-part value moves mAP by far more at this size.
      bound = 1.0 / nq
    else:
      # mAP / mINP / R1: per-query float32 ratios summed over <= G hits, averaged over Q queries.
      bound = 2 * (nq + ng) * U
    assert e['max_abs_diff'] <= bound, (part, e['max_abs_diff'], bound)
    if part != 'rerank':
      assert 0 < e['jax']['mAP'] < 1
  runs = r['train']
  assert [(t['model'], t['dtype'], t['batch']) for t in runs] == [
      ('baseline', 'float32', 8), ('apnet', 'bfloat16', 8), ('baseline', 'float32', 16)]
  for t in runs:
    for side in ('jax', 'torch'):
      assert t[side].get('images_per_s', 0) > 0, (t['model'], side, t[side])
    assert t['jax']['memory_analysis']['temp_size_gib'] > 0
    assert t['ratio_jax_over_torch'] > 0
    if t['dtype'] == 'float32':
      # Same weights and batch: the first-step losses agree as the float32 parity tests bound
      # features (1e-4 relative), which moves a smooth loss by at most ~1e-3 relative.
      assert t['first_loss_abs_diff'] <= 1e-3 * t['torch']['first_loss'], t


def test_frozen_method_configs_are_current():
  pytest.importorskip('ml_collections')
  sys.path.insert(0, ROOT)
  from bench import gpu_suite
  with open(gpu_suite.CONFIGS_JSON) as f:
    frozen = json.load(f)
  assert frozen == gpu_suite.freeze_configs(), 'run: python bench/gpu_suite.py --write_configs'
  c = gpu_suite.load_config('baseline')
  assert c.model.depth == 50 and c.input.size == (256, 128) and c.get('init_checkpoint') is None
  assert c.mesh == (('data', -1),)


def test_max_batch_estimate():
  sys.path.insert(0, ROOT)
  from bench.gpu_suite import GIB, max_batch_estimate
  ma = {'temp_size_gib': 10.0, 'argument_size_gib': 0.5, 'output_size_gib': 0.5,
        'alias_size_gib': 0.5}
  # 0.9 * 140 GiB - 0.5 GiB fixed = 125.5 GiB at 10/64 GiB per image: 803.2 images -> 800.
  assert max_batch_estimate(ma, 140 * GIB, 64, 4, 751) == 800
  assert max_batch_estimate(ma, 140 * GIB, 64, 4, 100) == 400  # 100 identities x K=4, /16
  assert max_batch_estimate(ma, 1 * GIB, 64, 4, 751) == 16     # never below one step of 16
  assert max_batch_estimate(None, 140 * GIB, 64, 4, 751) is None
  assert max_batch_estimate(ma, 0, 64, 4, 751) is None
