"""``FeatureExtractor``: a reid_jax checkpoint as a function from images to ReID features.

  extractor = reid_jax.FeatureExtractor('configs/baseline.py', 'workdir/bot/checkpoints')
  feats = extractor(['a.jpg', pil_image, uint8_array])   # [3, D] float32, L2-normalised

A part-based method (BPBreID) gives ``{'feat': [N, P, D], 'visibility': [N, P]}`` instead, each
of the P embeddings L2-normalised (``reid_jax.evaluation.features``).

Images are file paths, PIL images or uint8 arrays ``[h, w, 3]`` / ``[h, w]`` of any size. Each is
prepared exactly as the evaluation loader prepares test images (``config.input``: resize to
``size`` with ``test_interpolation``, ``(x / 255 - mean) / std``); the feature is the method's
test feature with ``config.eval.flip`` and ``config.eval.normalize``, as ``--mode=eval`` computes
it. Images go through the network in batches of at most ``batch_size``; a batch is padded to the
next power of two, so the jitted function compiles once per padded size (at most
``log2(batch_size) + 1`` shapes).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax.evaluation import features as feature_lib
from reid_jax.extract import FLIPS, _combine


def load_config(path: str):
  """``get_config(arg)`` of a config file given as ``'configs/<method>.py[:ARG]'``."""
  file, _, arg = str(path).partition(':')
  if not os.path.isfile(file):
    raise FileNotFoundError(f'config file not found: {file}')
  spec = importlib.util.spec_from_file_location('reid_jax_config', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _to_uint8(image: Any, i: int) -> np.ndarray:
  """One input image as uint8 ``[h, w, 3]`` RGB."""
  from PIL import Image
  if isinstance(image, (str, os.PathLike)):
    if not os.path.isfile(image):
      raise FileNotFoundError(f'image {i}: no such file {os.fspath(image)!r}')
    with Image.open(image) as im:
      return np.asarray(im.convert('RGB'))
  if isinstance(image, Image.Image):
    return np.asarray(image.convert('RGB'))
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
      array.ndim == 3 and array.shape[2] != 3):
    raise ValueError(f'image {i}: expected a path, a PIL image or a uint8 array [h, w, 3] or '
                     f'[h, w], got {array.dtype} {array.shape}')
  return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


class FeatureExtractor:
  """Images -> L2-normalised (per ``config.eval.normalize``) test features of a checkpoint.

  Args:
    config: the method's config (a ``ConfigDict``) or its file ``'configs/<method>.py[:ARG]'``;
      ``config.model`` builds the network, ``config.input`` the test transform, ``config.eval``
      the flip and normalisation.
    checkpoint: a reid_jax checkpoint directory (training's ``WORKDIR/checkpoints`` or
      ``reid_jax.convert``'s output); the latest step unless ``step``.
    batch_size: images per network call (default ``config.input.eval_batch_size``).
  """

  def __init__(self, config, checkpoint: str, *, batch_size: int | None = None,
               step: int | None = None):
    from reid_jax import checkpoint as ckpt_lib
    from reid_jax.data.transforms import Augment
    if isinstance(config, (str, os.PathLike)):
      config = load_config(config)
    if config.eval.flip not in FLIPS:
      raise ValueError(f'config.eval.flip must be one of {FLIPS}, got {config.eval.flip!r}')
    self.config = config
    self.batch_size = int(batch_size or config.input.eval_batch_size)
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {self.batch_size}')
    self.transform = Augment.from_config(config.input, train=False)
    model = ckpt_lib.restore_model(config.model, checkpoint, step=step)
    model.eval()
    self._graphdef, self._state = nnx.split(model)
    self.traces = 0  # how many times the network function was traced (one per batch shape)
    flip, normalize = config.eval.flip, bool(config.eval.normalize)

    def features(state, images):
      self.traces += 1
      net = nnx.merge(self._graphdef, state)
      f = _combine(net, images, flip)
      return feature_lib.normalize(f) if normalize else f

    self._features = jax.jit(features)

  def prepare(self, images: Iterable[Any], start: int = 0) -> np.ndarray:
    """The network inputs ``[N, H, W, 3]`` float32 of ``images`` (resized, normalised); errors
    number the images from ``start``."""
    out = [self.transform({'image': _to_uint8(im, i)}, None)['image']
           for i, im in enumerate(images, start)]
    if not out:
      raise ValueError('no images given')
    return np.stack(out)

  def embed_prepared(self, x: np.ndarray):
    """Features ``[N, D]`` (part-based methods: the dict of ``reid_jax.evaluation.features``) of
    prepared images ``x [N, H, W, 3]`` (e.g. from the eval loader)."""
    n = len(x)
    out = []
    for i in range(0, n, self.batch_size):
      chunk = x[i:i + self.batch_size]
      padded = min(self.batch_size, 1 << (len(chunk) - 1).bit_length())
      if padded > len(chunk):
        chunk = np.concatenate([chunk, np.zeros((padded - len(chunk), *chunk.shape[1:]),
                                                chunk.dtype)])
      f = feature_lib.to_host(self._features(self._state, jnp.asarray(chunk, jnp.float32)))
      out.append(feature_lib.map_rows(lambda a, m=min(self.batch_size, n - i): a[:m], f))
    return feature_lib.concatenate(out)

  def __call__(self, images: Iterable[Any]):
    """Features ``[N, D]`` float32 (or part features) of ``images`` (paths, PIL images, uint8
    arrays), decoded and prepared one batch at a time."""
    images = list(images)
    if not images:
      raise ValueError('no images given')
    return feature_lib.concatenate([
        self.embed_prepared(self.prepare(images[i:i + self.batch_size], start=i))
        for i in range(0, len(images), self.batch_size)])
