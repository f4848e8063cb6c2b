"""A fake Occluded_REID folder: per-pid sub-folders of ``<pid>_<nn>.tif``."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

PIDS = (1, 2, 17)
PER_PID = 2  # 5 in the real data


def write_fake(manual_dir: str | os.PathLike) -> str:
  """Writes ``manual_dir/Occluded_REID/{occluded_body_images,whole_body_images}/<pid>/...``."""
  root = os.path.join(manual_dir, 'Occluded_REID')
  for k, folder in enumerate(('occluded_body_images', 'whole_body_images')):
    # The same <pid>_<nn> names in both folders: the camid convention must not drop true matches.
    names = [f'{folder}/{pid:03d}/{pid:03d}_{n + 1:02d}.tif'
             for pid in PIDS for n in range(PER_PID)]
    _fake.write_files(root, names, seed0=100 * k)
  return os.fspath(manual_dir)
