"""Part masks (reid_jax.data.parts + transforms.Augment): the label pipeline against a NumPy
reference written here from BPBreID's rule, nearest-resize conventions against PIL and PyTorch,
masks following the image through the augmentations, and the synthetic mapping.

BPBreID's rule (VlSomers/bpbreid ``torchreid/data/transforms.py`` + ``masks_transforms/``): resize
the 36 fields to the image (OpenCV nearest), group each part as the max of its channels, label =
0 where the max over parts is < 0.5, else 1 + argmax (first index on ties), read at every 4th
pixel from 0.
"""

import numpy as np
from PIL import Image
import pytest
import torch

from reid_jax.data import parts
from reid_jax.data.transforms import Augment, coarse_dropout_box
from tests.tolerances import U

# Channel lists of 'eight' and 'five_v', written out from the official
# torchreid/data/masks_transforms/pifpaf_mask_transform.py (indices into the 36 PifPaf fields:
# 0-16 keypoints nose..right_ankle, 17-35 associations).
EIGHT = [
    [0, 1, 2, 3, 4, 29, 30, 31, 32, 33, 34, 35],  # head
    [5, 7, 9, 25, 27],                            # left arm
    [6, 8, 10, 26, 28],                           # right arm
    [11, 12, 21, 22, 23, 24],                     # torso
    [13, 17, 18, 21],                             # left leg
    [14, 19, 20],                                 # right leg
    [15],                                         # left foot
    [16],                                         # right foot
]
FIVE_V = [
    [0, 1, 2, 3, 4, 29, 30, 31, 32, 33, 34, 35],  # head
    [7, 8, 25, 26, 5, 6, 24],                     # upper arms + torso
    [9, 10, 27, 28, 11, 12, 23],                  # lower arms + torso
    [11, 12, 13, 14, 17, 18, 19, 20],             # legs
    [15, 16],                                     # feet
]
LISTS = {'eight': EIGHT, 'five_v': FIVE_V}


def cv2_nearest(n_in, n_out):
  """OpenCV INTER_NEAREST source indices: floor(i / (n_out / n_in)) in double, clamped."""
  fx = n_out / n_in
  return [min(int(np.floor(i * (1.0 / fx))), n_in - 1) for i in range(n_out)]


def reference_labels(fields_q, lists, size):
  """BPBreID's labels from quantised fields uint8 [hm, wm, 36] for an un-augmented image of
  ``size``: resize (cv2 nearest), group by max, threshold 0.5, argmax, every 4th pixel."""
  f = fields_q.astype(np.float64) / 255.0
  rows, cols = cv2_nearest(f.shape[0], size[0]), cv2_nearest(f.shape[1], size[1])
  big = f[rows][:, cols]
  grouped = np.stack([big[..., ch].max(axis=-1) for ch in lists], axis=-1)
  labels = np.zeros(size, np.int64)
  for y in range(size[0]):
    for x in range(size[1]):
      v = grouped[y, x]
      labels[y, x] = 0 if v.max() < 0.5 else 1 + int(np.argmax(v))  # argmax: first on ties
  return labels[::4, ::4]


def quantised(rng, hm, wm, sparsity=0.6):
  """Random label fields as prepare stores them: uint8 [hm, wm, 36] = round(255 v)."""
  v = rng.random((36, hm, wm))
  v[rng.random((36, hm, wm)) < sparsity] = 0.0
  return np.rint(v * 255).astype(np.uint8).transpose(1, 2, 0)


def test_grouping_channel_lists_match_the_official_file():
  for name, lists in LISTS.items():
    g = parts.get_grouping(name)
    assert [sorted(c) for c in g.channels] == [sorted(c) for c in lists], name
  assert parts.get_grouping('eight').parts == (
      'head_mask', 'left_arm_mask', 'right_arm_mask', 'torso_mask', 'left_leg_mask',
      'right_leg_mask', 'left_feet_mask', 'right_feet_mask')
  # Every 'eight' channel is used; 21 (hip to hip) is in torso and left leg.
  assert sorted({c for ch in EIGHT for c in ch}) == list(range(36))
  # Part counts of other official classes (their class names say K).
  for name, k in [('one', 1), ('two_v', 2), ('three_v', 3), ('four', 4), ('four_v_pif', 4),
                  ('five', 5), ('six', 6), ('six_v', 6), ('seven_v', 7), ('eight_v', 8),
                  ('ten_ms', 10), ('eleven', 11), ('fourteen', 14), ('bs_fu', 37),
                  ('bs_fu_bb', 38), ('id', 1), ('strp_6', 6)]:
    assert parts.get_grouping(name).num_parts == k, name
  with pytest.raises(ValueError, match=r"config.input.parts='six_no'.*TypeError"):
    parts.get_grouping('six_no')
  with pytest.raises(ValueError, match=r"unknown grouping; known: .*five_v.*eight"):
    parts.get_grouping('nine')


def test_nearest_rules_against_pil_torch_and_hand_values():
  # cv2: 3 -> 8, s = 0.375: floor(0, .375, .75, 1.125, 1.5, 1.875, 2.25, 2.625).
  assert parts.nearest_index(3, 8, 'cv2').tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
  for n_in, n_out in [(17, 384), (16, 256), (9, 128), (128, 256), (37, 12)]:
    assert parts.nearest_index(n_in, n_out, 'cv2').tolist() == cv2_nearest(n_in, n_out)
  img = (np.arange(13 * 7) % 251).astype(np.uint8).reshape(13, 7)
  for size in [(40, 20), (64, 32), (6, 5), (13, 7)]:
    want = np.asarray(Image.fromarray(img).resize(size[::-1], Image.NEAREST))
    got = parts.resize_nearest(img[..., None], size, 'pil')[..., 0]
    np.testing.assert_array_equal(got, want, err_msg=str(size))
  for n_in, n_out in [(384, 96), (256, 64), (66, 16), (130, 32)]:
    x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in)
    want = torch.nn.functional.interpolate(x, size=n_out, mode='nearest').reshape(-1).long()
    assert parts.nearest_index(n_in, n_out, 'torch').tolist() == want.tolist()


@pytest.mark.parametrize('name', ['eight', 'five_v'])
@pytest.mark.parametrize('field_size', [(17, 9), (16, 8), (64, 32), (5, 3)])
def test_labels_match_reference(name, field_size):
  rng = np.random.default_rng([len(name), *field_size])
  size = (64, 32)
  aug = Augment(size=size, flip_prob=0.0, crop='none', erasing_prob=0.0, parts=name)
  for _ in range(3):
    fields = quantised(rng, *field_size)
    out = aug({'image': np.zeros((20, 10, 3), np.uint8), 'parsing_fields': fields}, None)
    pm = out['part_masks']
    assert pm.shape == (16, 8, len(LISTS[name]) + 1) and pm.dtype == np.float32
    np.testing.assert_array_equal(parts.part_labels(pm),
                                  reference_labels(fields, LISTS[name], size))


def test_threshold_ties_and_softmax_values():
  g = parts.get_grouping('eight')
  f = np.zeros((2, 4, 36), np.uint8)
  f[0, 0, 0] = 128   # head 128/255 >= 0.5: foreground, label 1
  f[0, 1, 0] = 127   # 127/255 < 0.5: background
  f[0, 2, [5, 6]] = 200   # left arm == right arm: first index (2)
  f[0, 3, [13, 14]] = 255  # left leg == right leg: 5
  f[1, 0, [11, 15]] = [180, 181]  # torso 180 < left foot 181: 7
  f[1, 1, 21] = 255   # hip-to-hip: torso (4) and left leg (5) tie: 4
  grouped = parts.group_fields(f, g)
  pm = parts.part_targets(grouped, g, (2, 4), scale=1)
  assert parts.part_labels(pm).tolist() == [[1, 0, 2, 5], [7, 4, 0, 0]]
  # softmax(15 [bg, parts]) in float64 from the definition.
  p = grouped.astype(np.float64) / 255
  bg = (p.max(-1) < 0.5).astype(np.float64)
  logits = 15 * np.concatenate([bg[..., None], p], -1)
  want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(pm, want, rtol=0, atol=64 * U)  # a few roundings of exp/sum
  np.testing.assert_allclose(pm.sum(-1), 1.0, rtol=0, atol=16 * U)


def test_fixed_groupings():
  g = parts.get_grouping('strp_4')
  pm = parts.part_targets(None, g, (64, 32))
  labels = parts.part_labels(pm)  # 16 rows at every 4th image row; stripes of 16 image rows
  assert (labels[:, 0] == np.repeat([1, 2, 3, 4], 4)).all() and (labels == labels[:, :1]).all()
  whole = parts.part_targets(None, parts.get_grouping('id'), (64, 32))
  assert (parts.part_labels(whole) == 1).all()
  aug = Augment(size=(64, 32), flip_prob=0.0, crop='pad', pad=10, erasing_prob=0.0,
                parts='strp_2')
  out = aug({'image': np.zeros((64, 32, 3), np.uint8)}, np.random.default_rng(0))
  # Fixed parts live on the augmented grid: padding does not touch them.
  assert (parts.part_labels(out['part_masks'])[:, 0] == np.repeat([1, 2], 8)).all()


def _coded(h, w):
  """An image and label fields of the same size whose content marks positions: two coloured
  rectangles on a grey background and fields that are 1 exactly there, in the head (channel 0)
  and torso (channel 11) fields."""
  img = np.full((h, w, 3), 90, np.uint8)
  f = np.zeros((h, w, 36), np.uint8)
  img[5:30, 3:20] = (200, 30, 60)
  f[5:30, 3:20, 0] = 255
  img[34:58, 10:29] = (40, 220, 90)
  f[34:58, 10:29, 11] = 255
  return img, f


@pytest.mark.parametrize('crop,erasing', [('pad', 'coarse_dropout'), ('pad', 'random'),
                                          ('translate', 'random')])
def test_masks_follow_the_image(crop, erasing):
  h, w = 64, 32
  img, fields = _coded(h, w)
  aug = Augment(size=(h, w), interpolation='nearest', flip_prob=0.5, crop=crop, pad=10,
                translate_prob=0.7, erasing_prob=0.6, erasing=erasing, erasing_test='>',
                parts='eight', parts_nearest='pil')
  mean, std = np.array(aug.mean, np.float32), np.array(aug.std, np.float32)
  seen = set()
  for seed in range(40):
    out = aug({'image': img, 'parsing_fields': fields}, np.random.default_rng(seed))
    image = out['image'][::4, ::4]
    rect1 = np.all(np.abs(image - ((np.array((200, 30, 60)) / 255 - mean) / std)) < 1e-5, -1)
    rect2 = np.all(np.abs(image - ((np.array((40, 220, 90)) / 255 - mean) / std)) < 1e-5, -1)
    want = np.where(rect1, 1, np.where(rect2, 4, 0))  # head, torso, else background
    got = parts.part_labels(out['part_masks'])
    np.testing.assert_array_equal(got, want, err_msg=f'seed {seed}')
    erased = np.all(np.abs(image - np.array(aug.erasing_fill, np.float32)) < 1e-6, -1)
    padded = np.all(np.abs(image - (-mean / std)) < 1e-5, -1)
    seen.add((bool(erased.any()), bool(padded.any()), bool(want[:, :4].any())))
  assert (True, True) in {s[:2] for s in seen} or crop == 'translate'  # erasing and padding hit
  assert {s[0] for s in seen} == {True, False}


def test_flip_moves_left_parts():
  """A flipped image keeps each field with its pixels (BPBreID flips the fields with the image):
  a left-arm region on the image's left ends on its right."""
  f = np.zeros((64, 32, 36), np.uint8)
  f[20:40, 0:8, 5] = 255   # left shoulder field, image-left
  aug = Augment(size=(64, 32), flip_prob=1.0, crop='none', erasing_prob=0.0, parts='eight')
  labels = parts.part_labels(aug({'image': np.zeros((64, 32, 3), np.uint8),
                                  'parsing_fields': f}, np.random.default_rng(0))['part_masks'])
  assert (labels[5:10, 6:8] == 2).all() and (labels[:, :6] == 0).all()


def test_coarse_dropout_box():
  rng = np.random.default_rng(0)
  boxes = [coarse_dropout_box(rng, 384, 128, prob=0.5) for _ in range(400)]
  hits = [b for b in boxes if b is not None]
  assert 160 < len(hits) < 240  # p = 0.5
  for y0, x0, eh, ew in hits:
    assert int(384 * 0.15) <= eh <= int(384 * 0.65) and int(128 * 0.15) <= ew <= int(128 * 0.65)
    assert 0 <= y0 <= 384 - eh and 0 <= x0 <= 128 - ew
  assert min(b[2] for b in hits) < 70 and max(b[2] for b in hits) > 230  # spans the range


def test_synthetic_mapping():
  from reid_jax.data import synthetic as syn  # pylint: disable=import-outside-toplevel
  m = np.zeros((16, 8), np.uint8)
  m[0:3, 3:5] = syn.HEAD
  m[3:8, 2:6] = syn.TORSO        # torso columns 2..5: centre column 3.5, middle row 5
  m[3:9, 0:2] = syn.ARMS         # image-left arm
  m[3:9, 6:8] = syn.ARMS         # image-right arm
  m[8:14, 2:4] = syn.LEGS
  m[8:14, 4:6] = syn.LEGS
  m[14:16, 1:3] = syn.FEET
  m[14:16, 5:7] = syn.FEET
  m[6:8, 3:5] = syn.ITEM         # a bag over the torso: background
  eight = parts.synthetic_part_map(m, parts.get_grouping('eight'))
  assert eight[1, 3] == 1 and eight[4, 2] == 4 and eight[6, 3] == 0
  assert eight[4, 0] == 2 and eight[4, 7] == 3          # arms: left / right of column 3.5
  assert eight[10, 3] == 5 and eight[10, 4] == 6        # legs
  assert eight[15, 2] == 7 and eight[15, 5] == 8        # feet
  five = parts.synthetic_part_map(m, parts.get_grouping('five_v'))
  # Torso rows 3..7 minus the bag: mean row 74 / 16 = 4.625; rows 0..4 upper (2), others lower.
  assert five[1, 3] == 1 and five[4, 2] == 2 and five[5, 2] == 3 and five[4, 0] == 2
  assert five[8, 0] == 3 and five[10, 2] == 4 and five[15, 1] == 5 and five[6, 4] == 0
  with pytest.raises(ValueError, match=r"synthetic_reid parsing maps map onto"):
    parts.synthetic_part_map(m, parts.get_grouping('fourteen'))
