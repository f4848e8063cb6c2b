"""A fake Partial_REID folder: ``<pid>_<nn>.jpg`` in partial_body_images/ and whole_body_images/."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

PIDS = (1, 4, 60)
PER_PID = 2  # 5 in the real data


def write_fake(manual_dir: str | os.PathLike) -> str:
  """Writes ``manual_dir/Partial_REID/...``; returns ``manual_dir``."""
  root = os.path.join(manual_dir, 'Partial_REID')
  for k, folder in enumerate(('partial_body_images', 'whole_body_images')):
    names = [f'{folder}/{pid:03d}_{n + 1:02d}.jpg' for pid in PIDS for n in range(PER_PID)]
    _fake.write_files(root, names, seed0=100 * k)
  return os.fspath(manual_dir)
