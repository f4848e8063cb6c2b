"""Procedural synthetic person re-identification data (the ``synthetic_reid`` TFDS dataset).

Persons are drawn from identity attributes (skin, hair, torso colour and pattern, sleeves, lower
clothes, shoes, carried item, body shape) and rendered by cameras with their own illumination,
colour cast, gamma, blur, noise, dominant viewpoint, person scale and cluttered background. Every
image comes with a human-parsing mask (``PARTS``) and every identity with an aligned "UV" texture
image (the SAN target). Everything is a pure function of ``(spec, seed)``: the split plan, each
image (seeded by its own record) and each texture, so any record can be regenerated alone.

Hardness (on purpose, so that an untrained network scores low):
  * train and test identities are disjoint;
  * identities come in families of ``family_size`` that share torso colour *and* pattern and
    differ only in hair, lower clothes, shoes, item and body shape; colours come from a small
    palette, so unrelated identities collide too;
  * cameras change colour (cast, gain, gamma), sharpness, scale, background and viewpoint, and
    each image adds pose jitter, background crop offset and clutter at the borders (fragments of
    other "pedestrians" in palette colours).

Rendering is vectorised NumPy over the pixel grid (one boolean mask per body part); there is no
per-pixel Python loop. A 128x64 image costs a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np
from PIL import Image, ImageFilter

# Part ids of the parsing mask; 0 is background.
PARTS = ('background', 'head', 'torso', 'arms', 'legs', 'feet', 'item')
BACKGROUND, HEAD, TORSO, ARMS, LEGS, FEET, ITEM = range(len(PARTS))
NUM_PARTS = len(PARTS) - 1  # body parts, background excluded

VIEWS = ('front', 'back', 'left', 'right')

# Small palettes on purpose: unrelated identities share colours.
CLOTHES = np.array([
    (30, 30, 35), (225, 225, 220), (128, 128, 130), (30, 40, 100), (40, 90, 200),
    (130, 180, 230), (190, 30, 35), (110, 20, 30), (40, 130, 60), (110, 120, 50),
    (230, 200, 40), (230, 120, 30), (230, 140, 170), (110, 50, 140), (110, 70, 40),
    (200, 180, 140)], np.float32)
SKIN = np.array([(250, 215, 185), (225, 180, 140), (190, 140, 100), (140, 95, 60),
                 (95, 65, 45)], np.float32)
HAIR = np.array([(20, 15, 15), (60, 35, 20), (110, 70, 35), (210, 180, 110), (160, 160, 160),
                 (150, 60, 25)], np.float32)
TORSO_PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks', 'logo')
LOWER = ('trousers', 'shorts', 'skirt')
ITEMS = ('none', 'backpack', 'handbag', 'shoulderbag')


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Size and difficulty of one synthetic dataset (one TFDS builder config)."""
  num_train_ids: int
  num_test_ids: int
  num_cameras: int
  height: int  # pixels
  width: int   # pixels
  cameras_per_id: tuple[int, int] = (2, 4)      # inclusive range of cameras an identity visits
  images_per_visit: tuple[int, int] = (3, 6)    # inclusive range of images per (identity, camera)
  num_distractors: int = 0  # gallery images of unrelated persons, pid 0
  num_junk: int = 0         # gallery images showing mostly background, pid -1
  family_size: int = 2      # identities sharing torso colour and pattern
  texture_size: int = 64    # side of the per-identity texture image, pixels
  occluded: bool = False    # paste occluders (all queries, ``occlusion_prob`` of the rest)
  occlusion_prob: float = 0.3

  def __post_init__(self):
    if self.num_cameras < 2 or self.cameras_per_id[0] < 2:
      raise ValueError(f'SyntheticSpec: query and gallery need different cameras; got '
                       f'num_cameras={self.num_cameras}, cameras_per_id={self.cameras_per_id}')
    if self.cameras_per_id[1] > self.num_cameras:
      raise ValueError(f'SyntheticSpec: cameras_per_id={self.cameras_per_id} exceeds '
                       f'num_cameras={self.num_cameras}')
    if self.images_per_visit[0] < 1 or self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError(f'SyntheticSpec: need >= 1 image per visit and >= 1 id per split: {self}')


@dataclasses.dataclass(frozen=True)
class Record:
  """One planned image. ``identity`` indexes identities; distractors/junk use their own ids."""
  split: str      # 'train', 'query' or 'gallery'
  kind: str       # 'id', 'distractor' or 'junk'
  identity: int   # identity index (kind 'id'), else the distractor/junk number
  pid: int        # dataset pid: >= 1 for identities, 0 distractor, -1 junk
  label: int      # contiguous train class (sorted-pid order), -1 outside train
  camid: int      # 0-based
  frame: int
  view: str
  occluded: bool

  @property
  def filename(self) -> str:
    """Market-style name ``PPPP_cCs1_FFFFFF_00.png`` (camera 1-based, pid -1 written ``-1``)."""
    pid = '-1' if self.pid < 0 else f'{self.pid:04d}'
    return f'{pid}_c{self.camid + 1}s1_{self.frame:06d}_00.png'


# ----------------------------------------------------------------------------------------------
# Attributes

@dataclasses.dataclass(frozen=True)
class Person:
  skin: np.ndarray
  hair: np.ndarray
  long_hair: bool
  torso: np.ndarray        # main torso colour
  torso2: np.ndarray       # pattern colour
  pattern: str
  stripes: int             # stripe count for striped patterns
  long_sleeves: bool
  lower: np.ndarray
  lower_kind: str
  shoes: np.ndarray
  item: str
  item_colour: np.ndarray
  height: float            # body height factor
  build: float             # body width factor


def _colour(rng, palette, exclude=None):
  i = int(rng.integers(len(palette)))
  if exclude is not None and np.array_equal(palette[i], exclude):
    i = (i + 1 + int(rng.integers(len(palette) - 1))) % len(palette)
  return palette[i]


def _person(torso_rng: np.random.Generator, rng: np.random.Generator) -> Person:
  """Draws a person; the torso (colour, pattern) comes from ``torso_rng`` (shared by a family)."""
  torso = _colour(torso_rng, CLOTHES)
  torso2 = _colour(torso_rng, CLOTHES, exclude=torso)
  pattern = TORSO_PATTERNS[int(torso_rng.integers(len(TORSO_PATTERNS)))]
  stripes = int(torso_rng.integers(3, 7))
  long_sleeves = bool(torso_rng.random() < 0.5)
  item = ITEMS[int(rng.choice(len(ITEMS), p=(0.4, 0.25, 0.2, 0.15)))]
  return Person(
      skin=_colour(rng, SKIN), hair=_colour(rng, HAIR), long_hair=bool(rng.random() < 0.35),
      torso=torso, torso2=torso2, pattern=pattern, stripes=stripes, long_sleeves=long_sleeves,
      lower=_colour(rng, CLOTHES), lower_kind=LOWER[int(rng.choice(3, p=(0.6, 0.2, 0.2)))],
      shoes=_colour(rng, CLOTHES), item=item, item_colour=_colour(rng, CLOTHES),
      height=float(rng.uniform(0.9, 1.05)), build=float(rng.uniform(0.85, 1.15)))


@dataclasses.dataclass(frozen=True)
class Camera:
  gain: float
  cast: np.ndarray         # per-channel multiplier [3]
  gamma: float
  blur: float              # Gaussian blur radius, pixels at height 128
  noise: float             # noise std, 0..255 units
  view: str                # dominant walking direction seen by this camera
  scale: tuple[float, float]  # person height / image height range
  wall: np.ndarray
  floor: np.ndarray
  horizon: float           # fraction of the image height


def _camera(rng: np.random.Generator) -> Camera:
  lo = float(rng.uniform(0.7, 0.85))
  return Camera(
      gain=float(rng.uniform(0.55, 1.35)), cast=rng.uniform(0.7, 1.3, 3).astype(np.float32),
      gamma=float(rng.uniform(0.7, 1.4)), blur=float(rng.choice([0.0, 0.0, 0.6, 1.2])),
      noise=float(rng.uniform(2, 12)), view=VIEWS[int(rng.integers(4))], scale=(lo, lo + 0.12),
      wall=rng.uniform(40, 220, 3).astype(np.float32),
      floor=rng.uniform(40, 200, 3).astype(np.float32), horizon=float(rng.uniform(0.5, 0.8)))


# ----------------------------------------------------------------------------------------------
# Split plan

def _rng(seed: int, *key: int) -> np.random.Generator:
  return np.random.default_rng([seed, *key])


# Stream tags keep every random stream independent.
_T_PLAN, _T_PERSON, _T_FAMILY, _T_CAMERA, _T_IMAGE, _T_BACKGROUND = range(6)


def plan(spec: SyntheticSpec, seed: int) -> dict[str, list[Record]]:
  """The records of each split, ``{'train': [...], 'query': [...], 'gallery': [...]}``.

  Identities ``0 .. num_train_ids-1`` are train, the rest test; pids are a random permutation of
  ``1..N`` (train and test pids interleave). Every test identity contributes one query per camera
  it visits; the rest of its images are gallery, so each query has a true match in another camera
  and, when the visit has several images, same-camera gallery images (ignored by the protocol).
  """
  rng = _rng(seed, _T_PLAN)
  num_ids = spec.num_train_ids + spec.num_test_ids
  pids = rng.permutation(num_ids) + 1
  train_pids = sorted(int(p) for p in pids[:spec.num_train_ids])
  label_of = {p: i for i, p in enumerate(train_pids)}
  cameras = [_camera(_rng(seed, _T_CAMERA, c)) for c in range(spec.num_cameras)]
  frames = [0] * spec.num_cameras
  out = {'train': [], 'query': [], 'gallery': []}

  def next_frame(cam):
    frames[cam] += int(rng.integers(1, 50))
    return frames[cam]

  def pick_view(cam):
    return cameras[cam].view if rng.random() < 0.6 else VIEWS[int(rng.integers(4))]

  for identity in range(num_ids):
    pid = int(pids[identity])
    train = identity < spec.num_train_ids
    n_cams = int(rng.integers(spec.cameras_per_id[0], spec.cameras_per_id[1] + 1))
    for cam in sorted(rng.choice(spec.num_cameras, n_cams, replace=False).tolist()):
      n = int(rng.integers(spec.images_per_visit[0], spec.images_per_visit[1] + 1))
      walk = pick_view(cam)
      for i in range(n):
        view = walk if rng.random() < 0.8 else VIEWS[int(rng.integers(4))]
        split = 'train' if train else ('query' if i == 0 else 'gallery')
        u = rng.random()  # drawn either way: the occluded config differs only by occluders
        occluded = spec.occluded and (split == 'query' or u < spec.occlusion_prob)
        out[split].append(Record(split, 'id', identity, pid, label_of.get(pid, -1) if train else -1,
                                 cam, next_frame(cam), view, occluded))
  for kind, count, pid in (('distractor', spec.num_distractors, 0), ('junk', spec.num_junk, -1)):
    for d in range(count):
      cam = int(rng.integers(spec.num_cameras))
      occluded = rng.random() < spec.occlusion_prob and spec.occluded
      out['gallery'].append(Record('gallery', kind, d, pid, -1, cam, next_frame(cam),
                                   VIEWS[int(rng.integers(4))], occluded))
  return out


def person_of(spec: SyntheticSpec, seed: int, record: Record) -> Person:
  """The person shown by ``record`` (identity attributes, or a fresh distractor/junk person)."""
  if record.kind == 'id':
    family = record.identity // spec.family_size
    return _person(_rng(seed, _T_FAMILY, family), _rng(seed, _T_PERSON, record.identity))
  tag = 1 if record.kind == 'distractor' else 2
  rng = _rng(seed, _T_PERSON, 1_000_000 * tag + record.identity)
  return _person(rng, rng)


# ----------------------------------------------------------------------------------------------
# Drawing primitives: masks over the pixel grid, painted in order (later parts cover earlier).

class _Canvas:
  """RGB float32 ``[H, W, 3]`` (0..255) plus a uint8 part-label map ``[H, W]``."""

  def __init__(self, background: np.ndarray):
    self.rgb = background.astype(np.float32, copy=True)
    h, w = background.shape[:2]
    self.label = np.zeros((h, w), np.uint8)
    self.y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    self.x = (np.arange(w, dtype=np.float32) + 0.5)[None, :]

  def paint(self, mask, colour, label, shade=None, alt=None, alt_colour=None):
    """Paints ``colour`` (or ``alt_colour`` where ``alt``) on ``mask`` with optional shading."""
    if not mask.any():
      return
    mask = np.broadcast_to(mask, self.label.shape)
    c = np.broadcast_to(colour, (int(mask.sum()), 3))
    if alt is not None:
      c = np.where(np.broadcast_to(alt, mask.shape)[mask][:, None], alt_colour, c)
    if shade is not None:
      c = c * np.broadcast_to(shade, mask.shape)[mask][:, None]
    self.rgb[mask] = c
    if label is not None:
      self.label[mask] = label

  def ellipse(self, cx, cy, rx, ry):
    return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

  def rect(self, x0, y0, x1, y1):
    return (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)

  def capsule(self, x0, y0, x1, y1, r):
    """Mask of a segment of radius ``r``, position ``t`` in [0, 1] along it, shading."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d2 = (self.x - x0 - t * dx) ** 2 + (self.y - y0 - t * dy) ** 2
    return d2 <= r * r, t, 1.0 - 0.35 * d2 / (r * r)

  def trapezoid(self, cx, y0, y1, hw0, hw1):
    """Mask of a vertical trapezoid; ``u`` in [-1, 1] across it, ``v`` in [0, 1] down it."""
    v = (self.y - y0) / (y1 - y0)
    hw = hw0 + (hw1 - hw0) * np.clip(v, 0, 1)
    u = (self.x - cx) / hw
    return (v >= 0) & (v < 1) & (np.abs(u) <= 1), u, v


def _torso_pattern(person: Person, u, v, front: bool):
  """Boolean "secondary colour" map on torso coordinates ``u`` [-1, 1], ``v`` [0, 1]."""
  n = person.stripes
  if person.pattern == 'hstripes':
    return np.floor(v * n * 2) % 2 == 1
  if person.pattern == 'vstripes':
    return np.floor((u + 1) * n) % 2 == 1
  if person.pattern == 'checks':
    return (np.floor(v * n * 2) + np.floor((u + 1) * n)) % 2 == 1
  if person.pattern == 'logo' and front:
    return (np.abs(u) < 0.4) & (v > 0.2) & (v < 0.5)
  return np.zeros(np.broadcast_shapes(np.shape(u), np.shape(v)), bool)


def _draw_person(cv: _Canvas, person: Person, view: str, cx: float, top: float, ph: float,
                 rng: np.random.Generator):
  """Draws ``person`` with height ``ph`` pixels, head top at ``top``, centred at ``cx``."""
  side = view in ('left', 'right')
  facing = -1.0 if view == 'left' else 1.0  # +x is the direction a side-view person faces
  wf = ph * 0.3 * person.build * (0.62 if side else 1.0)  # torso width scale, pixels
  swing = rng.uniform(-0.35, 0.35) * (1.6 if side else 0.6)  # arm swing, radians
  stride = rng.uniform(-0.25, 0.25) * (1.5 if side else 0.5)
  lean = rng.uniform(-0.04, 0.04) * ph
  y = lambda f: top + f * ph  # noqa: E731  (body fraction -> pixel row)

  # Lower body: two legs (capsules) from the hips, shorts/skirt show skin below the knee.
  hip_y, leg_len, leg_r = y(0.52), 0.41 * ph, 0.05 * ph * person.build
  hip_dx = 0.0 if side else 0.22 * wf
  legs = []
  for sgn in (-1.0, 1.0):
    ang = sgn * stride
    x0 = cx + sgn * hip_dx
    legs.append((x0, hip_y, x0 + np.sin(ang) * leg_len, hip_y + np.cos(ang) * leg_len))
  for x0, y0, x1, y1 in legs:
    m, t, shade = cv.capsule(x0, y0, x1, y1, leg_r)
    bare = t > 0.45 if person.lower_kind in ('shorts', 'skirt') else None
    cv.paint(m, person.lower, LEGS, shade, bare, person.skin)
  for x0, y0, x1, y1 in legs:  # feet
    fx = x1 + (facing * 0.04 * ph if side else 0.0)
    cv.paint(cv.ellipse(fx, y1 + 0.01 * ph, 0.055 * ph, 0.03 * ph), person.shoes, FEET)
  if person.lower_kind == 'skirt':
    m, u, _ = cv.trapezoid(cx, y(0.5), y(0.68), 0.42 * wf, 0.6 * wf)
    cv.paint(m, person.lower, LEGS, 1.0 - 0.3 * u * u)

  # Backpack behind a side view (drawn before the torso, so the torso covers its front part).
  if person.item == 'backpack' and side:
    bx = cx - facing * 0.45 * wf
    cv.paint(cv.rect(bx - 0.22 * wf, y(0.2), bx + 0.22 * wf, y(0.47)), person.item_colour, ITEM)

  # Arms: the far arm of a side view is hidden by the torso.
  sh_y, arm_len, arm_r = y(0.18), 0.32 * ph, 0.035 * ph * person.build
  arms = [] if side else [(-1.0, -swing), (1.0, swing)]
  for sgn, ang in arms:
    x0 = cx + sgn * 0.48 * wf + lean * 0.3
    m, t, shade = cv.capsule(x0, sh_y, x0 + np.sin(ang) * arm_len + sgn * 0.06 * wf,
                             sh_y + np.cos(ang) * arm_len, arm_r)
    bare = t > (0.88 if person.long_sleeves else 0.4)
    cv.paint(m, person.torso, ARMS, shade, bare, person.skin)

  # Torso with its pattern (logo only on the front).
  m, u, v = cv.trapezoid(cx + lean * 0.5, y(0.15), y(0.53), 0.5 * wf, 0.42 * wf)
  cv.paint(m, person.torso, TORSO, 1.0 - 0.3 * u * u,
           _torso_pattern(person, u, v, front=view == 'front'), person.torso2)

  if side:  # near arm over the torso
    x0 = cx + lean * 0.3
    m, t, shade = cv.capsule(x0, sh_y, x0 + np.sin(swing) * arm_len * facing,
                             sh_y + np.cos(swing) * arm_len, arm_r)
    cv.paint(m, person.torso, ARMS, shade, t > (0.88 if person.long_sleeves else 0.4),
             person.skin)

  # Items.
  if person.item == 'backpack' and view == 'back':
    cv.paint(cv.rect(cx - 0.36 * wf, y(0.19), cx + 0.36 * wf, y(0.46)), person.item_colour, ITEM)
  elif person.item == 'backpack' and view == 'front':  # straps
    for sgn in (-1.0, 1.0):
      xs = cx + sgn * 0.3 * wf
      cv.paint(cv.rect(xs - 0.05 * wf, y(0.15), xs + 0.05 * wf, y(0.4)), person.item_colour, ITEM)
  elif person.item == 'handbag':
    sgn = facing if side else 1.0
    hx = cx + sgn * (0.2 * wf if side else 0.62 * wf)
    cv.paint(cv.rect(hx - 0.14 * wf, y(0.46), hx + 0.14 * wf, y(0.58)), person.item_colour, ITEM)
  elif person.item == 'shoulderbag':
    sgn = -facing if side else -1.0
    hx = cx + sgn * 0.45 * wf
    m, _, _ = cv.capsule(cx - sgn * 0.4 * wf, y(0.17), hx, y(0.47), 0.025 * ph)
    cv.paint(m, person.item_colour, ITEM)
    cv.paint(cv.rect(hx - 0.18 * wf, y(0.44), hx + 0.18 * wf, y(0.55)), person.item_colour, ITEM)

  # Head: face (skin) with hair; the back view shows only hair.
  hx, hy, rx, ry = cx + lean, y(0.075), 0.065 * ph, 0.075 * ph
  head = cv.ellipse(hx, hy, rx, ry)
  if view == 'back':
    hair = head
  elif side:
    hair = head & ((cv.y < hy - 0.3 * ry) | ((cv.x - hx) * facing < -0.1 * rx))
  else:
    hair = head & ((cv.y < hy - 0.35 * ry) | (np.abs(cv.x - hx) > 0.75 * rx))
  cv.paint(head, person.skin, HEAD, None, hair, person.hair)
  if person.long_hair and view != 'front':
    cv.paint(cv.rect(hx - 0.8 * rx, hy, hx + 0.8 * rx, y(0.24)), person.hair, HEAD)


# ----------------------------------------------------------------------------------------------
# Cameras and scenes

@functools.lru_cache(maxsize=64)
def _panorama(seed: int, cam: int, height: int, width: int) -> np.ndarray:
  """The camera's scene, ``[H, 3W, 3]`` float32; each image crops a random ``W``-wide window."""
  camera = _camera(_rng(seed, _T_CAMERA, cam))
  rng = _rng(seed, _T_BACKGROUND, cam)
  w3 = 3 * width
  yy = (np.arange(height, dtype=np.float32) / height)[:, None, None]
  hz = camera.horizon
  pano = np.where(yy < hz, camera.wall * (0.8 + 0.4 * yy / hz),
                  camera.floor * (1.1 - 0.3 * (yy - hz) / (1 - hz)))
  pano = np.broadcast_to(pano, (height, w3, 3)).copy()
  cv = _Canvas(pano)
  for _ in range(int(rng.integers(6, 12))):  # static structure: doors, windows, signs, poles
    x0 = rng.uniform(0, w3)
    rw, rh = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.6) * height
    y0 = rng.uniform(0, hz * height)
    cv.paint(cv.rect(x0, y0, x0 + rw, y0 + rh), rng.uniform(20, 235, 3), None)
  return cv.rgb


def _draw_clutter(cv: _Canvas, rng: np.random.Generator, height: int, width: int):
  """Fragments of other pedestrians at the image borders, in palette colours (confusers)."""
  for _ in range(int(rng.integers(0, 3))):
    sgn = -1.0 if rng.random() < 0.5 else 1.0
    x = width / 2 + sgn * width * rng.uniform(0.55, 0.75)
    y0 = height * rng.uniform(0.1, 0.4)
    colour = CLOTHES[int(rng.integers(len(CLOTHES)))]
    cv.paint(cv.ellipse(x, y0 + 0.25 * height, 0.25 * width, 0.25 * height), colour, None)
    cv.paint(cv.rect(x - 0.15 * width, y0 + 0.45 * height, x + 0.15 * width, height),
             CLOTHES[int(rng.integers(len(CLOTHES)))], None)


def _draw_occluder(cv: _Canvas, rng: np.random.Generator, cx, top, ph, height, width):
  """Covers part of the person with an object and sets the covered labels to background."""
  kind = int(rng.integers(3))
  colour = rng.uniform(20, 235, 3)
  if kind == 0:    # low object (car, bench, barrier) over the legs
    y0 = top + ph * rng.uniform(0.5, 0.75)
    m = cv.rect(-1, y0, width + 1, height + 1)
  elif kind == 1:  # vertical object (pole, another person) over one side
    sgn = -1.0 if rng.random() < 0.5 else 1.0
    edge = cx + sgn * rng.uniform(-0.05, 0.15) * width
    m = (cv.x > edge) if sgn > 0 else (cv.x < edge)
  else:            # a blob over the middle
    m = cv.ellipse(cx + rng.uniform(-0.2, 0.2) * width, top + ph * rng.uniform(0.3, 0.7),
                   width * rng.uniform(0.3, 0.45), ph * rng.uniform(0.15, 0.25))
  band = (np.floor(cv.y / max(height / 8, 1)) % 2 == 0)  # give it some texture
  cv.paint(m, colour, BACKGROUND, None, band, colour * 0.6)


def render(spec: SyntheticSpec, seed: int, record: Record) -> tuple[np.ndarray, np.ndarray]:
  """The record's image ``[H, W, 3]`` uint8 and parsing mask ``[H, W]`` uint8 (``PARTS`` ids)."""
  h, w = spec.height, spec.width
  camera = _camera(_rng(seed, _T_CAMERA, record.camid))
  rng = _rng(seed, _T_IMAGE, record.camid, record.frame)  # (camera, frame) is unique per record
  person = person_of(spec, seed, record)
  pano = _panorama(seed, record.camid, h, w)
  x0 = int(rng.integers(0, 2 * w))
  cv = _Canvas(pano[:, x0:x0 + w])
  _draw_clutter(cv, rng, h, w)
  ph = h * rng.uniform(*camera.scale) * person.height
  cx = w / 2 + rng.uniform(-0.08, 0.08) * w
  top = (h - ph) * rng.uniform(0.2, 0.8)
  if record.kind == 'junk':  # a badly misplaced detection: mostly background
    cx += (1 if rng.random() < 0.5 else -1) * rng.uniform(0.55, 0.7) * w
    top += rng.uniform(0.3, 0.5) * h
  _draw_person(cv, person, record.view, cx, top, ph, rng)
  if record.occluded:
    _draw_occluder(cv, rng, cx, top, ph, h, w)
  # Camera response: cast and gain, gamma, blur, sensor noise.
  img = np.clip(cv.rgb * (camera.cast * camera.gain), 0, 255)
  img = 255.0 * (img / 255.0) ** camera.gamma
  img = img + rng.normal(0, camera.noise, img.shape).astype(np.float32)
  img = np.clip(img, 0, 255).astype(np.uint8)
  if camera.blur > 0:
    img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(camera.blur * h / 128)))
  return img, cv.label


def texture(spec: SyntheticSpec, seed: int, record: Record) -> np.ndarray:
  """The person's aligned texture ``[T, T, 3]`` uint8 (``T = spec.texture_size``).

  A fixed UV-like layout shared by all identities, in clean colours (no camera effects):
  rows 0-1/8 head (left half face, right half hair), 1/8-1/2 torso (left half front with the
  logo, right half back; a backpack appears as a patch on the back), 1/2-5/8 arms (sleeve then
  skin), 5/8-15/16 legs (two columns; shorts and skirts show skin below the knee), the rest shoes.
  A handbag or shoulder bag adds a patch in the bottom right corner.
  """
  person = person_of(spec, seed, record)
  t = spec.texture_size
  cv = _Canvas(np.zeros((t, t, 3), np.float32))
  u = cv.x / t  # [1, T] in [0, 1]
  v = cv.y / t  # [T, 1] in [0, 1]
  left = u < 0.5
  head = v < 0.125
  cv.paint(head, person.skin, None, None, head & ~left, person.hair)
  torso = (v >= 0.125) & (v < 0.5)
  tu = np.where(left, u * 4 - 1, u * 4 - 3)  # [-1, 1] within each half
  tv = (v - 0.125) / 0.375
  pattern = np.where(left, _torso_pattern(person, tu, tv, front=True),
                     _torso_pattern(person, tu, tv, front=False))
  cv.paint(torso, person.torso, None, None, pattern, person.torso2)
  if person.item == 'backpack':
    cv.paint(torso & (u > 0.6) & (u < 0.9) & (tv > 0.1) & (tv < 0.8), person.item_colour, None)
  arms = (v >= 0.5) & (v < 0.625)
  cv.paint(arms, person.torso, None, None, u > (0.88 if person.long_sleeves else 0.4),
           person.skin)
  legs = (v >= 0.625) & (v < 0.9375)
  bare = (v > 0.78) if person.lower_kind in ('shorts', 'skirt') else np.zeros_like(v, bool)
  cv.paint(legs, person.lower, None, None, bare, person.skin)
  cv.paint(legs & (np.abs(u - 0.5) < 0.02), person.lower * 0.6, None)  # the seam between legs
  cv.paint((v >= 0.9375), person.shoes, None)
  if person.item in ('handbag', 'shoulderbag'):
    cv.paint((u > 0.8) & (v > 0.8), person.item_colour, None)
  return np.clip(cv.rgb, 0, 255).astype(np.uint8)


def examples(spec: SyntheticSpec, seed: int, split: str) -> Iterator[tuple[str, dict]]:
  """``(key, example)`` pairs of a split; example arrays are uint8 NumPy (see ``render``)."""
  textures = {}  # per person, shared by its images
  for i, rec in enumerate(plan(spec, seed)[split]):
    image, parsing = render(spec, seed, rec)
    if (rec.kind, rec.identity) not in textures:
      textures[rec.kind, rec.identity] = texture(spec, seed, rec)
    yield f'{split}_{i:06d}', dict(
        image=image, parsing=parsing, texture=textures[rec.kind, rec.identity], pid=rec.pid,
        camid=rec.camid, label=rec.label, filename=rec.filename)
