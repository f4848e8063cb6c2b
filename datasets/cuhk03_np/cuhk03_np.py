"""CUHK03 under the new protocol (CUHK03-NP, Zhong et al. CVPR 2017): 767 train / 700 test ids.

Images come from the original ``cuhk-03.mat`` (MATLAB v7.3 = HDF5, read with h5py) or, if that file
is absent, from an ``images_{labeled,detected}/`` folder of PNGs (the layout torchreid's
preprocessing writes). Either way an image is named ``{campair}_{pid:03d}_{view}_{img:02d}.png``:
camera pair 1-5, pid within the pair, view 1-2 (cells 1-5 are view 1, 6-10 view 2), image 1-10.
camid = view - 1. The split comes from ``cuhk03_new_protocol_config_{labeled,detected}.mat``
(MATLAB v5: ``filelist``, ``labels``, ``camId``, ``train_idx``, ``query_idx``, ``gallery_idx``; the
indices are 1-based); pid = ``labels``.

The HDF5 layout of ``cuhk-03.mat``: ``/labeled`` and ``/detected`` are 1x5 arrays of object
references (one per camera pair); each points at a 10 x num_ids array of references (MATLAB stores
arrays transposed); each of those points at a 3 x W x H uint8 image, or at an empty array where the
cell is empty.
"""

from __future__ import annotations

import dataclasses
import os
import threading

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from reid_jax_datasets import _common

MAT_NAME = 'cuhk-03.mat'
MAT_CANDIDATES = ('cuhk03_release/cuhk-03.mat', 'cuhk-03.mat')


@dataclasses.dataclass(kw_only=True)
class Cuhk03NpConfig(tfds.core.BuilderConfig):
  """``subset``: 'labeled' (hand-drawn boxes) or 'detected' (DPM boxes)."""
  subset: str = 'labeled'


def image_name(campair: int, pid: int, cell: int) -> str:
  """Name of cell ``cell`` (0-9) of person ``pid`` in camera pair ``campair`` (both 0-based)."""
  view = 1 if cell < 5 else 2
  return f'{campair + 1}_{pid + 1:03d}_{view}_{cell + 1:02d}.png'


class Cuhk03Mat:
  """Lazy reader of the images in ``cuhk-03.mat``: ``names()`` lists them, ``loader(name)`` reads.

  The file stays open (read-only) for the reader's lifetime; reads are serialised with a lock.
  """

  def __init__(self, path: epath.PathLike, subset: str):
    import h5py  # optional dependency: only CUHK03 needs it
    self.path = os.fspath(path)
    try:
      self._file = h5py.File(self.path, 'r')
    except OSError as e:
      raise _common.LayoutError(f'{self.path}: not an HDF5 (MATLAB v7.3) file: {e}') from e
    if subset not in self._file:
      raise _common.LayoutError(f'{self.path}: no {subset!r} field; found {list(self._file)}.')
    self._lock = threading.Lock()
    self._refs = {}
    f = self._file
    for campair, camp_ref in enumerate(np.asarray(f[subset]).ravel()):
      cells = f[camp_ref]  # (10, num_ids) references
      if cells.ndim != 2 or cells.shape[0] != 10:
        raise _common.LayoutError(f'{self.path}: {subset} camera pair {campair + 1} has shape '
                                  f'{cells.shape}; expected (10, num_ids).')
      cells = np.asarray(cells)
      for pid in range(cells.shape[1]):
        for cell in range(10):
          ref = cells[cell, pid]
          if f[ref].ndim == 3:  # empty cells are stored as 1-D placeholders
            self._refs[image_name(campair, pid, cell)] = ref

  def names(self) -> set[str]:
    return set(self._refs)

  def loader(self, name: str):
    ref = self._refs[name]

    def load() -> np.ndarray:
      with self._lock:
        return np.ascontiguousarray(self._file[ref][()].T)  # (3, W, H) -> (H, W, 3)
    return load


def _mat_strings(cells) -> list[str]:
  """Strings of a MATLAB cell array of strings as loaded by scipy.io.loadmat."""
  return [str(np.asarray(c).ravel()[0]) for c in np.asarray(cells).ravel()]


class Cuhk03Np(_common.ReidBuilder):
  """CUHK03-NP person ReID benchmark (manual download)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request cuhk03_release.zip from the CUHK03 page and extract it (cuhk03_release/cuhk-03.mat). Get
cuhk03_new_protocol_config_labeled.mat and cuhk03_new_protocol_config_detected.mat from
zhunzhong07/person-re-ranking (evaluation/data/CUHK03/) on GitHub. Point --manual_dir at a folder
(or its cuhk03/ sub-folder) holding both .mat configs and cuhk03_release/cuhk-03.mat (or
cuhk-03.mat, or instead of it images_labeled/ and images_detected/ PNG folders named
{campair}_{pid:03d}_{view}_{img:02d}.png).
"""

  BUILDER_CONFIGS = [
      Cuhk03NpConfig(name='labeled', subset='labeled',
                     description='CUHK03-NP, hand-drawn boxes: 767 train / 700 test ids.'),
      Cuhk03NpConfig(name='detected', subset='detected',
                     description='CUHK03-NP, DPM-detected boxes: 767 train / 700 test ids.'),
  ]
  IMAGE_FORMAT = 'png'
  HOMEPAGE = 'https://github.com/zhunzhong07/person-re-ranking'
  # SAN's official CUHK03 texture pack mirrors images_labeled/ as texture_cuhk03_labeled/
  # (microsoft/Semantics-Aligned-Representation-Learning-for-Person-Re-identification
  # torchreid/dataset_loader.py); the detected analogue is assumed.
  TEXTURE_RENAMES = {'images_labeled': 'texture_cuhk03_labeled',
                     'images_detected': 'texture_cuhk03_detected'}
  NUM_CAMERAS = 2
  PUBLISHED = {
      'labeled': {'train': _common.Published(7_368, 767),
                  'query': _common.Published(1_400, 700),
                  'gallery': _common.Published(5_328, 700)},
      'detected': {'train': _common.Published(7_365, 767),
                   'query': _common.Published(1_400, 700),
                   'gallery': _common.Published(5_332, 700)},
  }

  def _list_records(self, manual_dir):
    subset = self.builder_config.subset
    protocol = f'cuhk03_new_protocol_config_{subset}.mat'
    name = self.display_name
    root = _common.find_root(name, manual_dir, [protocol], ('cuhk03',))
    folder = f'images_{subset}'
    mat = next((root / c for c in MAT_CANDIDATES if (root / c).is_file()), None)
    if mat is not None:
      reader = Cuhk03Mat(mat, subset)
      available, load = reader.names(), reader.loader
    elif (root / folder).is_dir():
      available = {p.name for p in _common.list_images(root / folder, ('.png',))}
      load = lambda n: os.fspath(root / folder / n)  # pylint: disable=unnecessary-lambda-assignment
    else:
      raise _common.LayoutError(
          f'{name}: expected {" or ".join(MAT_CANDIDATES)} or {folder}/ under {root}; found: '
          f'{_common.describe_dir(root)}')

    from scipy import io as sio  # pylint: disable=import-outside-toplevel
    proto_path = root / protocol
    try:
      proto = sio.loadmat(os.fspath(proto_path))
      files = _mat_strings(proto['filelist'])
      labels = np.asarray(proto['labels']).ravel().astype(int)
      idx = {s: np.asarray(proto[f'{s}_idx']).ravel().astype(int)
             for s in ('train', 'query', 'gallery')}
    except (KeyError, ValueError, NotImplementedError, TypeError) as e:
      raise _common.LayoutError(
          f'{proto_path}: expected a MATLAB v5 .mat with filelist, labels, camId, train_idx, '
          f'query_idx, gallery_idx ({type(e).__name__}: {e}).') from e
    if len(files) != len(labels):
      raise ValueError(f'{proto_path}: filelist has {len(files)} entries, labels {len(labels)}.')

    records = {}
    for split, ids in idx.items():
      if ids.size and (ids.min() < 1 or ids.max() > len(files)):
        raise ValueError(f'{proto_path}: {split}_idx outside 1..{len(files)} (1-based).')
      recs = []
      for i in ids - 1:
        fname = files[i]
        if fname not in available:
          source = mat if mat is not None else root / folder
          raise _common.LayoutError(
              f'{name}: {proto_path} lists {fname}, which is not in {source}.')
        camid = int(fname.split('_')[2]) - 1
        _common.check_camera(self.name, fname, camid, self.NUM_CAMERAS)
        recs.append(_common.Record(f'{folder}/{fname}', int(labels[i]), camid, load(fname)))
      records[split] = recs
    return records
