"""grain input pipelines over prepared TFDS ReID datasets (docs/input_pipeline.md).

Training: ``PKSampler`` (identity-balanced P x K batches of the plan ``config.input.sampler``
names, ``'pk'`` or MPN's ``'balanced'``, epochs end to end) -> read the record ->
``Augment`` with a generator seeded by ``(seed, global example position)`` -> batch this process's
``P*K/process_count`` rows -> grain iterator. The iterator state is one position, so
``get_state``/``set_state`` (or ``grain.checkpoint.CheckpointSave``/``CheckpointRestore`` in
orbax) resume exactly. Seeding augmentation by the *global* position (rather than grain's
``random_map``, seeded by the local index) keeps every example's augmentation the same whatever
the number of processes: the processes' slices of a batch, put together, are the one-process
batch.

Evaluation: the split in record order, test transform, batches of exactly ``batch_size`` rows with
a ``valid`` mask for the padding of the last one.

Datasets must be prepared first (``python -m reid_jax.prepare NAME --data_dir=DIR``); nothing is
downloaded or built here.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import grain
import numpy as np
import tensorflow_datasets as tfds

from reid_jax.data import parts as parts_lib
from reid_jax.data.sampler import BalancedPlan, PKPlan, PKSampler, check_sampler, make_plan
from reid_jax.data.transforms import Augment

_EXTRA_IMAGES = ('parsing', 'texture')  # optional per-record images, decoded only when asked for
_LAZY = ('parsing', 'texture', 'parsing_fields')  # features left undecoded unless needed
_AUGMENT_TAG = 0xA06  # keeps augmentation streams apart from the sampler's [seed, epoch] streams


@functools.lru_cache(maxsize=16)
def _builder(name: str, data_dir: str | None):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(
        f'config.input.dataset={name!r} is not prepared under data_dir={data_dir!r}; build it '
        f'with `python -m reid_jax.prepare {name} --data_dir=DIR` (real benchmarks also need '
        f'--manual_dir) and pass that data_dir.') from e


def _open(config_input, data_dir):
  name = config_input.dataset
  builder = _builder(name, data_dir if data_dir is not None else config_input.get('data_dir'))
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'config.input.dataset={name!r} has no prepared data in {builder.data_dir}; run '
        f'`python -m reid_jax.prepare {name} --data_dir=DIR` first.')
  return builder


def _wanted(config_input, builder) -> tuple[str, ...]:
  """Optional features to decode for what the config asks for (``parsing``, ``texture``, and the
  part-mask source for ``parts``); an error when the dataset lacks one."""
  features = builder.info.features
  wanted = tuple(f for f in _EXTRA_IMAGES if config_input.get(f))
  for f in wanted:
    if f not in features:
      how = ('prepare it with --texture_dir (SAN texture images mirroring the image tree)'
             if f == 'texture' else 'only synthetic_reid provides parsing maps')
      raise ValueError(f'config.input.{f}=True but dataset {config_input.dataset!r} has no {f!r} '
                       f'feature ({how})')
  name = config_input.get('parts')
  if name is not None and parts_lib.get_grouping(name).needs_fields:
    if 'parsing_fields' in features:
      wanted += ('parsing_fields',)
    elif 'parsing' in features:
      wanted += ('parsing',) if 'parsing' not in wanted else ()
    else:
      raise ValueError(
          f'config.input.parts={name!r} needs per-image part labels, but dataset '
          f'{config_input.dataset!r} has none: prepare it with --parsing_dir (BPBreID\'s '
          'human-parsing label files; docs/datasets.md) or use synthetic_reid')
  return wanted


def _output(out: dict, record, config_input, extras) -> dict:
  """Drops the part-mask source when only ``parts`` asked for it; adds ``texture_valid``."""
  if 'parsing' in out and not config_input.get('parsing'):
    del out['parsing']
  if 'texture' in extras:
    out['texture_valid'] = np.bool_(record['texture_valid']) if 'texture_valid' in record \
        else np.bool_(True)
  return out


def _source(builder, split: str, keep: tuple[str, ...]):
  """Random-access source of ``split``; image features outside ``keep`` stay undecoded."""
  if split not in builder.info.splits:
    raise ValueError(f'dataset {builder.info.full_name!r} has no split {split!r}; '
                     f'splits: {sorted(builder.info.splits)}')
  skip = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
          if (isinstance(f, tfds.features.Image) or k in _LAZY) and k not in keep}
  return builder.as_data_source(split, decoders=skip or None)


@functools.lru_cache(maxsize=32)
def _columns(builder, split: str) -> dict[str, np.ndarray]:
  """``pid``, ``camid``, ``label`` of every record of ``split`` (images not decoded)."""
  src = _source(builder, split, ())
  records = src.__getitems__(list(range(len(src))))
  return {c: np.array([r[c] for r in records], np.int32) for c in ('pid', 'camid', 'label')}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trainer needs to know about a prepared dataset."""
  name: str
  num_classes: int          # train identities (classifier rows)
  num_cameras: int
  split_sizes: dict         # records per split (before dropping junk)
  image_shape: tuple        # stored (H, W, 3), None entries for variable sizes
  features: tuple           # feature names
  parts: tuple | None       # parsing part names (synthetic_reid), index = mask value


def dataset_info(config_input, data_dir: str | None = None) -> DatasetInfo:
  """Reads the prepared dataset's metadata (and its train labels, to check them)."""
  builder = _open(config_input, data_dir)
  labels = _columns(builder, 'train')['label']
  num_classes = int(labels.max()) + 1 if labels.size else 0
  if labels.size == 0 or labels.min() < 0 or np.unique(labels).size != num_classes:
    raise ValueError(f'dataset {config_input.dataset!r}: train labels must be the contiguous '
                     f'class indices 0..C-1 (sorted-pid order); got {np.unique(labels)[:10]}...')
  meta = builder.info.metadata or {}
  if 'num_cameras' in meta:
    num_cameras = int(meta['num_cameras'])
  else:
    num_cameras = 1 + max(int(_columns(builder, s)['camid'].max()) for s in builder.info.splits)
  return DatasetInfo(
      name=builder.info.full_name, num_classes=num_classes, num_cameras=num_cameras,
      split_sizes={s: builder.info.splits[s].num_examples for s in builder.info.splits},
      image_shape=tuple(builder.info.features['image'].shape),
      features=tuple(builder.info.features), parts=tuple(meta['parts']) if 'parts' in meta
      else None)


def train_plan(config_input, *, seed: int, num_epochs: int | None = None,
               data_dir: str | None = None) -> PKPlan | BalancedPlan:
  """The P x K plan of the train split that ``config_input.sampler`` names (``'pk'``:
  ``PKPlan``, ``'balanced'``: MPN's ``BalancedPlan``); ``plan.num_batches(epoch)`` gives
  iterations per epoch. An unknown sampler is a ``ValueError`` (before the dataset is opened)."""
  sampler = check_sampler(config_input.get('sampler', 'pk'))
  builder = _open(config_input, data_dir)
  return make_plan(sampler, _columns(builder, 'train')['label'], config_input.p,
                   config_input.k, seed, num_epochs)


def _images(record, extras):
  """The decoded images the augmentation should see (others are still encoded bytes)."""
  return {k: record[k] for k in ('image', *extras)}


class _TrainExample(grain.transforms.Map):
  """Sampler element -> augmented example (picklable, for grain worker processes)."""

  def __init__(self, source, augment: Augment, seed: int, extras: tuple[str, ...],
               config_input):
    self._source, self._augment, self._seed, self._extras = source, augment, seed, extras
    self._parsing = bool(config_input.get('parsing'))

  def map(self, element):
    record = self._source[element['record']]
    rng = np.random.default_rng([self._seed, _AUGMENT_TAG, element['position']])
    out = _output(self._augment(_images(record, self._extras), rng), record,
                  {'parsing': self._parsing}, self._extras)
    for c in ('label', 'pid', 'camid'):
      out[c] = np.int32(record[c])
    out['epoch'] = np.int32(element['epoch'])
    return out


def _read_options(config_input):
  return grain.ReadOptions(num_threads=config_input.threads, prefetch_buffer_size=256)


def _maybe_workers(ds, config_input):
  if not config_input.workers:
    return ds
  # grain 0.2.18's mp_prefetch reads an absl flag and fails outside absl.app unless the flags
  # count as parsed (jax-stack.md B.3 gotchas; fixed upstream in grain PR #1362).
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config_input.workers))


def train_iterator(config_input, *, seed: int, process_index: int = 0, process_count: int = 1,
                   num_epochs: int | None = None, data_dir: str | None = None):
  """Endless (or ``num_epochs``-long) iterator of this process's training batches.

  Yields dicts of NumPy arrays, ``B = P*K/process_count`` (whole identities, in groups of K):
    image  float32 [B, H, W, 3]  augmented, ImageNet-normalised
    label  int32 [B]  train class (contiguous, sorted-pid order)
    pid, camid  int32 [B]
    epoch  int32 [B]  0-based epoch of the batch (all equal); a change marks an epoch boundary
    parsing  uint8 [B, H, W]  part ids (if ``config_input.parsing``), geometry as the image
    texture  float32 [B, T, T, 3] in [-1, 1] (if ``config_input.texture``), not flipped unless
             ``config_input.flip_texture``
    texture_valid  bool [B] (with ``texture``): False for images prepared without a texture
             (``--missing_texture=skip``; their texture is a placeholder), else True
    part_masks  float32 [B, H/4, W/4, K+1] (if ``config_input.parts``): BPBreID's part targets,
             background first, softmax over the last axis; argmax = pixel label
  Feed ``jax.make_array_from_process_local_data(sharding, batch)``. The iterator is a grain
  ``DatasetIterator``: ``get_state()``/``set_state()`` resume exactly; close it when done.
  """
  builder = _open(config_input, data_dir)
  plan = train_plan(config_input, seed=seed, num_epochs=num_epochs, data_dir=data_dir)
  sampler = PKSampler(plan, process_index=process_index, process_count=process_count)
  extras = _wanted(config_input, builder)
  source = _source(builder, 'train', ('image', *extras))
  ds = sampler.map(_TrainExample(source, Augment.from_config(config_input), seed, extras,
                                 config_input))
  ds = ds.batch(sampler.local_batch, drop_remainder=True)
  ds = _maybe_workers(ds.to_iter_dataset(_read_options(config_input)), config_input)
  return iter(ds)


class _EvalExample(grain.transforms.Map):
  """Row ``i`` of the padded split -> test-transformed example, or a padding row."""

  def __init__(self, source, augment: Augment, indices: np.ndarray, extras: tuple[str, ...],
               config_input):
    self._source, self._augment, self._indices, self._extras = source, augment, indices, extras
    self._parsing = bool(config_input.get('parsing'))

  def map(self, i):
    h, w = self._augment.size
    if i >= len(self._indices):  # padding: zeros, marked invalid
      out = {'image': np.zeros((h, w, 3), np.float32)}
      if self._parsing:
        out['parsing'] = np.zeros((h, w), np.uint8)
      if 'texture' in self._extras:
        t = self._augment.texture_size or self._texture_side()
        out['texture'] = np.zeros((t, t, 3), np.float32)
        out['texture_valid'] = np.bool_(False)
      if self._augment.parts is not None:
        out['part_masks'] = np.zeros(self._augment.part_masks_shape, np.float32)
      return dict(out, pid=np.int32(-1), camid=np.int32(-1), index=np.int32(-1),
                  valid=np.bool_(False))
    record = self._source[int(self._indices[i])]
    out = _output(self._augment(_images(record, self._extras), None), record,
                  {'parsing': self._parsing}, self._extras)
    return dict(out, pid=np.int32(record['pid']), camid=np.int32(record['camid']),
                index=np.int32(self._indices[i]), valid=np.bool_(True))

  def _texture_side(self):
    return self._source[int(self._indices[0])]['texture'].shape[0]


def eval_batches(config_input, split: str, *, batch_size: int | None = None,
                 multiple_of: int = 1, process_index: int = 0, process_count: int = 1,
                 data_dir: str | None = None):
  """Iterator over ``split`` (e.g. 'query', 'gallery') in record order, for feature extraction.

  Every global batch has exactly ``batch_size`` rows (default ``config_input.eval_batch_size``),
  which must be a multiple of ``multiple_of`` (e.g. the global device count) and of
  ``process_count``; the last batch is padded. Process ``process_index`` gets rows
  ``[i*L, (i+1)*L)`` of each, ``L = batch_size / process_count``, ready for
  ``jax.make_array_from_process_local_data``. Yields dicts of ``L`` rows: ``image`` float32
  [L, H, W, 3] (test resize with ``test_interpolation``, normalised), ``pid``, ``camid`` int32 [L]
  (-1 on padding), ``index`` int32 [L] (record index, -1 on padding), ``valid`` bool [L] (False
  on padding), plus ``parsing``/``texture`` (+ ``texture_valid``)/``part_masks`` (test resize)
  when the config asks for them (zeros on padding). Junk images (pid -1)
  are left out when ``config_input.eval_drop_junk``.
  """
  batch_size = batch_size or config_input.eval_batch_size
  if batch_size < 1 or multiple_of < 1 or batch_size % multiple_of:
    raise ValueError(f'eval_batches: batch_size={batch_size} must be a positive multiple of '
                     f'multiple_of={multiple_of} (the device count)')
  if process_count < 1 or not 0 <= process_index < process_count or batch_size % process_count:
    raise ValueError(f'eval_batches: batch_size={batch_size} must split over process_count='
                     f'{process_count} and process_index={process_index} be in [0, '
                     f'{process_count})')
  builder = _open(config_input, data_dir)
  pids = _columns(builder, split)['pid']
  keep = np.flatnonzero(pids != -1) if config_input.eval_drop_junk else np.arange(pids.size)
  padded = max(1, math.ceil(keep.size / batch_size)) * batch_size
  local = batch_size // process_count
  extras = _wanted(config_input, builder)
  source = _source(builder, split, ('image', *extras))
  ds = grain.MapDataset.range(padded // process_count).map(
      lambda j: j // local * batch_size + process_index * local + j % local)  # global row
  ds = ds.map(_EvalExample(source, Augment.from_config(config_input, train=False), keep, extras,
                           config_input))
  ds = ds.batch(local).to_iter_dataset(_read_options(config_input))
  return iter(ds)


def raw_images(config_input, split: str, indices, data_dir: str | None = None):
  """The stored images ``[H, W, 3] uint8`` of records ``indices`` of ``split`` (no resize, no
  normalisation), e.g. for ranked-list pictures."""
  src = _source(_open(config_input, data_dir), split, ('image',))
  return [np.asarray(r['image']) for r in src.__getitems__([int(i) for i in indices])]
