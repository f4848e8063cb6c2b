"""``python -m reid_jax.convert --config=configs/baseline.py --torch_checkpoint=FILE --out=DIR``.

Reads a PyTorch checkpoint without running pickled code, copies it into the config's model and
writes an orbax checkpoint (step 0) that training (``--config.init_checkpoint=DIR``) and evaluation
(``--checkpoint=DIR``) restore.

* The classifier width is taken from the checkpoint (its first identity-classifier key in the
  model's key map, or ``config.model.classifier_key``). ``--num_classes=N`` builds the model with
  ``N`` classes instead; when the checkpoint's classifiers have another number of rows (a model
  trained on another dataset, loaded for testing), they are left at their initial value and
  reported (``load_torch_weights(..., skip_mismatched_classifiers=True)``).
* ``--backbone_only`` loads only the ResNet backbone (``load_backbone``: a torchvision ResNet, or
  MPN's IDE snapshot ``data/1501.pth`` with its ``model.*`` keys; the prefix is found in the
  file) into a freshly initialised model (``config.seed``) with ``--num_classes`` classes (the
  training dataset's), e.g. ``--config=configs/mpn.py --torch_checkpoint=1501.pth
  --backbone_only --num_classes=751``, then train with ``--config.init_checkpoint=DIR``.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from reid_jax import checkpoint, cli, fileio, models
from reid_jax.convert import keymaps, load_backbone, load_torch_checkpoint, load_torch_weights

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Model config file (configs/*.py).',
                                          lock_config=True)
_TORCH_CHECKPOINT = flags.DEFINE_string('torch_checkpoint', None, 'PyTorch .pth/.pth.tar file.')
_OUT = flags.DEFINE_string('out', None, 'Output orbax checkpoint directory (must not exist).')
_EXCLUDE = flags.DEFINE_list('exclude', [], 'Glob patterns of PyTorch keys to leave at init.')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', 0, 'Classifier rows of the model (0: the checkpoint\'s). Classifiers of '
    'another size in the checkpoint are left at their initial value and reported.')
_BACKBONE_ONLY = flags.DEFINE_bool(
    'backbone_only', False, 'Load only the ResNet backbone (e.g. MPN\'s IDE snapshot); the rest '
    'of the model is initialised with config.seed. Needs --num_classes.')


def classifier_rows(state_dict, model_config) -> int:
  """Number of classes, read from the checkpoint's classifier weight: ``classifier_key`` of the
  model config, else the first identity classifier of the model's key map."""
  key = model_config.get('classifier_key')
  if key is None:
    probe = nnx.eval_shape(lambda: models.build_model(model_config, 1))
    candidates = [k for k, t in keymaps.keymap_for(probe).items()
                  if t.classifier and t.kind == keymaps.LINEAR]
    key = next((k for k in candidates if k in state_dict), candidates[0] if candidates else None)
  if key not in state_dict:
    raise KeyError(f'{_TORCH_CHECKPOINT.value}: no {key!r} to read the number of classes from; '
                   f'keys look like {sorted(state_dict)[:5]}; pass --num_classes')
  return int(state_dict[key].shape[0])


def main(argv):
  del argv
  config = _CONFIG.value
  for name, flag in (('--config', config), ('--torch_checkpoint', _TORCH_CHECKPOINT.value),
                     ('--out', _OUT.value)):
    if flag is None:
      raise cli.UserError(f'{name} is required')
  if _BACKBONE_ONLY.value and not _NUM_CLASSES.value:
    raise cli.UserError('--backbone_only needs --num_classes (the training dataset\'s classes)')
  out = fileio.resolve(_OUT.value)
  if out.exists() and any(out.iterdir()):
    raise cli.UserError(f'--out={out} exists and is not empty; choose a new directory')
  state_dict = load_torch_checkpoint(_TORCH_CHECKPOINT.value)
  if _BACKBONE_ONLY.value:
    num_classes = _NUM_CLASSES.value
    model = models.build_model(config.model, num_classes, seed=config.get('seed', 0))
    report = load_backbone(model, state_dict, exclude=_EXCLUDE.value)
  else:
    num_classes = _NUM_CLASSES.value or classifier_rows(state_dict, config.model)
    concrete = bool(_EXCLUDE.value or _NUM_CLASSES.value)
    if concrete:
      # Excluded or skipped weights keep their init.
      model = models.build_model(config.model, num_classes, seed=config.get('seed', 0))
    else:
      # Abstract build: the checkpoint fills every variable, so the slow random init is skipped.
      model = nnx.eval_shape(lambda: models.build_model(config.model, num_classes))
    report = load_torch_weights(model, state_dict, exclude=_EXCLUDE.value,
                                skip_mismatched_classifiers=concrete)
  logging.info('%s', report)
  print(report)
  path = checkpoint.save_model(
      model, out, num_classes=num_classes, model_config=config.model,
      extra_meta={'source': os.path.abspath(_TORCH_CHECKPOINT.value),
                  'backbone_only': _BACKBONE_ONLY.value})
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
