"""MSMT17 (Wei et al., CVPR 2018): 4,101 ids, 126,441 boxes, 15 cameras.

The splits come from the list files, whose lines read ``0000/0000_000_01_0303morning_0015_0.jpg 0``
(path relative to the train or test folder, pid). camid = third '_' field of the file name - 1.
Train and test pids both start at 0; they are kept as listed (the pid spaces are disjoint sets of
people that happen to share numbers, which never matters because train and test are never mixed).

Configs: ``v1``/``v2`` train on ``list_train.txt`` only, the conventional ReID setting (torchreid,
fast-reid); ``v1_trainval``/``v2_trainval`` train on ``list_train.txt + list_val.txt``, as TransReID
and CLIP-ReID always do. V2 is the release with blurred faces (``mask_train_v2/``,
``mask_test_v2/``).
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath
import tensorflow_datasets as tfds

from reid_jax_datasets import _common


@dataclasses.dataclass(kw_only=True)
class Msmt17Config(tfds.core.BuilderConfig):
  """``release``: 'V1' or 'V2'; ``use_val_in_train``: add list_val.txt to train."""
  release: str = 'V1'
  use_val_in_train: bool = False


_FOLDERS = {'V1': ('train', 'test'), 'V2': ('mask_train_v2', 'mask_test_v2')}
_LISTS = ('list_train.txt', 'list_val.txt', 'list_query.txt', 'list_gallery.txt')

_QUERY = _common.Published(11_659, 3_060)
_GALLERY = _common.Published(82_161, 3_060)
# The published train size (32,621 images) includes list_val; the train-only image count is not in
# our sources, so only its id count (the val ids are train ids) is checked.
_TRAIN_ONLY = _common.Published(None, 1_041)
_TRAINVAL = _common.Published(32_621, 1_041)


class Msmt17(_common.ReidBuilder):
  """MSMT17 person ReID benchmark (manual download, on request)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request MSMT17 from its authors (MSMT17 project page), extract it and point --manual_dir at the
folder holding (or containing) MSMT17_V1/ (train/, test/, list_train.txt, list_val.txt,
list_query.txt, list_gallery.txt) for the v1 configs, or MSMT17_V2/ (mask_train_v2/, mask_test_v2/
and the same list files) for the v2 configs. A folder named MSMT17/ with the V1 layout (the
TransReID convention) is accepted too. Some V2 copies lack the list files: take them from V1.
"""

  BUILDER_CONFIGS = [
      Msmt17Config(name='v1', release='V1', use_val_in_train=False,
                   description='MSMT17_V1, train = list_train.txt (conventional).'),
      Msmt17Config(name='v2', release='V2', use_val_in_train=False,
                   description='MSMT17_V2 (blurred faces), train = list_train.txt.'),
      Msmt17Config(name='v1_trainval', release='V1', use_val_in_train=True,
                   description='MSMT17_V1, train = list_train + list_val (TransReID/CLIP-ReID).'),
      Msmt17Config(name='v2_trainval', release='V2', use_val_in_train=True,
                   description='MSMT17_V2, train = list_train + list_val (TransReID/CLIP-ReID).'),
  ]
  HOMEPAGE = 'https://www.pkuvmc.com/dataset.html'
  NUM_CAMERAS = 15
  PUBLISHED = {
      'v1': {'train': _TRAIN_ONLY, 'query': _QUERY, 'gallery': _GALLERY},
      'v2': {'train': _TRAIN_ONLY, 'query': _QUERY, 'gallery': _GALLERY},
      'v1_trainval': {'train': _TRAINVAL, 'query': _QUERY, 'gallery': _GALLERY},
      'v2_trainval': {'train': _TRAINVAL, 'query': _QUERY, 'gallery': _GALLERY},
  }

  def _list_records(self, manual_dir):
    cfg = self.builder_config
    train_dir, test_dir = _FOLDERS[cfg.release]
    wrappers = (f'MSMT17_{cfg.release}', 'MSMT17')
    root = _common.find_root(self.display_name, manual_dir,
                             [train_dir + '/', test_dir + '/', *_LISTS], wrappers)
    train_lists = ['list_train.txt'] + (['list_val.txt'] if cfg.use_val_in_train else [])
    records = {
        'train': [r for name in train_lists for r in self._read_list(root, name, train_dir)],
        'query': self._read_list(root, 'list_query.txt', test_dir),
        'gallery': self._read_list(root, 'list_gallery.txt', test_dir),
    }
    for split, recs in records.items():
      seen = set()
      for r in recs:
        if r.filename in seen:
          raise ValueError(f'{self.display_name}: {r.filename} is listed twice in the '
                           f'{split} list file(s) {train_lists if split == "train" else ""}.')
        seen.add(r.filename)
    return records

  def _read_list(self, root: epath.Path, list_name: str, folder: str) -> list[_common.Record]:
    """Parses ``root/list_name`` (lines ``<relative path> <pid>``) into records under ``folder``."""
    records = []
    list_path = root / list_name
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
      if not line.strip():
        continue
      where = f'{list_path}:{lineno}'
      parts = line.split()
      try:
        rel, pid = parts[0], int(parts[1])
        camid = int(os.path.basename(rel).split('_')[2]) - 1
        if len(parts) != 2:
          raise ValueError
      except (IndexError, ValueError):
        raise ValueError(f'{where}: expected "<pid>/<pid>_<idx>_<camera>_<...>.jpg <pid>", '
                         f'got {line!r}.') from None
      _common.check_camera(self.name, where, camid, self.NUM_CAMERAS)
      path = root / folder / rel
      if not path.is_file():
        raise _common.LayoutError(f'{self.display_name}: {where} lists {rel}, but '
                                  f'{path} does not exist.')
      records.append(_common.Record(f'{folder}/{rel}', pid, camid, os.fspath(path)))
    return records
