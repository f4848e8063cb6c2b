"""Recipe augmentations: flip, pad-crop, Random2DTranslation, random erasing, masks, textures."""

import math

import numpy as np
import pytest
from PIL import Image

from reid_jax.data import transforms as T
from tests.tolerances import U

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (v / 255 - mean) / std in NumPy float32 (no XLA: the same on every CPU) against float64: the
# roundings of v, mean and v - mean (each <= U times 1, 0.485, 0.594), divided by std >= 0.224,
# and of std, the quotient and the reference's float32 cast (2.5 U |result|, |result| <= 2.64):
# <= U (2.08 / 0.224 + 2.5 * 2.64) < 16 U, a worst-case bound. The texture's t / 127.5 - 1 is
# within 3 U. A wrong channel's mean/std or a misplaced pixel is >= 1e-2.
NORM_ATOL = 16 * U


def _image(h=40, w=20, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=40, w=20):
  m = np.zeros((h, w, 1), np.uint8)
  m[5:15, 2:9] = 1    # an asymmetric blob: flips and shifts are visible
  m[20:38, 4:18] = 4
  return m


def _ref_normalize(img):
  return ((img / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)


class _FixedRng:
  """Stands in for np.random.Generator where a test needs exact draws."""

  def __init__(self, u):
    self.u = u

  def random(self):
    return self.u

  def uniform(self, lo, hi):
    return (lo + hi) / 2

  def integers(self, lo, hi=None, size=None):
    return lo if size is None else np.full(size, lo)


def test_flip_mirrors_image_and_mask_but_not_texture():
  aug = T.Augment(size=(40, 20), flip_prob=1.0, crop='none', erasing_prob=0.0)
  img, mask = _image(), _mask()
  tex = _image(16, 16, seed=1)
  out = aug({'image': img, 'parsing': mask, 'texture': tex}, np.random.default_rng(0))
  np.testing.assert_allclose(out['image'], _ref_normalize(img[:, ::-1]), atol=NORM_ATOL)
  np.testing.assert_array_equal(out['parsing'], mask[:, ::-1, 0])
  np.testing.assert_allclose(out['texture'], tex / 127.5 - 1.0, atol=NORM_ATOL)  # SAN: not flipped
  aug0 = T.Augment(size=(40, 20), flip_prob=0.0, crop='none', erasing_prob=0.0)
  np.testing.assert_allclose(aug0({'image': img}, np.random.default_rng(0))['image'],
                             _ref_normalize(img), atol=NORM_ATOL)


@pytest.mark.parametrize('dy,dx', [(0, 0), (3, 7), (10, 10), (20, 0), (20, 20), (5, 19)])
def test_shift_crop_is_pad_then_crop(dy, dx):
  img, pad = _image(), 10
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  np.testing.assert_array_equal(T.shift_crop(img, dy, dx, pad),
                                padded[dy:dy + 40, dx:dx + 20])


def test_pad_crop_offsets_stay_in_bounds_and_preserve_content():
  """Recover the crop offset of each draw from a coordinate-coded image."""
  h, w, pad = 40, 20, 4
  yy, xx = np.mgrid[:h, :w]
  coded = np.stack([yy + 1, xx + 1, np.full_like(yy, 7)], -1).astype(np.uint8)  # 0 = padding
  aug = T.Augment(size=(h, w), flip_prob=0.0, crop='pad', pad=pad, erasing_prob=0.0,
                  mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
  offsets = set()
  for s in range(300):
    out = np.rint(aug({'image': coded}, np.random.default_rng(s))['image']).astype(int)
    inside = out[..., 2] == 7
    ys, xs = np.nonzero(inside)
    dy = int(out[ys[0], xs[0], 0] - 1 - ys[0]) + pad  # source row = y + dy - pad
    dx = int(out[ys[0], xs[0], 1] - 1 - xs[0]) + pad
    assert 0 <= dy <= 2 * pad and 0 <= dx <= 2 * pad
    np.testing.assert_array_equal(out[inside][:, 0], (ys + dy - pad) + 1)  # content preserved
    np.testing.assert_array_equal(out[inside][:, 1], (xs + dx - pad) + 1)
    assert inside.sum() == (h - abs(dy - pad)) * (w - abs(dx - pad))   # zeros elsewhere
    offsets.add((dy, dx))
  ys_seen = {o[0] for o in offsets}
  assert {0, 2 * pad} <= ys_seen  # both extremes reachable (inclusive bounds)


def test_random_2d_translation():
  h, w = 32, 16
  big = (int(round(h * 1.125)), int(round(w * 1.125)))  # (36, 18)
  img = _image(50, 30)
  aug = T.Augment(size=(h, w), flip_prob=0.0, crop='translate', translate_prob=1.0,
                  erasing_prob=0.0, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
  resized_big = np.asarray(Image.fromarray(img).resize(big[::-1], Image.BILINEAR)).astype(int)
  seen = set()
  for s in range(100):
    out = np.rint(aug({'image': img}, np.random.default_rng(s))['image']).astype(int)
    hits = [(y, x) for y in range(big[0] - h + 1) for x in range(big[1] - w + 1)
            if np.array_equal(resized_big[y:y + h, x:x + w], out)]
    assert hits, 'output is not a crop of the x1.125 resize'
    seen.update(hits)
  # Offsets are round(U(0, range)): both ends of each range are reachable.
  assert {y for y, _ in seen} == set(range(big[0] - h + 1))
  assert {x for _, x in seen} == set(range(big[1] - w + 1))
  plain = T.Augment(size=(h, w), flip_prob=0.0, crop='translate', translate_prob=0.0,
                    erasing_prob=0.0)
  ref = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
  np.testing.assert_allclose(plain({'image': img}, np.random.default_rng(0))['image'],
                             _ref_normalize(ref), atol=NORM_ATOL)


def test_erasing_box_area_aspect_and_bounds_over_many_draws():
  h, w = 64, 32
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(2000):
    box = T.erasing_box(rng, h, w, prob=1.0)
    if box is None:
      continue
    y0, x0, eh, ew = box
    assert 0 <= y0 and y0 + eh <= h and 0 <= x0 and x0 + ew <= w
    assert eh < h and ew < w
    # eh = round(sqrt(A r)), ew = round(sqrt(A / r)): undo the rounding with +-0.5.
    assert (eh - 0.5) * (ew - 0.5) <= 0.4 * h * w + 1e-9
    assert (eh + 0.5) * (ew + 0.5) >= 0.02 * h * w - 1e-9
    assert (eh - 0.5) / (ew + 0.5) <= 1 / 0.3 and (eh + 0.5) / (ew - 0.5) >= 0.3
    areas.append(eh * ew / (h * w))
    ratios.append(eh / ew)
  assert len(areas) > 1900
  assert min(areas) < 0.04 and max(areas) > 0.3       # the range is covered
  assert min(ratios) < 0.5 and max(ratios) > 2.0


def test_erasing_fills_normalised_image_with_constants():
  fill = (0.4914, 0.4822, 0.4465)  # MPN's CIFAR mean
  aug = T.Augment(size=(40, 20), flip_prob=0.0, crop='none', erasing_prob=1.0, erasing_fill=fill)
  img = _image()
  for s in range(20):
    out = aug({'image': img}, np.random.default_rng(s))['image']
    ref = _ref_normalize(img)
    changed = np.any(np.abs(out - ref) > NORM_ATOL, axis=-1)
    ys, xs = np.nonzero(changed)
    if ys.size == 0:
      continue
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    np.testing.assert_array_equal(out[box], np.broadcast_to(np.float32(fill), out[box].shape))
    outside = np.ones(changed.shape, bool)
    outside[box] = False
    np.testing.assert_allclose(out[outside], ref[outside], atol=NORM_ATOL)


def test_erasing_probability_test_and_rate():
  # u == p exactly: BoT's '>=' skips, '>' erases.
  assert T.erasing_box(_FixedRng(0.5), 64, 32, prob=0.5, test='>=') is None
  assert T.erasing_box(_FixedRng(0.5), 64, 32, prob=0.5, test='>') is not None
  assert T.erasing_box(_FixedRng(0.0), 64, 32, prob=0.0, test='>') is not None
  assert T.erasing_box(_FixedRng(0.0), 64, 32, prob=0.0, test='>=') is None
  rng = np.random.default_rng(1)
  rate = np.mean([T.erasing_box(rng, 64, 32, prob=0.3) is not None for _ in range(4000)])
  assert abs(rate - 0.3) < 0.03
  with pytest.raises(ValueError, match='erasing_test'):
    T.erasing_box(rng, 64, 32, prob=0.5, test='<')


def test_mask_follows_geometry_with_nearest_neighbour():
  img, mask = _image(80, 40), _mask(80, 40)
  aug = T.Augment(size=(40, 20), flip_prob=0.5, crop='pad', pad=3, erasing_prob=0.0)
  for s in range(10):
    out = aug({'image': img, 'parsing': mask}, np.random.default_rng(s))
    assert out['parsing'].shape == (40, 20) and out['parsing'].dtype == np.uint8
    assert set(np.unique(out['parsing'])) <= {0, 1, 4}  # no interpolated labels
    # Same draws without the mask give the same image: the mask does not consume randomness.
    ref = aug({'image': img}, np.random.default_rng(s))['image']
    np.testing.assert_array_equal(out['image'], ref)
  # PIL's nearest neighbour takes the source pixel under the output pixel's centre.
  small = T.resize(mask, (40, 20), 'nearest')
  rows = np.floor((np.arange(40) + 0.5) * 80 / 40).astype(int)
  cols = np.floor((np.arange(20) + 0.5) * 40 / 20).astype(int)
  np.testing.assert_array_equal(small[..., 0], mask[rows][:, cols, 0])


def test_texture_resize_and_range():
  tex = _image(64, 64)
  out = T.normalize_texture(tex, 32)
  assert out.shape == (32, 32, 3) and out.min() >= -1.0 and out.max() <= 1.0


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='config.input.crop'):
    T.Augment(size=(8, 4), crop='random')
  with pytest.raises(ValueError, match='config.input.interpolation'):
    T.Augment(size=(8, 4), interpolation='lanczos5')


def test_from_config_test_transform_is_resize_and_normalise():
  from reid_jax import config_lib
  c = config_lib.input_config()
  c.size, c.test_interpolation = (40, 20), 'bicubic'
  img = _image(80, 40)
  out = T.Augment.from_config(c, train=False)({'image': img}, None)['image']
  ref = np.asarray(Image.fromarray(img).resize((20, 40), Image.BICUBIC))
  np.testing.assert_allclose(out, _ref_normalize(ref), atol=NORM_ATOL)
  assert math.isclose(T.Augment.from_config(c).erasing_prob, c.erasing_prob)


def _erased_box(image, fill):
  """The box where every channel equals ``fill`` (an impossible value for a normalised pixel)."""
  ys, xs = np.nonzero(np.all(image == np.float32(fill), axis=-1))
  if ys.size == 0:
    return None
  box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
  assert ys.size == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a full rectangle
  return box


def test_erasing_sets_the_parsing_box_to_background():
  fill = -9.0  # no (v/255 - mean)/std reaches it: the erased box is exactly where it appears
  img, mask = _image(), np.full((40, 20, 1), 3, np.uint8)
  mask[:, :10] = 5  # two parts: flips and shifts are visible in the mask
  for erase_parsing in (True, False):
    aug = T.Augment(size=(40, 20), flip_prob=0.5, crop='pad', pad=3, erasing_prob=1.0,
                    erasing_fill=(fill,) * 3, erase_parsing=erase_parsing)
    plain = T.Augment(size=(40, 20), flip_prob=0.5, crop='pad', pad=3, erasing_prob=0.0)
    erased = 0
    for s in range(20):
      out = aug({'image': img, 'parsing': mask}, np.random.default_rng(s))
      # The geometry alone, drawn the same (erasing draws come last).
      ref = plain({'image': img, 'parsing': mask}, np.random.default_rng(s))['parsing']
      box = _erased_box(out['image'], fill)
      if box is None:
        np.testing.assert_array_equal(out['parsing'], ref)
        continue
      erased += 1
      expected = ref.copy()
      if erase_parsing:
        expected[box] = 0
      assert (ref[box] != 0).any()  # the box covers body pixels, so erasing them is visible
      np.testing.assert_array_equal(out['parsing'], expected)
    assert erased >= 15
  # No geometry at all (the mask passes through unchanged): the caller's array is not modified.
  keep = mask.copy()
  aug = T.Augment(size=(40, 20), flip_prob=0.0, crop='none', erasing_prob=1.0,
                  erasing_fill=(fill,) * 3)
  out = aug({'image': img, 'parsing': mask}, np.random.default_rng(0))
  assert (out['parsing'] == 0).any()
  np.testing.assert_array_equal(mask, keep)
  from reid_jax import config_lib
  c = config_lib.input_config()
  assert c.erase_parsing is True and T.Augment.from_config(c).erase_parsing
  c.erase_parsing = False
  assert not T.Augment.from_config(c).erase_parsing
