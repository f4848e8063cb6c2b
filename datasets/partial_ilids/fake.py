"""A fake Partial_iLIDS folder: ``<pid>.jpg`` in partial_body_images/ and whole_body_images/."""

from __future__ import annotations

import os

from reid_jax_datasets import _fake

PIDS = (1, 2, 5, 119)


def write_fake(manual_dir: str | os.PathLike, fastreid_layout: bool = False) -> str:
  """Writes ``manual_dir/Partial_iLIDS/{partial_body_images,whole_body_images}/<pid>.jpg``, or
  with ``fastreid_layout`` ``manual_dir/PartialiLIDS/{query,gallery}/<pid>.jpg``."""
  if fastreid_layout:
    root, folders = os.path.join(manual_dir, 'PartialiLIDS'), ('query', 'gallery')
  else:
    root = os.path.join(manual_dir, 'Partial_iLIDS')
    folders = ('partial_body_images', 'whole_body_images')
  for k, folder in enumerate(folders):
    _fake.write_files(root, [f'{folder}/{pid:03d}.jpg' for pid in PIDS], seed0=100 * k)
  return os.fspath(manual_dir)
