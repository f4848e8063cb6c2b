"""Untrained-network floor on ``synthetic_reid``: R1/mAP of a randomly initialised baseline.

Embeds query and gallery with ``reid_jax.models.embed`` (BNNeck feature, eval mode) of a random
ResNet baseline, L2-normalises, and scores with a small NumPy Market-style evaluation (drop
same-pid-same-camera gallery items per query, skip queries without a match, CMC top-1 and
non-interpolated AP; junk pid -1 is left out by the loader). Also scores raw pixels
(downsampled, normalised) as a second floor. Prints JSON.

  PYTHONPATH=. python bench/synthetic_untrained.py [--config=demo] [--data_dir=DIR] [--seeds=3]

Builds the dataset into a temporary data_dir when ``--data_dir`` does not hold it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def market_eval(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> tuple[float, float]:
  """Rank-1 and mAP (fractions) of a [Q, G] distance matrix, Market protocol."""
  r1, aps = [], []
  for i in range(dist.shape[0]):
    order = np.argsort(dist[i], kind='stable')
    keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
    match = (g_pids[order] == q_pids[i])[keep]
    if not match.any():
      continue
    r1.append(float(match[0]))
    hits = np.cumsum(match)
    ranks = np.flatnonzero(match) + 1
    aps.append(float(np.mean(hits[match] / ranks)))
  return float(np.mean(r1)), float(np.mean(aps))


def _features(config_input, split, data_dir, fn):
  from reid_jax import data
  feats, pids, cams = [], [], []
  for batch in data.eval_batches(config_input, split, batch_size=128, data_dir=data_dir):
    v = batch['valid']
    feats.append(np.asarray(fn(batch['image']))[v])
    pids.append(batch['pid'][v])
    cams.append(batch['camid'][v])
  f = np.concatenate(feats).astype(np.float64)
  f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
  return f, np.concatenate(pids), np.concatenate(cams)


def _score(config_input, data_dir, fn):
  qf, qp, qc = _features(config_input, 'query', data_dir, fn)
  gf, gp, gc = _features(config_input, 'gallery', data_dir, fn)
  dist = 2 - 2 * qf @ gf.T  # squared Euclidean between unit vectors
  return market_eval(dist, qp, gp, qc, gc)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='demo')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--depth', type=int, default=18)
  parser.add_argument('--width', type=int, default=16)
  args = parser.parse_args()

  from reid_jax import config_lib
  from reid_jax import models
  from reid_jax_datasets.synthetic_reid import SyntheticReid

  name = f'synthetic_reid/{args.config}'
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='synthetic_reid_')
  builder = SyntheticReid(config=args.config, data_dir=data_dir, file_format='array_record')
  t0 = time.time()
  built = not builder.is_prepared()
  builder.download_and_prepare()
  build_s = time.time() - t0
  spec = builder.builder_config.spec

  c = config_lib.input_config()
  c.dataset, c.size = name, (spec.height, spec.width)
  result = dict(dataset=name, image_size=[spec.height, spec.width],
                splits={s: builder.info.splits[s].num_examples for s in ('train', 'query',
                                                                         'gallery')},
                build_seconds=round(build_s, 1) if built else None)

  # Raw pixels, 32x16 per image, as the simplest possible feature.
  def pixels(images):
    n, h, w, _ = images.shape
    return images.reshape(n, 32, h // 32, 16, w // 16, 3).mean((2, 4)).reshape(n, -1)
  r1, mp = _score(c, data_dir, pixels)
  result['raw_pixels'] = dict(r1=round(100 * r1, 1), mAP=round(100 * mp, 1))

  runs = []
  for seed in range(args.seeds):
    mc = config_lib.model_config('baseline')
    mc.depth, mc.width, mc.stem_relu = args.depth, args.width, False
    model = models.build_model(mc, num_classes=spec.num_train_ids, seed=seed)
    r1, mp = _score(c, data_dir, lambda x, m=model: models.embed(m, x))
    runs.append((r1, mp))
  runs = np.array(runs) * 100
  result['untrained_baseline'] = dict(
      depth=args.depth, width=args.width, seeds=args.seeds,
      r1_mean=round(float(runs[:, 0].mean()), 1), r1_std=round(float(runs[:, 0].std()), 1),
      mAP_mean=round(float(runs[:, 1].mean()), 1), mAP_std=round(float(runs[:, 1].std()), 1))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
