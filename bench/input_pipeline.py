"""Training input throughput: images/s per host core at 256x128 with the BoT augmentations.

Reads ``synthetic_reid/demo`` (128x64 PNGs, the size of Market-1501 crops) through
``reid_jax.data.train_iterator`` with the BoT recipe (resize 256x128 bilinear, flip 0.5, Pad(10)
+ RandomCrop, ImageNet normalisation, random erasing 0.5), P=16 x K=4. Two measurements:
  * one read thread (``threads=1``, no worker processes): the cost of one core's worth of work;
  * the default thread pool on all cores of this host.
``cores_for_target`` is how many such cores keep one accelerator fed at ``--target`` images/s
(default 1000), from the one-thread rate. Prints JSON.

  PYTHONPATH=. python bench/input_pipeline.py [--data_dir=DIR] [--batches=30] [--target=1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time


def _rate(config_input, data_dir, batches, warmup=3):
  from reid_jax import data
  it = data.train_iterator(config_input, seed=0, data_dir=data_dir)
  try:
    for _ in range(warmup):
      next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
      n += next(it)['image'].shape[0]
    return n / (time.perf_counter() - t0)
  finally:
    it.close()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--batches', type=int, default=30)
  parser.add_argument('--target', type=float, default=1000.0)
  args = parser.parse_args()

  from reid_jax import config_lib
  from reid_jax_datasets.synthetic_reid import SyntheticReid

  data_dir = args.data_dir or tempfile.mkdtemp(prefix='synthetic_reid_')
  SyntheticReid(config='demo', data_dir=data_dir, file_format='array_record').download_and_prepare()

  c = config_lib.input_config()  # BoT recipe defaults: 256x128, flip, pad 10 + crop, erasing
  c.dataset = 'synthetic_reid/demo'
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()

  c.threads = 1
  one = _rate(c, data_dir, args.batches)
  c.threads = config_lib.input_config().threads
  pool = _rate(c, data_dir, args.batches)
  print(json.dumps(dict(
      bench='input_pipeline', dataset=c.dataset, size=list(c.size), batch=c.p * c.k,
      augment=dict(interpolation=c.interpolation, flip_prob=c.flip_prob, crop=c.crop, pad=c.pad,
                   erasing_prob=c.erasing_prob),
      images_per_s_one_thread=round(one, 1),
      images_per_s_all_cores=round(pool, 1), host_cores=cores, threads=c.threads,
      images_per_s_per_core=round(one, 1),
      target_images_per_s=args.target,
      cores_for_target=math.ceil(args.target / one),
  )))


if __name__ == '__main__':
  main()
