"""Per-image files from a folder that mirrors the image tree: human-parsing label fields
(BPBreID) and texture images (SAN), attached to the records by ``prepare --parsing_dir`` /
``--texture_dir`` (docs/datasets.md, "Per-image attachments").

One lookup serves both (``MirroredFiles``). For an image with relative path ``<dir>/<name>`` (as
stored in the record's ``filename``), the candidate file names of the kind (``parsing_names``,
``texture_names``) are looked for, in order, in

1. ``ROOT/<dir>``, the same relative folder;
2. instead of 1, when the builder renames ``<dir>``'s first folder and ``ROOT`` holds the renamed
   one: the renamed folder (the official CUHK03 texture pack: ``images_labeled`` ->
   ``texture_cuhk03_labeled``, next to ``images_labeled`` itself);
3. the folder of 1 or 2 without its last folder, when it has two or more: BPBreID's label folders
   for Occluded-REID and P-DukeMTMC-reID drop the per-identity sub-folder (VlSomers/bpbreid
   ``occluded_reid.py``, ``p_dukemtmc_reid.py``: ``infer_masks_path``);
4. anywhere under ``ROOT`` by file name alone, when none of the folders of 1-3 exists (a flat
   folder, or ``ROOT`` pointing inside the mirrored tree) and exactly one file has that name;
   several is an error naming them. When a mirrored folder exists, a file missing there is
   missing: a same-named file elsewhere (Occluded-REID uses the same names for its query and
   gallery images) is never taken instead.

Label files (BPBreID, Somers et al., WACV 2023): ``np.save``'d float arrays ``(36, Hm, Wm)`` in
[0, 1], any ``Hm x Wm``: the 36 OpenPifPaf confidence fields filtered by a Mask R-CNN person
mask. Stored as ``uint8 [Hm, Wm, 36] = round(255 * v)`` with zlib (``quantize_fields``).
Textures (SAN, Jin et al., AAAI 2020): RGB images of any size, resized to ``size x size``.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image as PILImage

NUM_FIELDS = 36
FIELD_TOLERANCE = 1e-3  # values this far outside [0, 1] are rounding, clipped; further is an error
TEXTURE_SUFFIXES = ('.jpg', '.png', '.jpeg', '.bmp')
MISSING_TEXTURE = ('error', 'skip')


class AttachmentError(ValueError):
  """A label or texture file is missing, ambiguous or malformed (the message names it)."""


def parsing_names(basename: str) -> list[str]:
  """Label file names for image ``basename``, in the order tried: ``<name>.confidence_fields.npy``
  (the loaders' ``masks_suffix``, e.g. ``0001_c2_f0046182.jpg.confidence_fields.npy``),
  ``<name>.npy`` (what BPBreID's ``scripts/get_labels.py`` writes) and ``<stem>.npy`` (the
  ``'.npy'`` suffix that its Market, Duke, P-Duke and Occluded-REID loaders append to the stem)."""
  stem = os.path.splitext(basename)[0]
  return [f'{basename}.confidence_fields.npy', f'{basename}.npy', f'{stem}.npy']


def texture_names(basename: str) -> list[str]:
  """Texture file names for image ``basename``: the same name, then the stem with each of
  ``TEXTURE_SUFFIXES`` (SAN-PG writes JPEG; CUHK03 images are PNG)."""
  stem = os.path.splitext(basename)[0]
  names = [basename] + [stem + s for s in TEXTURE_SUFFIXES]
  return list(dict.fromkeys(names))


class MirroredFiles:
  """Finds the file of kind ``what`` for each image under ``root`` (module docstring)."""

  def __init__(self, root: str | os.PathLike, what: str, flag: str,
               names: Callable[[str], Sequence[str]], renames: Mapping[str, str] | None = None):
    self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    self.what, self.flag, self._names = what, flag, names
    self._renames = dict(renames or {})
    self._by_name: dict[str, list[str]] | None = None
    if not os.path.isdir(self.root):
      raise AttachmentError(f'{flag}={root}: not a folder.')

  def _index(self) -> dict[str, list[str]]:
    if self._by_name is None:
      self._by_name = {}
      for dirpath, _, files in os.walk(self.root):
        for f in files:
          self._by_name.setdefault(f, []).append(os.path.join(dirpath, f))
    return self._by_name

  def folders(self, filename: str) -> list[str]:
    """Candidate folders (relative to ``root``) for the image ``filename`` (rules 1-3)."""
    parts = filename.split('/')[:-1]
    if parts and parts[0] in self._renames and os.path.isdir(
        os.path.join(self.root, self._renames[parts[0]])):
      # Only the renamed tree: ROOT may also hold the images themselves (CUHK03's root).
      parts = [self._renames[parts[0]]] + parts[1:]
    out = ['/'.join(parts)]
    if len(parts) >= 2:
      out.append('/'.join(parts[:-1]))
    return out

  def find(self, filename: str) -> str | None:
    """The file for image ``filename`` (relative, '/'-separated), or None when there is none.

    Raises:
      AttachmentError: when only the name lookup matches, and several files have that name.
    """
    names = self._names(filename.split('/')[-1])
    folders = self.folders(filename)
    for folder in folders:
      for name in names:
        path = os.path.join(self.root, folder, name)
        if os.path.isfile(path):
          return path
    if any(f and os.path.isdir(os.path.join(self.root, f)) for f in folders):
      return None  # the tree is mirrored here and the file is not in it
    index = self._index()
    for name in names:
      hits = index.get(name, [])
      if len(hits) == 1:
        return hits[0]
      if len(hits) > 1:
        raise AttachmentError(
            f'{self.flag}: the {self.what} of image {filename} is ambiguous: no '
            f'{" or ".join(names[:2])} in the mirrored folder(s) '
            f'{", ".join(self.folders(filename))}, and {len(hits)} files named {name} elsewhere '
            f'under {self.root}: {", ".join(sorted(hits)[:3])}.')
    return None

  def missing_message(self, missing: Sequence[str]) -> str:
    """An error text for images without a file (the first few named, with where they were
    looked for)."""
    first = missing[0]
    where = ', '.join(os.path.join(self.root, f, self._names(first.split('/')[-1])[0])
                      for f in self.folders(first))
    more = f' and {len(missing) - 1} more ({", ".join(missing[1:4])}, ...)' if len(missing) > 1 \
        else ''
    return (f'{self.flag}: no {self.what} for image {first}{more}: looked for '
            f'{" / ".join(self._names(first.split("/")[-1]))} in {where} (and, where no such '
            f'folder exists, by name anywhere under {self.root}).')


def check_fields_header(path: str) -> tuple[int, int]:
  """``(Hm, Wm)`` of a label file, read from its ``.npy`` header only.

  Raises:
    AttachmentError: naming the file, when it is not a ``(36, Hm, Wm)`` float ``.npy`` array.
  """
  try:
    array = np.load(path, mmap_mode='r', allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise AttachmentError(f'{path}: not a readable .npy array ({type(e).__name__}: {e}).') from e
  return _check_shape(path, array)


def _check_shape(path: str, array: np.ndarray) -> tuple[int, int]:
  if (not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[0] != NUM_FIELDS
      or 0 in array.shape or array.dtype.kind not in 'fiu'):
    raise AttachmentError(
        f'{path}: label array has shape {getattr(array, "shape", "?")} dtype '
        f'{getattr(array, "dtype", "?")}; expected float ({NUM_FIELDS}, Hm, Wm): the '
        f'{NUM_FIELDS} PifPaf confidence fields of BPBreID\'s label files.')
  return int(array.shape[1]), int(array.shape[2])


def quantize_fields(fields: np.ndarray) -> np.ndarray:
  """``(36, Hm, Wm)`` floats in [0, 1] -> ``uint8 [Hm, Wm, 36] = round(255 * v)``.

  Rounding is monotone, so the order of two values never flips (values closer than 1/255 may
  become equal); and ``v < 0.5`` exactly when ``round(255 v) / 255 < 0.5`` (127 vs 128), so
  BPBreID's background threshold gives the same pixels.
  """
  q = np.rint(np.clip(np.asarray(fields, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
  return np.ascontiguousarray(q.transpose(1, 2, 0))


def load_fields(path: str) -> np.ndarray:
  """Reads, checks and quantises a label file: ``uint8 [Hm, Wm, 36]``.

  Raises:
    AttachmentError: naming the file, for a wrong shape or dtype, non-finite values or values
      outside [0, 1] (beyond ``FIELD_TOLERANCE``).
  """
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise AttachmentError(f'{path}: not a readable .npy array ({type(e).__name__}: {e}).') from e
  _check_shape(path, array)
  array = array.astype(np.float64)
  if not np.isfinite(array).all():
    raise AttachmentError(f'{path}: label array has non-finite values; expected [0, 1].')
  lo, hi = float(array.min()), float(array.max())
  if lo < -FIELD_TOLERANCE or hi > 1 + FIELD_TOLERANCE:
    raise AttachmentError(f'{path}: label values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] '
                          '(PifPaf confidences times a 0/1 person mask).')
  return quantize_fields(array)


def load_texture(path: str, size: int | None) -> np.ndarray:
  """A texture image as ``uint8 [size, size, 3]`` (PIL bilinear resize; no resize when ``size``
  is None or the image already has that size).

  Raises:
    AttachmentError: naming the file when it cannot be decoded.
  """
  try:
    with PILImage.open(path) as img:
      img.load()
      rgb = img.convert('RGB')
  except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as e:
    raise AttachmentError(f'{path}: cannot decode texture image ({type(e).__name__}: {e}).') from e
  if size and rgb.size != (size, size):
    rgb = rgb.resize((size, size), PILImage.BILINEAR)
  return np.asarray(rgb)
