"""``python -m reid_jax.convert --config=configs/baseline.py --torch_checkpoint=FILE --out=DIR``.

Reads a PyTorch checkpoint without running pickled code, copies it into the config's model and
writes an orbax checkpoint (step 0) that training (``--config.init_checkpoint=DIR``) and evaluation
(``--checkpoint=DIR``) restore. The classifier width is taken from the checkpoint.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from reid_jax import checkpoint, cli, fileio, models
from reid_jax.convert import load_torch_checkpoint, load_torch_weights

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Model config file (configs/*.py).',
                                          lock_config=True)
_TORCH_CHECKPOINT = flags.DEFINE_string('torch_checkpoint', None, 'PyTorch .pth/.pth.tar file.')
_OUT = flags.DEFINE_string('out', None, 'Output orbax checkpoint directory (must not exist).')
_EXCLUDE = flags.DEFINE_list('exclude', [], 'Glob patterns of PyTorch keys to leave at init.')


def classifier_rows(state_dict, model_config) -> int:
  """Number of classes, read from the checkpoint's classifier weight."""
  key = model_config.get('classifier_key', 'classifier.weight')
  if key not in state_dict:
    raise KeyError(f'{_TORCH_CHECKPOINT.value}: no {key!r} to read the number of classes from; '
                   f'keys look like {sorted(state_dict)[:5]}')
  return int(state_dict[key].shape[0])


def main(argv):
  del argv
  config = _CONFIG.value
  for name, flag in (('--config', config), ('--torch_checkpoint', _TORCH_CHECKPOINT.value),
                     ('--out', _OUT.value)):
    if flag is None:
      raise cli.UserError(f'{name} is required')
  out = fileio.resolve(_OUT.value)
  if out.exists() and any(out.iterdir()):
    raise cli.UserError(f'--out={out} exists and is not empty; choose a new directory')
  state_dict = load_torch_checkpoint(_TORCH_CHECKPOINT.value)
  num_classes = classifier_rows(state_dict, config.model)
  if _EXCLUDE.value:
    model = models.build_model(config.model, num_classes)  # excluded weights keep their init
  else:
    # Abstract build: the checkpoint fills every variable, so the slow random init is skipped.
    model = nnx.eval_shape(lambda: models.build_model(config.model, num_classes))
  report = load_torch_weights(model, state_dict, exclude=_EXCLUDE.value)
  logging.info('%s', report)
  print(report)
  path = checkpoint.save_model(
      model, out, num_classes=num_classes, model_config=config.model,
      extra_meta={'source': os.path.abspath(_TORCH_CHECKPOINT.value)})
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
