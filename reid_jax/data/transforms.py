"""Per-example augmentations of the ReID recipes (NumPy + PIL), methods.md §0.2 #10, §1.3, §2.4,
§3.4, §4.5.

Images are uint8 ``[H, W, 3]`` until normalisation, float32 afterwards. Random parameters are
drawn from a ``np.random.Generator`` in a fixed order (flip, translation/crop, erasing), so an
example's augmentation is a pure function of its generator's seed. Geometry (resize, translation,
flip, pad-crop) is applied identically to the parsing mask (nearest neighbour, padding =
background), and so is random erasing when ``erase_parsing`` (``config.input.erase_parsing``,
default): the erased box becomes background (0) in the mask, so a prior computed from the mask
sees the occluder, as BPBreID's random erasing fills the masks with 0 (VlSomers/bpbreid
torchreid/data/transforms.py ``build_transforms``: ``CoarseDropout(..., mask_fill_value=0)``;
there the masks are per-part maps, zero in the box). The identity texture only gets the SAN
normalisation (not flipped, as in SAN's official loader, unless ``flip_texture``).

Part masks (``parts``, a BPBreID grouping name; ``reid_jax.data.parts``): the example's label
fields (``parsing_fields`` ``[h, w, 36]``, or ``synthetic_reid``'s ``parsing`` map) are grouped
into K parts, then follow the same geometry as the image (nearest resize by ``parts_nearest``,
flip, zero padding, the erased box set to 0 when ``erase_parsing``) and become ``part_masks``
float32 ``[H/4, W/4, K+1]`` (``parts.part_targets``).

Recipes:
  BoT / APNet: resize -> flip 0.5 -> Pad(10) + RandomCrop -> normalise -> erasing 0.5 (``u >= p``
    skips).
  BPBreID: resize -> [flip] -> Pad(10) + RandomCrop -> normalise -> CoarseDropout 0.5 (one hole of
    15-65 % of H and of W).
  SAN: Random2DTranslation (p 0.5: resize x1.125 then random crop) -> flip -> normalise -> erasing.
  MPN: resize (bilinear; bicubic at test) -> flip -> normalise -> erasing with CIFAR-mean fill.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image

from reid_jax.data import parts as parts_lib

_PIL_INTERPOLATION = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
                      'nearest': Image.NEAREST}
CROPS = ('pad', 'translate', 'none')
ERASING_TESTS = ('>=', '>')
ERASINGS = ('random', 'coarse_dropout')


def resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
  """PIL resize of ``[h, w, C]`` or ``[h, w]`` uint8 to ``size = (H, W)``."""
  if interpolation not in _PIL_INTERPOLATION:
    raise ValueError(f'interpolation must be one of {sorted(_PIL_INTERPOLATION)}, '
                     f'got {interpolation!r}')
  h, w = size
  if image.shape[:2] == (h, w):
    return image
  squeeze = image.ndim == 3 and image.shape[2] == 1  # PIL has no [h, w, 1] mode
  out = np.asarray(Image.fromarray(image[..., 0] if squeeze else image).resize(
      (w, h), _PIL_INTERPOLATION[interpolation]))
  return out[..., None] if squeeze else out


def shift_crop(image: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
  """``RandomCrop(H, W)`` of ``Pad(pad)`` (zeros) of ``image`` at offset ``(dy, dx)``.

  ``out[y, x] = padded[y + dy, x + dx]`` with ``padded`` the zero-padded image, so ``dy, dx`` in
  ``[0, 2 * pad]`` and ``dy = dx = pad`` is the identity. Same shape as ``image``.
  """
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  sy, sx = dy - pad, dx - pad  # source offset in unpadded coordinates
  ys, ye = max(0, -sy), min(h, h - sy)
  xs, xe = max(0, -sx), min(w, w - sx)
  if ys < ye and xs < xe:
    out[ys:ye, xs:xe] = image[ys + sy:ye + sy, xs + sx:xe + sx]
  return out


def translate_params(rng: np.random.Generator, size: tuple[int, int], prob: float):
  """torchreid ``Random2DTranslation``: with probability ``prob`` the image is resized to
  ``round(1.125 * size)`` and cropped at ``(y1, x1)``; returns None (plain resize) otherwise."""
  if rng.random() > prob:  # the official test: ``uniform(0, 1) > p`` keeps the plain resize
    return None
  h, w = size
  big = (int(round(h * 1.125)), int(round(w * 1.125)))
  x1 = int(round(rng.uniform(0, big[1] - w)))
  y1 = int(round(rng.uniform(0, big[0] - h)))
  return big, y1, x1


def erasing_box(rng: np.random.Generator, h: int, w: int, *, prob: float,
                area: tuple[float, float] = (0.02, 0.4), aspect: float = 0.3,
                test: str = '>=', attempts: int = 100):
  """Random-erasing box ``(y0, x0, eh, ew)`` on an ``h x w`` image, or None.

  Zhong et al.'s algorithm as in the ReID repos: skip when ``u >= prob`` (``test='>='``, BoT) or
  ``u > prob`` (``test='>'``); else up to ``attempts`` draws of area fraction ~ U[area] and aspect
  ~ U[aspect, 1/aspect], ``eh = round(sqrt(A * r))``, ``ew = round(sqrt(A / r))``, accepted when
  ``eh < h and ew < w``; the corner is uniform over the valid positions (inclusive).
  """
  if test not in ERASING_TESTS:
    raise ValueError(f"config.input.erasing_test must be one of {ERASING_TESTS}, got {test!r}")
  u = rng.random()
  if (u >= prob) if test == '>=' else (u > prob):
    return None
  for _ in range(attempts):
    target = rng.uniform(*area) * h * w
    ratio = rng.uniform(aspect, 1.0 / aspect)
    eh = int(round(math.sqrt(target * ratio)))
    ew = int(round(math.sqrt(target / ratio)))
    if ew < w and eh < h:
      return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew
  return None


def coarse_dropout_box(rng: np.random.Generator, h: int, w: int, *, prob: float,
                       size: tuple[float, float] = (0.15, 0.65)):
  """BPBreID's ``CoarseDropout`` (albumentations, one hole; VlSomers/bpbreid
  ``torchreid/data/transforms.py``): box ``(y0, x0, eh, ew)`` on an ``h x w`` image, or None.

  Applied when ``u < prob``; ``eh`` uniform over the integers ``[int(h * size[0]),
  int(h * size[1])]``, ``ew`` likewise with ``w``, the corner uniform over the positions that
  keep the box inside (inclusive ranges, as ``random.randint``).
  """
  if rng.random() >= prob:
    return None
  eh = int(rng.integers(int(h * size[0]), int(h * size[1]) + 1))
  ew = int(rng.integers(int(w * size[0]), int(w * size[1]) + 1))
  return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew


@functools.lru_cache(maxsize=8)
def _normalize_lut(mean: tuple, std: tuple) -> np.ndarray:
  """``[3, 256]`` float32 table of ``(v / 255 - mean) / std``, computed in float32 like ToTensor +
  Normalize, so the lookup is bit-identical to the arithmetic (and about twice as fast)."""
  v = np.arange(256, dtype=np.float32) / np.float32(255)
  return np.stack([(v - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)])


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> float32 ``(x / 255 - mean) / std``."""
  lut = _normalize_lut(tuple(float(m) for m in mean), tuple(float(s) for s in std))
  out = np.empty(image.shape, np.float32)
  for c in range(image.shape[-1]):
    np.take(lut[c], image[..., c], out=out[..., c])
  return out


def normalize_texture(texture: np.ndarray, size: int | None = None) -> np.ndarray:
  """SAN's texture target: optional bilinear resize to ``size x size``, then ``x / 127.5 - 1``
  (ToTensor + Normalize(0.5, 0.5)), float32 in [-1, 1] (flipping is ``Augment``'s choice)."""
  if size:
    texture = resize(texture, (size, size), 'bilinear')
  return texture.astype(np.float32) / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class Augment:
  """One recipe's augmentation, built from ``config.input`` by ``from_config``."""
  size: tuple[int, int]
  interpolation: str = 'bilinear'
  flip_prob: float = 0.5
  crop: str = 'pad'
  pad: int = 10
  translate_prob: float = 0.5
  erasing_prob: float = 0.5
  erasing_area: tuple[float, float] = (0.02, 0.4)
  erasing_aspect: float = 0.3
  erasing_fill: tuple[float, float, float] = (0.485, 0.456, 0.406)
  erasing_test: str = '>='
  erase_parsing: bool = True
  mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
  std: tuple[float, float, float] = (0.229, 0.224, 0.225)
  texture_size: int | None = None
  flip_texture: bool = False  # mirror the texture with the image (SAN's loader does not)
  erasing: str = 'random'     # 'random' (Zhong et al.) or 'coarse_dropout' (BPBreID)
  coarse_dropout_size: tuple[float, float] = (0.15, 0.65)
  parts: str | None = None    # BPBreID grouping name: yield ``part_masks``
  parts_nearest: str = 'cv2'
  parts_scale: int = 4
  parts_threshold: float = 0.5
  parts_softmax_weight: float = 15.0

  def __post_init__(self):
    if self.erasing not in ERASINGS:
      raise ValueError(f'config.input.erasing must be one of {ERASINGS}, got {self.erasing!r}')
    if self.parts is not None:
      parts_lib.get_grouping(self.parts)
      parts_lib.check_nearest(self.parts_nearest)
    if self.crop not in CROPS:
      raise ValueError(f'config.input.crop must be one of {CROPS}, got {self.crop!r}')
    if self.erasing_test not in ERASING_TESTS:
      raise ValueError(f'config.input.erasing_test must be one of {ERASING_TESTS}, '
                       f'got {self.erasing_test!r}')
    if self.interpolation not in _PIL_INTERPOLATION:
      raise ValueError(f'config.input.interpolation must be one of {sorted(_PIL_INTERPOLATION)},'
                       f' got {self.interpolation!r}')

  @classmethod
  def from_config(cls, config_input, train: bool = True) -> 'Augment':
    """Training augmentation (``train=True``) or the test transform (resize + normalise)."""
    c = config_input
    common = dict(size=tuple(c.size), mean=tuple(c.mean), std=tuple(c.std),
                  texture_size=c.get('texture_size'), parts=c.get('parts'),
                  parts_nearest=c.get('parts_nearest', 'cv2'), parts_scale=c.get('parts_scale', 4),
                  parts_threshold=c.get('parts_threshold', 0.5),
                  parts_softmax_weight=c.get('parts_softmax_weight', 15.0))
    if not train:
      return cls(interpolation=c.test_interpolation, flip_prob=0.0, crop='none',
                 erasing_prob=0.0, **common)
    return cls(interpolation=c.interpolation, flip_prob=c.flip_prob, crop=c.crop, pad=c.pad,
               translate_prob=c.translate_prob, erasing_prob=c.erasing_prob,
               erasing_area=tuple(c.erasing_area), erasing_aspect=c.erasing_aspect,
               erasing_fill=tuple(c.erasing_fill), erasing_test=c.erasing_test,
               erase_parsing=c.get('erase_parsing', True),
               flip_texture=c.get('flip_texture', False), erasing=c.get('erasing', 'random'),
               coarse_dropout_size=tuple(c.get('coarse_dropout_size', (0.15, 0.65))), **common)

  @functools.cached_property
  def grouping(self) -> parts_lib.Grouping | None:
    return None if self.parts is None else parts_lib.get_grouping(self.parts)

  @property
  def part_masks_shape(self) -> tuple[int, int, int]:
    """``(H / scale, W / scale, K + 1)`` of ``part_masks``."""
    h, w = self.size
    return (int(h / self.parts_scale), int(w / self.parts_scale), self.grouping.num_parts + 1)

  def _part_sources(self, example: dict) -> np.ndarray | None:
    """The grouping's field parts ``[h, w, K_f]`` uint8 for ``example`` (None if it has none)."""
    g = self.grouping
    if not g.needs_fields:
      return None
    if example.get('parsing_fields') is not None:
      return parts_lib.group_fields(np.asarray(example['parsing_fields']), g)
    if example.get('parsing') is not None:
      return parts_lib.synthetic_parts(example['parsing'], g)
    raise ValueError(f'config.input.parts={self.parts!r} needs per-image part labels '
                     '(parsing_fields or a parsing map) in every example')

  def __call__(self, example: dict, rng: np.random.Generator | None) -> dict:
    """``example['image']`` uint8 ``[h, w, 3]`` (and optional ``parsing`` ``[h, w, 1]``,
    ``texture`` ``[t, t, 3]``) -> dict with ``image`` float32 ``[H, W, 3]``, ``parsing`` uint8
    ``[H, W]`` (same geometry; the erased box is 0 when ``erase_parsing``), ``texture`` float32
    ``[T, T, 3]``, and with ``parts`` (from ``parsing_fields`` ``[h, w, 36]`` uint8 or the
    ``parsing`` map) ``part_masks`` float32 ``[H/4, W/4, K+1]``, background first.
    ``rng=None`` only for deterministic recipes."""
    image = example['image']
    parsing = example.get('parsing')
    masks = self._part_sources(example) if self.parts is not None else None
    out = {}
    # 1. Resize, or Random2DTranslation (resize x1.125, random crop).
    trans = translate_params(rng, self.size, self.translate_prob) if self.crop == 'translate' \
        else None
    h, w = self.size
    if trans is None:
      image = resize(image, self.size, self.interpolation)
      parsing = None if parsing is None else resize(parsing, self.size, 'nearest')
      if masks is not None:
        masks = parts_lib.resize_nearest(masks, self.size, self.parts_nearest)
    else:
      big, y1, x1 = trans
      image = resize(image, big, self.interpolation)[y1:y1 + h, x1:x1 + w]
      if parsing is not None:
        parsing = resize(parsing, big, 'nearest')[y1:y1 + h, x1:x1 + w]
      if masks is not None:
        masks = parts_lib.resize_nearest(masks, big, self.parts_nearest)[y1:y1 + h, x1:x1 + w]
    # 2. Horizontal flip.
    flipped = self.flip_prob > 0 and rng.random() < self.flip_prob
    if flipped:
      image = image[:, ::-1]
      parsing = None if parsing is None else parsing[:, ::-1]
      masks = None if masks is None else masks[:, ::-1]
    # 3. Pad + RandomCrop (zero padding in pixel space, background in the masks).
    if self.crop == 'pad':
      dy, dx = (int(v) for v in rng.integers(0, 2 * self.pad + 1, size=2))
      image = shift_crop(image, dy, dx, self.pad)
      parsing = None if parsing is None else shift_crop(parsing, dy, dx, self.pad)
      masks = None if masks is None else shift_crop(masks, dy, dx, self.pad)
    # 4. Normalise, then erase with constant per-channel values on the normalised image.
    image = normalize(image, self.mean, self.std)
    if self.erasing_prob > 0:
      if self.erasing == 'coarse_dropout':
        box = coarse_dropout_box(rng, h, w, prob=self.erasing_prob, size=self.coarse_dropout_size)
      else:
        box = erasing_box(rng, h, w, prob=self.erasing_prob, area=self.erasing_area,
                          aspect=self.erasing_aspect, test=self.erasing_test)
      if box is not None:
        y0, x0, eh, ew = box
        image[y0:y0 + eh, x0:x0 + ew] = np.asarray(self.erasing_fill, np.float32)
        if parsing is not None and self.erase_parsing:
          parsing = parsing.copy()  # may be a view of the caller's array
          parsing[y0:y0 + eh, x0:x0 + ew] = 0
        if masks is not None and self.erase_parsing:
          masks = masks.copy()
          masks[y0:y0 + eh, x0:x0 + ew] = 0
    out['image'] = image
    if parsing is not None:
      out['parsing'] = np.ascontiguousarray(parsing.reshape(h, w))
    if self.parts is not None:
      out['part_masks'] = parts_lib.part_targets(
          masks, self.grouping, (h, w), scale=self.parts_scale, threshold=self.parts_threshold,
          softmax_weight=self.parts_softmax_weight)
    if example.get('texture') is not None:
      texture = example['texture'][:, ::-1] if flipped and self.flip_texture else example['texture']
      out['texture'] = normalize_texture(np.ascontiguousarray(texture), self.texture_size)
    return out
