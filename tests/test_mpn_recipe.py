"""MPN's recipe and coarse priors: the per-epoch learning rates of the released script, the
config, the part regions of both priors against a NumPy reference written from their definition
(docs/mpn.md), and masked BatchNorm statistics against BatchNorm of the selected positions."""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from reid_jax import optim
from reid_jax.models import mpn
from reid_jax.models.layers import BatchNorm

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg=None):
  spec = importlib.util.spec_from_file_location('mpn_config', ROOT / 'configs' / 'mpn.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_lr_table_is_pytorch_04_steplr_stepped_at_epoch_start():
  # train_mpn_no_ca.py: StepLR(step_size=20, gamma=0.1), scheduler.step() first thing in every
  # epoch; under PyTorch 0.4 the first call sets last_epoch = 0, so epoch e runs at
  # 0.01 * 0.1 ** (e // 20).
  c = load_config()
  table = optim.epoch_learning_rates(c.optim, c.num_epochs)
  expected = [0.01 * 0.1 ** (e // 20) for e in range(70)]
  assert len(table) == 70
  np.testing.assert_allclose(table, expected, rtol=1e-12)
  assert table[19] == pytest.approx(1e-2) and table[20] == pytest.approx(1e-3)
  assert table[60] == pytest.approx(1e-5) and table[69] == pytest.approx(1e-5)


def test_modern_pytorch_shift_moves_every_decay_one_epoch_earlier():
  # PyTorch >= 1.1: the constructor already steps once, so epoch e runs at last_epoch = e + 1.
  c = load_config('lr_step=modern')
  table = optim.epoch_learning_rates(c.optim, c.num_epochs)
  np.testing.assert_allclose(table, [0.01 * 0.1 ** ((e + 1) // 20) for e in range(70)],
                             rtol=1e-12)
  assert table[18] == pytest.approx(1e-2) and table[19] == pytest.approx(1e-3)


def test_config_is_the_released_recipe():
  c = load_config()
  assert c.model.name == 'mpn' and c.model.depth == 50 and c.model.last_stride == 1
  assert c.model.stem_relu and c.model.parts == 6 and c.model.part_channels == 512
  assert c.model.prior == 'stripes' and not c.model.channel_attention
  assert c.input.dataset == 'market1501' and tuple(c.input.size) == (384, 128)
  assert (c.input.sampler, c.input.p, c.input.k) == ('balanced', 6, 8)
  assert (c.input.interpolation, c.input.test_interpolation) == ('bilinear', 'bicubic')
  assert c.input.crop == 'none' and c.input.flip_prob == 0.5 and c.input.erasing_prob == 0.5
  assert tuple(c.input.erasing_fill) == (0.4914, 0.4822, 0.4465) and c.input.erasing_test == '>'
  assert c.loss.ce_epsilon == 0.0 and c.loss.triplet_margin == 0.4
  assert (c.optim.name, c.optim.momentum, c.optim.nesterov) == ('sgd', 0.9, True)
  assert c.optim.weight_decay == 5e-4 and c.optim.weight_decay_bias == 5e-4
  assert (c.eval.flip, c.eval.normalize, c.eval.metric, c.eval.ap) == ('sum', True, 'cosine',
                                                                        'trapezoid')
  p = load_config('dukemtmc_reid,prior=parsing,ca=1')
  assert p.input.dataset == 'dukemtmc_reid' and p.model.prior == 'parsing' and p.input.parsing
  assert p.model.channel_attention
  with pytest.raises(ValueError, match='prior'):
    load_config('prior=masks')
  with pytest.raises(ValueError, match='unknown key'):
    load_config('priors=stripes')


# ----------------------------------------------------------------------------- priors
def reference_regions(parsing, h, w, parts):
  """docs/mpn.md, written with loops: bands of the foreground's vertical extent, feature rows
  by their centre, foreground cells (any pixel), fallbacks to the whole band and to stripes."""
  b, height, width = parsing.shape
  sy, sx = height // h, width // w
  out = np.zeros((b, parts, h, w), bool)
  s = h // parts
  stripes = np.zeros((parts, h, w), bool)
  for k in range(parts):
    stripes[k, k * s:(k + 1) * s] = True
  for i in range(b):
    fg = parsing[i] > 0
    rows = np.flatnonzero(fg.any(axis=1))
    if rows.size == 0:
      out[i] = stripes
      continue
    top, bottom = rows[0], rows[-1] + 1
    cell = np.array([[fg[r * sy:(r + 1) * sy, c * sx:(c + 1) * sx].any() for c in range(w)]
                     for r in range(h)])
    for k in range(parts):
      lo = top + (bottom - top) * k / parts
      hi = top + (bottom - top) * (k + 1) / parts
      band = np.array([lo <= (r + 0.5) * sy < hi for r in range(h)])
      if not band.any():
        band[min(max(int(np.floor((lo + hi) / 2 / sy)), 0), h - 1)] = True
      region = band[:, None] & cell
      out[i, k] = region if region.any() else np.broadcast_to(band[:, None], (h, w))
  return out


def test_parsing_regions_match_the_reference_and_fall_back():
  rng = np.random.RandomState(0)
  h, w, parts = 12, 4, 6
  masks = np.zeros((5, 192, 64), np.uint8)
  masks[0, 20:180, 16:48] = 2                           # a standing person
  masks[1, 100:130, 5:60] = 1                           # short: bands thinner than a row
  masks[2] = (rng.rand(192, 64) > 0.97) * 7             # scattered pixels
  masks[3, 10:40, 0:10] = 3                             # a head ...
  masks[3, 150:190, 50:64] = 4                          # ... and feet: empty bands between
  # masks[4] stays empty: stripes
  got = np.asarray(mpn.parsing_regions(jnp.asarray(masks), h, w, parts))
  want = reference_regions(masks, h, w, parts)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[4], np.asarray(mpn.stripe_regions(1, h, w, parts))[0])
  # The standing person's six bands tile the rows whose centre (i + 0.5) * 16 lies in its extent
  # [20, 180): rows 1 .. 10, each in exactly one band.
  rows = got[0].any(axis=2)                             # [K, h]
  assert rows.sum(0).tolist() == [0] + [1] * 10 + [0]
  assert rows[0].argmax() == 1 and rows[-1].nonzero()[0].max() == 10
  # A band without foreground cells is the whole band (all columns).
  empty_band = [k for k in range(parts) if got[3, k].all(axis=1).any()]
  assert empty_band


def test_stripes_follow_the_official_integer_slicing():
  r = np.asarray(mpn.stripe_regions(2, 24, 8, 6))
  for k in range(6):
    np.testing.assert_array_equal(r[0, k].any(axis=1), (np.arange(24) // 4) == k)
  r = np.asarray(mpn.stripe_regions(1, 8, 4, 6))        # int(8 / 6) = 1: rows 6, 7 unused
  assert r[0].any(axis=(0, 2)).tolist() == [True] * 6 + [False] * 2
  with pytest.raises(ValueError, match='height 4'):
    mpn.stripe_regions(1, 4, 4, 6)


def test_masked_batchnorm_equals_batchnorm_of_the_selected_positions():
  rng = np.random.RandomState(1)
  x = rng.randn(3, 6, 4, 5).astype(np.float32) * 2 + 1
  mask = rng.rand(3, 6, 4) > 0.6
  bn_masked, bn_plain = BatchNorm(5, momentum=0.1), BatchNorm(5, momentum=0.1)
  y = np.asarray(bn_masked(jnp.asarray(x), mask=jnp.asarray(mask)))
  y_sel = np.asarray(bn_plain(jnp.asarray(x[mask])))   # [n, 5]: BatchNorm1d of the positions
  # Sums of n ~ 30 terms of magnitude ~5: a few float32 ulps of the output's scale.
  np.testing.assert_allclose(y[mask], y_sel, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn_masked.mean[...], bn_plain.mean[...], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn_masked.var[...], bn_plain.var[...], rtol=1e-5, atol=1e-6)
  # Unselected positions are normalised with the same statistics.
  sel = x[mask]
  mean, var = sel.mean(0), sel.var(0)
  np.testing.assert_allclose(y[~mask], (x[~mask] - mean) / np.sqrt(var + 1e-5), rtol=1e-4,
                             atol=1e-4)


def test_masked_max_pool_ignores_unselected_positions():
  x = jnp.arange(2 * 3 * 2 * 1, dtype=jnp.float32).reshape(2, 3, 2, 1)
  mask = jnp.zeros((2, 3, 2), bool).at[0, 0, 1].set(True).at[1, :, 0].set(True)
  np.testing.assert_array_equal(mpn.masked_max_pool(x, mask)[:, 0], [1.0, 10.0])


def test_parsing_prior_needs_the_parsing_field():
  c = load_config('prior=parsing')
  assert mpn.mpn_batch_fields(c) == ('image', 'label', 'parsing')
  c.input.parsing = False
  with pytest.raises(ValueError, match='config.input.parsing=True'):
    mpn.mpn_batch_fields(c)
  assert mpn.mpn_batch_fields(load_config()) == ('image', 'label')


def test_parsing_prior_forward_uses_the_regions():
  # With a mask covering the whole image the parsing bands equal the stripes (24 rows / 6), so a
  # parsing-prior model and a stripes model with the same weights give the same AT features.
  from flax import nnx

  from reid_jax import models
  c = load_config('synthetic')
  c.model.update(part_channels=16)
  stripes = models.build_model(c.model, 5)
  c.model.prior = 'parsing'
  parsing = models.build_model(c.model, 5)
  nnx.update(parsing, nnx.state(stripes))
  x = jnp.asarray(np.random.RandomState(2).randn(2, 192, 64, 3), jnp.float32)
  full = jnp.ones((2, 192, 64), jnp.uint8)
  a = stripes(x)
  b = parsing(x, parsing=full)
  np.testing.assert_allclose(b['at_feat'], a['at_feat'], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="'parsing' mask"):
    parsing(x)
  # A mask on the lower half only changes the AT features, not the MT ones.
  half = full.at[:, :96].set(0)
  d = parsing(x, parsing=half)
  np.testing.assert_allclose(d['mt_feat'], a['mt_feat'], rtol=1e-5, atol=1e-5)
  assert not np.allclose(d['at_feat'], a['at_feat'], atol=1e-3)
