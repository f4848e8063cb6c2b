"""A fake P-DukeMTMC-reID folder: train/test, occluded/whole, per-pid sub-folders of Duke names."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

# {folder: [(pid, camera 1-8), ...]}
FOLDERS = {
    'train/occluded_body_images': [(3, 1), (3, 2), (11, 5)],
    'train/whole_body_images': [(3, 4), (11, 6), (11, 7), (40, 2)],
    'test/occluded_body_images': [(5, 1), (8, 3)],
    'test/whole_body_images': [(5, 2), (5, 7), (8, 4), (8, 8)],
}


def names(folder, entries):
  """``<folder>/<pid>/<pid>_c<cam>_f<frame>.jpg``; frames differ per folder, so a name is never in
  two folders (the mirrored label folders drop the per-pid level)."""
  offset = 1000 * list(FOLDERS).index(folder)
  return [f'{folder}/{pid:04d}/{pid:04d}_c{cam}_f{46000 + offset + 37 * i:07d}.jpg'
          for i, (pid, cam) in enumerate(entries)]


def write_fake(manual_dir: str | os.PathLike) -> str:
  """Writes ``manual_dir/P-DukeMTMC-reID/...``; returns ``manual_dir``."""
  root = os.path.join(manual_dir, 'P-DukeMTMC-reID')
  for k, (folder, entries) in enumerate(FOLDERS.items()):
    _fake.write_files(root, names(folder, entries), seed0=100 * k)
  return os.fspath(manual_dir)
