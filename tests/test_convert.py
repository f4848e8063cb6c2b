"""PyTorch checkpoint import: the safe reader, wrappers, key-map errors, the CLI."""

import os
import pickle
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
import pytest
import torch

from reid_jax import checkpoint, models
from reid_jax.convert import UnsafeCheckpointError, load_torch_checkpoint, load_torch_weights
from tests.torch_reference import (TorchBoT, TorchResNet, assert_close_rel, nchw, numpy_state_dict,
                                   randomize_)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depth=18, width=8)


def tiny_config(**kw):
  return ml_collections.ConfigDict(dict(name='baseline', stem_relu=False, last_stride=1,
                                        **TINY, **kw))


@pytest.fixture(scope='module')
def tiny_bot():
  return randomize_(TorchBoT(5, **TINY)).eval()


@pytest.mark.parametrize('use_torch', [True, False])
@pytest.mark.parametrize('zip_format', [True, False])
@pytest.mark.parametrize('wrapper', ['bare', 'model', 'state_dict', 'dataparallel'])
def test_load_torch_checkpoint_forms(tmp_path, tiny_bot, use_torch, zip_format, wrapper):
  sd = tiny_bot.state_dict()
  if wrapper == 'dataparallel':
    obj = {'module.' + k: v for k, v in sd.items()}
  elif wrapper == 'bare':
    obj = sd
  else:
    obj = {wrapper: sd, 'epoch': 7, 'optimizer': {'lr': 0.1}}
  path = tmp_path / 'ckpt.pth'
  torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
  got = load_torch_checkpoint(path, use_torch=use_torch)
  assert sorted(got) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)


class _RunsCode:
  """An object whose unpickling would create a file: the loader must never let that happen."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('use_torch', [True, False])
def test_refuses_pickle_that_runs_code(tmp_path, use_torch):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  # A .pth zip whose data.pkl calls os.system when unpickled.
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', pickle.dumps({'x': _RunsCode(marker)}, protocol=2))
    zf.writestr('archive/version', '3\n')
  with pytest.raises(UnsafeCheckpointError, match='system'):
    load_torch_checkpoint(path, use_torch=use_torch)
  assert not marker.exists()


@pytest.mark.parametrize('use_torch', [True, False])
def test_refuses_whole_module_with_advice(tmp_path, use_torch):
  path = tmp_path / 'model.pth'
  torch.save(TorchResNet(**TINY), path)
  with pytest.raises(UnsafeCheckpointError, match=r'state_dict\(\)'):
    load_torch_checkpoint(path, use_torch=use_torch)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'junk.pth'
  path.write_bytes(b'hello')
  with pytest.raises(ValueError, match='junk.pth'):
    load_torch_checkpoint(path, use_torch=False)
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    load_torch_checkpoint(tmp_path / 'nope.pth')


def test_missing_key_and_shape_mismatch_name_the_key(tiny_bot):
  model = models.build_model(tiny_config(), 5)
  sd = numpy_state_dict(tiny_bot)
  before = np.asarray(model.base.conv1.kernel[...]).copy()
  broken = dict(sd)
  del broken['base.layer2.0.downsample.1.running_var']
  with pytest.raises(KeyError, match=r'base\.layer2\.0\.downsample\.1\.running_var'):
    load_torch_weights(model, broken)
  broken = dict(sd)
  broken['base.layer1.1.conv2.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r'base\.layer1\.1\.conv2\.weight'):
    load_torch_weights(model, broken)
  # A failed load changes nothing.
  np.testing.assert_array_equal(np.asarray(model.base.conv1.kernel[...]), before)


def test_unused_keys_and_exclude(tiny_bot):
  sd = numpy_state_dict(tiny_bot)
  sd['center_loss.centers'] = np.zeros((5, 64), np.float32)
  model = models.build_model(tiny_config(), 3)  # another dataset: 3 classes
  init_classifier = np.asarray(model.head.classifier.kernel[...]).copy()
  report = load_torch_weights(model, sd, exclude=['classifier.*'])
  assert report.unused == ['center_loss.centers']
  assert report.excluded == ['classifier.weight']
  np.testing.assert_array_equal(np.asarray(model.head.classifier.kernel[...]), init_classifier)
  np.testing.assert_array_equal(np.asarray(model.base.conv1.kernel[...]),
                                sd['base.conv1.weight'].transpose(2, 3, 1, 0))


def test_torchvision_resnet_into_backbone_reports_fc_unused():
  tv = randomize_(TorchResNet(**TINY))
  sd = numpy_state_dict(tv)
  sd['fc.weight'] = np.zeros((1000, 64), np.float32)
  sd['fc.bias'] = np.zeros((1000,), np.float32)
  model = models.build_model(tiny_config(), 5)
  report = load_torch_weights(model.base, sd)
  assert report.unused == ['fc.bias', 'fc.weight']
  assert len(report.loaded) == sum(not k.endswith('num_batches_tracked') for k in tv.state_dict())


def test_convert_cli_writes_checkpoint_that_embeds_like_torch(tmp_path, tiny_bot):
  src = tmp_path / 'bot.pth'
  torch.save({'model': tiny_bot.state_dict()}, src)
  cfg_file = tmp_path / 'tiny.py'
  cfg_file.write_text(
      'from reid_jax import config_lib\n'
      'def get_config(arg=None):\n'
      '  c = config_lib.base_config()\n'
      "  c.model.update(depth=18, width=8, stem_relu=False)\n"
      '  return c\n')
  out = tmp_path / 'ckpt'
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'reid_jax.convert', f'--config={cfg_file}',
                  f'--torch_checkpoint={src}', f'--out={out}'], check=True, env=env, cwd=ROOT,
                 capture_output=True)
  config = ml_collections.ConfigDict({'name': 'baseline', **TINY, 'stem_relu': False,
                                      'last_stride': 1})
  model = checkpoint.restore_model(config, str(out))
  assert checkpoint.read_meta(str(out))['num_classes'] == 5
  x = np.random.RandomState(0).randn(2, 64, 32, 3).astype(np.float32)
  with torch.no_grad():
    ref = tiny_bot(nchw(x)).numpy()
  got = np.asarray(models.embed(model, x))
  assert_close_rel(got, ref)
