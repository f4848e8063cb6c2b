"""reid_jax's TFDS builders leave nothing in the temp dir and look nothing up on GCS.

TFDS's ``DatasetInfo.initialize_from_bucket`` (called for every builder whose dataset is not built
yet) makes a ``tmp*tfds`` folder in the temp dir that it never removes. tests/conftest.py points
the temp dir of the session to a private folder and fails the session on any leftover there.
"""

import os
import tempfile

import tensorflow_datasets as tfds

from reid_jax import prepare
from tests.conftest import leftovers


def tfds_temp_folders():
  return {e for e in leftovers(tempfile.gettempdir()) if e.startswith('tmp') and e.endswith('tfds')}


def test_builders_do_not_leave_tfds_temp_folders(tmp_path):
  before = tfds_temp_folders()
  builders = [prepare.builder_class(name)(data_dir=str(tmp_path / 'unbuilt'))
              for name in ('market1501', 'dukemtmc_reid', 'synthetic_reid')]
  prepare.prepare('synthetic_reid/tiny', data_dir=str(tmp_path / 'built'))
  assert tfds_temp_folders() == before

  # The reference behaviour, TFDS's own method on the same DatasetInfo, does leave one.
  tfds.core.DatasetInfo.initialize_from_bucket(builders[0].info)
  made = tfds_temp_folders() - before
  assert len(made) == 1
  os.rmdir(os.path.join(tempfile.gettempdir(), made.pop()))
