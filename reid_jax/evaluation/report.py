"""Printing and saving evaluation results."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def format_metrics(results: dict, ranks=(1, 5, 10)) -> str:
  """One line: ``R1 94.2  R5 98.1  R10 98.9  mAP 85.9  mINP 59.8  (3368 queries)`` (percent)."""
  cmc = np.asarray(results['cmc'])
  parts = [f'R{r} {100 * cmc[r - 1]:.1f}' for r in ranks if r <= len(cmc)]
  parts.append(f"mAP {100 * results['mAP']:.1f}")
  if 'mINP' in results:
    parts.append(f"mINP {100 * results['mINP']:.1f}")
  text = '  '.join(parts)
  if 'num_valid_queries' in results:
    text += f"  ({results['num_valid_queries']} queries)"
  return text


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  if hasattr(x, '__array__'):
    return _jsonable(np.asarray(x))
  return x


def write_metrics_json(results: dict, path: str, *, per_query: bool = False) -> None:
  """Writes ``results`` as JSON atomically (temp file in the same folder + rename).

  Per-query arrays (all_AP, all_INP, first_hit) are left out unless ``per_query``; NaN -> null.
  """
  skip = () if per_query else ('all_AP', 'all_INP', 'first_hit')
  data = _jsonable({k: v for k, v in results.items() if k not in skip})
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.metrics-', suffix='.json', dir=folder)
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
