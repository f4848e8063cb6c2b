"""GPU benchmark suite: one command, one JSON, a summary table (docs/benchmarks.md, "GPU suite").

  python bench/gpu_suite.py --out=gpu_suite.json          # on the GPU machine (~8 min, H200)
  python bench/gpu_suite.py --cpu_smoke --out=/tmp/s.json  # tiny, on CPU (tests/test_gpu_suite.py)

What runs, each part in its own fresh process (so its first call, compile included, and its peak
device memory are its own), most important first, within ``--budget_s`` (a part that would start
after the budget is recorded as skipped; a running one is stopped at the budget):

* Evaluation from features, reid_jax against a torch reference on the same device
  (bench/torch_eval.py: torch matmul distances, argsort-based CMC / mAP / mINP): Market-size
  (3,368 x 15,913, D = 2048) and MSMT17-size (11,659 x 82,161) ``reid_jax.evaluation.evaluate``,
  first call and warm; Market re-ranking (k1/k2/lambda = 20/6/0.3) from the three Euclidean
  distance matrices against the classic algorithm written in torch; BPBreID's part distance at
  Occluded-Duke size (2,210 x 17,661, P = 9, D = 512, random bool visibility) through
  ``evaluate`` against ``torch_part_distance`` ranked by ``torch_evaluate``. Results must agree.
* The train step at 256x128 for every method in bench/train.py's ``MODELS`` (BoT, APNet): the
  real reid_jax step (``reid_jax.train.make_train_step``) against the same step in PyTorch
  (bench/train.py's ``TorchSide``: AMP fp16 + GradScaler and channels_last on CUDA for the
  bfloat16 rows, fp32 channels_last for the float32 rows), same weights (converted), same
  batches. Batch 64, then the largest batch that fits: estimated from XLA's ``memory_analysis``
  of the batch-64 step (temporaries scale with the batch) against the device's ``bytes_limit``,
  rounded down to a multiple of 16; on an out-of-memory error, 3/4 of it once. Within a part the
  two sides run one after the other (torch first, its cache emptied, then jax with
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false``), each with warm-up steps excluded and up to
  ``--steps`` timed steps (fewer once they add up to ``--time_cap_s``).
* Peak device memory of every part and side (jax ``memory_stats()['peak_bytes_in_use']``, torch
  ``max_memory_allocated``).

Imports: numpy, jax, flax, optax, orbax, torch and this repository only; never ml_collections,
clu, grain or TFDS (absent on the GPU machine; tests/test_gpu_suite.py runs the smoke run with
them blocked). Configs come from ``bench/method_configs.json``, a frozen copy of
``configs/<method>.py``'s ``get_config()`` (regenerate with ``--write_configs``; a test checks it
is current).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS_JSON = os.path.join(ROOT, 'bench', 'method_configs.json')
GIB = 2.0**30
DTYPES = ('bfloat16', 'float32')
EVAL_PARTS = ('market', 'msmt', 'rerank', 'parts')
SMOKE = dict(size=(64, 32), batch=8, max_batch=16, depth=18, width=8, num_classes=16,
             eval_size='small', dim=256)
FULL = dict(size=(256, 128), batch=64, depth=None, width=None, num_classes=751, dim=2048)


# ------------------------------------------------------------------------------- configs
class Config(dict):
  """The frozen method config: a dict with attribute access (the subset of ``ConfigDict`` the
  model builders, losses, optimizer and train step use: ``c.x``, ``c['x']``, ``c.get``,
  ``c.update``, ``c.to_dict``)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def to_config(x):
  if isinstance(x, dict):
    return Config({k: to_config(v) for k, v in x.items()})
  if isinstance(x, list):
    return tuple(to_config(v) for v in x)
  return x


def freeze_configs() -> dict:
  """``get_config()`` of every bench/train.py model, as JSON-ready dicts (needs ml_collections)."""
  from bench import train as bench_train
  out = {}
  for name in bench_train.MODELS:
    config, _ = bench_train.load_config(name)
    if config is not None:
      out[name] = json.loads(json.dumps(config.to_dict()))
  return out


def load_config(name: str) -> Config:
  with open(CONFIGS_JSON) as f:
    frozen = json.load(f)
  if name not in frozen:
    raise SystemExit(f'{name!r} is not in {CONFIGS_JSON}; run bench/gpu_suite.py --write_configs')
  return to_config(frozen[name])


# ------------------------------------------------------------------------------- estimates
def max_batch_estimate(memory_analysis: dict, bytes_limit: float, batch: int, k: int,
                       num_classes: int, fill: float = 0.9, multiple: int = 16) -> int | None:
  """Largest batch whose step should fit: the step's temporaries grow linearly with the batch
  (activations and their gradients), its arguments (state + batch) barely; a ``fill`` share of
  ``bytes_limit`` is allowed. Rounded down to a multiple of ``multiple`` (and of K), at most
  ``num_classes`` identities. None when there is nothing to go on."""
  if not memory_analysis or not bytes_limit:
    return None
  per_image = memory_analysis.get('temp_size_gib', 0.0) * GIB / batch
  ma = memory_analysis
  fixed = (ma.get('argument_size_gib', 0.0) + ma.get('output_size_gib', 0.0)
           - ma.get('alias_size_gib', 0.0)) * GIB
  if per_image <= 0:
    return None
  step = max(multiple, k)
  est = int((fill * bytes_limit - fixed) / per_image) // step * step
  return max(min(est, num_classes * k // step * step), step)


# ------------------------------------------------------------------------------- workers
def _is_oom(err: BaseException) -> bool:
  text = f'{type(err).__name__} {err}'
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower() or 'OutOfMemory' in text


def _torch_device(jax_platform: str) -> str:
  return 'cuda' if jax_platform == 'gpu' else 'cpu'


def train_worker(spec: dict) -> dict:
  """``spec['runs']``: (model, dtype, batch) train-step comparisons, one after the other."""
  return {'runs': [train_one(dict(spec, model=m, dtype=d, batch=b)) for m, d, b in spec['runs']]}


def train_one(spec: dict) -> dict:
  """One (model, dtype, batch) train-step comparison, torch side first then jax."""
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax
  import numpy as np
  import torch

  from bench import train as bt
  from tests.torch_reference import numpy_state_dict
  sizes = SMOKE if spec['smoke'] else FULL
  config = load_config(spec['model'])
  h, w = sizes['size']
  batch, k = spec['batch'], config.input.k
  config.seed = 0
  config.input.size = (h, w)
  config.input.p = batch // k
  config.model.dtype = spec['dtype']
  for key in ('depth', 'width'):
    if sizes[key]:
      config.model[key] = sizes[key]
  num_classes = sizes['num_classes']
  out: dict[str, Any] = {'model': spec['model'], 'dtype': spec['dtype'], 'batch': batch,
                         'size': [h, w], 'depth': config.model.depth, 'width': config.model.width}
  model_spec = bt.MODELS[spec['model']]
  batches = bt.model_batches(model_spec, config, 2, batch // k, k, h, w, num_classes, seed=0)
  platform_ = jax.devices()[0].platform
  device = _torch_device(platform_)
  amp, channels_last = bt.torch_settings(device, spec['dtype'])
  torch.manual_seed(0)
  model = model_spec.torch_builder(config, num_classes)
  # A copy: on CPU ``.numpy()`` shares the tensors that the torch steps below update in place.
  state_dict = {k: np.array(v) for k, v in numpy_state_dict(model).items()}
  try:
    t = time.perf_counter()
    side = bt.make_torch_side(model_spec, config, model, batches, device, amp, channels_last,
                              batch // k, k)
    del model
    bt.torch_warm_up(side, spec['warmup'], 0.0)
    times = bt.timed_steps(side, spec['steps'], spec['time_cap_s'])
    out['torch'] = bt.side_result(side, times, batch)
    out['torch']['setup_total_s'] = time.perf_counter() - t
    del side
  except Exception as err:  # noqa: BLE001 (reported, the jax side still runs)
    out['torch'] = {'oom': _is_oom(err), 'error': f'{type(err).__name__}: {str(err)[:500]}'}
  if device == 'cuda':
    torch.cuda.empty_cache()
  try:
    t = time.perf_counter()
    side = bt.JaxSide(config, num_classes, batches, torch_state_dict=state_dict)
    bt.jax_warm_up(side, spec['warmup'])
    times = bt.timed_steps(side, spec['steps'], spec['time_cap_s'])
    out['jax'] = bt.side_result(side, times, batch)
    out['jax']['setup_total_s'] = time.perf_counter() - t
  except Exception as err:  # noqa: BLE001
    out['jax'] = {'oom': _is_oom(err), 'error': f'{type(err).__name__}: {str(err)[:500]}'}
  if 'images_per_s' in out['jax'] and 'images_per_s' in out['torch']:
    out['ratio_jax_over_torch'] = out['jax']['images_per_s'] / out['torch']['images_per_s']
    out['first_loss_abs_diff'] = abs(out['jax']['first_loss'] - out['torch']['first_loss'])
  return out


def _timed(fn, sync=None):
  t = time.perf_counter()
  r = fn()
  if sync:
    sync()
  return r, time.perf_counter() - t


def eval_worker(spec: dict) -> dict:
  """Evaluation parts (``spec['parts']``), reid_jax then the torch reference on one device."""
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax
  import numpy as np
  import torch

  from bench import synthetic
  from bench.torch_eval import torch_evaluate, torch_part_distance, torch_rerank
  from reid_jax import evaluation as ev
  from reid_jax.evaluation.distance import pairwise_distance
  sizes = SMOKE if spec['smoke'] else FULL
  device = _torch_device(jax.devices()[0].platform)
  sync = torch.cuda.synchronize if device == 'cuda' else None
  torch.zeros(1, device=device).sum().item()  # device context up before any timing
  out = {}
  for part in spec['parts']:
    size = sizes.get('eval_size') or {'msmt': 'msmt', 'parts': 'occluded_duke'}.get(part, 'market')
    qp, gp, qc, gc = synthetic.labels(size, 0)
    r: dict[str, Any] = {'size': size, 'num_query': len(qp), 'num_gallery': len(gp),
                         'dim': sizes['dim']}
    if part == 'parts':
      r.update(parts=9, dim=64 if spec['smoke'] else 512)
      qf, gf = synthetic.part_features(qp, gp, 9, r['dim'], noise=3.0, seed=0)
    else:
      qf, gf = synthetic.features(qp, gp, sizes['dim'], noise=3.0, seed=0)
    repeats = 1 if part == 'msmt' else 3
    if part in ('market', 'msmt', 'parts'):
      parts = part == 'parts'

      def run_jax():
        return ev.evaluate(qf, gf, qp, gp, qc, gc, metric='euclidean' if parts else 'sqeuclidean')

      def run_torch():
        d = torch_part_distance(qf, gf, device=device) if parts else None
        return torch_evaluate(qf, gf, qp, gp, qc, gc, device=device, distmat=d)
      got, r['jax_first_s'] = _timed(run_jax)
      r['jax_warm_s'] = float(np.median([_timed(run_jax)[1] for _ in range(repeats)]))
      want, r['torch_first_s'] = _timed(run_torch, sync)
      r['torch_warm_s'] = float(np.median([_timed(run_torch, sync)[1] for _ in range(repeats)]))
      r['jax'] = {'mAP': float(got['mAP']), 'mINP': float(got['mINP']),
                  'R1': float(np.asarray(got['cmc'])[0])}
      r['torch'] = {'mAP': want['mAP'], 'mINP': want['mINP'], 'R1': want['R1']}
      r['max_abs_diff'] = max(abs(r['jax'][m] - r['torch'][m]) for m in ('mAP', 'mINP', 'R1'))
    else:
      dists = [np.asarray(pairwise_distance(a, b, 'euclidean')) for a, b in
               ((qf, gf), (qf, qf), (gf, gf))]
      got, r['jax_first_s'] = _timed(lambda: np.asarray(ev.re_rank(*dists)))
      r['jax_warm_s'] = _timed(lambda: np.asarray(ev.re_rank(*dists)))[1]
      want, r['torch_first_s'] = _timed(lambda: torch_rerank(*dists, device=device), sync)
      r['torch_warm_s'] = _timed(lambda: torch_rerank(*dists, device=device), sync)[1]
      r['max_abs_diff'] = float(np.abs(got - want).max())
    r['speedup_warm_jax_over_torch'] = r['torch_warm_s'] / r['jax_warm_s']
    out[part] = r
  out['device'] = {'jax': jax.devices()[0].device_kind, 'jax_version': jax.__version__,
                   'torch': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
                   'torch_version': torch.__version__}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['jax_device_peak_gib'] = stats['peak_bytes_in_use'] / GIB
  if device == 'cuda':
    out['torch_device_peak_gib'] = torch.cuda.max_memory_allocated() / GIB
  return out


# ------------------------------------------------------------------------------- driver
def _run_item(item: dict, label: str, remaining: float, t0: float) -> dict:
  if remaining < 5:
    return {'skipped': 'time budget spent'}
  print(f'[gpu_suite {time.perf_counter() - t0:6.1f} s] {label} ...', file=sys.stderr, flush=True)
  return run_worker(item, remaining)


def run_worker(spec: dict, timeout: float) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(spec)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
  t = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    return {'error': f'stopped at the time budget after {time.perf_counter() - t:.0f} s'}
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      res = json.loads(line[len('RESULT '):])
      res['process_s'] = time.perf_counter() - t
      return res
  return {'error': f'worker exited {proc.returncode}: {proc.stderr[-3000:]}'}


def plan(args) -> list[dict]:
  """Parts in priority order (the budget cuts the tail)."""
  smoke = args.cpu_smoke
  base = dict(smoke=smoke, warmup=args.warmup, steps=args.steps, time_cap_s=args.time_cap_s)
  models = args.models.split(',')
  items: list[dict] = []
  if 'eval' in args.parts:
    if smoke:  # one process for all three (start-up dominates at tiny sizes)
      items.append(dict(kind='eval', parts=list(EVAL_PARTS), smoke=True))
    else:
      items += [dict(kind='eval', parts=[p], smoke=False) for p in EVAL_PARTS]
  if 'train' in args.parts:
    dtypes = args.dtypes.split(',')
    combos = [(m, d) for m in models for d in dtypes]
    if smoke:  # each code path once: two models, both dtypes, the max-batch path
      combos = [(models[0], dtypes[-1]), (models[min(1, len(models) - 1)], dtypes[0])]
    if smoke:  # one process (start-up and compiles dominate at tiny sizes), max path included
      runs = [(m, d, SMOKE['batch']) for m, d in combos] + [(*combos[0], SMOKE['max_batch'])]
      items.append(dict(base, kind='train', runs=runs))
    else:
      items += [dict(base, kind='train', runs=[(m, d, 'small')]) for m, d in combos]
      items += [dict(base, kind='train', runs=[(m, d, 'max')]) for m, d in combos]
  return items


def _resolve_batch(model: str, dtype: str, batch, done: list[dict]) -> int | None:
  """'small' -> 64; 'max' -> the estimate from the batch-64 part of the same model and dtype."""
  if batch != 'max':
    return FULL['batch'] if batch == 'small' else batch
  for r in done:
    if (r.get('model'), r.get('dtype'), r.get('batch')) == (model, dtype, FULL['batch']):
      j = r.get('jax', {})
      limit = (j.get('device_memory') or {}).get('bytes_limit_gib', 0) * GIB
      return max_batch_estimate(j.get('memory_analysis'), limit, FULL['batch'], 4,
                                FULL['num_classes'])
  return None


def summary_table(result: dict) -> str:
  rows = ['| part | reid_jax | torch | jax ÷ torch | agreement | jax peak GiB | torch peak GiB |',
          '|---|---|---|---|---|---|---|']
  for part, r in result.get('eval', {}).items():
    if 'jax_warm_s' not in r:
      rows.append(f'| eval {part} | {r.get("error", r.get("skipped", "?"))[:60]} | | | | | |')
      continue
    rows.append(
        f'| eval {part} ({r["num_query"]}×{r["num_gallery"]}) | first {r["jax_first_s"]:.2f} s, '
        f'warm {r["jax_warm_s"]:.2f} s | first {r["torch_first_s"]:.2f} s, warm '
        f'{r["torch_warm_s"]:.2f} s | {r["speedup_warm_jax_over_torch"]:.2f}× (warm) | '
        f'max diff {r["max_abs_diff"]:.1e} | {r.get("jax_device_peak_gib", float("nan")):.2f} | '
        f'{r.get("torch_device_peak_gib", float("nan")):.2f} |')
  for r in result.get('train', []):
    name = f'train {r.get("model")} {r.get("dtype")} batch {r.get("batch")}'
    if 'error' in r or 'skipped' in r:
      rows.append(f'| {name} | {(r.get("error") or r.get("skipped"))[:60]} | | | | | |')
      continue

    def cell(side):
      s = r.get(side, {})
      if 'images_per_s' not in s:
        return 'OOM' if s.get('oom') else str(s.get('error', '?'))[:40]
      return f'{s["images_per_s"]:.1f} img/s'

    def peak(side):
      m = (r.get(side) or {}).get('device_memory') or {}
      v = m.get('peak_bytes_in_use_gib', m.get('max_memory_allocated_gib'))
      return f'{v:.2f}' if v is not None else '–'
    ratio = r.get('ratio_jax_over_torch')
    rows.append(f'| {name} | {cell("jax")} | {cell("torch")} | '
                f'{"–" if ratio is None else f"{ratio:.2f}×"} | first-loss diff '
                f'{r.get("first_loss_abs_diff", float("nan")):.1e} | {peak("jax")} | '
                f'{peak("torch")} |')
  return '\n'.join(rows)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--out', default='gpu_suite.json', help='the JSON report')
  ap.add_argument('--cpu_smoke', action='store_true',
                  help='tiny sizes on CPU (ResNet-18 width 8, 64x32, batch 8; 300 x 1500 eval)')
  ap.add_argument('--budget_s', type=float, default=450.0, help='wall budget for all parts')
  ap.add_argument('--parts', default='eval,train', help='eval,train or one of them')
  ap.add_argument('--models', default='baseline,apnet,mpn',
                  help='bench/train.py MODELS names (the smoke run takes the first two)')
  ap.add_argument('--dtypes', default='bfloat16,float32')
  ap.add_argument('--steps', type=int, default=20, help='timed steps per side (at most)')
  ap.add_argument('--warmup', type=int, default=3)
  ap.add_argument('--time_cap_s', type=float, default=6.0,
                  help='stop timing a side once its timed steps add up to this (min 3 steps)')
  ap.add_argument('--worker', help=argparse.SUPPRESS)
  ap.add_argument('--write_configs', action='store_true',
                  help=f'regenerate {os.path.relpath(CONFIGS_JSON, ROOT)} from configs/ and exit')
  args = ap.parse_args(argv)
  if args.cpu_smoke:
    args.steps, args.warmup, args.time_cap_s = 2, 1, None
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.worker:
    spec = json.loads(args.worker)
    res = train_worker(spec) if spec['kind'] == 'train' else eval_worker(spec)
    print('RESULT ' + json.dumps(res, default=str))
    return res
  if args.write_configs:
    with open(CONFIGS_JSON, 'w') as f:
      json.dump(freeze_configs(), f, indent=1, sort_keys=True)
      f.write('\n')
    print(f'wrote {CONFIGS_JSON}')
    return {}
  t0 = time.perf_counter()
  result: dict[str, Any] = {
      'command': ' '.join(['bench/gpu_suite.py'] + list(sys.argv[1:] if argv is None else argv)),
      'cpu_smoke': args.cpu_smoke, 'budget_s': args.budget_s,
      'host': {'python': platform.python_version(), 'machine': platform.machine(),
               'cpu_count': os.cpu_count()},
      'eval': {}, 'train': []}
  for item in plan(args):
    remaining = args.budget_s - (time.perf_counter() - t0)
    if item['kind'] == 'eval':
      res = _run_item(item, f'eval {item["parts"]}', remaining, t0)
      if 'device' in res:
        result['device'] = res['device']
      for part in item['parts']:
        result['eval'][part] = dict(res.get(part, res))
        for key in ('jax_device_peak_gib', 'torch_device_peak_gib'):
          if key in res and len(item['parts']) == 1:
            result['eval'][part][key] = res[key]
      continue
    runs = [(m, d, _resolve_batch(m, d, b, result['train'])) for m, d, b in item['runs']]
    label = f'train {runs}'
    if any(b is None for _, _, b in runs):
      out = [{'skipped': 'no batch-64 memory analysis to size the largest batch from'}]
    else:
      res = _run_item(dict(item, runs=runs), label, remaining, t0)
      out = res.get('runs') or [res]
      oom = len(runs) == 1 and any((out[0].get(s) or {}).get('oom') for s in ('jax', 'torch'))
      if oom and not args.cpu_smoke:
        m, d, b = runs[0]
        remaining = args.budget_s - (time.perf_counter() - t0)
        if b * 3 // 4 // 16 * 16 >= 16:
          retry = _run_item(dict(item, runs=[(m, d, b * 3 // 4 // 16 * 16)]), label + ' (3/4)',
                            remaining, t0)
          out = [dict((retry.get('runs') or [retry])[0], first_try=out[0])]
    for (m, d, b), r in zip(runs, out * len(runs) if len(out) == 1 else out):
      result['train'].append(dict({'model': m, 'dtype': d, 'batch': b}, **r))
  result['wall_s'] = time.perf_counter() - t0
  table = summary_table(result)
  result['summary_table'] = table
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1, default=str)
  print(table)
  print(f'wall {result["wall_s"]:.0f} s; JSON: {args.out}')
  return result


if __name__ == '__main__':
  main()
