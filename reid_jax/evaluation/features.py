"""Test features as the evaluator sees them: one vector per image, or part-based features.

Two forms, decided by the method (``reid_jax.models.embed``):

* a vector method's features: a float array ``[N, D]``;
* a part-based method's features (BPBreID, Somers et al., WACV 2023): a dict
  ``{'feat': [N, P, D] float32, 'visibility': [N, P] bool or float32}`` with P = 1 + K embeddings
  per image (BPBreID's foreground embedding then its K parts) and whether each is visible (bool:
  BPBreID's binary visibility; float in [0, 1]: its continuous visibility scores). A dict
  without ``'visibility'`` (or with None) means every embedding counts, unweighted.

The helpers here work on either form on the host (NumPy), so extraction, saving and evaluation
have one code path: whatever is done to an image's vector is done to its ``feat`` rows, and the
visibility follows the rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

Features = Any  # np.ndarray [N, D] | dict(feat=[N, P, D], visibility=[N, P] | None)


def is_parts(x) -> bool:
  """True for part-based features (a mapping with a ``'feat'`` entry)."""
  return isinstance(x, Mapping) and 'feat' in x


def visibility_of(x):
  """The ``visibility`` entry of part features (None when absent)."""
  return x.get('visibility') if is_parts(x) else None


def map_feat(fn: Callable, x: Features) -> Features:
  """``fn`` applied to the embeddings: the array itself, or the ``'feat'`` entry (visibility
  kept). Works on NumPy and jax arrays, inside jit too."""
  if is_parts(x):
    return dict(x, feat=fn(x['feat']))
  return fn(x)


def map_rows(fn: Callable, x: Features) -> Features:
  """``fn`` applied to every per-image array (``feat`` and ``visibility`` alike): row selection,
  padding, device transfer. None entries stay None."""
  if is_parts(x):
    return {k: (None if v is None else fn(v)) for k, v in x.items()}
  return fn(x)


def num_rows(x: Features) -> int:
  return int((x['feat'] if is_parts(x) else x).shape[0])


def describe(x: Features) -> str:
  """Shape text for messages: ``'[N, D]'`` or ``'feat [N, P, D], visibility [N, P] bool'``."""
  if is_parts(x):
    v = x.get('visibility')
    vis = 'none' if v is None else f'{list(np.shape(v))} {np.asarray(v).dtype}'
    return f'feat {list(np.shape(x["feat"]))}, visibility {vis}'
  return str(list(np.shape(x)))


def concatenate(chunks: Sequence[Features]) -> Features:
  """Rows of several feature chunks (all of one form) in order."""
  if not chunks:
    raise ValueError('no feature chunks to concatenate')
  if is_parts(chunks[0]):
    return {k: None if v is None else np.concatenate([np.asarray(c[k]) for c in chunks])
            for k, v in chunks[0].items()}
  return np.concatenate([np.asarray(c) for c in chunks])


def to_host(x: Features) -> Features:
  """NumPy copy of device features: ``feat`` float32, visibility bool or float32 as given."""
  if is_parts(x):
    out = {k: (None if v is None else np.asarray(v)) for k, v in x.items()}
    out['feat'] = out['feat'].astype(np.float32, copy=False)
    return out
  return np.asarray(x, np.float32)


def normalize(x: Features, eps: float = 1e-12) -> Features:
  """Each embedding divided by max(||e||, eps) (torch ``F.normalize``): the rows of ``[N, D]``,
  and each of the P embeddings of part features separately (as BPBreID's engine normalises
  them). NumPy or jax arrays (jit-safe)."""
  def one(f):
    xp = _xp(f)
    return f / xp.maximum(xp.linalg.norm(f, axis=-1, keepdims=True), eps)
  return map_feat(one, x)


def combine_flip(f: Features, g: Features, flip: str) -> Features:
  """Features of an image ``f`` and of its mirror image ``g`` combined: ``'sum'`` or ``'mean'``.

  Part features: ``feat`` is summed / averaged like a vector; the visibility is combined by OR
  (bool: a part seen in either view counts) or by the maximum (float scores), so flipping never
  hides a part one of the two views shows. BPBreID itself evaluates without flip; this is the
  natural extension, documented in docs/evaluation.md.
  """
  if flip not in ('sum', 'mean'):
    raise ValueError(f"flip must be 'sum' or 'mean' here, got {flip!r}")

  def add(a, b):
    return a + b if flip == 'sum' else (a + b) * 0.5

  if not is_parts(f):
    return add(f, g)
  out = dict(f, feat=add(f['feat'], g['feat']))
  v, w = f.get('visibility'), g.get('visibility')
  if v is not None:
    xp = _xp(v)
    out['visibility'] = xp.logical_or(v, w) if v.dtype == bool else xp.maximum(v, w)
  return out


def _xp(a):
  return np if isinstance(a, np.ndarray) else jnp


# ----------------------------------------------------------------------------- validation


def check(name: str, x: Features) -> Features:
  """Host features of one side, validated: ``[N, D]`` float32, or part features with ``feat``
  ``[N, P, D]`` float32 and ``visibility`` ``[N, P]`` bool, float32 (scores in [0, 1]) or None.
  Non-finite values are an error naming the rows."""
  if is_parts(x):
    unknown = sorted(set(x) - {'feat', 'visibility'})
    if unknown:
      raise ValueError(f"{name}: part features are a dict with 'feat' and 'visibility', got extra "
                       f'keys {unknown}')
    feat = np.asarray(x['feat'], np.float32)
    if feat.ndim != 3:
      raise ValueError(f"{name}['feat'] must be [N, P, D], got shape {feat.shape}")
    vis = x.get('visibility')
    if vis is not None:
      vis = np.asarray(vis)
      if vis.shape != feat.shape[:2]:
        raise ValueError(f"{name}['visibility'] must be [N, P] = {list(feat.shape[:2])}, got "
                         f'shape {vis.shape}')
      if vis.dtype != bool:
        if not (np.issubdtype(vis.dtype, np.floating) or np.issubdtype(vis.dtype, np.integer)):
          raise ValueError(f"{name}['visibility'] must be bool or float scores, got {vis.dtype}")
        vis = vis.astype(np.float32)
        bad = ~(np.isfinite(vis) & (vis >= 0))
        if bad.any():
          raise ValueError(f"{name}['visibility'] must hold scores >= 0 (continuous visibility), "
                           f'got {vis[bad][:5]} at rows {np.unique(np.nonzero(bad)[0])[:5]}')
    _check_finite(name, feat)
    return {'feat': feat, 'visibility': vis}
  if isinstance(x, Mapping):
    raise ValueError(f"{name}: a dict of features needs a 'feat' entry [N, P, D], got keys "
                     f'{sorted(x)}')
  feat = np.asarray(x, np.float32)
  if feat.ndim != 2:
    raise ValueError(f'{name} must be [N, D] (or part features: a dict with feat [N, P, D]), got '
                     f'shape {feat.shape}')
  _check_finite(name, feat)
  return feat


def _check_finite(name, feat):
  ok = np.isfinite(feat.reshape(feat.shape[0], -1)).all(1)
  if not ok.all():
    raise ValueError(f'{name} has NaN or inf at rows {np.flatnonzero(~ok)[:5]}')


def check_pair(q: Features, g: Features, qname: str = 'q_feats', gname: str = 'g_feats'):
  """Validated ``(q, g)`` of one form with matching widths (and visibility on both sides or on
  neither). Bool visibility on one side and scores on the other: both become scores (float32),
  as BPBreID takes its continuous-visibility rule unless both sides are bool."""
  q, g = check(qname, q), check(gname, g)
  if is_parts(q) != is_parts(g):
    raise ValueError(f'{qname} and {gname} must both be part features or both be [N, D] vectors, '
                     f'got {describe(q)} and {describe(g)}')
  if not is_parts(q):
    if q.shape[1] != g.shape[1]:
      raise ValueError(f'{qname} and {gname} must be [Q, D] and [G, D] with one D, got '
                       f'{q.shape} and {g.shape}')
    return q, g
  if q['feat'].shape[1:] != g['feat'].shape[1:]:
    raise ValueError(f'{qname} and {gname} must have the same P and D, got {describe(q)} and '
                     f'{describe(g)}')
  qv, gv = q['visibility'], g['visibility']
  if (qv is None) != (gv is None):
    raise ValueError(f'visibility is given for one side only ({qname}: {describe(q)}; {gname}: '
                     f'{describe(g)}): give it for both or for neither')
  if qv is not None and (qv.dtype == bool) != (gv.dtype == bool):
    q = dict(q, visibility=qv.astype(np.float32))
    g = dict(g, visibility=gv.astype(np.float32))
  return q, g
