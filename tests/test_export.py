"""``reid_jax.export``: ONNX (run with onnxruntime) and TensorFlow SavedModel (loaded with
``tf.saved_model.load``) give the test features of ``models.embed`` with the config's flip and L2
settings, for a dynamic batch, uint8 and float32 inputs, vector methods (BoT, MPN) and
part-based ones returning ``{'feat', 'visibility'}`` (DROP on a narrow HRNet, and a tiny dummy
method defined here).

Reference, written here: NumPy ``(x / 255 - mean) / std``; ``models.embed`` of the images and of
their mirror; the flip rule (features added, visibility ORed, as
``reid_jax.evaluation.features.combine_flip``); NumPy L2 normalisation (``x / max(|x|, 1e-12)``).
Tolerance: the issue's 1e-4 of the largest feature magnitude (ONNX Runtime and TensorFlow's XLA
run their own convolution algorithms)."""

import functools
import os
import runpy
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reid_jax import checkpoint, config_lib, export, models
from reid_jax.feature_extractor import FeatureExtractor, load_config

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
  if name == 'mpn':  # and the 'none' flip
    config.model.update(parts=3, part_channels=16, prior='stripes', channel_attention=False)
    config.input.size = (96, 32)
    config.eval.flip = 'none'
  if name == PARTS:
    config.input.size = (48, 32)
    config.eval.flip = 'mean'
  if name == 'drop':  # the recipe's test settings, every DROP piece on, a narrow HRNet
    config = runpy.run_path(os.path.join(ROOT, 'configs', 'drop.py'))['get_config']('synthetic')
    config.model.update(parts=4, dim=16, backbone='hrnet', hrnet_width=4, hrnet_stem_width=8,
                        hrnet_stage_modules=(1, 1, 1), hrnet_blocks=1, parsing_channels=8,
                        position_rows=16)
    config.input.size = (64, 32)
  return config


@pytest.fixture(autouse=True)
def scratch_temp_dir(tmp_path_factory, monkeypatch):
  """Third-party files written into the temp dir land in a pytest folder instead: ONNX Runtime's
  telemetry writes a session file ``.ses`` when it loads (it reads ``TMPDIR``), and TensorFlow's
  SavedModel writer the autograph source of its signature wrapper (removed only at exit)."""
  scratch = tmp_path_factory.mktemp('scratch')
  monkeypatch.setenv('TMPDIR', str(scratch))
  monkeypatch.setattr(tempfile, 'tempdir', str(scratch))


_BUILT = {}


def built(name, tmp_path_factory):
  """(extractor, model, checkpoint folder) of a method's tiny model, built once per session
  (random initialisation compiles a kernel per shape, the slowest part of this file)."""
  if name not in _BUILT:
    config = method_config(name)
    model = models.build_model(config.model, 7, seed=11)
    # Non-trivial BatchNorm statistics, so eval mode differs from train mode.
    for path, var in nnx.iter_graph(model):
      if isinstance(var, nnx.BatchStat):
        var[...] = var[...] + 0.1 * (1 + (len(path) % 3))
    if name == 'drop':
      # Part scores O(1) apart, parts 3 and 4 never winning a pixel: visible and invisible parts
      # with a wide margin (the initial scores differ by ~1e-3).
      clf = model.pixel_classifier.classifier
      clf.kernel[...] = clf.kernel[...] * 1000
      clf.bias[...] = jnp.array([0.0, 0.0, 0.0, -100.0, -100.0])
    directory = tmp_path_factory.mktemp(name) / 'ckpt'
    checkpoint.save_model(model, directory, num_classes=7, model_config=config.model)
    _BUILT[name] = FeatureExtractor(config, str(directory)), model, directory
  return _BUILT[name]


@pytest.fixture(scope='module')
def method(request, tmp_path_factory):
  """(extractor, images [3, H, W, 3] uint8, the reference outputs of the images) of a method."""
  extractor, model, _ = built(request.param, tmp_path_factory)
  images = uint8_images(3, extractor.image_size, seed=1)
  want = reference(model, extractor.config, images)
  if 'visibility' in want:  # visible and invisible parts, so the comparison can fail
    assert want['visibility'].any() and not want['visibility'].all()
  return extractor, images, want


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
      a['visibility'] = a['visibility'] | np.asarray(b['visibility'])
  if config.eval.normalize:  # torch F.normalize: a zero row (a part pooled from nothing) stays 0
    a['feat'] = a['feat'] / np.maximum(np.linalg.norm(a['feat'], axis=-1, keepdims=True), 1e-12)
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


def batches(extractor, images, want, input_dtype):
  """Two batch sizes (1 and 3) of the inputs in ``input_dtype``, with their reference rows (eval
  mode treats each image on its own)."""
  x = images if input_dtype == 'uint8' else normalized(extractor.config, images)
  for n in (1, 3):
    yield n, x[:n], {k: v[:n] for k, v in want.items()}


# Each format sees BoT, MPN, DROP (ONNX) and the dummy part-based method, uint8 and float32
# inputs, not every combination (the file stays near a minute of CPU);
# test_export_from_config_file adds BoT's SavedModel with uint8 input, lowered for every platform.
ONNX_CASES = [('baseline', 'uint8'), ('baseline', 'float32'), ('mpn', 'uint8'),
              (PARTS, 'float32'), ('drop', 'uint8')]
SAVEDMODEL_CASES = [('mpn', 'float32'), (PARTS, 'uint8')]


@pytest.mark.parametrize('method', [PARTS], indirect=True)
def test_feature_extractor_gives_part_dicts(method):
  """The function every exporter converts, run by jax: a dict of row blocks for part-based
  methods, padded batches cut back."""
  extractor, images, want = method
  got = extractor.embed_prepared(normalized(extractor.config, images))
  assert_outputs(got, want)


@pytest.mark.parametrize('method, input_dtype', ONNX_CASES, indirect=['method'])
def test_onnx(method, input_dtype, tmp_path):
  import onnxruntime as ort
  extractor, images, want = method
  path = tmp_path / 'model.onnx'
  names = export.export_onnx(extractor, str(path), input_dtype=input_dtype)
  assert names == sorted(want)
  assert os.listdir(tmp_path) == ['model.onnx']  # no temporary left
  session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  (inp,) = session.get_inputs()
  assert inp.name == 'images' and inp.shape[1:] == [*extractor.image_size, 3]
  assert not isinstance(inp.shape[0], int)  # dynamic batch
  assert inp.type == f'tensor({input_dtype.replace("float32", "float")})'
  for n, x, expected in batches(extractor, images, want, input_dtype):
    assert_outputs(dict(zip(names, session.run(names, {'images': x}))), expected, f'batch {n}')


@pytest.mark.parametrize('method, input_dtype', SAVEDMODEL_CASES, indirect=['method'])
def test_savedmodel(method, input_dtype, tmp_path):
  import tensorflow as tf
  extractor, images, want = method
  path = tmp_path / 'saved'
  export.export_savedmodel(extractor, str(path), input_dtype=input_dtype, platforms=('cpu',))
  assert os.listdir(tmp_path) == ['saved']
  loaded = tf.saved_model.load(str(path))
  serve = loaded.signatures['serving_default']
  assert loaded.metadata['reid_jax.input_dtype'].numpy().decode() == input_dtype
  for n, x, expected in batches(extractor, images, want, input_dtype):
    got = {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}
    assert_outputs(got, expected, f'batch {n}')


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
def config_file(tmp_path_factory):
  """A config file building the model of ``method_config('baseline')``."""
  path = tmp_path_factory.mktemp('cli') / 'tiny.py'
  path.write_text(CONFIG)
  assert load_config(str(path)) == method_config('baseline')
  return path


def test_export_from_config_file_for_every_platform(config_file, tmp_path, tmp_path_factory):
  """What the command line runs (``export.export``): the config file, the latest checkpoint
  step, a SavedModel with uint8 input lowered for CPU, CUDA and TPU (run here on CPU), replacing
  an old export."""
  import tensorflow as tf
  _, model, directory = built('baseline', tmp_path_factory)
  out = tmp_path / 'bot_saved'
  out.mkdir()
  (out / 'stale').write_text('a previous export')
  names = export.export(str(config_file), str(directory), 'savedmodel', str(out))
  assert names == ['feat'] and os.listdir(tmp_path) == ['bot_saved']
  assert 'stale' not in os.listdir(out)
  loaded = tf.saved_model.load(str(out))
  assert loaded.metadata['reid_jax.input_dtype'].numpy().decode() == 'uint8'
  images = uint8_images(3, (64, 32), seed=6)
  want = reference(model, method_config('baseline'), images)
  for n in (1, 3):
    got = {k: v.numpy() for k, v in loaded.serve(tf.constant(images[:n])).items()}
    assert_outputs(got, {k: v[:n] for k, v in want.items()}, f'batch {n}')


def test_cli_errors(config_file, tmp_path):
  base = (f'--config={config_file}', f'--out={tmp_path / "m.onnx"}')
  assert_user_error(cli(*base, f'--checkpoint={tmp_path / "nope"}', '--format=onnx'),
                    f"checkpoint directory '{tmp_path / 'nope'}' does not exist")
  assert_user_error(cli(*base, f'--checkpoint={tmp_path}', '--format=tflite'),
                    '--format', 'onnx', 'savedmodel')
  # An environment without the exporter: a jax2onnx that cannot be imported.
  fake = tmp_path / 'site'
  (fake / 'jax2onnx').mkdir(parents=True)
  (fake / 'jax2onnx' / '__init__.py').write_text("raise ImportError('No module named jax2onnx')\n")
  assert_user_error(cli(*base, f'--checkpoint={tmp_path}', '--format=onnx', pythonpath=[fake]),
                    "--format=onnx needs the Python package 'jax2onnx'",
                    "pip install 'reid_jax[export]'")
  assert os.listdir(tmp_path) == ['site']  # nothing written


@pytest.mark.parametrize('window, stride, padding, ceil_mode, hw', [
    (3, 2, 1, False, (9, 6)), (3, 2, 0, True, (8, 5)), (2, 2, 0, False, (7, 7))])
def test_portable_max_pool_is_torch_max_pool(window, stride, padding, ceil_mode, hw):
  """The form ONNX export traces (strided slices) against PyTorch's ``max_pool2d``: exact, as a
  maximum involves no rounding."""
  import torch

  from reid_jax.models import layers
  x = np.random.default_rng(0).standard_normal((2, *hw, 3)).astype(np.float32)
  want = torch.nn.functional.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), window, stride,
                                        padding, ceil_mode=ceil_mode).permute(0, 2, 3, 1).numpy()
  pool = functools.partial(layers.max_pool, window=window, stride=stride, padding=padding,
                           ceil_mode=ceil_mode)
  with layers.portable_max_pool():
    got = np.asarray(pool(x))
    assert 'reduce_window' not in str(jax.make_jaxpr(lambda v: pool(v))(x))
  assert 'reduce_window' in str(jax.make_jaxpr(lambda v: pool(v))(x))  # a fresh trace
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(pool(x)), want)
