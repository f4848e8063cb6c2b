"""Test-time feature extraction, and the ``python -m reid_jax.extract`` command.

  extract_features(model, batches, *, flip='none', normalize=False) -> (feats, pids, camids)

Command line (writes an .npz with ``feats [N, D] float32`` (part-based methods: ``feats
[N, P, D]`` and ``visibility [N, P]``), ``pids``, ``camids`` and, for ``--images``,
``filenames``; the features are ``reid_jax.FeatureExtractor``'s)::

  python -m reid_jax.extract --config=configs/baseline.py --checkpoint=DIR \\
      (--dataset=market1501 --split=query | --images=FOLDER) --out=FILE.npz

``--images`` reads the image files of a folder (Market-style names give pid and camid);
``--dataset`` reads a prepared TFDS dataset through ``reid_jax.data.eval_batches``.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

import numpy as np

FLIPS = ('none', 'sum', 'mean')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')
_MARKET_NAME = re.compile(r'^(-?\d+)_c(\d+)')


def _combine(embed, images, flip):
  """``embed(images)``, combined with the features of the mirrored images by ``flip``. Part
  features: see ``reid_jax.evaluation.features.combine_flip`` (visibility OR / max)."""
  from reid_jax.evaluation import features as feature_lib  # noqa: PLC0415
  f = embed(images)
  if flip == 'none':
    return f
  g = embed(images[:, :, ::-1, :])  # horizontal flip of NHWC
  return feature_lib.combine_flip(f, g, flip)


def extract_features(model, batches: Iterable[dict], *, flip: str = 'none',
                     normalize: bool = False, progress: bool | None = None,
                     with_index: bool = False):
  """Test features of every valid row of ``batches``.

  Each batch is a dict ``{'image': [B, H, W, 3] float32 (normalised), 'pid': [B], 'camid': [B],
  'valid': [B] bool}`` (``valid`` optional; padding rows are dropped). The feature is
  ``reid_jax.models.embed`` (eval mode), optionally combined with the horizontally flipped image
  (``flip='sum'`` as fast-reid/torchreid add them, ``'mean'`` averages), then optionally
  L2-normalised. Returns ``(feats [N, D] np.float32, pids [N] int, camids [N] int)``, plus the
  batches' record ``index [N]`` with ``with_index``. A tqdm bar shows when ``progress`` is True,
  or when None and stderr is a terminal.

  Part-based methods (``embed`` returns ``{'feat': [B, P, D], 'visibility': [B, P]}``): ``feats``
  is such a dict over the N images; flip combines ``feat`` (visibility OR for bool, max for
  scores) and ``normalize`` L2-normalises each of the P embeddings, as BPBreID's engine does.
  """
  if flip not in FLIPS:
    raise ValueError(f'flip must be one of {FLIPS}, got {flip!r}')
  import jax.numpy as jnp  # noqa: PLC0415
  from tqdm import tqdm  # noqa: PLC0415

  from reid_jax.evaluation import features as feature_lib  # noqa: PLC0415
  from reid_jax.models import embed  # noqa: PLC0415

  feats, pids, camids, index = [], [], [], []
  total = len(batches) if hasattr(batches, '__len__') else None
  for batch in tqdm(batches, total=total, desc='features', unit='batch',
                    disable=None if progress is None else not progress):
    if 'image' not in batch:
      raise ValueError(f"each batch needs an 'image' [B, H, W, 3] entry, got keys {sorted(batch)}")
    images = jnp.asarray(batch['image'], jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"batch['image'] must be [B, H, W, 3], got {images.shape}")
    f = feature_lib.to_host(_combine(lambda x: embed(model, x), images, flip))
    n = feature_lib.num_rows(f)
    valid = np.asarray(batch.get('valid', np.ones(n, bool)), bool)
    feats.append(feature_lib.map_rows(lambda a, v=valid: a[v], f))
    pids.append(np.asarray(batch.get('pid', np.full(n, -1)))[valid])
    camids.append(np.asarray(batch.get('camid', np.full(n, -1)))[valid])
    index.append(np.asarray(batch.get('index', np.full(n, -1)))[valid])
  if not feats:
    raise ValueError('batches is empty')
  feats = feature_lib.concatenate(feats)
  if normalize:
    feats = feature_lib.normalize(feats)
  out = (feats, np.concatenate(pids).astype(np.int64), np.concatenate(camids).astype(np.int64))
  return out + (np.concatenate(index).astype(np.int64),) if with_index else out


# ----------------------------------------------------------------------------- image folders


def parse_market_name(filename: str):
  """``'0002_c1s1_000451_03.jpg' -> (2, 0)`` (camid 0-based, as torchreid); None if no match."""
  m = _MARKET_NAME.match(os.path.basename(filename))
  if not m:
    return None
  return int(m.group(1)), int(m.group(2)) - 1


def _resample(name: str):
  from PIL import Image  # noqa: PLC0415
  table = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC, 'nearest': Image.NEAREST,
           'lanczos': Image.LANCZOS, 'box': Image.BOX}
  if name not in table:
    raise ValueError(f'config.input.test_interpolation must be one of {sorted(table)}, got {name!r}')
  return table[name]


def load_image(path: str, size, interpolation: str, mean, std) -> np.ndarray:
  """One image as ``[H, W, 3]`` float32: RGB, resized to ``size=(H, W)``, ``(x/255 - mean)/std``."""
  from PIL import Image  # noqa: PLC0415
  with Image.open(path) as im:
    im = im.convert('RGB').resize((int(size[1]), int(size[0])), _resample(interpolation))
    x = np.asarray(im, np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def list_images(folder: str) -> list[str]:
  """The image file names directly in ``folder``, sorted."""
  if not os.path.isdir(folder):
    raise ValueError(f'--images must be a folder, got {folder!r}')
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))
  if not names:
    raise ValueError(f'no {IMAGE_EXTS} images in {folder!r}')
  return names


def image_folder_batches(folder: str, input_config, batch_size: int):
  """(filenames, list of batches) for the images directly in ``folder`` (sorted by name).

  pid / camid come from Market-style names (``PPPP_cC...``), else -1. Batches are padded to
  ``batch_size`` with ``valid=False`` rows so every call has one shape.
  """
  names = list_images(folder)

  def gen():
    for i in range(0, len(names), batch_size):
      chunk = names[i:i + batch_size]
      imgs = [load_image(os.path.join(folder, n), input_config.size,
                         input_config.test_interpolation, input_config.mean, input_config.std)
              for n in chunk]
      labels = [parse_market_name(n) or (-1, -1) for n in chunk]
      pad = batch_size - len(chunk)
      imgs += [np.zeros_like(imgs[0])] * pad
      labels += [(-1, -1)] * pad
      yield {'image': np.stack(imgs), 'pid': np.array([p for p, _ in labels]),
             'camid': np.array([c for _, c in labels]),
             'valid': np.arange(batch_size) < len(chunk)}

  class _Batches:
    def __len__(self):
      return -(-len(names) // batch_size)

    def __iter__(self):
      return gen()

  return names, _Batches()


def save_npz(path: str, feats, pids=None, camids=None, filenames=None) -> None:
  """Atomic ``np.savez`` (temp file + rename). ``feats``: ``[N, D]``, or part features (saved as
  ``feats [N, P, D]`` and, when present, ``visibility [N, P]``)."""
  from reid_jax.evaluation import features as feature_lib  # noqa: PLC0415
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, '.tmp-' + os.path.basename(path))
  if not tmp.endswith('.npz'):
    tmp += '.npz'
  if feature_lib.is_parts(feats):
    data = {'feats': np.asarray(feats['feat'], np.float32)}
    if feats.get('visibility') is not None:
      data['visibility'] = np.asarray(feats['visibility'])
  else:
    data = {'feats': np.asarray(feats, np.float32)}
  if pids is not None:
    data['pids'] = np.asarray(pids)
    data['camids'] = np.asarray(camids)
  if filenames is not None:
    data['filenames'] = np.asarray(filenames)
  np.savez(tmp, **data)
  os.replace(tmp, path)


def main(argv):
  del argv
  from absl import flags  # noqa: PLC0415

  from reid_jax.evaluation import features as feature_lib  # noqa: PLC0415
  from reid_jax.feature_extractor import FeatureExtractor  # noqa: PLC0415
  f = flags.FLAGS
  config = f.config
  if bool(f.images) == bool(f.dataset):
    raise ValueError('give exactly one of --images=FOLDER or --dataset=NAME (with --split)')
  extractor = FeatureExtractor(config, f.checkpoint, batch_size=f.batch_size or None)
  names = None
  if f.images:
    names = list_images(f.images)
    feats = extractor([os.path.join(f.images, n) for n in names])
    labels = [parse_market_name(n) or (-1, -1) for n in names]
    pids = np.array([p for p, _ in labels], np.int64)
    camids = np.array([c for _, c in labels], np.int64)
  else:
    from reid_jax import data  # noqa: PLC0415
    config.input.dataset = f.dataset
    chunks, pid_chunks, camid_chunks = [], [], []
    for batch in data.eval_batches(config.input, f.split, batch_size=extractor.batch_size):
      valid = np.asarray(batch['valid'], bool)
      chunks.append(feature_lib.map_rows(lambda a, v=valid: a[v],
                                         extractor.embed_prepared(np.asarray(batch['image']))))
      pid_chunks.append(np.asarray(batch['pid'])[valid])
      camid_chunks.append(np.asarray(batch['camid'])[valid])
    feats = feature_lib.concatenate(chunks)
    pids, camids = np.concatenate(pid_chunks), np.concatenate(camid_chunks)
  keep_labels = names is None or bool((pids >= 0).all())
  save_npz(f.out, feats, pids if keep_labels else None, camids if keep_labels else None, names)
  shape = np.shape(feats['feat'] if feature_lib.is_parts(feats) else feats)
  print(f'wrote {shape[0]} x {" x ".join(map(str, shape[1:]))} features to {f.out}')


def _define_flags():
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  config_flags.DEFINE_config_file('config', None, 'configs/<method>.py[:arg]', lock_config=False)
  flags.DEFINE_string('checkpoint', None, 'checkpoint folder (reid_jax.checkpoint.restore_model)')
  flags.DEFINE_string('dataset', None, 'TFDS dataset name (uses reid_jax.data.eval_batches)')
  flags.DEFINE_enum('split', 'query', ['query', 'gallery'], 'split of --dataset')
  flags.DEFINE_string('images', None, 'folder of images (Market names give pid/camid)')
  flags.DEFINE_string('out', None, 'output .npz')
  flags.DEFINE_integer('batch_size', 0, 'default: config.input.eval_batch_size')
  flags.mark_flags_as_required(['config', 'checkpoint', 'out'])


if __name__ == '__main__':
  from reid_jax import cli  # noqa: PLC0415
  _define_flags()
  cli.run(main)
