"""Helpers for the fake raw folders written by each dataset's ``fake.py`` (used by the tests).

The images are tiny (a few pixels) and their size varies with a per-file seed, so a test can tell
records apart by content as well as by name.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def image_array(seed: int) -> np.ndarray:
  """A small uint8 (H, W, 3) image, H in 8..15 and W in 4..7, determined by ``seed``."""
  rng = np.random.default_rng(seed)
  h, w = 8 + seed % 8, 4 + seed % 4
  return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_image(path: str | os.PathLike, seed: int) -> str:
  """Writes ``image_array(seed)`` to ``path``; the format follows the suffix (.jpg/.png/.tif)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image_array(seed)).save(path)
  return os.fspath(path)


def write_files(root: str | os.PathLike, names: list[str], seed0: int = 0) -> list[str]:
  """Writes one image per relative name under ``root``; returns the absolute paths."""
  return [write_image(os.path.join(root, n), seed0 + i) for i, n in enumerate(names)]
