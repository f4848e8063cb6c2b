"""A fake Occluded_Duke folder (Duke layout and names under ``Occluded_Duke/``)."""

from __future__ import annotations

import os

from reid_jax_datasets.dukemtmc_reid import fake as duke_fake

TRAIN = [(1, 1), (1, 3), (8, 2), (8, 6), (8, 8), (20, 4), (20, 5)]
QUERY = [(2, 1), (2, 2), (6, 4)]
GALLERY = [(2, 3), (2, 5), (6, 1), (6, 2), (6, 7), (5000, 8)]


def write_fake(manual_dir: str | os.PathLike) -> str:
  """Writes ``manual_dir/Occluded_Duke/...``; returns ``manual_dir``."""
  return duke_fake.write_fake(manual_dir, wrapper='Occluded_Duke', train=TRAIN, query=QUERY,
                              gallery=GALLERY)
