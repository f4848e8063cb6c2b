"""Shared by the data tests: the ``synthetic_reid/tiny`` dataset, built once per test process."""

import functools
import shutil
import tempfile

from reid_jax import config_lib

_CREATED = []


@functools.lru_cache(maxsize=None)
def data_dir(config: str = 'tiny') -> str:
  """A temporary TFDS data_dir holding ``synthetic_reid/<config>`` in array_record format."""
  from reid_jax_datasets.synthetic_reid import SyntheticReid  # pylint: disable=g-import-not-at-top
  path = tempfile.mkdtemp(prefix=f'synthetic_reid_{config}_')
  _CREATED.append(path)
  SyntheticReid(config=config, data_dir=path, file_format='array_record').download_and_prepare()
  return path


def cleanup() -> None:
  """Removes the data dirs built so far (tests/conftest.py calls it when the session ends)."""
  data_dir.cache_clear()
  while _CREATED:
    shutil.rmtree(_CREATED.pop(), ignore_errors=True)


def input_config(**overrides):
  """``config.input`` for the tiny synthetic dataset (64x32, P=4, K=4), with overrides."""
  c = config_lib.input_config()
  c.dataset = 'synthetic_reid/tiny'
  c.size = (64, 32)
  c.p, c.k = 4, 4
  c.pad = 4
  c.threads = 2
  c.update(overrides)
  return c
