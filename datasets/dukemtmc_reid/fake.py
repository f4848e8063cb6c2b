"""A fake DukeMTMC-reID folder: the real layout and file-name pattern, a few dozen tiny images."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

# (pid, camera 1-8) per image.
TRAIN = [(1, 1), (1, 2), (3, 7), (3, 8), (12, 2), (12, 4), (12, 5)]
QUERY = [(5, 1), (5, 6), (9, 3)]
GALLERY = [(5, 2), (5, 8), (9, 1), (9, 3), (4000, 2), (4001, 7), (4001, 8)]  # 4000+: distractors


def names(entries, folder):
  """Duke-style names ``<pid>_c<cam>_f<frame>.jpg`` under ``folder``."""
  return [f'{folder}/{pid:04d}_c{cam}_f{46182 + 37 * i:07d}.jpg'
          for i, (pid, cam) in enumerate(entries)]


def write_fake(manual_dir: str | os.PathLike, wrapper: str = 'DukeMTMC-reID',
               train=TRAIN, query=QUERY, gallery=GALLERY) -> str:
  """Writes ``manual_dir/<wrapper>/{bounding_box_train,query,bounding_box_test}``; returns
  ``manual_dir``."""
  root = os.path.join(manual_dir, wrapper)
  _fake.write_files(root, names(train, 'bounding_box_train'), seed0=0)
  _fake.write_files(root, names(query, 'query'), seed0=100)
  _fake.write_files(root, names(gallery, 'bounding_box_test'), seed0=200)
  return os.fspath(manual_dir)
