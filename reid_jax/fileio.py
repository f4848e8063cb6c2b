"""Paths that may be local or remote (``gs://...``): workdirs and checkpoints on Cloud TPU pods
live in a bucket every worker sees. ``etils.epath`` reaches GCS through TensorFlow's gfile."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from etils import epath


def is_remote(path) -> bool:
  return '://' in os.fspath(path)


def resolve(path) -> epath.Path:
  """An absolute local path, or the remote URL unchanged."""
  path = os.fspath(path)
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


def write_text_atomic(path, text: str) -> None:
  """Whole-file write that never leaves a half-written file: temp file, then rename (a GCS
  object appears only once its upload completes)."""
  path = resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_text(text)
    return
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def write_json_atomic(obj, path) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


class JsonlLog:
  """``metrics.jsonl``: appended locally; rewritten whole on remote storage (GCS objects cannot
  be appended to)."""

  def __init__(self, path):
    self.path = resolve(path)
    self._lines: list[str] = []
    if is_remote(self.path) and self.path.exists():
      self._lines = self.path.read_text().splitlines(keepends=True)

  def write(self, record: dict) -> None:
    line = json.dumps(record) + '\n'
    if is_remote(self.path):
      self._lines.append(line)
      self.path.write_text(''.join(self._lines))
    else:
      with open(self.path, 'a') as f:
        f.write(line)


class LocalStaging:
  """A local directory whose files are copied to ``target`` (local or remote) on exit; for
  writers that only take local paths (PIL)."""

  def __init__(self, target):
    self.target = resolve(target)

  def __enter__(self) -> str:
    if not is_remote(self.target):
      self.target.mkdir(parents=True, exist_ok=True)
      self._tmp = None
      return os.fspath(self.target)
    self._tmp = tempfile.mkdtemp(prefix='reid_jax_')
    return self._tmp

  def __exit__(self, *exc):
    if self._tmp is None:
      return
    try:
      if exc[0] is None:
        self.target.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(self._tmp)):
          epath.Path(os.path.join(self._tmp, name)).copy(self.target / name, overwrite=True)
    finally:
      shutil.rmtree(self._tmp, ignore_errors=True)
