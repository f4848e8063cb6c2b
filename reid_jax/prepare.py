r"""Builds a ReID dataset into TFDS array_record files, atomically.

Usage:
  python -m reid_jax.prepare NAME[/CONFIG] --manual_dir=DIR [--data_dir=DIR] [--skip_corrupt]
      [--check_counts=warn|strict|off] [--overwrite]
      [--parsing_dir=DIR] [--texture_dir=DIR [--missing_texture=error|skip] [--texture_size=256]]

e.g. ``python -m reid_jax.prepare market1501 --manual_dir=~/raw/market1501`` or
``python -m reid_jax.prepare cuhk03_np/detected --manual_dir=~/raw/cuhk03``. The result lands in
``DATA_DIR/NAME/CONFIG/VERSION`` (``--data_dir`` defaults to ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) and is read with ``tfds.data_source('NAME/CONFIG', split=...,
data_dir=DATA_DIR)``.

The build runs in a temporary folder under the data dir and is renamed into place only when it has
succeeded, so a failed or interrupted build leaves no half-written dataset behind. An existing build
is kept (and its path returned) unless ``--overwrite``.

``--parsing_dir`` / ``--texture_dir`` attach per-image files from folders mirroring the image tree
(BPBreID's human-parsing label files, SAN's texture images; ``reid_jax_datasets._attach``,
docs/datasets.md).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import tensorflow_datasets as tfds

# Dataset name -> module exporting its builder (imported on demand).
BUILDERS = {
    'market1501': 'reid_jax_datasets.market1501',
    'dukemtmc_reid': 'reid_jax_datasets.dukemtmc_reid',
    'cuhk03_np': 'reid_jax_datasets.cuhk03_np',
    'msmt17': 'reid_jax_datasets.msmt17',
    'occluded_duke': 'reid_jax_datasets.occluded_duke',
    'p_dukemtmc_reid': 'reid_jax_datasets.p_dukemtmc_reid',
    'occluded_reid': 'reid_jax_datasets.occluded_reid',
    'partial_reid': 'reid_jax_datasets.partial_reid',
    'partial_ilids': 'reid_jax_datasets.partial_ilids',
    'veri776': 'reid_jax_datasets.veri776',
    'synthetic_reid': 'reid_jax_datasets.synthetic_reid',
}
FILE_FORMAT = 'array_record'


class UnknownDatasetError(ValueError):
  """A dataset or config name that is not in ``BUILDERS`` / the builder's configs."""


def split_name(spec: str) -> tuple[str, str | None]:
  """'NAME[/CONFIG]' -> (NAME, CONFIG or None)."""
  name, _, config = spec.strip().partition('/')
  return name, (config or None)


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
  """The builder class registered for ``name`` in ``BUILDERS`` (imports its module)."""
  if name not in BUILDERS:
    raise UnknownDatasetError(f'unknown dataset {name!r}; known: {", ".join(sorted(BUILDERS))}.')
  module = importlib.import_module(BUILDERS[name])
  for obj in vars(module).values():
    if (isinstance(obj, type) and issubclass(obj, tfds.core.DatasetBuilder)
        and getattr(obj, 'name', None) == name):
      return obj
  raise ImportError(f'{BUILDERS[name]} defines no TFDS builder named {name!r}.')


def config_names(cls: type[tfds.core.DatasetBuilder]) -> list[str]:
  return [c.name for c in (cls.BUILDER_CONFIGS or [])]


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def prepare(name: str, manual_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, *, overwrite: bool = False,
            **builder_kwargs: Any) -> str:
  """Builds dataset ``name`` ('NAME' or 'NAME/CONFIG') unless already built; returns its folder.

  Args:
    name: a key of ``BUILDERS``, optionally with '/CONFIG' (default: the builder's first config).
    manual_dir: the raw dataset folder (required by every builder but ``synthetic_reid``).
    data_dir: TFDS data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    overwrite: rebuild even when the dataset is already there (the old copy is replaced only once
      the new build has succeeded).
    **builder_kwargs: passed to the builder, e.g. ``check_counts='strict'``, ``skip_corrupt=True``,
      ``parsing_dir=DIR``, ``texture_dir=DIR``, ``missing_texture='skip'``, ``texture_size=256``.

  Returns:
    The built dataset's folder, ``data_dir/NAME[/CONFIG]/VERSION``.

  Raises:
    UnknownDatasetError: unknown dataset or config name (the message lists the known ones).
    reid_jax_datasets._common.LayoutError: missing or wrong ``manual_dir``.
    reid_jax_datasets._common.CorruptImageError: an unreadable image (without skip_corrupt).
  """
  from reid_jax_datasets import _common  # pylint: disable=import-outside-toplevel
  ds_name, config = split_name(name)
  cls = builder_class(ds_name)
  configs = config_names(cls)
  if config is not None and config not in configs:
    known = ', '.join(f'{ds_name}/{c}' for c in configs) or f'{ds_name} (no configs)'
    raise UnknownDatasetError(f'unknown config {name!r}; known: {known}.')
  if manual_dir is None and getattr(cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    raise _common.LayoutError(f'{name}: needs --manual_dir (the raw data folder).\n'
                              f'{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}')
  if manual_dir is not None:
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  data_dir = os.path.abspath(os.path.expanduser(
      os.fspath(data_dir) if data_dir is not None else default_data_dir()))
  os.makedirs(data_dir, exist_ok=True)

  final = epath.Path(cls(data_dir=data_dir, config=config, **builder_kwargs).data_path)
  if (final / 'dataset_info.json').exists() and not overwrite:
    wanted = [f for f, arg in (('parsing_fields', 'parsing_dir'), ('texture', 'texture_dir'))
              if builder_kwargs.get(arg)]
    lacking = [f for f in wanted if f not in _common.stored_features(final)]
    if lacking:
      raise _common.LayoutError(
          f'{name}: the build at {final} has no {" / ".join(lacking)} feature; rebuild it with '
          f'the same flags and --overwrite (overwrite=True).')
    logging.info('%s: already built at %s (use overwrite=True to rebuild).', name, final)
    return os.fspath(final)

  tmp = tempfile.mkdtemp(prefix=f'.{ds_name}-incomplete-', dir=data_dir)
  try:
    builder = cls(data_dir=tmp, config=config, file_format=FILE_FORMAT, **builder_kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    built = epath.Path(builder.data_path)
    skipped = (builder.info.metadata or {}).get('skipped_corrupt') or []
    if skipped:
      logging.warning('%s: skipped %d corrupt images (listed in metadata.json).', name,
                      len(skipped))
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
      if not overwrite:  # another process finished the same build meanwhile: keep theirs
        logging.info('%s: built concurrently by another process; keeping %s', name, final)
        return os.fspath(final)
      os.rename(final, os.path.join(tmp, 'replaced'))  # removed with tmp below
    os.rename(built, final)
    # TFDS records the default config name next to the config folders; keep it if absent.
    config_meta = built.parent.parent / '.config'
    if config_meta.exists() and not (final.parent.parent / '.config').exists():
      os.rename(config_meta, final.parent.parent / '.config')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info('%s: built at %s', name, final)
  return os.fspath(final)


# The CLI's flags live in their own FlagValues: importing this module (as the training code does)
# must not add --data_dir etc. to the global absl flags, where they would clash with the caller's.
CLI_FLAGS = flags.FlagValues()
flags.DEFINE_string('manual_dir', None, 'Raw dataset folder (see docs/datasets.md).',
                    flag_values=CLI_FLAGS)
flags.DEFINE_string('data_dir', None,
                    'TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).',
                    flag_values=CLI_FLAGS)
flags.DEFINE_bool('skip_corrupt', False, 'Leave out unreadable images (counted and logged) '
                  'instead of failing on the first one.', flag_values=CLI_FLAGS)
flags.DEFINE_enum('check_counts', 'warn', ['warn', 'strict', 'off'],
                  'Compare image/id counts with the published statistics: warn, fail (strict) '
                  'or skip (off).', flag_values=CLI_FLAGS)
flags.DEFINE_bool('overwrite', False, 'Rebuild an already built dataset.', flag_values=CLI_FLAGS)
flags.DEFINE_string('parsing_dir', None,
                    "BPBreID's human-parsing label files (36 PifPaf fields per image), in a folder "
                    'mirroring the image tree, e.g. <dataset>/masks/pifpaf_maskrcnn_filtering.',
                    flag_values=CLI_FLAGS)
flags.DEFINE_string('texture_dir', None,
                    "SAN texture images, in a folder mirroring the image tree (CUHK03: the "
                    'folder holding texture_cuhk03_labeled/).', flag_values=CLI_FLAGS)
flags.DEFINE_enum('missing_texture', 'error', ['error', 'skip'],
                  'An image without a texture: stop the build (error) or store it without one, '
                  'flagged texture_valid=False (skip).', flag_values=CLI_FLAGS)
flags.DEFINE_integer('texture_size', 256, 'Side the textures are resized to (pixels).',
                     flag_values=CLI_FLAGS)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the CLI flags, then absl's global ones (--verbosity, ...); returns the positionals."""
  return flags.FLAGS(CLI_FLAGS(argv, known_only=True))


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(
        f'expected one dataset NAME[/CONFIG]; known: {", ".join(sorted(BUILDERS))}')
  from reid_jax_datasets import _common  # pylint: disable=import-outside-toplevel
  name = argv[1]
  fv = CLI_FLAGS
  kwargs = {}
  if issubclass(builder_class(split_name(name)[0]), _common.ReidBuilder):
    kwargs = dict(skip_corrupt=fv.skip_corrupt, check_counts=fv.check_counts,
                  parsing_dir=fv.parsing_dir, texture_dir=fv.texture_dir,
                  missing_texture=fv.missing_texture, texture_size=fv.texture_size)
  elif (fv.skip_corrupt or fv.check_counts != 'warn' or fv.parsing_dir or fv.texture_dir
        or fv.missing_texture != 'error' or fv.texture_size != 256):
    raise UnknownDatasetError(f'{name} takes no --skip_corrupt / --check_counts / --parsing_dir / '
                              '--texture_dir / --missing_texture / --texture_size (it generates '
                              'its own parsing masks and textures).')
  # Unknown names, a wrong --manual_dir, corrupt images, count mismatches and missing or
  # malformed label/texture files are ValueError / FileNotFoundError subclasses: reid_jax.cli
  # prints them as one error line (exit status 2).
  path = prepare(name, fv.manual_dir, fv.data_dir, overwrite=fv.overwrite, **kwargs)
  print(path)


if __name__ == '__main__':
  from reid_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run(main, flags_parser=parse_flags)
