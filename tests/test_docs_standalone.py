"""Docs, docstrings and comments stand alone: users have neither the development notes nor the
development machine, so no tracked file may cite them (the paper and the official repository's
file are cited instead) or name an absolute path of a development machine."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Development notes, and home or work folders of a development machine (case-insensitive).
# bpbreid.md and drop.md are also the names of this project's own method pages: a link to
# docs/bpbreid.md (or a relative markdown link inside docs/) is fine, a bare citation is not.
BANNED = re.compile(r'methods\.md|shared/docs|\.\./shared|(?<!docs/)(?<!\]\()\b(?:bpbreid|drop)\.md'
                    r'|reid-protocols|jax-stack|/work/|/root/|/home/', re.IGNORECASE)
THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)


def tracked_files() -> list[str]:
  try:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True,
                         timeout=60).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  return [name for name in out.decode().split('\0') if name]


def test_no_tracked_file_cites_development_notes_or_machine_paths():
  files = tracked_files()
  assert 'README.md' in files
  hits = []
  for name in files:
    if name == THIS_FILE:
      continue
    try:
      with open(os.path.join(ROOT, name), encoding='utf-8') as f:
        lines = f.read().splitlines()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
      continue  # binary files; files deleted but not yet committed
    hits += [f'{name}:{i}: {line.strip()}' for i, line in enumerate(lines, 1)
             if BANNED.search(line)]
  assert not hits, ('cite the paper and the official repository\'s file instead of development '
                    'notes or machine paths:\n' + '\n'.join(hits))


def test_the_pattern_catches_each_banned_form():
  for text in ('see methods.md §2', '../shared/docs/x', 'BPBREID.md', 'drop.md', 'reid-protocols',
               'bpbreid.md b.5', '(see drop.md §2)',
               'jax-stack.md B.3', 'cd /work/main', '/root/.cache', '/home/user'):
    assert BANNED.search(text), text
  for text in ('docs/apnet.md', 'VlSomers/bpbreid torchreid/models/bpbreid.py', 'workdir/demo',
               'gs://bucket/work', '[docs/bpbreid.md](docs/bpbreid.md)', 'see [BPBreID](bpbreid.md)',
               'docs/drop.md'):
    assert not BANNED.search(text), text
