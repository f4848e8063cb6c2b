"""Body-part masks for part-based methods (BPBreID): groupings of the 36 PifPaf fields, the mask
geometry, and the pixel targets ``part_masks`` (docs/input_pipeline.md, "Part masks").

BPBreID (Somers et al., WACV 2023; VlSomers/bpbreid) trains its pixel-to-part classifier on
human-parsing labels: 36 OpenPifPaf confidence fields per image (17 keypoint fields, then 19
association fields), filtered by a Mask R-CNN person mask, values in [0, 1]. Its data pipeline
(``torchreid/data/transforms.py::build_transforms``) applies the image's geometric augmentations to
the fields (nearest resize, zero padding, CoarseDropout with mask fill 0), then

1. groups the fields into K parts, each the **max** over its channels clamped to [0, 1]
   (``torchreid/data/masks_transforms/mask_transform.py::MaskGroupingTransform``, the channel
   lists of ``pifpaf_mask_transform.py``; ``GROUPINGS`` below, same names and order),
2. adds a background channel, 1 where the max over the K parts is below 0.5
   (``AddBackgroundMask('threshold')``), stacks ``[background, parts]`` and takes
   ``softmax(15 * m)`` over the K + 1 channels,
3. downsamples by 4 with torch's 'nearest' (``ResizeMasks``): every 4th pixel from 0.

The loss resizes these maps to the feature map and takes the argmax as the pixel label. The
labels this gives are: 0 where ``max_k part_k < 0.5``, else ``1 + argmax_k part_k`` (first index
on ties), read at every 4th pixel.

Grouping and background are pixel-wise and the geometry only selects pixels or writes zeros, so
grouping *before* the geometry (as done here, on K instead of 36 channels) gives the same result.
The exceptions are the groupings whose channels do not come from the fields (all-ones and
stripes, ``FixedPart``): BPBreID computes those on the augmented grid, and so does
``part_targets``.

``synthetic_reid`` has a 7-class parsing map instead of PifPaf fields; ``synthetic_part_map``
maps it onto the 'eight' and 'five_v' parts (documented there).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

NUM_FIELDS = 36  # PifPaf: 17 keypoint (pif) + 19 association (paf) confidence fields
NEAREST_RULES = ('cv2', 'pil')

PIFPAF_KEYPOINTS = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee',
    'right_knee', 'left_ankle', 'right_ankle')
PIFPAF_JOINTS = (
    'left_ankle_to_left_knee', 'left_knee_to_left_hip', 'right_ankle_to_right_knee',
    'right_knee_to_right_hip', 'left_hip_to_right_hip', 'left_shoulder_to_left_hip',
    'right_shoulder_to_right_hip', 'left_shoulder_to_right_shoulder', 'left_shoulder_to_left_elbow',
    'right_shoulder_to_right_elbow', 'left_elbow_to_left_wrist', 'right_elbow_to_right_wrist',
    'left_eye_to_right_eye', 'nose_to_left_eye', 'nose_to_right_eye', 'left_eye_to_left_ear',
    'right_eye_to_right_ear', 'left_ear_to_left_shoulder', 'right_ear_to_right_shoulder')
PIFPAF_FIELDS = PIFPAF_KEYPOINTS + PIFPAF_JOINTS  # channel order of the label files
_INDEX = {name: i for i, name in enumerate(PIFPAF_FIELDS)}

# Field groups reused by several groupings (names as in BPBreID's lists).
_HEAD = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_eye_to_right_eye',
         'nose_to_left_eye', 'nose_to_right_eye', 'left_eye_to_left_ear', 'right_eye_to_right_ear',
         'left_ear_to_left_shoulder', 'right_ear_to_right_shoulder')
_LEFT_ARM = ('left_shoulder', 'left_elbow', 'left_wrist', 'left_shoulder_to_left_elbow',
             'left_elbow_to_left_wrist')
_RIGHT_ARM = ('right_shoulder', 'right_elbow', 'right_wrist', 'right_shoulder_to_right_elbow',
              'right_elbow_to_right_wrist')
_TORSO = ('left_hip', 'right_hip', 'left_hip_to_right_hip', 'left_shoulder_to_left_hip',
          'right_shoulder_to_right_hip', 'left_shoulder_to_right_shoulder')
_LEFT_LEG = ('left_knee', 'left_ankle_to_left_knee', 'left_knee_to_left_hip',
             'left_hip_to_right_hip')
_RIGHT_LEG = ('right_knee', 'right_ankle_to_right_knee', 'right_knee_to_right_hip')
_ARMS4 = ('left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist',
          'right_wrist', 'left_shoulder_to_left_elbow', 'right_shoulder_to_right_elbow',
          'left_elbow_to_left_wrist', 'right_elbow_to_right_wrist')
_TORSO4 = ('left_shoulder', 'right_shoulder', 'left_hip', 'right_hip', 'left_hip_to_right_hip',
           'left_shoulder_to_left_hip', 'right_shoulder_to_right_hip',
           'left_shoulder_to_right_shoulder')
_LEGS4 = ('left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle',
          'left_ankle_to_left_knee', 'left_knee_to_left_hip', 'right_ankle_to_right_knee',
          'right_knee_to_right_hip', 'left_hip_to_right_hip')
_VLEGS = ('left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle_to_left_knee',
          'left_knee_to_left_hip', 'right_ankle_to_right_knee', 'right_knee_to_right_hip')
_FEET = ('left_ankle', 'right_ankle')
_FINE = {  # the arm, torso and leg parts shared by 'eleven' and 'fourteen'
    'left_elbow_mask': ('left_shoulder', 'left_elbow', 'left_shoulder_to_left_elbow'),
    'left_wrist_mask': ('left_wrist', 'left_elbow_to_left_wrist'),
    'right_elbow_mask': ('right_shoulder', 'right_elbow', 'right_shoulder_to_right_elbow'),
    'right_wrist_mask': ('right_wrist', 'right_elbow_to_right_wrist'),
    'upper_torso_mask': ('left_shoulder_to_left_hip', 'right_shoulder_to_right_hip',
                         'left_shoulder_to_right_shoulder'),
    'lower_torso_mask': ('left_hip', 'right_hip', 'left_hip_to_right_hip'),
    'left_leg_mask': ('left_knee', 'left_knee_to_left_hip', 'left_hip_to_right_hip'),
    'right_leg_mask': ('right_knee', 'right_knee_to_right_hip'),
}
_EIGHT = {'head_mask': _HEAD, 'left_arm_mask': _LEFT_ARM, 'right_arm_mask': _RIGHT_ARM,
          'torso_mask': _TORSO, 'left_leg_mask': _LEFT_LEG, 'right_leg_mask': _RIGHT_LEG,
          'left_feet_mask': ('left_ankle',), 'right_feet_mask': ('right_ankle',)}


@dataclasses.dataclass(frozen=True)
class FixedPart:
  """A part that does not come from the fields, computed on the augmented ``H x W`` grid:
  ``kind='ones'`` (the whole box) or ``kind='stripe'`` (horizontal stripe ``index`` of
  ``count``, rows ``round(index * H / count) .. round((index + 1) * H / count)``, as BPBreID's
  ``PCBMasks``)."""
  kind: str
  index: int = 0
  count: int = 1


@dataclasses.dataclass(frozen=True)
class Grouping:
  """K named parts, each the max over field channels (``channels[k]``, indices into
  ``PIFPAF_FIELDS``) or a ``FixedPart``."""
  name: str
  parts: tuple[str, ...]
  channels: tuple[tuple[int, ...] | FixedPart, ...]

  @property
  def num_parts(self) -> int:
    return len(self.parts)

  @property
  def needs_fields(self) -> bool:
    """Whether any part is read from the label fields (False for 'id' and 'strp_N')."""
    return any(not isinstance(c, FixedPart) for c in self.channels)

  @property
  def field_parts(self) -> list[int]:
    return [k for k, c in enumerate(self.channels) if not isinstance(c, FixedPart)]


def _grouping(name: str, parts: dict) -> Grouping:
  channels = []
  for fields in parts.values():
    channels.append(fields if isinstance(fields, FixedPart)
                    else tuple(_INDEX[f] for f in fields))
  return Grouping(name, tuple(parts), tuple(channels))


_SINGLE = {f: (f,) for f in PIFPAF_FIELDS}

# Every PifPaf grouping of VlSomers/bpbreid torchreid/data/masks_transforms/__init__.py
# (``masks_preprocess_pifpaf``) and its fixed ones (``masks_preprocess_fixed``), same names, part
# names and order. Not available: 'mu_sc' and 'six_no', which fail in the official code (their
# lists name groups that are not fields, resp. index a list by name), and 'cc6' (17 COCO keypoint
# maps, not PifPaf fields): see UNSUPPORTED.
GROUPINGS: dict[str, Grouping] = {g.name: g for g in [
    _grouping('full', {'full_body': PIFPAF_FIELDS}),
    _grouping('bs_fu', {**_SINGLE, 'full_body': PIFPAF_FIELDS}),
    _grouping('bs_fu_bb', {**_SINGLE, 'full_body': PIFPAF_FIELDS,
                           'full_bounding_box': FixedPart('ones')}),
    _grouping('one', {'full': PIFPAF_FIELDS}),
    _grouping('two_v', {
        'torso_arms_head': _HEAD + ('left_shoulder', 'right_shoulder', 'left_shoulder_to_left_hip',
                                    'right_shoulder_to_right_hip',
                                    'left_shoulder_to_right_shoulder', 'left_elbow',
                                    'right_elbow', 'left_wrist', 'right_wrist',
                                    'left_shoulder_to_left_elbow', 'right_shoulder_to_right_elbow',
                                    'left_elbow_to_left_wrist', 'right_elbow_to_right_wrist'),
        'legs': _LEGS4}),
    _grouping('three_v', {
        'head_mask': _HEAD,
        'torso_arms_mask': ('left_shoulder', 'right_shoulder', 'left_shoulder_to_left_hip',
                            'right_shoulder_to_right_hip', 'left_shoulder_to_right_shoulder',
                            'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                            'left_shoulder_to_left_elbow', 'right_shoulder_to_right_elbow',
                            'left_elbow_to_left_wrist', 'right_elbow_to_right_wrist'),
        'legs_mask': _LEGS4}),
    _grouping('four', {'head_mask': _HEAD, 'arms_mask': _ARMS4, 'torso_mask': _TORSO4,
                       'legs_mask': _LEGS4}),
    _grouping('four_no', {
        'head_mask': _HEAD,
        'arms_mask': ('left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                      'left_shoulder_to_left_elbow', 'right_shoulder_to_right_elbow',
                      'left_elbow_to_left_wrist', 'right_elbow_to_right_wrist'),
        'torso_mask': _TORSO4,
        'legs_mask': ('left_knee', 'right_knee', 'left_ankle', 'right_ankle',
                      'left_ankle_to_left_knee', 'left_knee_to_left_hip',
                      'right_ankle_to_right_knee', 'right_knee_to_right_hip',
                      'left_hip_to_right_hip')}),
    _grouping('four_v', {
        'head_mask': _HEAD,
        'arms_torso_mask': ('left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                            'left_shoulder_to_left_elbow', 'right_shoulder_to_right_elbow',
                            'left_elbow_to_left_wrist', 'right_elbow_to_right_wrist',
                            'left_shoulder', 'right_shoulder', 'left_hip', 'right_hip',
                            'left_hip_to_right_hip', 'left_shoulder_to_left_hip',
                            'right_shoulder_to_right_hip', 'left_shoulder_to_right_shoulder'),
        'legs_mask': _VLEGS,
        'feet_mask': _FEET}),
    _grouping('four_v_pif', {
        'head_mask': ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear'),
        'arms_torso_mask': ('left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                            'left_shoulder', 'right_shoulder', 'left_hip', 'right_hip'),
        'legs_mask': ('left_hip', 'right_hip', 'left_knee', 'right_knee'),
        'feet_mask': _FEET}),
    _grouping('five_v', {
        'head_mask': _HEAD,
        'upper_arms_torso_mask': ('left_elbow', 'right_elbow', 'left_shoulder_to_left_elbow',
                                  'right_shoulder_to_right_elbow', 'left_shoulder',
                                  'right_shoulder', 'left_shoulder_to_right_shoulder'),
        'lower_arms_torso_mask': ('left_wrist', 'right_wrist', 'left_elbow_to_left_wrist',
                                  'right_elbow_to_right_wrist', 'left_hip', 'right_hip',
                                  'right_shoulder_to_right_hip'),
        'legs_mask': _VLEGS,
        'feet_mask': _FEET}),
    _grouping('five', {
        'head_mask': _HEAD,
        'arms_mask': _LEFT_ARM + _RIGHT_ARM,
        'torso_mask': _TORSO,
        'legs_mask': ('left_hip_to_right_hip', 'left_hip', 'right_hip', 'left_knee', 'right_knee',
                      'left_ankle_to_left_knee', 'left_knee_to_left_hip',
                      'right_ankle_to_right_knee', 'right_knee_to_right_hip'),
        'feet_mask': _FEET}),
    _grouping('six', {
        'head_mask': _HEAD, 'left_arm_mask': _LEFT_ARM, 'right_arm_mask': _RIGHT_ARM,
        'torso_mask': _TORSO,
        'left_leg_mask': ('left_knee', 'left_ankle', 'left_ankle_to_left_knee',
                          'left_knee_to_left_hip', 'left_hip_to_right_hip'),
        'right_leg_mask': ('right_knee', 'right_ankle', 'right_ankle_to_right_knee',
                           'right_knee_to_right_hip')}),
    _grouping('six_v', {
        'head_mask': _HEAD,
        'arms_mask': _LEFT_ARM + _RIGHT_ARM,
        'upper_torso_mask': ('left_shoulder_to_left_hip', 'right_shoulder_to_right_hip',
                             'left_shoulder_to_right_shoulder'),
        'lower_torso_mask': ('left_hip', 'right_hip', 'left_hip_to_right_hip'),
        'legs_mask': _VLEGS,
        'feet_mask': _FEET}),
    _grouping('six_new', {
        'head_mask': _HEAD, 'torso_mask': _TORSO, 'left_arm_mask': _LEFT_ARM,
        'right_arm_mask': _RIGHT_ARM, 'leg_mask': _LEFT_LEG + _RIGHT_LEG, 'feet_mask': _FEET}),
    _grouping('seven_v', {
        'head_mask': _HEAD,
        'shoulders_mask': ('left_shoulder', 'right_shoulder', 'left_shoulder_to_right_shoulder'),
        'elbow_mask': ('left_elbow', 'right_elbow'),
        'wrist_mask': ('left_wrist', 'right_wrist'),
        'hip_mask': ('left_hip', 'right_hip', 'left_hip_to_right_hip'),
        'knee_mask': ('left_knee', 'right_knee'),
        'ankle_mask': _FEET}),
    _grouping('seven_new', {
        'head_mask': _HEAD, 'left_arm_mask': _LEFT_ARM, 'right_arm_mask': _RIGHT_ARM,
        'upper_torso_mask': ('left_shoulder_to_left_hip', 'right_shoulder_to_right_hip',
                             'left_shoulder_to_right_shoulder'),
        'lower_torso_mask': ('left_hip', 'right_hip', 'left_hip_to_right_hip'),
        'leg_mask': _LEFT_LEG + _RIGHT_LEG, 'feet_mask': _FEET}),
    _grouping('eight', _EIGHT),
    _grouping('eight_v', _EIGHT),  # the same lists as 'eight' in the official file
    _grouping('ten_ms', {
        **_EIGHT,
        'upper_body_mask': _HEAD + _LEFT_ARM + _RIGHT_ARM + _TORSO,
        'lower_body_mask': _LEFT_LEG + _RIGHT_LEG + _FEET}),
    _grouping('eleven', {
        'head_mask': _HEAD,
        **_FINE,
        'left_feet_mask': ('left_ankle_to_left_knee', 'left_ankle'),
        'right_feet_mask': ('right_ankle_to_right_knee', 'right_ankle')}),
    _grouping('fourteen', {
        'head_mask': _HEAD[:10],
        'neck_mask': ('left_ear_to_left_shoulder', 'right_ear_to_right_shoulder'),
        **_FINE,
        'left_tibia_mask': ('left_ankle_to_left_knee',),
        'right_tibia_mask': ('right_ankle_to_right_knee',),
        'left_feet_mask': ('left_ankle',), 'right_feet_mask': ('right_ankle',)}),
    _grouping('id', {'id': FixedPart('ones')}),
    *[_grouping(f'strp_{n}', {f'p{i + 1}': FixedPart('stripe', i, n) for i in range(n)})
      for n in range(2, 9)],
]}

UNSUPPORTED = {
    'mu_sc': "its part lists name the groups 'torso_mask', 'arms_mask', ... as if they were "
             'fields, which raises KeyError in the official code',
    'six_no': 'the official class passes the field-name list where the name-to-index map is '
              'expected, which raises TypeError',
    'cc6': 'it groups 17 COCO keypoint heatmaps, not the 36 PifPaf fields these label files hold',
}


def get_grouping(name: str, field: str = 'config.input.parts') -> Grouping:
  """The grouping ``name`` (a BPBreID ``masks.preprocess`` name); a ``ValueError`` naming
  ``field`` and the known names otherwise."""
  if name in GROUPINGS:
    return GROUPINGS[name]
  if name in UNSUPPORTED:
    raise ValueError(f'{field}={name!r} is not available: {UNSUPPORTED[name]}.')
  raise ValueError(f'{field}={name!r}: unknown grouping; known: {", ".join(GROUPINGS)}.')


def group_fields(fields: np.ndarray, grouping: Grouping) -> np.ndarray:
  """``[h, w, 36]`` fields (uint8 quantised, or float in [0, 1]) -> ``[h, w, K_f]`` parts of the
  same dtype, each the max over its channels clamped to [0, 1], for the grouping's field parts
  (``grouping.field_parts``; the fixed parts are added by ``part_targets``)."""
  if fields.ndim != 3 or fields.shape[-1] != NUM_FIELDS:
    raise ValueError(f'part fields have shape {fields.shape}; expected (h, w, {NUM_FIELDS}).')
  out = np.stack([fields[..., list(grouping.channels[k])].max(axis=-1)
                  for k in grouping.field_parts], axis=-1)
  if out.dtype.kind == 'f':
    np.clip(out, 0.0, 1.0, out=out)  # (max of uint8 values is already in range)
  return out


# ----------------------------------------------------------------------------------------------
# synthetic_reid: parsing classes -> parts.

# Parsing classes of reid_jax.data.synthetic.PARTS.
_BACKGROUND, _HEAD_C, _TORSO_C, _ARMS_C, _LEGS_C, _FEET_C, _ITEM_C = range(7)
SYNTHETIC_GROUPINGS = ('eight', 'five_v', 'one', 'full')


def synthetic_part_map(parsing: np.ndarray, grouping: Grouping) -> np.ndarray:
  """``synthetic_reid``'s parsing map ``[h, w]`` (classes of ``reid_jax.data.synthetic.PARTS``)
  -> part index map ``[h, w]`` uint8 (0 = none, k = part k of ``grouping``).

  The synthetic persons have one class per body region, with no left/right and no upper/lower
  split, so the mapping splits by position, measured on the image:

  * 'eight': head -> head_mask; torso -> torso_mask; arms, legs and feet -> the left_* part on
    the image's left of the torso's centre column (the mean column of the torso pixels; of all
    person pixels when no torso is visible; the image centre when neither), else the right_*
    part. This is image-left, not anatomical left (the synthetic map has no facing); after a
    flip the parts move with their pixels, as BPBreID's flipped fields do.
  * 'five_v': head -> head_mask; torso and arms above the torso's middle row (the mean row of the
    torso pixels; of all person pixels when no torso is visible) -> upper_arms_torso_mask, at or
    below it -> lower_arms_torso_mask; legs -> legs_mask; feet -> feet_mask.
  * 'one' / 'full': every body class -> the one part.

  Carried items (bags) and occluders are background (PifPaf fields cover the body only).
  """
  if grouping.name not in SYNTHETIC_GROUPINGS:
    raise ValueError(f'config.input.parts={grouping.name!r}: synthetic_reid parsing maps map onto '
                     f'{", ".join(SYNTHETIC_GROUPINGS)} (or the fixed groupings id, strp_N).')
  parsing = np.asarray(parsing)
  if parsing.ndim == 3:
    parsing = parsing[..., 0]
  out = np.zeros(parsing.shape, np.uint8)
  body = (parsing >= _HEAD_C) & (parsing <= _FEET_C)
  if grouping.name in ('one', 'full'):
    out[body] = 1
    return out
  torso = parsing == _TORSO_C
  ref = torso if torso.any() else body
  rows, cols = np.nonzero(ref)
  if grouping.name == 'eight':
    cx = cols.mean() if cols.size else (parsing.shape[1] - 1) / 2
    left = np.arange(parsing.shape[1])[None, :] < cx
    out[parsing == _HEAD_C] = 1
    out[torso] = 4
    for cls, left_part in ((_ARMS_C, 2), (_LEGS_C, 5), (_FEET_C, 7)):
      m = parsing == cls
      out[m & left] = left_part
      out[m & ~left] = left_part + 1
    return out
  # five_v
  cy = rows.mean() if rows.size else (parsing.shape[0] - 1) / 2
  upper = np.arange(parsing.shape[0])[:, None] < cy
  out[parsing == _HEAD_C] = 1
  upper_body = torso | (parsing == _ARMS_C)
  out[upper_body & upper] = 2
  out[upper_body & ~upper] = 3
  out[parsing == _LEGS_C] = 4
  out[parsing == _FEET_C] = 5
  return out


def synthetic_parts(parsing: np.ndarray, grouping: Grouping) -> np.ndarray:
  """``[h, w]`` synthetic parsing map -> one-hot part masks ``[h, w, K]`` uint8 in {0, 255} (the
  quantised scale of the label fields)."""
  index = synthetic_part_map(parsing, grouping)
  k = np.arange(1, grouping.num_parts + 1, dtype=np.uint8)
  return np.where(index[..., None] == k, np.uint8(255), np.uint8(0))


# ----------------------------------------------------------------------------------------------
# Geometry and targets.


def nearest_index(in_size: int, out_size: int, rule: str) -> np.ndarray:
  """Source index of each of ``out_size`` outputs for a nearest-neighbour resize.

  * ``'cv2'``: OpenCV's ``INTER_NEAREST`` (what albumentations ``Resize`` does to masks):
    ``floor(i * s)`` with ``s = 1 / (out / in)`` in double precision; top-left aligned, so
    upsampled masks lag the bilinearly resized image by up to half a source pixel.
  * ``'pil'``: pixel centres, ``floor((i + 0.5) * in / out)`` (PIL ``NEAREST``).
  * ``'torch'``: torch ``interpolate(mode='nearest')``, ``floor(i * s)`` with ``s = in / out`` in
    float32 (BPBreID's ``ResizeMasks``).
  """
  i = np.arange(out_size)
  if rule == 'cv2':
    src = np.floor(i * (1.0 / (out_size / in_size)))
  elif rule == 'pil':
    src = np.floor((i + 0.5) * (in_size / out_size))
  elif rule == 'torch':
    src = np.floor(i.astype(np.float32) * np.float32(in_size / out_size))
  else:
    raise ValueError(f'config.input.parts_nearest must be one of {NEAREST_RULES}, got {rule!r}')
  return np.minimum(src.astype(np.int64), in_size - 1)


def resize_nearest(masks: np.ndarray, size: tuple[int, int], rule: str = 'cv2') -> np.ndarray:
  """Nearest-neighbour resize of ``[h, w, K]`` (any dtype) to ``size = (H, W)``."""
  h, w = masks.shape[:2]
  if (h, w) == tuple(size):
    return masks
  rows, cols = nearest_index(h, size[0], rule), nearest_index(w, size[1], rule)
  if masks.ndim != 3:
    return masks[rows][:, cols]
  # Each pixel's K channels as one opaque item: the gather then copies whole pixels (4x faster
  # than gathering K small values).
  masks = np.ascontiguousarray(masks)
  pixels = masks.view(np.dtype((np.void, masks.shape[2] * masks.itemsize)))[..., 0]
  return np.ascontiguousarray(pixels[rows][:, cols]).view(masks.dtype).reshape(
      size[0], size[1], masks.shape[2])


def _fixed_channel(part: FixedPart, h: int, w: int) -> np.ndarray:
  if part.kind == 'ones':
    return np.ones((h, w), np.float32)
  bounds = np.round(np.arange(part.count + 1) * h / part.count).astype(int)
  out = np.zeros((h, w), np.float32)
  out[bounds[part.index]:bounds[part.index + 1]] = 1.0
  return out


def part_targets(masks: np.ndarray | None, grouping: Grouping, size: tuple[int, int], *,
                 scale: int = 4, threshold: float = 0.5, softmax_weight: float = 15.0
                 ) -> np.ndarray:
  """BPBreID's targets from the augmented part masks.

  Args:
    masks: ``[H, W, K_f]`` augmented field parts (uint8 on the 0..255 scale, or float in [0, 1]),
      ``K_f = len(grouping.field_parts)``; None when the grouping has no field parts.
    grouping: the grouping (its fixed parts are computed here on the ``H x W`` grid).
    size: ``(H, W)``, the augmented image size.
    scale: downsampling factor (``ResizeMasks``' ``mask_scale``): output ``int(H / scale) x
      int(W / scale)`` by torch's 'nearest' (every ``scale``-th pixel when it divides).
    threshold: background where the max over the K parts is below it.
    softmax_weight: the softmax temperature's inverse (0: normalise by the sum instead, as
      ``AddBackgroundMask`` does).

  Returns:
    float32 ``[H / scale, W / scale, K + 1]``, background first, summing to 1 over the last axis.
  """
  h, w = size
  oh, ow = int(h / scale), int(w / scale)
  rows, cols = nearest_index(h, oh, 'torch'), nearest_index(w, ow, 'torch')
  # Channels first while computing: reductions over a short last axis are slow in NumPy.
  out = np.zeros((grouping.num_parts + 1, oh, ow), np.float32)
  if grouping.field_parts:
    sampled = masks[rows][:, cols]
    if sampled.dtype == np.uint8:
      sampled = sampled.astype(np.float32) / np.float32(255)
    out[[1 + k for k in grouping.field_parts]] = sampled.transpose(2, 0, 1)
  for k, c in enumerate(grouping.channels):
    if isinstance(c, FixedPart):
      out[1 + k] = _fixed_channel(c, h, w)[rows][:, cols]
  out[0] = out[1:].max(axis=0) < np.float32(threshold)
  if softmax_weight > 0:
    out *= np.float32(softmax_weight)
    out -= out.max(axis=0, keepdims=True)
    np.exp(out, out=out)
  out /= out.sum(axis=0, keepdims=True)
  return np.ascontiguousarray(out.transpose(1, 2, 0))


def part_labels(part_masks: np.ndarray) -> np.ndarray:
  """Pixel labels ``[..., h, w]`` int32 of ``part_masks`` ``[..., h, w, K + 1]``: the argmax
  (first index on ties), 0 = background, k = part k."""
  return np.argmax(part_masks, axis=-1).astype(np.int32)


def check_nearest(rule: str) -> str:
  if rule not in NEAREST_RULES:
    raise ValueError(f'config.input.parts_nearest must be one of {NEAREST_RULES}, got {rule!r}')
  return rule


def parts_names(name: str) -> Sequence[str]:
  """``('background', *part names)`` of grouping ``name``, in ``part_masks`` channel order."""
  return ('background',) + get_grouping(name).parts
