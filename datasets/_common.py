"""Shared base of the ReID TFDS builders: record format, raw-folder parsing, checks.

Every builder writes the splits ``train``, ``query`` and ``gallery`` (test-only datasets write only
``query`` and ``gallery``) with the features

* ``image``: ``tfds.features.Image(shape=(None, None, 3))`` in the builder's ``IMAGE_FORMAT`` (the
  stored files' bytes are copied as-is when they already are RGB images in that format),
* ``pid``: int32, the original identity (junk ``-1`` kept in the gallery, ``0000`` distractors
  kept as 0),
* ``camid``: int32, 0-based camera index,
* ``label``: int32, contiguous class index ``0..num_train_ids-1`` in sorted-pid order for train,
  ``-1`` in query and gallery,
* ``filename``: Text, path of the source image relative to the raw dataset root,

and the metadata ``num_train_ids``, ``num_cameras`` and ``skipped_corrupt`` (file names of the
images skipped with ``skip_corrupt=True``).

Optional per-image attachments, from folders that mirror the image tree (``_attach``):

* ``parsing_fields`` (``parsing_dir``): ``Tensor(shape=(None, None, 36), uint8, zlib)``, BPBreID's
  36 PifPaf label fields quantised to ``round(255 * v)`` (metadata ``parsing_dir``),
* ``texture`` (``texture_dir``): ``Image(shape=(None, None, 3), png)``, SAN's texture resized to
  ``texture_size`` square, and ``texture_valid`` (bool; False where ``missing_texture='skip'``
  found none and a 1x1 black placeholder is stored; metadata ``num_missing_textures``).

A dataset built with attachments records them in its ``features.json``; reading it back restores
the same features without the build arguments.

A concrete builder only lists its raw records (:meth:`ReidBuilder._list_records`); checking the
layout, decoding every image once, relabelling, comparing with the published statistics and writing
is done here, the same way for every dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import re
import warnings
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

from absl import logging
from etils import epath
import numpy as np
from PIL import Image as PILImage
import tensorflow_datasets as tfds

from reid_jax_datasets import _attach

JUNK_PID = -1
ALL_SPLITS = ('train', 'query', 'gallery')
CHECK_MODES = ('warn', 'strict', 'off')
_PIL_FORMATS = {'jpeg': 'JPEG', 'png': 'PNG'}


class LayoutError(FileNotFoundError):
  """The raw folder (``manual_dir``) misses files or folders the builder expects."""


class CorruptImageError(ValueError):
  """An image file (or array) cannot be decoded into an RGB image."""


class CountMismatchError(ValueError):
  """The raw data differs from the published statistics (``check_counts='strict'``)."""


class CountMismatchWarning(UserWarning):
  """The raw data differs from the published statistics (``check_counts='warn'``)."""


# An image source: a file path (bytes are copied as-is when possible), or a function returning a
# uint8 array of shape (H, W, 3) (CUHK03 keeps its images inside a .mat file).
ImageSource = Union[str, os.PathLike, Callable[[], np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Record:
  """One raw example before relabelling.

  Attributes:
    filename: path relative to the raw dataset root, with ``/`` separators; unique within a split.
    pid: original identity (``-1`` junk, ``0`` distractor).
    camid: 0-based camera index.
    source: where the image comes from (see ``ImageSource``).
  """
  filename: str
  pid: int
  camid: int
  source: ImageSource


@dataclasses.dataclass(frozen=True)
class Published:
  """Published size of one split; ``None`` where no figure is published (not checked).

  ``ids`` counts distinct pids other than junk ``-1`` (so the distractor pid 0 is one id).
  """
  images: int | None
  ids: int | None


def count_ids(records: Sequence[Record]) -> int:
  """Number of distinct pids other than junk ``-1``."""
  return len({r.pid for r in records if r.pid != JUNK_PID})


# ----------------------------------------------------------------------------------------------
# Raw-folder helpers, shared by all builders.


def describe_dir(path: epath.Path, limit: int = 20) -> str:
  """Comma-separated listing of ``path`` (folders end with '/'), for error messages."""
  if not path.exists():
    return '(does not exist)'
  if not path.is_dir():
    return '(not a folder)'
  names = sorted(p.name + ('/' if p.is_dir() else '') for p in path.iterdir())
  if not names:
    return '(empty)'
  more = f', ... ({len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def find_root(
    dataset: str,
    manual_dir: epath.PathLike | None,
    required: Sequence[str],
    wrappers: Sequence[str] = (),
) -> epath.Path:
  """Returns the raw dataset root: ``manual_dir`` itself or ``manual_dir/<wrapper>``.

  Args:
    dataset: dataset name, for messages.
    manual_dir: the folder the user pointed ``--manual_dir`` at.
    required: entries that must exist under the root; names ending in '/' must be folders.
    wrappers: folder names the archive extracts to (e.g. 'Market-1501-v15.09.15'), tried after
      ``manual_dir`` itself.

  Raises:
    LayoutError: naming what was expected where and what was found.
  """
  expected = ', '.join(required)
  if manual_dir is None:
    raise LayoutError(f'{dataset}: needs --manual_dir pointing at a folder with {expected}.')
  manual_dir = epath.Path(manual_dir)
  candidates = [manual_dir] + [manual_dir / w for w in wrappers]
  for root in candidates:
    if all(_entry_ok(root, e) for e in required):
      return root
  where = ' or '.join(str(c) for c in candidates)
  found = '; '.join(f'{c}: {describe_dir(c)}' for c in candidates if c == manual_dir or c.exists())
  raise LayoutError(f'{dataset}: expected {expected} under {where}; found: {found}')


def _entry_ok(root: epath.Path, entry: str) -> bool:
  path = root / entry.rstrip('/')
  return path.is_dir() if entry.endswith('/') else path.is_file()


def list_images(folder: epath.Path, suffixes: Sequence[str], recursive: bool = False
                ) -> list[epath.Path]:
  """Image files under ``folder`` with one of ``suffixes`` (case-insensitive), sorted.

  Other files (e.g. the ``Thumbs.db`` shipped inside Market-1501) are ignored.
  """
  suffixes = tuple(s.lower() for s in suffixes)
  out = []
  for p in folder.iterdir():
    if recursive and p.is_dir():  # (epath has no rglob for local paths)
      out += list_images(p, suffixes, recursive)
    elif p.name.lower().endswith(suffixes) and p.is_file():
      out.append(p)
  return sorted(out)


def parse_name(path: epath.Path, pattern: re.Pattern[str], what: str) -> tuple[int, ...]:
  """Integers captured by ``pattern`` (matched at the start of the file name).

  Raises:
    ValueError: naming the file and the expected pattern.
  """
  m = pattern.match(path.name)
  if m is None:
    raise ValueError(f'{path}: file name does not look like {what} (pattern {pattern.pattern!r}).')
  return tuple(int(g) for g in m.groups())


def folder_records(
    dataset: str,
    root: epath.Path,
    folder: str,
    pattern: re.Pattern[str],
    what: str,
    num_cameras: int,
    suffixes: Sequence[str] = ('.jpg',),
) -> list[Record]:
  """Records of a Market-style folder whose names start with ``<pid>_c<camera>`` (1-based camera).

  ``pattern`` must capture (pid, camera).
  """
  records = []
  for path in list_images(root / folder, suffixes):
    pid, cam = parse_name(path, pattern, what)
    check_camera(dataset, path, cam - 1, num_cameras)
    records.append(Record(f'{folder}/{path.name}', pid, cam - 1, os.fspath(path)))
  return records


def check_camera(dataset: str, where: Any, camid: int, num_cameras: int) -> None:
  if not 0 <= camid < num_cameras:
    raise ValueError(f'{dataset}: {where}: camera index {camid} (0-based) is outside '
                     f'0..{num_cameras - 1}.')


def relabel(records: Sequence[Record]) -> dict[int, int]:
  """pid -> contiguous label in sorted-pid order (junk ``-1`` must already be removed)."""
  pids = sorted({r.pid for r in records})
  if pids and pids[0] < 0:
    raise ValueError(f'relabel: negative pid {pids[0]} in the training records.')
  return {pid: i for i, pid in enumerate(pids)}


# ----------------------------------------------------------------------------------------------
# Image loading and validation.


@dataclasses.dataclass(frozen=True)
class _Checked:
  record: Record
  as_is: bool  # the stored file already is an RGB image in the builder's format: copy its bytes


def load_rgb(source: ImageSource) -> tuple[PILImage.Image, str | None, str]:
  """Decodes ``source`` fully; returns (RGB image, stored format, stored mode).

  The stored format is PIL's name ('JPEG', 'PNG', 'TIFF', ...) or None for arrays, the stored
  mode PIL's ('RGB', 'L', ...).

  Raises:
    CorruptImageError: naming the file, when it cannot be decoded or converted to RGB.
  """
  if callable(source):
    try:
      array = np.asarray(source())
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptImageError(f'cannot read image array: {e}') from e
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
      raise CorruptImageError(
          f'image array has dtype {array.dtype} shape {array.shape}; expected uint8 (H, W, 3).')
    return PILImage.fromarray(array), None, 'RGB'
  try:
    with PILImage.open(source) as img:
      img.load()  # full decode: catches truncated files, which PIL.Image.open alone does not
      return (img.copy() if img.mode == 'RGB' else img.convert('RGB')), img.format, img.mode
  except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as e:
    raise CorruptImageError(f'{source}: cannot decode image ({type(e).__name__}: {e}).') from e


# ----------------------------------------------------------------------------------------------
# The builder base.


def readme_citation(builder_cls: type) -> str | None:
  """The BibTeX block under '## Citation' in the README.md next to the builder's module.

  (The README is the single place the citation is written; TFDS shows it as ``info.citation``.)
  """
  import sys  # pylint: disable=import-outside-toplevel
  module = sys.modules.get(builder_cls.__module__)
  if module is None or not getattr(module, '__file__', None):
    return None
  readme = epath.Path(module.__file__).parent / 'README.md'
  if not readme.exists():
    return None
  m = re.search(r'^## Citation\s*```\w*\n(.*?)```', readme.read_text(), re.S | re.M)
  return m.group(1).strip() if m else None


def _no_bucket() -> None:
  """Stands in for ``DatasetInfo.initialize_from_bucket``: nothing of ours is on TFDS's GCS."""


class LocalInfoMixin:
  """For reid_jax's builders: no look-up of pre-computed metadata on TFDS's public GCS bucket.

  ``tfds.core.DatasetBuilder.__init__`` calls ``DatasetInfo.initialize_from_bucket()`` whenever
  the dataset is not built yet (tensorflow_datasets 4.9: ``core/dataset_builder.py``). That
  method makes a ``tmp*tfds`` folder in the system temp dir before it checks GCS, and never
  removes it; with GCS access enabled it also reaches for the network. Our datasets are never on
  the bucket, so the builders' ``DatasetInfo`` skips the call.
  """

  def dataset_info_from_configs(self, **kwargs) -> tfds.core.DatasetInfo:
    info = super().dataset_info_from_configs(**kwargs)
    info.initialize_from_bucket = _no_bucket
    return info


class ReidBuilder(LocalInfoMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the ReID builders. Subclasses set the class attributes and ``_list_records``.

  Constructor keywords (besides those of ``tfds.core.DatasetBuilder``):
    check_counts: 'warn' (default) warns when the raw data differs from the published statistics
      (expected vs found, per split), 'strict' raises ``CountMismatchError`` instead, 'off' skips
      the check (fake or subset folders).
    skip_corrupt: if True, images that cannot be decoded are left out (their file names are listed
      in the metadata ``skipped_corrupt`` and logged); if False (default) the build stops with a
      ``CorruptImageError`` naming the file.
    num_workers: threads used to decode-check the images (default: the CPU count).
    parsing_dir: folder of BPBreID's label files mirroring the image tree (``_attach``); adds the
      ``parsing_fields`` feature. Every image needs one.
    texture_dir: folder of texture images mirroring the image tree; adds ``texture`` and
      ``texture_valid``.
    missing_texture: 'error' (default): an image without a texture stops the build, naming it;
      'skip': such images get a placeholder and ``texture_valid=False``.
    texture_size: side the textures are resized to (default 256, SAN's decoder output).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  # Set by subclasses.
  IMAGE_FORMAT: ClassVar[str] = 'jpeg'
  NUM_CAMERAS: ClassVar[int]
  SPLITS: ClassVar[Sequence[str]] = ALL_SPLITS
  HOMEPAGE: ClassVar[str] = ''
  # Published sizes: {config name (None for builders without configs): {split: Published}}.
  PUBLISHED: ClassVar[Mapping[str | None, Mapping[str, Published]]] = {}
  # Texture folders named differently from the image folders ({image folder: texture folder}).
  TEXTURE_RENAMES: ClassVar[Mapping[str, str]] = {}

  def __init__(self, *, check_counts: str = 'warn', skip_corrupt: bool = False,
               num_workers: int | None = None, parsing_dir: str | os.PathLike | None = None,
               texture_dir: str | os.PathLike | None = None, missing_texture: str = 'error',
               texture_size: int = 256, **kwargs):
    if check_counts not in CHECK_MODES:
      raise ValueError(f'check_counts={check_counts!r}; expected one of {CHECK_MODES}.')
    if missing_texture not in _attach.MISSING_TEXTURE:
      raise ValueError(f'missing_texture={missing_texture!r}; expected one of '
                       f'{_attach.MISSING_TEXTURE}.')
    if int(texture_size) < 1:
      raise ValueError(f'texture_size={texture_size}; expected a positive side in pixels.')
    self._check_counts = check_counts
    self._skip_corrupt = bool(skip_corrupt)
    self._num_workers = num_workers or os.cpu_count() or 1
    self._parsing_dir = os.fspath(parsing_dir) if parsing_dir else None
    self._texture_dir = os.fspath(texture_dir) if texture_dir else None
    self._missing_texture = missing_texture
    self._texture_size = int(texture_size)
    super().__init__(**kwargs)

  # -- to implement ------------------------------------------------------------------------------

  def _list_records(self, manual_dir: epath.Path | None) -> dict[str, list[Record]]:
    """Returns {split: records} for ``self.SPLITS``; raises ``LayoutError`` on a wrong folder."""
    raise NotImplementedError

  # -- TFDS hooks --------------------------------------------------------------------------------

  def attachments(self) -> tuple[str, ...]:
    """The optional features of this build: from the build arguments, else (reading a prepared
    dataset) from the features it was built with."""
    if self._parsing_dir or self._texture_dir:
      return (('parsing_fields',) if self._parsing_dir else ()) + (
          ('texture', 'texture_valid') if self._texture_dir else ())
    return tuple(f for f in ATTACHMENT_FEATURES if f in stored_features(self.data_path))

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT),
        'pid': np.int32,
        'camid': np.int32,
        'label': np.int32,
        'filename': tfds.features.Text(),
    }
    features.update({k: ATTACHMENT_FEATURES[k]() for k in self.attachments()})
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE or None,
        citation=readme_citation(type(self)),
        metadata=tfds.core.MetadataDict(num_cameras=self.NUM_CAMERAS, num_train_ids=0,
                                        skipped_corrupt=[]),
    )

  @property
  def display_name(self) -> str:
    cfg = self.builder_config
    return f'{self.name}/{cfg.name}' if cfg is not None else self.name

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = getattr(dl_manager, '_manual_dir', None)  # raw value: we report layout errors
    records = self._list_records(epath.Path(manual_dir) if manual_dir else None)
    missing = set(self.SPLITS) - set(records)
    if missing:
      raise AssertionError(f'{self.name}: _list_records returned no {sorted(missing)} split.')
    if 'train' in records:
      junk = [r for r in records['train'] if r.pid == JUNK_PID]
      if junk:
        logging.warning('%s: dropped %d junk (pid -1) images from train, e.g. %s',
                        self.display_name, len(junk), junk[0].filename)
      records['train'] = [r for r in records['train'] if r.pid != JUNK_PID]
    for split, recs in records.items():
      if not recs:
        raise LayoutError(f'{self.display_name}: no images found for split {split!r}.')
    self.check_published_counts(records)

    checked, skipped = {}, []
    for split in self.SPLITS:
      checked[split], bad = self._check_images(records[split])
      skipped += bad
    if skipped:
      logging.warning('%s: skipped %d corrupt images: %s', self.display_name,
                      len(skipped), ', '.join(skipped[:20]))
    self._attached = self._find_attachments(checked)
    labels = relabel([c.record for c in checked.get('train', [])])
    self.info.metadata['num_train_ids'] = len(labels)
    self.info.metadata['skipped_corrupt'] = skipped
    logging.info('%s: %s', self.display_name, ', '.join(
        f'{s} {len(c)} images / {count_ids([x.record for x in c])} ids'
        for s, c in checked.items()))
    return {split: self._generate_examples(checked[split], labels if split == 'train' else None,
                                           self._attached[split])
            for split in self.SPLITS}

  def _generate_examples(self, checked: Sequence[_Checked], labels: Mapping[int, int] | None,
                         attached: Mapping[str, Mapping[str, str | None]]):
    for c in checked:
      r = c.record
      if c.as_is:
        image = r.source
      else:  # stored in another format/mode (e.g. .tif, grey JPEG, .mat array): re-encode
        image = load_rgb(r.source)[0]
      example = {
          'image': image,
          'pid': r.pid,
          'camid': r.camid,
          'label': labels[r.pid] if labels is not None else -1,
          'filename': r.filename,
      }
      files = attached.get(r.filename, {})
      if 'parsing_fields' in files:
        example['parsing_fields'] = _attach.load_fields(files['parsing_fields'])
      if 'texture' in files:
        path = files['texture']
        texture = (_attach.load_texture(path, self._texture_size) if path is not None
                   else np.zeros((self._texture_size,) * 2 + (3,), np.uint8))  # placeholder
        example['texture'] = png_bytes(texture)
        example['texture_valid'] = path is not None
      yield r.filename, example

  # -- attachments -------------------------------------------------------------------------------

  def _find_attachments(self, checked: Mapping[str, Sequence[_Checked]]
                        ) -> dict[str, dict[str, dict[str, str | None]]]:
    """{split: {filename: {feature: file path (None: no texture, skipped)}}}; checks that every
    image has a label file of shape (36, Hm, Wm) (header only) and a texture (unless skipped).

    Raises:
      _attach.AttachmentError: naming the missing, ambiguous or mis-shaped files.
    """
    out = {split: {c.record.filename: {} for c in cs} for split, cs in checked.items()}
    lookups = []
    if self._parsing_dir:
      lookups.append(('parsing_fields', _attach.MirroredFiles(
          self._parsing_dir, 'label file', '--parsing_dir', _attach.parsing_names)))
    if self._texture_dir:
      lookups.append(('texture', _attach.MirroredFiles(
          self._texture_dir, 'texture', '--texture_dir', _attach.texture_names,
          self.TEXTURE_RENAMES)))
    for feature, lookup in lookups:
      missing = []
      for split, cs in checked.items():
        for c in cs:
          path = lookup.find(c.record.filename)
          if path is None:
            missing.append(c.record.filename)
          out[split][c.record.filename][feature] = path
      if missing and (feature != 'texture' or self._missing_texture == 'error'):
        hint = (' (--missing_texture=skip stores such images without a texture, flagged by '
                'texture_valid=False)') if feature == 'texture' else ''
        raise _attach.AttachmentError(f'{self.display_name}: {lookup.missing_message(missing)}'
                                      f'{hint}')
      if missing:
        logging.warning('%s: %d images have no texture under %s (texture_valid=False), e.g. %s',
                        self.display_name, len(missing), lookup.root, ', '.join(missing[:20]))
        self.info.metadata['num_missing_textures'] = len(missing)
      logging.info('%s: %s from %s for %d images', self.display_name, feature, lookup.root,
                   sum(len(v) for v in out.values()) - len(missing))
    if self._parsing_dir:
      paths = [f['parsing_fields'] for per_split in out.values() for f in per_split.values()]
      with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
        list(pool.map(_attach.check_fields_header, paths))  # raises on the first bad one
    return out

  # -- checks ------------------------------------------------------------------------------------

  def _check_images(self, records: Sequence[Record]) -> tuple[list[_Checked], list[str]]:
    """Decodes every image once (in threads); returns (usable records, skipped file names)."""
    want = _PIL_FORMATS[self.IMAGE_FORMAT]

    def check(r: Record):
      try:
        _, fmt, mode = load_rgb(r.source)
      except CorruptImageError as e:
        return e
      return _Checked(r, as_is=fmt == want and mode == 'RGB')

    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      results = list(pool.map(check, records))
    ok, skipped = [], []
    for r, res in zip(records, results):
      if isinstance(res, CorruptImageError):
        if not self._skip_corrupt:
          raise CorruptImageError(
              f'{self.display_name}: corrupt image {r.filename}: {res} '
              '(use --skip_corrupt / skip_corrupt=True to leave such images out).') from res
        skipped.append(r.filename)
      else:
        ok.append(res)
    return ok, skipped

  def published_counts(self) -> Mapping[str, Published]:
    cfg = self.builder_config
    return self.PUBLISHED.get(cfg.name if cfg is not None else None, {})

  def check_published_counts(self, records: Mapping[str, Sequence[Record]]) -> list[str]:
    """Compares split sizes with ``published_counts()``; returns the differences found.

    Warns (``CountMismatchWarning``) or raises (``CountMismatchError``) per ``check_counts``.
    """
    if self._check_counts == 'off':
      return []
    diffs = []
    for split, pub in self.published_counts().items():
      recs = records.get(split, [])
      images, ids = len(recs), count_ids(recs)
      if ((pub.images is not None and pub.images != images)
          or (pub.ids is not None and pub.ids != ids)):
        diffs.append(f'{split}: expected {_fmt(pub.images)} images / {_fmt(pub.ids)} ids, '
                     f'found {images:,} images / {ids:,} ids')
    if diffs:
      msg = (f'{self.display_name}: the raw data differs from the published statistics '
             f'(ids exclude junk pid -1): ' + '; '.join(diffs) + '.')
      if self._check_counts == 'strict':
        raise CountMismatchError(msg)
      warnings.warn(msg, CountMismatchWarning, stacklevel=2)
      logging.warning(msg)
    return diffs


def png_bytes(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 ``[H, W, 3]`` array (encoded here: TFDS would go through TensorFlow
  for arrays)."""
  buf = io.BytesIO()
  PILImage.fromarray(array).save(buf, format='png', compress_level=6)
  return buf.getvalue()


ATTACHMENT_FEATURES = {
    'parsing_fields': lambda: tfds.features.Tensor(
        shape=(None, None, _attach.NUM_FIELDS), dtype=np.uint8,
        encoding=tfds.features.Encoding.ZLIB),
    'texture': lambda: tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
    'texture_valid': lambda: tfds.features.Scalar(dtype=np.bool_),
}


def stored_features(data_path: epath.PathLike) -> tuple[str, ...]:
  """Top-level feature names recorded in a prepared dataset's ``features.json`` (empty when
  it is not prepared)."""
  path = epath.Path(data_path) / 'features.json'
  try:
    content = json.loads(path.read_text())
  except (FileNotFoundError, NotADirectoryError, ValueError):
    return ()
  return tuple(content.get('featuresDict', {}).get('features', {}))


def _fmt(n: int | None) -> str:
  return '?' if n is None else f'{n:,}'


class FolderReidBuilder(ReidBuilder, skip_registration=True):
  """Builders whose splits are flat folders of ``<pid>_c<camera>...`` images (Market style).

  Subclasses set ``SPLIT_FOLDERS`` ({split: folder under the root}), ``WRAPPERS`` (folder names the
  archive extracts to), ``NAME_PATTERN`` (captures pid and 1-based camera) and ``NAME_EXAMPLE``.
  """

  SPLIT_FOLDERS: ClassVar[Mapping[str, str]]
  WRAPPERS: ClassVar[Sequence[str]] = ()
  NAME_PATTERN: ClassVar[re.Pattern[str]] = re.compile(r'(-?\d+)_c(\d+)')
  NAME_EXAMPLE: ClassVar[str]

  def _required(self) -> list[str]:
    return [f + '/' for f in self.SPLIT_FOLDERS.values()]

  def _list_records(self, manual_dir):
    root = find_root(self.display_name, manual_dir, self._required(), self.WRAPPERS)
    return {split: folder_records(self.name, root, folder, self.NAME_PATTERN,
                                  f'{self.NAME_EXAMPLE} (<pid>_c<camera>...)', self.NUM_CAMERAS)
            for split, folder in self.SPLIT_FOLDERS.items()}


class QueryGalleryBuilder(ReidBuilder, skip_registration=True):
  """Test-only builders (occluded/partial benchmarks): a query folder and a gallery folder.

  The pid is the leading number of the file name; every query camid is 0 and every gallery camid
  is 1, so that no true match is removed by the same-camera rule (the CUHK03 new protocol, Zhong et al. 2017).
  Subclasses set ``LAYOUTS`` (alternative {split: folder} maps), ``WRAPPERS``, ``SUFFIXES``,
  ``RECURSIVE`` (images in per-pid sub-folders) and ``NAME_PATTERN`` (captures the pid).
  """

  SPLITS = ('query', 'gallery')
  NUM_CAMERAS = 2
  LAYOUTS: ClassVar[Sequence[Mapping[str, str]]]
  WRAPPERS: ClassVar[Sequence[str]] = ()
  SUFFIXES: ClassVar[Sequence[str]] = ('.jpg',)
  RECURSIVE: ClassVar[bool] = False
  NAME_PATTERN: ClassVar[re.Pattern[str]]
  NAME_EXAMPLE: ClassVar[str]

  def _list_records(self, manual_dir):
    errors = []
    for layout in self.LAYOUTS:
      try:
        root = find_root(self.name, manual_dir, [f + '/' for f in layout.values()], self.WRAPPERS)
        break
      except LayoutError as e:
        errors.append(str(e))
    else:
      raise LayoutError('\n'.join(errors) if len(errors) > 1 else errors[0])
    records = {}
    for camid, split in enumerate(('query', 'gallery')):
      records[split] = [
          Record(os.fspath(path.relative_to(root)).replace(os.sep, '/'),
                 parse_name(path, self.NAME_PATTERN, self.NAME_EXAMPLE)[0], camid, os.fspath(path))
          for path in list_images(root / layout[split], self.SUFFIXES, self.RECURSIVE)]
    return records
