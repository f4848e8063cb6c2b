"""A fake MSMT17 folder (V1 or V2 layout) with its four list files."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

# (pid, camera 1-15) per image. Train and test pids both start at 0, as in the real lists.
TRAIN = [(0, 1), (0, 2), (1, 7), (1, 15), (3, 4), (3, 4), (3, 9)]
VAL = [(0, 3), (2, 11), (2, 12)]  # pid 2 appears only in val
QUERY = [(0, 1), (1, 5), (4, 14)]
GALLERY = [(0, 2), (0, 6), (1, 5), (1, 10), (4, 13), (4, 14), (5, 3)]


def _entries(items, tag, start):
  # '0000/0000_000_01_0303morning_0015_0.jpg': pid, running index, camera, date+time, frame, box.
  return [(f'{pid:04d}/{pid:04d}_{start + i:03d}_{cam:02d}_0303{tag}_{15 + i:04d}_0.jpg', pid)
          for i, (pid, cam) in enumerate(items)]


def write_fake(manual_dir: str | os.PathLike, release: str = 'V1', with_lists: bool = True) -> str:
  """Writes ``manual_dir/MSMT17_<release>/`` (images + list_*.txt); returns ``manual_dir``."""
  root = os.path.join(manual_dir, f'MSMT17_{release}')
  train_dir, test_dir = {'V1': ('train', 'test'), 'V2': ('mask_train_v2', 'mask_test_v2')}[release]
  lists = {
      'list_train.txt': (train_dir, _entries(TRAIN, 'morning', 0)),
      'list_val.txt': (train_dir, _entries(VAL, 'noon', 100)),
      'list_query.txt': (test_dir, _entries(QUERY, 'afternoon', 0)),
      'list_gallery.txt': (test_dir, _entries(GALLERY, 'morning', 200)),
  }
  for k, (list_name, (folder, entries)) in enumerate(lists.items()):
    _fake.write_files(os.path.join(root, folder), [rel for rel, _ in entries], seed0=100 * k)
    if with_lists:
      with open(os.path.join(root, list_name), 'w') as f:
        f.write(''.join(f'{rel} {pid}\n' for rel, pid in entries))
  return os.fspath(manual_dir)
