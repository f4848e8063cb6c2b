"""TFDS builder of ``synthetic_reid``: a thin wrapper over ``reid_jax.data.synthetic``.

Configs: ``demo`` (default, 128x64, about 4k images), ``occluded`` (demo with occluders),
``tiny`` and ``tiny_occluded`` (64x32, about 200 images, for tests), ``tiny_other`` (64x32, 6 + 6
identities: training and testing across datasets). Build with
``python -m reid_jax.prepare synthetic_reid/tiny`` or ``builder.download_and_prepare()``.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from reid_jax.data import synthetic
from reid_jax_datasets._common import LocalInfoMixin

SEED = 0  # the dataset is a fixed artefact: one seed, versioned with the generator

_TINY = synthetic.SyntheticSpec(
    num_train_ids=10, num_test_ids=10, num_cameras=4, height=64, width=32,
    cameras_per_id=(2, 3), images_per_visit=(3, 5), num_distractors=10, num_junk=4)
_DEMO = synthetic.SyntheticSpec(
    num_train_ids=150, num_test_ids=150, num_cameras=6, height=128, width=64,
    cameras_per_id=(2, 4), images_per_visit=(3, 6), num_distractors=150, num_junk=50)


@dataclasses.dataclass
class SyntheticReidConfig(tfds.core.BuilderConfig):
  spec: synthetic.SyntheticSpec = _DEMO


def _png(array: np.ndarray) -> bytes:
  # Encoding here (fast zlib level) keeps TFDS from going through TensorFlow for NumPy arrays.
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='png', compress_level=1)
  return buf.getvalue()


class SyntheticReid(LocalInfoMixin, tfds.core.GeneratorBasedBuilder):
  """Synthetic persons seen by several cameras, with parsing masks and identity textures."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticReidConfig(name='demo', description='128x64, 300 ids, ~4k images.', spec=_DEMO),
      SyntheticReidConfig(name='occluded', description='demo with occluders over body parts.',
                          spec=dataclasses.replace(_DEMO, occluded=True)),
      SyntheticReidConfig(name='tiny', description='64x32, 20 ids, ~200 images (tests).',
                          spec=_TINY),
      SyntheticReidConfig(name='tiny_occluded', description='tiny with occluders.',
                          spec=dataclasses.replace(_TINY, occluded=True)),
      SyntheticReidConfig(name='tiny_other', description='64x32, 6 + 6 ids, tiny with another '
                          'number of identities (tests across datasets).',
                          spec=dataclasses.replace(_TINY, num_train_ids=6, num_test_ids=6,
                                                   num_distractors=4, num_junk=2)),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
            'parsing': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'texture': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
            'pid': np.int32,
            'camid': np.int32,
            'label': np.int32,
            'filename': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(
            num_train_ids=spec.num_train_ids, num_cameras=spec.num_cameras,
            parts=list(synthetic.PARTS)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in ('train', 'query', 'gallery')}

  def _generate_examples(self, split):
    textures = {}  # one PNG per person, shared by all its images
    spec = self.builder_config.spec
    for key, ex in synthetic.examples(spec, SEED, split):
      tex_key = ex['texture'].tobytes()
      if tex_key not in textures:
        textures[tex_key] = _png(ex['texture'])
      yield key, dict(ex, image=_png(ex['image']), parsing=_png(ex['parsing']),
                      texture=textures[tex_key])
