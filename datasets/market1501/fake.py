"""A fake Market-1501 folder: the real layout and file-name pattern, a few dozen tiny images."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

# (pid, camera 1-6) per image. Train pids are sparse, so labels differ from pids.
TRAIN = [(2, 1), (2, 3), (7, 2), (7, 5), (7, 6), (10, 1), (10, 4), (1499, 2), (1499, 3)]
QUERY = [(1, 1), (1, 2), (5, 3), (6, 4)]
GALLERY = [(1, 3), (1, 4), (1, 1), (5, 1), (5, 6), (6, 2), (8, 1), (8, 5),
           (0, 1), (0, 3), (0, 6),  # distractors (pid 0000)
           (-1, 2), (-1, 5)]  # junk
DISTRACTORS_500K = [(0, 1), (0, 2), (0, 4)]


def _names(entries, folder):
  return [f'{folder}/{pid:04d}_c{cam}s{1 + i % 3}_{100 * i + 51:06d}_0{i % 4}.jpg'
          if pid >= 0 else f'{folder}/-1_c{cam}s1_{100 * i + 51:06d}_0{i % 4}.jpg'
          for i, (pid, cam) in enumerate(entries)]


def write_fake(manual_dir: str | os.PathLike, distractors_500k: bool = False) -> str:
  """Writes ``manual_dir/Market-1501-v15.09.15/...`` and returns ``manual_dir``.

  Also writes the non-image ``Thumbs.db`` files found in the real archive.
  """
  root = os.path.join(manual_dir, 'Market-1501-v15.09.15')
  _fake.write_files(root, _names(TRAIN, 'bounding_box_train'), seed0=0)
  _fake.write_files(root, _names(QUERY, 'query'), seed0=100)
  _fake.write_files(root, _names(GALLERY, 'bounding_box_test'), seed0=200)
  if distractors_500k:
    _fake.write_files(root, _names(DISTRACTORS_500K, 'images'), seed0=300)
  for folder in ('bounding_box_train', 'bounding_box_test'):
    with open(os.path.join(root, folder, 'Thumbs.db'), 'wb') as f:
      f.write(b'\xd0\xcf\x11\xe0 not an image')
  os.makedirs(os.path.join(root, 'gt_bbox'), exist_ok=True)
  return os.fspath(manual_dir)
