"""``reid_jax.FeatureExtractor``: paths, PIL images and uint8 arrays of any size -> the features
``--mode=eval`` computes, batched, compiled once per padded batch shape.

Reference: PIL resize and the normalisation written out here, ``models.embed`` one image at a
time on the image and its mirror (flip 'sum'), NumPy L2 normalisation."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reid_jax
from reid_jax import checkpoint, models
from reid_jax.feature_extractor import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
from reid_jax import config_lib

def get_config(arg=None):
  config = config_lib.base_config()
  config.model.update(depth=18, width=8, stem_relu=False)
  config.input.update(size=(64, 32), test_interpolation='bicubic')
  config.eval.update(flip='sum', normalize=True)
  return config
"""


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  root = tmp_path_factory.mktemp('fx')
  (root / 'tiny.py').write_text(CONFIG)
  config = load_config(str(root / 'tiny.py'))
  model = models.build_model(config.model, 5, seed=3)
  checkpoint.save_model(model, root / 'ckpt', num_classes=5, model_config=config.model)
  return root, config, model


def reference(model, config, image_uint8):
  im = Image.fromarray(image_uint8).resize((32, 64), Image.BICUBIC)
  x = (np.asarray(im, np.float32) / 255 - np.float32(config.input.mean)) / np.float32(
      config.input.std)
  f = np.asarray(models.embed(model, x[None]))[0] + np.asarray(
      models.embed(model, x[None, :, ::-1]))[0]
  return f / np.linalg.norm(f)


def test_images_of_any_kind_and_size_give_the_eval_features(saved):
  root, config, model = saved
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((64, 32), (128, 48), (37, 90), (300, 120), (64, 32))]
  Image.fromarray(arrays[1]).save(root / 'b.png')
  gray = rng.integers(0, 256, (50, 20), dtype=np.uint8)
  inputs = [arrays[0], str(root / 'b.png'), Image.fromarray(arrays[2]), arrays[3], arrays[4],
            gray]
  expected = np.stack([reference(model, config, a) for a in arrays]
                      + [reference(model, config, np.repeat(gray[..., None], 3, axis=2))])

  extractor = reid_jax.FeatureExtractor(str(root / 'tiny.py'), str(root / 'ckpt'), batch_size=4)
  got = extractor(inputs)  # 6 images: one batch of 4, one of 2
  assert got.shape == expected.shape and got.dtype == np.float32
  # float32 features of norm 1 from the same network; only summation order may differ.
  np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)
  assert extractor.traces == 2
  extractor(inputs[:3])  # 3 images pad to 4: the shape compiled already
  extractor(inputs[:2])
  assert extractor.traces == 2


def test_bad_images_are_named(saved):
  root, config, _ = saved
  extractor = reid_jax.FeatureExtractor(config, str(root / 'ckpt'))
  ok = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=r'image 1: expected .* got float32 \(8, 8, 3\)'):
    extractor([ok, ok.astype(np.float32)])
  with pytest.raises(FileNotFoundError, match=r'image 0: no such file .*nope\.jpg'):
    extractor([str(root / 'nope.jpg')])
  with pytest.raises(ValueError, match='no images'):
    extractor([])


def test_extract_cli_on_an_image_folder(saved, tmp_path):
  root, config, model = saved
  rng = np.random.default_rng(1)
  names = ['0002_c1s1_000451_03.png', '0007_c3s2_000100_01.png', '0002_c2s1_000020_02.png']
  arrays = [rng.integers(0, 256, (90 + 10 * i, 40, 3), dtype=np.uint8) for i in range(3)]
  (tmp_path / 'images').mkdir()
  for name, a in zip(names, arrays):
    Image.fromarray(a).save(tmp_path / 'images' / name)
  out = tmp_path / 'feats.npz'
  proc = subprocess.run(
      [sys.executable, '-m', 'reid_jax.extract', f'--config={root / "tiny.py"}',
       f'--checkpoint={root / "ckpt"}', f'--images={tmp_path / "images"}', f'--out={out}'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved_npz = np.load(out)
  order = np.argsort(names)  # files are read in name order
  assert list(saved_npz['filenames']) == sorted(names)
  np.testing.assert_array_equal(saved_npz['pids'], [2, 2, 7])
  np.testing.assert_array_equal(saved_npz['camids'], [0, 1, 2])
  expected = np.stack([reference(model, config, arrays[i]) for i in order])
  np.testing.assert_allclose(saved_npz['feats'], expected, atol=2e-6, rtol=0)
