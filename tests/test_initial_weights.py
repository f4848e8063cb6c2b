"""Initial weights of a fresh run: an ImageNet backbone (``config.model.pretrained``, a PyTorch
file) into ``model.base``, read at a fresh start only; ``config.init_checkpoint`` from a dataset
with another number of identities (the classifier re-initialised); evaluation across datasets.

References: the PyTorch ResNet of tests/torch_reference.py (random weights and BN statistics)
with torchvision's key names, mapped to NNX attributes here by hand; orbax checkpoints read back
without reid_jax (tests/test_train.final_state); the NumPy Market protocol (tests/eval_reference).
"""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from reid_jax import train
from tests.test_train import ROOT, final_state, load_config, reference_metrics, tiny_config_file
from tests.torch_reference import TorchResNet, randomize_

TINY_CLASSES, OTHER_CLASSES = 10, 6  # synthetic_reid/tiny and synthetic_reid/tiny_other


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('init')
  return root, tiny_config_file(root, ('synthetic_reid/tiny', 'synthetic_reid/tiny_other'))


def torchvision_state_dict(seed=0, ibn=False, prefix=''):
  """A torchvision-layout ResNet-18 (width 8) state dict with random values, plus ``fc.*``."""
  net = randomize_(TorchResNet(depth=18, width=8, ibn=ibn), seed=seed)
  sd = {prefix + k: v for k, v in net.state_dict().items()}
  sd[prefix + 'fc.weight'] = torch.randn(1000, net.out_features)
  sd[prefix + 'fc.bias'] = torch.randn(1000)
  return sd


def model_value(base, key):
  """The NNX value that torch key ``key`` names, found by walking attributes: ``layer1.0.conv1``
  is ``base.layer1[0].conv1``, ``downsample.0/1`` is ``downsample_conv/bn``, weight is a conv's
  ``kernel`` or a norm's ``scale``, running_mean/var are ``mean/var``."""
  *mods, leaf = key.split('.')
  obj, i = base, 0
  while i < len(mods):
    if mods[i] == 'downsample':
      obj = getattr(obj, 'downsample_conv' if mods[i + 1] == '0' else 'downsample_bn')
      i += 2
      continue
    obj = obj[int(mods[i])] if mods[i].isdigit() else getattr(obj, mods[i])
    i += 1
  name = {'running_mean': 'mean', 'running_var': 'var', 'bias': 'bias'}.get(leaf)
  name = name or ('kernel' if isinstance(obj, nnx.Conv) else 'scale')
  return np.asarray(getattr(obj, name)[...])


def fresh_model(config, num_classes, fresh=True):
  mesh = train.make_mesh(config)
  with jax.set_mesh(mesh):
    graphdef, state, _ = train.init_state(config, num_classes, mesh, fresh=fresh)
  return train.model_from_state(graphdef, state)


def flat(module):
  leaves = jax.tree_util.tree_leaves_with_path(nnx.state(module))
  return {path_name(p): np.asarray(v) for p, v in leaves}


@pytest.mark.parametrize('ibn,prefix', [(False, ''), (True, ''), (False, 'model.')])
def test_pretrained_backbone_is_loaded_exactly_and_heads_keep_their_init(setup, tmp_path, ibn,
                                                                         prefix):
  """torchvision ResNet, IBN-a (IBN-Net's ``bn1.IN/BN`` layout) and an IDE snapshot whose ResNet
  is ``self.model`` (MPN's ``data/1501.pth``): every backbone tensor lands in ``model.base``
  exactly (conv kernels transposed OIHW -> HWIO); the BNNeck and classifier keep the init that
  the same seed gives without ``pretrained``."""
  _, cfg = setup
  sd = torchvision_state_dict(ibn=ibn, prefix=prefix)
  if prefix:
    sd['classifier.weight'] = torch.randn(751, 512)  # the snapshot's own head: unused
  path = tmp_path / 'resnet18.pth'
  torch.save(sd, path)
  config = load_config(cfg, **{'model.pretrained': str(path), 'model.ibn': ibn})
  model = fresh_model(config, TINY_CLASSES)
  loaded = 0
  for full, value in sd.items():
    if not full.startswith(prefix) or full.endswith('num_batches_tracked'):
      continue
    key = full[len(prefix):]
    if key.startswith('fc.'):
      continue
    expected = value.numpy()
    expected = expected.transpose(2, 3, 1, 0) if expected.ndim == 4 else expected
    np.testing.assert_array_equal(model_value(model.base, key), expected, err_msg=key)
    loaded += 1
  assert loaded == sum(1 for k in TorchResNet(depth=18, width=8, ibn=ibn).state_dict()
                       if not k.endswith('num_batches_tracked'))
  init = fresh_model(load_config(cfg, **{'model.ibn': ibn}), TINY_CLASSES)
  got, ref = flat(model.head), flat(init.head)
  assert sorted(got) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  assert not np.array_equal(model_value(model.base, 'conv1.weight'),
                            model_value(init.base, 'conv1.weight'))


def test_pretrained_errors_name_the_key_and_the_file(setup, tmp_path):
  _, cfg = setup
  sd = torchvision_state_dict()
  missing = dict(sd)
  del missing['layer3.1.bn2.running_var']
  torch.save(missing, tmp_path / 'missing.pth')
  config = load_config(cfg, **{'model.pretrained': str(tmp_path / 'missing.pth')})
  with pytest.raises(ValueError, match=r'config\.model\.pretrained=.*missing\.pth: .*'
                                       r'layer3\.1\.bn2\.running_var'):
    fresh_model(config, TINY_CLASSES)
  wide = dict(sd, **{'layer2.0.conv1.weight': torch.zeros(16, 8, 3, 3, 3)})
  torch.save(wide, tmp_path / 'wide.pth')
  config = load_config(cfg, **{'model.pretrained': str(tmp_path / 'wide.pth')})
  with pytest.raises(ValueError, match=r'wide\.pth: shape mismatch .*layer2\.0\.conv1\.weight'):
    fresh_model(config, TINY_CLASSES)
  # Not read on a resume (fresh=False): a missing file is then no error.
  config = load_config(cfg, **{'model.pretrained': str(tmp_path / 'nope.pth')})
  fresh_model(config, TINY_CLASSES, fresh=False)
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    fresh_model(config, TINY_CLASSES)


def test_random_init_on_a_real_benchmark_warns(setup, caplog):
  _, cfg = setup
  model = fresh_model(load_config(cfg), TINY_CLASSES, fresh=False)
  with caplog.at_level(logging.WARNING):
    train.load_initial_weights(model, load_config(cfg))  # synthetic: no warning
    assert 'ImageNet' not in caplog.text
    train.load_initial_weights(model, load_config(cfg, **{'input.dataset': 'market1501'}))
  assert 'training market1501 from random weights' in caplog.text
  assert 'config.model.pretrained' in caplog.text


# ------------------------------------------------------------------------------- subprocess runs
def env(root):
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=1',
              JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')


def run_main(root, cfg, workdir, *extra):
  proc = subprocess.run([sys.executable, '-m', 'reid_jax.main', f'--config={cfg}',
                         f'--workdir={workdir}', *extra], cwd=ROOT, env=env(root),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def pretrained_run(setup, tmp_path_factory):
  """Two steps on synthetic_reid/tiny from a torchvision file; the file is deleted afterwards."""
  root, cfg = setup
  path = tmp_path_factory.mktemp('weights') / 'resnet18-random.pth'
  torch.save(torchvision_state_dict(seed=3), path)
  workdir = root / 'pretrained'
  proc = run_main(root, cfg, workdir, f'--config.model.pretrained={path}',
                  '--config.max_steps=2')
  os.remove(path)
  return workdir, path, proc


def test_pretrained_is_read_at_a_fresh_start_and_never_on_resume(setup, pretrained_run):
  root, cfg = setup
  workdir, path, first = pretrained_run
  n = sum(1 for k in TorchResNet(depth=18, width=8).state_dict()
          if not k.endswith('num_batches_tracked'))
  assert f'config.model.pretrained: loaded {n} tensors from {path} into model.base' in first.stderr
  assert '2 unused keys: fc.bias, fc.weight' in first.stderr
  # The file is gone: a resume that tried to read it would fail.
  again = run_main(root, cfg, workdir, f'--config.model.pretrained={path}',
                   '--config.max_steps=3')
  assert 'resumed from step 2' in again.stderr
  assert 'config.model.pretrained' not in again.stderr
  assert final_state(str(workdir))[0] == 3


def stored_model(workdir):
  """``{'base/conv1/kernel/value': array}``: the newest checkpoint's ``model`` item as orbax alone
  reads it (tests/test_train.final_state), keyed like ``path_name`` of the NNX state."""
  _, arrays = final_state(str(workdir))
  out = {}
  for key, value in arrays.items():
    parts = re.findall(r"\['?([^'\]]*)'?\]", key)
    if parts[0] == 'model':
      out['/'.join(parts[1:])] = value
  return out


def path_name(path):
  return jax.tree_util.keystr(path, simple=True, separator='/')


def model_from_orbax(config, ckpt_workdir):
  """The newest checkpoint's model, from its arrays as orbax alone reads them."""
  from reid_jax import models
  arrays = stored_model(ckpt_workdir)
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: models.build_model(config.model, TINY_CLASSES)))
  values = [arrays[path_name(p)] for p, _ in jax.tree_util.tree_leaves_with_path(abstract)]
  return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(abstract), values))


def test_eval_on_another_dataset(setup, pretrained_run):
  """A checkpoint trained on tiny (10 classes) evaluates on tiny_other (6 other identities): the
  classifier is not needed, and the metrics are those of the NumPy reference."""
  root, cfg = setup
  workdir = pretrained_run[0]
  out = root / 'eval_other'
  run_main(root, cfg, out, '--mode=eval', f'--checkpoint={workdir / "checkpoints"}',
           '--config.input.dataset=synthetic_reid/tiny_other')
  got = json.loads((out / 'eval_metrics.json').read_text())
  config = load_config(cfg, **{'input.dataset': 'synthetic_reid/tiny_other'})
  ref, _ = reference_metrics(model_from_orbax(config, workdir), config)
  for k in ref:  # float32 features: rankings agree; metrics are ratios of small counts
    np.testing.assert_allclose(got[k], ref[k], atol=1e-3, err_msg=k)


def test_init_checkpoint_from_another_dataset_reinitialises_only_the_classifier(setup,
                                                                              pretrained_run):
  root, cfg = setup
  workdir = pretrained_run[0]
  ckpt = str(workdir / 'checkpoints')
  config = load_config(cfg, **{'input.dataset': 'synthetic_reid/tiny_other',
                               'init_checkpoint': ckpt})
  model = fresh_model(config, OTHER_CLASSES)
  init = fresh_model(load_config(cfg), OTHER_CLASSES)  # same seed, no init_checkpoint
  arrays = stored_model(workdir)
  got, fresh = flat(model), flat(init)
  classifier = [k for k in got if 'classifier' in k]
  assert classifier and all(got[k].shape[-1] == OTHER_CLASSES for k in classifier)
  for k, v in got.items():
    if k in classifier:
      np.testing.assert_array_equal(v, fresh[k], err_msg=k)
    else:
      np.testing.assert_array_equal(v, arrays[k], err_msg=k)
  # pretrained is not read when init_checkpoint is set (the file no longer exists).
  config.model.pretrained = str(pretrained_run[1])
  fresh_model(config, OTHER_CLASSES)

  proc = run_main(root, cfg, root / 'finetune', f'--config.init_checkpoint={ckpt}',
                  '--config.input.dataset=synthetic_reid/tiny_other', '--config.max_steps=1',
                  f'--config.model.pretrained={pretrained_run[1]}')
  assert 'trained with another number of classes: re-initialised head/classifier/kernel' in (
      proc.stderr)
  dim = 8 * 8  # ResNet-18 of width 8: 64 channels out of layer4
  assert f'({dim}, {TINY_CLASSES}) -> ({dim}, {OTHER_CLASSES})' in proc.stderr
  assert 'is not read' in proc.stderr
  assert final_state(str(root / 'finetune'))[0] == 1


def test_init_checkpoint_shape_mismatch_outside_the_classifier_is_an_error(setup, tmp_path):
  """Only classifier variables may differ; e.g. a BNNeck of another width names its variable."""
  from reid_jax import checkpoint, models
  _, cfg = setup
  config = load_config(cfg)
  src = models.build_model(config.model, TINY_CLASSES)
  src.head.bottleneck.mean.set_value(np.zeros(7, np.float32))
  checkpoint.save_model(src, tmp_path / 'ckpt', num_classes=TINY_CLASSES,
                        model_config=config.model)
  with pytest.raises(ValueError, match=r'head/bottleneck/mean'):
    fresh_model(load_config(cfg, init_checkpoint=str(tmp_path / 'ckpt')), OTHER_CLASSES)
