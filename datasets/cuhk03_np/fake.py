"""A fake CUHK03 raw folder: ``cuhk03_release/cuhk-03.mat`` (HDF5, MATLAB v7.3 layout) and the two
``cuhk03_new_protocol_config_*.mat`` files (MATLAB v5), or ``images_*/`` PNG folders instead of the
HDF5 file."""

from __future__ import annotations

import os

import h5py
import numpy as np
from scipy import io as sio

from reid_jax_datasets import _fake
from reid_jax_datasets.cuhk03_np.cuhk03_np import image_name

# Ids per camera pair (843, 440, 77, 58, 49 in the real data) and filled cells per id and view.
IDS_PER_PAIR = (3, 2, 1, 1, 1)
TRAIN_IDS = 4  # the first 4 global ids train, the other 4 test


def _cells(subset: str, campair: int, pid: int) -> list[int]:
  """Filled cells (0-9) of an id: 2 or 3 per view; 'detected' misses one more cell for some ids."""
  n = 2 + (campair + pid) % 2
  cells = list(range(n)) + list(range(5, 5 + n))
  if subset == 'detected' and pid == 0:
    cells.remove(1)
  return cells


def images(subset: str) -> dict[str, tuple[int, np.ndarray]]:
  """{image name: (global 1-based label, uint8 (H, W, 3) image)} of the fake ``subset``."""
  out, label = {}, 0
  for campair, n_ids in enumerate(IDS_PER_PAIR):
    for pid in range(n_ids):
      label += 1
      for cell in _cells(subset, campair, pid):
        seed = 1000 * (subset == 'detected') + 100 * campair + 10 * pid + cell
        out[image_name(campair, pid, cell)] = (label, _fake.image_array(seed))
  return out


def _write_hdf5(path: str) -> None:
  """Writes the MATLAB v7.3 layout: /<subset> (1x5 refs) -> (10 x n_ids refs) -> (3 x W x H)."""
  with h5py.File(path, 'w') as f:
    refs = f.create_group('#refs#')
    empty = refs.create_dataset('empty', data=np.zeros(2, np.uint64))
    empty.attrs['MATLAB_empty'] = np.uint8(1)
    for subset in ('labeled', 'detected'):
      imgs = images(subset)
      pair_refs = []
      for campair, n_ids in enumerate(IDS_PER_PAIR):
        cells = np.full((10, n_ids), empty.ref, dtype=h5py.ref_dtype)
        for pid in range(n_ids):
          for cell in range(10):
            name = image_name(campair, pid, cell)
            if name in imgs:
              ds = refs.create_dataset(f'{subset}_{name}', data=imgs[name][1].T)
              cells[cell, pid] = ds.ref
        pair_refs.append(refs.create_dataset(f'{subset}_pair{campair}', data=cells).ref)
      f.create_dataset(subset, data=np.array([pair_refs], dtype=h5py.ref_dtype))
    # The real file also has the 20 classic test sets; unused by the new protocol.
    f.create_dataset('testsets', data=np.zeros((1, 20), np.uint64))


def _write_protocol(path: str, subset: str) -> None:
  """New-protocol config: ids 1..TRAIN_IDS train; each test id gives one query per view and the
  rest of its images to the gallery. All indices 1-based, as in the real files."""
  imgs = images(subset)
  names = sorted(imgs)
  labels = np.array([imgs[n][0] for n in names])
  views = np.array([int(n.split('_')[2]) for n in names])
  train, query, gallery, seen = [], [], [], set()
  for i, n in enumerate(names):
    if labels[i] <= TRAIN_IDS:
      train.append(i + 1)
    elif (labels[i], views[i]) not in seen:
      seen.add((labels[i], views[i]))
      query.append(i + 1)
    else:
      gallery.append(i + 1)
  filelist = np.empty((len(names), 1), dtype=object)
  for i, n in enumerate(names):
    filelist[i, 0] = n
  col = lambda a: np.asarray(a, dtype=np.float64).reshape(-1, 1)  # MATLAB stores doubles
  sio.savemat(path, {'filelist': filelist, 'labels': col(labels), 'camId': col(views),
                     'train_idx': col(train), 'query_idx': col(query),
                     'gallery_idx': col(gallery)})


def write_fake(manual_dir: str | os.PathLike, layout: str = 'mat') -> str:
  """Writes ``manual_dir/cuhk03/`` with the protocol files and the images (``layout`` 'mat':
  ``cuhk03_release/cuhk-03.mat``; 'folder': ``images_{labeled,detected}/*.png``)."""
  root = os.path.join(manual_dir, 'cuhk03')
  os.makedirs(root, exist_ok=True)
  if layout == 'mat':
    os.makedirs(os.path.join(root, 'cuhk03_release'), exist_ok=True)
    _write_hdf5(os.path.join(root, 'cuhk03_release', 'cuhk-03.mat'))
  elif layout == 'folder':
    for subset in ('labeled', 'detected'):
      for name, (_, array) in images(subset).items():
        path = os.path.join(root, f'images_{subset}', name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        from PIL import Image  # pylint: disable=import-outside-toplevel
        Image.fromarray(array).save(path)
  else:
    raise ValueError(f'layout={layout!r}; expected "mat" or "folder".')
  for subset in ('labeled', 'detected'):
    _write_protocol(os.path.join(root, f'cuhk03_new_protocol_config_{subset}.mat'), subset)
  return os.fspath(manual_dir)
