"""``reid_jax.export``: ONNX (run with onnxruntime) and TensorFlow SavedModel (loaded with
``tf.saved_model.load``) give the test features of ``models.embed`` with the config's flip and L2
settings, for a dynamic batch, uint8 and float32 inputs, vector methods (BoT, MPN) and a
part-based one (a tiny dummy method defined here returning ``{'feat', 'visibility'}``).

Reference, written here: NumPy ``(x / 255 - mean) / std``; ``models.embed`` of the images and of
their mirror; the flip rule (features added, visibility ANDed); NumPy L2 normalisation.
Tolerance: the issue's 1e-4 of the largest feature magnitude (ONNX Runtime and TensorFlow's XLA
run their own convolution algorithms)."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reid_jax import checkpoint, config_lib, export, models
from reid_jax.feature_extractor import FeatureExtractor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = 'export_test_parts'  # the dummy part-based method's registry name
P = 3


class DummyParts(nnx.Module):
  """A part-based method in miniature: a conv, mean-pooled over ``P`` horizontal stripes ->
  ``feat [B, P, 4]``; part ``p`` is visible iff the left half of stripe ``p`` is bright (mean of
  the normalised red channel > 0), so mirroring the image changes the visibility."""

  def __init__(self, model_config, num_classes, *, rngs):
    del model_config, num_classes
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)

  def __call__(self, x):
    b, h, w, _ = x.shape
    y = self.bn(nnx.relu(self.conv(x)))
    feat = y.reshape(b, P, h // P, w, 4).mean((2, 3))
    left = x[:, :, :w // 2, 0].reshape(b, P, (h // P) * (w // 2)).mean(-1)
    return {'feat': feat, 'visibility': left > 0}


if PARTS not in models.names():
  models.register_method(models.Method(name=PARTS, build=DummyParts,
                                       loss=lambda *args, **kwargs: None))


def method_config(name):
  config = config_lib.base_config()
  config.model = config_lib.model_config(name)
  config.model.update(depth=18, width=8)
  config.input.size = (64, 32)
  config.eval.update(flip='sum', normalize=True)
  if name == 'mpn':
    config.model.update(parts=3, part_channels=16, prior='stripes', channel_attention=False)
    config.input.size = (96, 32)
  if name == PARTS:
    config.input.size = (48, 32)
    config.eval.flip = 'mean'
  return config


@pytest.fixture(scope='module', params=['baseline', 'mpn', PARTS])
def extractor(request, tmp_path_factory):
  name = request.param
  config = method_config(name)
  model = models.build_model(config.model, 7, seed=11)
  # Non-trivial BatchNorm statistics, so eval mode differs from train mode.
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.BatchStat):
      var.value = var.value + 0.1 * (1 + (len(path) % 3))
  directory = tmp_path_factory.mktemp(name) / 'ckpt'
  checkpoint.save_model(model, directory, num_classes=7, model_config=config.model)
  return FeatureExtractor(config, str(directory)), model


def uint8_images(n, size, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
  # Stripes dark or bright on each half, so the dummy's visibility has a wide margin.
  h, w = size
  for i in range(n):
    for p in range(P):
      for half in range(2):
        images[i, p * h // P:(p + 1) * h // P, half * w // 2:(half + 1) * w // 2, 0] = (
            rng.integers(0, 40) if rng.random() < 0.5 else rng.integers(215, 256))
  return images


def normalized(config, images):
  x = images.astype(np.float32) / np.float32(255)
  return (x - np.float32(config.input.mean)) / np.float32(config.input.std)


def reference(model, config, images_u8):
  """The test feature written from its definition (module docstring)."""
  x = normalized(config, images_u8)
  a = models.embed(model, x)
  a = {k: np.asarray(v) for k, v in (a.items() if isinstance(a, dict) else [('feat', a)])}
  if config.eval.flip != 'none':
    b = models.embed(model, x[:, :, ::-1])
    b = b if isinstance(b, dict) else {'feat': b}
    a['feat'] = a['feat'] + np.asarray(b['feat'])
    if config.eval.flip == 'mean':
      a['feat'] = a['feat'] / 2
    if 'visibility' in a:
      a['visibility'] = a['visibility'] & np.asarray(b['visibility'])
  if config.eval.normalize:
    a['feat'] = a['feat'] / np.linalg.norm(a['feat'], axis=-1, keepdims=True)
  return a


def assert_outputs(got, want, name=''):
  assert sorted(got) == sorted(want), (sorted(got), sorted(want))
  feat = np.asarray(got['feat'])
  assert feat.shape == want['feat'].shape and feat.dtype == np.float32
  bound = 1e-4 * np.abs(want['feat']).max()
  np.testing.assert_allclose(feat, want['feat'], rtol=0, atol=bound, err_msg=name)
  if 'visibility' in want:
    vis = np.asarray(got['visibility'])
    assert vis.dtype == np.bool_
    np.testing.assert_array_equal(vis, want['visibility'])
    assert want['visibility'].any() and not want['visibility'].all()  # the test can fail


def test_feature_extractor_is_the_reference(extractor):
  """The function every exporter converts, run by jax: the reference within rounding."""
  fx, model = extractor
  images = uint8_images(3, fx.image_size, seed=1)
  want = reference(model, fx.config, images)
  got = fx.embed_prepared(normalized(fx.config, images))
  assert_outputs(got if isinstance(got, dict) else {'feat': got}, want)


@pytest.mark.parametrize('input_dtype', ['uint8', 'float32'])
def test_onnx(extractor, input_dtype, tmp_path):
  import onnxruntime as ort
  fx, model = extractor
  path = tmp_path / 'model.onnx'
  names = export.export_onnx(fx, str(path), input_dtype=input_dtype)
  assert names == (['feat', 'visibility'] if fx.config.model.name == PARTS else ['feat'])
  assert os.listdir(tmp_path) == ['model.onnx']  # no temporary left
  session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  (inp,) = session.get_inputs()
  assert inp.name == 'images' and inp.shape[1:] == [*fx.image_size, 3]
  assert not isinstance(inp.shape[0], int)  # dynamic batch
  for n, seed in ((1, 2), (3, 3)):
    images = uint8_images(n, fx.image_size, seed)
    x = images if input_dtype == 'uint8' else normalized(fx.config, images)
    got = dict(zip(names, session.run(names, {'images': x})))
    assert_outputs(got, reference(model, fx.config, images), f'batch {n}')


@pytest.mark.parametrize('input_dtype', ['uint8', 'float32'])
def test_savedmodel(extractor, input_dtype, tmp_path):
  import tensorflow as tf
  fx, model = extractor
  path = tmp_path / 'saved'
  export.export_savedmodel(fx, str(path), input_dtype=input_dtype, platforms=('cpu',))
  assert os.listdir(tmp_path) == ['saved']
  loaded = tf.saved_model.load(str(path))
  serve = loaded.signatures['serving_default']
  assert loaded.metadata['reid_jax.input_dtype'].numpy().decode() == input_dtype
  for n, seed in ((1, 4), (3, 5)):
    images = uint8_images(n, fx.image_size, seed)
    x = images if input_dtype == 'uint8' else normalized(fx.config, images)
    got = {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}
    assert_outputs(got, reference(model, fx.config, images), f'batch {n}')


CONFIG = """
from reid_jax import config_lib

def get_config(arg=None):
  config = config_lib.base_config()
  config.model.update(depth=18, width=8)
  config.input.size = (64, 32)
  config.eval.update(flip='sum', normalize=True)
  return config
"""


def cli(*args, pythonpath=()):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), ROOT]),
             JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  env.pop('REID_JAX_TRACEBACK', None)
  return subprocess.run([sys.executable, '-m', 'reid_jax.export', *map(str, args)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def assert_user_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in proc.stderr, (fragment, proc.stderr[-3000:])


@pytest.fixture(scope='module')
def cli_checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli')
  (root / 'tiny.py').write_text(CONFIG)
  config = method_config('baseline')
  model = models.build_model(config.model, 5, seed=3)
  checkpoint.save_model(model, root / 'ckpt', num_classes=5, model_config=config.model)
  return root, model, config


def test_cli_savedmodel_for_every_platform(cli_checkpoint, tmp_path):
  import tensorflow as tf
  root, model, config = cli_checkpoint
  out = tmp_path / 'bot_saved'
  proc = cli(f'--config={root / "tiny.py"}', f'--checkpoint={root / "ckpt"}',
             '--format=savedmodel', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'input images [batch, 64, 32, 3] uint8, outputs feat' in proc.stdout
  assert os.listdir(tmp_path) == ['bot_saved']
  images = uint8_images(2, (64, 32), seed=6)
  got = tf.saved_model.load(str(out)).serve(tf.constant(images))
  assert_outputs({k: v.numpy() for k, v in got.items()}, reference(model, config, images))


def test_cli_errors(cli_checkpoint, tmp_path):
  root, _, _ = cli_checkpoint
  base = (f'--config={root / "tiny.py"}', f'--out={tmp_path / "m.onnx"}')
  assert_user_error(cli(*base, f'--checkpoint={tmp_path / "nope"}', '--format=onnx'),
                    f"checkpoint directory '{tmp_path / 'nope'}' does not exist")
  assert_user_error(cli(*base, f'--checkpoint={root / "ckpt"}', '--format=tflite'),
                    '--format', 'onnx', 'savedmodel')
  # An environment without the exporter: a jax2onnx that cannot be imported.
  fake = tmp_path / 'site'
  (fake / 'jax2onnx').mkdir(parents=True)
  (fake / 'jax2onnx' / '__init__.py').write_text("raise ImportError('No module named jax2onnx')\n")
  assert_user_error(cli(*base, f'--checkpoint={root / "ckpt"}', '--format=onnx',
                        pythonpath=[fake]),
                    "--format=onnx needs the Python package 'jax2onnx'",
                    "pip install 'reid_jax[export]'")
  assert os.listdir(tmp_path) == ['site']  # nothing written
