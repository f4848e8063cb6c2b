"""Pictures, feature extraction and the image-folder path of reid_jax.extract."""

import numpy as np
import pytest
from PIL import Image

from reid_jax import extract
from reid_jax.evaluation import visualize as vis
from tests.tolerances import assert_close_scaled, resnet_forward_terms


def test_ranked_list_border_colours(tmp_path):
  q = np.full((16, 8, 3), 200, np.uint8)
  gallery = [np.full((16, 8, 3), 60 + 10 * i, np.uint8) for i in range(4)]
  # gallery 0: same pid other cam (true), 1: other pid (false), 2: same pid same cam (junk),
  # 3: pid -1 (junk). Order by distance: 2, 0, 3, 1.
  dist = np.array([0.2, 0.9, 0.1, 0.5])
  path = tmp_path / 'rank.png'
  img = vis.ranked_list(q, gallery, dist, 5, 0, np.array([5, 7, 5, -1]), np.array([1, 1, 0, 1]),
                        str(path), topk=4, size=(16, 8), border=3)
  img = np.asarray(Image.open(path).convert('RGB'))
  gap, cell_w = 6, 8 + 2 * 3

  def border_px(c):
    return tuple(img[gap + 1, gap + c * (cell_w + gap) + 1])

  assert border_px(0) == vis.BLUE
  assert [border_px(c) for c in range(1, 5)] == [vis.GREY, vis.GREEN, vis.GREY, vis.RED]
  inner = img[gap + 3 + 8, gap + 2 * (cell_w + gap) + 3 + 4]  # the tile of gallery 0
  assert tuple(inner) == (60, 60, 60)
  skip = np.asarray(vis.ranked_list(q, gallery, dist, 5, 0, np.array([5, 7, 5, -1]),
                                    np.array([1, 1, 0, 1]), topk=4, size=(16, 8), border=3,
                                    skip_junk=True))
  assert tuple(skip[gap + 1, gap + (cell_w + gap) + 1]) == vis.GREEN
  assert tuple(skip[gap + 1, gap + 2 * (cell_w + gap) + 1]) == vis.RED


def test_cmc_curve_png(tmp_path):
  path = tmp_path / 'cmc.png'
  vis.cmc_curve(np.linspace(0.8, 1.0, 20), str(path), label='test')
  img = np.asarray(Image.open(path).convert('RGB'))
  assert img.shape == (360, 480, 3)
  assert (img == vis.BLUE).all(-1).sum() > 100        # the curve
  assert (img == vis.BLACK).all(-1).sum() > 300       # axes, ticks, labels


def test_parse_market_name():
  assert extract.parse_market_name('0002_c1s1_000451_03.jpg') == (2, 0)
  assert extract.parse_market_name('-1_c3s2_0001.jpg') == (-1, 2)
  assert extract.parse_market_name('foo.jpg') is None


def test_image_folder_and_extract_features(tmp_path):
  import ml_collections

  from reid_jax import config_lib
  from reid_jax.models import build_model, embed
  rng = np.random.default_rng(0)
  names = ['0001_c1s1_0.jpg', '0001_c2s1_0.jpg', '0007_c3s1_0.png']
  for n in names:
    Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(tmp_path / n)
  cfg = config_lib.input_config()
  cfg.size = (32, 16)
  files, batches = extract.image_folder_batches(str(tmp_path), cfg, batch_size=2)
  assert files == sorted(names) and len(batches) == 2
  mc = config_lib.model_config('baseline')
  mc.depth, mc.width = 18, 8
  model = build_model(mc, num_classes=5)
  feats, pids, camids = extract.extract_features(model, batches, flip='mean', normalize=True,
                                                 progress=False)
  assert feats.shape[0] == 3 and feats.dtype == np.float32
  np.testing.assert_array_equal(pids, [1, 1, 7])
  np.testing.assert_array_equal(camids, [0, 1, 2])
  # Two float32 normalisations (device, NumPy), each a sum of D squares with partial sums <= 1.
  assert_close_scaled(np.linalg.norm(feats, axis=1), np.ones(len(feats)), terms=2 * feats.shape[1])
  # flip='mean' is the mean of the embeddings of x and its mirror.
  x = np.stack([extract.load_image(str(tmp_path / n), cfg.size, 'bilinear', cfg.mean, cfg.std)
                for n in files])
  want = (np.asarray(embed(model, x)) + np.asarray(embed(model, x[:, :, ::-1]))) / 2
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  # The same network on other batches (other code, other orders): its forward error on unit
  # features. A missing flip or mean moves them by >= 1e-2.
  assert_close_scaled(feats, want, terms=resnet_forward_terms(mc.depth, mc.width), scale=1.0)
  extract.save_npz(str(tmp_path / 'o.npz'), feats, pids, camids, files)
  z = np.load(tmp_path / 'o.npz')
  assert list(z['filenames']) == files and z['feats'].shape == feats.shape
  with pytest.raises(ValueError, match='flip must be'):
    extract.extract_features(model, batches, flip='both')
  del ml_collections
