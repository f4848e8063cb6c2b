"""Pictures of evaluation results with PIL only: ranked lists and the CMC curve (PNG)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

GREEN = (0, 170, 0)    # true match
RED = (210, 0, 0)      # false match
GREY = (150, 150, 150)  # junk: gallery pid < 0, or same pid and same camera as the query
BLUE = (40, 90, 220)   # the query
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def _tile(img, size):
  if isinstance(img, Image.Image):  # an already drawn tile, e.g. ``part_masks_tile``
    return img.convert('RGB').resize((size[1], size[0]), Image.BILINEAR)
  if isinstance(img, (str, os.PathLike)):
    with Image.open(img) as im:
      return im.convert('RGB').resize((size[1], size[0]), Image.BILINEAR)
  a = np.asarray(img)
  if a.dtype != np.uint8:
    a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
  return Image.fromarray(a).convert('RGB').resize((size[1], size[0]), Image.BILINEAR)


# One colour per body part (up to 12; more parts cycle).
PART_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                (0, 128, 128), (170, 110, 40))


def part_masks_tile(image, masks, visibility, size=(128, 64), alpha: float = 0.6) -> Image.Image:
  """An image with its predicted part masks and their visibility, for part-based methods.

  ``image`` as ``ranked_list`` takes it; ``masks [h, w, K]`` part probabilities (any resolution,
  resized bilinearly to ``size`` = (H, W)); ``visibility [K]`` (bool, or scores in [0, 1]).
  Each pixel is tinted with the mask-weighted mean of the part colours (``PART_COLOURS``), with
  opacity ``alpha`` times the summed part probability. Below the image, one square per part:
  filled with its colour when visible (a continuous score sets its strength), a grey outline when
  not. Returns a ``(H + strip) x W`` PIL image.
  """
  masks = np.asarray(masks, np.float32)
  if masks.ndim != 3:
    raise ValueError(f'masks must be [h, w, K], got shape {masks.shape}')
  k = masks.shape[-1]
  visibility = np.asarray(visibility).reshape(-1)
  if visibility.size != k:
    raise ValueError(f'visibility must have K = {k} entries, got {visibility.size}')
  h, w = size
  base = np.asarray(_tile(image, size), np.float32)
  up = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(masks[..., j])).resize(
      (w, h), Image.BILINEAR)) for j in range(k)], axis=-1).clip(0, 1)   # [H, W, K]
  colours = np.asarray([PART_COLOURS[j % len(PART_COLOURS)] for j in range(k)], np.float32)
  mass = up.sum(-1, keepdims=True)
  tint = (up @ colours) / np.maximum(mass, 1e-6)
  a = alpha * np.minimum(mass, 1.0)
  tinted = np.clip(base * (1 - a) + tint * a, 0, 255).astype(np.uint8)
  cell = max(min(w // k, 12), 4)
  strip = cell + 4
  out = Image.new('RGB', (w, h + strip), WHITE)
  out.paste(Image.fromarray(tinted), (0, 0))
  draw = ImageDraw.Draw(out)
  for j in range(k):
    x0, y0 = j * cell + 1, h + 2
    box = [x0, y0, x0 + cell - 2, y0 + cell - 2]
    score = float(visibility[j])
    if score > 0:
      c = colours[j] * score + np.asarray(WHITE, np.float32) * (1 - score)
      draw.rectangle(box, fill=tuple(int(v) for v in c))
    else:
      draw.rectangle(box, outline=GREY)
  return out


def match_kind(q_pid, q_camid, g_pid, g_camid) -> str:
  """'junk', 'true' or 'false' for one gallery item, by the evaluation protocol."""
  if g_pid < 0 or (g_pid == q_pid and g_camid == q_camid):
    return 'junk'
  return 'true' if g_pid == q_pid else 'false'


def ranked_list(query_image, gallery_images, distances, q_pid, q_camid, g_pids, g_camids,
                path: str | None = None, *, topk: int = 10, size=(128, 64), border: int = 4,
                skip_junk: bool = False) -> Image.Image:
  """One row: the query (blue border) and its ``topk`` nearest gallery images by ``distances [G]``.

  Borders: green = true match, red = false match, grey = junk (pid < 0 or same pid + camera).
  ``skip_junk`` drops junk from the row as the metric does. Images are paths, ``[H, W, 3]``
  arrays (uint8, or float in [0, 1]) or PIL images (e.g. ``part_masks_tile``);
  ``gallery_images`` is indexed by gallery position.
  ``size`` = (H, W) of each tile in pixels. Saves a PNG when ``path`` is given.
  """
  distances = np.asarray(distances)
  if distances.ndim != 1 or len(distances) != len(g_pids):
    raise ValueError(f'distances must be [G] with G = len(g_pids) = {len(g_pids)}, '
                     f'got {distances.shape}')
  order = np.argsort(distances, kind='stable')
  kinds = [match_kind(q_pid, q_camid, g_pids[j], g_camids[j]) for j in order]
  if skip_junk:
    order = [j for j, k in zip(order, kinds) if k != 'junk']
    kinds = [k for k in kinds if k != 'junk']
  order, kinds = list(order)[:topk], kinds[:topk]
  h, w = size
  cell_w, gap, label_h = w + 2 * border, 6, 14
  canvas = Image.new('RGB', ((len(order) + 1) * (cell_w + gap) + gap, h + 2 * border + label_h + 2 * gap),
                     WHITE)
  draw = ImageDraw.Draw(canvas)
  colours = {'true': GREEN, 'false': RED, 'junk': GREY}
  cells = [(query_image, BLUE, 'query')] + [
      (gallery_images[j], colours[k], f'{r + 1}') for r, (j, k) in enumerate(zip(order, kinds))]
  for c, (img, colour, label) in enumerate(cells):
    x0 = gap + c * (cell_w + gap)
    y0 = gap
    draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + h + 2 * border - 1], fill=colour)
    canvas.paste(_tile(img, size), (x0 + border, y0 + border))
    draw.text((x0 + 2, y0 + h + 2 * border + 1), label, fill=BLACK)
  if path:
    canvas.save(path, format='PNG')
  return canvas


def cmc_curve(cmc, path: str | None = None, *, label: str = '', size=(480, 360),
              max_rank: int | None = None) -> Image.Image:
  """Line plot of ``cmc [R]`` (fractions) against rank 1..R with axes, ticks and labels (PNG)."""
  cmc = np.asarray(cmc, np.float64)[:max_rank]
  if cmc.ndim != 1 or len(cmc) == 0:
    raise ValueError(f'cmc must be a non-empty 1-D array, got shape {cmc.shape}')
  wdt, hgt = size
  left, right, top, bottom = 52, 16, 26, 42
  img = Image.new('RGB', size, WHITE)
  d = ImageDraw.Draw(img)
  pw, ph = wdt - left - right, hgt - top - bottom
  lo = float(np.floor(min(cmc.min(), 0.999) * 10) / 10)

  def xy(rank, value):
    x = left + (0 if len(cmc) == 1 else (rank - 1) / (len(cmc) - 1) * pw)
    y = top + ph - (value - lo) / (1.0 - lo) * ph
    return x, y

  d.line([(left, top), (left, top + ph), (left + pw, top + ph)], fill=BLACK, width=1)
  for k in range(6):  # y ticks
    v = lo + (1.0 - lo) * k / 5
    _, y = xy(1, v)
    d.line([(left - 4, y), (left, y)], fill=BLACK)
    d.text((4, y - 6), f'{100 * v:.0f}%', fill=BLACK)
  for r in sorted({1, *np.linspace(1, len(cmc), 6).round().astype(int).tolist()}):
    x, _ = xy(r, lo)
    d.line([(x, top + ph), (x, top + ph + 4)], fill=BLACK)
    d.text((x - 4, top + ph + 6), str(r), fill=BLACK)
  d.text((left + pw // 2 - 12, hgt - 16), 'rank', fill=BLACK)
  d.text((left, 6), ('CMC ' + label).strip() + f'  (R1 {100 * cmc[0]:.1f}%)', fill=BLACK)
  pts = [xy(r + 1, v) for r, v in enumerate(cmc)]
  if len(pts) > 1:
    d.line(pts, fill=BLUE, width=2)
  for x, y in pts[:1]:
    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=BLUE)
  if path:
    img.save(path, format='PNG')
  return img
