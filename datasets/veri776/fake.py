"""A fake VeRi-776 folder: the real layout and file-name pattern, a few dozen tiny images."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

# (vehicle id, camera 1-20) per image.
TRAIN = [(1, 1), (1, 12), (4, 20), (4, 3), (4, 3), (37, 9), (37, 10)]
QUERY = [(2, 5), (11, 17)]
GALLERY = [(2, 6), (2, 7), (2, 5), (11, 18), (11, 20), (11, 1)]


def _names(entries, folder):
  return [f'{folder}/{vid:04d}_c{cam:03d}_{16450 + 25 * i:08d}_{i % 2}.jpg'
          for i, (vid, cam) in enumerate(entries)]


def write_fake(manual_dir: str | os.PathLike) -> str:
  """Writes ``manual_dir/VeRi/{image_train,image_query,image_test}`` plus the name_*.txt lists;
  returns ``manual_dir``."""
  root = os.path.join(manual_dir, 'VeRi')
  for entries, folder, seed0 in ((TRAIN, 'image_train', 0), (QUERY, 'image_query', 100),
                                 (GALLERY, 'image_test', 200)):
    names = _names(entries, folder)
    _fake.write_files(root, names, seed0=seed0)
  with open(os.path.join(root, 'name_train.txt'), 'w') as f:
    f.write('\n'.join(n.split('/')[1] for n in _names(TRAIN, 'image_train')) + '\n')
  return os.fspath(manual_dir)
